"""Benchmark: the ONNX engine (fp32 plain and fused, INT8 fused) against PyTorch eager on the same weights.

    .venv/bin/python bench/engine.py                      # random 3-layer/256/4-head/vocab-8000 model
    .venv/bin/python bench/engine.py --checkpoint runs/en/pretrain/model.pt --classifier runs/en/best.pt \
        --tokenizer runs/en/tokenizer --eval-text heldout.txt --eval-dev sst2/dev.tsv

Sequences per second at batch 1 and 32 (length 64) for the classifier path (what /classify runs) and the
fill-mask path (one [MASK] per sequence, MLM logits only there), each backend timed in interleaved
rounds, medians reported, every backend on the same number of threads. The INT8 bundle runs twice:
`engine_int8_opt` with the fixed plan (every batch on all threads: the engine before plans were tuned)
and `engine_int8_auto` as the runtime ships, with the plans it times for this CPU at load (a fresh cache
in the temporary folder, so the timing happens in this run; `plans` and `tuning_s` report it). Also
measures the MLM fast path (decoder at the masked positions only) against full (B, T, V) logits, and
whether the answers are the same: classify argmax and fill-mask top-1 of the tuned engine against PyTorch
eager on the held-out sentences. The last line is one JSON object; `ratio_b1` / `ratio_b32` are the tuned
INT8 engine / PyTorch eager on the classifier path (`ratio_b*_fixed`: the fixed plan).

`ceiling` says what bounds ratio_b32 on this CPU: the model's FLOPs per sequence turn each backend's
classify throughput into GFLOP/s, set beside the rate of one large matrix product (the feed-forward's
(B*T, H) x (H, I) at batch 32) in torch fp32 and in onnxruntime fp32 and dynamic INT8 (quantized as the
export does). `ratio_b32_ceiling` is the INT8 product's rate over torch's achieved rate: the ratio an
engine would reach if the whole model ran as fast as that one INT8 product, with nothing else to do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.bert import BertForPreTraining, BertForSequenceClassification
from model.checkpoint import load_model, save_model
from model.config import BertConfig
from model.engine import Engine
from model.plans import cpu_signature
from model.tokenizer import MASK_ID, NUM_SPECIAL, BatchEncoding, Tokenizer
from training.export import export_bundle, read_eval_text

SEQ_LEN = 64
BATCHES = (1, 32)
MASK_POSITION = 10


def synthetic_text(path: Path, lines: int, seed: int) -> Path:
    """Sentences of made-up words: enough distinct strings for an 8000-piece tokenizer."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "el", "is", "or", "ut"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(30000)]
    path.write_text(
        "\n".join(" ".join(rng.choices(words, k=rng.randint(6, 20))) + "." for _ in range(lines)) + "\n",
        encoding="utf-8",
    )
    return path


def prepare_models(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path, Path]:
    """(pretraining ckpt, classifier ckpt, tokenizer dir, held-out text): given ones or random/synthetic."""
    held_out = Path(args.eval_text) if args.eval_text else synthetic_text(work / "heldout.txt", 500, seed=1)
    if args.tokenizer:
        tokenizer_dir = Path(args.tokenizer)
    else:
        from training.tokenizer_train import train_tokenizer

        tokenizer_dir = work / "tokenizer"
        train_tokenizer(
            [synthetic_text(work / "corpus.txt", 40000, seed=0)], tokenizer_dir, vocab_size=args.vocab_size
        )
    if args.checkpoint and args.classifier:
        return Path(args.checkpoint), Path(args.classifier), tokenizer_dir, held_out
    vocab_size = Tokenizer(tokenizer_dir).vocab_size
    torch.manual_seed(0)
    if args.checkpoint:
        pretraining, _ = load_model(args.checkpoint)
        pre_path = Path(args.checkpoint)
    else:
        pretraining = BertForPreTraining(BertConfig(vocab_size=vocab_size)).eval()  # 3 layers, 256, 4 heads
        pre_path = work / "pretrained.pt"
        save_model(pre_path, pretraining, {})
    classifier = BertForSequenceClassification(pretraining.config, num_labels=2)
    classifier.bert.load_state_dict(pretraining.bert.state_dict())  # as fine-tuning starts
    cls_path = work / "classifier.pt"
    save_model(cls_path, classifier.eval(), {"label_names": ["negative", "positive"]})
    return pre_path, cls_path, tokenizer_dir, held_out


