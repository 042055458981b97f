"""`pocketbert plot RUN_DIR`: draw a run's metrics.jsonl (training/metrics_log.py) as metrics.png.

Every numeric field becomes a curve in the panel of its family (losses, accuracies, learning rate,
throughput), one line per (seed, split, field).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from training.errors import CLIError
from training.metrics_log import METRICS_FILENAME, read_metrics

PLOT_FILENAME = "metrics.png"
_PANELS = ("loss", "NSP loss", "accuracy", "learning rate", "tokens/s")


def _panel_of(key: str) -> str | None:
    if key.startswith("nsp") and key.endswith("loss"):  # ~0.69 beside an MLM loss of ~7: its own scale
        return "NSP loss"
    if key.endswith("loss"):
        return "loss"
    if key.endswith("acc") or key.endswith("accuracy"):
        return "accuracy"
    if key == "lr":
        return "learning rate"
    if key.startswith("tokens_per_s"):
        return "tokens/s"
    return None


def collect_series(rows: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """panel -> curve label -> (steps, values)."""
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = defaultdict(dict)
    for row in rows:
        prefix = f"seed {row['seed']} " if "seed" in row else ""
        split = row.get("split", "")
        for key, value in row.items():
            panel = _panel_of(key)
            if panel is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            label = f"{prefix}{split} {key}".strip()
            steps, values = series[panel].setdefault(label, ([], []))
            steps.append(row["step"])
            values.append(value)
    return series


def plot_metrics(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Write a PNG with one panel per metric family present in the file."""
    # Imported here, not at the top: choosing the backend is a process-wide setting, made only by drawing.
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    series = collect_series(read_metrics(metrics_path))
    panels = [p for p in _PANELS if p in series]
    if not panels:
        raise CLIError(f"{metrics_path}: no metrics to plot yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        curves = series[panel]
        for label, (steps, values) in sorted(curves.items()):
            marker = "o" if len(steps) <= 30 else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def plot_run(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return plot_metrics(run_dir / METRICS_FILENAME, run_dir / PLOT_FILENAME, title=run_dir.name)


def run(args: argparse.Namespace) -> int:
    out = plot_run(args.run_dir)
    print(f"wrote {out}")
    return 0
