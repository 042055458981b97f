"""The command line: instant help, no torch for help or the tokenizer, every option explained."""

from __future__ import annotations

import subprocess
import sys

from training.cli import COMMANDS, build_parser


def test_top_level_help_lists_every_command_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from training.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'pocketbert --help imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


def test_importing_the_tokenizer_does_not_import_torch() -> None:
    code = "import sys, model.tokenizer, model.config; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_every_available_option_has_help() -> None:
    for name in COMMANDS:
        try:
            parser = build_parser(name)
        except SystemExit:  # a command whose module is not written yet
            continue
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        parsers = [sub] + [
            p for action in sub._actions if action.dest == "action" for p in action.choices.values()
        ]
        for p in parsers:
            for action in p._actions:
                if action.dest != "help" and action.option_strings:
                    assert action.help, f"pocketbert {name}: option {action.option_strings} has no help"
