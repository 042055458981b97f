"""The web API through FastAPI's TestClient, on the tiny bundle built by the project's own export.

Answers are compared with the engine called directly; bad input must be a 4xx naming the field and the
reason. Overload (503 + Retry-After), deadlines (504) and server faults (500) use fake engines, the only
way to hold a batch open or fail one deterministically. Every test makes its own requests: none relies
on what another test sent (the module's client is shared, its answers are not).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import StartupError
from app.settings import Settings

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path):
    from model.engine import Engine

    return Engine.load(tiny_bundle, intra_op_threads=1)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path):
    settings = Settings(
        bundles=[tiny_bundle],
        max_inputs=4,
        max_text_chars=300,
        ort_threads=1,
        max_top_k=20,
        max_masks_per_text=3,
        max_masks_per_request=5,
        max_predictions=40,
        attention_max_chars=200,
        max_body_bytes=4096,
    )
    with TestClient(create_app(settings)) as c:
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
    assert models["default"] == "tiny" and models["routing"] == "language"
    (tiny,) = models["models"]
    assert tiny["labels"] == LABELS and tiny["default"] is True and tiny["max_length"] == 64
    assert tiny["config"]["hidden_size"] == 32 and "pretraining" in tiny["metrics"]
    assert tiny["tasks"] == ["fill-mask", "next-sentence", "classify", "attention"]
    assert tiny["headline"] == {"mlm_accuracy": 0.1, "nsp_accuracy": 0.5, "accuracy_mean": 50.0}
    assert tiny["language"] in ("en", "ko")  # the tiny tokenizer is bilingual: guessed from its vocabulary


def test_demo_page_and_offline_docs_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fill-mask" in page.text.lower() and 'data-language="ko"' in page.text
    assert client.get("/static/app.js").status_code == 200
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(path).text
        assert f"/docs-assets/{asset}" in html and "cdn." not in html and "fonts.googleapis" not in html
        served = client.get(f"/docs-assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 100_000


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


def test_limits_are_in_the_schema(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    fill = schemas["FillMaskRequest"]["properties"]
    text, texts = fill["inputs"]["anyOf"]
    assert text["maxLength"] == 300 and text["pattern"] == r"\[MASK\]"
    assert texts["maxItems"] == 4 and texts["items"]["maxLength"] == 300
    assert fill["top_k"]["maximum"] == 20 and fill["model"]["anyOf"][0]["enum"] == ["tiny"]
    assert schemas["AttentionRequest"]["properties"]["text"]["maxLength"] == 200
    description = client.get("/openapi.json").json()["info"]["description"]
    assert "at most 4096 bytes (413)" in description and "at most 40 predictions" in description


def test_documented_examples_name_the_loaded_model_and_succeed(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = {
        "FillMaskRequest": "/fill-mask",
        "NextSentenceRequest": "/next-sentence",
        "ClassifyRequest": "/classify",
        "AttentionRequest": "/attention",
    }
    for component, path in paths.items():
        examples = spec["components"]["schemas"][component]["examples"]
        assert examples and all(example["model"] == "tiny" for example in examples)
        for example in examples:
            response = client.post(path, json=example)
            assert response.status_code == 200, (path, example, response.text)


# --- tasks --------------------------------------------------------------------------------------------------
def test_fill_mask_matches_the_engine(client: TestClient, engine) -> None:
    response = client.post("/fill-mask", json={"inputs": "the cat [MASK] the park.", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["truncated"] == [False]
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


def test_fill_mask_can_leave_out_the_sequence(client: TestClient) -> None:
    body = {"inputs": "the cat [MASK] the park.", "top_k": 2}
    full = client.post("/fill-mask", json=body).json()["results"][0]
    lean = client.post("/fill-mask", json={**body, "include_sequence": False}).json()["results"][0]
    assert all("sequence" not in p for p in lean) and all(p["sequence"] for p in full)
    assert [p["token"] for p in lean] == [p["token"] for p in full]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"inputs": "no mask here"}, "inputs", "no [MASK]"),
        ({"inputs": ["a [MASK].", "no mask"]}, "1", "no [MASK]"),
        ({"inputs": ""}, "inputs", "empty"),
        ({"inputs": ["a [MASK].", "   "]}, "1", "empty"),
        ({"inputs": []}, "inputs", "at least one"),
        ({"inputs": ["a [MASK]."] * 5}, "inputs", "at most 4 inputs"),
        ({"inputs": "a [MASK] " + "word " * 100}, "inputs", "at most 300 characters"),
        ({"inputs": "word " * 55 + "[MASK]"}, "inputs", "tokens long"),
        (
            {"inputs": "word " * 55 + "[MASK]", "truncate": True},
            "inputs",
            "beyond the model's maximum length",
        ),
        ({"inputs": "[MASK] [MASK] [MASK] [MASK]"}, "inputs", "at most 3 [MASK] tokens per text, got 4"),
        (
            {"inputs": ["[MASK] [MASK] [MASK]", "[MASK] [MASK] [MASK]"]},
            "inputs",
            "at most 5 [MASK] tokens per",
        ),
        ({"inputs": "[MASK] [MASK] [MASK]", "top_k": 14}, "top_k", "42 predictions, more than the 40"),
        ({"inputs": "a [MASK].", "top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"inputs": "a [MASK].", "top_k": 21}, "top_k", "less than or equal to 20"),
        ({"inputs": "a [MASK].", "model": "nope"}, "model", "unknown model 'nope'"),
        ({"inputs": "a [MASK].", "model": ""}, "model", "at least 1 character"),
        ({"inputs": 5}, "inputs", "a text or a list of texts"),
        ({"inputs": "a [MASK].", "topk": 3}, "topk", "extra inputs"),
        ({}, "inputs", "required"),
    ],
)
def test_fill_mask_bad_input_is_422_naming_field_and_reason(
    client: TestClient, body: dict, field: str, words: str
) -> None:
    assert_422(client.post("/fill-mask", json=body), field, words)


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
    assert_422(client.post("/next-sentence", json={"pairs": [pair] * 5}), "pairs", "at most 4 pairs")


def test_a_pair_may_be_a_two_text_list(client: TestClient) -> None:
    as_object = {"first": "the cat sees the park.", "second": "a dog likes a book."}
    as_list = [as_object["first"], as_object["second"]]
    expected = client.post("/next-sentence", json={"pairs": as_object}).json()["results"]
    assert client.post("/next-sentence", json={"pairs": as_list}).json()["results"] == expected
    both = client.post("/next-sentence", json={"pairs": [as_list, as_object]}).json()["results"]
    assert both == expected * 2
    wrong = client.post("/next-sentence", json={"pairs": [as_object, ["only one"]]})
    assert_422(
        wrong, "pairs", 'pairs[1]: each pair must be {"first": "...", "second": "..."} or a list of two'
    )


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


def test_each_text_is_encoded_once_per_request(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input checks encode every text; the batch reuses those pieces instead of encoding again."""
    from model.tokenizer import Tokenizer

    calls: list[str] = []
    encode_ids, encode_ids_batch = Tokenizer.encode_ids, Tokenizer.encode_ids_batch
    monkeypatch.setattr(
        Tokenizer, "encode_ids", lambda self, text: calls.append(text) or encode_ids(self, text)
    )
    monkeypatch.setattr(
        Tokenizer,
        "encode_ids_batch",
        lambda self, texts: calls.extend(texts) or encode_ids_batch(self, texts),
    )
    texts = ["the cat [MASK] the park.", "a [MASK] dog.", "[MASK] sees the cat."]
    assert client.post("/fill-mask", json={"inputs": texts}).status_code == 200
    assert sorted(calls) == sorted(texts)
    calls.clear()
    assert client.post("/classify", json={"inputs": texts[:2]}).status_code == 200
    assert sorted(calls) == sorted(texts[:2])
    calls.clear()
    pairs = [{"first": "the cat sees the park.", "second": "a dog likes a book."}]
    assert client.post("/next-sentence", json={"pairs": pairs}).status_code == 200
    assert sorted(calls) == sorted(pairs[0].values())


