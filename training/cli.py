"""The `pocketbert` command line.

Options are described by training/arguments.py, which imports nothing heavy, so `pocketbert --help` and
`pocketbert CMD --help` are instant. The module of a command (which imports torch, onnxruntime... at its
top) is imported only to run it, so `pocketbert serve` works where only the `serve` extra is installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from model.tokenizer import TokenizerError
from training import arguments
from training.errors import CLIError

PROJECT_PACKAGES = {"app", "model", "training"}  # a missing module of these is a bug, not a missing extra


@dataclass(frozen=True)
class Command:
    module: str  # provides run(args) -> int
    help: str
    extra: str  # the pip extra that installs its dependencies
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # None: the module's own


COMMANDS: dict[str, Command] = {
    "tokenizer": Command(
        "training.tokenizer_train", "train a SentencePiece tokenizer", "train", arguments.tokenizer_arguments
    ),
    "prepare": Command(
        "training.prepare",
        "turn a corpus into next-sentence pairs in np.memmap files",
        "train",
        arguments.prepare_arguments,
    ),
    "pretrain": Command(
        "training.pretrain",
        "pretrain a BERT with masked-LM and next-sentence prediction",
        "train",
        arguments.pretrain_arguments,
    ),
    "finetune": Command(
        "training.finetune",
        "fine-tune for sentence classification over several seeds",
        "train",
        arguments.finetune_arguments,
    ),
    "plot": Command(
        "training.plot", "redraw the metrics plot of a run folder", "train", arguments.plot_arguments
    ),
    "export": Command(
        "training.export", "export checkpoints to an ONNX model bundle", "train", arguments.export_arguments
    ),
    "export-hf": Command(
        "training.export_hf",
        "export a checkpoint as a Hugging Face transformers folder",
        "train",
        arguments.export_hf_arguments,
    ),
    "recipe": Command(
        "training.recipe",
        "run a recipe: raw text to a served bundle with its model card",
        "train",
        arguments.recipe_arguments,
    ),
    # serve describes its own options (its module is light too).
    "serve": Command("app.serve", "serve model bundles over HTTP", "serve"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s options are described (a module's own, the only import this needs)."""
    parser = argparse.ArgumentParser(
        prog="pocketbert",
        description="Pretrain a small BERT, fine-tune it, export it to ONNX and serve it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        command_parser = sub.add_parser(
            name, help=spec.help, description=spec.help[:1].upper() + spec.help[1:] + "."
        )
        if name == command:
            add_arguments = spec.add_arguments or _load(name).add_arguments
            add_arguments(command_parser)
    return parser


def _load(name: str) -> ModuleType:
    """Import a command's module; a missing third-party dependency names the extra that installs it."""
    spec = COMMANDS[name]
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in PROJECT_PACKAGES:
            raise  # a broken import inside this project: the traceback says where
        raise SystemExit(
            f"pocketbert {name}: missing dependency '{exc.name}'; "
            f"install it with: pip install 'pocketbert[{spec.extra}]'"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(_load(args.command).run(args) or 0)
    except (CLIError, TokenizerError) as exc:
        print(f"pocketbert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pocketbert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
