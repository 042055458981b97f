"""The prepared-data format: the folder `pocketbert prepare` writes and pretraining reads.

    index.json                   counts, max_length, vocab_size, dtype, tokenizer_sha256, seed, args, files
    {split}.input_ids.npy        (N, max_length) uint16 (int32 if the vocab exceeds 65536):
                                 [CLS] A [SEP] B [SEP] then [PAD]=0 up to max_length
    {split}.lengths.npy          (N,) uint16: real tokens in the row, specials included
    {split}.segment_a.npy        (N,) uint16: length of [CLS] A [SEP]; token_type_ids are 1 from there
                                 up to `lengths`, 0 elsewhere
    {split}.nsp_labels.npy       (N,) uint8: IS_NEXT (0) or NOT_NEXT (1)

for split in SPLITS. They are ordinary .npy files: `np.load(path, mmap_mode="r")` maps them. Every problem
with a folder (missing, another format version, folders that cannot be read together) is a CLIError.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.tokenizer import IS_NEXT
from training.errors import CLIError

FORMAT_VERSION = 1
INDEX_FILENAME = "index.json"
SPLITS = ("train", "valid")
ARRAYS = ("input_ids", "lengths", "segment_a", "nsp_labels")
REQUIRED_KEYS = ("max_length", "vocab_size", "tokenizer_sha256", "files", "splits")
SHARED_KEYS = ("tokenizer_sha256", "max_length", "vocab_size")  # what folders read as one must agree on


def array_filename(split: str, name: str) -> str:
    return f"{split}.{name}.npy"


FILES = {name: array_filename("{split}", name) for name in ARRAYS}  # index.json's "files": the pattern


# --- reading -------------------------------------------------------------------------------------------


def read_index(data_dir: str | Path) -> dict[str, Any]:
    """The parsed index.json of a prepared folder, checked for this format version and its keys."""
    path = Path(data_dir) / INDEX_FILENAME
    if not path.is_file():
        raise CLIError(f"{path}: not found; make the data folder with `pocketbert prepare`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT_VERSION:
        found = index.get("format") if isinstance(index, dict) else None
        raise CLIError(
            f"{path}: data format {found!r}, this version reads {FORMAT_VERSION}; "
            "run `pocketbert prepare` again"
        )
    for key in REQUIRED_KEYS:
        if key not in index:
            raise CLIError(f"{path}: missing '{key}'; remake the data folder with `pocketbert prepare`")
    return index


def read_shared_index(data_dirs: str | Path | list[str | Path]) -> dict[str, Any]:
    """The index of the first folder; several folders (read as one training set) must share SHARED_KEYS."""
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    indexes = [read_index(d) for d in dirs]
    first = indexes[0]
    for folder, index in zip(dirs[1:], indexes[1:], strict=True):
        for key in SHARED_KEYS:
            if index[key] != first[key]:
                raise CLIError(
                    f"{folder}: {key} {index[key]!r} differs from {dirs[0]}'s {first[key]!r}; "
                    "prepare every --data folder with the same tokenizer and --max-length"
                )
    return first


# --- writing -------------------------------------------------------------------------------------------


@dataclass
class SplitArrays:
    """Instances of one split, in the layout of the files; shapes (N, max_length) and (N,)."""

    input_ids: np.ndarray
    lengths: np.ndarray
    segment_a: np.ndarray
    nsp_labels: np.ndarray
    documents: int = 0  # the documents they were made from


class NpyAppender:
    """A .npy file grown row block by row block; the header gets the final row count on close.

    The header is padded to a fixed HEADER_BYTES, so rewriting it with the real shape never moves the data.
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), after many appends
        self._file.write(self._header())

    def _header(self) -> bytes:
        header = repr(
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (self.rows, *self.row_shape),
            }
        )
        header = header.ljust(self.HEADER_BYTES - 10 - 1) + "\n"  # magic (6) + version (2) + length (2)
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")

    def append(self, block: np.ndarray) -> None:
        assert block.dtype == self.dtype and block.shape[1:] == self.row_shape, (block.dtype, block.shape)
        self._file.write(np.ascontiguousarray(block).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header())
        self._file.close()


class SplitWriter:
    """The four files of one split, appended chunk by chunk, and the split's counts for index.json."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, max_length: int) -> None:
        self.files = {
            "input_ids": NpyAppender(folder / array_filename(split, "input_ids"), dtype, (max_length,)),
            "lengths": NpyAppender(folder / array_filename(split, "lengths"), np.uint16),
            "segment_a": NpyAppender(folder / array_filename(split, "segment_a"), np.uint16),
            "nsp_labels": NpyAppender(folder / array_filename(split, "nsp_labels"), np.uint8),
        }
        self.stats = {"instances": 0, "documents": 0, "tokens": 0, "is_next": 0}

    def append(self, arrays: SplitArrays) -> None:
        for name in ARRAYS:
            self.files[name].append(getattr(arrays, name))
        self.stats["instances"] += len(arrays.lengths)
        self.stats["documents"] += arrays.documents
        self.stats["tokens"] += int(arrays.lengths.sum(dtype=np.int64))
        self.stats["is_next"] += int(np.count_nonzero(arrays.nsp_labels == IS_NEXT))

    def close(self) -> None:
        for appender in self.files.values():
            appender.close()


def write_index(folder: Path, index: dict[str, Any]) -> None:
    """index.json, written last: a folder with an index is complete."""
    (folder / INDEX_FILENAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
