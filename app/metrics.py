"""A small Prometheus registry: counters, gauges and histograms rendered in the text exposition format.

Why not prometheus-client: the service needs four metric families, one process and no push gateway;
~150 lines keep the `serve` extra (and the Docker image) one dependency lighter and the format is stable
(https://prometheus.io/docs/instrumenting/exposition_formats/). Every update takes a lock, because batch
metrics are recorded from the inference thread while the event loop renders /metrics.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a cached sub-millisecond answer to a request stuck at its deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sequences per batch: powers of two up to well past any sensible max_batch_size.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> Iterable[str]:  # pragma: no cover - overridden
        return ()


class _ScalarMetric(_Metric):
    """One number per label set: what counters and gauges have in common."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_format_labels(self.labelnames, key)} {_format_value(value)}"


class Counter(_ScalarMetric):
    """A monotonically increasing count per label set (requests, rejections)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_ScalarMetric):
    """A value that goes up and down (queue depth)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set, as Prometheus expects."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        # per label set: [count per bucket (non-cumulative, last = +Inf)], sum
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), ()))

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((key, list(counts), self._sums[key]) for key, counts in self._counts.items())
        for key, counts, total in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _format_value(bound) + '"'
                yield f"{self.name}_bucket{_format_labels(self.labelnames, key, le)} {running}"
            yield f"{self.name}_sum{_format_labels(self.labelnames, key)} {_format_value(total)}"
            yield f"{self.name}_count{_format_labels(self.labelnames, key)} {running}"


class Registry:
    """The metric families of one app, rendered together for GET /metrics."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The service's metric families; one instance per app so tests never share counts."""

    def __init__(self) -> None:
        self.requests = Counter(
            "pocketbert_http_requests_total",
            "HTTP requests answered, by endpoint, method and status code.",
            ("endpoint", "method", "status"),
        )
        self.latency = Histogram(
            "pocketbert_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its answer.",
            ("endpoint", "method", "status"),
        )
        self.batch_size = Histogram(
            "pocketbert_batch_size",
            "Sequences per inference batch run by the dynamic batcher.",
            ("model", "task"),
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.batch_latency = Histogram(
            "pocketbert_batch_duration_seconds",
            "Inference time of one batch in the worker thread.",
            ("model", "task"),
        )
        self.queue_depth = Gauge(
            "pocketbert_queue_depth",
            "Sequences waiting in a batching queue (not yet in a batch).",
            ("model", "task"),
        )
        self.rejected = Counter(
            "pocketbert_queue_rejected_total",
            "Requests refused with 503 because their queue was full.",
            ("model", "task"),
        )
        self.registry = Registry()
        for metric in (
            self.requests,
            self.latency,
            self.batch_size,
            self.batch_latency,
            self.queue_depth,
            self.rejected,
        ):
            self.registry.register(metric)

    def render(self) -> str:
        return self.registry.render()
