"""SIGKILL at any moment, even in the middle of a checkpoint write, then resume: a real `pocketbert pretrain`
or `finetune` process ends with exactly (bit for bit) what an uninterrupted run gives.

The kills are aimed with the checkpoint writer's test hook (model/checkpoint.py SAVE_PAUSE_ENV): every save
pauses halfway through writing its temporary file, so a test that sees that file knows the process is
inside the write, and kills it there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_finetune import sentiment_rows, write_jsonl
from test_pretrain import losses, pretrain_args

from model.checkpoint import SAVE_PAUSE_ENV, read_weights
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAUSE_S = "0.4"
# Each test starts four Python processes that import torch: seconds on an idle machine, minutes on a
# machine busy with training jobs.
pytestmark = pytest.mark.timeout(900)


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "training.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), SAVE_PAUSE_ENV: PAUSE_S},
    )


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str) -> str:
    """SIGKILL the process as soon as condition() holds; returns what it printed."""
    deadline = time.monotonic() + 400  # generous: a machine busy with training runs starts Python slowly
    try:
        while not condition():
            assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"never reached: {what}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return stdout


def writing(folder: Path, name: str, proc: subprocess.Popen) -> Callable[[], list[Path]]:
    """The temporary files that `proc` is writing `name` through (their names carry its pid)."""
    return lambda: list(folder.glob(f".{name}.tmp-{proc.pid}-*"))


def rows(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]


def same_weights(a: Path, b: Path) -> bool:
    first, second = read_weights(a).state, read_weights(b).state
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_pretrain_killed_anywhere_resumes_exactly(prepared: Path, tmp_path: Path) -> None:
    options = ["--steps", "12", "--save-every", "3", "--eval-every", "100", "--log-every", "1"]
    assert main(pretrain_args(prepared, tmp_path / "whole", *options)) == 0

    out = tmp_path / "killed"
    argv = pretrain_args(prepared, out, *options, "--resume")
    # 1. between checkpoints, in the middle of training
    proc = start(argv)
    kill_when(proc, lambda: any(r["step"] >= 4 for r in rows(out / "metrics.jsonl")), "step 4")
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert saved == 3
    # 2. while checkpoint.pt is being written: model.pt is already the newer step
    proc = start(argv)
    kill_when(proc, writing(out, "checkpoint.pt", proc), "a checkpoint.pt write")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == saved
    assert read_weights(out / "model.pt").metadata["step"] > saved
    # 3. the resumed run first puts model.pt back in step with checkpoint.pt: killed while doing that
    proc = start(argv)
    stdout = kill_when(proc, writing(out, "model.pt", proc), "a model.pt write")
    assert f"rewritten from the checkpoint (step {saved})" in stdout
    # 4. to the end
    proc = start(argv)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr

    assert same_weights(tmp_path / "whole" / "model.pt", out / "model.pt")
    assert same_weights(tmp_path / "whole" / "checkpoint.pt", out / "checkpoint.pt")
    assert losses(tmp_path / "whole" / "metrics.jsonl") == losses(out / "metrics.jsonl")
    assert not list(out.glob(".*.tmp-*"))  # the killed writes' temporary files are cleaned up


def finetune_args(tmp_path: Path, tokenizer_dir: Path, out: Path) -> list[str]:
    return [
        "finetune",
        "--task",
        "csv",
        "--train",
        str(tmp_path / "train.jsonl"),
        "--dev",
        str(tmp_path / "dev.jsonl"),
        "--test",
        str(tmp_path / "test.jsonl"),
        "--init",
        "scratch",
        "--config",
        str(tmp_path / "tiny.json"),
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(out),
        "--seeds",
        "1,2",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--log-every",
        "1",
        "--save-every",
        "4",  # 10 steps an epoch: saves at steps 4 and 8 inside it, then at its end
        "--device",
        "cpu",
        "--threads",
        "1",
    ]


def test_finetune_killed_anywhere_resumes_exactly(
    tmp_path: Path, tiny_tokenizer_dir: Path, tiny_config
) -> None:
    tiny_config.to_json(tmp_path / "tiny.json")
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(160, 0))
    write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(40, 1))
    write_jsonl(tmp_path / "test.jsonl", sentiment_rows(40, 2))
    whole = tmp_path / "whole"
    assert main(finetune_args(tmp_path, tiny_tokenizer_dir, whole)) == 0
    assert not (whole / "checkpoint.pt").exists()  # a finished run leaves nothing to resume

    out = tmp_path / "killed"
    argv = finetune_args(tmp_path, tiny_tokenizer_dir, out)
    # 1. in the middle of seed 1's second checkpoint write (step 8, inside the first epoch)
    proc = start(argv)
    seen: set[Path] = set()

    def second_checkpoint_write() -> bool:
        seen.update(writing(out, "checkpoint.pt", proc)())
        return len(seen) >= 2

    kill_when(proc, second_checkpoint_write, "the second checkpoint.pt write")
    # 2. rerun as it was (no --resume): it continues seed 1 from step 4, four batches into its first
    # epoch; killed once seed 2 has started
    proc = start(argv)
    stdout = kill_when(
        proc, lambda: any(r.get("seed") == 2 for r in rows(out / "metrics.jsonl")), "seed 2 training"
    )
    assert "seed 1 at step 4" in stdout
    # 3. to the end
    proc = start([*argv, "--resume"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "seeds done [1]" in stdout

    def results(folder: Path) -> list[dict]:
        seeds = json.loads((folder / "results.json").read_text())["seeds"]
        return [{k: v for k, v in seed.items() if k != "seconds"} for seed in seeds]

    assert results(out) == results(whole)
    assert same_weights(whole / "model.pt", out / "model.pt")
    assert losses(whole / "metrics.jsonl") == losses(out / "metrics.jsonl")
    assert not (out / "checkpoint.pt").exists() and not list(out.glob(".*.tmp-*"))


def test_finetune_stopped_by_signal_saves_the_step_it_reached_and_resumes_exactly(
    tmp_path: Path, tiny_tokenizer_dir: Path, tiny_config
) -> None:
    """SIGTERM (a scheduler, `kill`) and SIGINT (Ctrl-C) save the seed in progress after the current step
    and exit 143 / 130; no step done is lost, however far the last --save-every save lies behind."""
    tiny_config.to_json(tmp_path / "tiny.json")
    write_jsonl(tmp_path / "train.jsonl", sentiment_rows(640, 0))  # 40 steps an epoch: time to aim
    write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(40, 1))
    write_jsonl(tmp_path / "test.jsonl", sentiment_rows(40, 2))
    whole = tmp_path / "whole"
    assert main(finetune_args(tmp_path, tiny_tokenizer_dir, whole)) == 0

    out = tmp_path / "stopped"
    argv = finetune_args(tmp_path, tiny_tokenizer_dir, out)
    argv[argv.index("--save-every") + 1] = "1000"  # no periodic save: only the signal's
    metrics = out / "metrics.jsonl"

    def stop_when(condition: Callable[[], bool], sig: int) -> str:
        proc = start(argv)
        try:
            deadline = time.monotonic() + 400
            while not condition():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "fine-tuning did not get there"
                time.sleep(0.01)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr
        assert "stopped by signal" in stdout
        return stdout

    def last_step(seed: int) -> int:
        return max((r["step"] for r in rows(metrics) if r.get("seed") == seed), default=0)

    # 1. SIGTERM in seed 1's first epoch, before any periodic save could have happened
    stop_when(lambda: last_step(1) >= 3, signal.SIGTERM)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["seed"] == 1 and state["step"] == last_step(1) >= 3  # every step done is saved
    # 2. the same command again: it continues there; SIGINT once seed 2 is training
    stdout = stop_when(lambda: last_step(2) >= 2, signal.SIGINT)
    assert f"seed 1 at step {state['step']}" in stdout
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert [row["seed"] for row in state["finished"]] == [1]
    assert state["seed"] == 2 and state["step"] == last_step(2) >= 2
    # 3. to the end: the same results as the run that was never stopped
    proc = start([*argv, "--resume"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert json.loads((out / "results.json").read_text())["seeds"][0]["seed"] == 1
    assert same_weights(whole / "model.pt", out / "model.pt")
    assert losses(whole / "metrics.jsonl") == losses(metrics)
    assert not (out / "checkpoint.pt").exists()
