"""model.pt, the export format: weights + config + what the weights are for, in one atomic file.

`pretrain` writes one for the pretraining model and `finetune` one for the best classifier; `export`,
`export-hf` and `finetune --init` read them. It is not checkpoint.pt (TRAINING_STATE_FILENAME in
training/checkpointing.py), the trainer's larger file for `--resume`, although `read_weights` takes the
weights out of either. Imports torch: the web service never uses this module.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from model.bert import BertForPreTraining, BertForSequenceClassification
from model.config import BertConfig

MODEL_FILENAME = "model.pt"  # the file name a run folder gives its model
FORMAT_VERSION = 1
KINDS = ("pretraining", "classification")
# Test hook (tests/test_kill.py): seconds each save pauses halfway through writing its temporary file.
SAVE_PAUSE_ENV = "POCKETBERT_TEST_SAVE_PAUSE_S"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a unique temporary file, fsync it, rename it over `path`, fsync the folder.

    A crash or SIGKILL at any moment leaves either the old file or the new one, never half of one; the
    fsyncs make that hold across a power cut too, and the unique name lets two writers never collide.
    The temporary name carries the writer's pid, so `remove_stale_temporaries` can tell a killed
    writer's leftovers from a live one's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_temporary_prefix(path.name)}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a model file is meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _temporary_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _write(obj: Any, f: BinaryIO) -> None:
    """torch.save into f; with SAVE_PAUSE_ENV set, write half, pause, then the rest (a test hook that
    holds a save open long enough for a test to SIGKILL the process in the middle of it)."""
    pause = float(os.environ.get(SAVE_PAUSE_ENV) or 0)
    if pause <= 0:
        torch.save(obj, f)
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    f.write(data[: len(data) // 2])
    f.flush()
    time.sleep(pause)
    f.write(data[len(data) // 2 :])


def remove_stale_temporaries(folder: str | Path, name: str) -> list[Path]:
    """Delete the temporary files that killed writers of `folder/name` left behind; returns them.

    A temporary whose writer (the pid in its name) still runs is left alone.
    """
    removed = []
    for temporary in Path(folder).glob(f"{_temporary_prefix(name)}*"):
        pid = temporary.name[len(_temporary_prefix(name)) :].split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


@dataclass
class Weights:
    """What a weights file holds, whichever of the two kinds it is."""

    kind: str  # "pretraining" or "classification"
    config: BertConfig
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    num_labels: int | None = None
    training_state: bool = False  # read from a trainer's checkpoint.pt rather than a model.pt

    def build(self) -> BertForPreTraining | BertForSequenceClassification:
        """The model these weights describe, in eval mode."""
        if self.kind == "pretraining":
            model: BertForPreTraining | BertForSequenceClassification = BertForPreTraining(self.config)
        else:
            model = BertForSequenceClassification(self.config, self.num_labels or 2)
        model.load_state_dict(self.state)
        model.eval()
        return model


def read_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Weights:
    """Read a model.pt (`save_model`) or a trainer's checkpoint.pt (which holds the same weights and more).

    Every failure is a ValueError / FileNotFoundError naming the file: a truncated download or a
    foreign pickle gets one sentence, not an unpickling traceback. A checkpoint.pt needs a full unpickle
    (its RNG states are Python objects), so only read checkpoints your own runs wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        try:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable pocketbert checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError(f"{path}: not a pocketbert checkpoint")
    if payload.get("kind") in KINDS:  # model.pt
        if payload.get("format", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: checkpoint format {payload['format']} is newer than this pocketbert supports"
            )
        return Weights(
            payload["kind"],
            BertConfig.from_dict(payload["config"]),
            payload["model"],
            dict(payload.get("metadata") or {}),
            payload.get("num_labels"),
        )
    # checkpoint.pt: the pretraining trainer's state (weights, optimiser, RNG, ...)
    kind = payload.get("kind", "pretraining")
    return Weights(
        kind,
        BertConfig.from_dict(payload["config"]),
        payload["model"],
        dict(payload.get("metadata") or {}),
        payload.get("num_labels"),
        training_state=True,
    )


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[BertForPreTraining | BertForSequenceClassification, dict[str, Any]]:
    """Rebuild the model a model.pt or checkpoint.pt describes (in eval mode), with its metadata."""
    weights = read_weights(path, map_location)
    return weights.build(), weights.metadata


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
        model: BertForPreTraining | BertForSequenceClassification = BertForSequenceClassification(
            config, num_labels
        )
    else:
        model = BertForPreTraining(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
