"""How well a tokenizer fits a text: pieces per text, [UNK] share, single-jamo share, characters per piece.

A vocabulary trained on encyclopaedic text splits colloquial Korean ("ㅋㅋㅋ", "재밌뮤ㅠㅠ") into single
jamo, the letters Hangul syllables are built from: each becomes a piece of its own, sequences grow
longer and the model sees letters instead of words. These figures make that visible, so a tokenizer
is chosen by numbers (and the table goes into the model card).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

CANDIDATES_DIR = "tokenizer-candidates"  # in a recipe's work folder: the tokenizers the card compares
# Hangul jamo: the conjoining block, compatibility jamo (what keyboards type: ㅋ ㅠ), and the extensions.
_JAMO_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))


def candidate_dir(work: Path, name: str) -> Path:
    """Where a recipe trains the candidate tokenizer called `name` ("wiki-only unigram (500k)" ->
    work/tokenizer-candidates/wiki-only-unigram-500k)."""
    return work / CANDIDATES_DIR / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def is_single_jamo(piece: str) -> bool:
    """True for a piece that is one jamo letter, with or without SentencePiece's word-start mark."""
    text = piece.removeprefix("▁")
    return len(text) == 1 and any(lo <= ord(text) <= hi for lo, hi in _JAMO_RANGES)


@dataclass
class TokenizerStats:
    tokenizer: str
    text: str
    texts: int
    pieces_per_text: float
    chars_per_piece: float
    unk_share: float
    single_jamo_share: float


def measure(tokenizer, texts: Sequence[str], tokenizer_name: str, text_name: str) -> TokenizerStats:
    """Figures for one tokenizer on one list of texts (each encoded alone, as training and serving do)."""
    unk_id = tokenizer.token_to_id("[UNK]")
    jamo_ids = {i for i in range(tokenizer.vocab_size) if is_single_jamo(tokenizer.id_to_token(i))}
    pieces = unk = jamo = chars = 0
    for ids, text in zip(tokenizer.encode_ids_batch(list(texts)), texts, strict=True):
        pieces += len(ids)
        unk += sum(1 for i in ids if i == unk_id)
        jamo += sum(1 for i in ids if i in jamo_ids)
        chars += len(text.replace(" ", ""))
    n = max(1, len(texts))
    return TokenizerStats(
        tokenizer_name,
        text_name,
        len(texts),
        round(pieces / n, 2),
        round(chars / max(1, pieces), 3),
        round(unk / max(1, pieces), 5),
        round(jamo / max(1, pieces), 5),
    )


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Non-empty lines of a text file (.gz too); a TSV whose header names a `document`, `sentence`, `text`
    or `review` column gives that column (NSMC, SST-2)."""
    from training.textio import iter_lines

    lines = iter_lines([path])
    first = next(lines, "")
    header = first.split("\t")
    column = next((header.index(c) for c in ("document", "sentence", "text", "review") if c in header), None)
    rows = lines if column is not None else chain([first], lines)
    texts: list[str] = []
    for line in rows:
        fields = line.split("\t")
        text = (fields[column] if len(fields) > column else "") if column is not None else line
        if text.strip():
            texts.append(text.strip())
        if limit and len(texts) >= limit:
            break
    return texts


def markdown_table(rows: Sequence[TokenizerStats]) -> str:
    header = (
        "| tokenizer | text | texts | pieces per text | chars per piece | [UNK] share | single-jamo share |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return header + "".join(
        f"| {r.tokenizer} | {r.text} | {r.texts:,} | {r.pieces_per_text:.2f} | {r.chars_per_piece:.2f} | "
        f"{100 * r.unk_share:.3f}% | {100 * r.single_jamo_share:.2f}% |\n"
        for r in rows
    )


def compare(
    tokenizers: dict[str, str | Path],
    texts: dict[str, str | Path],
    limit: int | None = None,
    out: str | Path | None = None,
) -> list[TokenizerStats]:
    """Every tokenizer on every text; writes OUT.json and OUT.md when `out` is given."""
    from model.tokenizer import Tokenizer

    loaded = {name: read_texts(path, limit) for name, path in texts.items()}
    rows = [
        measure(Tokenizer(path), loaded[text_name], tok_name, text_name)
        for tok_name, path in tokenizers.items()
        for text_name in texts
    ]
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(
            json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8"
        )
        out.with_suffix(".md").write_text(markdown_table(rows), encoding="utf-8")
    return rows
