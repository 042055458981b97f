"""The model card's measurements and pictures: MLM accuracy by token frequency, fill-mask examples,
attention heatmaps, and the training curves.

Each function takes what it measures (a model, a bundle engine, a run folder) and returns plain data
(and writes a PNG where there is a picture), so the card renders numbers that were measured, never typed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# Frequency buckets by rank among the ordinary pieces (most frequent first), as in analyses of
# what a masked LM learns first: frequent function pieces are easy, the long tail is hard.
FREQUENCY_BUCKETS = ((0, 100), (100, 500), (500, 1000), (1000, 2000), (2000, 4000), (4000, 8000))
CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans CJK JP", "Noto Sans CJK SC", "NanumGothic", "UnDotum")


def use_cjk_font() -> str | None:
    """Pick an installed font that has Hangul (Debian: fonts-noto-cjk), so labels are not empty boxes."""
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):  # the cache predates a font installed since: look again
        font_manager.fontManager = font_manager._load_fontmanager(try_read_cache=False)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FONTS:
        if name in installed:
            matplotlib.rcParams["font.family"] = ["sans-serif"]
            matplotlib.rcParams["font.sans-serif"] = [name, "DejaVu Sans"]
            return name
    return None


# --------------------------------------------------------------------------------------------------
# MLM accuracy by token frequency
# --------------------------------------------------------------------------------------------------
def token_frequencies(data_dir: str | Path, vocab_size: int, max_rows: int = 200_000) -> np.ndarray:
    """(vocab_size,) counts of each id in the first max_rows training instances (padding excluded)."""
    ids = np.load(Path(data_dir) / "train.input_ids.npy", mmap_mode="r")
    lengths = np.load(Path(data_dir) / "train.lengths.npy", mmap_mode="r")
    counts = np.zeros(vocab_size, dtype=np.int64)
    rows = min(len(ids), max_rows)
    for start in range(0, rows, 10_000):
        block = np.asarray(ids[start : min(rows, start + 10_000)])  # (b, L)
        real = np.arange(block.shape[1])[None, :] < np.asarray(lengths[start : start + len(block)])[:, None]
        counts += np.bincount(block[real].astype(np.int64), minlength=vocab_size)
    return counts


def mlm_accuracy_by_frequency(
    model, data_dir: str | Path, batches: int = 100, batch_size: int = 32
) -> list[dict]:
    """Validation MLM accuracy of the masked pieces, grouped by the frequency rank of the true piece.

    Masks: the standard 15% / 80-10-10 rule with a fixed generator (the same positions every time).
    """
    import torch

    from model.bert import IGNORE_INDEX
    from model.tokenizer import NUM_SPECIAL
    from training.dataset import PretrainingDataset, collate
    from training.masking import mask_tokens
    from training.runtime import derived_generator

    vocab = model.config.vocab_size
    counts = token_frequencies(data_dir, vocab)
    counts[:NUM_SPECIAL] = -1  # specials are never masked; rank the ordinary pieces only
    rank = np.empty(vocab, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(vocab)
    valid = PretrainingDataset(data_dir, split="valid")
    correct = np.zeros(len(FREQUENCY_BUCKETS), dtype=np.int64)
    total = np.zeros(len(FREQUENCY_BUCKETS), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for b in range(min(batches, math.ceil(len(valid) / batch_size))):
            items = [valid[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(valid)))]
            batch = collate(items)
            masked, labels = mask_tokens(batch["input_ids"], vocab, generator=derived_generator(7, b))
            out = model(
                masked, batch["token_type_ids"], batch["attention_mask"], labels=labels, sparse_mlm=True
            )
            targets = labels[labels != IGNORE_INDEX].numpy()  # (N,), the order of out.mlm_logits
            hits = out.mlm_logits.argmax(-1).numpy() == targets
            for k, (lo, hi) in enumerate(FREQUENCY_BUCKETS):
                in_bucket = (rank[targets] >= lo) & (rank[targets] < hi)
                correct[k] += int(hits[in_bucket].sum())
                total[k] += int(in_bucket.sum())
    share = counts[NUM_SPECIAL:].clip(min=0).sum()
    rows = []
    for k, (lo, hi) in enumerate(FREQUENCY_BUCKETS):
        members = (rank >= lo) & (rank < hi) & (np.arange(vocab) >= NUM_SPECIAL)
        rows.append(
            {
                "ranks": f"{lo + 1}-{min(hi, vocab - NUM_SPECIAL)}",
                "share_of_text": round(float(counts[members].clip(min=0).sum() / max(1, share)), 4),
                "masked": int(total[k]),
                "accuracy": round(float(correct[k] / total[k]), 4) if total[k] else None,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# the served model: fill-mask examples and attention heatmaps
# --------------------------------------------------------------------------------------------------
def fill_mask_examples(engine, sentences: list[str], top_k: int = 5) -> list[dict]:
    """Each sentence (one [MASK] each) with the bundle's top_k answers, as the API would give them."""
    rows = []
    for sentence, predictions in zip(sentences, engine.fill_mask(sentences, top_k=top_k), strict=True):
        rows.append(
            {
                "text": sentence,
                # the piece itself ("▁가" starts a word, "가" continues one): stripped strings look alike
                "predictions": [
                    {"token": engine.tokenizer.id_to_token(p["token"]), "score": round(p["score"], 3)}
                    for p in predictions[0]
                ],
            }
        )
    return rows


