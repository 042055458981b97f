"""A torch Dataset over a prepared-data folder (layout: training/data_format.py).

The files are opened on the first `__getitem__`, not in `__init__`: a DataLoader pickles the dataset into
each worker process, and an open memmap should not travel that way. Each process maps the files itself;
the operating system's page cache shares the pages between them, so N workers do not cost N copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data_format import ARRAYS, read_index
from training.errors import CLIError


class PretrainingDataset(Dataset):
    """Instances of one split. Each item is a dict of int64 tensors, padded to max_length:

    input_ids, token_type_ids, attention_mask: (max_length,)   [CLS] A [SEP] B [SEP] [PAD]...
    next_sentence_label: ()                                     IS_NEXT (0) or NOT_NEXT (1)

    `collate` trims a batch to its longest member.
    """

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.index = read_index(self.data_dir)
        if split not in self.index["splits"]:
            raise CLIError(f"{self.data_dir}: no split {split!r} (has {', '.join(self.index['splits'])})")
        self.max_length: int = self.index["max_length"]
        self.vocab_size: int = self.index["vocab_size"]
        self.tokenizer_sha256: str = self.index["tokenizer_sha256"]
        self._arrays: dict[str, np.ndarray] | None = None  # opened lazily, per process

    def check_tokenizer(self, checksum: str) -> None:
        """Fail if the data was tokenized with another tokenizer than the one (sha256) about to be used."""
        if checksum != self.tokenizer_sha256:
            raise CLIError(
                f"{self.data_dir}: prepared with tokenizer sha256 {self.tokenizer_sha256[:12]}…, "
                f"not {checksum[:12]}…; run `pocketbert prepare` with this tokenizer"
            )

    def __len__(self) -> int:
        return int(self.index["splits"][self.split]["instances"])

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {}
            for name in ARRAYS:
                path = self.data_dir / self.index["files"][name].format(split=self.split)
                arrays[name] = np.load(path, mmap_mode="r")
                if len(arrays[name]) != len(self):
                    raise CLIError(f"{path}: {len(arrays[name])} rows, index.json says {len(self)}")
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # each process maps the files anew
        return state

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} instances")
        arrays = self._open()
        length = int(arrays["lengths"][i])
        segment_a = int(arrays["segment_a"][i])
        positions = torch.arange(self.max_length)  # (L,)
        return {
            "input_ids": torch.from_numpy(arrays["input_ids"][i].astype(np.int64)),  # (L,)
            "token_type_ids": ((positions >= segment_a) & (positions < length)).long(),  # (L,)
            "attention_mask": (positions < length).long(),  # (L,)
            "next_sentence_label": torch.tensor(int(arrays["nsp_labels"][i]), dtype=torch.long),  # ()
        }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch and drop the padding columns that no member needs.

    (B, L) tensors become (B, T) with T = the longest attention_mask in the batch; labels become (B,).
    """
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    longest = int(batch["attention_mask"].sum(dim=1).max())
    for key, value in batch.items():
        if value.dim() == 2:
            batch[key] = value[:, :longest]
    return batch
