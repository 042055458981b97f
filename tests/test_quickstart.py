"""The README's quickstart, run as written on tiny settings: clone -> tokenizer -> prepare -> pretrain ->
finetune -> export -> a served bundle that answers /classify.

The commands are read from README.md, so the test follows the README: only the shared data files are
swapped for generated ones and tiny overrides are appended (argparse keeps an option's last value).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from test_finetune import sentiment_rows, write_nsmc
from test_server_integration import free_port, wait_until_ready

from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Quickstart"
COMMANDS = ["tokenizer", "prepare", "pretrain", "finetune", "export", "serve"]
TINY = {
    "tokenizer": ["--vocab-size", "160"],
    "prepare": ["--max-length", "48", "--workers", "1", "--quiet"],
    "pretrain": [
        *("--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64"),
        *("--steps", "4", "--batch-size", "8", "--eval-batches", "1", "--threads", "1", "--device", "cpu"),
    ],
    "finetune": [
        *("--seeds", "1", "--epochs", "1", "--batch-size", "16", "--max-length", "32"),
        *("--threads", "1", "--device", "cpu"),
    ],
    "export": ["--threads", "1"],
}


def quickstart_commands() -> list[list[str]]:
    """The `pocketbert ...` lines of the quickstart's code blocks, continuation lines joined."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(HEADING) :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("pocketbert ")]


def test_the_readme_quickstart_uses_one_folder() -> None:
    commands = quickstart_commands()
    assert [c[1] for c in commands] == COMMANDS
    paths = [arg for c in commands for arg in c if arg.startswith("runs/")]
    assert paths and all(p.startswith("runs/my-model/") for p in paths)
    assert "--dev-fraction" in commands[3]


def test_the_readme_quickstart_ends_with_a_served_model(
    tmp_path: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        "../shared/data/ko-corpus/kowiki_sample.txt.gz": str(tiny_corpus),
        "../shared/data/nsmc/ratings_train.txt.gz": str(
            write_nsmc(tmp_path / "train.txt", sentiment_rows(200, 0))
        ),
        "../shared/data/nsmc/ratings_test.txt": str(write_nsmc(tmp_path / "test.txt", sentiment_rows(40, 2))),
    }
    monkeypatch.chdir(tmp_path)  # the README's relative runs/my-model/... paths land here
    *training, serve = quickstart_commands()
    for command in training:
        argv = [data.get(arg, arg) for arg in command[1:]]
        assert main([*argv, *TINY.get(command[1], [])]) == 0, command

    bundle = tmp_path / "runs" / "my-model" / "bundle"
    assert json.loads((bundle / "bundle.json").read_text())["label_names"] == ["negative", "positive"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", *serve[1:], "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        answer = classify_when_ready(port, proc, "a charming and moving film")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert answer["model"] == "bundle"
    [[first, second]] = answer["results"]
    assert {first["label"], second["label"]} == {"negative", "positive"}
    assert first["score"] + second["score"] == pytest.approx(1.0, abs=1e-4)


def classify_when_ready(port: int, proc: subprocess.Popen, text: str) -> dict:
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, proc, 120)
    request = urllib.request.Request(
        f"{base}/classify",
        data=json.dumps({"inputs": [text]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
