"""The `pocketbert` commands' options, in one light module: `pocketbert --help` and `pocketbert CMD --help`
describe a command without importing it (no torch, no onnxruntime), so a command module imports what it
needs at its top. `serve` (app/serve.py) still describes its own options; its module is light too.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from training.corpus import DEFAULT_TEXT_COLUMNS, INPUT_FORMATS
from training.tasks import DEFAULT_DEV_UNIT, DEV_UNITS, TASK_FORMATS


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default: "(default: X)" is added to a help text that does not state it already.

    Options without a default (None, or off for a switch) get nothing, so no help reads "default: None".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


# --- number types: a value out of range is argparse's one-line usage error, before any work starts ---
def _checked(text: str, kind: type, within: Callable[[float], bool], rule: str) -> int | float:
    """`text` read as `kind` (int or float), refused unless finite and `within` the option's range."""
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if not within(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    return int(_checked(text, int, lambda v: v >= 1, "at least 1"))


def non_negative_int(text: str) -> int:
    return int(_checked(text, int, lambda v: v >= 0, "0 or more"))


def positive_float(text: str) -> float:
    return float(_checked(text, float, lambda v: v > 0, "greater than 0"))


def non_negative_float(text: str) -> float:
    return float(_checked(text, float, lambda v: v >= 0, "0 or more"))


def share(text: str) -> float:
    """A share of a whole: from 0 to 1."""
    return float(_checked(text, float, lambda v: 0 <= v <= 1, "between 0 and 1"))


def dropout_rate(text: str) -> float:
    """A dropout probability: 1 would zero every activation, so it stops short of it."""
    return float(_checked(text, float, lambda v: 0 <= v < 1, "at least 0 and below 1"))


def character_coverage(text: str) -> float:
    """SentencePiece's --character_coverage: it refuses a value below 0.98 with a bare assertion."""
    return float(_checked(text, float, lambda v: 0.98 <= v <= 1, "between 0.98 and 1"))


def tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train a SentencePiece tokenizer on text files",
        description="Train a SentencePiece tokenizer whose ids 0-6 are "
        "[PAD] [UNK] [BOS] [EOS] [CLS] [SEP] [MASK].",
    )
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="UTF-8 text files (.gz too), one sentence or paragraph per line",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="folder that receives tokenizer.model")
    train.add_argument(
        "--vocab-size", type=positive_int, default=8000, help="pieces in the vocabulary, specials included"
    )
    train.add_argument(
        "--character-coverage",
        type=character_coverage,
        default=0.9995,
        help="share of characters the vocabulary must cover (0.9995 suits Korean and English)",
    )
    train.add_argument(
        "--model-type", choices=["unigram", "bpe"], default="unigram", help="SentencePiece algorithm"
    )
    train.add_argument(
        "--input-sentence-size",
        type=positive_int,
        default=2_000_000,
        help="lines sampled uniformly from the input (keeps memory bounded on large corpora)",
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the line sample and of SentencePiece")
    train.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")

    stats = sub.add_parser(
        "stats",
        formatter_class=HelpFormatter,
        help="compare tokenizers on texts: pieces per text, [UNK] and single-jamo shares",
        description="Encode each text file with each tokenizer and print (and optionally write) a table of "
        "pieces per text, characters per piece, [UNK] share and single-jamo share.",
    )
    stats.add_argument(
        "--tokenizer",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="tokenizers to compare, each a folder or .model, optionally named (wiki=runs/tok)",
    )
    stats.add_argument(
        "--text",
        nargs="+",
        required=True,
        metavar="NAME=FILE",
        help="text files (.gz too; a TSV gives its document/sentence/text column), optionally named",
    )
    stats.add_argument(
        "--limit", type=positive_int, default=20000, help="texts read from each file (default 20000)"
    )
    stats.add_argument("--out", metavar="PREFIX", help="also write PREFIX.json and PREFIX.md")


def prepare_arguments(parser: argparse.ArgumentParser) -> None:
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
        type=positive_int,
        default=128,
        help="tokens per instance, [CLS] and two [SEP] included (default 128)",
    )
    parser.add_argument(
        "--dupe-factor",
        type=positive_int,
        default=5,
        help="times each document is read, with different random cuts (default 5)",
    )
    parser.add_argument(
        "--short-seq-prob",
        type=share,
        default=0.1,
        help="share of instances with a random shorter target length (default 0.1)",
    )
    parser.add_argument(
        "--valid-fraction",
        type=share,
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
        type=positive_int,
        default=None,
        help="tokenizing processes (default: all cores; 1 runs in the main process)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the output does not depend on --workers"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data and output")
    io.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="DIR",
        help="folder(s) written by `pocketbert prepare` with the same tokenizer and length; several "
        "are read as one training set (e.g. Wikipedia + in-domain text), validated on the first",
    )
    io.add_argument(
        "--out", required=True, help="run folder: checkpoint.pt, model.pt, metrics.jsonl, metrics.png"
    )
    io.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt exactly where it stopped (starts fresh if there is none)",
    )

    model = parser.add_argument_group("model (ignored on --resume: the checkpoint's config is used)")
    model.add_argument(
        "--init",
        metavar="MODEL",
        help="start from the weights of a model.pt or checkpoint.pt (its config; a fresh optimiser "
        "and schedule): continued pretraining on other data or with another recipe",
    )
    model.add_argument("--config", help="model config JSON (BertConfig / Hugging Face field names)")
    model.add_argument("--hidden-size", type=positive_int, default=256, help="hidden size (default 256)")
    model.add_argument(
        "--layers", type=positive_int, default=3, help="number of transformer layers (default 3)"
    )
    model.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    model.add_argument(
        "--intermediate-size", type=positive_int, help="feed-forward size (default 4 x hidden size)"
    )
    model.add_argument(
        "--dropout",
        type=dropout_rate,
        help="hidden and attention dropout (default: the config's, 0.1 for a new model)",
    )

    opt = parser.add_argument_group("optimisation (on --resume, each defaults to the checkpoint's value)")
    opt.add_argument(
        "--batch-size", type=positive_int, help="sequences per micro-batch per process (default 32)"
    )
    opt.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimiser step (default 1)")
    opt.add_argument(
        "--steps", type=positive_int, help="total optimiser steps of the schedule (default 1000)"
    )
    opt.add_argument("--lr", type=positive_float, help="peak learning rate (default 5e-4)")
    opt.add_argument("--warmup", type=non_negative_int, help="linear warmup steps (default 10%% of --steps)")
    opt.add_argument(
        "--weight-decay", type=non_negative_float, help="AdamW weight decay on matrices (default 0.01)"
    )
    opt.add_argument(
        "--clip", type=non_negative_float, help="gradient clipping max norm, 0 = off (default 1.0)"
    )
    opt.add_argument("--mlm-probability", type=share, help="share of tokens masked (default 0.15)")
    opt.add_argument(
        "--whole-word-mask",
        action="store_true",
        default=None,
        help="choose whole words (a '▁' piece and the pieces after it) instead of single pieces",
    )
    opt.add_argument(
        "--tokenizer",
        help="tokenizer folder for --whole-word-mask (default: the one the data's index.json records)",
    )
    opt.add_argument("--seed", type=int, help="seed of initialisation, data order and masks (default 0)")

    run_ = parser.add_argument_group(
        "running (--eval-every, --eval-batches, --save-every, --log-every: on --resume, the checkpoint's)"
    )
    run_.add_argument(
        "--device", default="auto", help="auto (GPU when present), cpu, cuda or mps (default auto)"
    )
    run_.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help="bf16 autocast for matmuls (2.0x the tokens/s of fp32 measured on 2 AVX512-BF16 cores; "
        "software conversion on CPUs without AVX512-BF16/AMX); auto: bf16 where the GPU or CPU computes "
        "it natively, else fp32 (default fp32)",
    )
    run_.add_argument(
        "--compile", action="store_true", help="torch.compile the model (off: it does not pay on CPU)"
    )
    run_.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: all cores, split between DDP ranks)"
    )
    run_.add_argument(
        "--eval-every", type=positive_int, help="evaluate on the valid split every N steps (default 100)"
    )
    run_.add_argument(
        "--eval-batches", type=positive_int, help="validation batches per evaluation (default 50)"
    )
    run_.add_argument(
        "--save-every",
        type=positive_int,
        help="write checkpoint.pt every N steps, and at the end (default 500)",
    )
    run_.add_argument(
        "--log-every", type=positive_int, help="write a training metrics row every N steps (default 10)"
    )
    run_.add_argument(
        "--stop-at",
        type=positive_int,
        help="save and stop after this step, keeping the schedule of --steps (to pause a run)",
    )


