"""`pocketbert prepare`: turn a text corpus into BERT pretraining instances in a prepared-data folder.

Three stages, each in its own module: reading documents from the corpus (training/corpus.py), building
instances from them (training/instances.py, which says what an instance is), and writing the folder
(training/data_format.py, which gives its layout). This module runs them.

How it runs, and why memory stays flat:
  * The main process streams lines and groups them into documents, and documents into chunks of about
    CHUNK_CHARS characters or CHUNK_LINES sentences (always whole documents, at least MIN_CHUNK_DOCS).
  * Worker processes (`--workers`, default all cores) each take a chunk, tokenize all its sentences in one
    SentencePiece call (C++), and build the chunk's instances. At most TASKS_PER_WORKER chunks per worker
    are in flight, so memory depends on the chunk size, never on the corpus size.
  * The random B of a NotNext instance comes from another document of the same chunk (hundreds of
    documents for Wikipedia-like text). The cost: distractors come from nearby documents, so a corpus
    sorted by topic should be shuffled by document first (the bundled Wikipedia samples are).
  * The main process appends each chunk's instances to the output files in corpus order. Every chunk has
    its own random seed (from `seed` and the chunk's number), so the output does not depend on the number
    of workers. Instances are not shuffled on disk: the training sampler shuffles them.
  * The folder is built beside `--out` and swapped in when complete (training/publish.py), so a failure
    leaves nothing half-written and an earlier output is replaced only by a finished one.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from model.tokenizer import NUM_SPECIAL, Tokenizer
from training.corpus import INPUT_FORMATS, iter_documents
from training.data_format import FILES, FORMAT_VERSION, INDEX_FILENAME, SPLITS, SplitWriter, write_index
from training.errors import CLIError
from training.instances import Chunk, ChunkResult, InstanceConfig, init_worker, process_chunk
from training.publish import staged

CHUNK_CHARS = 1_000_000  # text per worker task: bounds memory (a few tens of MB per task in flight)
CHUNK_LINES = 10_000  # ...and sentences per task: bounds its instances when documents are tiny (reviews)
MIN_CHUNK_DOCS = 32  # NotNext distractors come from the chunk, so a chunk holds many documents
TASKS_PER_WORKER = 2  # chunks in flight per worker: enough to keep workers busy, few enough to bound memory
MAX_UNK_FRACTION = 0.05  # more [UNK] than this in the first chunk: the tokenizer was trained on other text

T = TypeVar("T")
R = TypeVar("R")


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
) -> dict[str, Any]:
    """Write the pretraining instances of `inputs` to out_dir (training/data_format.py); return its index."""
    tokenizer = Tokenizer(tokenizer_dir)  # TokenizerError: missing, unreadable or without our special tokens
    _check_arguments(inputs, max_length, dupe_factor, short_seq_prob, valid_fraction, input_format)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)
    config = InstanceConfig(
        str(tokenizer.path), max_length, dupe_factor, short_seq_prob, valid_fraction, seed, dtype.name
    )
    source = str(inputs[0]) if len(inputs) == 1 else f"{inputs[0]} (+{len(inputs) - 1} more)"
    chunks = iter_chunks(
        iter_documents(inputs, input_format, text_column),
        chunk_chars=CHUNK_CHARS,
        min_docs=MIN_CHUNK_DOCS,
        source=source,
    )
    with staged(out_dir, overwrite=True) as staging:
        writers = {split: SplitWriter(staging, split, dtype, max_length) for split in SPLITS}
        corpus_tokens = unk_tokens = 0
        with tqdm(desc="prepare", unit=" lines", disable=not show_progress, dynamic_ncols=True) as bar:
            for result in _parallel_map(process_chunk, chunks, workers, init_worker, (config,)):
                _check_unknown_tokens(result, tokenizer, source)
                corpus_tokens += result.tokens
                unk_tokens += result.unk_tokens
                for split, arrays in result.splits.items():
                    writers[split].append(arrays)
                bar.update(result.lines)
                bar.set_postfix(instances=sum(w.stats["instances"] for w in writers.values()), refresh=False)
        for writer in writers.values():
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
            "files": FILES,
            "splits": {split: writer.stats for split, writer in writers.items()},
        }
        write_index(staging, index)
    return index


def _check_unknown_tokens(result: ChunkResult, tokenizer: Tokenizer, source: str) -> None:
    """Judged on the first chunk: a tokenizer trained on other text makes mostly [UNK]."""
    if result.index == 0 and result.unk_tokens > MAX_UNK_FRACTION * max(result.tokens, 1):
        raise CLIError(
            f"{tokenizer.path}: does not match {source}: {result.unk_tokens / result.tokens:.0%} of "
            "the tokens are [UNK]; train a tokenizer on this kind of text"
        )


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
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / INDEX_FILENAME).is_file())
    ):
        raise CLIError(
            f"{out_dir}: exists and is not an earlier `pocketbert prepare` output; choose another --out"
        )


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
