"""The OpenAPI schema as the loaded models make it, and the /docs and /redoc pages served offline.

The schema is built once the models are loaded (create_app loads them before serving), so the `model`
field lists the names actually served for each task and every documented request example names a
loaded model, uses its language, and passes the same checks a real request passes (it is checked with
the model's own tokenizer before it is published).

Swagger UI and ReDoc come from the `fastapi-offline` package (their JavaScript and CSS, MIT and
Apache-2.0 licensed), served under /docs-assets: no CDN, so the pages work behind a firewall.
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.registry import InputError, ModelRegistry, ServedModel
from app.settings import Settings

DOCS_ASSETS = "/docs-assets"
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# Per task and language, example inputs from most to least telling; the first a model accepts is used.
EXAMPLES: dict[str, dict[str, list[Any]]] = {
    "fill-mask": {
        "en": ["The capital of France is [MASK].", "I [MASK] this movie.", "a [MASK].", "[MASK]"],
        "ko": ["대한민국의 수도는 [MASK]이다.", "이 영화 정말 [MASK].", "[MASK]"],
    },
    "classify": {
        "en": ["A wonderful, moving film.", "Dull.", "ok"],
        "ko": ["정말 재미있는 영화였다.", "지루했다.", "좋다"],
    },
    "next-sentence": {
        "en": [("I went to the store.", "I bought some milk."), ("Hi.", "Bye."), ("a", "b")],
        "ko": [("나는 가게에 갔다.", "우유를 샀다."), ("안녕.", "잘 가."), ("가", "나")],
    },
    "attention": {
        "en": ["The cat sat on the mat.", "a cat", "ok"],
        "ko": ["고양이가 매트 위에 앉았다.", "고양이", "좋다"],
    },
}
REQUEST_SCHEMAS = {
    "fill-mask": "FillMaskRequest",
    "next-sentence": "NextSentenceRequest",
    "classify": "ClassifyRequest",
    "attention": "AttentionRequest",
}


def add_docs(app: FastAPI) -> None:
    """/docs and /redoc with their assets served by this app."""
    import fastapi_offline  # the Swagger UI / ReDoc files ship in this package

    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    # ReDoc draws its maker's logo from a CDN: point it at a local image, so nothing leaves the app.
    redoc_js = (
        (assets / "redoc.standalone.js")
        .read_bytes()
        .replace(REDOC_LOGO, f"{DOCS_ASSETS}/favicon.png".encode())
    )

    @app.get(f"{DOCS_ASSETS}/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_js, media_type="text/javascript")

    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def install_schema(app: FastAPI, registry: ModelRegistry, settings: Settings) -> None:
    """Replace app.openapi with one that documents the loaded models (built on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            document_models(schema, registry, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_models(schema: dict[str, Any], registry: ModelRegistry, settings: Settings) -> None:
    """Write the loaded models into the request schemas: `model`'s allowed names, and examples (of the
    whole body and of each field) that the server accepts."""
    components = schema.get("components", {}).get("schemas", {})
    for task, component in REQUEST_SCHEMAS.items():
        spec = components.get(component)
        if spec is None:
            continue
        offering = [m for _, m in sorted(registry.models.items()) if task in m.tasks]
        names = [m.name for m in offering]
        model_field = spec["properties"]["model"]
        model_field["anyOf"] = (
            [{"type": "string", "enum": names}, {"type": "null"}] if names else [{"type": "null"}]
        )
        examples = [example for m in offering if (example := request_example(task, m, settings))]
        spec["examples"] = examples
        for name, prop in spec["properties"].items():
            values = [example[name] for example in examples if name in example]
            prop["examples"] = _unique([None, *values] if name == "model" else values) or prop.get("examples")
        if task == "next-sentence" and "SentencePair" in components:
            pairs = [pair for example in examples for pair in example["pairs"]]
            for side, prop in components["SentencePair"]["properties"].items():
                prop["examples"] = _unique([pair[side] for pair in pairs]) or prop.get("examples")
    answered = sorted(registry.models) or ["none"]
    for spec in components.values():
        prop = spec.get("properties", {}).get("model")
        if prop and prop.get("description") == "Model that answered.":
            prop["examples"] = answered[:1]


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def request_example(task: str, model: ServedModel, settings: Settings) -> dict[str, Any] | None:
    """A request for `task` naming `model`, in its language, that passes every check; None if none."""
    candidates = EXAMPLES[task].get(model.language, EXAMPLES[task]["en"])
    for value in candidates:
        body = _body(task, value, model.name)
        if _accepted(task, body, model, settings):
            return body
    return None


def _body(task: str, value: Any, name: str) -> dict[str, Any]:
    if task == "next-sentence":
        return {"pairs": [{"first": value[0], "second": value[1]}], "model": name}
    if task == "attention":
        return {"text": value, "model": name}
    if task == "fill-mask":
        return {"inputs": value, "top_k": 5, "model": name}
    return {"inputs": value, "model": name}


def _accepted(task: str, body: dict[str, Any], model: ServedModel, settings: Settings) -> bool:
    """Whether the example passes the settings' limits and the model's own checks."""
    if task == "next-sentence":
        texts = [t for pair in body["pairs"] for t in (pair["first"], pair["second"])]
    else:
        texts = [body.get("text") or body["inputs"]]
    limit = settings.attention_max_chars if task == "attention" else settings.max_text_chars
    if any(len(t) > limit for t in texts):
        return False
    try:
        if task == "fill-mask":
            body["top_k"] = min(body["top_k"], settings.max_top_k)
            model.check_masks(texts, body["top_k"], False, settings)
        elif task == "next-sentence":
            model.check_pairs([(texts[0], texts[1])], False)
        else:
            model.check_texts(texts, False)
    except InputError:
        return False
    return True
