"""Building BERT pretraining instances from documents: google-research/bert's create_pretraining_data.py,
in our own code. It runs in `pocketbert prepare`'s worker processes, one Chunk of documents at a time.

  * A document is a list of sentences. Consecutive sentences of one document are gathered until they
    reach a target length (max_length - 3, or with probability `short_seq_prob` a random length
    2..max_length-3, drawn afresh for every instance), then cut at a random sentence boundary into A and B.
  * With probability 0.5 B is that true continuation (label IS_NEXT); otherwise B is a run of sentences
    from a random *other* document (label NOT_NEXT) and the unused sentences go back to be read again, as
    in google's script.
  * An over-long pair loses tokens from the FRONT of A and the END of B: `model.tokenizer.truncate_pair`,
    the same function the tokenizer uses for every pair.
  * Each document is read `dupe_factor` times; the random cuts differ each time.
  * One deliberate difference from google's script: when the gathered run is a single sentence, google
    always makes it NotNext, which pushes the label share away from 50% on corpora of short documents
    (reviews, one sentence each). Here an IsNext draw splits that sentence at a random token instead, so
    the labels stay 50/50.
  * The random B of a NotNext instance comes from another document of the same chunk, so that chunks
    are independent (hence parallel) and no corpus-wide index of documents is held in memory.
  * A document goes to the validation split with probability `valid_fraction` (whole documents, so no
    validation sentence is ever in a training instance; training NotNext distractors come from training
    documents only). A chunk with fewer than two training documents keeps all of them for training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import Any

import numpy as np

from model.tokenizer import CLS_ID, IS_NEXT, NOT_NEXT, SEP_ID, UNK_ID, Tokenizer, truncate_pair
from training.data_format import SplitArrays


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
class ChunkResult:
    """What a worker sends back: the chunk's instances per split, and counts for index.json."""

    index: int
    lines: int
    tokens: int
    unk_tokens: int
    splits: dict[str, SplitArrays]


_worker_state: dict[str, Any] = {}  # the tokenizer and config of this process, set by init_worker


def init_worker(config: InstanceConfig) -> None:
    _worker_state["config"] = config
    _worker_state["tokenizer"] = Tokenizer(config.tokenizer_path)


def process_chunk(chunk: Chunk) -> ChunkResult:
    """Tokenize a chunk and build its instances (in a worker process, after init_worker)."""
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
