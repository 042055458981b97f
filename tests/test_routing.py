"""Serving several models: routing by language, a configured default, per-model tasks, and a schema that
documents only what is loaded.

Two copies of the tiny bundle, one marked Korean ("ko") and one English ("en"), have the same weights:
only the `model` of each answer tells which one answered, which is exactly what routing decides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_fixtures import copy_bundle
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

PATHS = {
    "FillMaskRequest": "/fill-mask",
    "NextSentenceRequest": "/next-sentence",
    "ClassifyRequest": "/classify",
    "AttentionRequest": "/attention",
}


@pytest.fixture(scope="module")
def client(ko_en_bundles: Path):
    with TestClient(create_app(Settings(bundles=[ko_en_bundles], ort_threads=1))) as c:
        yield c


def answered_by(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["model"]


def test_models_lists_both_with_language_tasks_labels_and_figures(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["routing"] == "language" and body["default"] == "en"
    by_name = {m["name"]: m for m in body["models"]}
    assert {name: m["language"] for name, m in by_name.items()} == {"en": "en", "ko": "ko"}
    for m in by_name.values():
        assert m["tasks"] == ["fill-mask", "next-sentence", "classify", "attention"]
        assert m["labels"] == ["negative", "positive"]
        assert m["headline"]["mlm_accuracy"] == 0.1 and m["headline"]["nsp_accuracy"] == 0.5
    assert by_name["en"]["default"] is True and by_name["ko"]["default"] is False


def test_text_with_hangul_goes_to_the_korean_model(client: TestClient) -> None:
    assert answered_by(client.post("/fill-mask", json={"inputs": "고양이가 [MASK] 좋아한다."})) == "ko"
    assert answered_by(client.post("/fill-mask", json={"inputs": "the cat [MASK] the park."})) == "en"
    assert (
        answered_by(client.post("/classify", json={"inputs": ["정말 재미있다", "영화는 지루했다"]})) == "ko"
    )
    assert answered_by(client.post("/classify", json={"inputs": ["a fine film", "dull"]})) == "en"
    assert answered_by(client.post("/attention", json={"text": "오늘은 날씨가 좋다"})) == "ko"
    # a pair is Korean when either sentence is
    assert answered_by(client.post("/next-sentence", json={"pairs": ["the cat.", "고양이."]})) == "ko"
    assert answered_by(client.post("/next-sentence", json={"pairs": ["the cat.", "a dog."]})) == "en"


def test_a_named_model_answers_whatever_the_language(client: TestClient) -> None:
    assert answered_by(client.post("/classify", json={"inputs": "정말 재미있다", "model": "en"})) == "en"
    mixed = {"inputs": ["정말 재미있다", "a fine film"], "model": "ko"}
    assert answered_by(client.post("/classify", json=mixed)) == "ko"


def test_a_batch_mixing_languages_is_refused_naming_which_is_which(client: TestClient) -> None:
    response = client.post("/classify", json={"inputs": ["a fine film", "정말 재미있다", "dull"]})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "inputs"]
    assert detail["msg"] == (
        "the inputs mix languages that different models answer: inputs 0, 2 English (model en); "
        "inputs 1 Korean (model ko); send one language per request or name a model"
    )
    pairs = client.post("/next-sentence", json={"pairs": [["a.", "b."], ["가.", "나."]]})
    assert pairs.status_code == 422 and "pairs 1 Korean (model ko)" in pairs.text


def test_a_configured_default_model_takes_every_unnamed_request(ko_en_bundles: Path) -> None:
    settings = Settings(bundles=[ko_en_bundles], default_model="ko", ort_threads=1)
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/models").json()
        assert body["routing"] == "default" and body["default"] == "ko"
        assert answered_by(client.post("/classify", json={"inputs": "a fine film"})) == "ko"
        assert answered_by(client.post("/classify", json={"inputs": ["a fine film", "정말"]})) == "ko"
        assert answered_by(client.post("/classify", json={"inputs": "a fine film", "model": "en"})) == "en"


def test_a_bundle_being_staged_beside_the_others_is_not_served(ko_en_bundles: Path, tmp_path: Path) -> None:
    """An export publishing into the served folder stages its copy in a hidden `.NAME.tmp-PID` folder:
    a server started meanwhile serves the finished bundles and ignores that copy (before: two bundles
    of the same name, and the server refused to start)."""
    folder = tmp_path / "bundles"
    for bundle in ko_en_bundles.iterdir():
        copy_bundle(bundle, folder / bundle.name)
    copy_bundle(ko_en_bundles / "en", folder / ".en.tmp-1234")
    with TestClient(create_app(Settings(bundles=[folder], ort_threads=1))) as client:
        models = [m["name"] for m in client.get("/v1/models").json()["models"]]
    assert sorted(models) == ["en", "ko"]


def test_documented_examples_are_per_language_name_loaded_models_and_succeed(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for component, path in PATHS.items():
        examples = schemas[component]["examples"]
        assert [e["model"] for e in examples] == ["en", "ko"], component
        assert schemas[component]["properties"]["model"]["anyOf"][0]["enum"] == ["en", "ko"]
        for example in examples:
            assert answered_by(client.post(path, json=example)) == example["model"]
    korean = schemas["ClassifyRequest"]["examples"][1]["inputs"]
    assert any("\uac00" <= ch <= "\ud7a3" for ch in korean)


# --- a model without a classifier --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_tasks(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path, pretraining_only_bundle: Path):
    folder = tmp_path_factory.mktemp("mixed-tasks")
    copy_bundle(tiny_bundle, folder / "en", name="en", language="en")
    copy_bundle(pretraining_only_bundle, folder / "mlm", language="en")
    with TestClient(create_app(Settings(bundles=[folder], ort_threads=1))) as client:
        yield client


def test_a_pretraining_only_model_offers_fill_mask_and_next_sentence(mixed_tasks: TestClient) -> None:
    models = {m["name"]: m for m in mixed_tasks.get("/v1/models").json()["models"]}
    assert models["mlm"]["tasks"] == ["fill-mask", "next-sentence"] and models["mlm"]["labels"] == []
    assert answered_by(mixed_tasks.post("/fill-mask", json={"inputs": "a [MASK].", "model": "mlm"})) == "mlm"
    assert (
        answered_by(mixed_tasks.post("/next-sentence", json={"pairs": ["a", "b"], "model": "mlm"})) == "mlm"
    )
    refused = mixed_tasks.post("/classify", json={"inputs": "a fine film", "model": "mlm"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == (
        "model 'mlm' does not offer classify (it offers fill-mask, next-sentence); models that do: en"
    )
    assert answered_by(mixed_tasks.post("/classify", json={"inputs": "a fine film"})) == "en"
    schema = mixed_tasks.get("/openapi.json").json()["components"]["schemas"]
    assert schema["ClassifyRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["en"]
    assert schema["FillMaskRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["en", "mlm"]


def test_with_no_classifier_loaded_classify_is_404(pretraining_only_bundle: Path) -> None:
    with TestClient(create_app(Settings(bundles=[pretraining_only_bundle], ort_threads=1))) as client:
        response = client.post("/classify", json={"inputs": "a fine film"})
        assert response.status_code == 404 and response.json() == {
            "detail": "no loaded model offers classify"
        }
        assert answered_by(client.post("/fill-mask", json={"inputs": "a [MASK]."})) == "mlm"
        schema = client.get("/openapi.json").json()["components"]["schemas"]["ClassifyRequest"]
        assert schema["properties"]["model"]["anyOf"] == [{"type": "null"}] and schema["examples"] == []
