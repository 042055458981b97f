"""`pocketbert predict`: score a file of texts with a bundle, in batches, into a JSON Lines file.

    pocketbert predict --bundle bundles/ko --task classify --input reviews.tsv --output scores.jsonl

Rows are read lazily and sent to the engine `--batch-size` at a time; each batch's answers are written
before the next batch is read, so memory stays flat whatever the size of the file. Each output line is
`{"line": N, "text": ..., "result": ...}` (plus `"pair"` for next-sentence), where `result` is what the
engine (model/engine.py, the web API's engine) returns for that input. A bad row (an empty text, a wrong
number of fields, invalid JSON, no [MASK] to fill) is reported with its line number, then skipped or, with
`--on-error stop`, ends the run with no output written.

Torch-free: this runs where only the `serve` extra is installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from model.bundle import BundleError
from model.engine import Engine
from model.tokenizer import full_length
from training.arguments import PREDICT_TASKS
from training.corpus import DEFAULT_TEXT_COLUMNS
from training.errors import CLIError
from training.textio import iter_lines, open_text, table_reader

MAX_REPORTED = 20  # bad rows printed one by one; the rest are counted
TABLE_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class Row:
    line: int
    text: str
    pair: str | None = None


@dataclass
class BadRow:
    line: int
    reason: str


# --- reading ----------------------------------------------------------------------------------------
def input_format(path: Path, given: str) -> str:
    """--format, or from the suffix (a .gz suffix is looked through): .tsv, .csv, .jsonl, else lines."""
    if given != "auto":
        return given
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return TABLE_FORMATS.get(suffixes[-1] if suffixes else "", "lines")


def read_rows(
    path: Path, fmt: str, text_column: str | None, pair_column: str | None, pairs: bool
) -> Iterator[Row | BadRow]:
    """The rows of the input file, one at a time, each a Row or a BadRow with its line number."""
    if fmt == "lines":
        rows = _line_rows(path, pairs)
    elif fmt == "jsonl":
        rows = _jsonl_rows(path, text_column, pair_column if pairs else None)
    else:
        rows = _table_rows(path, fmt, text_column, pair_column if pairs else None)
    for row in rows:
        yield _check_text(row) if isinstance(row, Row) else row


def _check_text(row: Row) -> Row | BadRow:
    if not row.text.strip():
        return BadRow(row.line, "empty text")
    if row.pair is not None and not row.pair.strip():
        return BadRow(row.line, "empty second sentence")
    return row


def _line_rows(path: Path, pairs: bool) -> Iterator[Row | BadRow]:
    """One text a line (next-sentence: first<TAB>second)."""
    for line_no, line in enumerate(iter_lines([path]), start=1):
        if not pairs:
            yield Row(line_no, line)
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            yield BadRow(line_no, f"expected 2 tab-separated sentences, found {len(fields)} field(s)")
        else:
            yield Row(line_no, fields[0], fields[1])


def _jsonl_rows(path: Path, text_column: str | None, pair_column: str | None) -> Iterator[Row | BadRow]:
    for line_no, line in enumerate(iter_lines([path]), start=1):
        if not line.strip():
            yield BadRow(line_no, "empty line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRow(line_no, f"invalid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            yield BadRow(line_no, "not a JSON object")
            continue
        column = text_column or next((c for c in DEFAULT_TEXT_COLUMNS if c in obj), None)
        wanted = [c for c in (column, pair_column) if c is not None]
        missing = [c for c in wanted if not isinstance(obj.get(c), str)]
        if column is None or missing:
            looked = column or " / ".join(DEFAULT_TEXT_COLUMNS)
            yield BadRow(line_no, f"no text field {missing[0] if missing else looked!r} holding a string")
            continue
        yield Row(line_no, obj[column], obj[pair_column] if pair_column else None)


def _table_rows(
    path: Path, fmt: str, text_column: str | None, pair_column: str | None
) -> Iterator[Row | BadRow]:
    """A TSV (tabs, no quoting) or CSV (RFC 4180) file with a header row."""
    with open_text(path) as f:
        reader = table_reader(f, fmt)
        try:
            header = next(reader, None)
            if header is None:
                raise CLIError(f"{path}: empty file")
            text_index = _column(path, header, text_column)
            pair_index = _column(path, header, pair_column) if pair_column else None
            for fields in reader:
                line_no = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    yield BadRow(line_no, f"expected {len(header)} fields, found {len(fields)}")
                    continue
                yield Row(line_no, fields[text_index], None if pair_index is None else fields[pair_index])
        except UnicodeDecodeError as exc:
            raise CLIError(f"{path}:{reader.line_num + 1}: not valid UTF-8 ({exc.reason})") from exc
        except csv.Error as exc:
            raise CLIError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({exc})") from exc


def _column(path: Path, header: list[str], name: str | None) -> int:
    """The index of --text-column / --pair-column, or of the first usual text column."""
    if name is not None:
        if name not in header:
            raise CLIError(f"{path}:1: no column {name!r} in the header (columns: {', '.join(header)})")
        return header.index(name)
    for candidate in DEFAULT_TEXT_COLUMNS:
        if candidate in header:
            return header.index(candidate)
    if len(header) == 1:
        return 0
    raise CLIError(
        f"{path}:1: none of the columns {', '.join(header)} is a usual text column "
        f"({', '.join(DEFAULT_TEXT_COLUMNS)}); name it with --text-column"
    )


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in a plain file, for the progress bar's total, in one cheap pass; None for .gz.

    Lines, less a CSV/TSV header; a quoted field that spans lines makes it an overestimate, so the bar
    is closed at the count actually read."""
    if path.suffix == ".gz":
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - (fmt in ("csv", "tsv")))


