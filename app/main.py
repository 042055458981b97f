"""The FastAPI app: `create_app(settings)` loads the models, then wires settings, middleware, the routes
and the schema documenting them.

Routes are thin: pydantic validates the body (with the settings' limits), the model is chosen and the
inputs checked against its tokenizer in a worker thread, the work goes to the model's batching queue
through `Service.run`, and the answer is rendered off the event loop. Errors map to HTTP in app.errors.

Run it with `pocketbert serve`, or `uvicorn app.main:factory --factory` (the factory turns a start-up
failure, e.g. a damaged bundle, into one line and exit status 2).
"""

import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from app import schemas
from app.errors import add_error_handlers
from app.metrics import CONTENT_TYPE
from app.middleware import (
    ConcurrencyLimitMiddleware,
    ErrorMiddleware,
    MetricsMiddleware,
    RequestBodyMiddleware,
)
from app.openapi import add_docs, install_schema
from app.registry import EngineLike, ServedModel, text_language
from app.service import Service, StartupError
from app.settings import Settings
from model.pipeline import shape_fill_mask

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)

_ERROR = {"model": schemas.ErrorResponse}
TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {**_ERROR, "description": "No loaded model offers this task."},
    408: {**_ERROR, "description": "The body did not arrive within POCKETBERT_BODY_TIMEOUT_S."},
    413: {**_ERROR, "description": "The body is larger than POCKETBERT_MAX_BODY_BYTES."},
    500: {"model": schemas.ServerErrorResponse, "description": "A server fault; its error id is in the log."},
    503: {**_ERROR, "description": "Queue full or too many requests in flight; see Retry-After."},
    504: {**_ERROR, "description": "The request's deadline passed before its answer."},
}


