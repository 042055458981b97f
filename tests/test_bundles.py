"""Bundles that cannot be served damaged: each kind of damage is refused at load with a message naming the
file and the reason, and the server refuses to start on it (exit status 2, one line).

Checksums catch a file changed after export; what they cannot catch (a file replaced together with its
checksum) is caught by what the parts must agree on (tokenizer vs vocabulary and recorded sha256,
labels vs classifier) and by the bundle's reference self-test (reference.json: inputs and the outputs
the graphs gave at export).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundle_fixtures import copy_bundle, edit_manifest, rehash
from conftest import generate_corpus
from onnx import numpy_helper

from model.bundle import REFERENCE_FILE, BundleError, load_manifest
from model.engine import Engine, detect_language, write_reference
from model.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle with its reference self-test, free to damage."""
    return copy_bundle(tiny_bundle, tmp_path / "bundle")


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A tokenizer of the same size as the tiny one, trained on other text: it encodes differently."""
    from training.tokenizer_train import train_tokenizer

    out = tmp_path_factory.mktemp("other-tokenizer")
    corpus = generate_corpus(out / "corpus.txt", documents=60, seed=7)
    train_tokenizer([corpus], out, vocab_size=160)
    return Tokenizer(out)


def scale_weights(path: Path, factor: float) -> None:
    """Multiply the graph's float weights: a valid graph that computes something else."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * factor, tensor.name))
    onnx.save(model, str(path))


# --- damage that checksums catch ------------------------------------------------------------------------
def test_truncated_file_is_refused_by_its_checksum(bundle: Path) -> None:
    data = (bundle / "pretraining.onnx").read_bytes()
    (bundle / "pretraining.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=rf"bundle {bundle}: pretraining.onnx changed since export"):
        Engine.load(bundle)


# --- damage with the checksum updated to match ------------------------------------------------------------
def test_corrupted_graph_with_matching_checksum_is_refused_by_onnxruntime(bundle: Path) -> None:
    data = bytearray((bundle / "classifier.onnx").read_bytes())
    data[:64] = b"\xff" * 64  # the protobuf header: not a model any more
    (bundle / "classifier.onnx").write_bytes(bytes(data))
    rehash(bundle, "classifier.onnx")
    with pytest.raises(BundleError, match=r"onnxruntime cannot load classifier.onnx"):
        Engine.load(bundle)


def test_truncated_graph_with_matching_checksum_is_refused(bundle: Path) -> None:
    data = (bundle / "attention.onnx").read_bytes()
    (bundle / "attention.onnx").write_bytes(data[: len(data) // 3])
    rehash(bundle, "attention.onnx")
    with pytest.raises(BundleError, match=r"onnxruntime cannot load attention.onnx"):
        Engine.load(bundle)  # the reference self-test opens the attention graph at load


def test_graph_that_disagrees_with_its_model_is_refused_by_the_reference(bundle: Path) -> None:
    scale_weights(bundle / "classifier.onnx", 3.0)
    rehash(bundle, "classifier.onnx")
    with pytest.raises(
        BundleError, match=r"classifier.onnx disagrees with reference.json: classifier_logits"
    ):
        Engine.load(bundle)


def test_a_small_output_is_held_to_the_scale_of_that_output_over_all_cases(tmp_path: Path) -> None:
    """Another CPU's kernels move every logit by about the same absolute amount (INT8: up to 3% of the
    output's scale). A case whose logits happen to be near zero is held to that scale too, not to its
    own size, or a sound graph is refused on a CPU other than the exporting one (as the shipped Korean
    bundle was on an AVX-512 VNNI CPU: 0.0085 off logits of 0.09)."""
    from model.bundle import check_cases

    reference = {
        "atol": 1e-4,
        "rtol": 0.05,
        "cases": [
            {"text": "near zero", "input_ids": [1], "classifier_logits": [0.09, -0.06]},
            {"text": "confident", "input_ids": [2], "classifier_logits": [1.6, -1.5]},
        ],
    }
    ids = {"near zero": [1], "confident": [2]}

    def check(served: dict[str, list[float]]) -> None:
        def run_case(case: dict) -> dict:
            return {"classifier_logits": ("classifier.onnx", served[case["text"]])}

        check_cases(tmp_path, reference, lambda text, pair: ids[text], run_case)

    check({"near zero": [0.0985, -0.0615], "confident": [1.61, -1.49]})  # a kernel's noise: within 0.08
    with pytest.raises(BundleError, match=r"classifier_logits of case 0 differs by up to 0.2"):
        check({"near zero": [0.29, -0.06], "confident": [1.6, -1.5]})  # another model's answer


def test_pretraining_graph_that_disagrees_is_refused(bundle: Path) -> None:
    scale_weights(bundle / "pretraining.onnx", 0.5)
    rehash(bundle, "pretraining.onnx")
    with pytest.raises(BundleError, match=r"pretraining.onnx disagrees with reference.json"):
        Engine.load(bundle)


def test_a_bundle_without_reference_still_loads_but_cannot_tell(tiny_bundle: Path, tmp_path: Path) -> None:
    """Bundles made before the reference self-test load as before; the same damage goes unseen."""
    old = copy_bundle(tiny_bundle, tmp_path / "old", without=(REFERENCE_FILE,))  # as exported before it
    assert REFERENCE_FILE not in load_manifest(old)["files"]
    scale_weights(old / "classifier.onnx", 3.0)
    rehash(old, "classifier.onnx")
    assert Engine.load(old).classify(["a good movie"])[0][0]["label"] in ("negative", "positive")


def test_swapped_tokenizer_is_refused(bundle: Path, other_tokenizer: Tokenizer) -> None:
    (bundle / "tokenizer.model").write_bytes(other_tokenizer.path.read_bytes())
    rehash(bundle, "tokenizer.model")
    with pytest.raises(BundleError, match=r"tokenizer.model is not the tokenizer the model was trained with"):
        Engine.load(bundle)
    # with the recorded sha256 rewritten too, the reference's token ids still tell
    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    edit_manifest(bundle, sources={**info["sources"], "tokenizer_sha256": other_tokenizer.checksum})
    with pytest.raises(BundleError, match=r"tokenizer.model encodes reference.json's case 0 differently"):
        Engine.load(bundle)


def test_tokenizer_of_another_size_is_refused(bundle: Path, tmp_path: Path) -> None:
    from training.tokenizer_train import train_tokenizer

    train_tokenizer([generate_corpus(tmp_path / "c.txt", documents=60)], tmp_path / "tok", vocab_size=150)
    (bundle / "tokenizer.model").write_bytes((tmp_path / "tok" / "tokenizer.model").read_bytes())
    rehash(bundle, "tokenizer.model")
    edit_manifest(bundle, sources={})
    with pytest.raises(
        BundleError, match=r"tokenizer.model has 150 pieces but the model's vocabulary has 160"
    ):
        Engine.load(bundle)


def test_labels_that_do_not_fit_the_classifier_are_refused(bundle: Path) -> None:
    edit_manifest(bundle, label_names=["negative", "neutral", "positive"])
    with pytest.raises(BundleError, match=r"classifier.onnx has 2 outputs but bundle.json names 3 labels"):
        Engine.load(bundle)


def test_newer_format_is_refused(bundle: Path) -> None:
    edit_manifest(bundle, format_version=2)
    with pytest.raises(BundleError, match=r"format version 2 is newer than this pocketbert supports \(1\)"):
        Engine.load(bundle)


def test_server_refuses_to_start_on_a_damaged_bundle(bundle: Path, tmp_path: Path) -> None:
    """`python -m app.serve`: exit status 2 and one line naming the bundle, the file and the reason."""
    scale_weights(bundle / "classifier.onnx", 3.0)
    rehash(bundle, "classifier.onnx")
    env = {"PATH": "/usr/bin:/bin", "POCKETBERT_ORT_THREADS": "1", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "app.serve", "--bundles", str(bundle), "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"pocketbert: cannot start: bundle {bundle}: classifier.onnx disagrees")
    assert "Traceback" not in result.stderr


# --- the reference self-test itself -----------------------------------------------------------------------
def test_reference_is_listed_with_its_checksum_and_passes(tiny_bundle: Path, tmp_path: Path) -> None:
    fresh = copy_bundle(tiny_bundle, tmp_path / "fresh")
    path = write_reference(fresh)
    info = load_manifest(fresh)  # checksums verified, reference.json among them
    assert path == fresh / REFERENCE_FILE and REFERENCE_FILE in info["files"]
    reference = json.loads(path.read_text(encoding="utf-8"))
    cases = reference["cases"]
    assert [c["text"] for c in cases][1] == "오늘은 날씨가 [MASK] 좋다." and cases[2]["pair"]
    assert {"input_ids", "mlm_logits", "nsp_logits", "classifier_logits"} <= set(cases[0])
    assert "attentions" in cases[0] and len(cases[2]["mlm_positions"]) == 3  # masks in both sentences
    engine = Engine.load(fresh)  # runs the self-test
    # the recorded logits are the graph's own: recompute one by hand
    batch = engine.encode([cases[0]["text"]])
    logits = engine.run_classifier(batch)[0]
    np.testing.assert_allclose(cases[0]["classifier_logits"], logits, rtol=1e-6)


def test_reference_changed_after_export_is_refused_by_its_checksum(bundle: Path) -> None:
    reference = json.loads((bundle / REFERENCE_FILE).read_text(encoding="utf-8"))
    reference["cases"][0]["nsp_logits"] = [9.0, -9.0]
    (bundle / REFERENCE_FILE).write_text(json.dumps(reference), encoding="utf-8")
    with pytest.raises(BundleError, match="reference.json changed since export"):
        Engine.load(bundle)
    rehash(bundle, REFERENCE_FILE)  # a consistent lie: the graph disagrees with it
    with pytest.raises(BundleError, match="pretraining.onnx disagrees with reference.json: nsp_logits"):
        Engine.load(bundle)


# --- bundles with fewer graphs, and languages -----------------------------------------------------------
def test_a_pretraining_only_bundle_serves_fill_mask_and_next_sentence(pretraining_only_bundle: Path) -> None:
    engine = Engine.load(pretraining_only_bundle)
    assert engine.tasks == ["fill-mask", "next-sentence"] and engine.classifier is None
    assert engine.fill_mask(["a [MASK]."], top_k=1)[0][0][0]["token_str"]
    assert 0 <= engine.next_sentence([("a", "b")])[0]["score"] <= 1
    with pytest.raises(RuntimeError, match="has no classifier.onnx"):
        engine.classify(["a"])


def test_a_bundle_must_list_its_pretraining_graph(bundle: Path) -> None:
    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    edit_manifest(bundle, files={k: v for k, v in info["files"].items() if k != "pretraining.onnx"})
    with pytest.raises(BundleError, match="bundle.json does not list pretraining.onnx"):
        Engine.load(bundle)


class PieceList:
    """A tokenizer stand-in: detect_language only reads pieces."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]", *pieces]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def id_to_token(self, index: int) -> str:
        return self.pieces[index]


def test_language_is_recorded_or_guessed_from_the_vocabulary(bundle: Path) -> None:
    assert detect_language(PieceList(["▁the", "▁cat", "s", "▁영화", "는"])) == "ko"  # 2 of 5 Hangul
    assert detect_language(PieceList(["▁the", "▁cat", "s", "ing", "ed", "▁영화"])) == "en"  # 1 of 6
    assert Engine.load(bundle).language == detect_language(Tokenizer(bundle / "tokenizer.model"))
    edit_manifest(bundle, language="en")
    assert Engine.load(bundle).language == "en"
