"""Benchmark: how much a text's answer depends on the texts batched beside it.

    python bench/batch_dependence.py --bundle bundles/en-sst2 --task sst2 --test ../shared/data/sst2/dev.tsv
    python bench/batch_dependence.py --bundle bundles/ko-nsmc --task nsmc \\
        --test ../shared/data/nsmc/ratings_test.txt --limit 5000

Why: the server batches concurrent requests together, and a dynamic-INT8 graph chooses each activation's
quantization scale from the whole batch it runs (padding included). So the same text can get slightly
different scores, and near 0.5 a different label, depending on what arrived with it. This script scores
every test text alone (the peer: batch 1, nothing beside it) and then in batches of `--batch-size`, in
file order and sorted by length (the grouping that pads least), and reports how far the batched scores
move from the alone ones: mean and max absolute change of the first label's probability, labels that
flip, and the accuracy each way. An fp32 bundle should move by float rounding only (~1e-6).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from model.engine import Engine
from training.tasks import TASK_FORMATS, read_task


def first_label_probability(
    engine: Engine, texts: list[str], batch_size: int, order: np.ndarray
) -> np.ndarray:
    """P(first label) per text, the texts run in batches of batch_size taken in `order`."""
    probs = np.empty(len(texts))
    first = engine.label_names[0]
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        results = engine.classify([texts[i] for i in rows])
        probs[rows] = [{r["label"]: r["score"] for r in result}[first] for result in results]
    return probs


def accuracy(first_probability: np.ndarray, labels: np.ndarray) -> float:
    """Percent right, label 0 (the first) predicted when its probability is above 0.5."""
    return round(100 * float(((first_probability <= 0.5).astype(int) == labels).mean()), 2)


def compare(alone: np.ndarray, batched: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """How far batched answers are from the alone ones, and the batched accuracy."""
    change = np.abs(batched - alone)
    return {
        "mean_abs_change": round(float(change.mean()), 6),
        "max_abs_change": round(float(change.max()), 6),
        "label_flips": int(((batched > 0.5) != (alone > 0.5)).sum()),
        "accuracy": accuracy(batched, labels),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True, help="a bundle folder with a classifier graph")
    parser.add_argument("--task", required=True, choices=TASK_FORMATS, help="the test file's format")
    parser.add_argument("--test", required=True, help="labelled texts to score (the task's test file)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch in the batched runs")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N texts (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    engine = Engine.load(args.bundle, intra_op_threads=args.threads, plan="fixed")
    if len(engine.label_names) != 2:
        sys.exit(f"batch_dependence: {args.bundle} has {len(engine.label_names)} labels; this measures two")
    data = read_task(args.task, args.test, label_names=engine.label_names)
    if missing := set(data.label_names) - set(engine.label_names):
        sys.exit(f"batch_dependence: {args.test} has labels {sorted(missing)} that {args.bundle} does not")
    # the file's label numbers, renumbered in the bundle's label order
    texts = data.texts
    labels = np.array([engine.label_names.index(data.label_names[label]) for label in data.labels])
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    file_order = np.arange(len(texts))
    by_length = np.argsort([len(text) for text in texts], kind="stable")
    alone = first_label_probability(engine, texts, 1, file_order)
    report = {
        "bench": "batch_dependence",
        "bundle": str(args.bundle),
        "quantization": engine.info.get("export", {}).get("quantization") or "none",
        "texts": len(texts),
        "peer": "each text scored alone (batch 1)",
        "batch_size": args.batch_size,
        "alone_accuracy": accuracy(alone, labels),
    }
    for name, order in (("file_order", file_order), ("length_sorted", by_length)):
        batched = first_label_probability(engine, texts, args.batch_size, order)
        report[name] = compare(alone, batched, labels)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
