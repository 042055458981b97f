"""Reading corpora for `pocketbert prepare`: documents (lists of sentences) from text, TSV and CSV files.

Input formats (`--format`):
  lines: one sentence or paragraph per line, a blank line between documents (BERT's layout).
  docs:  one document per line, split into sentences by `split_sentences`.
  tsv/csv: a header row, then one document per row, taken from `text_column` (a name or a 0-based index;
         default the first of DEFAULT_TEXT_COLUMNS present) and split into sentences.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from training.errors import CLIError
from training.textio import iter_lines, table_reader

INPUT_FORMATS = ("lines", "docs", "tsv", "csv")
DEFAULT_TEXT_COLUMNS = ("text", "document", "sentence", "review")  # tried in order for tsv/csv input

_SENTENCE_END = re.compile(r"[.!?。！？…]+[\"'”’」』)\]]*\s+")
_ABBREVIATION = re.compile(
    r"(?:[A-Za-z]\.)*[A-Za-z]|Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|etc|Inc|Ltd|Co|No|Fig|Vol|pp"
)


def split_sentences(text: str) -> list[str]:
    """Split a paragraph after . ! ? (and their CJK forms) followed by whitespace.

    Works for Korean ("...했다. 그러나 ...") and English; a full stop after an initial or a common
    abbreviation ("J. R. R. Tolkien", "U.S.", "Dr.", "e.g.") does not end a sentence.
    """
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        head = text[start : match.start()]
        last_word = head.rsplit(None, 1)[-1] if head.strip() else ""
        if _ABBREVIATION.fullmatch(last_word.lstrip("(\"'")):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def iter_documents(
    paths: Sequence[str | Path], input_format: str = "lines", text_column: str | None = None
) -> Iterator[list[str]]:
    """Documents (lists of non-empty sentences) from every file, streamed; formats: module docstring."""
    for path in paths:
        if input_format == "lines":
            yield from _line_documents(path)
        elif input_format == "docs":
            for line in iter_lines([path]):
                sentences = split_sentences(line)
                if sentences:
                    yield sentences
        elif input_format in ("tsv", "csv"):
            yield from _table_documents(path, input_format, text_column)
        else:
            raise CLIError(
                f"unknown input format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}"
            )


def _line_documents(path: str | Path) -> Iterator[list[str]]:
    """One sentence or paragraph per line; a blank line ends a document."""
    document: list[str] = []
    for line in iter_lines([path]):
        line = line.strip()
        if line:
            document.append(line)
        elif document:
            yield document
            document = []
    if document:
        yield document


def _table_documents(path: str | Path, input_format: str, text_column: str | None) -> Iterator[list[str]]:
    """One document per row of a TSV or CSV file (`textio.table_reader` says how each is read)."""
    reader = table_reader(iter_lines([path]), input_format)
    try:
        header = next(reader, None)
        if header is None:
            return
        column = _find_column(path, header, text_column)
        for row in reader:
            if len(row) <= column:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                raise CLIError(
                    f"{path}:{reader.line_num}: {len(row)} fields, no column {column} ({header[column]!r})"
                )
            sentences = split_sentences(row[column])
            if sentences:
                yield sentences
    except csv.Error as exc:
        raise CLIError(f"{path}:{reader.line_num}: not valid {input_format.upper()} ({exc})") from exc


def _find_column(path: str | Path, header: list[str], text_column: str | None) -> int:
    if text_column is not None and text_column.isdigit():
        if int(text_column) >= len(header):
            raise CLIError(f"{path}: no column {text_column}: the header has {len(header)} columns")
        return int(text_column)
    candidates = [text_column] if text_column is not None else list(DEFAULT_TEXT_COLUMNS)
    for name in candidates:
        if name in header:
            return header.index(name)
    wanted = f"column {text_column!r}" if text_column is not None else f"text column ({'/'.join(candidates)})"
    raise CLIError(f"{path}:1: no {wanted} in the header {header}; name it with --text-column")
