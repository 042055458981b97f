"""`pocketbert predict`: a file scored by the torch-free engine, in batches; bad rows reported by line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.engine import Engine
from model.predict import count_rows, input_format
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]


def predict(bundle: Path, task: str, source: Path, output: Path, *extra: str) -> int:
    argv = [
        "predict",
        "--bundle",
        str(bundle),
        "--task",
        task,
        "--input",
        str(source),
        "--output",
        str(output),
    ]
    return main([*argv, "--threads", "1", "--quiet", *extra])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_classify_a_real_file(shared_data: Path, tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """GLUE SST-2's dev.tsv (sentence<TAB>label): every row scored, in order, as the engine scores it."""
    source = shared_data / "sst2" / "dev.tsv"
    lines = source.read_text(encoding="utf-8").splitlines()
    out = tmp_path / "scores.jsonl"
    assert predict(tiny_bundle, "classify", source, out, "--batch-size", "50") == 0
    assert f"wrote {out}: {len(lines) - 1} rows" in capsys.readouterr().out
    found = records(out)
    assert [r["line"] for r in found] == list(range(2, len(lines) + 1))
    assert [r["text"] for r in found] == [line.split("\t")[0] for line in lines[1:]]
    engine = Engine.load(tiny_bundle, intra_op_threads=1)
    for record in found[:: len(found) // 5]:
        [expected] = engine.classify([record["text"]])
        assert [p["label"] for p in record["result"]] == [p["label"] for p in expected]
        assert [p["score"] for p in record["result"]] == pytest.approx(
            [p["score"] for p in expected], abs=1e-5
        )
        assert sum(p["score"] for p in record["result"]) == pytest.approx(1.0, abs=1e-5)
    tokenizer = engine.tokenizer  # SST-2 dev has sentences longer than the tiny bundle's 64 tokens
    long = [len(tokenizer.encode_ids(r["text"])) + 2 > engine.max_length for r in found]
    assert [r["truncated"] for r in found] == long and 0 < sum(long) < len(long)


BAD_JSONL = [
    '{"text": "the cat sees the park.", "id": 1}',
    '{"text": "a dog likes a book.", ',  # 2: cut short
    '{"text": "   "}',  # 3: empty text
    '{"review": 7}',  # 4: no text field holding a string
    '["a list"]',  # 5: not an object
    '{"text": "my friend helps the teacher."}',
]


def test_bad_rows_are_skipped_with_their_line_numbers(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(BAD_JSONL) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert predict(tiny_bundle, "classify", source, out, "--batch-size", "2") == 0
    assert [r["line"] for r in records(out)] == [1, 6]
    captured = capsys.readouterr()
    for line_no, reason in (
        (2, "invalid JSON"),
        (3, "empty text"),
        (4, "no text field"),
        (5, "not a JSON object"),
    ):
        assert f"{source}:{line_no}: {reason}" in captured.err
    assert "skipped 4 bad row(s) (lines 2, 3, 4, 5)" in captured.out


def test_on_error_stop_ends_at_the_first_bad_row_and_writes_nothing(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "reviews.tsv"
    source.write_text("id\ttext\n1\tgood film\n2\ttoo\tmany fields\n3\tbad film\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert predict(tiny_bundle, "classify", source, out, "--on-error", "stop") == 2
    err = capsys.readouterr().err
    assert f"{source}:3: expected 2 fields, found 3" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp-*"))
    assert predict(tiny_bundle, "classify", source, out) == 0  # skip (the default) scores the other two
    assert [r["text"] for r in records(out)] == ["good film", "bad film"]


def test_fill_mask_and_next_sentence_on_plain_lines(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    engine = Engine.load(tiny_bundle, intra_op_threads=1)
    masked = tmp_path / "masked.txt"
    too_far = "the cat sees the park. " * 20 + "[MASK]"  # its mask lies past the bundle's 64 tokens
    lines = ["the cat [MASK] the park.", "no mask here", too_far, "[MASK] dog likes [MASK] book."]
    masked.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "fill.jsonl"
    assert predict(tiny_bundle, "fill-mask", masked, out, "--top-k", "3") == 0
    found = records(out)
    assert [r["line"] for r in found] == [1, 4]
    err = capsys.readouterr().err
    assert f"{masked}:2: no [MASK] in the text" in err
    assert f"{masked}:3: the text has no [MASK] token within the first 64 tokens" in err
    expected = engine.fill_mask(["the cat [MASK] the park.", "[MASK] dog likes [MASK] book."], top_k=3)
    for record, answer in zip(found, expected, strict=True):
        assert [[p["token"] for p in mask] for mask in record["result"]] == [
            [p["token"] for p in m] for m in answer
        ]

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("It rained.\tThe streets were wet.\nonly one sentence\n", encoding="utf-8")
    out = tmp_path / "nsp.jsonl"
    assert predict(tiny_bundle, "next-sentence", pairs, out) == 0
    [record] = records(out)
    assert record["pair"] == "The streets were wet."
    assert record["result"]["score"] == pytest.approx(
        engine.next_sentence([("It rained.", "The streets were wet.")])[0]["score"], abs=1e-6
    )
    assert f"{pairs}:2: expected 2 tab-separated sentences" in capsys.readouterr().err


def test_rows_reach_the_engine_in_batches(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """Streamed: the engine never sees more than --batch-size rows at once, whatever the file's size."""
    sizes: list[int] = []
    original = Engine.classify

    def recording(self, texts, top_k=None, ids=None):
        sizes.append(len(texts))
        return original(self, texts, top_k, ids)

    monkeypatch.setattr(Engine, "classify", recording)
    source = tmp_path / "many.csv"
    source.write_text(
        "text,label\n" + "".join(f'"review, number {i}",1\n' for i in range(23)), encoding="utf-8"
    )
    assert predict(tiny_bundle, "classify", source, tmp_path / "out.jsonl", "--batch-size", "5") == 0
    assert sizes == [5, 5, 5, 5, 3]
    assert records(tmp_path / "out.jsonl")[0]["text"] == "review, number 0"  # CSV quoting understood


def test_a_task_the_bundle_lacks_and_a_wrong_column_are_one_line_errors(
    pretraining_only_bundle: Path, tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("a film\n", encoding="utf-8")
    assert predict(pretraining_only_bundle, "classify", source, tmp_path / "o.jsonl") == 2
    assert "does not offer classify (it offers fill-mask, next-sentence)" in capsys.readouterr().err
    table = tmp_path / "t.tsv"
    table.write_text("id\tbody\n1\tx\n", encoding="utf-8")
    assert predict(tiny_bundle, "classify", table, tmp_path / "o.jsonl", "--text-column", "review") == 2
    assert f"{table}:1: no column 'review' in the header (columns: id, body)" in capsys.readouterr().err


def test_an_output_that_would_replace_the_input_or_a_folder_is_refused(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "reviews.tsv"
    source.write_text("text\ta fine film\n", encoding="utf-8")
    assert predict(tiny_bundle, "classify", source, source) == 2
    assert f"{source}: is the --input file; the output would replace it" in capsys.readouterr().err
    assert source.read_text(encoding="utf-8") == "text\ta fine film\n"
    assert predict(tiny_bundle, "classify", source, tmp_path) == 2
    assert f"{tmp_path}: is a folder; --output names the file to write" in capsys.readouterr().err
    assert predict(tiny_bundle, "classify", tmp_path, tmp_path / "o.jsonl") == 2
    assert f"{tmp_path}: is a folder; --input names a file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "rows"),
    [
        ("r.tsv", "text\tlabel\ngood\t1\nbad\t0\n", 2),  # the header is not a row
        ("r.csv", "text\ngood\nbad", 2),  # nor is it in a CSV; the last line has no newline
        ("r.txt", "good\n\nbad\n", 3),  # a blank line is a (bad) row of its own
        ("r.txt", "", 0),
    ],
)
def test_the_progress_total_counts_rows(name: str, text: str, rows: int, tmp_path: Path) -> None:
    source = tmp_path / name
    source.write_text(text, encoding="utf-8")
    assert count_rows(source, input_format(source, "auto")) == rows


def test_an_input_without_rows_writes_an_empty_output_and_says_so(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "reviews.tsv"
    source.write_text("text\tlabel\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert predict(tiny_bundle, "classify", source, out) == 0
    assert out.read_text(encoding="utf-8") == ""
    assert f"warning: {source}: no rows to score" in capsys.readouterr().err


def test_predict_never_imports_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    """It runs with only the `serve` extra: here torch is made unimportable."""
    source = tmp_path / "texts.txt"
    source.write_text("a charming film\n", encoding="utf-8")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from training.cli import main\n"
        f"sys.exit(main(['predict', '--bundle', {str(tiny_bundle)!r}, '--task', 'classify', '--input', "
        f"{str(source)!r}, '--output', {str(tmp_path / 'o.jsonl')!r}, '--quiet']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(records(tmp_path / "o.jsonl")) == 1
