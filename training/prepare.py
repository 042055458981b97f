"""`pocketbert prepare`: turn a text corpus into BERT pretraining instances stored as np.memmap files.

What an instance is (google-research/bert's create_pretraining_data.py, in our own code):
  * A document is a list of sentences. Consecutive sentences of one document are gathered until they
    reach a target length (max_length - 3, or with probability `short_seq_prob` a random length
    2..max_length-3, drawn afresh for every instance), then cut at a random sentence boundary into A and B.
  * With probability 0.5 B is that true continuation (label 0, IsNext); otherwise B is a run of sentences
    from a random *other* document (label 1, NotNext; Hugging Face's convention) and the unused
    sentences go back to be read again, as in google's script.
  * An over-long pair loses tokens from the FRONT of A and the END of B: `model.tokenizer.truncate_pair`,
    the same function the tokenizer uses for every pair.
  * Each document is read `dupe_factor` times; the random cuts differ each time.
  * One deliberate difference from google's script: when the gathered run is a single sentence, google
    always makes it NotNext, which pushes the label share away from 50% on corpora of short documents
    (reviews, one sentence each). Here an IsNext draw splits that sentence at a random token instead, so
    the labels stay 50/50.

How it runs, and why memory stays flat:
  * The main process streams lines and groups them into documents, and documents into chunks of about
    CHUNK_CHARS characters or CHUNK_LINES sentences (always whole documents, at least MIN_CHUNK_DOCS).
  * Worker processes (`--workers`, default all cores) each take a chunk, tokenize all its sentences in one
    SentencePiece call (C++), and build the chunk's instances. At most 2 chunks per worker are in flight,
    so memory depends on the chunk size, never on the corpus size.
  * The random B of a NotNext instance comes from another document of the same chunk (hundreds of
    documents for Wikipedia-like text). That keeps the work independent per chunk, hence parallel, and
    needs no corpus-wide index of documents in RAM. The cost: distractors come from nearby documents, so a
    corpus sorted by topic should be shuffled by document first (the bundled Wikipedia samples are).
  * The main process appends each chunk's instances to the output files in corpus order. Every chunk has
    its own random seed (from `seed` and the chunk's number), so the output does not depend on the number
    of workers. Instances are not shuffled on disk: the training sampler shuffles them.
  * A document goes to the validation split with probability `valid_fraction` (whole documents, so no
    validation sentence is ever in a training instance; training NotNext distractors come from training
    documents only). A chunk with fewer than two training documents keeps all of them for training.

Output folder (`--out`), written as `.NAME.tmp-PID` beside it and renamed when complete:
  index.json                   counts, max_length, vocab_size, dtype, tokenizer_sha256, seed, args, files
  {split}.input_ids.npy        (N, max_length) uint16 (int32 if the vocab exceeds 65536):
                               [CLS] A [SEP] B [SEP] then [PAD]=0 up to max_length
  {split}.lengths.npy          (N,) uint16: real tokens in the row, specials included
  {split}.segment_a.npy        (N,) uint16: length of [CLS] A [SEP]; token_type_ids are 1 from there
                               up to `lengths`, 0 elsewhere
  {split}.nsp_labels.npy       (N,) uint8: 0 = IsNext, 1 = NotNext
for split in ("train", "valid"). They are ordinary .npy files: `np.load(path, mmap_mode="r")` maps them.
`training.dataset.PretrainingDataset` reads them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from training.errors import CLIError

FORMAT_VERSION = 1
SPLITS = ("train", "valid")
INPUT_FORMATS = ("lines", "docs", "tsv", "csv")
ARRAYS = ("input_ids", "lengths", "segment_a", "nsp_labels")
CHUNK_CHARS = 1_000_000  # text per worker task: bounds memory (a few tens of MB per task in flight)
CHUNK_LINES = 10_000  # ...and sentences per task: bounds its instances when documents are tiny (reviews)
MIN_CHUNK_DOCS = 32  # NotNext distractors come from the chunk, so a chunk holds many documents
TASKS_PER_WORKER = 2  # chunks in flight per worker: enough to keep workers busy, few enough to bound memory
MAX_UNK_FRACTION = 0.05  # more [UNK] than this in the first chunk: the tokenizer was trained on other text
DEFAULT_TEXT_COLUMNS = ("text", "document", "sentence", "review")  # tried in order for tsv/csv input

IS_NEXT, NOT_NEXT = 0, 1

T = TypeVar("T")
R = TypeVar("R")


# --- reading documents -------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?。！？…]+[\"'”’」』)\]]*\s+")
_ABBREVIATION = re.compile(
    r"(?:[A-Za-z]\.)*[A-Za-z]|Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|etc|Inc|Ltd|Co|No|Fig|Vol|pp"
)


def split_sentences(text: str) -> list[str]:
    """Split a paragraph after . ! ? (and their CJK forms) followed by whitespace.

    Works for Korean ("...했다. 그러나 ...") and English; a full stop after an initial or a common
    abbreviation ("J. R. R. Tolkien", "U.S.", "Dr.", "e.g.") does not end a sentence.
    """
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        head = text[start : match.start()]
        last_word = head.rsplit(None, 1)[-1] if head.strip() else ""
        if _ABBREVIATION.fullmatch(last_word.lstrip("(\"'")):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def iter_documents(
    paths: Sequence[str | Path], input_format: str = "lines", text_column: str | None = None
) -> Iterator[list[str]]:
    """Documents (lists of non-empty sentences) from every file, streamed.

    lines: one sentence or paragraph per line, a blank line between documents (BERT's layout).
    docs:  one document per line, split into sentences by `split_sentences`.
    tsv/csv: a header row, then one document per row, taken from `text_column` (a name or a 0-based index;
           default the first of DEFAULT_TEXT_COLUMNS present) and split into sentences.
    """
    from training.textio import iter_lines

    for path in paths:
        if input_format == "lines":
            document: list[str] = []
            for line in iter_lines([path]):
                line = line.strip()
                if line:
                    document.append(line)
                elif document:
                    yield document
                    document = []
            if document:
                yield document
        elif input_format == "docs":
            for line in iter_lines([path]):
                sentences = split_sentences(line)
                if sentences:
                    yield sentences
        elif input_format in ("tsv", "csv"):
            yield from _iter_table_documents(path, input_format, text_column)
        else:
            raise CLIError(
                f"unknown input format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}"
            )


def _iter_table_documents(
    path: str | Path, input_format: str, text_column: str | None
) -> Iterator[list[str]]:
    """One document per row of a TSV (no quoting, so a stray quote never swallows rows) or CSV (RFC 4180)."""
    from training.textio import iter_lines

    if input_format == "tsv":
        reader = csv.reader(iter_lines([path]), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(iter_lines([path]))
    try:
        header = next(reader, None)
        if header is None:
            return
        column = _find_column(path, header, text_column)
        for row in reader:
            if len(row) <= column:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                raise CLIError(
                    f"{path}:{reader.line_num}: {len(row)} fields, no column {column} ({header[column]!r})"
                )
            sentences = split_sentences(row[column])
            if sentences:
                yield sentences
    except csv.Error as exc:
        raise CLIError(f"{path}:{reader.line_num}: not valid {input_format.upper()} ({exc})") from exc


def _find_column(path: str | Path, header: list[str], text_column: str | None) -> int:
    if text_column is not None and text_column.isdigit():
        if int(text_column) >= len(header):
            raise CLIError(f"{path}: no column {text_column}: the header has {len(header)} columns")
        return int(text_column)
    candidates = [text_column] if text_column is not None else list(DEFAULT_TEXT_COLUMNS)
    for name in candidates:
        if name in header:
            return header.index(name)
    wanted = f"column {text_column!r}" if text_column is not None else f"text column ({'/'.join(candidates)})"
    raise CLIError(f"{path}:1: no {wanted} in the header {header}; name it with --text-column")


@dataclass
class Chunk:
    """A batch of whole documents: the unit of work of one worker task."""

    index: int
    documents: list[list[str]] = field(default_factory=list)
    chars: int = 0
    lines: int = 0

    def add(self, document: list[str]) -> None:
        self.documents.append(document)
        self.chars += sum(map(len, document))
        self.lines += len(document)


def iter_chunks(
    documents: Iterable[list[str]],
    chunk_chars: int = CHUNK_CHARS,
    min_docs: int = MIN_CHUNK_DOCS,
    source: str = "the input",
    chunk_lines: int = CHUNK_LINES,
) -> Iterator[Chunk]:
    """Group documents into chunks of about chunk_chars characters or chunk_lines sentences, whichever comes
    first, and at least min_docs documents.

    One chunk is held back until the next one is complete, so that a short tail can join it (NotNext needs
    other documents in the chunk) and so that an empty or one-document corpus is reported before any work
    starts.
    """
    pending: Chunk | None = None
    current = Chunk(0)
    total_docs = 0
    for document in documents:
        current.add(document)
        total_docs += 1
        full = current.chars >= chunk_chars or current.lines >= chunk_lines
        if full and len(current.documents) >= min_docs:
            if pending is not None:
                yield pending
            pending, current = current, Chunk(current.index + 1)
    if total_docs == 0:
        raise CLIError(f"{source}: empty corpus (no text lines)")
    if total_docs == 1:
        raise CLIError(
            f"{source}: only one document; NotNext pairs need sentences from other documents "
            "(separate documents with a blank line, or see --format)"
        )
    if current.documents:
        if pending is not None and len(current.documents) < min_docs:
            pending.documents.extend(current.documents)
            pending.chars += current.chars
            pending.lines += current.lines
        else:
            if pending is not None:
                yield pending
            pending = current
    if pending is not None:
        yield pending


# --- building instances (runs in the workers) ---------------------------------------------------------


@dataclass(frozen=True)
class InstanceConfig:
    """Everything a worker needs besides the chunk; picklable, sent once per worker."""

    tokenizer_path: str
    max_length: int = 128
    dupe_factor: int = 5
    short_seq_prob: float = 0.1
    valid_fraction: float = 0.01
    seed: int = 0
    dtype: str = "uint16"


@dataclass
class SplitArrays:
    """One chunk's instances of one split; shapes (N, max_length) and (N,)."""

    input_ids: np.ndarray
    lengths: np.ndarray
    segment_a: np.ndarray
    nsp_labels: np.ndarray
    documents: int = 0


@dataclass
class ChunkResult:
    index: int
    lines: int
    tokens: int
    unk_tokens: int
    splits: dict[str, SplitArrays]


_worker_state: dict[str, Any] = {}  # the tokenizer and config of this process, set by _init_worker


def _init_worker(config: InstanceConfig) -> None:
    from model.tokenizer import Tokenizer

    _worker_state["config"] = config
    _worker_state["tokenizer"] = Tokenizer(config.tokenizer_path)


def process_chunk(chunk: Chunk) -> ChunkResult:
    """Tokenize a chunk and build its instances (in a worker process, after _init_worker)."""
    from model.tokenizer import UNK_ID

    config: InstanceConfig = _worker_state["config"]
    sentences = [sentence for document in chunk.documents for sentence in document]
    token_lists = _worker_state["tokenizer"].encode_ids_batch(sentences)
    # All token ids of the chunk in one flat array; a sentence is a [start, end) span of it.
    sentence_lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(chain.from_iterable(token_lists), dtype=np.int32, count=int(sentence_lengths.sum()))
    del token_lists
    ends = np.cumsum(sentence_lengths).tolist()
    starts = [0, *ends[:-1]]
    doc_spans: list[list[tuple[int, int]]] = []
    position = 0
    for document in chunk.documents:
        span_range = range(position, position + len(document))
        doc_spans.append([(starts[s], ends[s]) for s in span_range if ends[s] > starts[s]])
        position += len(document)

    rng = random.Random(config.seed * 1_000_003 + chunk.index)
    is_valid = assign_valid(
        doc_spans, config.valid_fraction, np.random.default_rng([config.seed, chunk.index])
    )
    instances = create_instances(doc_spans, is_valid, flat, config, rng)
    splits = {}
    for split, want_valid in (("train", False), ("valid", True)):
        arrays = fill_arrays(instances[split], config.max_length, np.dtype(config.dtype))
        arrays.documents = sum(1 for d, spans in enumerate(doc_spans) if spans and is_valid[d] == want_valid)
        splits[split] = arrays
    return ChunkResult(
        chunk.index, chunk.lines, int(flat.size), int(np.count_nonzero(flat == UNK_ID)), splits
    )


def assign_valid(
    doc_spans: list[list[tuple[int, int]]], valid_fraction: float, rng: np.random.Generator
) -> list[bool]:
    """Per document: does it go to the validation split? Never if that leaves < 2 training documents."""
    draws = rng.random(len(doc_spans)) < valid_fraction
    is_valid = [bool(v) and bool(spans) for v, spans in zip(draws, doc_spans, strict=True)]
    train_docs = sum(1 for v, spans in zip(is_valid, doc_spans, strict=True) if spans and not v)
    return is_valid if train_docs >= 2 else [False] * len(doc_spans)


Pair = tuple[np.ndarray, np.ndarray, int]  # (tokens_a, tokens_b, nsp_label), views into the chunk's tokens


def create_instances(
    doc_spans: list[list[tuple[int, int]]],
    is_valid: list[bool],
    flat: np.ndarray,
    config: InstanceConfig,
    rng: random.Random,
) -> dict[str, list[Pair]]:
    """All instances of a chunk, dupe_factor passes over its documents, sorted into train and valid.

    Training documents draw NotNext distractors from training documents only; validation documents from
    any other document of the chunk (no validation text ever reaches the training split).
    """
    nonempty = [d for d, spans in enumerate(doc_spans) if spans]
    train_pool = [d for d in nonempty if not is_valid[d]]
    pools = {False: train_pool, True: nonempty}
    out: dict[str, list[Pair]] = {"train": [], "valid": []}
    for _ in range(config.dupe_factor):
        for d in nonempty:
            random_other = partial(_other_document, doc_spans, pools[is_valid[d]], d, rng)
            split = "valid" if is_valid[d] else "train"
            out[split].extend(instances_from_document(doc_spans[d], random_other, flat, config, rng))
    return out


def _other_document(
    doc_spans: list[list[tuple[int, int]]], pool: list[int], d: int, rng: random.Random
) -> list[tuple[int, int]] | None:
    """A document of `pool` other than d (which is in pool), uniformly; None if there is none."""
    if len(pool) < 2:
        return None
    pick = pool[rng.randrange(len(pool) - 1)]  # uniform over pool[:-1]; d, if drawn, stands for pool[-1]
    return doc_spans[pool[-1]] if pick == d else doc_spans[pick]


def instances_from_document(
    spans: list[tuple[int, int]],
    random_other: Callable[[], list[tuple[int, int]] | None],
    flat: np.ndarray,
    config: InstanceConfig,
    rng: random.Random,
) -> list[Pair]:
    """Google's per-document loop: gather sentences to a target length, cut into A and B, pick the label."""
    from model.tokenizer import truncate_pair

    max_tokens = config.max_length - 3  # room for [CLS] A [SEP] B [SEP]

    def target_length() -> int:
        return rng.randint(2, max_tokens) if rng.random() < config.short_seq_prob else max_tokens

    pairs: list[Pair] = []
    target = target_length()
    first = i = 0  # the gathered run is sentences first..i
    gathered = 0
    while i < len(spans):
        gathered += spans[i][1] - spans[i][0]
        if i == len(spans) - 1 or gathered >= target:
            n_sentences = i - first + 1
            a_end = first + (1 if n_sentences == 1 else rng.randint(1, n_sentences - 1))  # A = first..a_end-1
            tokens_a = flat[spans[first][0] : spans[a_end - 1][1]]
            can_continue = n_sentences > 1 or len(tokens_a) >= 2  # is there a true B to take?
            label = IS_NEXT if rng.random() < 0.5 else NOT_NEXT
            other = random_other() if label == NOT_NEXT or not can_continue else None
            if other is not None:
                label, tokens_b = NOT_NEXT, _random_run(other, max(1, target - len(tokens_a)), flat, rng)
                i = a_end - 1  # the sentences not used as B are read again for the next instance
            elif n_sentences > 1:
                label, tokens_b = IS_NEXT, flat[spans[a_end][0] : spans[i][1]]
            elif len(tokens_a) >= 2:  # a lone sentence: its true continuation is its own second part
                cut = rng.randint(1, len(tokens_a) - 1)
                label, tokens_a, tokens_b = IS_NEXT, tokens_a[:cut], tokens_a[cut:]
            else:
                tokens_b = None  # a one-token document and no other document: no pair to make
            if tokens_b is not None:
                tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, max_tokens)
                pairs.append((tokens_a, tokens_b, label))
            first, gathered, target = i + 1, 0, target_length()
        i += 1
    return pairs


