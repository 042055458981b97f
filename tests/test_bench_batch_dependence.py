"""bench/batch_dependence.py: how far a text's answer moves with the texts batched beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import load_bench

WORDS = ["the", "a", "film", "cast", "story", "was", "good", "bad", "and", "very", "long", "short", "plot"]


def write_sst2(path: Path, rows: int) -> Path:
    """Texts of 1 to 40 words (batches then need padding), labels alternating."""
    rng = np.random.default_rng(0)
    lines = ["sentence\tlabel"]
    for i in range(rows):
        lines.append(" ".join(rng.choice(WORDS, size=1 + i % 40)) + f"\t{i % 2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_an_fp32_bundle_answers_a_text_the_same_whatever_its_batch(tiny_bundle: Path, tmp_path: Path) -> None:
    """Padding and batch neighbours change nothing beyond float rounding in fp32 (the mask works), so
    what the bench reports for an INT8 bundle is quantization's doing, not the runtime's."""
    bench = load_bench("batch_dependence")
    test = write_sst2(tmp_path / "dev.tsv", 70)
    report = bench.main(
        ["--bundle", str(tiny_bundle), "--task", "sst2", "--test", str(test), "--batch-size", "8"]
    )
    assert report["texts"] == 70 and report["quantization"] == "none"
    for grouping in ("file_order", "length_sorted"):
        assert report[grouping]["max_abs_change"] < 1e-5, report


def test_compare_counts_moves_flips_and_accuracy() -> None:
    bench = load_bench("batch_dependence")
    alone = np.array([0.9, 0.6, 0.2, 0.49])
    batched = np.array([0.9, 0.4, 0.25, 0.51])  # the second and fourth texts change label
    labels = np.array([0, 0, 1, 0])  # label 0 = the first label, predicted when P(first) > 0.5
    report = bench.compare(alone, batched, labels)
    assert report["label_flips"] == 2 and report["max_abs_change"] == 0.2
    assert report["mean_abs_change"] == round((0.2 + 0.05 + 0.02) / 4, 6)
    assert report["accuracy"] == 75.0  # 0.9 -> 0 right, 0.4 -> 1 wrong, 0.25 -> 1 right, 0.51 -> 0 right
