"""The `pocketbert` command line.

Each subcommand lives in its own module, which provides `add_arguments(parser)` and `run(args) -> int`
and keeps heavy imports (torch, onnxruntime) inside its functions. Only the module of the command
being run is imported, so `pocketbert --help` is instant and `pocketbert serve` works where only the
`serve` extra is installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "tokenizer": ("training.tokenizer_train", "train a SentencePiece tokenizer", "train"),
    "prepare": ("training.prepare", "turn a corpus into next-sentence pairs in np.memmap files", "train"),
    "pretrain": ("training.pretrain", "pretrain a BERT with masked-LM and next-sentence prediction", "train"),
    "finetune": ("training.finetune", "fine-tune for sentence classification over several seeds", "train"),
    "plot": ("training.plot", "redraw the metrics plot of a run folder", "train"),
    "export": ("training.export", "export checkpoints to an ONNX model bundle", "train"),
    "export-hf": ("training.export_hf", "export a checkpoint as a Hugging Face transformers folder", "train"),
    "serve": ("app.serve", "serve model bundles over HTTP", "serve"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to describe its options."""
    parser = argparse.ArgumentParser(
        prog="pocketbert",
        description="Pretrain a small BERT, fine-tune it, export it to ONNX and serve it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        command_parser = sub.add_parser(
            name, help=help_text, description=help_text[:1].upper() + help_text[1:] + "."
        )
        if name == command:
            _load(name).add_arguments(command_parser)
    return parser


def _load(name: str):
    module_name, _, extra = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"app", "model", "training"}:
            raise SystemExit(f"pocketbert {name}: this command is not available in this version") from exc
        raise SystemExit(
            f"pocketbert {name}: missing dependency '{exc.name}'; "
            f"install it with: pip install 'pocketbert[{extra}]'"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    from model.tokenizer import TokenizerError
    from training.errors import CLIError

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