def attention_heatmaps(engine, text: str, out_png: str | Path) -> dict[str, Any]:
    """One heatmap per (layer, head) of the attention each token pays to every other, in a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_cjk_font()
    result = engine.attention(text)
    tokens, maps = result["tokens"], np.asarray(result["attentions"])  # (layers, heads, T, T)
    layers, heads = maps.shape[:2]
    size = max(2.6, 0.22 * len(tokens))
    fig, axes = plt.subplots(layers, heads, figsize=(size * heads, size * layers), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=9)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.suptitle(f"attention for: {text}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return {"text": text, "tokens": tokens, "png": Path(out_png).name}


def bundle_accuracy(engine, texts: list[str], labels: list[int], batch_size: int = 64) -> dict[str, Any]:
    """Accuracy of the served classifier on a labelled set, and how many texts it had to cut."""
    correct = cut = 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        lengths = [len(ids) + 2 for ids in engine.tokenizer.encode_ids_batch(chunk)]  # + [CLS] [SEP]
        cut += sum(length > engine.max_length for length in lengths)
        for result, label in zip(engine.classify(chunk), labels[start : start + batch_size], strict=True):
            correct += engine.label_names.index(result[0]["label"]) == label
    return {
        "examples": len(texts),
        "accuracy": round(correct / max(1, len(texts)), 4),
        "truncated": cut,
        "max_length": engine.max_length,
    }


# --------------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return rows


def training_curves(
    pretrain_runs: list[tuple[str, Path]], finetune_runs: list[tuple[str, Path]], out_png: str | Path
) -> None:
    """A 2 x 2 grid: validation MLM and NSP accuracy against tokens seen, train loss, and fine-tuning dev
    accuracy per epoch for every seed (pretrained and scratch side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax_mlm, ax_nsp), (ax_loss, ax_ft)) = plt.subplots(2, 2, figsize=(12, 8))
    for label, folder in pretrain_runs:
        rows = _rows(folder / "metrics.jsonl")
        tokens_at = {
            r["step"]: r["tokens_seen"] for r in rows if r.get("split") == "train" and "tokens_seen" in r
        }
        per_step = (max(tokens_at.values()) / max(tokens_at)) if tokens_at else 1.0
        valid = [r for r in rows if r.get("split") == "valid"]
        x = [tokens_at.get(r["step"], r["step"] * per_step) / 1e6 for r in valid]
        ax_mlm.plot(x, [r["mlm_acc"] for r in valid], label=label)
        ax_nsp.plot(x, [r["nsp_acc"] for r in valid], label=label)
        train = [r for r in rows if r.get("split") == "train"]
        ax_loss.plot(
            [tokens_at.get(r["step"], 0) / 1e6 for r in train],
            [r["loss"] for r in train],
            label=label,
            linewidth=0.6,
        )
    for label, folder in finetune_runs:
        dev = [r for r in _rows(folder / "metrics.jsonl") if r.get("split") == "dev"]
        for seed in sorted({r["seed"] for r in dev}):
            mine = [r for r in dev if r["seed"] == seed]
            ax_ft.plot(
                [r["epoch"] for r in mine],
                [r["acc"] for r in mine],
                marker="o",
                alpha=0.8,
                label=f"{label} seed {seed}",
            )
    for ax, title, xlabel in (
        (ax_mlm, "validation MLM accuracy", "tokens seen (M)"),
        (ax_nsp, "validation NSP accuracy", "tokens seen (M)"),
        (ax_loss, "training loss (MLM + NSP)", "tokens seen (M)"),
        (ax_ft, "fine-tuning dev accuracy", "epoch"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