def finetune_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--task",
        required=True,
        choices=TASK_FORMATS,
        help="nsmc (id/document/label TSV), sst2 (GLUE sentence/label TSV) or csv (.csv/.tsv/.jsonl)",
    )
    data.add_argument("--train", required=True, help="training file")
    data.add_argument(
        "--dev", help="dev file: chooses the best epoch of each seed (or carve one: --dev-fraction)"
    )
    data.add_argument(
        "--dev-fraction",
        type=share,
        help="instead of --dev: hold out this random share of --train as the dev set "
        "(reproducible: the same rows for every seed and run)",
    )
    data.add_argument(
        "--dev-unit",
        choices=DEV_UNITS,
        default=DEFAULT_DEV_UNIT,
        help="what --dev-fraction draws: rows (default), or whole sentences, for files such as SST-2's "
        "that also list every phrase of each sentence as a row: a dev sentence takes its phrases out of "
        "training, so dev holds only unseen text",
    )
    data.add_argument("--test", help="test file, scored once with each seed's best checkpoint")
    data.add_argument(
        "--text-column", default="text", help="text column / field for --task csv (default text)"
    )
    data.add_argument(
        "--label-column", default="label", help="label column / field for --task csv (default label)"
    )
    data.add_argument(
        "--limit-train", type=positive_int, help="use a random subset of this many training examples"
    )
    data.add_argument("--limit-dev", type=positive_int, help="use a random subset of this many dev examples")
    data.add_argument(
        "--limit-test", type=positive_int, help="use a random subset of this many test examples"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--init",
        required=True,
        help="a pretrain model.pt / checkpoint.pt to start from, or 'scratch' for random weights",
    )
    model.add_argument(
        "--tokenizer", help="tokenizer folder or .model (default: the one the checkpoint records)"
    )
    model.add_argument(
        "--config", help="model config JSON for --init scratch (default: the 3-layer/256/4-head model)"
    )
    model.add_argument(
        "--dropout",
        type=dropout_rate,
        default=0.1,
        help="hidden and attention dropout while fine-tuning, whatever the pretrained model used "
        "(default 0.1, BERT's)",
    )
    model.add_argument(
        "--out", required=True, help="output folder: model.pt (best seed), results.json, metrics"
    )
    model.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --out (checkpoint.pt: finished seeds, the seed in progress at "
        "its last save); without it such a run is continued too when its settings are these",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--seeds",
        default="1,2,3,4,5",
        help="comma-separated seeds, one full run each; their spread measures stability (default 1,2,3,4,5)",
    )
    opt.add_argument("--epochs", type=positive_int, default=5, help="training epochs per seed (default 5)")
    opt.add_argument("--lr", type=positive_float, default=1e-4, help="peak learning rate (default 1e-4)")
    opt.add_argument("--batch-size", type=positive_int, default=32, help="training batch size (default 32)")
    opt.add_argument(
        "--max-length", type=int, default=128, help="tokens per example incl. [CLS]/[SEP] (default 128)"
    )
    opt.add_argument(
        "--warmup-ratio", type=share, default=0.1, help="share of steps in linear warmup (default 0.1)"
    )
    opt.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=0.01,
        help="AdamW weight decay on matrices (default 0.01)",
    )
    opt.add_argument(
        "--clip",
        type=non_negative_float,
        default=1.0,
        help="gradient clipping max norm, 0 = off (default 1.0)",
    )
    opt.add_argument(
        "--evals-per-epoch", type=positive_int, default=1, help="dev evaluations per epoch (default 1)"
    )
    opt.add_argument(
        "--device", default="auto", help="auto (GPU when present), cpu, cuda or mps (default auto)"
    )
    opt.add_argument("--threads", type=positive_int, help="torch CPU threads (default: all cores)")
    opt.add_argument(
        "--log-every", type=positive_int, default=20, help="write a training metrics row every N steps"
    )
    opt.add_argument(
        "--save-every",
        type=positive_int,
        default=1000,
        help="write checkpoint.pt every N steps within an epoch, besides each epoch's end and on Ctrl-C / "
        "SIGTERM, so that a killed run loses at most N steps (default 1000)",
    )


def plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a pretrain or finetune output folder with metrics.jsonl"
    )


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrained",
        required=True,
        metavar="CKPT",
        help="pretraining model.pt or checkpoint.pt (from `pretrain`)",
    )
    parser.add_argument(
        "--classifier",
        metavar="CKPT",
        help="classifier model.pt (from `finetune`); without it the bundle serves fill-mask and "
        "next-sentence only",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="folder (or file) of the tokenizer.model both were trained with",
    )
    parser.add_argument(
        "--out", required=True, metavar="BUNDLE_DIR", help="bundle folder to write (written atomically)"
    )
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="dynamic INT8 quantization of the weights"
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="apply onnxruntime's BERT fusions (Attention, LayerNorm, Gelu)",
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        metavar="N",
        help="longest input in tokens (default: the classifier's fine-tuning max length, else 128)",
    )
    parser.add_argument(
        "--eval-text",
        metavar="FILE",
        default=None,
        help="held-out sentences, one a line: INT8 vs fp32 fill-mask top-1 agreement",
    )
    parser.add_argument(
        "--eval-dev", metavar="FILE", default=None, help="labelled dev set: INT8 vs fp32 classifier accuracy"
    )
    parser.add_argument(
        "--eval-task",
        choices=TASK_FORMATS,
        default=None,
        help="format of --eval-dev (default: the classifier checkpoint's task, else csv)",
    )
    parser.add_argument(
        "--eval-limit",
        type=positive_int,
        default=2000,
        metavar="N",
        help="use at most N eval sentences / dev rows",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="onnxruntime threads for the checks"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def export_hf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a pretraining (-> fill-mask) or classifier (-> text-classification) model.pt or checkpoint.pt",
    )
    parser.add_argument(
        "out", metavar="OUT", help="folder to write (config.json, model.safetensors, tokenizer files)"
    )
    parser.add_argument(
        "--tokenizer",
        metavar="DIR",
        default=None,
        help="folder (or file) of the tokenizer.model (default: the one the checkpoint records, "
        "else one beside it)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe file (TOML), e.g. recipes/ko-nsmc.toml")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the stages, which are done, and an estimated time; run nothing",
    )
    parser.add_argument(
        "--workdir", help="folder for every intermediate output (default: the recipe's workdir)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="CPU threads for training and export (default: all cores)",
    )
    parser.add_argument(
        "--study",
        action="store_true",
        help="also run the recipe's [study] (arms of continued pretraining + task probes)",
    )
    parser.add_argument(
        "--card-text-only",
        action="store_true",
        help="write MODEL_CARD.md again from the bundle's own card.json with the recipe's current [card] "
        "texts: for an edited text on a machine without the recipe's work folder (no figure is measured)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="STAGE",
        help="run just these stages (even when done), e.g. --only card. Each stage is locked while it "
        "runs, so this may run beside the full recipe on the same work folder (e.g. --only finetune-scratch "
        "baseline on cores the pretraining leaves free): the full recipe waits for such a stage, then skips "
        "it",
    )