def test_truncation_is_an_option_and_is_reported(client: TestClient, engine) -> None:
    long = "the cat sees the park. " * 12  # over 64 tokens, under 300 characters
    tokens = len(engine.tokenizer.encode_ids(long)) + 2
    refused = client.post("/classify", json={"inputs": ["short", long]})
    assert_422(refused, "1", f"the input is {tokens} tokens long")
    assert 'send "truncate": true' in refused.json()["detail"][0]["msg"]
    cut = client.post("/classify", json={"inputs": ["short", long], "truncate": True}).json()
    assert cut["truncated"] == [False, True]
    (expected,) = engine.classify([long])  # the engine truncates as the service does
    assert cut["results"][1][0]["score"] == pytest.approx(expected[0]["score"], rel=1e-4)
    pair = {"first": long, "second": "a dog."}
    assert_422(client.post("/next-sentence", json={"pairs": pair}), "pairs", "tokens long")
    assert client.post("/next-sentence", json={"pairs": pair, "truncate": True}).json()["truncated"] == [True]
    text = "the cat sees the park. " * 8
    refused = client.post("/attention", json={"text": text})
    assert_422(refused, "text", "tokens long")
    assert refused.json()["detail"][0]["loc"] == ["body", "text"]  # one text: no index after the field
    assert client.post("/attention", json={"text": text, "truncate": True}).json()["truncated"] is True


