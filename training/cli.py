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
    "predict": Command(
        "model.predict",
        "score a file of texts with a bundle (classify, fill-mask, next-sentence) into JSON Lines",
        "serve",
        arguments.predict_arguments,
    ),
    # serve describes its own options (its module is light too).
    "serve": Command("app.serve", "serve model bundles over HTTP", "serve"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s options are described (a module's own, the only import this needs)."""
    parser = argparse.ArgumentParser(
        prog="pocketbert",
        description="Pretrain a small BERT, fine-tune it, export it to ONNX and serve it.",
        formatter_class=arguments.HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        command_parser = sub.add_parser(
            name,
            help=spec.help,
            description=spec.help[:1].upper() + spec.help[1:] + ".",
            formatter_class=arguments.HelpFormatter,
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


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse argv; an option no command knows is reported with the usage of the command it was given to
    (argparse would print the top-level usage, which does not list the command's options)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        innermost_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def innermost_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that args were parsed for, e.g. `pocketbert tokenizer train`'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None):
            return innermost_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
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
