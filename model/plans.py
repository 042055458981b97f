"""Which plan runs a graph's batch, per batch-size band, and the cache of the plans chosen by timing.

A plan (`Plan`) says how one batch runs: how many intra-op threads, whether they spin between operators,
and into how many length-sorted chunks the batch splits to run side by side (model/runtime.py runs and
times them). The timed choice is cached in `cache_dir()` (POCKETBERT_CACHE_DIR, else
$XDG_CACHE_HOME/pocketbert, else ~/.cache/pocketbert), one file per key (graph sha256, CPU, thread
budget, onnxruntime version, TUNER_VERSION), written atomically; a file lock makes the uvicorn workers of
one server time one at a time (concurrent timings would measure each other) so the later ones read the
cache. An unwritable cache (a read-only container) only costs the timing at each start.

Light on purpose (no numpy, no onnxruntime): the web service's settings check a plan with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:  # POSIX: serialises timing between the worker processes of one server
    import fcntl
except ImportError:  # pragma: no cover - Windows: workers may time side by side
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_PLAN = "POCKETBERT_ENGINE_PLAN"
ENV_CACHE = "POCKETBERT_CACHE_DIR"
# 2: sessions leave SkipLayerNormFusion out (model/runtime.py DISABLED_FUSIONS): earlier timings are stale
TUNER_VERSION = 2
# Instruction sets that change which kernels onnxruntime's MLAS picks (x86 and Arm).
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


@dataclass(frozen=True)
class Band:
    """Batch sizes low..high (None: no upper end), timed at batch size `timed_at`."""

    low: int
    high: int | None
    timed_at: int

    def __contains__(self, batch_size: object) -> bool:
        return (
            isinstance(batch_size, int)
            and self.low <= batch_size
            and (self.high is None or batch_size <= self.high)
        )

    def __str__(self) -> str:
        if self.high is None:
            return f"{self.low}+"
        return str(self.low) if self.high == self.low else f"{self.low}-{self.high}"


# One text; a few (interactive use, light load); full batches (the server under load, batch scoring).
BANDS = (Band(1, 1, 1), Band(2, 15, 8), Band(16, None, 32))


@dataclass(frozen=True)
class Plan:
    """How one batch runs: `chunks` length-sorted parts side by side, each on a session of `threads`
    intra-op threads that spin between operators or sleep."""

    threads: int = 1
    spinning: bool = True
    chunks: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1 or self.chunks < 1:
            raise ValueError(f"a plan needs at least one thread and one chunk, got {self}")
        if self.threads == 1 and not self.spinning:  # a one-thread session has no pool to spin
            object.__setattr__(self, "spinning", True)

    def __str__(self) -> str:
        return f"threads={self.threads},spinning={'on' if self.spinning else 'off'},chunks={self.chunks}"

    @classmethod
    def parse(cls, text: str) -> Plan:
        """'threads=1,chunks=2,spinning=off' (any order, any subset) -> Plan; ValueError naming the fault."""
        fields: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip().lower()
            if key in ("threads", "chunks") and value.isdigit():
                fields[key] = int(value)
            elif key == "spinning" and value in ("on", "off", "1", "0", "true", "false"):
                fields[key] = value in ("on", "1", "true")
            else:
                raise ValueError(
                    f"{ENV_PLAN}: cannot read {part!r} in {text!r}; expected auto, fixed or e.g. "
                    "threads=1,chunks=2,spinning=off"
                )
        return cls(**fields)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    `--cpus`, a Kubernetes CPU limit), at least 1."""
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS and Windows
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 cpu.max, v1 cpu.cfs_quota_us / cfs_period_us); None without
    one."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def candidate_plans(budget: int, batch_size: int, spinning: bool = True) -> list[Plan]:
    """What is worth timing with `budget` threads: all of them spinning (onnxruntime's default) or
    sleeping, one thread, and, for a batch, one chunk per thread. spinning=False leaves out plans whose
    threads spin (a server's event loop needs the CPU they would burn)."""
    plans = [Plan(budget, spinning=True), Plan(budget, spinning=False), Plan(1)]
    if batch_size > 1:
        plans.append(Plan(1, chunks=min(budget, batch_size)))
    allowed = [plan for plan in plans if spinning or not plan.spinning or plan.threads == 1]
    return list(dict.fromkeys(allowed))  # a budget of one thread makes them all the same plan


