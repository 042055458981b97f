"""Model checkpoints: weights + config + what the weights are for, in one atomic file.

A model checkpoint is what `pocketbert export` reads: `pretrain` writes one for the pretraining model,
`finetune` one for the best classifier. (Training state for `--resume` is a separate, larger file
written by the trainer.) Imports torch: the web service never uses this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from model.bert import BertForPreTraining, BertForSequenceClassification
from model.config import BertConfig

FORMAT_VERSION = 1
KINDS = ("pretraining", "classification")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(
    path: str | Path,
    model: BertForPreTraining | BertForSequenceClassification,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write weights, config and kind; metadata holds e.g. label_names, metrics, tokenizer_sha256."""
    kind = "pretraining" if isinstance(model, BertForPreTraining) else "classification"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": model.config.to_dict(),
        "num_labels": getattr(model, "num_labels", None),
        "metadata": dict(metadata or {}),
        "model": state,
    }
    atomic_torch_save(payload, path)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[BertForPreTraining | BertForSequenceClassification, dict[str, Any]]:
    """Rebuild the model a checkpoint describes (in eval mode) and return it with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise ValueError(f"{path}: not a pocketbert model checkpoint")
    if payload.get("format", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload['format']} is newer than this pocketbert supports")
    config = BertConfig.from_dict(payload["config"])
    if payload["kind"] == "pretraining":
        model: BertForPreTraining | BertForSequenceClassification = BertForPreTraining(config)
    else:
        model = BertForSequenceClassification(config, payload["num_labels"])
    model.load_state_dict(payload["model"])
    model.eval()
    return model, payload["metadata"]
