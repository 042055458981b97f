"""Files written by an earlier pocketbert still load: a prepared folder, model.pt and checkpoint.pt.

The fixtures in tests/fixtures/old-format were written before the training side was refactored; see
tests/fixtures/README.md for the commands. A change that breaks one of these tests changes a file format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_corpus

from model.bert import BertForPreTraining
from model.checkpoint import load_model, read_weights
from training.checkpointing import load_training_state
from training.cli import main
from training.data_format import ARRAYS, SPLITS, NpyAppender, read_index
from training.dataset import PretrainingDataset
from training.prepare import prepare

OLD = Path(__file__).resolve().parent / "fixtures" / "old-format"
RUNNING = [
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--log-every",
    "1",
    "--threads",
    "1",
    "--device",
    "cpu",
]


def numbers(rows: list[dict]) -> list[dict]:
    """Every numeric field of every row but its timing and memory (which differ between any two runs, and
    which the old version did not log)."""
    return [{k: v for k, v in row.items() if k not in ("split", "tokens_per_s", "rss_mb")} for row in rows]


def test_an_old_prepared_folder_is_read_row_for_row() -> None:
    index = read_index(OLD / "prepared")
    for split in SPLITS:
        dataset = PretrainingDataset(OLD / "prepared", split=split)
        assert len(dataset) == index["splits"][split]["instances"] > 0
        ids = np.load(OLD / "prepared" / f"{split}.input_ids.npy")
        lengths = np.load(OLD / "prepared" / f"{split}.lengths.npy")
        for i in (0, len(dataset) - 1):
            item = dataset[i]
            assert item["input_ids"].tolist() == ids[i].tolist()
            assert int(item["attention_mask"].sum()) == int(lengths[i])


def test_the_appender_writes_the_old_npy_files_byte_for_byte(tmp_path: Path) -> None:
    for split in SPLITS:
        for name in ARRAYS:
            old = OLD / "prepared" / f"{split}.{name}.npy"
            array = np.load(old)
            writer = NpyAppender(tmp_path / old.name, array.dtype, array.shape[1:])
            writer.append(array[:5])
            writer.append(array[5:])
            writer.close()
            assert (tmp_path / old.name).read_bytes() == old.read_bytes(), old.name


def test_prepare_today_writes_what_the_old_version_wrote(tmp_path: Path) -> None:
    """Same corpus, same tokenizer, same options: the same arrays and the same index."""
    from model.tokenizer import Tokenizer
    from training.tokenizer_train import train_tokenizer

    old_index = json.loads((OLD / "prepared" / "index.json").read_text(encoding="utf-8"))
    corpus = generate_corpus(tmp_path / "corpus.txt", documents=40, seed=1)
    tokenizer = Tokenizer(train_tokenizer([corpus], tmp_path / "tok", vocab_size=120))
    if tokenizer.checksum != old_index["tokenizer_sha256"]:
        pytest.skip("this SentencePiece trains another tokenizer from the same text; the arrays would differ")
    index = prepare(
        tmp_path / "tok",
        [corpus],
        tmp_path / "prepared",
        max_length=32,
        dupe_factor=1,
        valid_fraction=0.1,
        workers=1,
        show_progress=False,
    )
    paths = ("tokenizer", "inputs", "out")
    assert {k: v for k, v in index["args"].items() if k not in paths} == {
        k: v for k, v in old_index["args"].items() if k not in paths
    }
    assert {k: v for k, v in index.items() if k != "args"} == {
        k: v for k, v in old_index.items() if k != "args"
    }
    for old in sorted((OLD / "prepared").glob("*.npy")):
        assert (tmp_path / "prepared" / old.name).read_bytes() == old.read_bytes(), old.name


def test_an_old_model_pt_and_checkpoint_pt_load() -> None:
    model, metadata = load_model(OLD / "run" / "model.pt")
    assert isinstance(model, BertForPreTraining) and model.config.hidden_size == 8
    assert metadata["step"] == 3 and set(metadata["valid"]) == {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"}
    state = load_training_state(OLD / "run" / "checkpoint.pt")
    assert state["step"] == 3 and state["position"] == {"epoch": 0, "batch": 3}
    weights = read_weights(OLD / "run" / "checkpoint.pt")
    assert weights.training_state and weights.kind == "pretraining"
    assert all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())


def test_an_old_run_resumes_where_the_old_version_would_have(tmp_path: Path) -> None:
    run = shutil.copytree(OLD / "run", tmp_path / "run")
    assert main(["pretrain", "--data", str(OLD / "prepared"), "--out", str(run), "--resume", *RUNNING]) == 0
    found = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (OLD / "resumed-metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in found] == [(r["step"], r["split"]) for r in expected]
    for row, old_row in zip(numbers(found), numbers(expected), strict=True):
        assert row == pytest.approx(old_row, rel=1e-5, abs=1e-6)
    assert load_training_state(run / "checkpoint.pt")["step"] == 6
