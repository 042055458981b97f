"""Dynamic MLM masking: the 15% / 80-10-10 statistics over >1M tokens, and what must never happen."""

from __future__ import annotations

import pytest
import torch

from model.bert import IGNORE_INDEX
from model.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, WORD_BOUNDARY
from training.dataset import collate
from training.masking import mask_tokens, word_start_table

VOCAB = 8000


def random_batch(rows: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(rows, length) ordinary ids with [CLS]/[SEP] sprinkled in and a padded tail of random length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, vocab_size, (rows, length), generator=g)
    specials = torch.randint(0, NUM_SPECIAL, (rows, length), generator=g)
    ids = torch.where(torch.rand(rows, length, generator=g) < 0.05, specials, ids)
    real = torch.randint(length // 2, length + 1, (rows, 1), generator=g)
    return torch.where(torch.arange(length) < real, ids, torch.full_like(ids, PAD_ID))


@pytest.fixture(scope="module")
def masked_million() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = random_batch(1024, 1280, VOCAB)  # 1.31M positions, ~0.9M maskable
    masked, labels = mask_tokens(ids, VOCAB, generator=torch.Generator().manual_seed(1))
    return ids, masked, labels


def test_chosen_fraction_is_15_percent_of_maskable_tokens(masked_million) -> None:
    ids, _, labels = masked_million
    maskable = ids >= NUM_SPECIAL
    assert maskable.sum() > 800_000
    chosen = labels != IGNORE_INDEX
    fraction = chosen.sum().item() / maskable.sum().item()
    assert abs(fraction - 0.15) <= 0.003, fraction


def test_80_10_10_split_of_the_chosen(masked_million) -> None:
    ids, masked, labels = masked_million
    chosen = labels != IGNORE_INDEX
    n = chosen.sum().item()
    to_mask = (masked == MASK_ID) & chosen
    kept = (masked == ids) & chosen
    replaced = chosen & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.80) <= 0.005
    assert abs(replaced.sum().item() / n - 0.10) <= 0.005
    assert abs(kept.sum().item() / n - 0.10) <= 0.005
    # a replacement is an ordinary token; unchosen positions are untouched
    assert (masked[replaced] >= NUM_SPECIAL).all() and (masked[replaced] < VOCAB).all()
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_labels_are_the_original_ids_at_chosen_positions_only(masked_million) -> None:
    ids, _, labels = masked_million
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert labels.dtype == torch.int64 and labels.shape == ids.shape


def test_special_and_padding_tokens_are_never_chosen(masked_million) -> None:
    ids, masked, labels = masked_million
    special = ids < NUM_SPECIAL
    assert special.sum() > 100_000  # the batch really has padding and specials
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])


def test_random_replacement_is_never_the_original() -> None:
    # Two ordinary ids only: a replacement that could be the original would be it half the time.
    vocab = NUM_SPECIAL + 2
    ids = torch.randint(NUM_SPECIAL, vocab, (256, 512), generator=torch.Generator().manual_seed(0))
    masked, labels = mask_tokens(ids, vocab, generator=torch.Generator().manual_seed(2))
    chosen = labels != IGNORE_INDEX
    replaced = chosen & (masked != MASK_ID) & (masked != ids)
    kept = chosen & (masked == ids)
    assert abs(kept.sum().item() / chosen.sum().item() - 0.10) <= 0.01  # not 0.10 + 0.05
    assert abs(replaced.sum().item() / chosen.sum().item() - 0.10) <= 0.01
    assert set(masked[replaced].unique().tolist()) <= {NUM_SPECIAL, NUM_SPECIAL + 1}


