"""Torch -> ONNX for the three graphs of a bundle, and the onnxruntime optimizer / INT8 quantizer steps.

Which exporter: torch.onnx.export's TorchScript path (dynamo=False). Its graph of the eager attention
(MatMul -> Div -> Add mask -> Softmax -> MatMul) is what onnxruntime's BERT optimizer recognises:
every layer fuses into Attention, SkipLayerNormalization x2 and BiasGelu, the embeddings into
EmbedLayerNormalization. Measured with torch 2.13 / onnxruntime 1.32 on a 2-layer model: the dynamo
exporter (onnxscript 0.7) fuses EmbedLayerNormalization, SkipLayerNormalization and BiasGelu but no
Attention, with eager attention and with scaled_dot_product_attention alike; the TorchScript exporter
fuses Attention from both (it decomposes SDPA itself). The export still uses eager copies of the
models: one explicit pattern for every graph, and the attention-map graph needs the probabilities.

`optimize` then splits each SkipLayerNormalization back into Add + the standard LayerNormalization,
whose onnxruntime kernel is the faster one (see `unfuse_skip_layer_norm`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from onnx.external_data_helper import set_external_data
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from torch import nn

from model.bert import BertForPreTraining, BertForSequenceClassification

OPSET = 17  # LayerNormalization is a standard op from 17 on
ENCODER_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
# What `optimize` reports: the fused operators, and the standard LayerNormalization it leaves in place of
# each SkipLayerNormalization (the MLM head's own layer norm counts too).
FUSED_OPS = ("Attention", "EmbedLayerNormalization", "LayerNormalization", "BiasGelu")


def with_eager_attention(model: nn.Module) -> nn.Module:
    """A copy of the model (eval mode) whose attention is the explicit, fusable, map-returning form."""
    config = copy.deepcopy(model.config)
    config.attn_implementation = "eager"
    if isinstance(model, BertForSequenceClassification):
        eager: nn.Module = BertForSequenceClassification(config, model.num_labels)
    else:
        eager = BertForPreTraining(config)
    eager.load_state_dict(model.state_dict())
    return eager.eval()


class PretrainingGraph(nn.Module):
    """MLM logits only at masked_positions (B, P) and NSP logits: the fill-mask / NSP fast path."""

    def __init__(self, model: BertForPreTraining) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores this mode afterwards: it must not be training (dropout)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_positions):
        out = self.model(input_ids, token_type_ids, attention_mask, masked_positions=masked_positions)
        return out.mlm_logits, out.nsp_logits


class ClassifierGraph(nn.Module):
    def __init__(self, model: BertForSequenceClassification) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores this mode afterwards: it must not be training (dropout)

    def forward(self, input_ids, token_type_ids, attention_mask):
        return self.model(input_ids, token_type_ids, attention_mask).logits


class AttentionGraph(nn.Module):
    """The encoder's attention probabilities stacked to (L, B, heads, T, T) for the web demo.

    A separate graph, because the fused Attention op of the fast graphs cannot output them.
    """

    def __init__(self, model: BertForPreTraining) -> None:
        super().__init__()
        self.bert = model.bert
        self.eval()

    def forward(self, input_ids, token_type_ids, attention_mask):
        _, _, attentions = self.bert(input_ids, token_type_ids, attention_mask, output_attentions=True)
        return torch.stack(attentions)


@dataclass
class GraphSpec:
    """One graph of a bundle: the module to trace, its input and output names, dynamic output axes."""

    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    dynamic_outputs: dict[str, dict[int, str]] = field(default_factory=dict)


def bundle_graphs(
    pretraining: BertForPreTraining, classifier: BertForSequenceClassification | None
) -> dict[str, GraphSpec]:
    """The graphs of a bundle (no classifier graph without a classifier), traced from eager-attention
    copies of the models."""
    eager_pre = with_eager_attention(pretraining)
    graphs = {
        "pretraining": GraphSpec(
            PretrainingGraph(eager_pre),
            [*ENCODER_INPUTS, "masked_positions"],
            ["mlm_logits", "nsp_logits"],
            {"mlm_logits": {0: "batch", 1: "positions"}, "nsp_logits": {0: "batch"}},
        )
    }
    if classifier is not None:
        graphs["classifier"] = GraphSpec(
            ClassifierGraph(with_eager_attention(classifier)),
            ENCODER_INPUTS,
            ["logits"],
            {"logits": {0: "batch"}},
        )
    graphs["attention"] = GraphSpec(
        AttentionGraph(eager_pre),
        ENCODER_INPUTS,
        ["attentions"],
        {"attentions": {1: "batch", 3: "sequence", 4: "sequence"}},
    )
    return graphs


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    dynamic_outputs: dict[str, dict[int, str]],
) -> None:
    """torch.onnx.export (TorchScript exporter) with dynamic batch and sequence axes on every input."""
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    if "masked_positions" in input_names:
        dynamic_axes["masked_positions"] = {0: "batch", 1: "positions"}
    dynamic_axes.update(dynamic_outputs)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; parity is checked afterwards
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def optimize(
    path: Path,
    out: Path,
    num_heads: int,
    hidden_size: int,
    fuse_attention: bool = True,
    split_skip_layer_norm: bool = True,
) -> dict[str, int]:
    """onnxruntime's transformer optimizer for BERT, then each SkipLayerNormalization split back into
    Add + LayerNormalization (`unfuse_skip_layer_norm`); returns the counts of FUSED_OPS in the result.
    fuse_attention=False keeps attention as plain MatMul / Softmax ops, split_skip_layer_norm=False the
    fused layer norms (both for bench/int8_variants.py)."""
    options = FusionOptions("bert")
    options.enable_attention = fuse_attention
    # opt_level=0: only the Python fusions; onnxruntime applies its own graph optimizations at load time.
    model = optimize_model(
        str(path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
        optimization_options=options,
    )
    if split_skip_layer_norm:  # after the fusion, not instead: the embeddings' fusion is found only beside it
        unfuse_skip_layer_norm(model.model)
    model.save_model_to_file(str(out))
    return op_counts(model.model, FUSED_OPS)


def op_counts(model: onnx.ModelProto, op_types: tuple[str, ...]) -> dict[str, int]:
    counts = {op: 0 for op in op_types}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def unfuse_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Replace every SkipLayerNormalization (input + skip [+ bias], then layer norm) by Add nodes and
    the standard LayerNormalization, in place; returns how many were replaced.

    Why: onnxruntime's CPU kernel for the fused op is the slow one. Measured with onnxruntime 1.32 on a
    (32, 64, 256) tensor, one thread: SkipLayerNormalization 2.66 ms, Add + Add + LayerNormalization
    0.56 ms; in the INT8 classifier at batch 32 the fused op took 23% of the time. Split, the graphs
    run 1.07-1.30x faster at batch 1, 8 and 32 (bench/int8_variants.py: `fused_skip_layer_norm`). The
    runtime keeps onnxruntime from fusing them again at load (model/runtime.py, DISABLED_FUSIONS).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < OPSET and any(node.op_type == "SkipLayerNormalization" for node in model.graph.node):
        raise ValueError(f"LayerNormalization needs opset {OPSET}; this graph imports opset {opset}")
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in model.graph.node:  # graph order is topological; each replacement keeps its place
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = [*node.input, "", "", ""][:5]
        output, mean, inv_std, total = [*node.output, "", "", ""][:4]
        if mean or inv_std:
            raise ValueError(f"{node.name}: SkipLayerNormalization's mean / inv_std outputs are in use")
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        summed = (total or f"{node.name}_sum") if not bias else f"{node.name}_input_skip"
        nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{node.name}_add"))
        if bias:
            biased = total or f"{node.name}_sum"
            nodes.append(helper.make_node("Add", [summed, bias], [biased], name=f"{node.name}_add_bias"))
            summed = biased
        norm_inputs = [summed, gamma, *([beta] if beta else [])]
        nodes.append(
            helper.make_node(
                "LayerNormalization", norm_inputs, [output], name=node.name, axis=-1, epsilon=epsilon
            )
        )
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return replaced


def quantize_int8(
    path: Path,
    out: Path,
    weight_type: QuantType = QuantType.QInt8,
    per_channel: bool = False,
    op_types: list[str] | None = None,
) -> None:
    """Dynamic INT8 quantization: int8 weights, activations quantized per batch at run time.
    The defaults are the export's; the others are the alternatives bench/int8_variants.py times
    (uint8 weights, a scale per output channel, only some op types quantized)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" warning
    try:
        # Fused contrib ops (Attention, EmbedLayerNormalization) defeat ONNX shape inference: their
        # outputs' type must be given. Everything here is float32.
        quantize_dynamic(
            str(path),
            str(out),
            weight_type=weight_type,
            per_channel=per_channel,
            op_types_to_quantize=op_types,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


SHARED_MIN_BYTES = 1024  # smaller initializers (biases, layer norms) stay inside their graph
SHARED_ALIGN = 64  # each tensor starts at a multiple of this offset


def save_with_shared_weights(graphs: dict[str, Path], out_dir: Path, weights_name: str) -> dict[str, int]:
    """Write each graph to out_dir/NAME.onnx with its large initializers moved into one weights file,
    each distinct tensor (by its bytes) stored once.

    Why: the pretraining and attention graphs are the same pretrained encoder, so inline they hold the same
    embedding table and feed-forward matrices twice (3.4 of the Korean bundle's 15.4 MB). onnxruntime
    reads ONNX external data (file, offset, length) relative to the graph's folder: nothing else changes
    for the loader. Returns the bytes written and the bytes the sharing saved.
    """
    placed: dict[bytes, tuple[int, int]] = {}  # sha256 of the bytes -> (offset, length) in the file
    written = saved = 0
    with open(out_dir / weights_name, "wb") as weights:
        for name, path in graphs.items():
            model = onnx.load(str(path))
            for tensor in model.graph.initializer:
                data = tensor.raw_data
                if len(data) < SHARED_MIN_BYTES:
                    continue
                key = hashlib.sha256(data).digest()
                if key in placed:
                    saved += len(data)
                else:
                    weights.write(b"\0" * (-weights.tell() % SHARED_ALIGN))
                    placed[key] = (weights.tell(), len(data))
                    weights.write(data)
                    written += len(data)
                offset, length = placed[key]
                set_external_data(tensor, weights_name, offset=offset, length=length)
                tensor.ClearField("raw_data")
            (out_dir / f"{name}.onnx").write_bytes(model.SerializeToString())
    return {"weights_bytes": written, "shared_bytes_saved": saved}
