"""Session fixtures that build tiny model checkpoints and a tiny ONNX bundle with the project's own export.

Loaded from conftest.py through pytest_plugins. Random weights: these fixtures test the machinery
(export, checks, loading, serving), not what a trained model predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

LABEL_NAMES = ["negative", "positive"]


@dataclass
class TinyCheckpoints:
    pretrained: Path
    classifier: Path
    tokenizer_dir: Path


def tiny_bundle_config(vocab_size: int):
    """The conftest tiny_config's shape (hidden 32, one layer, two heads), session-scoped here."""
    from model.config import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
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