def _random_run(
    spans: list[tuple[int, int]], target: int, flat: np.ndarray, rng: random.Random
) -> np.ndarray:
    """Sentences of another document from a random start until `target` tokens (google's random B)."""
    start = rng.randrange(len(spans))
    end = start
    while end < len(spans) - 1 and spans[end][1] - spans[start][0] < target:
        end += 1
    return flat[spans[start][0] : spans[end][1]]


def fill_arrays(pairs: list[Pair], max_length: int, dtype: np.dtype) -> SplitArrays:
    """Rows [CLS] A [SEP] B [SEP] [PAD]... of shape (N, max_length), plus per-row lengths and labels."""
    from model.tokenizer import CLS_ID, SEP_ID

    n = len(pairs)
    input_ids = np.zeros((n, max_length), dtype=dtype)  # (N, L), 0 = [PAD]
    lengths = np.empty(n, dtype=np.uint16)
    segment_a = np.empty(n, dtype=np.uint16)
    nsp_labels = np.empty(n, dtype=np.uint8)
    for row, (tokens_a, tokens_b, label) in enumerate(pairs):
        len_a, len_b = len(tokens_a), len(tokens_b)
        ids = input_ids[row]
        ids[0] = CLS_ID
        ids[1 : 1 + len_a] = tokens_a
        ids[1 + len_a] = SEP_ID
        ids[2 + len_a : 2 + len_a + len_b] = tokens_b
        ids[2 + len_a + len_b] = SEP_ID
        lengths[row] = len_a + len_b + 3
        segment_a[row] = len_a + 2
        nsp_labels[row] = label
    return SplitArrays(input_ids, lengths, segment_a, nsp_labels)


