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


def test_scratch_learns_above_majority(
    tmp_path: Path, tiny_tokenizer_dir: Path, tiny_tokenizer, tiny_config
) -> None:
    tiny_config.to_json(tmp_path / "tiny.json")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(320, 0))
    dev_rows, test_rows = sentiment_rows(80, 1), sentiment_rows(80, 2)
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
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
            "--epochs",  # 4 left both seeds at chance until their last epoch: learnable, but on the edge
            "8",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["seeds"]] == [1, 2]
    assert results["majority_dev_acc"] == 0.5  # the generator alternates the labels: 40 of each
    best = max(results["seeds"], key=lambda r: r["best_dev_acc"])
    assert best["seed"] == results["best_seed"]
    assert best["best_dev_acc"] > 0.8 and best["test_acc"] > 0.8  # the verb decides: learnable
    # mean and sample standard deviation of two values, by hand: (a + b) / 2 and |a - b| / sqrt(2)
    a, b = (r["best_dev_acc"] for r in results["seeds"])
    assert results["dev_acc_mean"] == pytest.approx((a + b) / 2)
    assert results["dev_acc_std"] == pytest.approx(abs(a - b) / 2**0.5)
    assert results["label_names"] == ["bad", "good"]
    assert (out / "metrics.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["seed"] for r in rows if r["split"] == "dev"} == {1, 2}
    # the best dev accuracy is that of the best dev row, and the seed's best epoch is where it was
    for seed in results["seeds"]:
        dev = [r for r in rows if r["split"] == "dev" and r["seed"] == seed["seed"]]
        top = max(dev, key=lambda r: r["acc"])
        assert (seed["best_dev_acc"], seed["best_step"]) == (top["acc"], top["step"])
        assert seed["failed"] == (seed["best_dev_acc"] <= 0.5)

    from model.checkpoint import load_model

    model, metadata = load_model(out / "model.pt")
    assert model.num_labels == 2 and metadata["label_names"] == ["bad", "good"]
    assert metadata["task"] == "csv" and metadata["max_length"] == 32
    assert metadata["seed"] == results["best_seed"] and metadata["results"]["runs"] == 2
    # model.pt is the best seed's best epoch: scored one text at a time, unpadded (a reference for the
    # length-sorted, padded batches of `evaluate`), it gets the recorded dev and test accuracy
    assert accuracy(model, tiny_tokenizer, dev_rows, 32) == pytest.approx(best["best_dev_acc"])
    assert accuracy(model, tiny_tokenizer, test_rows, 32) == pytest.approx(best["test_acc"])


def accuracy(model, tokenizer, rows: list[tuple[str, int]], max_length: int) -> float:
    """The share of rows whose label ("bad" = 0, "good" = 1, as write_jsonl names them) the model predicts."""
    correct = 0
    with torch.no_grad():
        for text, label in rows:
            ids = torch.tensor([tokenizer.encode(text, max_length=max_length).input_ids])
            correct += int(model(ids).logits.argmax()) == label
    return correct / len(rows)


def test_progress_bar_shows_best_dev_only_after_an_evaluation(
    tmp_path: Path, tiny_tokenizer_dir: Path, tiny_config, monkeypatch
) -> None:
    import training.finetune as finetune

    postfixes: list[dict] = []

    class Bar:
        def update(self, n: int) -> None:
            pass

        def set_postfix(self, values: dict, refresh: bool = False) -> None:
            postfixes.append(dict(values))

        def close(self) -> None:
            pass

    monkeypatch.setattr(finetune, "progress_bar", lambda *args, **kwargs: Bar())
    tiny_config.to_json(tmp_path / "tiny.json")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(64, 0))  # 4 steps of 16 an epoch
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(16, 1))
    argv = ["finetune", "--task", "csv", "--train", str(train), "--dev", str(dev), "--init", "scratch"]
    options = [
        "--config",
        str(tmp_path / "tiny.json"),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--seeds",
        "1",
    ]
    assert main([*argv, *options, "--out", str(tmp_path / "ft"), "--epochs", "2", *FAST[2:]]) == 0
    assert len(postfixes) == 8
    assert all("best_dev" not in p for p in postfixes[:4])  # before the first evaluation: nothing to show
    assert all(float(p["best_dev"]) > 0 for p in postfixes[4:])


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


