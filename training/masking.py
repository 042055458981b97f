"""Dynamic masked-language-model masking, applied by the trainer to each collated batch (a fresh mask
every step, drawn from a generator derived from (seed, step), so a resumed run draws the same masks).

BERT's recipe: 15% of the maskable tokens are chosen (maskable = not special, not padding: ids >=
NUM_SPECIAL); of the chosen, 80% become [MASK], 10% a random ordinary token that differs from the original,
10% stay as they are. The loss looks only at the chosen positions: labels hold the original id there and
IGNORE_INDEX (-100, skipped by cross-entropy) elsewhere. Everything is tensor operations over the whole
batch, no loop per token.

Whole-word masking chooses words instead of pieces: a word is a piece whose text starts with "▁" plus the
pieces that follow it up to the next such piece, so "▁un", "believ", "able" are masked together.
"""

from __future__ import annotations

import torch

from model.bert import IGNORE_INDEX
from model.tokenizer import MASK_ID, NUM_SPECIAL, WORD_BOUNDARY


def word_start_table(tokenizer) -> torch.Tensor:
    """(vocab_size,) bool: True for the pieces that begin a word ("▁..."); special tokens are False."""
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for token_id in range(NUM_SPECIAL, tokenizer.vocab_size):
        table[token_id] = tokenizer.id_to_token(token_id).startswith(WORD_BOUNDARY)
    return table


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    mlm_probability: float = 0.15,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch; returns (masked input_ids, labels), both (B, T) int64. The input is not modified.

    generator: the random source; the same generator state gives the same masks (exact resume).
    word_starts: (B, T) bool, True where a piece begins a word (`word_start_table[input_ids]`); given, whole
    words are chosen with probability mlm_probability, and the 80/10/10 rule then applies per piece.
    """
    if vocab_size <= NUM_SPECIAL + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no ordinary token to substitute")
    device = input_ids.device
    maskable = input_ids >= NUM_SPECIAL  # (B, T): never [PAD], [CLS], [SEP], [MASK]...
    # Three draws of fixed shape in a fixed order, so the generator advances the same way every call.
    choose_draw = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    action_draw = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T)
    random_ids = torch.randint(
        NUM_SPECIAL, vocab_size - 1, input_ids.shape, generator=generator, device=device
    )

    if word_starts is None:
        chosen = (choose_draw < mlm_probability) & maskable
    else:
        chosen = _choose_whole_words(choose_draw < mlm_probability, word_starts, maskable)

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    # Random replacement that is never the original: draw from the vocabulary minus one id, then step over
    # the original (ids >= original shift up by one): uniform over the ordinary ids other than the original.
    random_ids = random_ids + (random_ids >= input_ids).long()  # (B, T), in [NUM_SPECIAL, vocab_size)
    masked = torch.where(chosen & (action_draw < 0.8), torch.full_like(input_ids, MASK_ID), input_ids)
    masked = torch.where(chosen & (action_draw >= 0.8) & (action_draw < 0.9), random_ids, masked)
    return masked, labels


def _choose_whole_words(
    word_draw: torch.Tensor, word_starts: torch.Tensor, maskable: torch.Tensor
) -> torch.Tensor:
    """Extend each word's draw (taken at its first piece) to all of its pieces. All (B, T) bool."""
    # A word also starts after any special token, e.g. a first piece without "▁" right after [CLS] or [SEP].
    after_special = torch.zeros_like(maskable)
    after_special[:, 1:] = ~maskable[:, :-1]
    starts = word_starts.to(maskable.device) | after_special | ~maskable
    positions = torch.arange(maskable.shape[1], device=maskable.device).expand_as(maskable)  # (B, T)
    start_of_word = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values  # (B, T)
    return word_draw.gather(1, start_of_word) & maskable
