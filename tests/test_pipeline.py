"""The in-process API (model/pipeline.py) answers exactly what the web API answers for the same request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model.pipeline import Pipeline, pipeline

LONG = "the [MASK] sees the park" + " and the cat sees the park" * 20 + "."


@pytest.fixture(scope="module")
def nlp(tiny_bundle: Path) -> Pipeline:
    return pipeline(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path):
    with TestClient(create_app(Settings(bundles=[tiny_bundle], ort_threads=1))) as c:
        yield c


def same(answer: dict, response) -> bool:
    """The same JSON: same graphs, same batch, same threads, so the same floats to the last digit."""
    assert response.status_code == 200, response.text
    return json.loads(json.dumps(answer)) == response.json()


def test_fill_mask_answers_as_the_api(nlp: Pipeline, client: TestClient) -> None:
    texts = ["the cat [MASK] the park.", "a [MASK] likes [MASK] music."]
    assert same(nlp.fill_mask(texts, top_k=3), client.post("/fill-mask", json={"inputs": texts, "top_k": 3}))
    one = nlp.fill_mask("the cat [MASK] the park.", include_sequence=False)
    assert same(
        one, client.post("/fill-mask", json={"inputs": "the cat [MASK] the park.", "include_sequence": False})
    )
    assert isinstance(one["results"][0][0], dict)  # one [MASK]: a flat list of predictions, as the API


def test_next_sentence_and_classify_answer_as_the_api(nlp: Pipeline, client: TestClient) -> None:
    pairs = [("the cat sees the park.", "a dog likes a book."), ("the bird sings.", "my friend helps.")]
    body = {"pairs": [{"first": a, "second": b} for a, b in pairs]}
    assert same(nlp.next_sentence(pairs), client.post("/next-sentence", json=body))
    texts = ["a wonderful film.", "dull and far too long."]
    assert same(nlp.classify(texts, top_k=1), client.post("/classify", json={"inputs": texts, "top_k": 1}))
    assert same(nlp.classify(texts[0]), client.post("/classify", json={"inputs": texts[0]}))


def test_a_long_text_is_refused_unless_truncated_as_in_the_api(nlp: Pipeline, client: TestClient) -> None:
    with pytest.raises(ValueError, match=r"input 0 is \d+ tokens long"):
        nlp.fill_mask(["[MASK] dog.", LONG][::-1])
    assert client.post("/fill-mask", json={"inputs": LONG}).status_code == 422
    cut = nlp.fill_mask(["[MASK] dog.", LONG], truncate=True)
    assert cut["truncated"] == [False, True]
    assert same(cut, client.post("/fill-mask", json={"inputs": ["[MASK] dog.", LONG], "truncate": True}))
