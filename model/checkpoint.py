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


# Keys that Hugging Face leaves out of model.safetensors because they are tied to another tensor.
_TIED_KEYS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def load_hf_folder(folder: str | Path) -> BertForPreTraining | BertForSequenceClassification:
    """Load a transformers `save_pretrained` folder (config.json + model.safetensors) of BERT's shape.

    A folder whose architectures name BertForSequenceClassification becomes our classifier, any other
    our pretraining model; extra keys (HF's position_ids buffers) are ignored, missing ones are an error.
    """
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = BertConfig.from_dict(hf_config)
    state = load_file(str(folder / "model.safetensors"))
    for key, source in _TIED_KEYS.items():
        if key not in state and source in state:
            state[key] = state[source]
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if "BertForSequenceClassification" in hf_config.get("architectures", []):
        num_labels = len(hf_config.get("id2label", {})) or 2
        model: BertForPreTraining | BertForSequenceClassification = BertForSequenceClassification(config, num_labels)
    else:
        model = BertForPreTraining(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
