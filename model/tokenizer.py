"""SentencePiece tokenizer with BERT's special tokens, pair encoding and truncation.

This module is the single home of "text -> model inputs": pretraining data preparation, fine-tuning,
export checks and the web service all call it, so it must never import torch.

Special tokens sit at fixed ids in every tokenizer this project trains:
[PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3 [CLS]=4 [SEP]=5 [MASK]=6; ordinary pieces start at 7.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import sentencepiece as spm

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are special: never masked, never a random replacement
TOKENIZER_FILENAME = "tokenizer.model"
IS_NEXT, NOT_NEXT = 0, 1  # next-sentence label of a pair: B follows A, or not (Hugging Face's convention)
WORD_BOUNDARY = "\u2581"  # "▁": SentencePiece's mark for "a new word starts here"
_THREADED_BATCH_MIN = 256  # batches at least this large go through SentencePiece's threaded list call

S = TypeVar("S", bound=Sequence)


class TokenizerError(ValueError):
    """A tokenizer file that is missing, unreadable, or not trained with this project's special tokens."""


@dataclass
class Encoding:
    """One encoded text or pair, unpadded: [CLS] A [SEP] (B [SEP])."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class BatchEncoding:
    """A padded batch as int64 arrays of shape (B, T), ready for torch or onnxruntime."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids,
            "token_type_ids": self.token_type_ids,
            "attention_mask": self.attention_mask,
        }


def truncate_pair(tokens_a: S, tokens_b: S, max_tokens: int) -> tuple[S, S]:
    """Trim a pair to at most max_tokens, dropping from the FRONT of A and the END of B.

    Tokens go one at a time from the longer side (B on a tie), as in google-research/bert, but from these
    sides so that A keeps the words nearest the boundary, and so does B. Closed form of that loop.
    """
    len_a, len_b = len(tokens_a), len(tokens_b)
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return tokens_a, tokens_b
    # First the longer side shrinks to the shorter one's length, then the two alternate starting with B.
    gap = min(excess, abs(len_a - len_b))
    drop_a = gap if len_a > len_b else 0
    drop_b = gap if len_b > len_a else 0
    rest = excess - gap
    drop_b += (rest + 1) // 2
    drop_a += rest // 2
    return tokens_a[drop_a:], tokens_b[: len_b - drop_b]


def full_length(ids_a: Sized, ids_b: Sized | None = None) -> int:
    """Tokens in [CLS] A [SEP] (B [SEP]) before any truncation: what is compared with a model's max_length
    to tell whether an input will be cut."""
    return len(ids_a) + 2 if ids_b is None else len(ids_a) + len(ids_b) + 3


