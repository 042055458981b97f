"""The Makefile: its bundle check, and which extras each command installs. Recipes are printed with
`make -n` (nothing is installed); the bundle check runs for real (it only looks at folders)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("layout", ["folder of bundles", "one bundle"])
def test_bundle_check_finds_either_layout(layout: str, tmp_path: Path) -> None:
    bundle = tmp_path / "en" if layout == "folder of bundles" else tmp_path
    bundle.mkdir(exist_ok=True)
    (bundle / "bundle.json").write_text("{}")
    result = make("check-bundles", f"BUNDLES={tmp_path}")
    assert result.returncode == 0, result.stderr


def test_bundle_check_says_what_to_do_without_one(tmp_path: Path) -> None:
    result = make("check-bundles", f"BUNDLES={tmp_path}")
    assert result.returncode != 0
    assert f"make serve: no bundle in {tmp_path}/" in result.stderr and "pocketbert export" in result.stderr


def test_serve_installs_only_the_serve_extra_and_test_everything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # a fresh place: make plans every step
    serve = make("-n", "serve", f"VENV={venv}", f"BUNDLES={tmp_path}")
    installs = [line for line in serve.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs == [f"{venv}/bin/pip install --quiet -e '.[serve]'"], serve.stdout
    assert f"{venv}/bin/python -m app.serve --bundles {tmp_path}" in serve.stdout
    test = make("-n", "test", f"VENV={venv}")
    assert f"{venv}/bin/pip install --quiet -e '.[train,serve,dev]'" in test.stdout
    assert "pytest" in test.stdout and "ruff format --check" in test.stdout
