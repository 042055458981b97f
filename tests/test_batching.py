"""The dynamic batcher on its own: batch formation, order, limits, deadlines, cancellation, errors.

A fake run_batch stands in for the engine here (these are tests of the queue logic); batched results
equal to unbatched ones with the real engine are checked at the end on the tiny bundle.
Nothing here asserts on timing: blocking runners (threading.Event) make every ordering deterministic.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.batching import BatchStats, DeadlineExceededError, DynamicBatcher, QueueFullError

LONG = 60.0  # a deadline / wait no test reaches


class Recorder:
    """A fake engine call: doubles numbers, records each batch, can be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        assert self.release.wait(LONG)
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [2 * i for i in items]


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def make(executor, runner, **kwargs) -> DynamicBatcher:
    sizes: list[int] = []
    stats = BatchStats(on_batch=lambda size, seconds: sizes.append(size))
    batcher = DynamicBatcher(run_batch=runner, executor=executor, stats=stats, **kwargs)
    batcher.sizes = sizes  # type: ignore[attr-defined]
    return batcher


async def wait_until(condition, limit: int = 2000) -> None:
    """Yield to the loop until condition() holds (bounded)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_full_batch_flushes_without_waiting_and_keeps_order(executor) -> None:
    runner = Recorder()

    async def main() -> list[list[int]]:
        # max_wait is huge: only "max_batch_size sequences queued" can flush these batches.
        batcher = make(executor, runner, max_batch_size=4, max_wait_s=LONG)
        requests = [[1], [2, 3], [4], [5, 6, 7], [8]]  # 8 sequences -> two full batches of 4
        results = await asyncio.gather(*(batcher.submit(r, LONG) for r in requests))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert results == [[2], [4, 6], [8], [10, 12, 14], [16]]
    assert runner.batches == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_partial_batch_runs_after_max_wait(executor) -> None:
    runner = Recorder()

    async def main() -> list[list[int]]:
        batcher = make(executor, runner, max_batch_size=64, max_wait_s=0.01)
        results = await asyncio.gather(*(batcher.submit([i], LONG) for i in range(3)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [[0], [2], [4]]
    assert sum(len(b) for b in runner.batches) == 3


def test_requests_queue_up_while_a_batch_runs(executor) -> None:
    """With max_wait 0, batches still form under load: they gather while the engine is busy."""
    runner = Recorder(hold=True)

    async def main() -> list[list[int]]:
        batcher = make(executor, runner, max_batch_size=8, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit([0], LONG))
        await wait_until(runner.started.is_set)
        rest = [asyncio.ensure_future(batcher.submit([i], LONG)) for i in range(1, 6)]
        await wait_until(lambda: batcher.depth == 5)
        runner.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results

    assert asyncio.run(main()) == [[0], [2], [4], [6], [8], [10]]
    assert runner.batches == [[0], [1, 2, 3, 4, 5]]


def test_oversize_request_is_split_into_max_batch_size_chunks(executor) -> None:
    runner = Recorder()

    async def main() -> list[int]:
        batcher = make(executor, runner, max_batch_size=4, max_wait_s=0.0)
        result = await batcher.submit(list(range(10)), LONG)
        assert batcher.sizes == [4, 4, 2]  # type: ignore[attr-defined]
        await batcher.close()
        return result

    assert asyncio.run(main()) == [2 * i for i in range(10)]


def test_full_queue_is_refused_with_retry_after(executor) -> None:
    runner = Recorder(hold=True)
    rejected: list[int] = []

    async def main() -> None:
        batcher = make(executor, runner, max_batch_size=2, max_wait_s=0.0, max_queue=3)
        batcher.stats.on_reject = lambda: rejected.append(1)
        running = asyncio.ensure_future(batcher.submit([0, 1], LONG))  # taken into a batch: not queued
        await wait_until(runner.started.is_set)
        queued = [asyncio.ensure_future(batcher.submit([i], LONG)) for i in (2, 3, 4)]
        await wait_until(lambda: batcher.depth == 3)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit([5], LONG)
        assert info.value.retry_after >= 1
        runner.release.set()
        assert await running == [0, 2]
        assert await asyncio.gather(*queued) == [[4], [6], [8]]
        assert await batcher.submit([5], LONG) == [10]  # room again once drained
        await batcher.close()

    asyncio.run(main())
    assert rejected == [1]


def test_cancelled_request_leaves_the_queue_and_never_runs(executor) -> None:
    """A client that disconnects (its handler is cancelled) frees its slot at once."""
    runner = Recorder(hold=True)

    async def main() -> None:
        batcher = make(executor, runner, max_batch_size=8, max_wait_s=0.0, max_queue=2)
        busy = asyncio.ensure_future(batcher.submit([0], LONG))
        await wait_until(runner.started.is_set)
        gone = asyncio.ensure_future(batcher.submit([7, 7], LONG))
        await wait_until(lambda: batcher.depth == 2)
        gone.cancel()
        await wait_until(lambda: batcher.depth == 0)
        stays = asyncio.ensure_future(batcher.submit([3, 4], LONG))  # would not fit beside the cancelled one
        await wait_until(lambda: batcher.depth == 2)
        runner.release.set()
        assert await busy == [0]
        assert await stays == [6, 8]
        await batcher.close()

    asyncio.run(main())
    assert [7, 7] not in runner.batches and all(7 not in b for b in runner.batches)


def test_deadline_while_queued_raises_and_frees_the_slot(executor) -> None:
    runner = Recorder(hold=True)

    async def main() -> None:
        batcher = make(executor, runner, max_batch_size=8, max_wait_s=0.0)
        busy = asyncio.ensure_future(batcher.submit([0], LONG))
        await wait_until(runner.started.is_set)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit([9], 0.05)
        assert batcher.depth == 0
        runner.release.set()
        assert await busy == [0]
        await batcher.close()

    asyncio.run(main())
    assert all(9 not in b for b in runner.batches)


def test_a_failing_input_fails_only_its_own_request(executor) -> None:
    runner = Recorder()

    async def main() -> list:
        batcher = make(executor, runner, max_batch_size=8, max_wait_s=LONG)
        calls = [
            batcher.submit(r, LONG) for r in ([1], [-1], [2, 3], [4], [5], [6], [7])
        ]  # 8 sequences: one batch
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert isinstance(results[1], ValueError)
    assert [r for i, r in enumerate(results) if i != 1] == [[2], [4, 6], [8], [10], [12], [14]]


def test_batched_results_equal_unbatched_results(tiny_bundle) -> None:
    """The real engine through the batcher, many texts of different lengths in one padded batch, gives
    what each text gives alone."""
    from app.registry import batch_runners
    from model.engine import Engine

    engine = Engine.load(tiny_bundle, intra_op_threads=1)
    runners = batch_runners(engine)
    texts = [
        "the cat [MASK] the park.",
        "a [MASK].",
        "my friend watches the old tree and [MASK] a small house.",
        "[MASK] [MASK] sees the river.",
        "고양이가 [MASK] 좋아한다.",
    ]
    pairs = [("the cat sees the park.", "a dog likes a book."), ("정말 재미있다.", "the city.")]

    async def batched(task: str, items: list) -> list:
        pool = ThreadPoolExecutor(max_workers=1)
        batcher = DynamicBatcher(run_batch=runners[task], executor=pool, max_batch_size=16, max_wait_s=LONG)
        try:
            # 16 one-item requests fill the batch exactly, so they all run together (max_wait is huge).
            requests = (items * 16)[:16]
            results = await asyncio.gather(*(batcher.submit([x], LONG) for x in requests))
            return [r[0] for r in results[: len(items)]]
        finally:
            await batcher.close()
            pool.shutdown()

    ids = [engine.tokenizer.encode_ids(t) for t in texts]  # a batch item carries its text's pieces
    fill = asyncio.run(batched("fill-mask", [(t, i, 3, True) for t, i in zip(texts, ids, strict=True)]))
    for text, got in zip(texts, fill, strict=True):
        (alone,) = engine.fill_mask([text], top_k=3)
        assert [[p["token"] for p in m] for m in got] == [[p["token"] for p in m] for m in alone]
        np.testing.assert_allclose(
            [[p["score"] for p in m] for m in got],
            [[p["score"] for p in m] for m in alone],
            rtol=1e-4,
            atol=1e-6,
        )
    cls = asyncio.run(batched("classify", [(t, i, None) for t, i in zip(texts, ids, strict=True)]))
    for text, got in zip(texts, cls, strict=True):
        (alone,) = engine.classify([text])
        assert [x["label"] for x in got] == [x["label"] for x in alone]
        np.testing.assert_allclose(
            [x["score"] for x in got], [x["score"] for x in alone], rtol=1e-4, atol=1e-6
        )
    pieces = [(engine.tokenizer.encode_ids(a), engine.tokenizer.encode_ids(b)) for a, b in pairs]
    nsp = asyncio.run(batched("next-sentence", list(zip(pairs, pieces, strict=True))))
    for pair, got in zip(pairs, nsp, strict=True):
        (alone,) = engine.next_sentence([pair])
        assert got["is_next"] == alone["is_next"]
        assert got["score"] == pytest.approx(alone["score"], rel=1e-4, abs=1e-6)
