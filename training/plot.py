"""`pocketbert plot RUN_DIR`: draw a run's metrics.jsonl (training/metrics_log.py) as metrics.png.

Every numeric field becomes a curve in the panel of its family (losses, accuracies, learning rate,
throughput, resident memory), one line per (seed, split, field). The panels form a grid of two columns,
so the figure stays readable when it is fitted to a screen. In a fine-tuning run each seed has its own
line style and hollow marker of its own size, so seeds with identical curves (two failed runs stuck at
the majority class, say) stay visible on top of each other; the majority-class accuracy from
results.json is drawn as a horizontal line: the bar a useful classifier must clear.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from training.errors import CLIError
from training.metrics_log import METRICS_FILENAME, read_metrics

PLOT_FILENAME = "metrics.png"
RESULTS_FILENAME = "results.json"  # written by `finetune`; holds the majority-class accuracy
_PANELS = ("loss", "NSP loss", "accuracy", "learning rate", "tokens/s", "resident memory (MB)")
COLUMNS = 2
PANEL_SIZE = (5.5, 3.4)  # inches per panel
SEED_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))
MAJORITY_LABEL = "majority class (dev)"

Series = dict[str, dict[str, tuple[list[float], list[float]]]]  # panel -> curve label -> (steps, values)


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
    if key == "rss_mb":
        return "resident memory (MB)"
    return None


def collect_series(rows: list[dict]) -> tuple[Series, dict[str, Any]]:
    """(panel -> curve label -> (steps, values), curve label -> its seed or None)."""
    series: Series = defaultdict(dict)
    seeds: dict[str, Any] = {}
    for row in rows:
        prefix = f"seed {row['seed']} " if "seed" in row else ""
        split = row.get("split", "")
        for key, value in row.items():
            panel = _panel_of(key)
            if panel is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            label = f"{prefix}{split} {key}".strip()
            seeds[label] = row.get("seed")
            steps, values = series[panel].setdefault(label, ([], []))
            steps.append(row["step"])
            values.append(value)
    return series, seeds


def draw_metrics(rows: list[dict], title: str | None = None, majority: float | None = None):
    """A matplotlib Figure of the rows: one panel per metric family present, COLUMNS panels a row.

    majority: the majority-class dev accuracy, drawn as a horizontal line on the accuracy panel.
    """
    # Imported here, not at the top: choosing the backend is a process-wide setting, made only by drawing.
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt

    series, seeds = collect_series(rows)
    panels = [p for p in _PANELS if p in series]
    if not panels:
        raise CLIError("no metrics to plot yet")
    columns = min(COLUMNS, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        grid_rows,
        columns,
        figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * grid_rows),
        squeeze=False,
    )
    cells = list(axes.flat)
    for ax in cells[len(panels) :]:
        fig.delaxes(ax)  # an odd number of panels leaves the last cell empty
    order = {seed: i for i, seed in enumerate(sorted({s for s in seeds.values() if s is not None}))}
    for ax, panel in zip(cells, panels, strict=False):
        curves = series[panel]
        for label, (steps, values) in sorted(curves.items()):
            ax.plot(steps, values, label=label, linewidth=1.2, **_style(seeds[label], order, len(steps)))
        if panel == "accuracy" and majority is not None:
            ax.axhline(
                majority, color="0.4", linestyle="--", linewidth=1, label=f"{MAJORITY_LABEL} {majority:.3f}"
            )
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _style(seed: Any, order: dict[Any, int], points: int) -> dict[str, Any]:
    """Plain lines for a run without seeds; per seed a line style and a hollow marker that grows with
    the seed's rank, so identical curves of different seeds show as nested markers."""
    if seed is None:
        return {"marker": "o" if points <= 30 else None, "markersize": 3}
    rank = order[seed]
    linestyle, marker = SEED_STYLES[rank % len(SEED_STYLES)]
    return {
        "linestyle": linestyle,
        "marker": marker if points <= 60 else None,
        "markersize": 3 + 2 * (rank % 4),
        "markerfacecolor": "none",
    }


def plot_metrics(
    metrics_path: str | Path, out_path: str | Path, title: str | None = None, majority: float | None = None
) -> Path:
    """Write the PNG of a metrics.jsonl (through a temporary file: a viewer never sees half a picture)."""
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    try:
        fig = draw_metrics(rows, title, majority)
    except CLIError as exc:
        raise CLIError(f"{metrics_path}: {exc}") from exc
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def majority_accuracy(run_dir: Path) -> float | None:
    """The majority-class dev accuracy a fine-tuning run recorded in results.json, if any."""
    path = run_dir / RESULTS_FILENAME
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("majority_dev_acc")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def plot_run(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return plot_metrics(
        run_dir / METRICS_FILENAME,
        run_dir / PLOT_FILENAME,
        title=run_dir.name,
        majority=majority_accuracy(run_dir),
    )


def run(args: argparse.Namespace) -> int:
    out = plot_run(args.run_dir)
    print(f"wrote {out}")
    return 0