def create_app(settings: Settings | None = None, *, engines: Sequence[EngineLike] | None = None) -> FastAPI:
    """The web app, its models loaded and warmed up. settings default to the environment's; `engines`
    (tests) replace bundle loading. Raises StartupError (one line) when a model cannot be served."""
    settings = settings or Settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(settings.log_level.upper())
    service = Service(settings, engines)
    service.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.stop()

    app = FastAPI(
        title="pocketbert",
        summary="A tiny BERT, served: fill-mask, next-sentence prediction, classification, attention maps.",
        description=_description(settings),
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    add_error_handlers(app)
    _add_middleware(app, service)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_docs(app)
    _add_task_routes(app, service)
    _add_service_routes(app, service)
    install_schema(app, service.registry, settings)
    return app


def factory() -> FastAPI:
    """uvicorn's entry point (`uvicorn app.main:factory --factory`): settings from the environment; a
    start-up failure is one line on stderr and exit status 2, not a traceback."""
    try:
        app = create_app()
    except StartupError as exc:
        print(f"pocketbert: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Take what start-up built (the models, the framework, the schema) out of the garbage collector's
    rounds. A full collection re-scans every tracked object: 30-50 ms with both shipped models loaded, a
    pause that set the p99 latency under load (`bench/serve.py`, 1 worker, c=32: p99 49-59 ms without,
    23 ms with). Requests' objects are collected as before."""
    gc.collect()  # start-up's own garbage first: a frozen object is never collected
    gc.freeze()


def _description(settings: Settings) -> str:
    return (
        "Requests for the same model and task arriving together run as one batch (dynamic batching). "
        "A request that names no model goes to the configured default model, else by language: text with "
        "Hangul to the Korean model, other text to the English one; a request mixing languages that "
        "different models answer is refused with 422.\n\n"
        f"Limits: a body of at most {settings.max_body_bytes} bytes (413), sent within "
        f"{settings.body_timeout_s:g} s (408); at most {settings.max_inputs} texts or pairs per request of "
        f"at most {settings.max_text_chars} characters each ({settings.attention_max_chars} for /attention); "
        f"fill-mask: at most {settings.max_masks_per_text} [MASK] per text and "
        f"{settings.max_masks_per_request} per request, top_k at most {settings.max_top_k}, and [MASK] x "
        f"top_k at most {settings.max_predictions} predictions, so an answer holds at most "
        f"{settings.max_predictions} predictions of about 100 bytes plus, with include_sequence, the "
        "filled-in text (at most the model's maximum length in tokens); "
        f"{settings.max_concurrent_requests} requests in flight and {settings.max_queue} queued sequences "
        f"per model and task ({settings.attention_max_queue} for /attention), beyond which 503 with "
        "Retry-After. A text longer than the model's maximum length is refused with 422 (naming its token "
        'count) unless the request sends "truncate": true.\n\n'
        "Errors: the client's are 4xx naming the field and the reason (422: validation; a body that is not "
        "UTF-8 or not JSON is 422 too); a server fault is 500 with an error id that is also in the log."
    )


def _add_middleware(app: FastAPI, service: Service) -> None:
    """Outermost first: metrics, CORS, the last-resort error handler, the concurrency limit, the body
    gate (Starlette wraps the last added around the rest, hence the reverse order here)."""
    settings = service.settings
    app.add_middleware(
        RequestBodyMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrent_requests)
    app.add_middleware(ErrorMiddleware, report=service.errors.report)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)


def _add_task_routes(app: FastAPI, service: Service) -> None:
    models = schemas.request_models(service.settings)
    registry, settings = service.registry, service.settings
    FillMaskRequest = models.fill_mask  # classes built for this app's settings
    NextSentenceRequest = models.next_sentence
    ClassifyRequest = models.classify
    AttentionRequest = models.attention

    async def prepare(
        task: str,
        name: str | None,
        texts: list[str],
        field: str,
        check: Callable[[ServedModel], Any],
        inline: bool = False,
    ) -> tuple[ServedModel, Any]:
        """Route the request and check its inputs against the model, in a worker thread unless inline."""

        def work() -> tuple[ServedModel, Any]:
            languages = [text_language(t) for t in texts]
            if field == "pairs":  # a pair is Korean when either side is
                sides = zip(languages[::2], languages[1::2], strict=True)
                languages = ["ko" if "ko" in (a, b) else a for a, b in sides]
            model = registry.route(task, name, languages, field)
            return model, check(model)

        return await service.guard(service.in_thread(work, inline=inline), f"{task} check", texts)

    @app.post("/fill-mask", response_model=schemas.FillMaskResponse, responses=TASK_RESPONSES, tags=["tasks"])
    async def fill_mask(body: FillMaskRequest, request: Request) -> Response:
        """Predict the token behind each [MASK], like Hugging Face's fill-mask pipeline."""
        texts = body.texts
        small = service.is_small(texts, len(texts) * body.top_k)
        model, checked = await prepare(
            "fill-mask",
            body.model,
            texts,
            "inputs",
            lambda m: m.check_masks(texts, body.top_k, body.truncate, settings),
            small,
        )
        work = model.fill_mask(texts, checked, body.top_k, body.include_sequence, service.timeout)
        results = await service.run(request, work, "fill-mask", texts)
        payload = {"model": model.name, "results": shape_fill_mask(results), "truncated": checked.truncated}
        return await service.render(payload, inline=small)

    @app.post(
        "/next-sentence",
        response_model=schemas.NextSentenceResponse,
        responses=TASK_RESPONSES,
        tags=["tasks"],
    )
    async def next_sentence(body: NextSentenceRequest, request: Request) -> Response:
        """Probability that `second` follows `first`, per pair (BERT's next-sentence-prediction head)."""
        pairs = body.pair_list
        texts = [text for pair in pairs for text in pair]
        small = service.is_small(texts, len(pairs))
        model, checked = await prepare(
            "next-sentence", body.model, texts, "pairs", lambda m: m.check_pairs(pairs, body.truncate), small
        )
        work = model.next_sentence(pairs, checked, service.timeout)
        results = await service.run(request, work, "next-sentence", texts)
        payload = {"model": model.name, "results": results, "truncated": checked.truncated}
        return await service.render(payload, inline=small)

    @app.post("/classify", response_model=schemas.ClassifyResponse, responses=TASK_RESPONSES, tags=["tasks"])
    async def classify(body: ClassifyRequest, request: Request) -> Response:
        """The classifier's labels per text, sorted by score."""
        texts = body.texts
        model, checked = await prepare(
            "classify",
            body.model,
            texts,
            "inputs",
            lambda m: m.check_texts(texts, body.truncate),
            service.is_small(texts, len(texts)),
        )
        work = model.classify(texts, checked, body.top_k, service.timeout)
        results = await service.run(request, work, "classify", texts)
        payload = {"model": model.name, "results": results, "truncated": checked.truncated}
        return await service.render(payload, inline=service.is_small(texts, sum(map(len, results))))

    @app.post(
        "/attention", response_model=schemas.AttentionResponse, responses=TASK_RESPONSES, tags=["tasks"]
    )
    async def attention(body: AttentionRequest, request: Request) -> Response:
        """Every layer's and head's attention matrix over the tokens of one text."""
        texts = [body.text]
        model, checked = await prepare(
            "attention",
            body.model,
            texts,
            "text",
            lambda m: m.check_texts(texts, body.truncate, "text", indexed=False),
        )
        (truncated,) = checked.truncated
        result = await service.run(request, model.attention(body.text, service.timeout), "attention", texts)
        maps = result["attentions"]
        payload = {
            "model": model.name,
            "tokens": result["tokens"],
            "num_layers": len(maps),
            "num_heads": len(maps[0]) if maps else 0,
            "attentions": maps,
            "truncated": truncated,
        }
        return await service.render(payload)


def _add_service_routes(app: FastAPI, service: Service) -> None:
    registry = service.registry

    @app.get("/healthz", response_model=schemas.HealthResponse, tags=["service"])
    async def healthz() -> dict[str, str]:
        """The process is alive and serving HTTP."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=schemas.ReadyResponse,
        tags=["service"],
        responses={503: {"model": schemas.ReadyResponse, "description": "Shutting down."}},
    )
    async def readyz() -> Any:
        """Every configured bundle is loaded, verified and warmed up (start-up fails otherwise)."""
        body = {
            "status": "ready" if service.ready else "stopping",
            "models": sorted(registry.models),
            "errors": [],
        }
        return body if service.ready else JSONResponse(status_code=503, content=body)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    async def metrics() -> Response:
        """Prometheus text format: requests and latency per endpoint and status, batch sizes, queue depth;
        with several workers, the sums over all of them."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=schemas.ModelsResponse, tags=["service"])
    async def models() -> dict[str, Any]:
        """The loaded models: language, tasks, labels, headline figures, configuration and metrics."""
        return {
            "default": registry.default,
            "routing": registry.routing,
            "models": [m.describe(m.name == registry.default) for _, m in sorted(registry.models.items())],
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The demo page."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
