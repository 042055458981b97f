"""The `serve` extra alone runs the engine and the web app: a fresh venv, `pip install pocketbert[serve]`,
no torch.

Slow (it downloads onnxruntime, numpy, fastapi, ...). Skips only when pip cannot reach a package index.
The project is copied to a temporary folder first so pip's build leaves nothing in the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from model.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "app", "model", "training")

PROBE = """
import importlib.util, json, sys
assert importlib.util.find_spec("torch") is None, "torch is importable in the serve environment"
from model.engine import Engine
engine = Engine.load(sys.argv[1], intra_op_threads=1)
out = {
    "fill_mask": engine.fill_mask(["the cat [MASK] the park."], top_k=3),
    "classify": engine.classify(["the cat sees the park."]),
    "next_sentence": engine.next_sentence([("the cat sees the park.", "a dog likes a book.")]),
    "attention_tokens": engine.attention("the cat sees the park.")["tokens"],
    "engine_file": sys.modules["model.engine"].__file__,
}
from app.main import create_app  # the whole web app, its offline docs assets included
from app.settings import Settings
app = create_app(Settings(bundles=[sys.argv[1]], ort_threads=1))
out["routes"] = sorted(getattr(route, "path", "") for route in app.routes)
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def _run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_engine_runs_with_only_the_serve_extra(tmp_path: Path, tiny_bundle: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy(path, source / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"

    try:
        reach = _run(
            [str(python), "-m", "pip", "index", "versions", "onnxruntime", "--disable-pip-version-check"],
            tmp_path,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("pip cannot reach a package index (no answer in 120 s)")
    if reach.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {reach.stderr.strip().splitlines()[-1:]}")

    install = _run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[serve]"],
        tmp_path,
        timeout=800,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    probe = _run([str(python), "-c", PROBE, str(tiny_bundle)], tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    assert str(env_dir) in out["engine_file"]  # the installed package, not this checkout

    reference = Engine.load(tiny_bundle, intra_op_threads=1)  # the same bundle in the development environment
    expected = reference.fill_mask(["the cat [MASK] the park."], top_k=3)
    assert [p["token"] for p in out["fill_mask"][0][0]] == [p["token"] for p in expected[0][0]]
    assert out["classify"][0][0]["label"] == reference.classify(["the cat sees the park."])[0][0]["label"]
    assert out["next_sentence"][0]["score"] == pytest.approx(
        reference.next_sentence([("the cat sees the park.", "a dog likes a book.")])[0]["score"], abs=1e-5
    )
    assert out["attention_tokens"][0] == "[CLS]"
    assert {"/fill-mask", "/docs", "/redoc", "/docs-assets", "/v1/models"} <= set(out["routes"])
    assert sys.prefix != str(env_dir)
