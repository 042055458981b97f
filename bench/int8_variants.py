"""Benchmark: the classifier graph shapes onnxruntime offers, against the one the export ships.

    python bench/int8_variants.py                 # random 3-layer/256/4-head/vocab-8000 classifier
    python bench/int8_variants.py --threads 1 --rounds 3

Why: `ratio_b32` (bench/engine.py) is bounded by how fast onnxruntime runs the INT8 graph on this CPU,
and the export fixes one shape of that graph: the BERT fusions (Attention, EmbedLayerNormalization,
BiasGelu; the skip layer norms split back into Add + LayerNormalization), then dynamic INT8 with signed
weights and one scale per tensor. This script builds the
alternatives from the same fp32 graph and times them in interleaved rounds beside the shipped shape and
PyTorch eager, at batch 1 and 32 (length 64, no padding, as bench/engine.py), each in a session made
as the runtime makes them (model/runtime.make_session):

- `shipped`: fused, then INT8 (what `pocketbert export --optimize --quantize int8` writes)
- `fused_skip_layer_norm`: as shipped, with onnxruntime's SkipLayerNormalization kept (the export's
  shape before it split them)
- `no_attention_fusion`: the other fusions, attention left as MatMul / Softmax ops, then INT8
- `unfused`: INT8 on the plain exported graph
- `fp32_attention`: fused, only the MatMuls quantized (the Attention op stays fp32)
- `uint8_weights`: fused, INT8 with unsigned weights (the u8u8 kernels instead of u8s8)
- `per_channel`: fused, INT8 with one weight scale per output channel

Besides speed, `max_logit_diff` says how far each graph's logits are from the fp32 graph's on the timed
batches (the price of a shape in accuracy). The last line is one JSON object; `vs_shipped` gives each
variant's throughput over the shipped graph's, `vs_torch` over PyTorch eager's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import add_timing_arguments, measure  # bench/engine.py, beside this script

from model.bert import BertForPreTraining, BertForSequenceClassification
from model.config import BertConfig
from model.runtime import make_session
from training import onnx_utils

SEQ_LEN = 64
BATCHES = (1, 32)
VARIANTS = (
    "shipped",
    "fused_skip_layer_norm",
    "no_attention_fusion",
    "unfused",
    "fp32_attention",
    "uint8_weights",
    "per_channel",
)


def export_fp32(classifier: BertForSequenceClassification, work: Path) -> Path:
    """The classifier graph as the export traces it (eager attention, dynamic batch and length)."""
    pretraining = BertForPreTraining(classifier.config).eval()
    spec = onnx_utils.bundle_graphs(pretraining, classifier)["classifier"]
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in spec.inputs)
    path = work / "fp32.onnx"
    onnx_utils.export_graph(spec.module, example, spec.inputs, spec.outputs, path, spec.dynamic_outputs)
    return path


def build_variants(fp32: Path, config: BertConfig, work: Path) -> dict[str, Path]:
    """Each variant's graph file, all from the same fp32 graph."""
    heads, hidden = config.num_attention_heads, config.hidden_size
    fused, no_attention = work / "fused.onnx", work / "no_attention.onnx"
    fused_skip = work / "fused_skip_layer_norm.fp32.onnx"
    onnx_utils.optimize(fp32, fused, heads, hidden)
    onnx_utils.optimize(fp32, no_attention, heads, hidden, fuse_attention=False)
    onnx_utils.optimize(fp32, fused_skip, heads, hidden, split_skip_layer_norm=False)
    recipes = {
        "shipped": (fused, {}),
        "fused_skip_layer_norm": (fused_skip, {}),
        "no_attention_fusion": (no_attention, {}),
        "unfused": (fp32, {}),
        "fp32_attention": (fused, {"op_types": ["MatMul"]}),
        "uint8_weights": (fused, {"weight_type": QuantType.QUInt8}),
        "per_channel": (fused, {"per_channel": True}),
    }
    graphs = {}
    for name, (source, options) in recipes.items():
        graphs[name] = work / f"{name}.onnx"
        onnx_utils.quantize_int8(source, graphs[name], **options)
    return graphs


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def feeds_for(batch_size: int, vocab_size: int, input_names: list[str]) -> dict[str, np.ndarray]:
    """A full-length batch of random ordinary pieces (ids past the specials)."""
    ids = np.random.default_rng(batch_size).integers(7, vocab_size, (batch_size, SEQ_LEN), dtype=np.int64)
    every = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
    return {name: every[name] for name in input_names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_arguments(parser)
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the random model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=args.vocab_size)  # 3 layers, 256, 4 heads: the shipped shape
    classifier = BertForSequenceClassification(config, num_labels=2).eval()

    report: dict = {"bench": "int8_variants", "threads": args.threads, "seq_len": SEQ_LEN}
    with tempfile.TemporaryDirectory(prefix="pocketbert-variants-") as tmp:
        work = Path(tmp)
        print("[bench] exporting and building the variants", file=sys.stderr)
        fp32 = export_fp32(classifier, work)
        graphs = build_variants(fp32, config, work)
        reference = make_session(fp32, args.threads)
        sessions = {name: make_session(path, args.threads) for name, path in graphs.items()}
        names = [i.name for i in reference.get_inputs()]
        report["attention_op"] = {
            name: sorted(op_types(p) & {"Attention", "QAttention"}) for name, p in graphs.items()
        }
        for batch_size in BATCHES:
            print(f"[bench] batch {batch_size}", file=sys.stderr)
            feeds = feeds_for(batch_size, config.vocab_size, names)
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            expected = reference.run(None, feeds)[0]

            def torch_eager(t=tensors) -> object:
                with torch.inference_mode():
                    return classifier(**t).logits

            fns = {name: (lambda s=s, f=feeds: s.run(None, f)) for name, s in sessions.items()}
            fns["torch_eager"] = torch_eager
            rates = measure(fns, batch_size, args.rounds, args.seconds)
            report[f"b{batch_size}"] = {
                "sequences_per_s": rates,
                "vs_shipped": {n: round(rates[n] / rates["shipped"], 2) for n in VARIANTS},
                "vs_torch": {n: round(rates[n] / rates["torch_eager"], 2) for n in VARIANTS},
                "max_logit_diff": {
                    n: round(float(np.abs(sessions[n].run(None, feeds)[0] - expected).max()), 4)
                    for n in VARIANTS
                },
            }
    fastest = {
        f"b{b}": max(VARIANTS, key=lambda n, b=b: report[f"b{b}"]["sequences_per_s"][n]) for b in BATCHES
    }
    report["fastest"] = fastest
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
