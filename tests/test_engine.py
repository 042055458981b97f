"""The torch-free inference engine on the tiny bundle, checked against the torch models it came from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_model
from model.engine import Engine
from model.tokenizer import MASK_ID

ROOT = Path(__file__).resolve().parents[1]
SHORT = "the cat [MASK] the park."
LONG = "my friend likes a small house and the old tree near the quiet mountain and the frozen lake."


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Engine:
    return Engine.load(tiny_bundle, intra_op_threads=1)


@pytest.fixture(scope="module")
def torch_models(tiny_checkpoints):
    return load_model(tiny_checkpoints.pretrained)[0], load_model(tiny_checkpoints.classifier)[0]


def _softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x.double(), dim=-1).numpy()


def test_load_exposes_the_contract(engine: Engine, tiny_bundle: Path) -> None:
    assert engine.name == "tiny"
    assert engine.max_length == 64
    assert engine.label_names == ["negative", "positive"]
    assert engine.info["format_version"] == 1
    assert engine.pretraining.get_session_options().intra_op_num_threads == 1


def test_fill_mask_matches_torch(engine: Engine, torch_models) -> None:
    pretraining, _ = torch_models
    texts = [SHORT, "a [MASK] likes [MASK] music."]
    results = engine.fill_mask(texts, top_k=3)
    batch = engine.tokenizer.encode_batch(texts, max_length=64)
    with torch.inference_mode():
        logits = pretraining(**{k: torch.from_numpy(v) for k, v in batch.as_dict().items()}).mlm_logits
    assert [len(r) for r in results] == [1, 2]  # one list per [MASK], in order
    for row, per_text in enumerate(results):
        positions = np.flatnonzero(batch.input_ids[row] == MASK_ID)
        for position, predictions in zip(positions, per_text, strict=True):
            probs = _softmax(logits[row, position])
            expected = np.argsort(-probs)[:3]
            assert [p["token"] for p in predictions] == expected.tolist()
            assert [p["score"] for p in predictions] == pytest.approx(probs[expected].tolist(), abs=1e-5)
            for p in predictions:
                assert p["token_str"] == engine.tokenizer.decode([p["token"]], skip_special_tokens=False)
                assert set(p) == {"score", "token", "token_str", "sequence"}


def test_fill_mask_sequence_fills_only_its_mask(engine: Engine) -> None:
    first, second = engine.fill_mask(["a [MASK] likes [MASK] music."], top_k=1)[0]
    ids = engine.tokenizer.encode_ids("a [MASK] likes [MASK] music.")
    filled = list(ids)
    filled[ids.index(MASK_ID)] = first[0]["token"]
    assert first[0]["sequence"] == engine.tokenizer.decode(filled, skip_special_tokens=False)
    assert first[0]["sequence"].count("[MASK]") == 1 and second[0]["sequence"].count("[MASK]") == 1
    single = engine.fill_mask([SHORT], top_k=1)[0][0][0]
    assert "[MASK]" not in single["sequence"] and "[CLS]" not in single["sequence"]


def test_results_do_not_depend_on_the_rest_of_the_batch(engine: Engine) -> None:
    alone = engine.fill_mask([SHORT], top_k=5)[0]
    batched = engine.fill_mask([LONG + " [MASK]", SHORT, "[MASK] [MASK] [MASK]"], top_k=5)[1]
    assert [p["token"] for p in alone[0]] == [p["token"] for p in batched[0]]
    assert [p["score"] for p in alone[0]] == pytest.approx([p["score"] for p in batched[0]], abs=1e-5)
    cls_alone = engine.classify([SHORT])[0]
    cls_batched = engine.classify([LONG, SHORT])[1]
    assert [d["score"] for d in cls_alone] == pytest.approx([d["score"] for d in cls_batched], abs=1e-5)
    nsp_alone = engine.next_sentence([(SHORT, "a dog sees the river.")])[0]
    nsp_batched = engine.next_sentence([(LONG, LONG), (SHORT, "a dog sees the river.")])[1]
    assert nsp_alone["score"] == pytest.approx(nsp_batched["score"], abs=1e-5)


def test_fill_mask_rejects_a_text_without_mask(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"text 1 has no \[MASK\] token: 'no mask here'"):
        engine.fill_mask([SHORT, "no mask here"])
    with pytest.raises(ValueError, match="within the first 64 tokens"):
        engine.fill_mask([LONG * 3 + " [MASK]"])
    with pytest.raises(ValueError, match="top_k"):
        engine.fill_mask([SHORT], top_k=0)


def test_next_sentence_matches_torch(engine: Engine, torch_models) -> None:
    pretraining, _ = torch_models
    pairs = [("the cat sees the park.", "a dog likes a book."), (LONG, "the bird paints the river.")]
    results = engine.next_sentence(pairs)
    batch = engine.tokenizer.encode_batch([a for a, _ in pairs], [b for _, b in pairs], max_length=64)
    with torch.inference_mode():
        nsp = pretraining(**{k: torch.from_numpy(v) for k, v in batch.as_dict().items()}).nsp_logits
    expected = _softmax(nsp)[:, 0]  # index 0 = IsNext
    assert [r["score"] for r in results] == pytest.approx(expected.tolist(), abs=1e-5)
    # given the pieces the server's checks computed, the long pair is cut the same way (A's front, B's end)
    pieces = [(engine.tokenizer.encode_ids(a), engine.tokenizer.encode_ids(b)) for a, b in pairs]
    assert engine.next_sentence(pairs, ids=pieces) == results
    assert [r["is_next"] for r in results] == [bool(p >= 0.5) for p in expected]


def test_classify_matches_torch(engine: Engine, torch_models) -> None:
    _, classifier = torch_models
    texts = [SHORT.replace("[MASK]", "sees"), LONG]
    results = engine.classify(texts)
    batch = engine.tokenizer.encode_batch(texts, max_length=64)
    with torch.inference_mode():
        probs = _softmax(classifier(**{k: torch.from_numpy(v) for k, v in batch.as_dict().items()}).logits)
    for row, result in enumerate(results):
        assert [d["score"] for d in result] == sorted((d["score"] for d in result), reverse=True)
        assert {d["label"]: d["score"] for d in result} == pytest.approx(
            {"negative": probs[row, 0], "positive": probs[row, 1]}, abs=1e-5
        )
    assert len(engine.classify(texts, top_k=1)[0]) == 1
    assert engine.classify([]) == [] and engine.fill_mask([]) == [] and engine.next_sentence([]) == []


def test_attention_maps_match_torch(engine: Engine, torch_models) -> None:
    pretraining, _ = torch_models
    out = engine.attention("the cat sees the park.")
    ids = engine.tokenizer.encode("the cat sees the park.", max_length=64).input_ids
    assert out["tokens"] == [engine.tokenizer.id_to_token(i) for i in ids]
    maps = np.array(out["attentions"])  # (layers, heads, T, T)
    assert maps.shape == (pretraining.config.num_hidden_layers, 2, len(ids), len(ids))
    assert np.allclose(maps.sum(-1), 1.0, atol=1e-5)
    with torch.inference_mode():
        expected = pretraining.bert(torch.tensor([ids]), output_attentions=True)[2]
    assert np.abs(maps - torch.stack(expected)[:, 0].numpy()).max() <= 1e-5


def test_app_modules_never_import_torch() -> None:
    code = "import sys, model.engine, model.bundle; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_fill_mask_can_leave_out_the_sequence(engine: Engine) -> None:
    full = engine.fill_mask([SHORT], top_k=3)[0][0]
    lean = engine.fill_mask([SHORT], top_k=3, with_sequence=False)[0][0]
    assert [p["token"] for p in lean] == [p["token"] for p in full]
    assert all(set(p) == {"score", "token", "token_str"} for p in lean)


def test_the_tasks_follow_the_graphs_a_bundle_lists(engine: Engine, pretraining_only_bundle: Path) -> None:
    assert engine.tasks == ["fill-mask", "next-sentence", "classify", "attention"]
    assert Engine.load(pretraining_only_bundle).tasks == ["fill-mask", "next-sentence"]
