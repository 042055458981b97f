"""Readers for sentence-classification data: NSMC, GLUE SST-2, and any CSV / TSV / JSONL file.

Every reader returns a `LabeledTexts`: the texts, integer labels, the label names (index = label id),
and how many rows were skipped because their text was empty. A row that cannot be read (wrong number
of fields, unknown label) is a `CLIError` naming the file and line, never a stack trace.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.errors import CLIError
from training.textio import iter_json_objects, iter_lines, open_text, table_reader

BINARY_SENTIMENT = ["negative", "positive"]  # NSMC and SST-2: 0 = negative, 1 = positive
TASK_FORMATS = ("nsmc", "sst2", "csv")  # --task: the file format of the labelled data


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    path: str
    skipped: int = 0  # rows with an empty or missing text

    def __len__(self) -> int:
        return len(self.texts)

    def majority_accuracy(self) -> float:
        """Accuracy of always answering the most common label: the bar a useful classifier must clear."""
        if not self.labels:
            return 0.0
        counts = [self.labels.count(i) for i in range(len(self.label_names))]
        return max(counts) / len(self.labels)


DEV_UNITS = ("row", "sentence")  # --dev-unit: what a carved dev split samples
DEFAULT_DEV_UNIT = "row"  # also what runs made before --dev-unit existed used


def split_dev(
    data: LabeledTexts, fraction: float, seed: int = 0, unit: str = DEFAULT_DEV_UNIT
) -> tuple[LabeledTexts, LabeledTexts]:
    """Carve a dev split from training data: a reproducible random `fraction` of the rows, or with
    unit="sentence" of the whole sentences (see `whole_sentences`), whose phrases then leave training.

    The same file, fraction, seed and unit always give the same split, so every run of a study (and the
    in-domain pretraining text, which must leave the dev rows out) agrees on which rows are dev.
    """
    if not 0 < fraction < 1:
        raise CLIError(f"the dev fraction must be between 0 and 1, got {fraction}")
    if unit not in DEV_UNITS:
        raise CLIError(f"the dev unit must be one of {', '.join(DEV_UNITS)}, got {unit!r}")
    by_sentence = unit == "sentence"
    words = [_words(t) for t in data.texts] if by_sentence else []
    candidates = whole_sentences(words) if by_sentence else list(range(len(data)))
    n_dev = max(1, round(len(candidates) * fraction))
    if n_dev >= len(candidates):
        noun = "whole sentences" if by_sentence else "examples"
        raise CLIError(
            f"{data.path}: {len(candidates)} {noun} are too few to carve a dev split of {fraction}"
        )
    dev_rows = set(random.Random(seed).sample(candidates, n_dev))
    left_out = rows_inside(words, dev_rows) if by_sentence else set()
    unit_note = ", whole sentences" if by_sentence else ""

    def pick(rows: list[int], part: str, skipped: int) -> LabeledTexts:
        return LabeledTexts(
            [data.texts[i] for i in rows],
            [data.labels[i] for i in rows],
            data.label_names,
            f"{data.path} ({part} part{unit_note}, fraction {fraction}, seed {seed})",
            skipped,
        )

    train_rows = [i for i in range(len(data)) if i not in dev_rows and i not in left_out]
    return pick(train_rows, "train", data.skipped), pick(sorted(dev_rows), "dev", 0)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _spans(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Every contiguous run of words, the whole included."""
    for start in range(len(words)):
        for end in range(start + 1, len(words) + 1):
            yield words[start:end]


def whole_sentences(words: list[tuple[str, ...]]) -> list[int]:
    """The rows (first of each distinct text) that no other row contains as a run of whole words.

    Why: SST-2's training file holds every phrase of its sentences (the constituents of their parse
    trees, each labelled) as rows of its own. A random row in dev has its sentence and sibling phrases
    in train, so a carved dev of rows measures memory more than generalisation (TF-IDF scores 92.7 on
    one, against 82.5 on SST-2's real dev of unseen sentences). A dev split of these sentences, with
    `rows_inside` them left out of training, holds only unseen text. In a file of distinct plain
    sentences, where no row contains another, every row is one, and the split is the row split.
    """
    present = set(words)
    inside_another = {span for w in present for span in _spans(w) if span != w and span in present}
    first_row: dict[tuple[str, ...], int] = {}
    for i, w in enumerate(words):
        if w and w not in inside_another:
            first_row.setdefault(w, i)
    return sorted(first_row.values())


def rows_inside(words: list[tuple[str, ...]], sentences: set[int]) -> set[int]:
    """The other rows contained in these sentences: their phrases, and the sentences' duplicates."""
    covered = {span for i in sentences for span in _spans(words[i])}
    return {i for i, w in enumerate(words) if w in covered and i not in sentences}


