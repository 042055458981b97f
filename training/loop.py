"""The pieces of a training loop that pretraining and fine-tuning share: the optimiser step, the window
of steps behind each training metrics row, and the progress bar. (The rows go to metrics.jsonl through
training/metrics_log.py, which `pocketbert plot` reads without torch.)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm import tqdm


def clip_and_step(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clip: float,
) -> None:
    """Clip the gradients' global norm to `clip` (0 = off), step optimiser and schedule, reset gradients."""
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


class Window:
    """The steps since the last training metrics row: their mean losses and their throughput.

    Only the time spent in the steps themselves counts (not evaluation or checkpoints), so tokens/s
    measures training alone.
    """

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size  # every process trains on as many tokens as this one
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0

    def add(self, losses: dict[str, float], tokens: int, seconds: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds

    def means(self) -> dict[str, float]:
        return {key: total / self.steps for key, total in self.sums.items()}

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second over all processes."""
        return self.tokens * self.world_size / max(self.seconds, 1e-9)


def progress_bar(total: int, initial: int = 0, desc: str | None = None, disable: bool = False) -> tqdm:
    """A bar counting optimiser steps, redrawn at most once a second (a step can take milliseconds)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=disable,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )
