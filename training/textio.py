"""Reading corpora: plain UTF-8 or gzip-compressed text, line by line, without loading whole files."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from training.errors import CLIError


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a .txt / .tsv / .csv file, or its .gz form, as UTF-8 text (universal newlines)."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict", newline=None)
    return open(path, encoding="utf-8", errors="strict", newline=None)


def iter_lines(paths: Sequence[str | Path]) -> Iterator[str]:
    """Every line of every file, stripped of its newline; a file that is not UTF-8 is named in the error."""
    for path in paths:
        with open_text(path) as f:
            line_no = 0
            try:
                # line_no is read by the except clauses below, hence B007's false alarm
                for line_no, line in enumerate(f, start=1):  # noqa: B007
                    yield line.rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise CLIError(f"{path}:{line_no + 1}: not valid UTF-8 ({exc.reason})") from exc
            except (OSError, EOFError) as exc:  # truncated or corrupt .gz
                raise CLIError(f"{path}:{line_no + 1}: cannot read ({exc})") from exc


def iter_json_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file (.gz too).

    A line that is not a JSON object is an error naming the file and line.
    """
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CLIError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise CLIError(f"{path}:{line_no}: not a JSON object")
            yield line_no, row