# --- writing -------------------------------------------------------------------------------------------


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


def _parallel_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, initializer: Callable[..., None], initargs: tuple
) -> Iterator[R]:
    """fn over items in order, in `workers` processes, with at most TASKS_PER_WORKER tasks per worker queued.

    Pool.imap would read the whole input ahead of the workers; submitting only while few tasks are in
    flight is what keeps memory flat. workers=1 runs in this process (simple to debug, same results).
    """
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with context.Pool(workers, initializer, initargs) as pool:
        in_flight: deque = deque()
        for item in items:
            in_flight.append(pool.apply_async(fn, (item,)))
            if len(in_flight) >= TASKS_PER_WORKER * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def _check_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "index.json").is_file())
    ):
        raise CLIError(
            f"{out_dir}: exists and is not an earlier `pocketbert prepare` output; choose another --out"
        )


def _remove_stale_tmp_dirs(out_dir: Path) -> None:
    """Delete `.NAME.tmp-PID` folders left by a killed earlier run (its process no longer exists)."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an earlier output there is replaced only now."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)


def prepare(
    tokenizer_dir: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    max_length: int = 128,
    dupe_factor: int = 5,
    short_seq_prob: float = 0.1,
    valid_fraction: float = 0.01,
    workers: int | None = None,
    seed: int = 0,
    input_format: str = "lines",
    text_column: str | None = None,
    show_progress: bool = True,
) -> dict:
    """Write pretraining instances of `inputs` to out_dir (layout: module docstring); return the index."""
    from tqdm import tqdm

    from model.tokenizer import NUM_SPECIAL, Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)  # TokenizerError: missing, unreadable or without our special tokens
    _check_arguments(inputs, max_length, dupe_factor, short_seq_prob, valid_fraction, input_format)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)
    config = InstanceConfig(
        str(tokenizer.path), max_length, dupe_factor, short_seq_prob, valid_fraction, seed, dtype.name
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(out_dir)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        writers = {
            split: {
                "input_ids": NpyAppender(tmp_dir / f"{split}.input_ids.npy", dtype, (max_length,)),
                "lengths": NpyAppender(tmp_dir / f"{split}.lengths.npy", np.uint16),
                "segment_a": NpyAppender(tmp_dir / f"{split}.segment_a.npy", np.uint16),
                "nsp_labels": NpyAppender(tmp_dir / f"{split}.nsp_labels.npy", np.uint8),
            }
            for split in SPLITS
        }
        stats = {split: {"instances": 0, "documents": 0, "tokens": 0, "is_next": 0} for split in SPLITS}
        corpus_tokens = unk_tokens = 0
        source = str(inputs[0]) if len(inputs) == 1 else f"{inputs[0]} (+{len(inputs) - 1} more)"
        documents = iter_documents(inputs, input_format, text_column)
        chunks = iter_chunks(documents, chunk_chars=CHUNK_CHARS, min_docs=MIN_CHUNK_DOCS, source=source)
        with tqdm(desc="prepare", unit=" lines", disable=not show_progress, dynamic_ncols=True) as bar:
            for result in _parallel_map(process_chunk, chunks, workers, _init_worker, (config,)):
                if result.index == 0 and result.unk_tokens > MAX_UNK_FRACTION * max(result.tokens, 1):
                    raise CLIError(
                        f"{tokenizer.path}: does not match {source}: "
                        f"{result.unk_tokens / result.tokens:.0%} of "
                        "the tokens are [UNK]; train a tokenizer on this kind of text"
                    )
                corpus_tokens += result.tokens
                unk_tokens += result.unk_tokens
                for split, arrays in result.splits.items():
                    for name in ARRAYS:
                        writers[split][name].append(getattr(arrays, name))
                    stats[split]["instances"] += len(arrays.lengths)
                    stats[split]["documents"] += arrays.documents
                    stats[split]["tokens"] += int(arrays.lengths.sum(dtype=np.int64))
                    stats[split]["is_next"] += int(np.count_nonzero(arrays.nsp_labels == IS_NEXT))
                bar.update(result.lines)
                bar.set_postfix(instances=sum(s["instances"] for s in stats.values()), refresh=False)
        for split_writers in writers.values():
            for writer in split_writers.values():
                writer.close()
        index = {
            "format": FORMAT_VERSION,
            "max_length": max_length,
            "vocab_size": tokenizer.vocab_size,
            "num_special": NUM_SPECIAL,
            "dtype": dtype.name,
            "tokenizer_sha256": tokenizer.checksum,
            "seed": seed,
            "args": {
                "tokenizer": str(tokenizer.path),
                "inputs": [str(p) for p in inputs],
                "out": str(out_dir),
                "input_format": input_format,
                "text_column": text_column,
                "workers": workers,
                **{k: v for k, v in asdict(config).items() if k not in ("tokenizer_path", "dtype")},
            },
            "corpus_tokens": corpus_tokens,
            "unk_fraction": round(unk_tokens / max(corpus_tokens, 1), 6),
            "files": {name: "{split}." + name + ".npy" for name in ARRAYS},
            "splits": stats,
        }
        (tmp_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return index


def _check_arguments(
    inputs: Sequence[str | Path],
    max_length: int,
    dupe_factor: int,
    short_seq_prob: float,
    valid_fraction: float,
    input_format: str,
) -> None:
    if not inputs:
        raise CLIError("no input files")
    for path in inputs:
        if not Path(path).is_file():
            raise CLIError(f"{path}: no such file")
    if not 8 <= max_length <= 65535:
        raise CLIError(f"--max-length must be between 8 and 65535, got {max_length}")
    if dupe_factor < 1:
        raise CLIError(f"--dupe-factor must be at least 1, got {dupe_factor}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise CLIError(f"--short-seq-prob must be between 0 and 1, got {short_seq_prob}")
    if not 0.0 <= valid_fraction < 1.0 or math.isnan(valid_fraction):
        raise CLIError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    if input_format not in INPUT_FORMATS:
        raise CLIError(f"unknown --format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}")


# --- command line --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="folder with tokenizer.model (or the file itself), from `pocketbert tokenizer train`",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="UTF-8 text files (.gz too); see --format for their layout",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created; an earlier prepare output there is replaced on success)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="tokens per instance, [CLS] and two [SEP] included (default 128)",
    )
    parser.add_argument(
        "--dupe-factor",
        type=int,
        default=5,
        help="times each document is read, with different random cuts (default 5)",
    )
    parser.add_argument(
        "--short-seq-prob",
        type=float,
        default=0.1,
        help="share of instances with a random shorter target length (default 0.1)",
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.01,
        help="share of documents held out as the validation split (default 0.01)",
    )
    parser.add_argument(
        "--format",
        dest="input_format",
        choices=INPUT_FORMATS,
        default="lines",
        help="lines: a sentence or paragraph per line, blank line between documents; "
        "docs: one document per line, split into sentences; "
        "tsv/csv: a header row, one document per row (see --text-column)",
    )
    parser.add_argument(
        "--text-column",
        metavar="NAME",
        help="tsv/csv column holding the text: a header name or a 0-based index "
        f"(default: the first of {', '.join(DEFAULT_TEXT_COLUMNS)})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tokenizing processes (default: all cores; 1 runs in the main process)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the output does not depend on --workers"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    index = prepare(
        args.tokenizer,
        args.input,
        args.out,
        max_length=args.max_length,
        dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob,
        valid_fraction=args.valid_fraction,
        workers=args.workers,
        seed=args.seed,
        input_format=args.input_format,
        text_column=args.text_column,
        show_progress=not args.quiet,
    )
    for split, stats in index["splits"].items():
        print(
            f"{split}: {stats['instances']} instances from {stats['documents']} documents, "
            f"{stats['tokens']} tokens"
        )
    print(f"wrote {args.out}")
    return 0
