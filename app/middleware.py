"""ASGI middleware: request metrics, the concurrency limit, the request-body gate and the last-resort
error handler.

The body gate reads a POST body before any route sees it, so limits hold before work is done: a body
over max_body_bytes is refused with 413 as soon as its Content-Length (or, chunked, its running size)
says so; a client that sends too slowly gets 408; a body that is not UTF-8 or not JSON gets 422 with the
reason, whatever Content-Type it declared; a JSON body declared with another content type (curl's
default is a form type) is accepted as JSON. The route then reads the same bytes again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from email.message import Message as MimeMessage
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import ServiceMetrics

log = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]
# Service endpoints answer whatever the load: the concurrency limit never applies to them.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON response (ASCII-escaped, so any text the client sent is safe to echo)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def body_error(message: str, kind: str) -> dict[str, Any]:
    """A 422 body in FastAPI's validation format, located at the body itself."""
    return {"detail": [{"type": kind, "loc": ["body"], "msg": message}]}


class MetricsMiddleware:
    """Counts requests and times them per route template (never the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._paths: frozenset[str] | None = None  # the app's route paths, read on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            seconds = time.perf_counter() - began
            self.metrics.observe_request(self._endpoint(scope), scope["method"], status, seconds)

    def _endpoint(self, scope: Scope) -> str:
        """The route template; for requests refused before routing (413, 503...), their path if it is a
        route's, so the label set stays bounded whatever paths clients send."""
        route = scope.get("route")
        if getattr(route, "path", None):
            return route.path  # type: ignore[union-attr]
        if self._paths is None and "app" in scope:
            self._paths = frozenset(getattr(r, "path", "") for r in getattr(scope["app"], "routes", ()))
        path = scope["path"]
        if path.startswith("/static/"):
            return "/static"
        return path if self._paths and path in self._paths else "other"


class ConcurrencyLimitMiddleware:
    """At most `limit` POST requests in flight; the next gets 503 + Retry-After at once (before its body
    is read), so a flood cannot pile up connections, memory and queued work without bound."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            detail = f"too many requests in flight (at most {self.limit}); retry later"
            await send_json(send, 503, {"detail": detail}, [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _Refused(Exception):
    """The body gate's answer instead of passing the request on."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class RequestBodyMiddleware:
    """Reads, bounds and checks POST bodies (see the module docstring), then replays them to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            if body is None:  # the client hung up while sending
                return
            self._check(scope, body)
        except _Refused as refused:
            await send_json(send, refused.status, refused.body)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(f"Content-Length {int(declared)}")
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except asyncio.TimeoutError:
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
                raise _Refused(408, {"detail": detail}) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(f"{size} bytes and more")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, what: str) -> _Refused:
        detail = f"request body too large: {what}, the limit is {self.max_bytes} bytes"
        return _Refused(413, {"detail": detail})

    def _check(self, scope: Scope, body: bytes) -> None:
        """UTF-8 and JSON, whatever the declared type; a JSON body under another type becomes JSON."""
        if not body:
            return  # the route reports the missing body (422 "Field required")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"
            raise _Refused(422, body_error(message, "utf8_invalid")) from None
        declared = _header(scope, b"content-type")
        try:
            json.loads(text, parse_constant=_refuse_constant)
        except _NonFiniteNumber as exc:
            message = f"the body is not valid JSON: {exc} is not a JSON number (JSON has no NaN or Infinity)"
            raise _Refused(422, body_error(message, "json_invalid")) from None
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            message = f"the body is not valid JSON: {exc.msg} ({where})"
            if declared is not None and not _is_json_type(declared):
                message += f"; send JSON with Content-Type: application/json (it says {declared!r})"
            raise _Refused(422, body_error(message, "json_invalid")) from None
        except RecursionError:
            raise _Refused(422, body_error("the body's JSON is nested too deeply", "json_invalid")) from None
        if declared is None or not _is_json_type(declared):
            _set_header(scope, b"content-type", b"application/json")


class _NonFiniteNumber(ValueError):
    """NaN, Infinity or -Infinity in a body: Python's json module reads them, the JSON standard has none."""


def _refuse_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _set_header(scope: Scope, name: bytes, value: bytes) -> None:
    scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != name] + [(name, value)]


def _is_json_type(content_type: str) -> bool:
    if content_type == "application/json":  # what nearly every client sends: no MIME parsing for it
        return True
    mime = MimeMessage()
    mime["content-type"] = content_type
    subtype = mime.get_content_subtype()
    return mime.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _replay(body: bytes, receive: Receive) -> Callable[[], Any]:
    """A receive() that first hands out the body already read, then the real channel (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ErrorMiddleware:
    """The last resort: an exception no handler took becomes a 500 with an error id that is also in the
    log (never the request's texts), and is not re-raised into the server's own traceback logging."""

    def __init__(self, app: ASGIApp, report: Callable[[BaseException, str], str]) -> None:
        self.app = app
        self.report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error_id = self.report(exc, f"{scope['method']} {scope['path']}")
            if not started:
                await send_json(send, 500, {"detail": "internal error", "error_id": error_id})