PREDICT_TASKS = ("classify", "fill-mask", "next-sentence")
PREDICT_FORMATS = ("auto", "lines", "tsv", "csv", "jsonl")


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle", required=True, metavar="DIR", help="a bundle folder (from `pocketbert export`)"
    )
    parser.add_argument("--task", required=True, choices=PREDICT_TASKS, help="what to compute for each row")
    parser.add_argument(
        "--input", required=True, metavar="FILE", help="texts to score: .txt, .tsv, .csv or .jsonl (.gz too)"
    )
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="JSON Lines, one object per scored row (replaced)"
    )
    parser.add_argument(
        "--format",
        dest="input_format",
        choices=PREDICT_FORMATS,
        default="auto",
        help="layout of --input; auto: from its suffix (.tsv, .csv, .jsonl, else one text a line)",
    )
    parser.add_argument(
        "--text-column",
        metavar="NAME",
        help="column / field holding the text (default: the first of "
        f"{', '.join(DEFAULT_TEXT_COLUMNS)} present)",
    )
    parser.add_argument(
        "--pair-column",
        metavar="NAME",
        help="next-sentence: column / field of the second sentence (plain lines: first<TAB>second)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="rows per engine call")
    parser.add_argument("--top-k", type=positive_int, default=5, help="fill-mask: predictions per [MASK]")
    parser.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="a bad row (empty text, wrong field count, invalid JSON): report its line and skip it, or "
        "stop with an error",
    )
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="onnxruntime threads (default: all cores)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
