"""How the engine runs a graph on the CPU it finds itself on: threads, spinning and batch splitting,
chosen per batch-size band by a short timing at first load and cached outside the bundle.

Why: which settings are fastest depends on the CPU, on how busy it is and on the batch size. On a
2-core AVX2 machine onnxruntime's intra-op threads spin between operators (good on a quiet machine,
CPU burnt on a shared one), one thread per batch avoids the synchronisation of two, and a batch split
into length-sorted chunks that run side by side on one-thread sessions parallelises perfectly and pads
each chunk only to its own longest text. No rule fits every CPU, so the runtime measures: for each band
it runs the candidate plans (`candidate_plans`) in interleaved rounds on a synthetic batch and keeps the
fastest (the minimum over rounds: noise from other processes only ever adds time).

The choice is cached outside the bundle (model/plans.py: where, keyed by what, how workers share it).

POCKETBERT_ENGINE_PLAN (or `Engine.load(plan=...)`) overrides: `auto` (the default: timed and cached),
`fixed` (every band: the whole thread budget, spinning, one chunk: the engine before tuning existed), or
one plan for every band, e.g. `threads=1,chunks=2` or `threads=2,spinning=off`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model.bundle import BundleError
from model.plans import BANDS, TUNER_VERSION, Band, Plan, candidate_plans, cpu_signature

ROUNDS = 5  # interleaved timing rounds per band; each candidate's best round counts
BAND_SECONDS = 2.0  # after this long on one band, no further round starts (a loaded machine is slow)
TUNE_LENGTH = 32  # longest text of a timing batch (tokens); the others spread down to half of it
# onnxruntime's load-time fusions left out: Add + LayerNormalization would fuse into SkipLayerNormalization,
# whose CPU kernel is several times slower than the two it replaces (training/onnx_utils.py,
# unfuse_skip_layer_norm, has the figures). Graphs that still hold the fused op run it as they are.
DISABLED_FUSIONS = ("SkipLayerNormFusion",)


def make_session(
    path: Path, intra_op_threads: int | None = None, spinning: bool = True, optimized_copy: Path | None = None
) -> ort.InferenceSession:
    """A CPU session; intra_op_threads=None lets onnxruntime use every core. optimized_copy: where to
    write the graph as onnxruntime runs it after its load-time optimizations (inspection, tests)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1  # the graphs are a single chain: parallelism is inside operators
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_copy is not None:
        options.optimized_model_filepath = str(optimized_copy)
    try:
        return ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_FUSIONS)
        )
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"bundle {path.parent}: onnxruntime cannot load {path.name} ({exc})") from exc


def balanced_chunks(lengths: np.ndarray, chunks: int) -> list[np.ndarray]:
    """Row indices of at most `chunks` parts, longest texts first, whose padded cost (rows x longest row)
    is as even as contiguous parts of the sorted order allow: parts run side by side, so the slowest
    sets the time. Binary search on the largest part's cost; each part is then padded to its own longest."""
    order = np.argsort(-lengths, kind="stable")
    ordered = np.maximum(lengths[order], 1)

    def split(capacity: int) -> list[np.ndarray]:
        parts, start = [], 0
        while start < len(order):
            rows = max(1, capacity // int(ordered[start]))
            parts.append(order[start : start + rows])
            start += rows
        return parts

    low, high = int(ordered[0]), int(ordered[0]) * len(order)
    while low < high:
        middle = (low + high) // 2
        if len(split(middle)) <= chunks:
            high = middle
        else:
            low = middle + 1
    return split(low)


class GraphRunner:
    """One graph of a bundle: a session per thread setting in use, and the plan per batch-size band.

    `run` picks the plan of the batch's band. `sequence_inputs` are the feeds with a sequence axis (cut to
    each chunk's own longest text); every output has the batch first.
    """

    def __init__(
        self, path: Path, budget: int, sequence_inputs: Sequence[str], spinning: bool = True
    ) -> None:
        self.path = path
        self.budget = budget
        self.spinning = spinning  # whether plans may spin (see candidate_plans)
        self.sequence_inputs = tuple(sequence_inputs)
        self.fixed = Plan(budget, spinning=spinning)
        self.plans: dict[Band, Plan] = dict.fromkeys(BANDS, self.fixed)
        self._sessions: dict[tuple[int, bool], ort.InferenceSession] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.default = self.session(self.fixed)  # opened now: a graph onnxruntime cannot load fails here

    def session(self, plan: Plan) -> ort.InferenceSession:
        key = (plan.threads, plan.spinning)
        if key not in self._sessions:
            self._sessions[key] = make_session(self.path, plan.threads, plan.spinning)
        return self._sessions[key]

    def plan_for(self, batch_size: int) -> Plan:
        return next((plan for band, plan in self.plans.items() if batch_size in band), self.fixed)

    def run(
        self, outputs: list[str], feeds: dict[str, np.ndarray], plan: Plan | None = None
    ) -> list[np.ndarray]:
        batch_size = len(next(iter(feeds.values())))
        plan = plan or self.plan_for(batch_size)
        session = self.session(plan)
        if plan.chunks == 1 or batch_size == 1:
            return session.run(outputs, feeds)
        return self._run_chunks(session, outputs, feeds, plan.chunks)

    def _run_chunks(
        self, session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray], chunks: int
    ) -> list[np.ndarray]:
        lengths = feeds["attention_mask"].sum(axis=1)
        parts = balanced_chunks(lengths, chunks)

        def run_part(rows: np.ndarray) -> list[np.ndarray]:
            width = max(1, int(lengths[rows].max()))
            part = {
                name: value[rows, :width] if name in self.sequence_inputs else value[rows]
                for name, value in feeds.items()
            }
            return session.run(outputs, part)

        if self._pool is None:  # the calling thread runs one part; the pool the others
            workers = max(self.budget, chunks) - 1
            self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunk")
        others = [self._pool.submit(run_part, rows) for rows in parts[1:]]
        results = [run_part(parts[0]), *(future.result() for future in others)]
        merged = []
        for index in range(len(outputs)):
            first = results[0][index]
            out = np.empty((len(lengths), *first.shape[1:]), dtype=first.dtype)
            for rows, result in zip(parts, results, strict=True):
                out[rows] = result[index]
            merged.append(out)
        return merged

    def tune(self, outputs: list[str], make_feeds: Callable[[int], dict[str, np.ndarray]]) -> dict[str, Any]:
        """Time the candidate plans per band (interleaved rounds, best round each) and keep the fastest;
        returns the timings in milliseconds, per band and plan."""
        timings: dict[str, Any] = {}
        for band in BANDS:
            plans = candidate_plans(self.budget, band.timed_at, self.spinning)
            if len(plans) == 1:
                self.plans[band] = plans[0]
                continue
            feeds = make_feeds(band.timed_at)
            for plan in plans:  # warm-up: session creation, first-run allocations
                self.run(outputs, feeds, plan)
            best = dict.fromkeys(plans, float("inf"))
            deadline = time.perf_counter() + BAND_SECONDS
            for round_ in range(ROUNDS):
                if round_ >= 2 and time.perf_counter() > deadline:
                    break
                for plan in plans:
                    began = time.perf_counter()
                    self.run(outputs, feeds, plan)
                    best[plan] = min(best[plan], time.perf_counter() - began)
            self.plans[band] = min(plans, key=best.__getitem__)
            timings[str(band)] = {str(plan): round(1000 * seconds, 3) for plan, seconds in best.items()}
        return timings

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def cache_key(runner: GraphRunner, graph_sha256: str) -> dict[str, Any]:
    """What a timed choice depends on: the graph, the CPU, the thread budget (and whether plans may spin)
    and onnxruntime."""
    return {
        "graph_sha256": graph_sha256,
        "cpu": cpu_signature(),
        "threads": runner.budget,
        "spinning": runner.spinning,
        "onnxruntime": ort.__version__,
        "tuner": TUNER_VERSION,
    }