# --- the cache of chosen plans ---------------------------------------------------------------------
def cache_dir() -> Path:
    """POCKETBERT_CACHE_DIR, else $XDG_CACHE_HOME/pocketbert, else ~/.cache/pocketbert."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pocketbert"


def _cpuinfo_fields() -> dict[str, str]:
    """The first CPU's lines of /proc/cpuinfo that describe it (empty where there is no such file)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if (
                key in ("model name", "cpu family", "model", "flags", "Features", "CPU part")
                and key not in fields
            ):
                fields[key] = value.strip()
    return fields


def _take_flags(fields: dict[str, str]) -> set[str]:
    """Remove the instruction-set lines (x86 `flags`, Arm `Features`) from `fields`; return their sets."""
    return set((fields.pop("flags", "") + " " + fields.pop("Features", "")).split())


def cpu_flags() -> set[str]:
    """The instruction sets the CPU reports; empty where unknown."""
    return _take_flags(_cpuinfo_fields())


# CPU instruction sets with native bf16 matrix products: there bf16 autocast pays (about 2x the tokens
# per second of fp32 for this model on 2 AVX512-BF16 cores, `bench/train_step.py --variants`); without
# them bf16 is converted in software, a gain nobody measured.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (training's `--precision auto` asks this)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def cpu_signature() -> str:
    """The CPU as its kernels see it: vendor model name, family/model and the instruction sets that matter."""
    fields = _cpuinfo_fields()
    flags = _take_flags(fields)  # the rest of fields describes the CPU
    described = " / ".join(fields.values()) or platform.processor() or "unknown"
    return f"{platform.machine()} {described} [{' '.join(f for f in ISA_FLAGS if f in flags)}]"


def _cache_path(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "plans" / f"{digest}.json"


def read_cached(key: Mapping[str, Any]) -> dict[Band, Plan] | None:
    """The plans cached under `key`, or None (none cached, or an unreadable or foreign entry)."""
    try:
        entry = json.loads(_cache_path(key).read_text(encoding="utf-8"))
        if entry.get("key") != dict(key):
            return None
        by_name = {str(band): band for band in BANDS}
        return {by_name[name]: Plan(**fields) for name, fields in entry["plans"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(key: Mapping[str, Any], plans: Mapping[Band, Plan], timings: Mapping[str, Any]) -> None:
    """Store the plans (and the timings that chose them, for whoever wonders why); a cache that cannot
    be written is logged, not fatal."""
    from model.bundle import write_json_atomic  # numpy comes with it: only here, not for a settings check

    path = _cache_path(key)
    entry = {
        "key": dict(key),
        "plans": {str(band): asdict(plan) for band, plan in plans.items()},
        "timings_ms": dict(timings),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, entry)
    except OSError as exc:
        log.warning(
            "engine plan cache %s is not writable (%s): the timing will run again next start", path, exc
        )


@contextlib.contextmanager
def tuning_lock(key: Mapping[str, Any]) -> Iterator[None]:
    """Hold an exclusive lock for `key` (other processes tuning the same graph wait); no lock where the
    cache folder cannot be written."""
    path = _cache_path(key).with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - held for the whole block
    except OSError:
        yield
        return
    with handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def plan_setting(plan: str | None) -> str:
    """The plan asked for: the argument, else POCKETBERT_ENGINE_PLAN, else 'auto'; checked early."""
    chosen = (plan or os.environ.get(ENV_PLAN) or "auto").strip()
    if chosen not in ("auto", "fixed"):
        Plan.parse(chosen)
    return chosen
