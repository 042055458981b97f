"""`pocketbert tokenizer train`: a SentencePiece model with BERT's special tokens at fixed ids."""

from __future__ import annotations

import argparse
import io
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from model.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILENAME, Tokenizer
from training.errors import CLIError, output_folder
from training.textio import iter_lines
from training.tokenizer_stats import compare, markdown_table


def reservoir_sample(lines: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of at most `size` non-empty lines, reading the stream once (memory O(size))."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        seen += 1
        if len(sample) < size:
            sample.append(line)
        else:
            slot = rng.randrange(seen)
            if slot < size:
                sample[slot] = line
    return sample


def train_tokenizer(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    vocab_size: int = 8000,
    character_coverage: float = 0.9995,
    model_type: str = "unigram",
    input_sentence_size: int = 2_000_000,
    seed: int = 0,
    verbose: bool = False,
) -> Path:
    """Train on a sample of the input lines and write out_dir/tokenizer.model atomically; return its path."""
    sentences = reservoir_sample(iter_lines(inputs), input_sentence_size, seed)
    if not sentences:
        raise CLIError(f"{', '.join(map(str, inputs))}: no text to train on (every line is empty)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            pad_piece=SPECIAL_TOKENS[0],
            unk_piece=SPECIAL_TOKENS[1],
            bos_piece=SPECIAL_TOKENS[2],
            eos_piece=SPECIAL_TOKENS[3],
            user_defined_symbols=list(SPECIAL_TOKENS[4:]),  # [CLS] [SEP] [MASK]: ids 4, 5, 6, never split
            input_sentence_size=0,  # already sampled above
            shuffle_input_sentence=False,
            max_sentence_length=16384,
            num_threads=os.cpu_count() or 1,
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as exc:  # e.g. "Vocabulary size is too high (8000). Please set it to a value <= 512."
        raise CLIError(f"sentencepiece could not train on {len(sentences)} lines: {exc}") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / TOKENIZER_FILENAME
    tmp = target.with_suffix(".model.tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, target)
    Tokenizer(target)  # fails loudly if the special tokens did not land at their ids
    return target


def _named(values: Sequence[str]) -> dict[str, str]:
    """NAME=PATH pairs; a bare PATH is named after its file or folder."""
    named = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem.split(".")[0] or value, value
        named[name] = path
    return named


def run(args: argparse.Namespace) -> int:
    if args.action == "stats":
        for path in _named(args.text).values():
            if not Path(path).is_file():
                raise CLIError(f"{path}: no such text file")
        print(
            markdown_table(compare(_named(args.tokenizer), _named(args.text), args.limit, args.out)), end=""
        )
        return 0
    path = train_tokenizer(
        args.input,
        output_folder(args.out),
        args.vocab_size,
        args.character_coverage,
        args.model_type,
        args.input_sentence_size,
        args.seed,
        args.verbose,
    )
    print(f"wrote {path}")
    return 0