def pad_batch(encodings: Sequence[Encoding], pad_to: int | None = None) -> BatchEncoding:
    """Pad encodings to the longest member (or to pad_to) with [PAD]; attention_mask marks real tokens."""
    length = max([len(e) for e in encodings] + [pad_to or 0])
    input_ids = np.full((len(encodings), length), PAD_ID, dtype=np.int64)
    token_type_ids = np.zeros((len(encodings), length), dtype=np.int64)
    attention_mask = np.zeros((len(encodings), length), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc)
        input_ids[row, :n] = enc.input_ids
        token_type_ids[row, :n] = enc.token_type_ids
        attention_mask[row, :n] = 1
    return BatchEncoding(input_ids, token_type_ids, attention_mask)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Tokenizer:
    """A trained SentencePiece model plus BERT's input conventions."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILENAME
        if not path.is_file():
            raise TokenizerError(f"{path}: no tokenizer file (train one with `pocketbert tokenizer train`)")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path}: not a SentencePiece model ({exc})") from exc
        found = tuple(self.sp.id_to_piece(i) for i in range(min(NUM_SPECIAL, self.sp.get_piece_size())))
        if found != SPECIAL_TOKENS:
            raise TokenizerError(
                f"{path}: special tokens are {found}, expected {SPECIAL_TOKENS} at ids 0-6; "
                "train the tokenizer with `pocketbert tokenizer train`"
            )
        self._boundary_id = self.sp.piece_to_id(WORD_BOUNDARY)  # the lone "▁" piece, if the vocab has it
        self._checksum: str | None = None

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def checksum(self) -> str:
        """sha256 of the model file: data and bundles record it to catch a mismatched tokenizer."""
        if self._checksum is None:
            self._checksum = file_sha256(self.path)
        return self._checksum

    def id_to_token(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def token_to_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    # --- text -> ids ------------------------------------------------------------------------------
    def encode_ids(self, text: str) -> list[int]:
        """Token ids of one text, no special tokens added; a typed "[MASK]" becomes MASK_ID.

        SentencePiece writes "the [MASK]." as ▁the ▁ [MASK] . : the lone ▁ before the mask is dropped,
        since in pretraining a masked token stands for a whole piece, word-start mark included.
        """
        return self._drop_boundary_before_mask(self.sp.encode(text, out_type=int))

    def encode_ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """encode_ids over many texts.

        SentencePiece's list call encodes on a thread pool: ~3x faster for thousands of texts (data
        preparation), but starting the threads costs more than it saves for a web request's handful.
        """
        if len(texts) < _THREADED_BATCH_MIN:
            return [self.encode_ids(text) for text in texts]
        return [self._drop_boundary_before_mask(ids) for ids in self.sp.encode(list(texts), out_type=int)]

    def _drop_boundary_before_mask(self, ids: list[int]) -> list[int]:
        if MASK_ID not in ids:
            return ids
        return [
            t for i, t in enumerate(ids) if not (t == self._boundary_id and ids[i + 1 : i + 2] == [MASK_ID])
        ]

    def tokenize(self, text: str) -> list[str]:
        return [self.sp.id_to_piece(i) for i in self.encode_ids(text)]

    def build_inputs(
        self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None, max_length: int = 512
    ) -> Encoding:
        """[CLS] A [SEP] or [CLS] A [SEP] B [SEP] within max_length.

        A single text loses its end; a pair loses A's front and B's end (`truncate_pair`).
        """
        if ids_b is None:
            if max_length < 2:
                raise ValueError(f"max_length must be at least 2 for a single text, got {max_length}")
            body = list(ids_a[: max_length - 2])
            return Encoding([CLS_ID, *body, SEP_ID], [0] * (len(body) + 2))
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 for a pair, got {max_length}")
        a, b = truncate_pair(list(ids_a), list(ids_b), max_length - 3)
        return Encoding([CLS_ID, *a, SEP_ID, *b, SEP_ID], [0] * (len(a) + 2) + [1] * (len(b) + 1))

    def encode(self, text: str, text_pair: str | None = None, max_length: int = 512) -> Encoding:
        ids_b = None if text_pair is None else self.encode_ids(text_pair)
        return self.build_inputs(self.encode_ids(text), ids_b, max_length)

    def encode_batch(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        max_length: int = 512,
        pad_to: int | None = None,
    ) -> BatchEncoding:
        """Encode and pad a batch to its longest member (or pad_to)."""
        ids_b = self.encode_ids_batch(text_pairs) if text_pairs is not None else None
        return self.build_batch(self.encode_ids_batch(texts), ids_b, max_length, pad_to)

    def build_batch(
        self,
        ids_a: Sequence[Sequence[int]],
        ids_b: Sequence[Sequence[int]] | None = None,
        max_length: int = 512,
        pad_to: int | None = None,
    ) -> BatchEncoding:
        """build_inputs over texts already encoded (encode_ids), padded as encode_batch pads."""
        if ids_b is not None and len(ids_b) != len(ids_a):
            raise ValueError(f"{len(ids_a)} texts but {len(ids_b)} text pairs")
        seconds = [None] * len(ids_a) if ids_b is None else ids_b
        rows = [self.build_inputs(a, b, max_length) for a, b in zip(ids_a, seconds, strict=True)]
        return pad_batch(rows, pad_to)

    # --- ids -> text ------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids; special tokens are dropped unless skip_special_tokens=False."""
        pieces = []
        for token_id in (int(i) for i in ids):
            if token_id < NUM_SPECIAL:
                if skip_special_tokens:
                    continue
                # a mask stood for a word-start piece: render it as a separate word
                pieces.append(WORD_BOUNDARY + SPECIAL_TOKENS[token_id])
            else:
                pieces.append(self.sp.id_to_piece(token_id))
        return "".join(pieces).replace(WORD_BOUNDARY, " ").strip()


def resolve_tokenizer(explicit: str | Path | None, recorded: dict, source: str) -> Tokenizer:
    """The tokenizer a user named, else the one an artefact (checkpoint, data index) records.

    `recorded` may hold "tokenizer" (a path) and "tokenizer_sha256"; a tokenizer whose file differs
    from the recorded checksum would silently scramble every id, so it is refused.
    """
    path = explicit or recorded.get("tokenizer")
    if not path:
        raise TokenizerError(f"no tokenizer: pass --tokenizer ({source} does not record one)")
    tokenizer = Tokenizer(path)
    expected = recorded.get("tokenizer_sha256")
    if expected and tokenizer.checksum != expected:
        raise TokenizerError(f"{tokenizer.path}: not the tokenizer {source} was made with (sha256 differs)")
    return tokenizer
