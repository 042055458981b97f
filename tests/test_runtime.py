"""How the engine runs its graphs (model/runtime.py): plans, batch chunks, and the timed choice cached
outside the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import plans, runtime
from model.engine import Engine
from model.plans import BANDS, Plan, candidate_plans
from model.runtime import balanced_chunks

TEXTS = [
    "the cat [MASK] the park.",
    "my friend likes a small house and the old tree near the quiet [MASK] and the frozen lake.",
    "a [MASK] likes [MASK] music.",
    "[MASK] dog.",
    "the teacher watches the river and some music near the [MASK] garden.",
]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(plans.ENV_CACHE, str(folder))
    return folder


def test_sessions_keep_add_and_layer_norm_apart(tmp_path: Path) -> None:
    """onnxruntime fuses Add + LayerNormalization into SkipLayerNormalization at load unless told not to
    (the fused op's CPU kernel is the slower one: training/onnx_utils.unfuse_skip_layer_norm)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", "seq", 8]
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip", "y")]
    norm = [numpy_helper.from_array(np.full(8, v, dtype=np.float32), n) for n, v in (("g", 1.0), ("b", 0.0))]
    nodes = [
        helper.make_node("Add", ["x", "skip"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "g", "b"], ["y"], axis=-1, epsilon=1e-12),
    ]
    graph = helper.make_graph(nodes, "add_norm", values[:2], values[2:], norm)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    runtime.make_session(tmp_path / "g.onnx", 1, optimized_copy=tmp_path / "as_run.onnx")
    as_run = [node.op_type for node in onnx.load(str(tmp_path / "as_run.onnx")).graph.node]
    assert as_run == ["Add", "LayerNormalization"]


def test_a_plan_reads_from_its_setting_and_back() -> None:
    plan = Plan.parse("chunks=2, threads=1")
    assert plan == Plan(threads=1, spinning=True, chunks=2)
    assert Plan.parse(str(Plan(3, spinning=False))) == Plan(3, spinning=False)
    assert Plan(1, spinning=False).spinning  # one thread has no pool that could spin
    for bad in ("threads=two", "cores=2", "threads=0", "spinning=maybe"):
        with pytest.raises(ValueError):
            Plan.parse(bad)


def test_candidates_stay_within_the_thread_budget() -> None:
    assert candidate_plans(1, 32) == [Plan(1)]
    assert Plan(1, chunks=2) not in candidate_plans(2, 1)  # one text cannot be split
    assert all(p.threads <= 4 and p.chunks <= 4 for p in candidate_plans(4, 32))
    assert Plan(1, chunks=4) in candidate_plans(4, 32)
    assert [band.timed_at in band for band in BANDS] == [True] * len(BANDS)
    assert [any(size in band for band in BANDS) for size in (1, 2, 15, 16, 1000)] == [True] * 5


def test_chunks_cover_every_row_once_longest_first_and_even() -> None:
    lengths = np.array([5, 40, 12, 40, 7, 30, 9, 11])
    parts = balanced_chunks(lengths, 2)
    assert len(parts) == 2
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(lengths)))
    costs = [len(rows) * lengths[rows].max() for rows in parts]
    assert max(costs) < len(lengths) * 40  # padded cost of the whole batch in one part
    assert lengths[parts[0]].min() >= lengths[parts[1]].max()  # sorted: each part pads to its own longest
    assert len(balanced_chunks(np.array([9]), 4)) == 1


def test_a_chunked_batch_answers_as_one_batch(tiny_bundle: Path) -> None:
    whole = Engine.load(tiny_bundle, intra_op_threads=2, plan="fixed")
    chunked = Engine.load(tiny_bundle, intra_op_threads=2, plan="threads=1,chunks=2")
    assert set(chunked.plans["classifier"].values()) == {str(Plan(1, chunks=2))}
    expected, found = whole.fill_mask(TEXTS, top_k=3), chunked.fill_mask(TEXTS, top_k=3)
    for a, b in zip(expected, found, strict=True):
        for mask_a, mask_b in zip(a, b, strict=True):
            assert [p["token"] for p in mask_a] == [p["token"] for p in mask_b]
            assert [p["score"] for p in mask_a] == pytest.approx([p["score"] for p in mask_b], abs=1e-6)
    labels = [t.replace("[MASK]", "x") for t in TEXTS]
    for a, b in zip(whole.classify(labels), chunked.classify(labels), strict=True):
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-6)
    pairs = list(zip(labels, reversed(labels), strict=True))
    for a, b in zip(whole.next_sentence(pairs), chunked.next_sentence(pairs), strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    chunked.close()


def test_auto_times_once_per_cpu_and_graph_then_reads_the_cache(
    tiny_bundle: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.load(tiny_bundle, intra_op_threads=2, plan="auto")
    entries = [json.loads(p.read_text()) for p in sorted((cache / "plans").glob("*.json"))]
    assert len(entries) == 2  # pretraining and classifier
    info = json.loads((tiny_bundle / "bundle.json").read_text())
    assert {e["key"]["graph_sha256"] for e in entries} == {
        info["files"]["pretraining.onnx"],
        info["files"]["classifier.onnx"],
    }
    for entry in entries:
        assert entry["key"]["threads"] == 2 and entry["key"]["cpu"] == plans.cpu_signature()
        assert set(entry["plans"]) == {str(band) for band in BANDS}
        assert set(entry["timings_ms"]["16+"]) == {str(p) for p in candidate_plans(2, 32)}

    def no_timing(*args: object) -> None:
        raise AssertionError("the cached plans should have been used")

    monkeypatch.setattr(runtime.GraphRunner, "tune", no_timing)
    again = Engine.load(tiny_bundle, intra_op_threads=2, plan="auto")
    assert again.plans == engine.plans
    with pytest.raises(AssertionError):  # another thread budget is another key: timed anew
        Engine.load(tiny_bundle, intra_op_threads=3, plan="auto")


def test_an_unwritable_cache_still_chooses_plans(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(plans.ENV_CACHE, str(blocker / "cache"))
    engine = Engine.load(tiny_bundle, intra_op_threads=2, plan="auto")
    assert set(engine.plans["pretraining"]) == {str(band) for band in BANDS}
    assert engine.fill_mask(["the cat [MASK] the park."], top_k=1)[0][0][0]["token"] >= 0


def test_the_plan_comes_from_the_environment_and_a_bad_one_is_refused(tiny_bundle: Path, monkeypatch) -> None:
    monkeypatch.setenv(plans.ENV_PLAN, "threads=1")
    assert Engine.load(tiny_bundle, intra_op_threads=2).plans["pretraining"]["16+"] == str(Plan(1))
    monkeypatch.setenv(plans.ENV_PLAN, "fastest please")
    with pytest.raises(ValueError, match="POCKETBERT_ENGINE_PLAN"):
        Engine.load(tiny_bundle, intra_op_threads=2)
