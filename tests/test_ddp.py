"""`pocketbert pretrain` under `torchrun --nproc-per-node 2` (gloo on CPU): the ranks stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def torchrun(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training.cli",
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        "--hidden-size",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--intermediate-size",
        "64",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--seed",
        "7",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    if result.returncode != 0 and any(m in result.stderr for m in _PORT_RACE):
        # --standalone picks a free port, releases it and binds it again: another process can take it between.
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    return result


_PORT_RACE = ("EADDRINUSE", "Address already in use", "DistNetworkError", "RendezvousConnectionError")


def test_two_ranks_hold_identical_weights(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    first = torchrun(prepared, out, "--steps", "5", "--stop-at", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 3 and len(state["rng"]) == 2

    second = torchrun(prepared, out, "--steps", "5", "--resume")  # resume under DDP too
    assert second.returncode == 0, second.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 5
    digests = state["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # Rank 0 alone writes the logs; tokens/s counts both ranks' tokens.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5]
    initial = torch.load(out / "model.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v.float()).all() for v in initial.values())