def test_resume_refuses_a_checkpoint_of_other_settings(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.checkpointing import save_training_state
    from training.cli import build_parser
    from training.finetune import run_settings

    train = write_nsmc(tmp_path / "ratings.txt", sentiment_rows(40, 0))
    argv = ["finetune", "--task", "nsmc", "--train", str(train), "--dev", str(train), "--init", "scratch"]
    argv += ["--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path / "ft"), *FAST]
    settings = run_settings(build_parser("finetune").parse_args(argv))
    save_training_state(
        tmp_path / "ft" / "checkpoint.pt",
        {
            "kind": "finetune",
            "settings": {**settings, "lr": 0.5},
            "finished": [],
            "seed": None,
            "model": None,
        },
    )
    assert main([*argv, "--resume"]) == 2
    assert "other settings (--lr 0.5 -> 0.001); drop --resume" in capsys.readouterr().err
    save_training_state(tmp_path / "ft" / "checkpoint.pt", {"step": 3, "model": {}})  # a pretraining state
    assert main(argv) == 2
    assert "not a fine-tuning checkpoint" in capsys.readouterr().err


def test_resume_refuses_a_run_whose_init_weights_changed(
    tmp_path: Path, tiny_pretrain_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same --init path holding other weights (a pretraining continued since) is another run."""
    import shutil

    from training.checkpointing import save_training_state
    from training.cli import build_parser
    from training.finetune import run_settings

    init = tmp_path / "pretrained.pt"
    shutil.copy(tiny_pretrain_run / "model.pt", init)
    train = write_nsmc(tmp_path / "ratings.txt", sentiment_rows(40, 0))
    argv = ["finetune", "--task", "nsmc", "--train", str(train), "--dev", str(train), "--init", str(init)]
    argv += ["--out", str(tmp_path / "ft"), *FAST]
    settings = run_settings(build_parser("finetune").parse_args(argv))
    state = {"kind": "finetune", "settings": settings, "finished": [], "seed": None, "model": None}
    shutil.copy(tiny_pretrain_run / "checkpoint.pt", init)  # other bytes at the same path
    save_training_state(tmp_path / "ft" / "checkpoint.pt", state)
    assert main([*argv, "--resume"]) == 2
    assert "the weights in --init changed (sha256 " in capsys.readouterr().err


def test_dev_split_of_whole_sentences_and_older_checkpoints_without_it(
    tmp_path: Path, tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """--dev-unit sentence carves whole sentences (their phrases leave training) and is recorded; a
    checkpoint written before the option existed resumes as the row split it ran."""
    from training.checkpointing import save_training_state
    from training.cli import build_parser
    from training.finetune import run_settings

    rows = []
    for text, label in sentiment_rows(40, 0):  # each sentence, and two of its phrases, as SST-2 lists them
        words = text.split()
        rows += [(text, label), (" ".join(words[:2]), label), (" ".join(words[-2:]), label)]
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    argv = [
        "finetune",
        "--task",
        "sst2",
        "--train",
        str(train),
        "--dev-fraction",
        "0.25",
        "--init",
        "scratch",
    ]
    argv += ["--tokenizer", str(tiny_tokenizer_dir), "--seeds", "1", *FAST, "--epochs", "1"]
    assert main([*argv, "--dev-unit", "sentence", "--out", str(tmp_path / "sentences")]) == 0
    results = json.loads((tmp_path / "sentences" / "results.json").read_text())
    assert results["hyperparameters"]["dev_unit"] == "sentence"
    sentences = len({t for t, _ in rows[::3]})
    assert results["examples"]["dev"] == round(sentences * 0.25)
    assert results["examples"]["train"] < len(rows) - results["examples"]["dev"]  # their phrases left too

    out = tmp_path / "older"
    settings = run_settings(build_parser("finetune").parse_args([*argv, "--out", str(out)]))
    del settings["dev_unit"]  # as written before --dev-unit existed
    state = {"kind": "finetune", "settings": settings, "finished": [], "seed": None, "model": None}
    save_training_state(out / "checkpoint.pt", state)
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["hyperparameters"]["dev_unit"] == "row"
