"""`pocketbert export`: bundle contents, torch/onnxruntime parity, fusions, INT8 checks, verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model.bundle import BundleError, load_manifest
from model.checkpoint import load_model
from model.engine import Engine
from model.tokenizer import file_sha256
from training.errors import CLIError
from training.export import ParityError, export_bundle, random_batches
from training.onnx_utils import SHARED_MIN_BYTES, unfuse_skip_layer_norm

BUNDLE_FILES = {
    "bundle.json",
    "tokenizer.model",
    "pretraining.onnx",
    "classifier.onnx",
    "attention.onnx",
    "reference.json",
    "weights.bin",
}


@pytest.fixture(scope="module")
def optimized_int8_bundle(tmp_path_factory, tiny_checkpoints, tiny_corpus):
    """An --optimize --quantize int8 bundle with both INT8 checks run on small eval files."""
    tmp = tmp_path_factory.mktemp("int8")
    lines = [line for line in tiny_corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    eval_text = tmp / "heldout.txt"
    eval_text.write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    eval_dev = tmp / "dev.tsv"  # beside the bundle folder: test_int8_checks_are_run_and_recorded reads it
    eval_dev.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(lines[:30])), encoding="utf-8"
    )
    out = tmp / "int8"
    info = export_bundle(
        tiny_checkpoints.pretrained,
        tiny_checkpoints.classifier,
        tiny_checkpoints.tokenizer_dir,
        out,
        quantize="int8",
        optimize=True,
        max_length=64,
        eval_text=eval_text,
        eval_dev=eval_dev,
        eval_task="sst2",
        threads=1,
    )
    return out, info


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def test_bundle_contents_and_manifest(tiny_bundle: Path, tiny_checkpoints) -> None:
    assert {p.name for p in tiny_bundle.iterdir()} == BUNDLE_FILES
    assert tiny_bundle.stat().st_mode & 0o777 == 0o755  # readable by a server running as another user
    info = json.loads((tiny_bundle / "bundle.json").read_text(encoding="utf-8"))
    assert info["format_version"] == 1
    assert info["name"] == "tiny"
    assert info["max_length"] == 64
    assert info["label_names"] == ["negative", "positive"]
    assert info["special_tokens"]["[MASK]"] == 6 and info["special_tokens"]["[PAD]"] == 0
    assert info["config"]["hidden_size"] == 32 and info["config"]["num_hidden_layers"] == 2
    assert info["metrics"]["pretraining"] == {"mlm_accuracy": 0.1, "nsp_accuracy": 0.5}
    assert info["metrics"]["finetuning"] == {"accuracy_mean": 50.0}
    assert {"torch", "onnx", "onnxruntime"} <= set(info["versions"])
    assert set(info["files"]) == BUNDLE_FILES - {"bundle.json"}
    for name, digest in info["files"].items():
        assert file_sha256(tiny_bundle / name) == digest
    # a third of the tiny corpus is Korean, so more than a fifth of its pieces hold Hangul: "ko"
    assert info["language"] == "ko"
    reference = json.loads((tiny_bundle / "reference.json").read_text(encoding="utf-8"))
    assert reference["cases"], "export records the graphs' outputs for the load-time self-test"
    assert {k: v for k, v in info["export"].items() if k not in ("graphs", "weights")} == {
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "opset": 17,
        "optimized": False,
        "fusions": None,
        "quantization": None,
    }
    assert info["export"]["graphs"]["pretraining.onnx"]["outputs"] == ["mlm_logits", "nsp_logits"]
    assert all(v <= 1e-4 for v in info["checks"]["parity"]["fp32"].values())
    assert info["checks"]["int8"] == {"run": False, "reason": "not quantized"}


def test_large_weights_are_stored_once_beside_the_graphs(tiny_bundle: Path) -> None:
    """The pretraining and attention graphs are the same pretrained encoder: weights.bin holds each of
    their large tensors once, and every graph points into it (ONNX external data)."""
    info = load_manifest(tiny_bundle)
    inline = 0
    for name in ("pretraining.onnx", "classifier.onnx", "attention.onnx"):
        bare = onnx.load(str(tiny_bundle / name), load_external_data=False).graph.initializer
        locations = {e.value for t in bare for e in t.external_data if e.key == "location"}
        assert locations == {"weights.bin"}, name
        loaded = onnx.load(str(tiny_bundle / name)).graph.initializer  # with the external data read in
        inline += sum(len(t.raw_data) for t in loaded if len(t.raw_data) >= SHARED_MIN_BYTES)
    weights = info["export"]["weights"]
    embedding = info["config"]["vocab_size"] * info["config"]["hidden_size"] * 4  # fp32 word embeddings
    assert weights["weights_bytes"] + weights["shared_bytes_saved"] == inline
    assert weights["shared_bytes_saved"] >= embedding  # at least the table both pretrained graphs hold
    assert weights["weights_bytes"] <= (tiny_bundle / "weights.bin").stat().st_size < inline


def test_a_bundle_without_its_weights_file_is_refused_by_name(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "weights.bin").unlink()
    with pytest.raises(BundleError, match=r"missing file\(s\) weights.bin"):
        Engine.load(bundle)


def test_graph_inputs_have_dynamic_batch_and_sequence(tiny_bundle: Path) -> None:
    graph = onnx.load(str(tiny_bundle / "pretraining.onnx")).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask", "masked_positions"}
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in tensor_type.shape.dim)  # symbolic, not fixed, sizes
    assert [o.name for o in graph.output] == ["mlm_logits", "nsp_logits"]


def test_onnxruntime_matches_torch_on_padded_two_segment_batches(tiny_bundle: Path, tiny_checkpoints) -> None:
    pretraining, _ = load_model(tiny_checkpoints.pretrained)
    classifier, _ = load_model(tiny_checkpoints.classifier)
    engine = Engine.load(tiny_bundle, intra_op_threads=1)
    batches = random_batches(pretraining.config.vocab_size, 64, seed=123)
    assert (batches[0]["attention_mask"] == 0).any() and (batches[0]["token_type_ids"] == 1).any()
    for feeds in batches:
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        encoder = {k: inputs[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.inference_mode():
            expected = pretraining(**encoder, masked_positions=inputs["masked_positions"])
            expected_cls = classifier(**encoder).logits
        mlm, nsp = engine.pretraining.run(None, feeds)
        (logits,) = engine.classifier.run(None, {k: feeds[k] for k in encoder})
        assert np.abs(mlm - expected.mlm_logits.numpy()).max() <= 1e-4
        assert np.abs(nsp - expected.nsp_logits.numpy()).max() <= 1e-4
        assert np.abs(logits - expected_cls.numpy()).max() <= 1e-4


def test_export_refuses_a_bundle_that_fails_parity(tmp_path: Path, tiny_checkpoints, monkeypatch) -> None:
    from training import onnx_utils

    original = onnx_utils.export_graph

    def export_perturbed(module, *args, **kwargs):
        weight = list(module.parameters())[
            -1
        ]  # a head bias (a shift of the embeddings would be normalised away)
        with torch.no_grad():
            weight.add_(0.05)  # the graph now computes something torch (after restoring) does not
            try:
                original(module, *args, **kwargs)
            finally:
                weight.sub_(0.05)

    monkeypatch.setattr(onnx_utils, "export_graph", export_perturbed)
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"differs from torch by .* bundle not written"):
        export_bundle(
            tiny_checkpoints.pretrained, tiny_checkpoints.classifier, tiny_checkpoints.tokenizer_dir, out
        )
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its staging folder is left behind


def test_optimize_fuses_every_bert_pattern(optimized_int8_bundle) -> None:
    out, info = optimized_int8_bundle
    layers = info["config"]["num_hidden_layers"]
    for name in ("pretraining", "classifier"):
        fusions = info["export"]["fusions"][name]
        # the last layer attends from [CLS] and the masked positions only (BertModel's
        # output_positions): queries and keys differ, a pattern the Attention fusion does not match
        assert fusions["Attention"] == layers - 1
        assert fusions["EmbedLayerNormalization"] == 1
        # onnxruntime's SkipLayerNormalization is split back into Add + LayerNormalization (the faster
        # kernel); the MLM head's own layer norm counts in the pretraining graph
        assert fusions["LayerNormalization"] == 2 * layers + (name == "pretraining")
        assert fusions["BiasGelu"] >= layers
        assert info["checks"]["parity"]["optimized_fp32"][name] <= 1e-4
        graph = onnx.load(str(out / f"{name}.onnx")).graph
        ops = {node.op_type for node in graph.node}
        # quantize_dynamic turns the fused ops into their INT8 forms and weight MatMuls into MatMulInteger;
        # the MatMuls left are the last layer's scores and context (activation x activation)
        assert {"QAttention", "QEmbedLayerNormalization", "LayerNormalization", "MatMulInteger"} <= ops
        assert not {"Attention", "SkipLayerNormalization"} & ops
        weights = {tensor.name for tensor in graph.initializer}
        float_matmuls = [node for node in graph.node if node.op_type == "MatMul"]
        assert len(float_matmuls) == 2 and not any(set(node.input) & weights for node in float_matmuls)
    assert info["export"]["quantization"] == "int8"
    # attention.onnx stays unfused (its Softmax outputs are the maps) but its weights are INT8 too
    ops = {node.op_type for node in onnx.load(str(out / "attention.onnx")).graph.node}
    assert "Softmax" in ops and "MatMulInteger" in ops and "Attention" not in ops


def skip_layer_norm_graph(with_bias: bool, with_beta: bool, sum_output: bool) -> onnx.ModelProto:
    """One SkipLayerNormalization (onnxruntime's contrib op) on (batch, seq, 8) inputs; optionally its
    input + skip + bias sum as a second graph output."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(8).astype(np.float32) for name in ("gamma", "beta", "bias")}
    inputs = ["x", "skip", "gamma", "beta" if with_beta else "", "bias" if with_bias else ""]
    node = helper.make_node(
        "SkipLayerNormalization",
        inputs,
        ["y", "", "", "total"] if sum_output else ["y"],
        name="ln",
        domain="com.microsoft",
        epsilon=1e-5,
    )
    shape = ["batch", "seq", 8]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if sum_output:
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        [node],
        "skip_ln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        outputs,
        [numpy_helper.from_array(value, name) for name, value in params.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize(
    "with_bias, with_beta, sum_output", [(True, True, False), (False, True, True), (True, False, True)]
)
def test_split_skip_layer_norm_computes_what_the_fused_op_did(
    tmp_path: Path, with_bias: bool, with_beta: bool, sum_output: bool
) -> None:
    from model.runtime import make_session

    fused = skip_layer_norm_graph(with_bias, with_beta, sum_output)
    split = skip_layer_norm_graph(with_bias, with_beta, sum_output)
    assert unfuse_skip_layer_norm(split) == 1
    assert [node.op_type for node in split.graph.node] == ["Add"] * (1 + with_bias) + ["LayerNormalization"]
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((3, 5, 8)).astype(np.float32) * 4 for name in ("x", "skip")}
    answers = []
    for name, model in (("fused", fused), ("split", split)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        answers.append(make_session(tmp_path / f"{name}.onnx", 1).run(None, feeds))
    for got, expected in zip(answers[1], answers[0], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(answers[1]) == 1 + sum_output


def test_split_skip_layer_norm_refuses_what_it_cannot_rewrite() -> None:
    model = skip_layer_norm_graph(True, True, False)
    model.graph.node[0].output.append("mean")
    with pytest.raises(ValueError, match="ln: SkipLayerNormalization's mean"):
        unfuse_skip_layer_norm(model)
    model = skip_layer_norm_graph(True, True, False)
    model.opset_import[0].version = 13  # the standard LayerNormalization exists from opset 17
    with pytest.raises(ValueError, match="LayerNormalization needs opset 17; this graph imports opset 13"):
        unfuse_skip_layer_norm(model)


def test_int8_checks_are_run_and_recorded(optimized_int8_bundle, tiny_checkpoints, tiny_tokenizer) -> None:
    out, info = optimized_int8_bundle
    fill_mask = info["checks"]["int8"]["fill_mask"]
    assert fill_mask["run"] and fill_mask["sentences"] == 40 and fill_mask["threshold"] == 0.95
    classifier = info["checks"]["int8"]["classifier"]
    assert classifier["run"] and classifier["examples"] == 30 and classifier["task"] == "sst2"
    # the accuracies, recomputed independently: torch's classifier for fp32, the served INT8 engine
    texts, labels = _eval_dev_rows(out.parent / "dev.tsv")
    model, _ = load_model(tiny_checkpoints.classifier)
    with torch.inference_mode():
        fp32_predictions = [
            int(model(torch.tensor([tiny_tokenizer.encode(t, max_length=64).input_ids])).logits.argmax())
            for t in texts
        ]
    int8_predictions = [
        ["negative", "positive"].index(r[0]["label"]) for r in Engine.load(out, 1).classify(texts)
    ]
    fp32_accuracy = 100 * sum(p == y for p, y in zip(fp32_predictions, labels, strict=True)) / 30
    int8_accuracy = 100 * sum(p == y for p, y in zip(int8_predictions, labels, strict=True)) / 30
    assert classifier["fp32_accuracy"] == pytest.approx(fp32_accuracy)
    assert classifier["int8_accuracy"] == pytest.approx(int8_accuracy)
    assert classifier["passed"] == (fp32_accuracy - int8_accuracy <= 0.5)
    assert load_manifest(out) == info  # what export returned is what it wrote


def _eval_dev_rows(path: Path) -> tuple[list[str], list[int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines], [int(line.split("\t")[1]) for line in lines]


class StubEngine:
    """One ordinary token per sentence ("[CLS] t [SEP]", t = int(text)); predicts guess(t) at the mask."""

    vocab_size = 20

    def __init__(self, guess) -> None:
        self.guess = guess

    def encode(self, texts: list[str]):
        from types import SimpleNamespace

        originals = [int(t) for t in texts]
        return SimpleNamespace(input_ids=np.array([[4, t, 5] for t in originals]), originals=originals)

    def run_pretraining(self, batch, positions: np.ndarray):
        assert (positions[:, 0] == 1).all() and (batch.input_ids[:, 1] == 6).all()  # [MASK] at the token
        logits = np.zeros((len(batch.originals), 1, self.vocab_size), dtype=np.float32)
        for row, original in enumerate(batch.originals):
            logits[row, 0, self.guess(original)] = 1.0
        return logits, np.zeros((len(batch.originals), 2), dtype=np.float32)


def test_fill_mask_agreement_on_a_hand_computed_case() -> None:
    from training.export import fill_mask_agreement

    reference = StubEngine(lambda t: t)  # always right
    candidate = StubEngine(lambda t: t if t % 2 == 0 else 7)  # right on 10 and 12, wrong on 11 and 13
    report = fill_mask_agreement(reference, candidate, ["10", "11", "12", "13"])
    assert report == {
        "sentences": 4,
        "top1_agreement": 0.5,
        "fp32_top1_accuracy": 1.0,
        "int8_top1_accuracy": 0.5,
        "passed": False,
        "threshold": 0.95,
    }


def test_classifier_accuracy_on_a_hand_computed_case() -> None:
    from types import SimpleNamespace

    from training.export import classifier_accuracy

    logits = {"a": [2.0, 0.0], "b": [0.0, 1.0], "c": [0.0, 3.0]}  # predicts 0, 1, 1
    engine = SimpleNamespace(
        encode=lambda texts: texts,
        run_classifier=lambda texts: np.array([logits[t] for t in texts]),
    )
    assert classifier_accuracy(engine, ["a", "b", "c"], [0, 0, 1]) == pytest.approx(100 * 2 / 3)


def test_int8_engine_stays_close_to_fp32(optimized_int8_bundle, tiny_bundle: Path) -> None:
    fp32, int8 = Engine.load(tiny_bundle, 1), Engine.load(optimized_int8_bundle[0], 1)
    texts = ["the cat sees the park.", "my friend likes a small house and the old tree."]
    a, b = fp32.classify(texts), int8.classify(texts)
    for x, y in zip(a, b, strict=True):
        assert {d["label"]: d["score"] for d in x} == pytest.approx(
            {d["label"]: d["score"] for d in y}, abs=0.02
        )


def test_existing_folder_needs_overwrite(tmp_path: Path, tiny_checkpoints) -> None:
    args = (tiny_checkpoints.pretrained, tiny_checkpoints.classifier, tiny_checkpoints.tokenizer_dir)
    out = tmp_path / "bundle"
    out.mkdir()
    export_bundle(*args, out)  # an empty folder is simply filled
    (out / "stale.txt").write_text("x")
    with pytest.raises(CLIError, match="already exists"):
        export_bundle(*args, out)
    export_bundle(*args, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"bundle"}


def test_wrong_checkpoint_kind_is_a_clear_error(tmp_path: Path, tiny_checkpoints) -> None:
    with pytest.raises(CLIError, match="expected a pretraining checkpoint"):
        export_bundle(
            tiny_checkpoints.classifier,
            tiny_checkpoints.classifier,
            tiny_checkpoints.tokenizer_dir,
            tmp_path / "b",
        )
    with pytest.raises(CLIError, match="no such checkpoint"):
        export_bundle(
            tmp_path / "nope.pt", tiny_checkpoints.classifier, tiny_checkpoints.tokenizer_dir, tmp_path / "b"
        )


def test_cli_export(tmp_path: Path, tiny_checkpoints, capsys) -> None:
    from training.cli import main

    out = tmp_path / "cli-bundle"
    argv = [
        "export",
        "--pretrained",
        str(tiny_checkpoints.pretrained),
        "--classifier",
        str(tiny_checkpoints.classifier),
        "--tokenizer",
        str(tiny_checkpoints.tokenizer_dir),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["bundle"] == str(out)
    assert load_manifest(out)["max_length"] == 64  # taken from the classifier checkpoint's metadata
    assert (
        main(
            [
                *argv[:-4],
                "--out",
                str(tmp_path / "x"),
                "--eval-dev",
                str(tmp_path / "missing.tsv"),
                "--quantize",
                "int8",
            ]
        )
        == 2
    )
    assert "--eval-dev" in (err := capsys.readouterr().err) and "missing.tsv: no such file" in err


# --- loading a bundle says exactly what is wrong --------------------------------------------------
def test_missing_file_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "classifier.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing file\(s\) classifier.onnx"):
        Engine.load(bundle)


def test_changed_file_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    with open(bundle / "pretraining.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="pretraining.onnx changed since export"):
        Engine.load(bundle)


def test_newer_format_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    info["format_version"] = 99
    (bundle / "bundle.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(BundleError, match="format version 99 is newer than this pocketbert supports"):
        Engine.load(bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="missing file bundle.json"):
        Engine.load(tmp_path)
    with pytest.raises(BundleError, match="no such folder"):
        Engine.load(tmp_path / "absent")


# --- a trainer's checkpoint.pt, and bundles without a classifier -------------------------------------
def test_export_from_a_training_checkpoint_without_a_classifier(
    tiny_pretrain_run: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys
) -> None:
    """`pocketbert export --pretrained run/checkpoint.pt` (no --classifier): a fill-mask bundle."""
    from training.cli import main

    out = tmp_path / "mlm"
    argv = ["export", "--pretrained", str(tiny_pretrain_run / "checkpoint.pt"), "--out", str(out)]
    assert main([*argv, "--tokenizer", str(tiny_tokenizer_dir), "--threads", "1"]) == 0
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES - {"classifier.onnx"}
    info = load_manifest(out)
    assert info["tasks"] == ["fill-mask", "next-sentence", "attention"]
    assert info["label_names"] == [] and info["classifier_config"] is None
    assert info["metrics"]["pretraining_step"] == 2
    engine = Engine.load(out, intra_op_threads=1)
    assert engine.tasks == info["tasks"] and engine.classifier is None
    [[predictions]] = engine.fill_mask(["the cat [MASK] the park."], top_k=3)
    assert len(predictions) == 3
    with pytest.raises(RuntimeError, match="no classifier.onnx"):
        engine.classify(["the cat"])
    # the graph holds the checkpoint's weights: the MLM logits are the torch model's
    model, _ = load_model(tiny_pretrain_run / "checkpoint.pt")
    batch = engine.encode(["the cat [MASK] the park."])
    positions = np.array([[3]])
    with torch.inference_mode():
        expected = model(
            *(
                torch.from_numpy(batch.as_dict()[k])
                for k in ("input_ids", "token_type_ids", "attention_mask")
            ),
            masked_positions=torch.from_numpy(positions),
        ).mlm_logits.numpy()
    assert np.abs(engine.run_pretraining(batch, positions)[0] - expected).max() <= 1e-4
    # a dev set to score needs the classifier
    capsys.readouterr()
    assert (
        main(
            [
                *argv[:-1],
                str(tmp_path / "x"),
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--eval-dev",
                str(out / "bundle.json"),
            ]
        )
        == 2
    )
    assert "--eval-dev scores the classifier" in capsys.readouterr().err


def test_export_refuses_an_existing_folder_before_any_work(
    tmp_path: Path, tiny_checkpoints, monkeypatch
) -> None:
    import training.export as export

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoints were read before the output folder was checked")

    monkeypatch.setattr(export, "_load_checkpoint", no_work)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "old.txt").write_text("x")
    with pytest.raises(CLIError, match="already exists"):
        export_bundle(tiny_checkpoints.pretrained, None, tiny_checkpoints.tokenizer_dir, tmp_path / "bundle")


def test_a_bad_eval_file_is_refused_before_the_graphs_are_built(
    tmp_path: Path, tiny_checkpoints, monkeypatch
) -> None:
    """The INT8 checks run at the end of an export; their files are read at its start."""
    import training.export as export

    def no_work(*args, **kwargs):
        raise AssertionError("the graphs were built before the eval files were read")

    monkeypatch.setattr(export, "_build_graphs", no_work)
    blank = tmp_path / "heldout.txt"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CLIError, match=f"{blank}: no sentences"):
        export_bundle(
            tiny_checkpoints.pretrained,
            None,
            tiny_checkpoints.tokenizer_dir,
            tmp_path / "bundle",
            quantize="int8",
            eval_text=blank,
        )
    assert not (tmp_path / "bundle").exists()


def test_manifest_writes_paths_under_home_as_tilde(tmp_path: Path, tiny_checkpoints, monkeypatch) -> None:
    """A shipped bundle.json records where its checkpoints came from without the builder's home folder."""
    home = tiny_checkpoints.pretrained.parent
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "bundle"
    checkpoints = (tiny_checkpoints.pretrained, tiny_checkpoints.classifier, tiny_checkpoints.tokenizer_dir)
    export_bundle(*checkpoints, out)
    sources = load_manifest(out)["sources"]
    assert sources["pretrained"] == f"~/{tiny_checkpoints.pretrained.relative_to(home)}"
    assert str(home) not in (out / "bundle.json").read_text(encoding="utf-8")
