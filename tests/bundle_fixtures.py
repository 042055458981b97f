"""Session fixtures that build tiny model checkpoints and a tiny ONNX bundle with the project's own export,
and variants of that bundle (renamed, with a language, or fewer graphs).

Loaded from conftest.py through pytest_plugins. Random weights: these fixtures test the machinery
(export, checks, loading, serving), not what a trained model predicts.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

LABEL_NAMES = ["negative", "positive"]
# Engines (and the servers tests start) run the fixed plan unless a test asks for another: timing plans
# would cost each load a moment and write to the user's cache (tests/test_runtime.py covers "auto").
os.environ.setdefault("POCKETBERT_ENGINE_PLAN", "fixed")


@dataclass
class TinyCheckpoints:
    pretrained: Path
    classifier: Path
    tokenizer_dir: Path


def tiny_bundle_config(vocab_size: int):
    """The conftest tiny_config's shape (hidden 32, two heads) with two layers: the export tests then
    see both a fully fused layer and the last one, which runs at the output positions only."""
    from model.config import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="session")
def tiny_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_tokenizer
) -> TinyCheckpoints:
    """Random-init pretraining + 2-label classifier checkpoints, written with save_model."""
    import torch

    from model.bert import BertForPreTraining, BertForSequenceClassification
    from model.checkpoint import save_model

    out = tmp_path_factory.mktemp("checkpoints")
    config = tiny_bundle_config(tiny_tokenizer.vocab_size)
    torch.manual_seed(0)
    pretraining = BertForPreTraining(config).eval()
    classifier = BertForSequenceClassification(config, num_labels=len(LABEL_NAMES)).eval()
    save_model(
        out / "pretrained.pt",
        pretraining,
        {
            "metrics": {"mlm_accuracy": 0.1, "nsp_accuracy": 0.5},
            "tokenizer_sha256": tiny_tokenizer.checksum,
        },
    )
    save_model(
        out / "classifier.pt",
        classifier,
        {
            "label_names": LABEL_NAMES,
            "results": {"accuracy_mean": 50.0},
            "task": "tiny",
            "max_length": 64,
            "tokenizer_sha256": tiny_tokenizer.checksum,
        },
    )
    return TinyCheckpoints(out / "pretrained.pt", out / "classifier.pt", tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: TinyCheckpoints) -> Path:
    """An fp32, unoptimized bundle folder ("tiny") exported from tiny_checkpoints. Treat as read-only."""
    from training.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(
        tiny_checkpoints.pretrained,
        tiny_checkpoints.classifier,
        tiny_checkpoints.tokenizer_dir,
        out,
        max_length=64,
        threads=1,
    )
    return out


# --- variants of the tiny bundle: copies with another name, language or file set --------------------------
def edit_manifest(bundle: Path, **changes: object) -> dict:
    """Set keys of bundle.json (the manifest is not in its own checksums, so the bundle stays valid)."""
    manifest = bundle / "bundle.json"
    info = json.loads(manifest.read_text(encoding="utf-8"))
    info.update(changes)
    manifest.write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return info


def rehash(bundle: Path, *names: str) -> None:
    """Record the current sha256 of files in bundle.json: a damaged file that the checksum lets through."""
    from model.tokenizer import file_sha256

    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    edit_manifest(bundle, files={**info["files"], **{n: file_sha256(bundle / n) for n in names}})


def copy_bundle(
    source: Path,
    dest: Path,
    name: str | None = None,
    language: str | None = None,
    without: tuple[str, ...] = (),
) -> Path:
    """A copy of `source` at dest, renamed, with a language, or files removed
    (removed from the folder and from bundle.json: a bundle made without them)."""
    shutil.copytree(source, dest)
    dest.chmod(0o755)
    info = json.loads((dest / "bundle.json").read_text(encoding="utf-8"))
    files = {k: v for k, v in info["files"].items() if k not in without}
    for file in without:
        (dest / file).unlink()
    changes: dict[str, object] = {"files": files}
    if name:
        changes["name"] = name
    if language:
        changes["language"] = language
    if "classifier.onnx" in without:
        changes["label_names"] = []
    edit_manifest(dest, **changes)
    return dest


@pytest.fixture(scope="session")
def ko_en_bundles(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """A folder of two bundles, "en" (language en) and "ko" (language ko): the same tiny weights, so
    only routing tells them apart (every answer names its model). Treat as read-only."""
    folder = tmp_path_factory.mktemp("two-bundles")
    copy_bundle(tiny_bundle, folder / "en", name="en", language="en")
    copy_bundle(tiny_bundle, folder / "ko", name="ko", language="ko")
    return folder


@pytest.fixture(scope="session")
def pretraining_only_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """A bundle of the pretraining graph alone ("mlm"): fill-mask and next-sentence, no classifier and
    no attention graph. Treat as read-only."""
    dest = tmp_path_factory.mktemp("pretraining-only") / "mlm"
    return copy_bundle(tiny_bundle, dest, name="mlm", without=("classifier.onnx", "attention.onnx"))
