"""Readers of classification data: NSMC, SST-2, CSV / TSV / JSONL; errors name the file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.errors import CLIError
from training.tasks import LabeledTexts, read_nsmc, read_sst2, read_table, read_task, split_dev


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_nsmc_skips_empty_and_missing_documents(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.txt",
        "id\tdocument\tlabel\n1\t굳 ㅋ\t1\n2\t\t0\n3\t0\n"
        '4\t"""포스터 표정이 """"계획대로"""""""\t0\n5\t   \t1\n',
    )
    data = read_nsmc(path)
    assert data.texts == ["굳 ㅋ", '"""포스터 표정이 """"계획대로"""""""']  # raw text, quotes kept
    assert data.labels == [1, 0]
    assert data.skipped == 3
    assert data.label_names == ["negative", "positive"]


def test_nsmc_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "ratings.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("id\tdocument\tlabel\n1\t좋아요\t1\n")
    assert read_nsmc(path).texts == ["좋아요"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1\tgood\t2\n", "ratings.txt:3: label must be 0 or 1"),
        ("1\tgood\t1\textra\n", "ratings.txt:3: expected 3 tab-separated fields"),
    ],
)
def test_nsmc_bad_rows_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path / "ratings.txt", "id\tdocument\tlabel\n9\tfine\t0\n" + body)
    with pytest.raises(CLIError, match=message):
        read_nsmc(path)


def test_wrong_header_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", "text\tlabel\nok\t1\n")
    with pytest.raises(CLIError, match="train.tsv:1: expected the header"):
        read_sst2(path)


def test_sst2(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", "sentence\tlabel\nhide new secretions \t0\na gem \t1\n")
    data = read_sst2(path)
    assert data.texts == ["hide new secretions ", "a gem "] and data.labels == [0, 1]
    assert data.majority_accuracy() == 0.5


def test_csv_keeps_label_names_and_maps_dev_labels(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", 'review,stars\n"great, really",good\nawful,bad\nfine,good\n,bad\n')
    data = read_table(train, "review", "stars")
    assert data.label_names == ["bad", "good"] and data.labels == [1, 0, 1] and data.skipped == 1
    assert data.texts[0] == "great, really"
    dev = write(tmp_path / "dev.csv", "review,stars\nmeh,bad\nwow,excellent\n")
    with pytest.raises(CLIError, match=r"dev.csv:3: label 'excellent' is not one of the train labels"):
        read_table(dev, "review", "stars", data.label_names)


def test_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = write(tmp_path / "train.tsv", "label\ttext\n10\tten\n2\ttwo\n2\tdeux\n")
    data = read_table(tsv)
    assert data.label_names == ["2", "10"] and data.labels == [1, 0, 0]  # numeric names in numeric order
    jsonl = write(
        tmp_path / "train.jsonl",
        "\n".join(json.dumps(r) for r in [{"text": "yes", "label": "pos"}, {"text": "no", "label": "neg"}])
        + "\n",
    )
    assert read_table(jsonl).label_names == ["neg", "pos"]
    bad = write(tmp_path / "bad.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"\n')
    with pytest.raises(CLIError, match="bad.jsonl:2: not a JSON object"):
        read_table(bad)


def test_a_stray_quote_in_a_tsv_swallows_no_rows(tmp_path: Path) -> None:
    """TSV is read with quoting off, as `prepare` reads it: a quote is part of the text."""
    tsv = write(tmp_path / "train.tsv", 'text\tlabel\n"what a film\tpos\nboring\tneg\nsay "wow"\tpos\n')
    data = read_table(tsv)
    assert data.texts == ['"what a film', "boring", 'say "wow"'] and data.labels == [1, 0, 1]
    csv_file = write(tmp_path / "train.csv", 'text,label\n"a, b ""c""",pos\nd,neg\n')
    assert read_table(csv_file).texts == ['a, b "c"', "d"]  # CSV keeps RFC 4180 quoting


def test_generic_errors(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="no column 'text'"):
        read_table(write(tmp_path / "a.csv", "sentence,label\nx,1\n"))
    with pytest.raises(CLIError, match="a.csv:3: expected 2 fields, found 3"):
        read_table(write(tmp_path / "a.csv", "text,label\nx,1\ny,0,z\n"))
    with pytest.raises(CLIError, match="unknown format"):
        read_table(write(tmp_path / "a.xlsx", "text,label\n"))
    with pytest.raises(CLIError, match="only one label"):
        read_task("csv", write(tmp_path / "one.csv", "text,label\nx,1\ny,1\n"))
    with pytest.raises(CLIError, match="no such file"):
        read_task("nsmc", tmp_path / "missing.txt")


