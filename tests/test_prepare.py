"""`pocketbert prepare`: instance construction (NSP labels, lengths, truncation sides), the output
files, the validation split, input formats, and the one-line errors that leave nothing behind."""

from __future__ import annotations

import gzip
import json
import random
import stat
from pathlib import Path

import numpy as np
import pytest

import training.prepare as prep
from model.tokenizer import CLS_ID, IS_NEXT, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID
from training.cli import main as cli_main
from training.corpus import split_sentences
from training.instances import InstanceConfig, create_instances
from training.prepare import iter_chunks, prepare

# --- instance construction on synthetic documents ----------------------------------------------------
# Every token id is unique (its position in the flat array, plus NUM_SPECIAL), so a token tells which
# document it came from and where: IsNext, NotNext and truncation become checkable exactly.


def synthetic_chunk(
    documents: int, seed: int = 0
) -> tuple[list[list[tuple[int, int]]], np.ndarray, list[int]]:
    """doc_spans, flat token array, and the document of every token."""
    rng = random.Random(seed)
    doc_spans, doc_of_token, position = [], [], 0
    for d in range(documents):
        spans = []
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(1, 40)
            spans.append((position, position + n))
            position += n
        doc_spans.append(spans)
        doc_of_token += [d] * (position - len(doc_of_token))
    flat = np.arange(position, dtype=np.int64) + NUM_SPECIAL
    return doc_spans, flat, doc_of_token


@pytest.fixture(scope="module")
def synthetic_instances():
    doc_spans, flat, doc_of_token = synthetic_chunk(3000)
    is_valid = [d % 10 == 0 for d in range(len(doc_spans))]
    config = InstanceConfig("unused", max_length=64, dupe_factor=5, short_seq_prob=0.1)
    pairs = create_instances(doc_spans, is_valid, flat, config, random.Random(0))
    return pairs, doc_spans, doc_of_token, is_valid, config


def _doc(token: int, doc_of_token: list[int]) -> int:
    return doc_of_token[int(token) - NUM_SPECIAL]


def test_nsp_labels_are_half_and_half(synthetic_instances) -> None:
    pairs = synthetic_instances[0]["train"]
    assert len(pairs) > 40_000
    not_next = sum(label for _, _, label in pairs) / len(pairs)
    assert abs(not_next - 0.5) <= 0.01, not_next


def test_is_next_b_continues_a_and_not_next_b_comes_from_another_document(synthetic_instances) -> None:
    pairs, _, doc_of_token, _, _ = synthetic_instances
    for a, b, label in pairs["train"] + pairs["valid"]:
        assert len(a) >= 1 and len(b) >= 1
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # consecutive text of one document
        if label == IS_NEXT:
            assert b[0] == a[-1] + 1  # B starts where A ends: truncation kept the words at the boundary
        else:
            assert _doc(a[0], doc_of_token) != _doc(b[0], doc_of_token)