def test_attention_maps(client: TestClient) -> None:
    body = client.post("/attention", json={"text": "the cat sees the park."}).json()
    tokens, maps = body["tokens"], np.array(body["attentions"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and body["truncated"] is False
    assert (
        maps.shape
        == (body["num_layers"], body["num_heads"], len(tokens), len(tokens))
        == (2, 2, len(tokens), len(tokens))  # the tiny bundle: 2 layers, 2 heads
    )
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-4)
    assert_422(client.post("/attention", json={"text": " "}), "text", "empty")
    assert_422(client.post("/attention", json={"text": "a" * 201}), "text", "at most 200 characters")


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/classify", json={"inputs": "fine"})
    client.post("/fill-mask", json={"inputs": "no mask"})
    client.post("/classify", content=b"x" * 5000, headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert 'pocketbert_http_requests_total{endpoint="/classify",method="POST",status="200"}' in text
    assert 'pocketbert_http_requests_total{endpoint="/fill-mask",method="POST",status="422"}' in text
    assert 'pocketbert_http_requests_total{endpoint="/classify",method="POST",status="413"}' in text
    assert "pocketbert_http_request_duration_seconds_bucket{" in text
    assert 'pocketbert_batch_size_count{model="tiny",task="classify"}' in text
    assert 'pocketbert_queue_depth{model="tiny",task="fill-mask"} 0' in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# --- bodies: size, encoding, JSON, content type -------------------------------------------------------------
def test_body_over_the_limit_is_413_by_content_length_and_chunked(client: TestClient) -> None:
    big = json.dumps({"inputs": "a " * 3000}).encode()  # 6 kB > 4096 bytes
    declared = client.post("/classify", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "limit is 4096 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the body arrives in pieces (Transfer-Encoding: chunked)
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    chunked = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "limit is 4096 bytes" in chunked.json()["detail"]
    small = client.post("/classify", content=(c for c in [b'{"inputs": ', b'"fine"}']))
    assert small.status_code == 200, small.text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "not valid JSON: Expecting property name"),
        (b'{"inputs": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at offset 15)"),
        (b'{"inputs": "\\ud800 x"}', "lone surrogate"),
        (b'{"inputs": ["ok", "\\udfff"]}', "lone surrogate"),
        (b'{"inputs": "ok", "top_k": Infinity}', "Infinity is not a JSON number"),
        (b'{"inputs": NaN}', "NaN is not a JSON number"),
        (b'{"inputs": "ok", "extra": -Infinity}', "-Infinity is not a JSON number"),
    ],
)
def test_undecodable_bodies_are_422_with_the_reason(client: TestClient, content: bytes, words: str) -> None:
    response = client.post("/classify", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(words in d["msg"] for d in response.json()["detail"]), response.text


def test_a_refused_value_is_quoted_back_as_valid_json() -> None:
    """The 422's echo of a refused value: non-finite numbers become text (JSON has none), long texts and
    lists are cut, a lone surrogate is replaced."""
    from app.errors import JSONAnswer, safe_echo

    echoed = safe_echo({"a": float("nan"), "b": [float("inf")] * 20, "c": "x" * 500 + "\ud800"})
    assert echoed["a"] == "nan" and echoed["b"] == ["inf"] * 8 and len(echoed["c"]) == 83
    assert json.loads(JSONAnswer(echoed).body)["b"][0] == "inf"


def test_deeply_nested_json_is_422(tiny_bundle: Path) -> None:
    settings = Settings(bundles=[tiny_bundle], ort_threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/classify", content=b"[" * 100_000, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422 and "nested too deeply" in response.text


def test_json_without_its_content_type_is_accepted(client: TestClient) -> None:
    body = b'{"inputs": "a good movie"}'
    for headers in (
        {},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "text/plain"},
    ):
        response = client.post("/classify", content=body, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    form = client.post("/classify", data={"inputs": "a good movie"})  # a real form body
    assert form.status_code == 422
    assert "send JSON with Content-Type: application/json" in form.json()["detail"][0]["msg"]


# --- start-up ----------------------------------------------------------------------------------------------
def test_without_a_bundle_start_up_fails_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=rf"no bundle .* found in {tmp_path} \(POCKETBERT_BUNDLES\)"):
        create_app(Settings(bundles=[tmp_path]))


def test_damaged_bundle_stops_start_up_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    from bundle_fixtures import copy_bundle

    broken = copy_bundle(tiny_bundle, tmp_path / "broken")
    (broken / "classifier.onnx").write_bytes(b"not onnx")
    with pytest.raises(StartupError, match="classifier.onnx changed since export"):
        create_app(Settings(bundles=[broken]))


def test_unknown_default_model_stops_start_up(tiny_bundle: Path) -> None:
    with pytest.raises(StartupError, match="default model 'fr' .* is not loaded; loaded: tiny"):
        create_app(Settings(bundles=[tiny_bundle], default_model="fr", ort_threads=1))


# --- overload, deadlines, server faults (fake engines) -----------------------------------------------------
class FakeTokenizer:
    """Whitespace tokens: enough for the service's checks; [MASK] is id 6 as in every pocketbert vocab."""

    def encode_ids(self, text: str) -> list[int]:
        return [6 if word == "[MASK]" else 7 for word in text.split()]

    def build_inputs(self, ids, max_length=64):
        from model.tokenizer import Encoding

        body = list(ids[: max_length - 2])
        return Encoding([4, *body, 5], [0] * (len(body) + 2))


class BlockingEngine:
    """Honours the engine contract; classify blocks until released, so a batch can be held open, and
    fails while `fail` is set, as a damaged graph would at run time."""

    name = "fake"
    info: dict = {}
    max_length = 64
    label_names = LABELS
    tasks = ["fill-mask", "next-sentence", "classify", "attention"]
    language = "en"

    def __init__(self, hold: bool = True) -> None:
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started = threading.Event()
        self.fail: Exception | None = None
        self.tokenizer = FakeTokenizer()

    def classify(
        self, texts: list[str], top_k: int | None = None, ids: list | None = None
    ) -> list[list[dict]]:
        if texts != ["hello world"]:  # the warm-up passes
            self.started.set()
            assert self.release.wait(30)
            if self.fail is not None:
                raise self.fail
        return [[{"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.25}] for _ in texts]

    def fill_mask(
        self, texts: list[str], top_k: int = 5, with_sequence: bool = True, ids: list | None = None
    ) -> list:
        return [[[{"score": 1.0, "token": 7, "token_str": "x"}]] for _ in texts]

    def next_sentence(self, pairs: list, ids: list | None = None) -> list[dict]:
        return [{"is_next": True, "score": 1.0} for _ in pairs]

    def attention(self, text: str) -> dict:
        return {"tokens": ["[CLS]", "[SEP]"], "attentions": [[[[0.5, 0.5], [0.5, 0.5]]]]}


def _post_in_thread(client: TestClient, results: list, body: dict) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(client.post("/classify", json=body)))
    thread.start()
    return thread


def _metric(client: TestClient, prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        time.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


def test_full_queue_answers_503_with_retry_after() -> None:
    engine = BlockingEngine()
    settings = Settings(max_queue=2, max_wait_ms=0, request_timeout_s=30)
    with TestClient(create_app(settings, engines=[engine])) as client:
        results: list = []
        threads = [_post_in_thread(client, results, {"inputs": "held"})]
        assert engine.started.wait(10)  # batch 1 is running and blocked
        threads.append(_post_in_thread(client, results, {"inputs": ["a", "b"]}))  # fills the queue (2 of 2)
        depth = 'pocketbert_queue_depth{model="fake",task="classify"}'
        _wait_for(lambda: _metric(client, depth) == 2, "two sequences queued")
        refused = client.post("/classify", json={"inputs": "one too many"})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1 and "queue full" in refused.json()["detail"]
        engine.release.set()
        for thread in threads:
            thread.join(30)
        assert sorted(r.status_code for r in results) == [200, 200]
        assert _metric(client, 'pocketbert_queue_rejected_total{model="fake",task="classify"}') == 1


def test_too_many_requests_in_flight_is_503_and_health_still_answers() -> None:
    engine = BlockingEngine()
    settings = Settings(max_concurrent_requests=1, max_wait_ms=0, request_timeout_s=30)
    with TestClient(create_app(settings, engines=[engine])) as client:
        results: list = []
        thread = _post_in_thread(client, results, {"inputs": "held"})
        assert engine.started.wait(10)
        refused = client.post("/next-sentence", json={"pairs": ["a", "b"]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "at most 1" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        engine.release.set()
        thread.join(30)
        assert results[0].status_code == 200
        assert client.post("/next-sentence", json={"pairs": ["a", "b"]}).status_code == 200


def test_attention_has_its_own_small_queue() -> None:
    engine = BlockingEngine(hold=False)
    gate = threading.Event()
    started = threading.Event()

    def slow_attention(text: str) -> dict:
        started.set()
        assert gate.wait(30)
        return {"tokens": ["[CLS]", "[SEP]"], "attentions": [[[[0.5, 0.5], [0.5, 0.5]]]]}

    engine.attention = slow_attention  # type: ignore[method-assign]
    settings = Settings(attention_max_queue=1, max_queue=100, request_timeout_s=30, inference_workers=2)
    with TestClient(create_app(settings, engines=[engine])) as client:
        results: list = []
        post = lambda: results.append(client.post("/attention", json={"text": "a b"}))  # noqa: E731
        threads = [threading.Thread(target=post)]
        threads[0].start()
        assert started.wait(10)  # one map being drawn
        threads.append(threading.Thread(target=post))
        threads[1].start()
        depth = 'pocketbert_queue_depth{model="fake",task="attention"}'
        _wait_for(lambda: _metric(client, depth) == 1, "one attention request queued")
        refused = client.post("/attention", json={"text": "a b"})
        assert refused.status_code == 503 and "queue full" in refused.json()["detail"]
        assert client.post("/classify", json={"inputs": "other tasks still run"}).status_code == 200
        gate.set()
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in results] == [200, 200]


def test_request_past_its_deadline_is_504() -> None:
    engine = BlockingEngine()
    with TestClient(create_app(Settings(request_timeout_s=0.2), engines=[engine])) as client:
        response = client.post("/classify", json={"inputs": "held"})
        engine.release.set()
        assert response.status_code == 504 and "deadline" in response.json()["detail"]


def test_engine_failure_is_500_with_an_error_id_and_the_next_request_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = BlockingEngine(hold=False)
    engine.fail = ValueError("onnxruntime: broken initializer in classifier.onnx")
    with TestClient(create_app(Settings(), engines=[engine])) as client, caplog.at_level(logging.ERROR):
        failed = client.post("/classify", json={"inputs": "a secret review"})
        assert failed.status_code == 500, failed.text  # a ValueError from the server side: not a 422
        error_id = failed.json()["error_id"]
        assert failed.json()["detail"] == "internal error" and "inputs" not in failed.text
        logged = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
        assert logged and "ValueError" in logged[0] and "broken initializer" in logged[0]
        engine.fail = None
        assert client.post("/classify", json={"inputs": "a secret review"}).status_code == 200
    assert "a secret review" not in caplog.text


def test_logs_hold_request_texts_only_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    secret = "my secret diary entry"
    for setting in (False, True):
        engine = BlockingEngine(hold=False)
        engine.fail = RuntimeError(f"cannot classify {secret!r}")
        caplog.clear()
        settings = Settings(log_request_texts=setting, log_level="debug")
        with TestClient(create_app(settings, engines=[engine])) as client, caplog.at_level(logging.DEBUG):
            assert client.post("/classify", json={"inputs": secret}).status_code == 500
            assert client.post("/fill-mask", json={"inputs": f"{secret} [MASK]"}).status_code == 200
        assert (secret in caplog.text) is setting, caplog.text
        assert "RuntimeError" in caplog.text


# --- settings and the CLI ---------------------------------------------------------------------------------
def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("POCKETBERT_BUNDLES", "bundles/en, bundles/ko")
    monkeypatch.setenv("POCKETBERT_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("POCKETBERT_CORS_ORIGINS", "http://localhost:3000,https://example.org")
    monkeypatch.setenv("POCKETBERT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("POCKETBERT_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("POCKETBERT_MAX_CONCURRENT_REQUESTS", "3")
    settings = Settings()
    assert settings.bundles == [Path("bundles/en"), Path("bundles/ko")]
    assert settings.max_batch_size == 8 and settings.log_level == "debug"
    assert settings.cors_origins == ["http://localhost:3000", "https://example.org"]
    assert settings.max_body_bytes == 2048 and settings.max_concurrent_requests == 3
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
    assert settings.max_body_bytes == 1 << 20 and settings.log_request_texts is False


def test_cors_origins_are_allowed(tiny_bundle: Path) -> None:
    settings = Settings(bundles=[tiny_bundle], cors_origins=["https://example.org"], ort_threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.options(
            "/classify", headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
        )
        assert response.headers.get("access-control-allow-origin") == "https://example.org"
        other = client.options(
            "/classify", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_serve_command_starts_uvicorn_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path, tmp_path: Path
) -> None:
    import uvicorn

    from model.plans import available_cores
    from training.cli import main

    calls: list[tuple] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    # run() writes the options to the environment; setenv first so monkeypatch restores it afterwards
    for key, value in (
        ("BUNDLES", "unset"),
        ("MAX_BATCH_SIZE", "32"),
        ("LOG_LEVEL", "info"),
        ("WORKERS", "1"),
    ):
        monkeypatch.setenv(f"POCKETBERT_{key}", value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # several workers: used
    argv = [
        "serve",
        "--bundles",
        str(tiny_bundle),
        "--port",
        "8123",
        "--max-batch-size",
        "4",
        "--workers",
        "2",
    ]
    assert main(argv) == 0
    ((args, kwargs),) = calls
    assert args == ("app.main:factory",) and kwargs["factory"] is True
    assert kwargs["port"] == 8123 and kwargs["host"] == "127.0.0.1" and kwargs["workers"] == 2
    settings = Settings()  # what each uvicorn worker's factory will read
    assert settings.bundles == [tiny_bundle] and settings.max_batch_size == 4
    assert settings.workers == 2 and settings.inference_threads == max(1, available_cores() // 2)
    assert (tmp_path / "metrics").is_dir()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_refuses_a_path_without_bundles_in_one_line(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import uvicorn

    from app.serve import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    monkeypatch.delenv("POCKETBERT_BUNDLES", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    if how == "flag":
        assert main(["--bundles", str(empty)]) == 2
        assert main(["--bundles", str(tmp_path / "absent")]) == 2
        named = "--bundles"
    else:
        monkeypatch.setenv("POCKETBERT_BUNDLES", str(empty))
        assert main([]) == 2
        named = "POCKETBERT_BUNDLES"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        f"pocketbert serve: {named}: no bundle in {empty} (a bundle is a folder holding bundle.json, or a "
        "folder of them); make one with `pocketbert export` (see README)"
    )
    if how == "flag":
        assert lines[1] == f"pocketbert serve: --bundles: no such folder {tmp_path / 'absent'}"
    assert all("POCKETBERT_BUNDLES" not in line for line in lines) or how == "environment"


def test_serve_refuses_bad_settings_in_one_line_each_naming_flag_or_variable(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import uvicorn

    from app.serve import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    # run() writes the flags to the environment; setenv first so monkeypatch restores it afterwards
    for key, value in (("BUNDLES", "unset"), ("WORKERS", "1"), ("MAX_WAIT_MS", "2"), ("LOG_LEVEL", "info")):
        monkeypatch.setenv(f"POCKETBERT_{key}", value)
    monkeypatch.setenv("POCKETBERT_MAX_INPUTS", "abc")
    assert main(["--bundles", str(tiny_bundle), "--workers", "0", "--max-wait-ms", "-1"]) == 2
    lines = sorted(capsys.readouterr().err.strip().splitlines())
    assert lines == [
        "pocketbert serve: --max-wait-ms: Input should be greater than or equal to 0 (got '-1.0')",
        "pocketbert serve: --workers: Input should be greater than or equal to 1 (got '0')",
        "pocketbert serve: POCKETBERT_MAX_INPUTS: Input should be a valid integer, unable to parse string as "
        "an integer (got 'abc')",
    ]
    monkeypatch.delenv("POCKETBERT_MAX_INPUTS")
    assert main(["--bundles", str(tiny_bundle), "--port", "-1"]) == 2
    assert capsys.readouterr().err == "pocketbert serve: --port: must be between 0 and 65535, got -1\n"


def test_tokenizer_checks_run_off_the_event_loop_unless_small(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The [MASK] and token-count checks tokenize: for a large request they run in the cpu worker threads,
    never on the event loop's thread, so /healthz and other requests are answered meanwhile; a small one
    (up to INLINE_CHARS characters) is checked right on the event loop, cheaper than the hop."""
    from app.registry import ServedModel
    from app.service import INLINE_CHARS

    threads: list[str] = []
    for name in ("check_masks", "check_texts", "check_pairs"):
        original = getattr(ServedModel, name)

        def record(self, *args, _original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ServedModel, name, record)
    big = "a " * (INLINE_CHARS // 8 + 1)  # four of them: more than INLINE_CHARS characters in all
    masked = {"inputs": ["[MASK] " + big] * 4, "truncate": True}
    assert client.post("/fill-mask", json=masked).status_code == 200
    assert client.post("/classify", json={"inputs": [big] * 4, "truncate": True}).status_code == 200
    pairs = {"pairs": [[big, big]] * 2, "truncate": True}
    assert client.post("/next-sentence", json=pairs).status_code == 200
    assert len(threads) == 3 and all(name.startswith("cpu") for name in threads), threads
    threads.clear()
    assert client.post("/fill-mask", json={"inputs": "a [MASK]."}).status_code == 200
    assert client.post("/classify", json={"inputs": "a"}).status_code == 200
    assert len(threads) == 2 and not any(name.startswith("cpu") for name in threads), threads


def test_a_fault_outside_the_engine_is_500_with_an_error_id(caplog: pytest.LogCaptureFixture) -> None:
    """A model that answers NaN (a damaged graph) cannot be rendered as JSON: the last-resort handler
    turns that into a 500 with an error id in the log, and the service goes on."""
    engine = BlockingEngine(hold=False)
    healthy = engine.classify
    nan = [{"label": "positive", "score": float("nan")}]
    engine.classify = lambda texts, top_k=None: [nan for _ in texts]
    with TestClient(create_app(Settings(), engines=[engine])) as client, caplog.at_level(logging.ERROR):
        response = client.post("/classify", json={"inputs": "fine"})
        assert response.status_code == 500 and response.json()["detail"] == "internal error"
        assert any(response.json()["error_id"] in r.getMessage() for r in caplog.records)
        engine.classify = healthy
        assert client.post("/classify", json={"inputs": "fine"}).status_code == 200