def test_real_nsmc_and_sst2(shared_data: Path) -> None:
    test = read_nsmc(shared_data / "nsmc" / "ratings_test.txt")
    assert len(test) + test.skipped == 50_000 and test.skipped == 3  # PROVENANCE.md: 3 empty documents
    assert test.labels.count(1) + test.labels.count(0) == len(test)
    dev = read_sst2(shared_data / "sst2" / "dev.tsv")
    assert len(dev) == 872 and set(dev.labels) == {0, 1}


# --- carving a dev split ------------------------------------------------------------------------------
_SENTENCES = [
    ("a gorgeous , witty , seductive movie .", 1),
    ("the plot is nothing but boilerplate clichés from start to finish .", 0),
    ("it 's a charming and often affecting journey .", 1),
    ("unflinchingly bleak and desperate", 0),
    ("the acting , costumes , music , cinematography and sound are all astounding .", 1),
    ("a sometimes tedious film .", 0),
    ("this is a film well worth seeing , talking and singing heads and all .", 1),
    ("it 's just incredibly dull .", 0),
]


def phrase_rows(sentences: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """SST-2's shape: each sentence, and some of its phrases (runs of its words) as rows of their own."""
    rows = []
    for text, label in sentences:
        words = text.split()
        rows.append((text + " ", label))  # GLUE's rows end with a space
        rows += [(" ".join(words[i : i + 3]), label) for i in range(0, len(words) - 3, 2)]
        rows.append((words[-2], label))
    return rows


def as_labeled(rows: list[tuple[str, int]]) -> LabeledTexts:
    return LabeledTexts([t for t, _ in rows], [y for _, y in rows], ["negative", "positive"], "train.tsv")


def contains(sentence: str, phrase: str) -> bool:
    words, part = sentence.split(), phrase.split()
    return any(words[i : i + len(part)] == part for i in range(len(words) - len(part) + 1))


def test_sentence_dev_split_holds_whole_sentences_whose_phrases_left_training() -> None:
    data = as_labeled(phrase_rows(_SENTENCES))
    train, dev = split_dev(data, 0.25, seed=3, unit="sentence")
    assert len(dev) == 2  # a quarter of the 8 sentences
    assert {t.strip() for t in dev.texts} <= {s for s, _ in _SENTENCES}
    assert dev.labels == [dict(_SENTENCES)[t.strip()] for t in dev.texts]
    for text in train.texts:  # nothing of a dev sentence is left to memorise
        assert not any(contains(d, text) for d in dev.texts), text
    # and the training sentences keep every phrase of theirs
    kept = [s for s, _ in _SENTENCES if s not in {d.strip() for d in dev.texts}]
    expected = [t for t, _ in phrase_rows(_SENTENCES) if any(contains(s, t) for s in kept)]
    expected = [t for t in expected if not any(contains(d, t) for d in dev.texts)]
    assert train.texts == expected
    assert "whole sentences" in dev.path
    # the same file, fraction and seed: the same split; another seed: another
    assert split_dev(data, 0.25, seed=3, unit="sentence")[1].texts == dev.texts
    assert {t for s in range(10) for t in split_dev(data, 0.25, seed=s, unit="sentence")[1].texts} != set(
        dev.texts
    )


def test_a_row_split_of_phrase_rows_leaks_and_of_plain_sentences_equals_the_sentence_split() -> None:
    phrases = as_labeled(phrase_rows(_SENTENCES))
    train, dev = split_dev(phrases, 0.25, seed=3)
    assert any(contains(t, d) or contains(d, t) for d in dev.texts for t in train.texts)  # the leak
    plain = as_labeled(_SENTENCES)  # no row contains another: every row is a sentence
    by_sentence, by_row = split_dev(plain, 0.25, seed=3, unit="sentence"), split_dev(plain, 0.25, seed=3)
    assert [part.texts for part in by_sentence] == [part.texts for part in by_row]


def test_dev_split_errors() -> None:
    data = as_labeled([("one sentence .", 1), ("one sentence", 1), ("sentence", 0)])
    with pytest.raises(CLIError, match="1 whole sentences are too few"):
        split_dev(data, 0.5, unit="sentence")
    with pytest.raises(CLIError, match="dev unit must be one of row, sentence"):
        split_dev(data, 0.5, unit="word")


def test_real_sst2_sentence_dev_split(shared_data: Path) -> None:
    data = read_sst2(shared_data / "sst2" / "train.tsv")
    train, dev = split_dev(data, 0.1, unit="sentence")
    assert 600 < len(dev) < 800  # a tenth of its ~6,900 sentences
    assert 55_000 < len(train) < len(data) - len(dev)  # their phrases left training too
    assert (
        17 < sum(len(t.split()) for t in dev.texts) / len(dev) < 22
    )  # sentences, as SST-2's dev (19.5 words)