def test_pairs_never_exceed_max_length_and_short_targets_occur(synthetic_instances) -> None:
    pairs, _, _, _, config = synthetic_instances
    totals = np.array([len(a) + len(b) + 3 for a, b, _ in pairs["train"]])
    assert totals.max() <= config.max_length
    assert (totals == config.max_length).mean() > 0.5  # most fill the target
    assert (totals < config.max_length // 2).mean() > 0.05  # short_seq_prob and document ends


def test_truncation_takes_the_front_of_a_and_the_end_of_b() -> None:
    # Two 30-token sentences gathered for a 40-token target: an IsNext pair of 60 tokens must lose 20.
    doc_spans = [[(0, 30), (30, 60)], [(60, 90)]]
    flat = np.arange(90) + NUM_SPECIAL
    config = InstanceConfig("unused", max_length=43, dupe_factor=50, short_seq_prob=0.0)
    pairs = create_instances(doc_spans, [False, False], flat, config, random.Random(0))["train"]
    boundary = [(a, b) for a, b, label in pairs if label == IS_NEXT and b[0] == 30 + NUM_SPECIAL]
    assert len(boundary) > 5
    for a, b in boundary:
        assert len(a) == 20 and len(b) == 20  # 40 = max_length - 3, taken evenly from the two sides
        assert a[0] == 10 + NUM_SPECIAL and a[-1] == 29 + NUM_SPECIAL  # A lost its front
        assert b[0] == 30 + NUM_SPECIAL and b[-1] == 49 + NUM_SPECIAL  # B lost its end


def test_validation_documents_never_reach_the_training_split(synthetic_instances) -> None:
    pairs, _, doc_of_token, is_valid, _ = synthetic_instances
    for a, b, _ in pairs["train"]:
        assert not is_valid[_doc(a[0], doc_of_token)] and not is_valid[_doc(b[0], doc_of_token)]
    for a, _, _ in pairs["valid"]:
        assert is_valid[_doc(a[0], doc_of_token)]
    assert len(pairs["valid"]) > 1000


def test_single_sentence_documents_still_give_half_is_next() -> None:
    doc_spans = [[(i * 30, i * 30 + 30)] for i in range(500)]  # reviews: one sentence each
    flat = np.arange(500 * 30) + NUM_SPECIAL
    config = InstanceConfig("unused", max_length=128, dupe_factor=20)
    pairs = create_instances(doc_spans, [False] * 500, flat, config, random.Random(0))["train"]
    assert abs(sum(label for *_, label in pairs) / len(pairs) - 0.5) <= 0.02
    for a, b, label in pairs:
        if label == IS_NEXT:
            assert b[0] == a[-1] + 1


def test_chunks_hold_whole_documents_and_a_short_tail_joins_the_previous_chunk() -> None:
    documents = [[f"sentence {d} {s}" for s in range(3)] for d in range(10)]
    chunks = list(iter_chunks(documents, chunk_chars=40, min_docs=3))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [doc for c in chunks for doc in c.documents] == documents
    assert all(len(c.documents) >= 3 for c in chunks)


def test_split_sentences_english_and_korean() -> None:
    assert split_sentences("Dr. Smith met J. R. R. Tolkien in the U.S. in 1950. He liked it! Did she?") == [
        "Dr. Smith met J. R. R. Tolkien in the U.S. in 1950.",
        "He liked it!",
        "Did she?",
    ]
    assert split_sentences("화학은 자연과학의 한 분야이다. 물리학도 물질을 다룬다.  그렇다!") == [
        "화학은 자연과학의 한 분야이다.",
        "물리학도 물질을 다룬다.",
        "그렇다!",
    ]
    assert split_sentences('He said "stop." Then 3.5 kg fell.') == ['He said "stop."', "Then 3.5 kg fell."]
    assert split_sentences("   ") == []


# --- the prepare function and its output files ---------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tiny_tokenizer_dir: Path, tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prepared") / "data"
    index = prepare(
        tiny_tokenizer_dir,
        [tiny_corpus],
        out,
        max_length=48,
        dupe_factor=3,
        valid_fraction=0.1,
        workers=1,
        seed=3,
        show_progress=False,
    )
    return out, index


def test_index_records_counts_tokenizer_and_arguments(prepared, tiny_tokenizer) -> None:
    out, index = prepared
    assert json.loads((out / "index.json").read_text()) == index
    assert index["format"] == 1 and index["max_length"] == 48 and index["dtype"] == "uint16"
    assert index["vocab_size"] == tiny_tokenizer.vocab_size
    assert index["tokenizer_sha256"] == tiny_tokenizer.checksum
    assert index["seed"] == 3 and index["args"]["dupe_factor"] == 3
    splits = index["splits"]
    assert splits["train"]["documents"] + splits["valid"]["documents"] == 120  # the generated corpus
    assert splits["valid"]["documents"] >= 3 and splits["valid"]["instances"] > 0
    assert not list(out.parent.glob(".*tmp*"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # published readable by everyone
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_rows_are_cls_a_sep_b_sep_then_padding(prepared) -> None:
    out, index = prepared
    for split in ("train", "valid"):
        ids = np.load(out / f"{split}.input_ids.npy", mmap_mode="r")
        lengths = np.load(out / f"{split}.lengths.npy")
        segment_a = np.load(out / f"{split}.segment_a.npy")
        labels = np.load(out / f"{split}.nsp_labels.npy")
        n = index["splits"][split]["instances"]
        assert ids.shape == (n, 48) and ids.dtype == np.uint16
        assert lengths.shape == segment_a.shape == labels.shape == (n,)
        assert int(lengths.sum()) == index["splits"][split]["tokens"]
        assert set(np.unique(labels)) <= {0, 1}
        rows = np.arange(n)
        assert (ids[:, 0] == CLS_ID).all()
        assert (ids[rows, segment_a - 1] == SEP_ID).all() and (ids[rows, lengths - 1] == SEP_ID).all()
        assert (segment_a >= 3).all() and (lengths >= segment_a + 2).all() and (lengths <= 48).all()
        positions = np.arange(48)
        body = (positions > 0) & (positions < lengths[:, None] - 1) & (positions != segment_a[:, None] - 1)
        assert (np.asarray(ids)[body] >= NUM_SPECIAL).sum() >= 0.99 * body.sum()  # [UNK] is rare
        assert not np.isin(np.asarray(ids)[body], [PAD_ID, CLS_ID, SEP_ID, MASK_ID]).any()
        assert (np.asarray(ids)[positions >= lengths[:, None]] == PAD_ID).all()


def test_output_does_not_depend_on_the_number_of_workers(
    tiny_tokenizer_dir, tiny_corpus, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(prep, "CHUNK_CHARS", 3000)  # several chunks, so the workers really share the work
    monkeypatch.setattr(prep, "MIN_CHUNK_DOCS", 4)
    kwargs = dict(max_length=40, dupe_factor=2, valid_fraction=0.1, seed=5, show_progress=False)
    one = prepare(tiny_tokenizer_dir, [tiny_corpus], tmp_path / "one", workers=1, **kwargs)
    two = prepare(tiny_tokenizer_dir, [tiny_corpus], tmp_path / "two", workers=2, **kwargs)
    assert one["splits"] == two["splits"]
    for name in sorted(p.name for p in (tmp_path / "one").glob("*.npy")):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)), name
    other_seed = prepare(
        tiny_tokenizer_dir, [tiny_corpus], tmp_path / "three", workers=1, **{**kwargs, "seed": 6}
    )
    assert not np.array_equal(
        np.load(tmp_path / "one" / "train.nsp_labels.npy"),
        np.load(tmp_path / "three" / "train.nsp_labels.npy"),
    )
    assert other_seed["splits"]["train"]["instances"] > 0


def test_gzip_docs_tsv_and_csv_inputs(tiny_tokenizer_dir, tmp_path) -> None:
    sentences = [
        "the cat sees the park.",
        "a dog likes a book.",
        "고양이가 정말 좋아한다.",
        "my friend helps the city.",
    ]
    docs = [" ".join(random.Random(i).choices(sentences, k=4)) for i in range(40)]
    (tmp_path / "docs.txt.gz").write_bytes(gzip.compress(("\n".join(docs) + "\n").encode()))
    (tmp_path / "reviews.tsv").write_text(
        "id\tdocument\tlabel\n" + "".join(f"{i}\t{d}\t1\n" for i, d in enumerate(docs)) + "\n",
        encoding="utf-8",
    )
    (tmp_path / "reviews.csv").write_text(
        "id,text\n" + "".join(f'{i},"{d}, ""quoted"""\n' for i, d in enumerate(docs)), encoding="utf-8"
    )
    common = dict(max_length=32, dupe_factor=1, valid_fraction=0.0, workers=1, show_progress=False)
    for name, fmt in (("docs.txt.gz", "docs"), ("reviews.tsv", "tsv"), ("reviews.csv", "csv")):
        index = prepare(
            tiny_tokenizer_dir, [tmp_path / name], tmp_path / f"out-{fmt}", input_format=fmt, **common
        )
        assert index["splits"]["train"]["documents"] == 40, fmt
        assert index["splits"]["train"]["instances"] >= 40, fmt
    by_index = prepare(
        tiny_tokenizer_dir,
        [tmp_path / "reviews.tsv"],
        tmp_path / "out-col",
        input_format="tsv",
        text_column="1",
        **common,
    )
    assert (
        by_index["splits"]
        == prepare(
            tiny_tokenizer_dir, [tmp_path / "reviews.tsv"], tmp_path / "out-tsv", input_format="tsv", **common
        )["splits"]
    )


def test_rerun_replaces_an_earlier_output_but_never_a_foreign_folder(
    prepared, tiny_tokenizer_dir, tiny_corpus, tmp_path
) -> None:
    out = tmp_path / "data"
    prepare(
        tiny_tokenizer_dir, [tiny_corpus], out, max_length=32, dupe_factor=1, workers=1, show_progress=False
    )
    index = prepare(
        tiny_tokenizer_dir, [tiny_corpus], out, max_length=40, dupe_factor=1, workers=1, show_progress=False
    )
    assert json.loads((out / "index.json").read_text())["max_length"] == 40 == index["max_length"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert (
        cli_main(
            [
                "prepare",
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--input",
                str(tiny_corpus),
                "--out",
                str(foreign),
                "--quiet",
            ]
        )
        == 2
    )
    assert (foreign / "keep.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == [
        "keep.txt"
    ]


# --- errors: one line, exit 2, nothing left behind -----------------------------------------------------


def run_cli(capsys, tokenizer_dir: Path, inputs: list[Path], out: Path, *extra: str) -> tuple[int, str]:
    rc = cli_main(
        [
            "prepare",
            "--tokenizer",
            str(tokenizer_dir),
            "--input",
            *map(str, inputs),
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "1",
            *extra,
        ]
    )
    return rc, capsys.readouterr().err


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("\n\n   \n", "empty corpus"),
        ("one sentence.\nanother sentence of the same document.\n", "only one document"),
    ],
    ids=["missing", "empty", "one-document"],
)
def test_bad_corpus_is_one_line_exit_2(capsys, tiny_tokenizer_dir, tmp_path, content, expected) -> None:
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_tokenizer_dir, [corpus], out)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("pocketbert prepare: error: ") and expected in err
    assert str(corpus) in err
    assert_nothing_written(out)


