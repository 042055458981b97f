"""PretrainingDataset over `prepare` output: lazy opening, item contents, collate, DataLoader workers,
and the one error type of the prepared-data format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bert import IGNORE_INDEX
from model.tokenizer import NUM_SPECIAL, PAD_ID
from training.data_format import FORMAT_VERSION, read_index, read_shared_index
from training.dataset import PretrainingDataset, collate
from training.errors import CLIError
from training.masking import mask_tokens
from training.prepare import prepare


@pytest.fixture(scope="module")
def data_dir(tiny_tokenizer_dir: Path, tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "data"
    prepare(
        tiny_tokenizer_dir,
        [tiny_corpus],
        out,
        max_length=64,
        dupe_factor=2,
        valid_fraction=0.1,
        workers=1,
        show_progress=False,
    )
    return out


def test_length_index_and_lazy_opening(data_dir) -> None:
    train = PretrainingDataset(data_dir)
    valid = PretrainingDataset(data_dir, split="valid")
    assert len(train) == train.index["splits"]["train"]["instances"] > 0
    assert len(valid) == valid.index["splits"]["valid"]["instances"] > 0
    assert train._arrays is None  # nothing mapped until the first item
    train[0]
    assert train._arrays is not None
    clone = pickle.loads(pickle.dumps(train))  # what a DataLoader does to reach its workers
    assert clone._arrays is None and torch.equal(clone[5]["input_ids"], train[5]["input_ids"])


def test_item_tensors_follow_the_memmap_row(data_dir) -> None:
    dataset = PretrainingDataset(data_dir)
    ids = np.load(data_dir / "train.input_ids.npy")
    lengths = np.load(data_dir / "train.lengths.npy")
    segment_a = np.load(data_dir / "train.segment_a.npy")
    labels = np.load(data_dir / "train.nsp_labels.npy")
    for i in [0, 1, len(dataset) // 2, len(dataset) - 1, -1]:
        item = dataset[i]
        assert set(item) == {"input_ids", "token_type_ids", "attention_mask", "next_sentence_label"}
        assert all(t.dtype == torch.int64 for t in item.values())
        assert (
            item["input_ids"].shape == item["token_type_ids"].shape == item["attention_mask"].shape == (64,)
        )
        assert item["next_sentence_label"].shape == () and item["next_sentence_label"].item() == labels[i]
        assert item["input_ids"].tolist() == ids[i].tolist()
        n, a = int(lengths[i]), int(segment_a[i])
        assert item["attention_mask"].tolist() == [1] * n + [0] * (64 - n)
        assert item["token_type_ids"].tolist() == [0] * a + [1] * (n - a) + [0] * (64 - n)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_collate_trims_to_the_longest_member(data_dir) -> None:
    dataset = PretrainingDataset(data_dir)
    lengths = np.load(data_dir / "train.lengths.npy")
    short = np.argsort(lengths)[:4].tolist()
    batch = collate([dataset[i] for i in short])
    longest = int(lengths[short].max())
    assert longest < 64
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].shape == (4, longest)
    assert batch["next_sentence_label"].shape == (4,)
    assert (batch["attention_mask"].sum(dim=1) == torch.tensor(lengths[short].astype(np.int64))).all()


def test_dataloader_workers_then_the_trainers_masking(data_dir, tiny_tokenizer) -> None:
    """Items travel through DataLoader workers; the main process masks each batch, as the trainer does."""
    dataset = PretrainingDataset(data_dir)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=2,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    seen = 0
    for step, batch in enumerate(loader):
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "next_sentence_label"}
        masked, labels = mask_tokens(
            batch["input_ids"], tiny_tokenizer.vocab_size, generator=torch.Generator().manual_seed(step)
        )
        chosen = labels != IGNORE_INDEX
        assert chosen.any() and (labels[chosen] >= NUM_SPECIAL).all()
        assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert (masked[batch["attention_mask"] == 0] == PAD_ID).all()
        seen += len(batch["input_ids"])
    assert seen == len(dataset)


def test_tokenizer_check_and_missing_data(data_dir, tiny_tokenizer, tmp_path) -> None:
    dataset = PretrainingDataset(data_dir)
    dataset.check_tokenizer(tiny_tokenizer.checksum)
    with pytest.raises(CLIError, match="pocketbert prepare"):
        dataset.check_tokenizer("0" * 64)
    with pytest.raises(CLIError, match="index.json: not found"):
        PretrainingDataset(tmp_path)
    with pytest.raises(CLIError, match="no split 'test'"):
        PretrainingDataset(data_dir, split="test")


def write_index(folder: Path, index: dict) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def test_every_bad_index_is_a_one_line_cli_error(data_dir, tmp_path) -> None:
    good = read_index(data_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text('{"format": 1,', encoding="utf-8")
    cases = {
        broken: "index.json:1: not valid JSON",
        write_index(tmp_path / "newer", {**good, "format": FORMAT_VERSION + 1}): "data format 2",
        write_index(
            tmp_path / "partial", {k: v for k, v in good.items() if k != "splits"}
        ): "missing 'splits'",
    }
    for folder, message in cases.items():
        with pytest.raises(CLIError, match=message):
            read_index(folder)
        with pytest.raises(CLIError, match=message):
            PretrainingDataset(folder)


def test_folders_read_together_must_share_tokenizer_and_length(data_dir, tmp_path) -> None:
    good = read_index(data_dir)
    assert read_shared_index([data_dir, data_dir]) == good == read_shared_index(data_dir)
    other = write_index(tmp_path / "other", {**good, "max_length": good["max_length"] * 2})
    with pytest.raises(CLIError, match="max_length 128 differs"):
        read_shared_index([data_dir, other])