# --- scoring ----------------------------------------------------------------------------------------
def score(engine: Engine, task: str, rows: list[Row], top_k: int) -> list[tuple[Any, bool]]:
    """For each row of one batch: the engine's answer, and whether the row was cut to the model's
    maximum length (the engine truncates as the web API does with "truncate": true)."""
    texts = [r.text for r in rows]
    ids = engine.tokenizer.encode_ids_batch(texts)  # once: the engine builds its batch from them
    if task == "next-sentence":
        pairs = [(r.text, r.pair or "") for r in rows]
        pair_ids = list(zip(ids, engine.tokenizer.encode_ids_batch([b for _, b in pairs]), strict=True))
        lengths = [full_length(a, b) for a, b in pair_ids]
        results = engine.next_sentence(pairs, ids=pair_ids)
    else:
        lengths = [full_length(i) for i in ids]
        if task == "classify":
            results = engine.classify(texts, ids=ids)
        else:
            results = engine.fill_mask(texts, top_k=top_k, ids=ids)
    return list(zip(results, [n > engine.max_length for n in lengths], strict=True))


Scored = tuple[Row, tuple[Any, bool]]


def score_batch(engine: Engine, task: str, rows: list[Row], top_k: int) -> list[Scored | BadRow]:
    """Score a batch; when the engine refuses it (e.g. a [MASK] cut off by the maximum length), score the
    rows one by one so that only the rows at fault become BadRows."""
    try:
        return list(zip(rows, score(engine, task, rows, top_k), strict=True))
    except ValueError:
        return [score_one(engine, task, row, top_k) for row in rows]


def score_one(engine: Engine, task: str, row: Row, top_k: int) -> Scored | BadRow:
    try:
        return row, score(engine, task, [row], top_k)[0]
    except ValueError as exc:  # the engine's message speaks of "text 0" of its batch
        return BadRow(row.line, str(exc).replace("text 0 ", "the text "))


def check_row(task: str, row: Row) -> Row | BadRow:
    if task == "fill-mask" and "[MASK]" not in row.text:
        return BadRow(row.line, "no [MASK] in the text")
    return row


@dataclass
class Counts:
    scored: int = 0
    bad: int = 0


class BadRowReport:
    """Reports bad rows on stderr (the first MAX_REPORTED one by one), or stops at the first one."""

    def __init__(self, path: Path, stop: bool) -> None:
        self.path = path
        self.stop = stop
        self.lines: list[int] = []

    def __call__(self, bad: BadRow) -> None:
        if self.stop:
            raise CLIError(f"{self.path}:{bad.line}: {bad.reason} (--on-error skip would skip the row)")
        self.lines.append(bad.line)
        if len(self.lines) <= MAX_REPORTED:
            tqdm.write(f"warning: {self.path}:{bad.line}: {bad.reason}; skipped", file=sys.stderr)


