"""`pocketbert finetune` on a generated sentiment set: learns above the majority class, several seeds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from training.cli import main

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "this movie", "the bird", "our team"]
_POSITIVE = ["loves", "likes", "helps"]
_NEGATIVE = ["questions", "follows", "carries"]
_OBJECTS = ["the park", "a book", "the river", "some music", "the garden", "a small house", "the old tree"]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Balanced sentences whose label is carried by the verb (plus filler words on both sides)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        verb = rng.choice(_POSITIVE if label else _NEGATIVE)
        rows.append((f"{rng.choice(_SUBJECTS)} {verb} {rng.choice(_OBJECTS)}.".capitalize(), label))
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[tuple[str, int]]) -> Path:
    names = {0: "bad", 1: "good"}
    path.write_text(
        "".join(json.dumps({"text": t, "label": names[y]}) + "\n" for t, y in rows), encoding="utf-8"
    )
    return path


def write_nsmc(path: Path, rows: list[tuple[str, int]]) -> Path:
    body = "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(rows))
    path.write_text("id\tdocument\tlabel\n" + body + "999\t\t1\n", encoding="utf-8")  # one empty review
    return path


FAST = [
    "--epochs",
    "4",
    "--lr",
    "1e-3",
    "--batch-size",
    "16",
    "--max-length",
    "32",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--log-every",
    "5",
]


def test_bucketed_batches_cover_every_example_once() -> None:
    from training.finetune import bucketed_batches

    lengths = [random.Random(0).randint(3, 60) for _ in range(1000)]
    batches = bucketed_batches(lengths, 32, torch.Generator().manual_seed(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    # within a batch lengths are close: far less padding than random batching
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10
    again = bucketed_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert again == batches


def test_scratch_learns_above_majority(tmp_path: Path, tiny_tokenizer_dir: Path, tiny_config) -> None:
    tiny_config.to_json(tmp_path / "tiny.json")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(320, 0))
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(80, 1))
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_rows(80, 2))
    out = tmp_path / "ft"
    code = main(
        [
            "finetune",
            "--task",
            "csv",
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--test",
            str(test),
            "--init",
            "scratch",
            "--config",
            str(tmp_path / "tiny.json"),
            "--tokenizer",
            str(tiny_tokenizer_dir),
            "--out",
            str(out),
            "--seeds",
            "1,2",
            *FAST,
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["seeds"]] == [1, 2]
    assert results["majority_dev_acc"] == 0.5
    best = max(results["seeds"], key=lambda r: r["best_dev_acc"])
    assert best["seed"] == results["best_seed"]
    assert best["best_dev_acc"] > 0.8 and best["test_acc"] > 0.8  # the verb decides: learnable
    # a seed that never beats the majority class is counted, as fine-tuning small sets sometimes fails
    assert results["failed_runs"] == sum(r["best_dev_acc"] <= 0.5 for r in results["seeds"])
    accs = [r["best_dev_acc"] for r in results["seeds"]]
    assert results["dev_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert results["dev_acc_std"] >= 0.0 and results["label_names"] == ["bad", "good"]
    assert (out / "metrics.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["seed"] for r in rows if r["split"] == "dev"} == {1, 2}

    from model.checkpoint import load_model

    model, metadata = load_model(out / "model.pt")
    assert model.num_labels == 2 and metadata["label_names"] == ["bad", "good"]
    assert metadata["task"] == "csv" and metadata["max_length"] == 32
    assert metadata["seed"] == results["best_seed"] and metadata["results"]["runs"] == 2


def test_from_pretrained_checkpoint_nsmc_format(
    tmp_path: Path, tiny_tokenizer_dir: Path, tiny_corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    from model.checkpoint import load_model
    from training.prepare import prepare

    data = tmp_path / "data"
    prepare(
        tiny_tokenizer_dir,
        [tiny_corpus],
        data,
        max_length=48,
        dupe_factor=1,
        valid_fraction=0.1,
        workers=1,
        show_progress=False,
    )
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "pt"),
                "--hidden-size",
                "32",
                "--layers",
                "1",
                "--heads",
                "2",
                "--intermediate-size",
                "64",
                "--batch-size",
                "8",
                "--steps",
                "4",
                "--eval-batches",
                "1",
                "--threads",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pretrained, _ = load_model(tmp_path / "pt" / "model.pt")

    train = write_nsmc(tmp_path / "ratings_train.txt", sentiment_rows(200, 0))
    dev = write_nsmc(tmp_path / "ratings_dev.txt", sentiment_rows(60, 1))
    out = tmp_path / "ft"
    # no --tokenizer: the pretrain checkpoint records which one its data was made with
    assert (
        main(
            [
                "finetune",
                "--task",
                "nsmc",
                "--train",
                str(train),
                "--dev",
                str(dev),
                "--init",
                str(tmp_path / "pt" / "model.pt"),
                "--out",
                str(out),
                "--seeds",
                "3",
                *FAST,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped 1 rows" in printed and "mean dev" in printed
    model, metadata = load_model(out / "model.pt")
    assert metadata["label_names"] == ["negative", "positive"] and metadata["task"] == "nsmc"
    assert model.config.hidden_size == pretrained.config.hidden_size
    results = json.loads((out / "results.json").read_text())
    assert results["skipped"]["train"] == 1 and results["test_acc_mean"] is None


def test_finetune_errors_are_one_line(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    train = write_nsmc(tmp_path / "ratings.txt", sentiment_rows(20, 0))
    args = [
        "finetune",
        "--task",
        "nsmc",
        "--train",
        str(train),
        "--dev",
        str(train),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--init", str(tmp_path / "none.pt")]) == 2
    assert "none.pt: no such checkpoint" in capsys.readouterr().err
    assert main([*args, "--init", "scratch"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main([*args, "--init", "scratch", "--tokenizer", str(tiny_tokenizer_dir), "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
