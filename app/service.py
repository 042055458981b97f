"""The service behind the routes: model loading and readiness, input limits, and running a request's
inference so that a client that hangs up stops costing anything.

Loading happens in the background after startup, so /healthz answers at once (the process is alive)
while /readyz stays 503 until every bundle is open and a warm-up inference has run on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import Request

from app.metrics import ServiceMetrics
from app.registry import EngineLike, InputError, ModelRegistry, ServedModel
from app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class NotReadyError(Exception):
    """No model can answer yet (still loading) or at all (no bundle could be loaded): HTTP 503."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientDisconnectedError(Exception):
    """The client hung up before its answer was ready; nothing is sent back."""


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
    """One per app: settings, metrics, the inference thread pool and the model registry."""

    def __init__(self, settings: Settings, engines: Sequence[EngineLike] | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix="inference"
        )
        self.registry = ModelRegistry(settings, self.metrics, self.executor)
        self._preloaded = list(engines or [])
        self.loaded = False  # load attempted and finished (models may still be empty)
        self.ready = False  # loaded, at least one model, warm-up done, no load error
        self.errors: list[str] = []
        self._loader: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="load-bundles")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._preloaded:
                for engine in self._preloaded:
                    self.registry.add(engine)
                self.registry.choose_default()
            else:
                self.errors = await asyncio.to_thread(self.registry.load_bundles)
            self.loaded = True
            if self.registry.models:
                await loop.run_in_executor(self.executor, self.registry.warm_up)
            if self.registry.default is None and self.registry.models:
                self.errors.append(
                    f"default model {self.settings.default_model!r} is not among the loaded models"
                )
            self.ready = bool(self.registry.models) and not self.errors
            if self.ready:
                log.info(
                    "ready: serving %s (default %s)",
                    ", ".join(sorted(self.registry.models)),
                    self.registry.default,
                )
        except Exception as exc:  # a warm-up that crashes means the bundle cannot serve
            log.exception("loading the models failed")
            self.errors.append(f"loading failed: {exc}")
            self.loaded = True

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        await self.registry.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- requests ------------------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        return self.settings.request_timeout_s

    def model(self, name: str | None) -> ServedModel:
        """The model a request names (or the default); 503 while loading, 422 for an unknown name."""
        if not self.loaded:
            raise NotReadyError("the models are still loading", retry_after=1)
        if not self.registry.models:
            raise NotReadyError("no model is loaded: " + "; ".join(self.errors), retry_after=None)
        return self.registry.get(name)

    def check_texts(self, texts: Sequence[str], field: str = "inputs") -> None:
        """The settings' limits on inputs per request and characters per text."""
        if len(texts) > self.settings.max_inputs:
            raise InputError(
                (field,),
                f"at most {self.settings.max_inputs} inputs per request, got {len(texts)}",
                len(texts),
            )
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise InputError(
                    (field, index), f"text longer than {limit} characters ({len(text)})", text[:80]
                )

    async def run(self, request: Request, work: Awaitable[T]) -> T:
        """Await `work` unless the client disconnects first; then cancel it, which frees its queue slot."""
        task = asyncio.ensure_future(work)
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
        try:
            return task.result()
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            # The engine refused an input the checks let through: still the request's fault.
            raise InputError(("inputs",), str(exc)) from exc
