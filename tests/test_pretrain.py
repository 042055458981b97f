"""`pocketbert pretrain` on a tiny model and tiny data: exact resume, signals, metrics, plot, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64"]


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY_MODEL,
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--eval-batches",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


def losses(metrics: Path) -> list[dict]:
    """Every row without its timing and memory fields (those differ between any two runs)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "rss_mb")} for row in rows]


# --- optimiser and schedule --------------------------------------------------------------------------
def test_weight_decay_skips_biases_and_layernorm(tiny_config) -> None:
    from model.bert import BertForPreTraining
    from training.optim import param_groups

    model = BertForPreTraining(tiny_config)
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "bert.embeddings.LayerNorm.weight",
        "cls.predictions.bias",
    }
    # the tied decoder / word-embedding matrix is stepped once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays_to_zero() -> None:
    from training.optim import warmup_linear_decay

    values = [warmup_linear_decay(s, 4, 20) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0 and values[12] == 0.5 and values[20] == 0.0
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))


def test_data_order_is_a_function_of_seed_and_epoch() -> None:
    from training.pretrain import epoch_batches

    a = epoch_batches(50, 8, seed=3, epoch=1)
    assert [b.tolist() for b in a] == [b.tolist() for b in epoch_batches(50, 8, seed=3, epoch=1)]
    assert [b.tolist() for b in a] != [b.tolist() for b in epoch_batches(50, 8, seed=3, epoch=2)]
    ranks = [torch.cat(epoch_batches(50, 8, 3, 1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 24 and not set(ranks[0].tolist()) & set(ranks[1].tolist())
    # several folders: each batch from one folder, every folder read once per epoch
    mixed = epoch_batches([50, 20], 8, seed=3, epoch=1)
    assert all(bool((b < 50).all()) or bool((b >= 50).all()) for b in mixed)
    assert sum(bool((b >= 50).all()) for b in mixed) == 2 and len(mixed) == 6 + 2
    assert len(set(torch.cat(mixed).tolist())) == 64
    assert [b.tolist() for b in epoch_batches([50], 8, 3, 1)] == [b.tolist() for b in a]


def test_heap_trimmer_trims_once_the_process_has_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.loop as loop

    resident = iter([1000, 1100, 1200, 1257, 1050, 1300, 1307, 1040])  # MB, read after each step
    monkeypatch.setattr(loop, "resident_mb", lambda: next(resident))
    trims: list[int] = []
    trimmer = loop.HeapTrimmer(slack_mb=256)
    trimmer._trim = trims.append  # stands for glibc's malloc_trim
    for _ in range(4):
        trimmer.after_step()
    assert len(trims) == 1  # the first step sets the level (1000); 1257 is past 1000 + 256
    for _ in range(4):
        trimmer.after_step()
    assert len(trims) == 2  # the step after the trim sets it anew (1050); 1307 is past 1050 + 256
    assert trimmer.level_mb == 1040


# --- the command --------------------------------------------------------------------------------------
def test_resume_is_exact(prepared: Path, tmp_path: Path) -> None:
    """8 steps in one go == 4 steps, stop, resume 4 steps: same losses at every logged step, same weights."""
    common = [
        "--steps",
        "8",
        "--grad-accum",
        "2",
        "--eval-every",
        "4",
        "--save-every",
        "4",
        "--log-every",
        "2",
    ]
    assert main(pretrain_args(prepared, tmp_path / "whole", *common)) == 0
    assert main(pretrain_args(prepared, tmp_path / "split", *common, "--stop-at", "4")) == 0
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["position"]["batch"] > 0
    # Resumed with none of the run's options: batch size, steps, lr, warmup, grad-accum come from the
    # checkpoint.
    running = [
        "--eval-every",
        "4",
        "--save-every",
        "4",
        "--log-every",
        "2",
        "--eval-batches",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    assert (
        main(["pretrain", "--data", str(prepared), "--out", str(tmp_path / "split"), "--resume", *running])
        == 0
    )

    assert losses(tmp_path / "whole" / "metrics.jsonl") == losses(tmp_path / "split" / "metrics.jsonl")
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    split = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["model"]
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    final = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert final["step"] == 8
    assert final["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()


def test_the_same_command_run_again_continues_the_run(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Without --resume too: starting over would throw away the steps done (hours, on a real corpus)."""
    out = tmp_path / "run"
    options = ["--steps", "4", "--log-every", "1", "--eval-every", "100"]
    assert main(pretrain_args(prepared, out, *options, "--stop-at", "2")) == 0
    capsys.readouterr()
    assert main(pretrain_args(prepared, out, *options)) == 0
    assert "holds this run at step 2: continuing it (as --resume)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]  # steps 1-2 were not redone


def test_a_folder_holding_another_run_is_refused(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No other run's model.pt is overwritten: a fine-tuning run's folder, a lone model.pt, a file."""
    from training.checkpointing import save_training_state

    finetune_run = tmp_path / "finetune"
    finetune_run.mkdir()
    save_training_state(finetune_run / "checkpoint.pt", {"kind": "finetune", "model": {}, "step": 7})
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.pt").write_bytes(b"weights of some other run")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    expected = {
        finetune_run: "not a pretraining checkpoint (a finetune run's); choose another --out",
        lone: "a model with no pretraining checkpoint beside it (another run's?); choose another --out",
        a_file: "is a file; --out names a folder to write into",
    }
    for out, words in expected.items():
        capsys.readouterr()
        assert main(pretrain_args(prepared, out, "--steps", "2")) == 2
        assert words in capsys.readouterr().err, out
    assert (lone / "model.pt").read_bytes() == b"weights of some other run" and a_file.read_text() == "mine"


def test_resume_drops_a_row_cut_short_by_a_kill(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run killed while writing metrics.jsonl leaves half a row last; --resume drops it with a warning."""
    out = tmp_path / "run"
    options = ["--steps", "4", "--log-every", "1", "--eval-every", "100"]
    assert main(pretrain_args(prepared, out, *options, "--stop-at", "2")) == 0
    metrics = out / "metrics.jsonl"
    complete = metrics.read_text()
    metrics.write_text(complete + '{"step": 3, "split": "tr')
    capsys.readouterr()
    assert main(pretrain_args(prepared, out, *options, "--resume")) == 0
    assert "metrics.jsonl:4: dropped a truncated last line" in capsys.readouterr().err
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [
        (0, "valid"),
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (4, "train"),
        (4, "valid"),
    ]
    # a bad row that is not the last one is not a kill's doing: a one-line error, not a traceback
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    assert main(pretrain_args(prepared, out, *options, "--resume")) == 2
    assert "metrics.jsonl:2: not a JSON object" in capsys.readouterr().err


def test_resume_keeps_the_reporting_options(prepared: Path, tmp_path: Path) -> None:
    """A bare --resume logs, evaluates and saves as the run did, not at the defaults (10 / 100 / 500)."""
    out = tmp_path / "run"
    reporting = ["--log-every", "3", "--eval-every", "4", "--save-every", "2", "--eval-batches", "1"]
    assert main(pretrain_args(prepared, out, "--steps", "8", *reporting, "--stop-at", "2")) == 0
    bare = ["pretrain", "--data", str(prepared), "--out", str(out), "--resume", "--threads", "1"]
    assert main([*bare, "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [3, 6]
    assert [r["step"] for r in rows if r["split"] == "valid"] == [0, 4, 8]
    args = torch.load(out / "checkpoint.pt", weights_only=False)["args"]
    assert (args["log_every"], args["eval_every"], args["save_every"], args["eval_batches"]) == (3, 4, 2, 1)


def test_resume_with_a_new_schedule_takes_effect(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--lr / --steps given on --resume change the rate from the resumed step on; --seed is refused."""
    out = tmp_path / "run"
    common = ["--eval-every", "100", "--log-every", "1", "--warmup", "2"]
    assert main(pretrain_args(prepared, out, "--steps", "6", "--stop-at", "3", *common)) == 0
    running = ["--threads", "1", "--device", "cpu", "--eval-batches", "2", "--log-every", "1"]
    resume = ["pretrain", "--data", str(prepared), "--out", str(out), "--resume", *running]
    capsys.readouterr()
    assert main([*resume, "--seed", "7"]) == 2
    assert "--seed 7 differs" in capsys.readouterr().err
    assert main([*resume, "--lr", "1e-2", "--steps", "8"]) == 0
    assert "--lr changes from 0.001 to 0.01" in capsys.readouterr().out
    rates = {
        row["step"]: row["lr"]
        for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if row["split"] == "train"
    }
    assert rates[3] == pytest.approx(1e-3 * (6 - 3) / (6 - 2))  # the first schedule
    for step in (4, 5, 6, 7):  # the new one: peak 1e-2, decaying to zero at step 8
        assert rates[step] == pytest.approx(1e-2 * (8 - step) / (8 - 2))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 8 and state["args"]["lr"] == 1e-2


def test_init_continues_from_weights_on_several_data_folders(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--init takes the weights (not the optimiser or schedule); two --data folders are read as one."""
    from model.checkpoint import load_model

    base = tmp_path / "base"
    assert main(pretrain_args(prepared, base, "--steps", "4", "--eval-every", "100")) == 0
    before, _ = load_model(base / "checkpoint.pt")  # a training checkpoint works as well as model.pt
    out = tmp_path / "continued"
    args = [
        "pretrain",
        "--data",
        str(prepared),
        str(prepared),
        "--out",
        str(out),
        "--init",
        str(base / "checkpoint.pt"),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--eval-every",
        "100",
        "--eval-batches",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--dropout",
        "0",
        "--log-every",
        "1",
    ]
    assert main(args) == 0
    after, metadata = load_model(out / "model.pt")
    assert after.config.hidden_size == 32 and after.config.hidden_dropout_prob == 0.0
    assert metadata["step"] == 3 and len(metadata["data"]) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_valid = next(r for r in rows if r["split"] == "valid")
    assert first_valid["step"] == 0 and first_valid["mlm_acc"] > 0  # starts from the trained weights
    assert not torch.equal(
        before.bert.embeddings.word_embeddings.weight, after.bert.embeddings.word_embeddings.weight
    )
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["position"]["batch"] == 3  # a fresh run: its own data position, its own schedule
    # a classifier or a model of another vocabulary is refused in one line
    capsys.readouterr()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([*args[:5], str(tmp_path / "other"), args[6], str(bad), *args[8:]]) == 2
    assert "bad.pt: not a readable pocketbert checkpoint" in capsys.readouterr().err


def test_outputs_metrics_plot_and_export_checkpoint(prepared: Path, tmp_path: Path) -> None:
    from model.checkpoint import load_model

    out = tmp_path / "run"
    assert main(pretrain_args(prepared, out, "--steps", "40", "--eval-every", "20", "--log-every", "5")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in valid] == [0, 20, 40] and len(train) == 8
    assert {"mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} <= valid[-1].keys()
    assert {"loss", "mlm_loss", "nsp_loss", "lr", "tokens_per_s", "rss_mb"} <= train[-1].keys()
    assert all(50 < r["rss_mb"] < 4000 for r in train)  # a live process's resident MB
    assert valid[-1]["mlm_loss"] < valid[0]["mlm_loss"]  # it learns something
    assert (out / "metrics.png").stat().st_size > 1000

    model, metadata = load_model(out / "model.pt")
    assert model.config.hidden_size == 32 and metadata["step"] == 40
    assert metadata["valid"] == {k: v for k, v in valid[-1].items() if k not in ("step", "split")}
    index = json.loads((prepared / "index.json").read_text())
    assert metadata["tokenizer_sha256"] == index["tokenizer_sha256"]

    (out / "metrics.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "metrics.png").is_file()


def test_bf16_autocast_runs(prepared: Path, tmp_path: Path) -> None:
    assert main(pretrain_args(prepared, tmp_path / "bf16", "--steps", "2", "--precision", "bf16")) == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, None),
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"amx_bf16"}, torch.bfloat16),
    ],
)
def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: torch.dtype | None
) -> None:
    """bf16 autocast doubles the tokens per second on AVX512-BF16 cores; AVX2 ones convert bf16 in
    software: a recipe that says `precision = "auto"` must keep fp32 on the second kind."""
    from model import plans
    from training.runtime import autocast_dtype

    monkeypatch.setattr(plans, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == expected
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16


def test_auto_precision_says_what_it_chose(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from model import plans

    monkeypatch.setattr(plans, "cpu_flags", lambda: {"avx2"})
    assert main(pretrain_args(prepared, tmp_path / "auto", "--steps", "1", "--precision", "auto")) == 0
    assert "precision: auto -> fp32 (no native bf16 here) on cpu" in capsys.readouterr().out


def test_whole_word_masking_uses_the_datas_tokenizer(
    prepared: Path, tmp_path: Path, tiny_corpus: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.tokenizer_train import train_tokenizer

    out = tmp_path / "wwm"
    assert main(pretrain_args(prepared, out, "--steps", "3", "--whole-word-mask")) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    other = train_tokenizer([tiny_corpus], tmp_path / "other", vocab_size=130)  # not the data's tokenizer
    capsys.readouterr()
    args = pretrain_args(
        prepared, tmp_path / "x", "--steps", "1", "--whole-word-mask", "--tokenizer", str(other)
    )
    assert main(args) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_bad_input_is_one_line_error(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(pretrain_args(tmp_path / "nowhere", tmp_path / "out", "--steps", "1")) == 2
    assert "index.json" in capsys.readouterr().err
    assert main(pretrain_args(prepared, tmp_path / "out", "--steps", "1", "--heads", "3")) == 2
    assert "multiple of num_attention_heads" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2  # no metrics.jsonl there
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{oops\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl:2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_saves_checkpoint_and_exits_cleanly(
    prepared: Path, tmp_path: Path, sig: int, code: int
) -> None:
    from model.checkpoint import load_model

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        *pretrain_args(prepared, out, "--steps", "100000", "--log-every", "1", "--save-every", "100000"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 90
        while not (metrics.is_file() and '"train"' in metrics.read_text()):  # the loop is running
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "pretrain did not start"
            time.sleep(0.2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=240)  # saving and plotting: slow on a busy machine
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "stopped by signal" in stdout
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 0 < state["step"] < 100000
    _, metadata = load_model(out / "model.pt")
    assert metadata["step"] == state["step"]
    assert not list(out.glob(".*.tmp-*"))  # atomic writes leave no temporary files