def test_tokenizer_that_is_not_ours_or_does_not_match_the_corpus(
    capsys, tiny_tokenizer_dir, tiny_corpus, tmp_path
) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "tokenizer.model").write_bytes(b"not a model")
    rc, err = run_cli(capsys, fake, [tiny_corpus], tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "not a SentencePiece model" in err
    # Text the tiny tokenizer has never seen (Greek, Cyrillic): almost every token is [UNK].
    foreign = tmp_path / "foreign.txt"
    foreign.write_text(
        "".join(f"Ζωή και θάνατος {i}.\nМир и война {i}.\n\n" for i in range(50)), encoding="utf-8"
    )
    rc, err = run_cli(capsys, tiny_tokenizer_dir, [foreign], tmp_path / "out")
    assert rc == 2 and err.count("\n") == 1 and "does not match" in err and "[UNK]" in err
    assert_nothing_written(tmp_path / "out")


def test_a_failure_midway_leaves_nothing_half_written(
    capsys, tiny_tokenizer_dir, tiny_corpus, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(prep, "CHUNK_CHARS", 2000)
    monkeypatch.setattr(prep, "MIN_CHUNK_DOCS", 4)
    broken = tmp_path / "broken.txt"
    broken.write_bytes(
        tiny_corpus.read_bytes() + b"\n\xff\xfe not utf-8\n"
    )  # fails after chunks were written
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_tokenizer_dir, [broken], out)
    assert rc == 2 and err.count("\n") == 1 and "not valid UTF-8" in err and f"{broken}:" in err
    assert_nothing_written(out)


def test_bad_tsv_column_is_named(capsys, tiny_tokenizer_dir, tmp_path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("id\tbody\n1\tthe cat.\n2\ta dog.\n", encoding="utf-8")
    rc, err = run_cli(capsys, tiny_tokenizer_dir, [table], tmp_path / "out", "--format", "tsv")
    assert rc == 2 and "no text column" in err and "--text-column" in err
    rc, err = run_cli(
        capsys, tiny_tokenizer_dir, [table], tmp_path / "out", "--format", "tsv", "--text-column", "review"
    )
    assert rc == 2 and "'review'" in err
    assert_nothing_written(tmp_path / "out")


def test_help_describes_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--tokenizer",
        "--input",
        "--out",
        "--max-length",
        "--dupe-factor",
        "--short-seq-prob",
        "--valid-fraction",
        "--format",
        "--text-column",
        "--workers",
        "--seed",
        "--quiet",
    ):
        assert option in text


def test_leftovers_of_a_killed_run_are_removed_and_progress_is_shown(
    tiny_tokenizer_dir, tiny_corpus, tmp_path, capsys
) -> None:
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = tmp_path / f".data.tmp-{dead_pid}"
    stale.mkdir()
    (stale / "train.input_ids.npy").write_bytes(b"half written")
    index = prepare(
        tiny_tokenizer_dir, [tiny_corpus], tmp_path / "data", max_length=32, dupe_factor=1, workers=1
    )
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    progress = capsys.readouterr().err
    total = index["splits"]["train"]["instances"] + index["splits"]["valid"]["instances"]
    assert "lines/s" in progress and f"instances={total}" in progress
