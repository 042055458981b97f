"""Reading text files, plain UTF-8 or gzip-compressed, without loading them whole: lines, JSONL, TSV/CSV."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
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


def iter_json_objects(path: str | Path, drop_truncated_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file (.gz too).

    A line that is not a JSON object is an error naming the file and line. drop_truncated_tail: a process
    killed while appending a line leaves half of it at the end of the file; that last line is then dropped
    with a warning instead.
    """
    with open_text(path) as f:
        lines = ((line_no, line) for line_no, line in enumerate(f, start=1) if line.strip())
        current = next(lines, None)
        while current is not None:
            line_no, line = current
            current = next(lines, None)  # None: `line` is the last one
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if drop_truncated_tail and current is None:
                    print(
                        f"warning: {path}:{line_no}: dropped a truncated last line ({exc.msg})",
                        file=sys.stderr,
                    )
                    return
                raise CLIError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise CLIError(f"{path}:{line_no}: not a JSON object")
            yield line_no, row


def table_reader(lines: Iterable[str], table_format: str) -> Iterator[list[str]]:
    """A csv.reader for "tsv" or "csv" text.

    TSV: split at tabs with quoting off, so a stray quote in a review never swallows the rows after it
    (NSMC has many). CSV: RFC 4180, quoted fields may hold commas and doubled quotes.
    """
    if table_format == "tsv":
        return csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(lines)
