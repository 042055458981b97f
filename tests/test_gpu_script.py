"""scripts/gpu-pretrain.sh, the GPU profile, run end to end on the CPU with the tiny model: pack a work
folder, train (probe, then a run sized to the time given) into $OUT in parts, unpack, and continue the
weights with `pretrain --init`. The device itself is never needed by the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint import load_model
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-pretrain.sh"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def workdir(tmp_path: Path, prepared: Path, tiny_config) -> Path:
    """A recipe work folder as `pack` expects it: prepared data and pretrain-config.json."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(prepared, work / "data")
    (work / "pretrain-config.json").write_text(json.dumps(tiny_config.to_dict()), encoding="utf-8")
    return work


def test_pack_train_unpack_on_the_cpu(tmp_path: Path, workdir: Path, tiny_config) -> None:
    gpu_dir, out, run = tmp_path / "gpu", tmp_path / "out", tmp_path / "run"
    packed = run_script("pack", str(workdir), GPU_DIR=str(gpu_dir))
    assert packed.returncode == 0, packed.stderr
    assert sorted(p.name for p in gpu_dir.iterdir()) == ["data.tar.gz", "pretrain-config.json"]

    out.mkdir()
    cpu = {"DEVICE": "cpu", "PRECISION": "fp32", "BATCH": "8", "THREADS": "1", "PROBE_STEPS": "10"}
    trained = run_script(
        "train", GPU_DIR=str(gpu_dir), OUT=str(out), MINUTES="0.02", PART_BYTES="40000", **cpu
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    probe = next(line for line in trained.stdout.splitlines() if line.startswith("probe:"))
    steps = int(probe.split("the run: ")[1].split(" steps")[0])
    parts = sorted(out.glob("model.pt.part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 40000 for p in parts)  # split to come back
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in rows) == steps  # the run took the steps the probe sized it to
    assert any(row["split"] == "valid" for row in rows)

    unpacked = run_script("unpack", str(out), str(run))
    assert unpacked.returncode == 0, unpacked.stderr
    model, _ = load_model(run / "model.pt")
    assert model.config.hidden_size == tiny_config.hidden_size
    # the weights continue here, with a fresh optimiser
    more = tmp_path / "more"
    argv = ["pretrain", "--data", str(workdir / "data"), "--out", str(more), "--init", str(run / "model.pt")]
    assert main([*argv, "--steps", "2", "--batch-size", "8", "--threads", "1"]) == 0


def test_a_missing_part_or_an_oversized_pack_is_refused(tmp_path: Path, workdir: Path) -> None:
    too_big = run_script("pack", str(workdir), GPU_DIR=str(tmp_path / "gpu"), MAX_CARRY_MB="0")
    assert too_big.returncode == 2 and "more than 0 MB can travel" in too_big.stderr
    assert not (tmp_path / "gpu").exists()  # nothing half-packed left to carry by mistake
    missing = run_script("pack", str(tmp_path / "nowhere"), GPU_DIR=str(tmp_path / "gpu"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr

    files = tmp_path / "files"
    files.mkdir()
    for name in ("model.pt.part-00", "model.pt.part-01"):
        (files / name).write_bytes(b"x" * 10)
    (files / "model.pt.sha256").write_text("0" * 64 + "\n")
    broken = run_script("unpack", str(files), str(tmp_path / "run"))
    assert broken.returncode == 2 and "does not match its sha256" in broken.stderr
