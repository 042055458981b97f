"""Dynamic batching: requests for the same (model, task) that arrive together run as one batch.

Semantics follow Triton's dynamic batcher. Each (model, task) has one FIFO queue of requests, each
request holding one or more sequences. A collector task flushes the queue into a batch as soon as it
holds `max_batch_size` sequences, or when its oldest request has waited `max_wait_s`. The batch runs in
a worker thread (a shared ThreadPoolExecutor) so the event loop keeps accepting requests; while it
runs, new requests queue up and form the next batch, so under load batches grow by themselves even
with max_wait_s = 0. Results are cut back into per-request lists in the order the sequences came in.

Overload and abandonment are bounded:
- a queue holds at most `max_queue` sequences; past that `submit` raises QueueFullError (HTTP 503 with
  Retry-After) instead of letting latency grow without bound;
- a request that is cancelled (client gone) or passes its deadline leaves the queue at once, so it
  never occupies a batch slot; if its batch is already running, its result is simply dropped;
- an exception in a multi-request batch re-runs each request alone, so one bad input fails only its
  own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")  # one sequence of a request (a text, a pair, ...)
R = TypeVar("R")  # the engine's result for one sequence

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue cannot take the request's sequences; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(Exception):
    """The request's deadline passed before its batch produced a result."""


class BatcherClosedError(Exception):
    """The batcher was shut down (server stopping) before the request ran."""


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued_at: float
    deadline: float
    queued: bool = True  # still in the deque (not taken into a batch, not abandoned)


@dataclass
class BatchStats:
    """Observer hooks; the service wires these to Prometheus metrics, tests to lists."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None  # sequences, inference seconds
    on_depth: Callable[[int], None] = lambda depth: None  # sequences waiting
    on_reject: Callable[[], None] = lambda: None


@dataclass
class DynamicBatcher(Generic[T, R]):
    """One queue and its collector task. `run_batch` is called in `executor` with a flat list of at
    most max_batch_size sequences (longer only never: oversize requests are split into chunks) and
    must return one result per sequence, in order."""

    run_batch: Callable[[list[T]], list[R]]
    executor: Executor
    max_batch_size: int = 32
    max_wait_s: float = 0.002
    max_queue: int = 1024
    name: str = "batcher"
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self._queue: deque[_Pending[T, R]] = deque()
        self._depth = 0  # sequences in self._queue
        self._wakeup: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None
        self._closed = False
        self._batch_seconds = 0.0  # moving average of a batch's run time, for Retry-After

    # --- callers ------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Sequences waiting for a batch."""
        return self._depth

    async def submit(self, items: Sequence[T], timeout: float) -> list[R]:
        """Queue `items` as one request and wait (at most `timeout` seconds) for their results.

        Raises QueueFullError at once if the queue is full, DeadlineExceededError past the timeout,
        and whatever run_batch raised for these items. Cancelling the caller removes the request.
        """
        if self._closed:
            raise BatcherClosedError(f"{self.name}: shutting down")
        if not items:
            return []
        if self._depth + len(items) > self.max_queue:
            self.stats.on_reject()
            raise QueueFullError(
                f"{self.name}: queue full ({self._depth} of {self.max_queue} sequences waiting)",
                retry_after=self._retry_after(),
            )
        loop = asyncio.get_running_loop()
        self._start(loop)
        now = loop.time()
        pending: _Pending[T, R] = _Pending(items, loop.create_future(), now, now + timeout)
        self._queue.append(pending)
        self._set_depth(self._depth + len(items))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await asyncio.wait_for(pending.future, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"{self.name}: no result within the {timeout:g} s deadline") from None
        finally:
            # Timed out or cancelled (client gone): free the slot now rather than at flush time.
            self._abandon(pending)

    async def close(self) -> None:
        """Stop the collector and fail everything still queued (server shutdown)."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        while self._queue:
            pending = self._queue.popleft()
            pending.queued = False
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError(f"{self.name}: shutting down"))
        self._set_depth(0)

    # --- internals ----------------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._collector is None or self._collector.done():
            self._wakeup = asyncio.Event()
            self._collector = loop.create_task(self._collect(), name=f"batcher:{self.name}")

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self.stats.on_depth(depth)

    def _abandon(self, pending: _Pending[T, R]) -> None:
        if not pending.future.done():
            pending.future.cancel()
        if pending.queued:
            pending.queued = False
            self._queue.remove(pending)
            self._set_depth(self._depth - len(pending.items))

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained: batches to run x average batch time, at least 1."""
        batches = math.ceil(self._depth / self.max_batch_size)
        return max(1, math.ceil(batches * self._batch_seconds))

    async def _collect(self) -> None:
        """Form batches forever: wait for a request, then until the batch is full or the oldest waited
        max_wait_s, then run it. One batch per queue runs at a time; the next forms meanwhile."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            while self._queue and self._depth < self.max_batch_size:
                remaining = self._queue[0].enqueued_at + self.max_wait_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(loop.time())
            if batch:
                try:
                    await self._run(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the collector die: the queue would hang forever
                    log.exception("%s: batch failed unexpectedly", self.name)

    def _take(self, now: float) -> list[_Pending[T, R]]:
        """Pop whole requests from the head, up to max_batch_size sequences (at least one request)."""
        batch: list[_Pending[T, R]] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            if batch and size + len(head.items) > self.max_batch_size:
                break
            self._queue.popleft()
            head.queued = False
            self._depth -= len(head.items)
            if head.future.done():
                continue
            if now >= head.deadline:
                head.future.set_exception(DeadlineExceededError(f"{self.name}: deadline passed while queued"))
                continue
            batch.append(head)
            size += len(head.items)
        self._set_depth(self._depth)
        return batch

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        flat = [item for pending in batch for item in pending.items]
        try:
            results = await loop.run_in_executor(self.executor, self._run_chunks, flat)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            # Isolate the failure: run each request alone so only the faulty one gets the error.
            for pending in batch:
                if pending.future.done():
                    continue
                try:
                    alone = await loop.run_in_executor(self.executor, self._run_chunks, list(pending.items))
                except Exception as single_exc:
                    _settle(pending.future, exc=single_exc)
                else:
                    _settle(pending.future, result=alone)
            return
        offset = 0
        for pending in batch:
            n = len(pending.items)
            _settle(pending.future, result=results[offset : offset + n])
            offset += n

    def _run_chunks(self, flat: list[T]) -> list[R]:
        """Runs in the worker thread: max_batch_size sequences per engine call, timed for the stats."""
        out: list[R] = []
        for start in range(0, len(flat), self.max_batch_size):
            chunk = flat[start : start + self.max_batch_size]
            began = time.perf_counter()
            results = self.run_batch(chunk)
            seconds = time.perf_counter() - began
            if len(results) != len(chunk):
                raise RuntimeError(
                    f"{self.name}: engine returned {len(results)} results for {len(chunk)} inputs"
                )
            self._batch_seconds = (
                seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
            )
            self.stats.on_batch(len(chunk), seconds)
            out.extend(results)
        return out


def _settle(future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    """Resolve a request's future unless its caller already gave up on it."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
