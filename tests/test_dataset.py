"""PretrainingDataset over `prepare` output: lazy opening, item contents, collate, DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model.tokenizer import NUM_SPECIAL, PAD_ID
from training.dataset import PretrainingDataset, collate
from training.masking import IGNORE_INDEX, MLMCollator
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


def test_dataloader_workers_with_mlm_collator(data_dir, tiny_tokenizer) -> None:
    dataset = PretrainingDataset(data_dir)
    collator = MLMCollator.from_tokenizer(tiny_tokenizer)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=2,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(0),
    )
    seen = 0
    for batch in loader:
        assert set(batch) == {
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "next_sentence_label",
            "labels",
        }
        chosen = batch["labels"] != IGNORE_INDEX
        assert (batch["labels"][chosen] >= NUM_SPECIAL).all()
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD_ID).all()
        seen += len(batch["input_ids"])
    assert seen == len(dataset)


def test_tokenizer_check_and_missing_data(data_dir, tiny_tokenizer, tmp_path) -> None:
    dataset = PretrainingDataset(data_dir)
    dataset.check_tokenizer(tiny_tokenizer.checksum)
    with pytest.raises(ValueError, match="pocketbert prepare"):
        dataset.check_tokenizer("0" * 64)
    with pytest.raises(FileNotFoundError, match="index.json"):
        PretrainingDataset(tmp_path)
    with pytest.raises(ValueError, match="no split 'test'"):
        PretrainingDataset(data_dir, split="test")
