"""checkpoint.pt, the training state for `--resume`: everything needed to continue a run as if it had
never stopped.

It is not model.pt, the export format (MODEL_FILENAME, written beside it by `model.checkpoint.save_model`):
besides the weights it holds the optimiser moments, the schedule position, the RNG states and the data
position, so it is about three times larger and only meaningful to the trainer that wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.checkpoint import atomic_torch_save
from training.errors import CLIError

TRAINING_STATE_FILENAME = "checkpoint.pt"
TRAINING_STATE_FORMAT = 1


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): an interrupted save leaves the previous one intact."""
    atomic_torch_save({"format": TRAINING_STATE_FORMAT, **state}, path)


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by `save_training_state`.

    weights_only=False because the RNG states are Python / NumPy objects; only load states your own
    runs wrote (torch.load of an untrusted file can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise CLIError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT or "model" not in state:
        raise CLIError(f"{path}: not a pocketbert training checkpoint")
    return state
