"""`pocketbert export-hf`: transformers' pipelines load the folder and predict what this project predicts."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest

from model.engine import Engine
from training.errors import CLIError
from training.export_hf import export_hf

transformers = pytest.importorskip("transformers")

FILL_MASK_TEXTS = [
    "the cat [MASK] the park.",
    "[MASK] dog likes a book.",
    "고양이가 [MASK] 좋아한다.",
    "my friend likes the[MASK] tree.",
]
CLASSIFY_TEXTS = ["the cat sees the park.", "영화는 정말 재미있다.", "a broken guitar and an empty bottle"]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tiny_checkpoints):
    tmp = tmp_path_factory.mktemp("hf")
    return (
        export_hf(tiny_checkpoints.pretrained, tmp / "mlm", tiny_checkpoints.tokenizer_dir),
        export_hf(tiny_checkpoints.classifier, tmp / "cls", tiny_checkpoints.tokenizer_dir),
    )


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Engine:
    return Engine.load(tiny_bundle, intra_op_threads=1)


def test_folder_contents(hf_dirs, tiny_checkpoints) -> None:
    from safetensors import safe_open

    from model.checkpoint import load_model

    mlm, cls = hf_dirs
    for folder in hf_dirs:
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
            p.name for p in folder.iterdir()
        }
    config = json.loads((cls / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert "attn_implementation" not in config
    with safe_open(str(mlm / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(load_model(tiny_checkpoints.pretrained)[0].state_dict())


def test_folder_is_readable_by_other_users(hf_dirs) -> None:
    """A server or a container reading the folder usually runs as another user than the exporter."""
    for folder in hf_dirs:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}


def test_hf_tokenizer_equals_ours(hf_dirs, tiny_tokenizer, tiny_corpus: Path) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(str(hf_dirs[0]))
    rng = random.Random(0)
    lines = [line for line in tiny_corpus.read_text(encoding="utf-8").splitlines() if line.strip()][:300]
    for i, line in enumerate(lines):
        words = line.split()
        if i % 2:  # masks typed with and without a space before them, and stray spaces
            words[rng.randrange(len(words))] = "[MASK]"
            line = " ".join(words).replace(" [MASK]", "[MASK]" if i % 4 == 1 else "  [MASK]", 1) + " "
        assert hf(line)["input_ids"] == tiny_tokenizer.encode(line).input_ids, line
    pair = hf(lines[0], lines[1])
    ours = tiny_tokenizer.encode(lines[0], lines[1])
    assert (pair["input_ids"], pair["token_type_ids"]) == (ours.input_ids, ours.token_type_ids)


def test_fill_mask_pipeline_predicts_what_the_engine_predicts(hf_dirs, engine: Engine) -> None:
    pipe = transformers.pipeline("fill-mask", model=str(hf_dirs[0]), device="cpu")
    ours = engine.fill_mask(FILL_MASK_TEXTS, top_k=5)
    for text, expected in zip(FILL_MASK_TEXTS, ours, strict=True):
        theirs = pipe(text, top_k=5)
        assert [p["token"] for p in theirs] == [p["token"] for p in expected[0]], text
        assert [p["score"] for p in theirs] == pytest.approx([p["score"] for p in expected[0]], abs=1e-5)


def test_text_classification_pipeline_predicts_what_the_engine_predicts(hf_dirs, engine: Engine) -> None:
    pipe = transformers.pipeline("text-classification", model=str(hf_dirs[1]), device="cpu")
    ours = engine.classify(CLASSIFY_TEXTS)
    theirs = pipe(CLASSIFY_TEXTS, top_k=None)
    for expected, found in zip(ours, theirs, strict=True):
        assert [d["label"] for d in found] == [d["label"] for d in expected]
        assert [d["score"] for d in found] == pytest.approx([d["score"] for d in expected], abs=1e-5)


def test_cli_and_errors(tmp_path: Path, tiny_checkpoints, capsys) -> None:
    from training.cli import main

    assert (
        main(
            [
                "export-hf",
                str(tiny_checkpoints.classifier),
                str(tmp_path / "out"),
                "--tokenizer",
                str(tiny_checkpoints.tokenizer_dir),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(CLIError, match="already exists"):
        export_hf(tiny_checkpoints.classifier, tmp_path / "out", tiny_checkpoints.tokenizer_dir)
    with pytest.raises(
        CLIError, match="no tokenizer.model found"
    ):  # the tiny checkpoints have none beside them
        export_hf(tiny_checkpoints.classifier, tmp_path / "other")


def test_tokenizer_recorded_in_the_checkpoint_is_used(
    tmp_path: Path, tiny_checkpoints, tiny_tokenizer
) -> None:
    from model.checkpoint import load_model, save_model

    model, metadata = load_model(tiny_checkpoints.classifier)
    save_model(
        tmp_path / "model.pt", model, {**metadata, "tokenizer": str(tiny_tokenizer.path)}
    )  # as finetune does
    out = export_hf(tmp_path / "model.pt", tmp_path / "hf")
    assert (out / "spiece.model").read_bytes() == tiny_tokenizer.path.read_bytes()


def test_a_trainers_checkpoint_is_accepted(tiny_pretrain_run: Path, tmp_path: Path) -> None:
    """`export-hf run/checkpoint.pt` (as `finetune --init` takes it): its weights, its recorded tokenizer."""
    from safetensors.torch import load_file

    from model.checkpoint import read_weights
    from training.cli import main

    assert main(["export-hf", str(tiny_pretrain_run / "checkpoint.pt"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertForPreTraining"]
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    trained = read_weights(tiny_pretrain_run / "checkpoint.pt").state
    assert exported.keys() <= trained.keys()
    assert all(exported[k].equal(trained[k]) for k in exported)
