"""metrics.jsonl, a run's log: one JSON object per line, each with a "step" and a "split" ("train",
"valid", "dev", ...) and, for fine-tuning runs, a "seed". Pretraining and fine-tuning write it, `plot`
draws it. No torch here: `pocketbert plot` reads it without.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.errors import CLIError
from training.textio import iter_json_objects

METRICS_FILENAME = "metrics.jsonl"


def read_metrics(path: str | Path, drop_truncated_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a malformed line is reported with its number.

    drop_truncated_tail: a run killed while writing a row leaves half of it as the last line; that line is
    then dropped with a warning (what a resumed run wants: it writes the row again).
    """
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{path}: no such metrics file")
    rows = []
    for line_no, row in iter_json_objects(path, drop_truncated_tail):
        if "step" not in row:
            raise CLIError(f"{path}:{line_no}: a metrics row needs a 'step'")
        rows.append(row)
    return rows


class MetricsLog:
    """Appends rows to a run folder's metrics.jsonl; disabled, it writes nothing (the DDP ranks but 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILENAME
        self.enabled = enabled

    def start(self, step: int) -> None:
        """Continue the log at `step`: the rows after it are dropped (a run resumed from a checkpoint
        repeats them), and at step 0 the whole log of an earlier run in this folder."""
        if step == 0:
            if self.enabled:
                self.path.unlink(missing_ok=True)
            return
        self.keep(lambda row: row["step"] <= step)

    def keep(self, wanted: Callable[[dict[str, Any]], bool]) -> None:
        """Keep only the rows `wanted` accepts (a resumed run drops those it will write again); a last
        line cut short by a kill is dropped with a warning."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [row for row in read_metrics(self.path, drop_truncated_tail=True) if wanted(row)]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