def predict(
    engine: Engine,
    task: str,
    rows: Iterator[Row | BadRow],
    out: IO[str],
    report: BadRowReport,
    batch_size: int = 64,
    top_k: int = 5,
    progress: tqdm | None = None,
) -> Counts:
    """Score `rows` batch by batch into `out` (JSON Lines); bad rows go to `report`."""
    counts = Counts()
    batch: list[Row] = []

    def flush() -> None:
        for item in score_batch(engine, task, batch, top_k) if batch else []:
            if isinstance(item, BadRow):
                counts.bad += 1
                report(item)
                continue
            row, (result, truncated) = item
            record: dict[str, Any] = {"line": row.line, "text": row.text}
            if row.pair is not None:
                record["pair"] = row.pair
            record["result"] = result
            record["truncated"] = truncated
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts.scored += 1
        if progress is not None:
            progress.update(len(batch))
            progress.set_postfix(bad=counts.bad, refresh=False)
        batch.clear()

    for row in rows:
        row = check_row(task, row) if isinstance(row, Row) else row
        if isinstance(row, BadRow):
            counts.bad += 1
            report(row)
            if progress is not None:
                progress.update(1)
            continue
        batch.append(row)
        if len(batch) >= batch_size:
            flush()
    flush()
    return counts


# --- the command ------------------------------------------------------------------------------------
def open_engine(bundle: str, task: str, threads: int | None) -> Engine:
    try:
        engine = Engine.load(bundle, intra_op_threads=threads)
    except BundleError as exc:
        raise CLIError(str(exc)) from exc
    if task not in engine.tasks:
        raise CLIError(f"bundle {bundle} does not offer {task} (it offers {', '.join(engine.tasks)})")
    return engine


def run(args: argparse.Namespace) -> int:
    if args.task not in PREDICT_TASKS:
        raise CLIError(f"--task must be one of {', '.join(PREDICT_TASKS)}")
    source, target = Path(args.input), Path(args.output)
    if source.is_dir():
        raise CLIError(f"{source}: is a folder; --input names a file")
    if not source.is_file():
        raise CLIError(f"{source}: no such file")
    if target.is_dir():
        raise CLIError(f"{target}: is a folder; --output names the file to write")
    if target.exists() and target.samefile(source):
        raise CLIError(f"{target}: is the --input file; the output would replace it, choose another --output")
    fmt = input_format(source, args.input_format)
    if args.task == "next-sentence" and fmt != "lines" and args.pair_column is None:
        raise CLIError(f"{source}: next-sentence on a {fmt} file needs --pair-column (the second sentence)")
    engine = open_engine(args.bundle, args.task, args.threads)
    rows = read_rows(source, fmt, args.text_column, args.pair_column, pairs=args.task == "next-sentence")
    report = BadRowReport(source, stop=args.on_error == "stop")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    started = time.perf_counter()
    bar = tqdm(
        total=count_rows(source, fmt), unit="row", disable=args.quiet, dynamic_ncols=True, mininterval=1.0
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            counts = predict(engine, args.task, rows, out, report, args.batch_size, args.top_k, bar)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)  # readers never see a half-written output
        bar.total = bar.n  # the rows there were, whatever the estimate
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    rate = counts.scored / max(seconds, 1e-9)
    summary = f"wrote {target}: {counts.scored} rows in {seconds:.1f} s ({rate:.0f} rows/s)"
    if counts.bad:
        more = ", ..." if counts.bad > MAX_REPORTED else ""
        shown = ", ".join(map(str, report.lines[:MAX_REPORTED])) + more
        summary += f"; skipped {counts.bad} bad row(s) (lines {shown})"
    print(summary)
    if counts.scored == 0 and counts.bad == 0:  # not an error (scripts pass empty files), rarely meant
        print(f"warning: {source}: no rows to score", file=sys.stderr)
    return 0