def _numbered_rows(path: str | Path, expected_header: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) after checking the header; quotes are kept as they are."""
    lines = iter_lines([path])
    header = next(lines, None)
    if header is None:
        raise CLIError(f"{path}: empty file")
    if header.split("\t") != list(expected_header):
        raise CLIError(
            f"{path}:1: expected the header {'<TAB>'.join(expected_header)!r}, found {header[:80]!r}"
        )
    for line_no, line in enumerate(lines, start=2):
        if line.strip():
            yield line_no, line.split("\t")


def _binary_label(path: str | Path, line_no: int, value: str) -> int:
    value = value.strip()
    if value not in ("0", "1"):
        raise CLIError(f"{path}:{line_no}: label must be 0 or 1, found {value[:40]!r}")
    return int(value)


def read_nsmc(path: str | Path) -> LabeledTexts:
    """NSMC ratings_*.txt: id<TAB>document<TAB>label with a header; a review with no text is skipped.

    The raw text is kept exactly (no CSV unquoting): the corpus' doubled quotes are part of the review
    as the tokenizer will see it at serving time.
    """
    data = LabeledTexts([], [], list(BINARY_SENTIMENT), str(path))
    for line_no, fields in _numbered_rows(path, ("id", "document", "label")):
        if len(fields) == 2:  # "id<TAB>label": the document is missing altogether
            _binary_label(path, line_no, fields[1])
            data.skipped += 1
            continue
        if len(fields) != 3:
            raise CLIError(
                f"{path}:{line_no}: expected 3 tab-separated fields (id, document, label), "
                f"found {len(fields)}"
            )
        _add_example(data, path, line_no, fields[1], fields[2])
    return data


def read_sst2(path: str | Path) -> LabeledTexts:
    """GLUE SST-2 train.tsv / dev.tsv: sentence<TAB>label with a header."""
    data = LabeledTexts([], [], list(BINARY_SENTIMENT), str(path))
    for line_no, fields in _numbered_rows(path, ("sentence", "label")):
        if len(fields) != 2:
            raise CLIError(
                f"{path}:{line_no}: expected 2 tab-separated fields (sentence, label), found {len(fields)}"
            )
        _add_example(data, path, line_no, fields[0], fields[1])
    return data


def _add_example(data: LabeledTexts, path: str | Path, line_no: int, text: str, label_field: str) -> None:
    """Append one labelled text; an empty text is counted as skipped (its label is still validated)."""
    label = _binary_label(path, line_no, label_field)
    if not text.strip():
        data.skipped += 1
        return
    data.texts.append(text)
    data.labels.append(label)


def _table_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = suffixes[-1].lstrip(".").lower() if suffixes else ""
    if fmt not in ("csv", "tsv", "jsonl"):
        raise CLIError(f"{path}: unknown format {fmt!r}; use a .csv, .tsv or .jsonl file (optionally .gz)")
    return fmt


def _table_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[int, str, str]]:
    """(line number, text, label as a string) from a CSV / TSV with a header row, or a JSONL file."""
    fmt = _table_format(path)
    if fmt == "jsonl":
        for line_no, row in iter_json_objects(path):
            if label_column not in row:
                raise CLIError(f"{path}:{line_no}: no '{label_column}' field")
            text = row.get(text_column)
            yield line_no, "" if text is None else str(text), str(row[label_column])
        return
    with open_text(path) as f:
        try:
            reader = table_reader(f, fmt)
            header = next(reader, None)
            if header is None:
                raise CLIError(f"{path}: empty file")
            for column in (text_column, label_column):
                if column not in header:
                    raise CLIError(
                        f"{path}:1: no column {column!r} in the header (columns: {', '.join(header)})"
                    )
            t, lab = header.index(text_column), header.index(label_column)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise CLIError(
                        f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(row)}"
                    )
                yield reader.line_num, row[t], row[lab]
        except UnicodeDecodeError as exc:
            raise CLIError(f"{path}: not valid UTF-8 ({exc.reason})") from exc
        except csv.Error as exc:
            raise CLIError(f"{path}: malformed {fmt.upper()} ({exc})") from exc


def _sorted_names(names: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" after "10" would surprise), other names alphabetically."""
    try:
        return sorted(names, key=lambda n: float(n))
    except ValueError:
        return sorted(names)


def read_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> LabeledTexts:
    """A generic labelled file. Without label_names (the train file) the names are the labels found;
    with them (dev / test) every label must be one of the train file's."""
    path = Path(path)
    rows = list(_table_rows(path, text_column, label_column))
    if label_names is None:
        label_names = _sorted_names({label.strip() for _, _, label in rows})
    ids = {name: i for i, name in enumerate(label_names)}
    data = LabeledTexts([], [], list(label_names), str(path))
    for line_no, text, label in rows:
        if label.strip() not in ids:
            raise CLIError(
                f"{path}:{line_no}: label {label[:40]!r} is not one of the train labels {list(label_names)}"
            )
        if not text.strip():
            data.skipped += 1
            continue
        data.texts.append(text)
        data.labels.append(ids[label.strip()])
    return data


def read_task(
    task: str,
    path: str | Path,
    label_names: Sequence[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> LabeledTexts:
    """Dispatch on --task; `csv` covers .csv, .tsv and .jsonl files."""
    if task == "nsmc":
        data = read_nsmc(path)
    elif task == "sst2":
        data = read_sst2(path)
    elif task == "csv":
        data = read_table(path, text_column, label_column, label_names)
    else:
        raise CLIError(f"unknown task {task!r}; choose one of {', '.join(TASK_FORMATS)}")
    if not data.texts:
        raise CLIError(f"{path}: no labelled examples")
    if label_names is None and len(data.label_names) < 2:
        raise CLIError(f"{path}: only one label ({data.label_names}); classification needs at least two")
    return data
