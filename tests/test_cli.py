"""The command line: instant help without torch, every option explained, every command importable, and
import errors that say what is wrong."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import training.cli as cli
from training.cli import COMMANDS, build_parser, main

HELP_WITHOUT_TORCH = """
import contextlib, io, sys
from training.cli import main
for argv in [["--help"]] + [[name, "--help"] for name in sys.argv[1:]]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: pocketbert" in out.getvalue(), argv
    assert "torch" not in sys.modules, f"pocketbert {' '.join(argv)} imported torch"
print("ok")
"""


def test_help_of_every_command_is_torch_free() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH, *COMMANDS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_importing_the_tokenizer_does_not_import_torch() -> None:
    code = "import sys, model.tokenizer, model.config; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_imports_and_runs_from_its_module(name: str) -> None:
    """A command whose module does not import fails here (no SystemExit is swallowed)."""
    assert callable(importlib.import_module(COMMANDS[name].module).run)


def test_every_option_has_help() -> None:
    for name in COMMANDS:
        sub = next(a for a in build_parser(name)._actions if a.dest == "command").choices[name]
        parsers = [sub] + [
            p for action in sub._actions if action.dest == "action" for p in action.choices.values()
        ]
        for p in parsers:
            for action in p._actions:
                if action.dest != "help" and action.option_strings:
                    assert action.help, f"pocketbert {name}: option {action.option_strings} has no help"


def missing(module_name: str):
    def import_module(name: str) -> None:
        raise ModuleNotFoundError(f"No module named '{module_name}'", name=module_name)

    return import_module


def test_a_missing_dependency_names_the_extra_that_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.importlib, "import_module", missing("onnxruntime"))
    with pytest.raises(SystemExit) as exit_:
        main(["export-hf", "model.pt", "out"])
    assert str(exit_.value) == (
        "pocketbert export-hf: missing dependency 'onnxruntime'; "
        "install it with: pip install 'pocketbert[train]'"
    )


@pytest.mark.parametrize("module_name", ["training.gone", "model", "app.settings"])
def test_a_broken_import_inside_the_project_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch, module_name: str
) -> None:
    monkeypatch.setattr(cli.importlib, "import_module", missing(module_name))
    with pytest.raises(ModuleNotFoundError) as error:
        main(["plot", "run"])
    assert error.value.name == module_name


def command_help(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # help wraps lines: compare on single spaces


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture) -> None:
    text = command_help(["tokenizer", "train"], capsys)
    assert "pieces in the vocabulary, specials included (default: 8000)" in text
    assert "(keeps memory bounded on large corpora) (default: 2000000)" in text
    assert "--verbose show SentencePiece's training log" in text  # a switch: no "(default: False)"
    text = command_help(["finetune"], capsys)
    assert "--evals-per-epoch EVALS_PER_EPOCH dev evaluations per epoch (default 1)" in text  # stated once
    assert "default: None" not in text and "(default: False)" not in text
    assert "--log-every LOG_EVERY write a training metrics row every N steps (default: 20)" in text
    assert "--batch-size BATCH_SIZE rows per engine call (default: 64)" in command_help(["predict"], capsys)


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["pretrain", "--data", "d", "--out", "o", "--stepz", "3"], "usage: pocketbert pretrain"),
        (
            ["tokenizer", "train", "--input", "x", "--out", "o", "--vocab", "80", "--oops"],
            "usage: pocketbert tokenizer train",
        ),
    ],
)
def test_an_option_typo_shows_the_commands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert f"error: unrecognized arguments: {argv[-2] if argv[0] == 'pretrain' else '--oops'}" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["finetune", "--lr", "-1"], "argument --lr: must be greater than 0, got -1"),
        (["finetune", "--limit-train", "0"], "argument --limit-train: must be at least 1, got 0"),
        (["finetune", "--threads", "-1"], "argument --threads: must be at least 1, got -1"),
        (["finetune", "--warmup-ratio", "2"], "argument --warmup-ratio: must be between 0 and 1, got 2"),
        (["finetune", "--clip", "-1"], "argument --clip: must be 0 or more, got -1"),
        (["pretrain", "--steps", "ten"], "argument --steps: 'ten' is not a whole number"),
        (["pretrain", "--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
        (["predict", "--threads", "-2"], "argument --threads: must be at least 1, got -2"),
        (["export", "--max-length", "0"], "argument --max-length: must be at least 1, got 0"),
        (["pretrain", "--dropout", "1"], "argument --dropout: must be at least 0 and below 1, got 1"),
        (["finetune", "--dropout", "-0.1"], "argument --dropout: must be at least 0 and below 1, got -0.1"),
        (
            ["tokenizer", "train", "--character-coverage", "0.5"],
            "argument --character-coverage: must be between 0.98 and 1, got 0.5",
        ),
        (
            ["tokenizer", "train", "--input-sentence-size", "0"],
            "argument --input-sentence-size: must be at least 1",
        ),
    ],
)
def test_an_option_out_of_range_is_a_usage_error_before_any_work(
    argv: list[str], words: str, capsys: pytest.CaptureFixture
) -> None:
    """Counts, rates and shares are checked by their argparse types (training/arguments.py): a bad value
    stops the command with its usage line, before a file is read or a model built."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: pocketbert {' '.join(argv[:2] if argv[0] == 'tokenizer' else argv[:1])}")
    assert words in err, err


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine", encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a line of text\n" * 50, encoding="utf-8")
    commands = [
        ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "60", "--out", str(notes)],
        ["finetune", "--task", "sst2", "--train", str(corpus), "--dev-fraction", "0.1", "--init", "scratch"],
    ]
    commands[1] += ["--out", str(notes)]
    for argv in commands:
        assert main(argv) == 2
        assert f"{notes}: is a file; --out names a folder to write into" in capsys.readouterr().err, argv
    assert notes.read_text(encoding="utf-8") == "mine"


def test_the_license_is_an_spdx_string() -> None:
    """setuptools warns about a `project.license` table; the SPDX string form needs setuptools 77."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
