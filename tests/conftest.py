"""Shared fixtures: a generated bilingual corpus, a tiny tokenizer trained on it, a tiny model config.

Tests never need ../shared/data; those that use it skip cleanly when it is absent (see `shared_data`).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest_plugins = ["bundle_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_bench(name: str) -> ModuleType:
    """A script of bench/ (not a package) imported as module bench_NAME, to test its functions."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up by name
    spec.loader.exec_module(module)
    return module


_SUBJECTS = [
    "the cat",
    "a dog",
    "my friend",
    "the teacher",
    "this movie",
    "the bird",
    "our team",
    "the city",
    "a farmer",
    "the singer",
    "my brother",
    "the doctor",
    "a student",
    "the captain",
    "her mother",
]
_VERBS = [
    "sees",
    "likes",
    "finds",
    "watches",
    "helps",
    "follows",
    "loves",
    "visits",
    "paints",
    "builds",
    "remembers",
    "carries",
    "describes",
    "questions",
    "imagines",
]
_OBJECTS = [
    "the park",
    "a book",
    "the river",
    "some music",
    "the garden",
    "a small house",
    "the old tree",
    "a yellow window",
    "the quiet mountain",
    "an empty bottle",
    "the frozen lake",
    "a broken guitar",
]
_KO = [
    "고양이가",
    "강아지를",
    "영화는",
    "정말",
    "재미있다",
    "친구와",
    "함께",
    "학교에",
    "간다",
    "좋아한다",
    "오늘은",
    "날씨가",
    "바다를",
    "보았다",
    "음식이",
    "맛있다",
    "선생님은",
    "책을",
    "읽는다",
    "도시에서",
    "산다",
    "노래를",
    "부른다",
    "내일은",
    "비가",
    "온다",
    "배우가",
    "연기를",
    "잘한다",
    "지루했다",
]


def generate_corpus(path: Path, documents: int = 120, seed: int = 0) -> Path:
    """Documents of 4-12 sentences (English and Korean), one sentence a line, a blank line between them."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        for _ in range(rng.randint(4, 12)):
            if rng.random() < 0.3:
                lines.append(" ".join(rng.choices(_KO, k=rng.randint(3, 7))) + ".")
            else:
                lines.append(
                    f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.".capitalize()
                )
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    from training.tokenizer_train import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([tiny_corpus], out, vocab_size=160)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    from model.tokenizer import Tokenizer

    return Tokenizer(tiny_tokenizer_dir)


@pytest.fixture
def tiny_config(tiny_tokenizer):
    """hidden 32, one layer, two heads: fast enough for every CPU test."""
    from model.config import BertConfig

    return BertConfig(
        vocab_size=tiny_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tiny_corpus: Path) -> Path:
    """`pocketbert prepare` output (max length 48) of the tiny corpus, for the pretraining tests."""
    from training.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(
        tiny_tokenizer_dir,
        [tiny_corpus],
        out,
        max_length=48,
        dupe_factor=2,
        valid_fraction=0.1,
        workers=1,
        seed=0,
        show_progress=False,
    )
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project root; tests that need it skip where it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found (real corpora are optional for the test suite)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_pretrain_run(tmp_path_factory: pytest.TempPathFactory, prepared: Path) -> Path:
    """A `pocketbert pretrain` run folder (2 steps of the tiny model): checkpoint.pt, model.pt, metrics."""
    from training.cli import main

    out = tmp_path_factory.mktemp("pretrain-run") / "run"
    argv = ["pretrain", "--data", str(prepared), "--out", str(out), "--steps", "2", "--batch-size", "8"]
    tiny = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64"]
    running = ["--eval-batches", "1", "--threads", "1", "--device", "cpu"]
    assert main([*argv, *tiny, *running]) == 0
    return out