def make_inputs(batch_size: int, vocab_size: int, seed: int) -> tuple[BatchEncoding, np.ndarray]:
    """A full-length (no padding) batch with one [MASK] per sequence, as onnxruntime and torch inputs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(7, vocab_size, size=(batch_size, SEQ_LEN)).astype(np.int64)
    ids[:, 0], ids[:, -1], ids[:, MASK_POSITION] = 4, 5, 6  # [CLS] ... [MASK] ... [SEP]
    batch = BatchEncoding(ids, np.zeros_like(ids), np.ones_like(ids))
    return batch, np.full((batch_size, 1), MASK_POSITION, dtype=np.int64)


def classify_flops(config: BertConfig, length: int) -> int:
    """Multiply-adds x 2 for one sequence on the classifier path: every layer but the last at all positions;
    the last computes keys and values for all positions and the rest for [CLS] alone (as the model does)."""
    h, i = config.hidden_size, config.intermediate_size
    full = length * (4 * h * h + 2 * h * i) + 2 * length * length * h  # projections, FFN; scores, mixing
    last = length * 2 * h * h + (2 * h * h + 2 * h * i) + 2 * length * h
    pooler_and_head = h * h + 2 * h  # pooler; the two-label head of this benchmark
    return 2 * ((config.num_hidden_layers - 1) * full + last + pooler_and_head)


def gemm_rates(config: BertConfig, threads: int, work: Path, rounds: int, seconds: float) -> dict[str, float]:
    """GFLOP/s of the feed-forward's first product at batch 32: torch fp32, onnxruntime fp32 and INT8."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from training.onnx_utils import quantize_int8

    rows, h, i = BATCHES[-1] * SEQ_LEN, config.hidden_size, config.intermediate_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, h)).astype(np.float32)
    w = (rng.standard_normal((h, i)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, i])],
        [numpy_helper.from_array(w, "w")],
    )
    fp32_path, int8_path = work / "gemm_fp32.onnx", work / "gemm_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32_path)
    quantize_int8(fp32_path, int8_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (("ort_fp32", fp32_path), ("ort_int8", int8_path))
    }
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    fns: dict[str, Callable[[], object]] = {"torch_fp32": lambda: torch.mm(tx, tw)}
    for name, session in sessions.items():
        fns[name] = lambda s=session: s.run(None, {"x": x})
    per_call = measure(fns, 1, rounds, seconds)  # calls per second
    return {name: round(calls * 2 * rows * h * i / 1e9, 1) for name, calls in per_call.items()}


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads, --rounds, --seconds: how `measure` times, shared by the benches that use it."""
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and onnxruntime alike")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--seconds", type=float, default=0.4, help="minimum seconds per backend per round")


def measure(
    fns: dict[Any, Callable[[], object]], batch_size: int, rounds: int, min_seconds: float
) -> dict[Any, float]:
    """Median sequences/s per function over interleaved rounds (each round: every fn for >= min_seconds).

    Interleaving spreads slow periods of a shared machine over all backends instead of one of them.
    """
    for fn in fns.values():  # warm-up: first-run allocations, onnxruntime kernel selection
        fn(), fn()
    samples: dict[Any, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < min_seconds or calls < 3:
                fn()
                calls += 1
            samples[name].append(calls * batch_size / elapsed)
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


def _torch_logits(model, batch: BatchEncoding, positions: np.ndarray | None = None) -> np.ndarray:
    tensors = {k: torch.from_numpy(v) for k, v in batch.as_dict().items()}
    with torch.inference_mode():
        if positions is None:
            return model(**tensors).logits.numpy()
        return model(**tensors, masked_positions=torch.from_numpy(positions)).mlm_logits.numpy()


def _logits(backend, batch: BatchEncoding, positions: np.ndarray | None = None) -> np.ndarray:
    """Classifier logits (positions None) or MLM logits at `positions`, from an engine or a torch model."""
    if isinstance(backend, Engine):
        return (
            backend.run_classifier(batch)
            if positions is None
            else backend.run_pretraining(batch, positions)[0]
        )
    return _torch_logits(backend, batch, positions)


def mask_one_token(batch: BatchEncoding, rng: np.random.Generator) -> np.ndarray:
    """Replace one random ordinary token per row with [MASK] (in place); returns the positions (B, 1)."""
    positions = np.zeros((len(batch.input_ids), 1), dtype=np.int64)
    for row, ids in enumerate(batch.input_ids):
        ordinary = np.flatnonzero(ids >= NUM_SPECIAL)
        positions[row, 0] = rng.choice(ordinary) if len(ordinary) else 0
    np.put_along_axis(batch.input_ids, positions, MASK_ID, axis=1)
    return positions


def same_answers(engine: Engine, pretraining, classifier, sentences: list[str], seed: int = 0) -> dict:
    """How often `engine` answers as the reference (torch models, or another engine) on the held-out
    sentences: classify argmax, and fill-mask top-1 with one random ordinary token masked per sentence."""
    rng = np.random.default_rng(seed)
    argmax_same = top1_same = total = 0
    for start in range(0, len(sentences), 32):
        batch = engine.encode(sentences[start : start + 32])
        argmax_same += int((_logits(engine, batch).argmax(-1) == _logits(classifier, batch).argmax(-1)).sum())
        positions = mask_one_token(batch, rng)
        found = _logits(engine, batch, positions)[:, 0].argmax(-1)
        top1_same += int((found == _logits(pretraining, batch, positions)[:, 0].argmax(-1)).sum())
        total += len(batch.input_ids)
    return {
        "sentences": total,
        "classify_argmax_identical": argmax_same == total,
        "classify_argmax_agreement": round(argmax_same / total, 4),
        "fill_mask_top1_agreement": round(top1_same / total, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="pretraining checkpoint (default: random weights)")
    parser.add_argument(
        "--classifier", help="classifier checkpoint (default: the pretraining encoder + a random head)"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder (default: trained on synthetic text)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the synthetic tokenizer")
    parser.add_argument("--eval-text", help="held-out sentences for the INT8 fill-mask agreement check")
    parser.add_argument("--eval-dev", help="labelled dev set for the INT8 accuracy check")
    parser.add_argument("--eval-task", choices=["nsmc", "sst2", "csv"], help="format of --eval-dev")
    parser.add_argument("--eval-limit", type=int, default=500, help="held-out sentences / dev rows to use")
    add_timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="pocketbert-bench-") as tmp:
        work = Path(tmp)
        pre_path, cls_path, tokenizer_dir, held_out = prepare_models(args, work)
        print(f"[bench] exporting bundles from {pre_path.name}, {cls_path.name}", file=sys.stderr)
        common = dict(max_length=128, threads=args.threads)
        export_bundle(pre_path, cls_path, tokenizer_dir, work / "fp32", **common)
        export_bundle(pre_path, cls_path, tokenizer_dir, work / "fp32_opt", optimize=True, **common)
        int8_info = export_bundle(
            pre_path,
            cls_path,
            tokenizer_dir,
            work / "int8",
            quantize="int8",
            optimize=True,
            eval_text=held_out,
            eval_dev=args.eval_dev,
            eval_task=args.eval_task,
            eval_limit=args.eval_limit,
            **common,
        )
        e32, e32_opt, e8 = (
            Engine.load(work / name, args.threads, plan="fixed") for name in ("fp32", "fp32_opt", "int8")
        )
        os.environ["POCKETBERT_CACHE_DIR"] = str(work / "cache")  # time the plans in this run
        began = time.perf_counter()
        auto = Engine.load(work / "int8", args.threads, plan="auto")
        tuning_s = time.perf_counter() - began
        pretraining, _ = load_model(pre_path)
        classifier, _ = load_model(cls_path)
        vocab_size = pretraining.config.vocab_size

        report: dict = {
            "bench": "engine",
            "threads": args.threads,
            "seq_len": SEQ_LEN,
            "model": {
                k: pretraining.config.to_dict()[k]
                for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
            },
            "torch_attention": pretraining.config.attn_implementation,
            "cpu": cpu_signature(),
            "plans": auto.plans,
            "tuning_s": round(tuning_s, 2),
        }
        for batch_size in BATCHES:
            batch, positions = make_inputs(batch_size, vocab_size, seed=batch_size)
            tensors = {k: torch.from_numpy(v) for k, v in batch.as_dict().items()}
            torch_positions = torch.from_numpy(positions)
            all_positions = np.tile(np.arange(SEQ_LEN, dtype=np.int64), (batch_size, 1))

            def torch_classify(t=tensors) -> object:
                with torch.inference_mode():
                    return classifier(**t).logits

            def torch_fill_mask(t=tensors, p=torch_positions) -> object:
                with torch.inference_mode():
                    return pretraining(**t, masked_positions=p).mlm_logits

            def torch_full_logits(t=tensors) -> object:
                with torch.inference_mode():
                    return pretraining(**t).mlm_logits

            print(f"[bench] batch {batch_size}", file=sys.stderr)
            fns = {
                ("classify", "engine_fp32"): lambda b=batch: e32.run_classifier(b),
                ("classify", "engine_fp32_opt"): lambda b=batch: e32_opt.run_classifier(b),
                ("classify", "engine_int8_opt"): lambda b=batch: e8.run_classifier(b),
                ("classify", "engine_int8_auto"): lambda b=batch: auto.run_classifier(b),
                ("classify", "torch_eager"): torch_classify,
                ("fill_mask", "engine_fp32"): lambda b=batch, p=positions: e32.run_pretraining(b, p),
                ("fill_mask", "engine_fp32_opt"): lambda b=batch, p=positions: e32_opt.run_pretraining(b, p),
                ("fill_mask", "engine_int8_opt"): lambda b=batch, p=positions: e8.run_pretraining(b, p),
                ("fill_mask", "engine_int8_auto"): lambda b=batch, p=positions: auto.run_pretraining(b, p),
                ("fill_mask", "torch_eager"): torch_fill_mask,
                # the same graphs asked for all T positions: what a full (B, T, V) MLM output would cost
                ("fill_mask_full_logits", "engine_fp32"): lambda b=batch, p=all_positions: (
                    e32.run_pretraining(b, p)
                ),
                ("fill_mask_full_logits", "engine_int8_opt"): lambda b=batch, p=all_positions: (
                    e8.run_pretraining(b, p)
                ),
                ("fill_mask_full_logits", "torch_eager"): torch_full_logits,
            }
            timings: dict[str, dict[str, float]] = {}
            for (path, backend), value in measure(fns, batch_size, args.rounds, args.seconds).items():
                timings.setdefault(path, {})[backend] = value
            report[f"b{batch_size}"] = timings
        for batch_size in BATCHES:
            row = report[f"b{batch_size}"]
            for suffix, backend in (("", "engine_int8_auto"), ("_fixed", "engine_int8_opt")):
                report[f"ratio_b{batch_size}{suffix}"] = round(
                    row["classify"][backend] / row["classify"]["torch_eager"], 2
                )
        for batch_size in BATCHES:
            row = report[f"b{batch_size}"]
            for suffix, backend in (("", "engine_int8_auto"), ("_fixed", "engine_int8_opt")):
                report[f"ratio_b{batch_size}_fill_mask{suffix}"] = round(
                    row["fill_mask"][backend] / row["fill_mask"]["torch_eager"], 2
                )
            for backend in ("engine_fp32", "engine_int8_opt"):  # masked positions only vs all T positions
                report[f"mlm_fast_path_speedup_b{batch_size}_{backend}"] = round(
                    row["fill_mask"][backend] / row["fill_mask_full_logits"][backend], 2
                )
        flops = classify_flops(pretraining.config, SEQ_LEN)
        gemm = gemm_rates(pretraining.config, args.threads, work, args.rounds, args.seconds)
        achieved = {
            backend: round(seqs * flops / 1e9, 1) for backend, seqs in report["b32"]["classify"].items()
        }
        report["ceiling"] = {
            "classify_gflop_per_seq": round(flops / 1e9, 4),
            "classify_b32_gflops": achieved,
            "gemm_gflops": gemm,
            "torch_share_of_its_gemm": round(achieved["torch_eager"] / gemm["torch_fp32"], 2),
            "engine_share_of_int8_gemm": round(achieved["engine_int8_auto"] / gemm["ort_int8"], 2),
            "int8_over_fp32_gemm": round(gemm["ort_int8"] / gemm["torch_fp32"], 2),
            "ratio_b32_ceiling": round(gemm["ort_int8"] / achieved["torch_eager"], 2),
        }
        report["ratios_refer_to"] = (
            "tuned INT8 engine / torch eager, classify path (ratio_b*_fill_mask: fill-mask path; "
            "*_fixed: the fixed plan)"
        )
        sentences = read_eval_text(held_out, args.eval_limit)
        report["answers_vs_torch"] = same_answers(auto, pretraining, classifier, sentences)
        report["answers_tuned_vs_fixed"] = same_answers(auto, e8, e8, sentences)
        report["fusions"] = int8_info["export"]["fusions"]
        report["int8_checks"] = int8_info["checks"]["int8"]
        report["parity"] = int8_info["checks"]["parity"]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
