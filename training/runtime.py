"""Where and how a training process runs: device, threads, seeding, DistributedDataParallel, signals.

One process is the ordinary case; under `torchrun --nproc-per-node N` the environment carries RANK,
WORLD_SIZE and LOCAL_RANK, and the same code joins a process group (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field
from types import FrameType

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """The facts of this process that the training loop needs."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and draws the progress bar; the other ranks only compute."""
        return self.rank == 0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype matrix products run in: None (fp32), or bfloat16 for 'bf16', and for 'auto' where the
    hardware computes it natively (a GPU that supports it, a CPU with AVX512-BF16 or AMX)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        from model.plans import cpu_has_native_bf16

        return torch.bfloat16 if cpu_has_native_bf16() else None  # software bf16 is unmeasured: fp32
    return None


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' takes the GPU when there is one; 'cpu' / 'cuda' / 'mps' are taken as asked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto", threads: int | None = None) -> Runtime:
    """Join the process group when launched by torchrun, choose the device and the CPU thread count.

    Under DDP on one machine the ranks share the cores, so each gets cores // world_size threads unless
    told otherwise; oversubscribed threads make every rank slower than one rank alone.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    if threads is None and world_size > 1:
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if threads:
        torch.set_num_threads(threads)
    return Runtime(device=dev, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown(finished: bool = False) -> None:
    """Leave the process group. A rank that finished its run waits for its peers first: gloo aborts the
    process ("terminate called without an active exception") when one rank destroys the group while a
    peer's last messages are still in flight. A rank leaving on an error does not wait (its peers may
    never arrive)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG a training step may draw from (dropout uses torch's)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_generator(*key: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator that is a pure function of the integers in `key` (e.g. seed, step, rank).

    Masking and shuffling draw from these instead of the global RNG, so where the run is in the data
    is fully described by (seed, epoch, step): nothing to save, and a resumed run draws the same masks.
    """
    value = 0
    for k in key:
        value = (value * 1_000_003 + int(k)) % (2**63 - 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(value)
    return generator


@dataclass
class StopSignal:
    """Turns SIGINT / SIGTERM into a flag that the training loop checks between steps.

    The loop then writes a checkpoint and returns, instead of dying mid-write. A second Ctrl-C while
    saving falls through to Python's default behaviour (KeyboardInterrupt), for a user who insists.
    """

    received: int | None = None
    _previous: dict[int, object] = field(default_factory=dict)

    def install(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the signal (the shell's convention: 130 after Ctrl-C, 143 after SIGTERM).

        Never 0: the run is saved but not finished, and whatever called it (a recipe, a scheduler, a
        shell `&&`) must not take the next step as if it were.
        """
        return 128 + int(self.received or 0)

    def should_stop(self, runtime: Runtime) -> bool:
        """True on every rank as soon as any rank got a signal (so all ranks save and stop together)."""
        flag = self.received is not None
        if runtime.distributed:
            t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag
