"""The service's Prometheus metrics, through prometheus-client.

One worker process: the metrics live in a registry of the app's own (tests start many apps in one
process; each counts alone). Several workers (`pocketbert serve --workers N`): each process writes its
values to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen by that
variable alone) and /metrics adds up every process's files, so a scrape of any worker reports the whole
server. `prepare_multiprocess_dir` sets that folder up before the workers start; `mark_worker_stopped`
removes a stopping worker's live gauges from the sum.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a cached sub-millisecond answer to a request stuck at its deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sequences per batch: powers of two up to well past any sensible max_batch_size.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

disable_created_metrics()  # the *_created samples say when a process started counting: noise here


def multiprocess_dir() -> Path | None:
    """The folder of multiprocess mode, or None in single-process mode."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Before the workers start: with more than one, or when the user set PROMETHEUS_MULTIPROC_DIR, that
    folder (a new temporary one unless set) emptied of an earlier server's files, so counts start at 0.
    Returns a folder this call created (the caller removes it at exit), else None."""
    folder = multiprocess_dir()
    created = None
    if folder is None:
        if workers <= 1:
            return None
        folder = created = Path(tempfile.mkdtemp(prefix="pocketbert-metrics-"))
        os.environ[MULTIPROC_ENV] = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return created


def remove_multiprocess_dir(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def mark_worker_stopped() -> None:
    """A stopping worker's queue depths leave the server's sum (its counters and histograms stay)."""
    folder = multiprocess_dir()
    if folder is not None:
        multiprocess.mark_process_dead(os.getpid(), str(folder))


class ServiceMetrics:
    """The service's metric families; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        endpoint = ("endpoint", "method", "status")
        batch = ("model", "task")
        self.requests = Counter(
            "pocketbert_http_requests",
            "HTTP requests answered, by endpoint, method and status code.",
            endpoint,
            registry=self.registry,
        )
        self.latency = Histogram(
            "pocketbert_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its answer.",
            endpoint,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pocketbert_batch_size",
            "Sequences per inference batch run by the dynamic batcher.",
            batch,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "pocketbert_batch_duration_seconds",
            "Inference time of one batch in the worker thread.",
            batch,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "pocketbert_queue_depth",
            "Sequences waiting in a batching queue (not yet in a batch), summed over the live workers.",
            batch,
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.rejected = Counter(
            "pocketbert_queue_rejected",
            "Requests refused with 503 because their queue was full.",
            batch,
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        """The exposition text: this app's registry, or every worker's files in multiprocess mode."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(folder))
        return generate_latest(merged)
