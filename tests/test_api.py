"""The web API through FastAPI's TestClient, on the tiny bundle built by the project's own export.

Answers are compared with the engine called directly; bad input must be a 422 naming the field and the
reason. Overload (503 + Retry-After) and deadlines (504) use a blocking fake engine, the only way to
hold a batch open deterministically.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

LABELS = ["negative", "positive"]


def wait_ready(client: TestClient, expect: int = 200) -> dict:
    """Poll /readyz (bundles load in the background) until it answers `expect`; bounded."""
    for _ in range(600):
        response = client.get("/readyz")
        if response.status_code == expect and response.json()["status"] != "loading":
            return response.json()
        time.sleep(0.05)
    raise AssertionError(f"/readyz never answered {expect}: {response.status_code} {response.text}")


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path):
    from model.engine import Engine

    return Engine.load(tiny_bundle, intra_op_threads=1)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path):
    settings = Settings(bundles=[tiny_bundle], max_inputs=4, max_text_chars=300, ort_threads=1)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def assert_422(response, field: str, words: str) -> None:
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(
        field in [str(part) for part in d["loc"]] and words.lower() in d["msg"].lower() for d in details
    ), details


# --- service endpoints --------------------------------------------------------------------------------------
def test_health_ready_and_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["tiny"], "errors": []}
    models = client.get("/v1/models").json()
    assert models["default"] == "tiny"
    (tiny,) = models["models"]
    assert tiny["labels"] == LABELS and tiny["default"] is True and tiny["max_length"] == 64
    assert tiny["config"]["hidden_size"] == 32 and "pretraining" in tiny["metrics"]
    assert set(tiny["tasks"]) >= {"fill-mask", "next-sentence", "classify", "attention"}


def test_demo_page_and_docs_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fill-mask" in page.text.lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200


def test_every_request_field_is_documented_with_an_example(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in (
        "FillMaskRequest",
        "NextSentenceRequest",
        "ClassifyRequest",
        "AttentionRequest",
        "SentencePair",
        "FillMaskPrediction",
        "LabelScore",
        "NextSentenceResult",
    ):
        for field, spec in schemas[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
            assert spec.get("examples"), f"{name}.{field} has no example"


# --- tasks --------------------------------------------------------------------------------------------------
def test_fill_mask_matches_the_engine(client: TestClient, engine) -> None:
    response = client.post("/fill-mask", json={"inputs": "the cat [MASK] the park.", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny"
    (predictions,) = body["results"]  # one input with one mask: a flat list, as Hugging Face's pipeline
    assert [set(p) for p in predictions] == [{"score", "token", "token_str", "sequence"}] * 3
    (expected,) = engine.fill_mask(["the cat [MASK] the park."], top_k=3)
    assert [p["token"] for p in predictions] == [p["token"] for p in expected[0]]
    assert [p["sequence"] for p in predictions] == [p["sequence"] for p in expected[0]]
    np.testing.assert_allclose(
        [p["score"] for p in predictions], [p["score"] for p in expected[0]], rtol=1e-4
    )
    assert all(a["score"] >= b["score"] for a, b in zip(predictions, predictions[1:], strict=False))


def test_fill_mask_several_inputs_and_masks(client: TestClient) -> None:
    texts = ["a dog [MASK] a book.", "[MASK] friend [MASK] the river."]
    results = client.post("/fill-mask", json={"inputs": texts}).json()["results"]
    assert len(results) == 2
    assert len(results[0]) == 5 and isinstance(results[0][0], dict)  # default top_k
    assert len(results[1]) == 2 and all(len(per_mask) == 5 for per_mask in results[1])  # one list per mask


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"inputs": "no mask here"}, "inputs", "no [MASK]"),
        ({"inputs": ["a [MASK].", "no mask"]}, "1", "no [MASK]"),
        ({"inputs": ""}, "inputs", "empty"),
        ({"inputs": ["a [MASK].", "   "]}, "inputs", "inputs[1] is empty"),
        ({"inputs": []}, "inputs", "at least one"),
        ({"inputs": ["a [MASK]."] * 5}, "inputs", "at most 4 inputs"),
        ({"inputs": "a [MASK] " + "word " * 100}, "inputs", "longer than 300 characters"),
        ({"inputs": "word " * 55 + "[MASK]"}, "inputs", "beyond the model's maximum length"),
        ({"inputs": "a [MASK].", "top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"inputs": "a [MASK].", "top_k": 51}, "top_k", "less than or equal to 50"),
        ({"inputs": "a [MASK].", "model": "nope"}, "model", "unknown model 'nope'"),
        ({"inputs": 5}, "inputs", "valid"),
        ({"inputs": "a [MASK].", "topk": 3}, "topk", "extra inputs"),
        ({}, "inputs", "required"),
    ],
)
def test_fill_mask_bad_input_is_422_naming_field_and_reason(
    client: TestClient, body: dict, field: str, words: str
) -> None:
    assert_422(client.post("/fill-mask", json=body), field, words)


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/fill-mask", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_next_sentence(client: TestClient, engine) -> None:
    pair = {"first": "the cat sees the park.", "second": "a dog likes a book."}
    single = client.post("/next-sentence", json={"pairs": pair}).json()["results"]
    many = client.post(
        "/next-sentence", json={"pairs": [pair, {"first": "정말", "second": "재미있다."}]}
    ).json()["results"]
    (expected,) = engine.next_sentence([(pair["first"], pair["second"])])
    assert len(single) == 1 and len(many) == 2
    for result in (single[0], many[0]):
        assert result["score"] == pytest.approx(expected["score"], rel=1e-4)
        assert result["is_next"] == (result["score"] >= 0.5)
    assert all(0.0 <= r["score"] <= 1.0 for r in many)
    assert_422(client.post("/next-sentence", json={"pairs": {"first": "a", "second": ""}}), "second", "empty")
    assert_422(client.post("/next-sentence", json={"pairs": []}), "pairs", "at least one")
    assert_422(client.post("/next-sentence", json={"pairs": [pair] * 5}), "pairs", "at most 4")


def test_classify(client: TestClient, engine) -> None:
    results = client.post("/classify", json={"inputs": ["a good movie", "a dull movie"]}).json()["results"]
    assert len(results) == 2
    for labels in results:
        assert sorted(x["label"] for x in labels) == LABELS
        assert labels[0]["score"] >= labels[1]["score"]
        assert sum(x["score"] for x in labels) == pytest.approx(1.0, abs=1e-4)
    expected = engine.classify(["a good movie"])[0]
    assert results[0][0]["label"] == expected[0]["label"]
    (top,) = client.post("/classify", json={"inputs": "a good movie", "top_k": 1}).json()["results"]
    assert len(top) == 1 and top[0]["label"] == expected[0]["label"]
    assert_422(client.post("/classify", json={"inputs": "x", "top_k": 0}), "top_k", "greater than")


def test_attention_maps(client: TestClient) -> None:
    body = client.post("/attention", json={"text": "the cat sees the park."}).json()
    tokens, maps = body["tokens"], np.array(body["attentions"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert (
        maps.shape
        == (body["num_layers"], body["num_heads"], len(tokens), len(tokens))
        == (1, 2, len(tokens), len(tokens))
    )
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-4)
    assert_422(client.post("/attention", json={"text": " "}), "text", "empty")


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/classify", json={"inputs": "fine"})
    text = client.get("/metrics").text
    assert 'pocketbert_http_requests_total{endpoint="/classify",method="POST",status="200"}' in text
    assert 'pocketbert_http_requests_total{endpoint="/fill-mask",method="POST",status="422"}' in text
    assert "pocketbert_http_request_duration_seconds_bucket{" in text
    assert 'pocketbert_batch_size_count{model="tiny",task="classify"}' in text
    assert 'pocketbert_queue_depth{model="tiny",task="fill-mask"} 0' in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# --- several bundles, no bundle -----------------------------------------------------------------------------
def test_several_bundles_model_picks_one(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bundles"
    for name in ("en", "ko"):
        shutil.copytree(tiny_bundle, folder / name)
        manifest = folder / name / "bundle.json"
        info = json.loads(manifest.read_text())
        info["name"] = name
        manifest.write_text(json.dumps(info))
    settings = Settings(bundles=[folder], default_model="ko", ort_threads=1)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["models"] == ["en", "ko"]
        assert client.get("/v1/models").json()["default"] == "ko"
        assert client.post("/classify", json={"inputs": "x"}).json()["model"] == "ko"
        assert client.post("/classify", json={"inputs": "x", "model": "en"}).json()["model"] == "en"
        assert_422(
            client.post("/classify", json={"inputs": "x", "model": "fr"}), "model", "loaded models: en, ko"
        )


def test_without_a_bundle_alive_but_not_ready(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(bundles=[tmp_path]))) as client:
        body = wait_ready(client, expect=503)
        assert body["status"] == "failed" and "no bundle" in body["errors"][0]
        assert client.get("/healthz").status_code == 200
        response = client.post("/classify", json={"inputs": "x"})
        assert response.status_code == 503 and "no model is loaded" in response.json()["detail"]


def test_damaged_bundle_is_reported_not_served(tiny_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "classifier.onnx").write_bytes(b"not onnx")
    with TestClient(create_app(Settings(bundles=[broken]))) as client:
        body = wait_ready(client, expect=503)
        assert "classifier.onnx" in body["errors"][0]


# --- overload and deadlines (blocking fake engine) ----------------------------------------------------------
class BlockingEngine:
    """Honours the engine contract; classify blocks until released, so a batch can be held open."""

    name = "fake"
    info: dict = {}
    max_length = 64
    label_names = LABELS

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.tokenizer = None

    def classify(self, texts: list[str], top_k: int | None = None) -> list[list[dict]]:
        if texts != ["warm up"] and texts != ["hello world"]:
            self.started.set()
            assert self.release.wait(30)
        return [[{"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.25}] for _ in texts]

    def fill_mask(self, texts: list[str], top_k: int = 5) -> list:
        return [[[]] for _ in texts]

    def next_sentence(self, pairs: list) -> list[dict]:
        return [{"is_next": True, "score": 1.0} for _ in pairs]

    def attention(self, text: str) -> dict:
        return {"tokens": [], "attentions": []}


def _post_in_thread(client: TestClient, results: list, body: dict) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(client.post("/classify", json=body)))
    thread.start()
    return thread


def _queue_depth(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('pocketbert_queue_depth{model="fake",task="classify"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_full_queue_answers_503_with_retry_after() -> None:
    engine = BlockingEngine()
    settings = Settings(max_queue=2, max_wait_ms=0, request_timeout_s=30)
    with TestClient(create_app(settings, engines=[engine])) as client:
        wait_ready(client)
        results: list = []
        threads = [_post_in_thread(client, results, {"inputs": "held"})]
        assert engine.started.wait(10)  # batch 1 is running and blocked
        threads.append(_post_in_thread(client, results, {"inputs": ["a", "b"]}))  # fills the queue (2 of 2)
        for _ in range(400):
            if _queue_depth(client) == 2:
                break
            time.sleep(0.025)
        refused = client.post("/classify", json={"inputs": "one too many"})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1 and "queue full" in refused.json()["detail"]
        engine.release.set()
        for thread in threads:
            thread.join(30)
        assert sorted(r.status_code for r in results) == [200, 200]
        assert (
            'pocketbert_queue_rejected_total{model="fake",task="classify"} 1' in client.get("/metrics").text
        )


def test_request_past_its_deadline_is_504() -> None:
    engine = BlockingEngine()
    with TestClient(create_app(Settings(request_timeout_s=0.2), engines=[engine])) as client:
        wait_ready(client)
        response = client.post("/classify", json={"inputs": "held"})
        engine.release.set()
        assert response.status_code == 504 and "deadline" in response.json()["detail"]


# --- settings and the CLI ---------------------------------------------------------------------------------
def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("POCKETBERT_BUNDLES", "bundles/en, bundles/ko")
    monkeypatch.setenv("POCKETBERT_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("POCKETBERT_CORS_ORIGINS", "http://localhost:3000,https://example.org")
    monkeypatch.setenv("POCKETBERT_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.bundles == [Path("bundles/en"), Path("bundles/ko")]
    assert settings.max_batch_size == 8 and settings.log_level == "debug"
    assert settings.cors_origins == ["http://localhost:3000", "https://example.org"]
    monkeypatch.setenv("POCKETBERT_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()


def test_defaults_need_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("POCKETBERT_"):
            monkeypatch.delenv(key)
    settings = Settings()
    assert settings.bundles == [Path("bundles")] and settings.default_model is None
    assert settings.max_batch_size >= 8 and settings.max_queue >= settings.max_batch_size


def test_cors_origins_are_allowed(tiny_bundle: Path) -> None:
    settings = Settings(bundles=[tiny_bundle], cors_origins=["https://example.org"])
    with TestClient(create_app(settings)) as client:
        response = client.options(
            "/classify", headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
        )
        assert response.headers.get("access-control-allow-origin") == "https://example.org"
        other = client.options(
            "/classify", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_serve_command_starts_uvicorn_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from training.cli import main

    calls: list[tuple] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    # run() writes the options to the environment; setenv first so monkeypatch restores it afterwards
    for key, value in (("BUNDLES", "unset"), ("MAX_BATCH_SIZE", "32"), ("LOG_LEVEL", "info")):
        monkeypatch.setenv(f"POCKETBERT_{key}", value)
    assert main(["serve", "--bundles", "b/en", "b/ko", "--port", "8123", "--max-batch-size", "4"]) == 0
    ((args, kwargs),) = calls
    assert args == ("app.main:create_app",) and kwargs["factory"] is True
    assert kwargs["port"] == 8123 and kwargs["host"] == "127.0.0.1" and kwargs["workers"] == 1
    settings = Settings()  # what each uvicorn worker's create_app will read
    assert settings.bundles == [Path("b/en"), Path("b/ko")] and settings.max_batch_size == 4
