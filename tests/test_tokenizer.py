"""Tokenizer: special ids, Korean and English, [MASK] in raw text, pair encoding and truncation."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from model.tokenizer import (
    CLS_ID,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    truncate_pair,
)
from training.errors import CLIError
from training.tokenizer_train import reservoir_sample, train_tokenizer


def _reference_truncate(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """The rule spelled out as a loop: one token at a time off the longer side (B on a tie)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop(0)  # front of A
        else:
            b.pop()  # end of B
    return a, b


@pytest.mark.parametrize("len_a", [0, 1, 5, 9, 30])
@pytest.mark.parametrize("len_b", [0, 1, 4, 9, 31])
@pytest.mark.parametrize("max_tokens", [0, 3, 8, 20, 100])
def test_truncate_pair_takes_front_of_a_and_end_of_b(len_a: int, len_b: int, max_tokens: int) -> None:
    a, b = list(range(100, 100 + len_a)), list(range(200, 200 + len_b))
    assert truncate_pair(a, b, max_tokens) == _reference_truncate(a, b, max_tokens)


def test_special_tokens_have_fixed_ids(tiny_tokenizer: Tokenizer) -> None:
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tiny_tokenizer.id_to_token(token_id) == token
        assert tiny_tokenizer.token_to_id(token) == token_id


def test_english_and_korean_round_trip(tiny_tokenizer: Tokenizer) -> None:
    for text in [
        "The cat likes the park.",
        "고양이가 정말 좋아한다.",
        "My friend 친구와 함께 visits the river.",
    ]:
        ids = tiny_tokenizer.encode_ids(text)
        assert all(i >= NUM_SPECIAL or i == 1 for i in ids)
        assert tiny_tokenizer.decode(ids) == text


def test_mask_typed_in_text_is_one_mask_token(tiny_tokenizer: Tokenizer) -> None:
    enc = tiny_tokenizer.encode("The cat sat on the [MASK].")
    assert enc.input_ids.count(MASK_ID) == 1
    assert "[" not in tiny_tokenizer.tokenize("the [MASK] and [MASK]")  # never split into pieces
    assert tiny_tokenizer.encode_ids("[MASK] 고양이가 [MASK]").count(MASK_ID) == 2
    # the lone word-start piece SentencePiece puts before a mask is dropped: the mask is the whole word
    pieces = tiny_tokenizer.tokenize("the [MASK]")
    assert pieces[pieces.index("[MASK]") - 1] != "\u2581"
    assert (
        tiny_tokenizer.decode(enc.input_ids, skip_special_tokens=False)
        == "[CLS] The cat sat on the [MASK]. [SEP]"
    )


def test_single_and_pair_layout(tiny_tokenizer: Tokenizer) -> None:
    a, b = (
        tiny_tokenizer.encode_ids("The cat likes the park."),
        tiny_tokenizer.encode_ids("고양이가 정말 좋아한다."),
    )
    single = tiny_tokenizer.encode("The cat likes the park.")
    assert single.input_ids == [CLS_ID, *a, SEP_ID] and set(single.token_type_ids) == {0}
    pair = tiny_tokenizer.encode("The cat likes the park.", "고양이가 정말 좋아한다.")
    assert pair.input_ids == [CLS_ID, *a, SEP_ID, *b, SEP_ID]
    assert pair.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_long_inputs_truncate_on_the_right_sides(tiny_tokenizer: Tokenizer) -> None:
    first = " ".join(f"the cat sees a book number {i}." for i in range(40))
    second = " ".join(f"a dog finds the river {i}." for i in range(40))
    ids_a, ids_b = tiny_tokenizer.encode_ids(first), tiny_tokenizer.encode_ids(second)
    pair = tiny_tokenizer.encode(first, second, max_length=32)
    assert len(pair) == 32
    sep = pair.input_ids.index(SEP_ID)
    kept_a, kept_b = pair.input_ids[1:sep], pair.input_ids[sep + 1 : -1]
    assert kept_a == ids_a[-len(kept_a) :]  # A keeps its end
    assert kept_b == ids_b[: len(kept_b)]  # B keeps its start
    assert abs(len(kept_a) - len(kept_b)) <= 1
    single = tiny_tokenizer.encode(first, max_length=16)
    assert single.input_ids == [CLS_ID, *ids_a[:14], SEP_ID]  # a single text loses its end


def test_batch_is_padded_to_its_longest_member(tiny_tokenizer: Tokenizer) -> None:
    batch = tiny_tokenizer.encode_batch(
        ["The cat.", "The teacher watches the quiet mountain today."], max_length=64
    )
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.token_type_ids.shape
    lengths = batch.attention_mask.sum(axis=1)
    assert lengths.max() == batch.input_ids.shape[1] and lengths.min() < lengths.max()
    short = int(lengths.min())
    assert (batch.input_ids[lengths.argmin(), short:] == PAD_ID).all()
    pairs = tiny_tokenizer.encode_batch(["The cat."], ["A dog."], max_length=64)
    assert pairs.token_type_ids[0].tolist().count(1) == len(tiny_tokenizer.encode_ids("A dog.")) + 1


def test_training_reads_gzip_and_reports_problems(tmp_path: Path, tiny_corpus: Path) -> None:
    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress(tiny_corpus.read_bytes()))
    train_tokenizer([gz], tmp_path / "tok", vocab_size=130)
    assert Tokenizer(tmp_path / "tok").vocab_size == 130
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CLIError, match="empty"):
        train_tokenizer([empty], tmp_path / "x", vocab_size=130)
    with pytest.raises(CLIError, match="Vocabulary size"):
        train_tokenizer([tiny_corpus], tmp_path / "x", vocab_size=50_000)
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        Tokenizer(tmp_path / "missing")


def test_reservoir_sample_is_bounded_and_uniform() -> None:
    lines = [f"line {i}" for i in range(10_000)]
    sample = reservoir_sample(lines, 1000, seed=0)
    assert len(sample) == 1000 and len(set(sample)) == 1000
    mean_index = sum(int(s.split()[1]) for s in sample) / len(sample)
    assert 4500 < mean_index < 5500  # not just the first lines
    assert reservoir_sample(["", "a", "  ", "b"], 10, seed=0) == ["a", "b"]


def test_cli_trains_and_fails_cleanly(tmp_path: Path, tiny_corpus: Path) -> None:
    cmd = [sys.executable, "-m", "training.cli", "tokenizer", "train"]
    ok = subprocess.run(
        [*cmd, "--input", str(tiny_corpus), "--vocab-size", "130", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "tokenizer.model").is_file()
    bad = subprocess.run(
        [*cmd, "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "nope.txt: no such file" in bad.stderr and "Traceback" not in bad.stderr