def test_same_generator_state_gives_the_same_mask_and_input_is_untouched() -> None:
    ids = random_batch(8, 64, 500)
    before = ids.clone()
    a = mask_tokens(ids, 500, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, 500, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(ids, 500, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, before)


def test_whole_word_masking_chooses_all_pieces_of_a_word_or_none() -> None:
    g = torch.Generator().manual_seed(3)
    ids = random_batch(512, 256, VOCAB, seed=4)
    word_starts = torch.rand(ids.shape, generator=g) < 0.4  # words of 2.5 pieces on average
    masked, labels = mask_tokens(ids, VOCAB, generator=g, word_starts=word_starts)
    chosen = labels != IGNORE_INDEX
    maskable = ids >= NUM_SPECIAL
    assert not chosen[~maskable].any()
    # a piece that continues a word (no word start, previous piece ordinary) shares its word's choice
    continues = maskable[:, 1:] & ~word_starts[:, 1:] & maskable[:, :-1]
    assert continues.sum() > 50_000
    assert torch.equal(chosen[:, 1:][continues], chosen[:, :-1][continues])
    fraction = chosen.sum().item() / maskable.sum().item()
    assert abs(fraction - 0.15) <= 0.005, fraction
    assert (masked[chosen] == MASK_ID).float().mean().item() == pytest.approx(0.8, abs=0.01)


def test_whole_word_masking_starts_a_word_after_a_special_token() -> None:
    # No piece is marked as a word start: every word begins right after [CLS] or [SEP].
    ids = torch.tensor([[4, 10, 11, 12, SEP_ID, 20, 21, SEP_ID]]).repeat(4000, 1)
    word_starts = torch.zeros_like(ids, dtype=torch.bool)
    _, labels = mask_tokens(ids, 100, generator=torch.Generator().manual_seed(0), word_starts=word_starts)
    chosen = labels != IGNORE_INDEX
    a_chosen, b_chosen = chosen[:, 1], chosen[:, 5]
    assert torch.equal(chosen[:, 1:4], a_chosen[:, None].expand(-1, 3))
    assert torch.equal(chosen[:, 5:7], b_chosen[:, None].expand(-1, 2))
    assert (a_chosen & ~b_chosen).sum() > 0 and (b_chosen & ~a_chosen).sum() > 0  # two independent words


def test_word_start_table_marks_pieces_that_begin_with_the_boundary(tiny_tokenizer) -> None:
    table = word_start_table(tiny_tokenizer)
    assert table.shape == (tiny_tokenizer.vocab_size,) and table.dtype == torch.bool
    assert not table[:NUM_SPECIAL].any()
    for token_id in range(NUM_SPECIAL, tiny_tokenizer.vocab_size):
        assert table[token_id].item() == tiny_tokenizer.id_to_token(token_id).startswith(WORD_BOUNDARY)
    assert 0 < table.sum() < tiny_tokenizer.vocab_size


def test_whole_words_of_a_real_tokenizer_are_masked_together(tiny_tokenizer) -> None:
    """The trainer's path: collate padded items, look the ids up in word_start_table, mask_tokens."""
    texts = [
        "the cat sees the park.",
        "고양이가 정말 좋아한다.",
        "my friend remembers the frozen lake.",
    ] * 200
    items = []
    for text in texts:
        enc = tiny_tokenizer.build_inputs(tiny_tokenizer.encode_ids(text), max_length=32)
        n = len(enc.input_ids)
        items.append(
            {
                "input_ids": torch.tensor(enc.input_ids + [PAD_ID] * (32 - n)),
                "token_type_ids": torch.zeros(32, dtype=torch.long),
                "attention_mask": torch.tensor([1] * n + [0] * (32 - n)),
                "next_sentence_label": torch.tensor(0),
            }
        )
    batch = collate(items)
    ids = batch["input_ids"]  # (B, T), T = the longest text
    word_starts = word_start_table(tiny_tokenizer)[ids]  # (B, T)
    masked, labels = mask_tokens(
        ids, tiny_tokenizer.vocab_size, torch.Generator().manual_seed(0), 0.5, word_starts
    )
    chosen = labels != IGNORE_INDEX
    assert 0.3 < chosen.sum().item() / (ids >= NUM_SPECIAL).sum().item() < 0.7
    assert not chosen[batch["attention_mask"] == 0].any() and not chosen[ids < NUM_SPECIAL].any()
    continues = (ids[:, 1:] >= NUM_SPECIAL) & ~word_starts[:, 1:] & (ids[:, :-1] >= NUM_SPECIAL)
    assert continues.any()  # the tiny vocabulary splits some words into several pieces
    assert torch.equal(chosen[:, 1:][continues], chosen[:, :-1][continues])
    assert torch.equal(masked[~chosen], ids[~chosen])
