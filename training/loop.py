"""The pieces of a training loop that pretraining and fine-tuning share: the optimiser step, the window
of steps behind each training metrics row, and the progress bar. (The rows go to metrics.jsonl through
training/metrics_log.py, which `pocketbert plot` reads without torch.) Also what keeps a long run's
resident memory at what a step needs: `HeapTrimmer`.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

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


def resident_mb() -> float:
    """This process's resident memory now, in MiB: logged with the training rows so a leak shows as a
    rising line. Linux reads /proc; elsewhere the peak (ru_maxrss) stands in."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    import resource  # not on Windows; imported only where /proc is missing

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class HeapTrimmer:
    """Gives the memory of freed tensors back to the system when the process keeps growing.

    glibc keeps freed blocks in its heap for reuse, which is right: a step's activations are freed and
    the next step's take their place. But their sizes change with every batch (its length, its number of
    masked tokens), the holes rarely fit, and the heap grows: ~50 MB a step, ~3.5 GB resident after
    2,000 steps of the default model at batch 32 x 4. The first step after a trim (or the first of all)
    sets the level a step needs; once the process has grown `slack_mb` past it, `malloc_trim` releases
    the free pages. The next step faults back in the ones it uses, which costs time: trimming after
    every step cost ~9%, once every few steps ~2%. A no-op off glibc.
    """

    def __init__(self, slack_mb: float = 256.0) -> None:
        self.slack_mb = slack_mb
        self.level_mb: float | None = None  # resident after the first step since the last trim
        self._trim = _malloc_trim()

    def after_step(self) -> None:
        if self._trim is None:
            return
        resident = resident_mb()
        if self.level_mb is None:
            self.level_mb = resident
        elif resident > self.level_mb + self.slack_mb:
            self._trim(0)
            self.level_mb = None


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
