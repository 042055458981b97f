"""bench/int8_variants.py builds the graph shapes it claims to time, and each answers like the fp32 graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import load_bench

from model.bert import BertForSequenceClassification
from model.config import BertConfig
from model.runtime import make_session


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> tuple[object, Path, dict[str, Path], BertConfig]:
    bench = load_bench("int8_variants")
    work = tmp_path_factory.mktemp("variants")
    torch.manual_seed(0)
    # two layers: the optimizer leaves the last layer's attention unfused (it runs only the [CLS] query;
    # tests/test_export.py), so one layer must remain to fuse
    config = BertConfig(
        vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    classifier = BertForSequenceClassification(config, num_labels=2).eval()
    fp32 = bench.export_fp32(classifier, work)
    return bench, fp32, bench.build_variants(fp32, config, work), config


def test_each_variant_has_the_shape_its_name_says(variants) -> None:
    bench, fp32, graphs, _ = variants
    assert set(graphs) == set(bench.VARIANTS)
    ops = {name: bench.op_types(path) for name, path in graphs.items()}
    for name in ("shipped", "uint8_weights", "per_channel"):  # fused attention, quantized, split layer norms
        assert "QAttention" in ops[name] and "LayerNormalization" in ops[name], name
        assert "SkipLayerNormalization" not in ops[name], name
    assert {"QAttention", "SkipLayerNormalization"} <= ops["fused_skip_layer_norm"]
    assert "Attention" in ops["fp32_attention"] and "QAttention" not in ops["fp32_attention"]
    assert not ops["no_attention_fusion"] & {"Attention", "QAttention"}
    assert "SkipLayerNormalization" not in ops["unfused"] | ops["no_attention_fusion"]
    # every variant is quantized: its weight matrices are stored as 8-bit integers
    assert all({"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"} & o for o in ops.values())
    weights = {name: quantized_weights(path) for name, path in graphs.items()}
    assert {t.data_type for t in weights["shipped"]} == {onnx.TensorProto.INT8}
    assert {t.data_type for t in weights["uint8_weights"]} == {onnx.TensorProto.UINT8}
    # one scale per tensor, except per_channel's: one per output column
    assert all(scale_sizes(graphs[n]) == {1} for n in ("shipped", "uint8_weights"))
    assert max(scale_sizes(graphs["per_channel"])) > 1


def matrix_initializers(path: Path, suffix: str) -> list[onnx.TensorProto]:
    """The quantizer's WEIGHT_quantized / WEIGHT_scale tensors of the matrix products (the embedding
    tables are quantized for their Gather / EmbedLayerNormalization ops, as uint8 whatever the setting)."""
    initializers = onnx.load(str(path)).graph.initializer
    return [t for t in initializers if t.name.endswith(suffix) and "embeddings" not in t.name]


def quantized_weights(path: Path) -> list[onnx.TensorProto]:
    return matrix_initializers(path, "_quantized")


def scale_sizes(path: Path) -> set[int]:
    return {int(np.prod(t.dims)) for t in matrix_initializers(path, "_scale")}


def test_every_variant_answers_like_the_fp32_graph(variants) -> None:
    bench, fp32, graphs, config = variants
    reference = make_session(fp32, 1)
    names = [i.name for i in reference.get_inputs()]
    feeds = bench.feeds_for(8, config.vocab_size, names)
    expected = reference.run(None, feeds)[0]
    for name, path in graphs.items():
        got = make_session(path, 1).run(None, feeds)[0]
        assert got.shape == expected.shape == (8, 2)
        np.testing.assert_allclose(got, expected, atol=0.05, err_msg=name)
