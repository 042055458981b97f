"""The FastAPI app: `create_app(settings)` wires settings, metrics, the model registry and the routes.

Routes are thin: they validate (pydantic schemas, then the settings' limits), hand inputs to the
model's batching queue through `Service.run`, and shape the answer. Errors map to HTTP here:
bad input 422 (naming the field), full queue or no model 503 with Retry-After, deadline 504.

Run it with `pocketbert serve`, or `uvicorn app.main:create_app --factory`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import schemas
from app.batching import BatcherClosedError, DeadlineExceededError, QueueFullError
from app.metrics import CONTENT_TYPE, ServiceMetrics
from app.registry import EngineLike, InputError
from app.service import ClientDisconnectedError, NotReadyError, Service
from app.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": schemas.ErrorResponse, "description": "Queue full or no model loaded; see Retry-After."},
    504: {"model": schemas.ErrorResponse, "description": "The request's deadline passed before its answer."},
}

# nginx's code for "client closed the request": logged and counted, never seen by anyone.
CLIENT_CLOSED_REQUEST = 499


class MetricsMiddleware:
    """Counts requests and times them per route template (never the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "other"
            )
            labels = {"endpoint": endpoint, "method": scope["method"], "status": str(status)}
            self.metrics.requests.inc(**labels)
            self.metrics.latency.observe(time.perf_counter() - began, **labels)


def _validation_error(loc: Sequence[str | int], message: str, value: Any) -> JSONResponse:
    """A 422 in FastAPI's own format, so settings-based checks read like the schema's."""
    detail = [{"type": "value_error", "loc": ["body", *loc], "msg": message, "input": value}]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _validation_error(exc.loc, exc.message, exc.value)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers=headers)

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers=headers)

    @app.exception_handler(BatcherClosedError)
    async def closed(request: Request, exc: BatcherClosedError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})

    @app.exception_handler(DeadlineExceededError)
    async def deadline(request: Request, exc: DeadlineExceededError) -> JSONResponse:
        return JSONResponse(status_code=504, content={"detail": str(exc)})

    @app.exception_handler(ClientDisconnectedError)
    async def disconnected(request: Request, exc: ClientDisconnectedError) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


def create_app(settings: Settings | None = None, *, engines: Sequence[EngineLike] | None = None) -> FastAPI:
    """The web app. settings default to the environment's; `engines` (tests) replace bundle loading."""
    settings = settings or Settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(settings.log_level.upper())
    service = Service(settings, engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="pocketbert",
        summary="A tiny BERT, served: fill-mask, next-sentence prediction, classification, attention maps.",
        description=(
            "Requests for the same model and task arriving together are run as one batch (dynamic "
            "batching). Bad input is answered 422 naming the field; a full queue 503 with Retry-After; "
            "a request past its deadline 504."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # --- tasks -------------------------------------------------------------------------------------
    @app.post(
        "/fill-mask", response_model=schemas.FillMaskResponse, responses=ERROR_RESPONSES, tags=["tasks"]
    )
    async def fill_mask(body: schemas.FillMaskRequest, request: Request) -> dict[str, Any]:
        """Predict the token behind each [MASK], like Hugging Face's fill-mask pipeline."""
        model = service.model(body.model)
        texts = body.texts
        service.check_texts(texts)
        results = await service.run(request, model.fill_mask(texts, body.top_k, service.timeout))
        return {"model": model.name, "results": [masks[0] if len(masks) == 1 else masks for masks in results]}

    @app.post(
        "/next-sentence",
        response_model=schemas.NextSentenceResponse,
        responses=ERROR_RESPONSES,
        tags=["tasks"],
    )
    async def next_sentence(body: schemas.NextSentenceRequest, request: Request) -> dict[str, Any]:
        """Probability that `second` follows `first`, per pair (BERT's next-sentence-prediction head)."""
        model = service.model(body.model)
        pairs = body.pair_list
        service.check_texts([p.first for p in pairs], "pairs")
        service.check_texts([p.second for p in pairs], "pairs")
        results = await service.run(
            request, model.next_sentence([(p.first, p.second) for p in pairs], service.timeout)
        )
        return {"model": model.name, "results": results}

    @app.post("/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES, tags=["tasks"])
    async def classify(body: schemas.ClassifyRequest, request: Request) -> dict[str, Any]:
        """The classifier's labels per text, sorted by score."""
        model = service.model(body.model)
        texts = body.texts
        service.check_texts(texts)
        results = await service.run(request, model.classify(texts, body.top_k, service.timeout))
        return {"model": model.name, "results": results}

    @app.post(
        "/attention", response_model=schemas.AttentionResponse, responses=ERROR_RESPONSES, tags=["tasks"]
    )
    async def attention(body: schemas.AttentionRequest, request: Request) -> dict[str, Any]:
        """Every layer's and head's attention matrix over the tokens of one text."""
        model = service.model(body.model)
        service.check_texts([body.text], "text")
        result = await service.run(request, model.attention(body.text, service.timeout))
        maps = result["attentions"]
        return {
            "model": model.name,
            "tokens": result["tokens"],
            "num_layers": len(maps),
            "num_heads": len(maps[0]) if maps else 0,
            "attentions": maps,
        }

    # --- service -----------------------------------------------------------------------------------
    @app.get("/healthz", response_model=schemas.HealthResponse, tags=["service"])
    async def healthz() -> dict[str, str]:
        """The process is alive and serving HTTP (models may still be loading)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=schemas.ReadyResponse,
        tags=["service"],
        responses={503: {"model": schemas.ReadyResponse, "description": "Loading, or a bundle failed."}},
    )
    async def readyz() -> Any:
        """Every configured bundle is loaded and has run a warm-up inference."""
        status = "ready" if service.ready else ("failed" if service.loaded and service.errors else "loading")
        body = {"status": status, "models": sorted(service.registry.models), "errors": service.errors}
        return body if service.ready else JSONResponse(status_code=503, content=body)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests and latency per endpoint and status, batch sizes, queue depth."""
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=schemas.ModelsResponse, tags=["service"])
    async def models() -> dict[str, Any]:
        """The loaded models with their configuration and training metrics."""
        registry = service.registry
        return {
            "default": registry.default,
            "models": [m.describe(m.name == registry.default) for _, m in sorted(registry.models.items())],
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The demo page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app
