"""`pocketbert plot`: a readable grid of panels; seeds that overlap stay visible; the majority-class line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main
from training.plot import MAJORITY_LABEL, draw_metrics

PRETRAIN_ROWS = [
    {"step": 0, "split": "valid", "mlm_loss": 9.0, "nsp_loss": 0.7, "mlm_acc": 0.0, "nsp_acc": 0.5},
    *(
        {
            "step": s,
            "split": "train",
            "loss": 9.0 - s / 10,
            "mlm_loss": 8.3 - s / 10,
            "nsp_loss": 0.69,
            "lr": 1e-4,
            "tokens_per_s": 5000.0,
            "rss_mb": 450.0,
        }
        for s in range(1, 11)
    ),
]


def finetune_rows(seeds: list[int]) -> list[dict]:
    """Every seed with the same curves: a failed run stuck at the majority class looks exactly so."""
    return [
        row
        for seed in seeds
        for step in (10, 20, 30)
        for row in (
            {"seed": seed, "step": step, "split": "train", "loss": 0.69, "lr": 1e-4, "tokens_per_s": 900.0},
            {"seed": seed, "step": step, "split": "dev", "epoch": step / 10, "acc": 0.5, "loss": 0.69},
        )
    ]


def grid(fig) -> tuple[int, int]:
    return fig.axes[0].get_subplotspec().get_gridspec().get_geometry()


def test_pretraining_plot_is_a_grid_of_all_six_panels() -> None:
    fig = draw_metrics(PRETRAIN_ROWS, "run")
    assert grid(fig) == (3, 2)  # not six panels in one long row
    assert [ax.get_title() for ax in fig.axes] == [
        "loss",
        "NSP loss",
        "accuracy",
        "learning rate",
        "tokens/s",
        "resident memory (MB)",
    ]
    width, height = fig.get_size_inches()
    assert width / height < 2  # about as tall as wide, not a 3025 x 462 strip
    memory = next(ax for ax in fig.axes if ax.get_title().startswith("resident"))
    assert list(memory.get_lines()[0].get_ydata()) == [450.0] * 10


def test_an_odd_number_of_panels_leaves_no_empty_axes() -> None:
    rows = [{"step": s, "split": "train", "loss": 1.0, "lr": 0.1, "tokens_per_s": 9.0} for s in (1, 2)]
    fig = draw_metrics(rows)
    assert grid(fig) == (2, 2) and len(fig.axes) == 3


def test_identical_seeds_stay_distinguishable_and_the_majority_line_is_drawn() -> None:
    fig = draw_metrics(finetune_rows([1, 2, 3]), "ft", majority=0.5)
    accuracy = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    curves = [line for line in accuracy.get_lines() if line.get_label().endswith("dev acc")]
    assert len(curves) == 3
    assert all(list(c.get_ydata()) == [0.5, 0.5, 0.5] for c in curves)  # they coincide...
    looks = {(str(c.get_linestyle()), c.get_marker(), c.get_markersize()) for c in curves}
    assert len(looks) == 3  # ...and yet each seed is drawn differently
    majority = [line for line in accuracy.get_lines() if line.get_label().startswith(MAJORITY_LABEL)]
    assert len(majority) == 1 and list(majority[0].get_ydata()) == [0.5, 0.5]


def test_plot_command_reads_the_majority_from_results_json(tmp_path: Path, monkeypatch) -> None:
    import training.plot as plot

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in finetune_rows([1, 2])))
    (tmp_path / "results.json").write_text(json.dumps({"majority_dev_acc": 0.6}))
    drawn = {}
    original = plot.draw_metrics

    def spy(rows, title=None, majority=None):
        drawn["majority"] = majority
        return original(rows, title, majority)

    monkeypatch.setattr(plot, "draw_metrics", spy)
    assert main(["plot", str(tmp_path)]) == 0
    assert drawn["majority"] == pytest.approx(0.6)
    assert (tmp_path / "metrics.png").stat().st_size > 1000
