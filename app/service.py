"""The service behind the routes: model loading, the worker threads, and running a request's work so
that a client that hangs up stops costing anything and a server fault is a 500, not a client error.

Loading happens before the server accepts connections (`Service.load`, called by create_app): every
bundle is verified (checksums, consistency, its reference self-test) and warmed up, and any failure
stops start-up with one line naming the bundle, the file and the reason. A service that runs therefore
serves every configured model, and /readyz says so.

Two thread pools keep the event loop free: `executor` runs inference batches (one thread by default:
onnxruntime already uses the cores), `cpu` runs the rest of a request's CPU work (tokenizing to check
token counts and [MASK] tokens, rendering large answers as JSON), so /healthz and other requests are
answered while a request is being checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from app.batching import BatcherClosedError, DeadlineExceededError, QueueFullError
from app.errors import ClientDisconnectedError, ErrorReporter, InternalError
from app.metrics import ServiceMetrics, mark_worker_stopped
from app.registry import EngineLike, InputError, ModelRegistry, TaskUnavailableError
from app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
CPU_THREADS = 2
# Work this small runs on the event loop itself: handing it to a worker thread and back (submit, wake-up,
# the result's callback) cost more than tokenizing or rendering it in py-spy profiles of the server.
INLINE_CHARS = 1_000  # characters of all a request's texts
INLINE_ANSWERS = 64  # answer items (predictions, labels, pairs) of a request
# Exceptions that are answers, not faults: they pass through to their handlers.
EXPECTED = (InputError, TaskUnavailableError, QueueFullError, DeadlineExceededError, BatcherClosedError)


class StartupError(Exception):
    """The service cannot start; the message is one line naming what is wrong."""


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection.

    The body has been read by then, so the next ASGI message is http.disconnect: sent by the server
    when the peer hangs up (or, harmlessly, after the response went out).
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Service:
    """One per app: settings, metrics, thread pools and the model registry."""

    def __init__(self, settings: Settings, engines: Sequence[EngineLike] | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.errors = ErrorReporter(settings)
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix="inference"
        )
        self.cpu = ThreadPoolExecutor(max_workers=CPU_THREADS, thread_name_prefix="cpu")
        self.registry = ModelRegistry(settings, self.metrics, self.executor)
        self._preloaded = list(engines or [])
        self.ready = False

    # --- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Open, verify and warm up every model (blocking); StartupError on any failure."""
        if self._preloaded:
            for engine in self._preloaded:
                self.registry.add(engine)
        else:
            failures = self.registry.load_bundles()
            if failures:
                raise StartupError("; ".join(failures))
        wanted = self.settings.default_model
        if self.registry.choose_default() is None and wanted:
            loaded = ", ".join(sorted(self.registry.models))
            raise StartupError(
                f"default model {wanted!r} (POCKETBERT_DEFAULT_MODEL) is not loaded; loaded: {loaded}"
            )
        try:
            self.registry.warm_up()
        except Exception as exc:
            raise StartupError(f"warm-up inference failed: {type(exc).__name__}: {exc}") from exc
        self.ready = True
        log.info(
            "ready: serving %s (routing: %s)",
            ", ".join(
                f"{m.name} [{m.language}: {', '.join(m.tasks)}]" for m in self.registry.models.values()
            ),
            self.registry.routing,
        )

    async def stop(self) -> None:
        self.ready = False
        mark_worker_stopped()
        await self.registry.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.cpu.shutdown(wait=False, cancel_futures=True)

    # --- requests ------------------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        return self.settings.request_timeout_s

    @staticmethod
    def is_small(texts: Sequence[str], answers: int) -> bool:
        """Whether a request's checks and answer are cheap enough for the event loop (see INLINE_CHARS)."""
        return answers <= INLINE_ANSWERS and sum(map(len, texts)) <= INLINE_CHARS

    async def in_thread(self, function: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run CPU work (tokenizing, rendering) in the cpu pool, off the event loop; inline: right here."""
        if inline:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.cpu, function, *args)

    async def render(self, payload: dict[str, Any], inline: bool = False) -> Response:
        """The answer as JSON bytes, rendered off the event loop unless inline (attention maps are
        megabytes). The standard library's encoder: rendering is under 0.1% of a fill-mask request's time
        in py-spy profiles, so a faster one (orjson) would not show, and it writes NaN as null where this
        one refuses it (a 500, not a silently wrong answer)."""
        body = await self.in_thread(_dumps, payload, inline=inline)
        return Response(body, media_type="application/json")

    async def guard(self, work: Awaitable[T], context: str, texts: Sequence[str] = ()) -> T:
        """Await work; an exception that is not an expected answer is a server fault: logged with an
        error id, re-raised as InternalError (a 500), never as a client error."""
        try:
            return await work
        except EXPECTED:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise InternalError(self.errors.report(exc, context, texts)) from exc

    async def run(self, request: Request, work: Awaitable[T], context: str, texts: Sequence[str] = ()) -> T:
        """guard(work) unless the client disconnects first; then cancel it, which frees its queue slot."""
        task = asyncio.ensure_future(self.guard(work, context, texts))
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler itself is cancelled
            watcher.cancel()
            hung_up = not task.done()
            if hung_up:
                task.cancel()
        if hung_up:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise ClientDisconnectedError("client disconnected")
        return task.result()


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
