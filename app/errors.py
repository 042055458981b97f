"""Errors split by fault, rendered as HTTP.

The client's fault is a 4xx that names the field and the reason (422 in FastAPI's validation format,
413/408 for the body itself, 503/504 for load). The server's fault (an engine exception, a bundle found
damaged at run time, a bug) is a 500 carrying an error id; the same id is in the log with the exception
type and traceback. Request texts never reach the log unless `log_request_texts` is set: an exception
message that quotes one is withheld.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from app.batching import BatcherClosedError, DeadlineExceededError, QueueFullError
from app.registry import InputError, TaskUnavailableError
from app.settings import Settings

log = logging.getLogger("app.errors")

# nginx's code for "client closed the request": logged and counted, never seen by anyone.
CLIENT_CLOSED_REQUEST = 499
ECHO_CHARS = 80  # how much of a refused value a 422 quotes back
ECHO_ITEMS = 8
LONE_SURROGATE = (
    "the text holds a lone surrogate (a \\ud800-\\udfff escape not part of a pair), which is not a "
    "Unicode character; send valid Unicode"
)


class InternalError(Exception):
    """A server fault, already logged under `error_id`."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"internal error {error_id}")
        self.error_id = error_id


class ClientDisconnectedError(Exception):
    """The client hung up before its answer was ready; nothing is sent back."""


class ErrorReporter:
    """Logs a server fault under a new error id, without request texts unless the settings ask."""

    def __init__(self, settings: Settings) -> None:
        self.with_texts = settings.log_request_texts

    def report(self, exc: BaseException, context: str, texts: Sequence[str] = ()) -> str:
        error_id = uuid.uuid4().hex[:12]
        message = str(exc)
        if not self.with_texts and _quotes(message, texts):
            message = "(message withheld: it quotes request text; see POCKETBERT_LOG_REQUEST_TEXTS)"
        frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        log.error("error %s in %s: %s: %s\n%s", error_id, context, type(exc).__name__, message, frames)
        if self.with_texts and texts:
            log.error("error %s request texts: %s", error_id, [t[:200] for t in texts[:ECHO_ITEMS]])
        return error_id


def _quotes(message: str, texts: Sequence[str]) -> bool:
    return any(t in message or repr(t)[1:-1] in message for t in texts if t)


def safe_echo(value: Any, depth: int = 0) -> Any:
    """A bounded, UTF-8-safe copy of a refused value to quote back: long texts cut, lone surrogates
    replaced (they cannot be encoded), big lists and objects shortened."""
    if isinstance(value, str):
        cut = value[:ECHO_CHARS] + ("..." if len(value) > ECHO_CHARS else "")
        return cut.encode("utf-8", "replace").decode("utf-8")
    if depth >= 3:
        return "..."
    if isinstance(value, (list, tuple)):
        return [safe_echo(v, depth + 1) for v in value[:ECHO_ITEMS]]
    if isinstance(value, dict):
        return {safe_echo(str(k)): safe_echo(v, depth + 1) for k, v in list(value.items())[:ECHO_ITEMS]}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # the answer's JSON has no NaN or Infinity either
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return safe_echo(str(value), depth)


class JSONAnswer(Response):
    """JSON rendered with ASCII escapes: whatever text an error quotes, the body stays valid UTF-8."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode()


def validation_error(loc: Sequence[str | int], message: str, value: Any = None) -> JSONAnswer:
    """A 422 in FastAPI's own format, so the service's checks read like the schema's."""
    item: dict[str, Any] = {"type": "value_error", "loc": ["body", *loc], "msg": message}
    if value is not None:
        item["input"] = safe_echo(value)
    return JSONAnswer({"detail": [item]}, status_code=422)


def _validation_item(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error as the API reports it: plain message, bounded echo of the refused value."""
    kind = error.get("type", "value_error")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "string_unicode":  # pydantic's words for a lone surrogate ("\\ud800" in the JSON)
        message = LONE_SURROGATE
    item: dict[str, Any] = {
        "type": kind,
        "loc": [part if isinstance(part, (str, int)) else str(part) for part in error.get("loc", ())],
        "msg": message[:500].encode("utf-8", "replace").decode("utf-8"),
    }
    if "input" in error:
        item["input"] = safe_echo(error["input"])
    return item


def add_error_handlers(app: FastAPI) -> None:
    """Map the service's exceptions to HTTP answers."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONAnswer:
        return JSONAnswer({"detail": [_validation_item(error) for error in exc.errors()]}, status_code=422)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONAnswer:
        return validation_error(exc.loc, exc.message, exc.value)

    @app.exception_handler(TaskUnavailableError)
    async def task_unavailable(request: Request, exc: TaskUnavailableError) -> JSONAnswer:
        return JSONAnswer({"detail": str(exc)}, status_code=404)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONAnswer:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONAnswer({"detail": str(exc)}, status_code=503, headers=headers)

    @app.exception_handler(BatcherClosedError)
    async def closed(request: Request, exc: BatcherClosedError) -> JSONAnswer:
        return JSONAnswer({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(DeadlineExceededError)
    async def deadline(request: Request, exc: DeadlineExceededError) -> JSONAnswer:
        return JSONAnswer({"detail": str(exc)}, status_code=504)

    @app.exception_handler(InternalError)
    async def internal(request: Request, exc: InternalError) -> JSONAnswer:
        return JSONAnswer({"detail": "internal error", "error_id": exc.error_id}, status_code=500)

    @app.exception_handler(ClientDisconnectedError)
    async def disconnected(request: Request, exc: ClientDisconnectedError) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
