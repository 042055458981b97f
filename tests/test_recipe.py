"""`pocketbert recipe` end to end on a tiny recipe: every stage runs, a second run skips them all, a
changed setting re-runs its stage and the stages after it, and the card shows measured figures."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import generate_corpus

from training.cli import main
from training.recipe import Runner, Stage, load_recipe

_POSITIVE = ["good", "great", "lovely", "wonderful", "fun", "superb", "charming"]
_NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "weak", "poor"]


def write_task(path: Path, rows: int, seed: int) -> Path:
    """A sentiment task a tiny model can learn: the label is the polarity of the adjective."""
    rng = random.Random(seed)
    lines = ["text\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        word = rng.choice(_POSITIVE if label else _NEGATIVE)
        lines.append(f"the film was {word} and the cast was {rng.choice(_POSITIVE + _NEGATIVE)}.\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_data(folder: Path) -> None:
    generate_corpus(folder / "corpus.txt", documents=80)
    write_task(folder / "train.tsv", 240, 1)
    write_task(folder / "test.tsv", 80, 2)
    write_task(folder / "other.tsv", 30, 3)  # an extra test set, as IMDB is for the English model


def write_recipe(folder: Path, lr: float = 1e-3, last_phase: int = 10) -> Path:
    corpus, train, test = folder / "corpus.txt", folder / "train.tsv", folder / "test.tsv"
    text = f"""
name = "tiny-sentiment"
language = "en"
workdir = "{folder / "work"}"
bundle = "{folder / "bundles" / "tiny-sentiment"}"

[corpus]
files = ["{corpus}"]

[task]
name = "csv"
train = "{train}"
test = "{test}"
dev_fraction = 0.2
extra_tests = [{{ name = "other reviews", task = "csv", path = "{folder / "other.tsv"}" }}]

[tokenizer]
vocab_size = 160
extra_text = "task"
candidates = [{{ name = "corpus only", extra_text = "none" }}]

[prepare]
max_length = 48
dupe_factor = 2
valid_fraction = 0.1

[indomain]
dupe_factor = 1

[pretrain]
config = {{ hidden_size = 32, num_hidden_layers = 1, num_attention_heads = 2, intermediate_size = 64 }}
batch_size = 8
lr = 1e-3
warmup = 2
eval_every = 5
eval_batches = 2
phases = [{{ steps = 10, stop_at = 6 }}, {{ steps = {last_phase} }}]

[adapt]
steps = 4
batch_size = 8
lr = 5e-4
log_every = 2

[finetune]
seeds = [1]
epochs = 2
lr = {lr}
batch_size = 16
max_length = 32

[export]
optimize = false
quantize = ""
eval_sentences = 20

[card]
fill_mask = ["the cat [MASK] the park."]
attention_text = "the cat sees a book"
anchors = [["a published model", "90.0", "for comparison"]]
"""
    path = folder / "tiny.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_recipe_runs_skips_and_reruns_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_data(tmp_path)
    recipe = write_recipe(tmp_path)
    assert main(["recipe", str(recipe), "--threads", "1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "tokenizer          run" in plan and "card               run" in plan
    assert not (tmp_path / "work").exists()  # a dry run runs nothing

    assert main(["recipe", str(recipe), "--threads", "1"]) == 0
    first = capsys.readouterr().out
    bundle = tmp_path / "bundles" / "tiny-sentiment"
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    data = json.loads((bundle / "card.json").read_text(encoding="utf-8"))
    # the card's figures are the run's own files
    results = json.loads((tmp_path / "work" / "finetune" / "results.json").read_text())
    assert data["finetune"]["test_acc_mean"] == results["test_acc_mean"]
    # one seed: its figure alone, no "± 0.00" claiming zero spread
    assert f"| **{100 * results['test_acc_mean']:.2f}** | 1 seed, {results['failed_runs']} failed |" in card
    assert card.startswith("---\nlanguage: en\n") and "model-index:" in card
    assert "TF-IDF" in card and "same recipe, no pretraining" in card and "a published model" in card
    (seed,) = results["seeds"]  # the bundle's classifier is named, with its own test figure
    assert f"seed 1's: the seed with the best dev accuracy ({100 * seed['best_dev_acc']:.2f}%" in card
    assert f"It scores {100 * seed['test_acc']:.2f}% on the test set" in card
    assert "single jamo" not in card  # an English tokenizer table has no Hangul column
    # the card compares the shipped tokenizer with the candidate the recipe trained beside it
    assert {row["tokenizer"] for row in data["tokenizer"]} == {"shipped", "corpus only"}
    assert "| corpus only | csv train |" in card
    (other,) = data["extra_tests"]
    assert other["name"] == "other reviews" and other["examples"] == 30
    score = f"{100 * other['accuracy']:.2f}%"
    assert f"On **other reviews** (30 texts) the shipped bundle scores **{score}**" in card
    assert data["pretraining"]["step"] == 10 and data["adapt"]["tokens_seen"] > 0
    assert [row["ranks"] for row in data["mlm_by_frequency"]][0] == "1-100"
    assert (
        data["fill_mask"][0]["text"] == "the cat [MASK] the park."
        and len(data["fill_mask"][0]["predictions"]) == 5
    )
    for png in ("training_curves.png", "attention.png"):
        assert (bundle / png).stat().st_size > 5000
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["language"] == "en" and manifest["card"]["test_accuracy_mean"] == results["test_acc_mean"]
    commands = (tmp_path / "work" / "commands.log").read_text()
    assert "pocketbert pretrain" in commands and "--stop-at 6" in commands and "bench/baseline.py" in commands
    assert first.count("$ pocketbert pretrain") == 3  # two phases + the continued pretraining

    # again: nothing to do
    assert main(["recipe", str(recipe), "--threads", "1"]) == 0
    again = capsys.readouterr().out
    assert "$ pocketbert" not in again and again.count("skipped") == 12

    # an edited card text: the card alone runs again, from the figures measured before (nothing re-scored)
    text = recipe.read_text(encoding="utf-8")
    recipe.write_text(text.replace('"a published model"', '"another model"'), encoding="utf-8")

    def no_measuring(*args: object) -> None:
        raise AssertionError("the card's figures were measured again for a new text")

    with monkeypatch.context() as patch:
        patch.setattr("training.card.measure", no_measuring)
        assert main(["recipe", str(recipe), "--threads", "1"]) == 0
    assert "card figures unchanged since" in capsys.readouterr().out
    new_card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "another model" in new_card and new_card.replace("another model", "a published model") == card
    for png in ("training_curves.png", "attention.png"):
        assert (bundle / png).stat().st_size > 5000
    # a new fill-mask example is a new figure: measured
    recipe.write_text(text.replace("the cat [MASK] the park.", "a dog [MASK] the river."), encoding="utf-8")
    assert main(["recipe", str(recipe), "--threads", "1"]) == 0
    assert "card figures unchanged" not in capsys.readouterr().out
    assert json.loads((bundle / "card.json").read_text())["fill_mask"][0]["text"] == "a dog [MASK] the river."
    recipe.write_text(text, encoding="utf-8")
    assert main(["recipe", str(recipe), "--threads", "1"]) == 0  # as it was
    capsys.readouterr()
    # --card-text-only: the card's texts again from the bundle's own card.json, with no work folder at all
    (tmp_path / "work").rename(tmp_path / "work-away")
    recipe.write_text(text.replace('"a published model"', '"another model"'), encoding="utf-8")
    assert main(["recipe", str(recipe), "--card-text-only"]) == 0
    assert (bundle / "MODEL_CARD.md").read_text(encoding="utf-8") == new_card
    (tmp_path / "work-away").rename(tmp_path / "work")
    recipe.write_text(text, encoding="utf-8")
    assert main(["recipe", str(recipe), "--card-text-only"]) == 0
    assert (bundle / "MODEL_CARD.md").read_text(encoding="utf-8") == card
    capsys.readouterr()

    # the same data with a new modification time (a fresh copy, a re-provisioned share): still done
    for name in ("corpus.txt", "train.tsv", "test.tsv"):
        os.utime(tmp_path / name, (1e9, 1e9))
    assert main(["recipe", str(recipe), "--threads", "1", "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" done ") == 12

    # an edited test file: what reads it (fine-tuning scores on it, the baseline, the card) runs again
    with open(tmp_path / "test.tsv", "a", encoding="utf-8") as test_file:
        test_file.write("the film was dull and the cast was dull.\t0\n")
    assert main(["recipe", str(recipe), "--threads", "1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "pretrain           done" in plan and "tokenizer          done" in plan
    for stage in ("finetune", "finetune-scratch", "baseline", "card"):
        assert f"{stage:<18} resume" in plan
    write_task(tmp_path / "test.tsv", 80, 2)  # as it was

    # a new fine-tuning lr: fine-tuning, export and the card run again; pretraining does not
    write_recipe(tmp_path, lr=2e-3)
    assert main(["recipe", str(recipe), "--threads", "1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "pretrain           done" in plan and "finetune           run" not in plan
    assert "finetune           resume" in plan and "export             resume" in plan
    assert "finetune-scratch   resume" in plan  # its lr is the recipe's lr too

    # a longer pretraining: everything that reads the pretrained model runs again, the scratch ablation
    # (same architecture, random weights) and the baseline do not
    write_recipe(tmp_path, last_phase=12)
    assert main(["recipe", str(recipe), "--threads", "1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "prepare            done" in plan and "pretrain           resume" in plan
    for stage in ("adapt", "finetune", "export", "card"):
        assert f"{stage:<18} resume" in plan
    assert "finetune-scratch   done" in plan and "baseline           done" in plan


def test_a_data_file_is_known_by_its_content(tmp_path: Path) -> None:
    """A copy elsewhere, with another modification time, is the same input; one changed byte is not."""
    from training.recipe import file_identity

    original = tmp_path / "a" / "corpus.txt"
    original.parent.mkdir()
    original.write_text("the cat sees the park.\n", encoding="utf-8")
    copy = tmp_path / "b" / "corpus.txt"
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    os.utime(copy, (1e9, 1e9))
    assert file_identity(copy) == file_identity(original)
    original.write_text("the cat sees the perk.\n", encoding="utf-8")  # same size, other content
    assert file_identity(copy) != file_identity(original)


def test_recipe_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["recipe", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such recipe file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    assert main(["recipe", str(bad)]) == 2
    assert "bad.toml: not valid TOML" in capsys.readouterr().err
    (tmp_path / "partial.toml").write_text('name = "x"\nworkdir = "w"\nbundle = "b"\n')
    assert main(["recipe", str(tmp_path / "partial.toml")]) == 2
    assert "missing [corpus]" in capsys.readouterr().err
    text = write_recipe(tmp_path).read_text(encoding="utf-8")
    (tmp_path / "no-test.toml").write_text(text.replace('test = "', 'tested = "'), encoding="utf-8")
    assert main(["recipe", str(tmp_path / "no-test.toml"), "--dry-run"]) == 2
    assert "no-test.toml: [task] misses 'test'" in capsys.readouterr().err
    (tmp_path / "extra.toml").write_text(text.replace('task = "csv", path', 'task = "csv", file'))
    assert main(["recipe", str(tmp_path / "extra.toml"), "--dry-run"]) == 2
    assert "extra.toml: [task] extra_tests entry 1 misses 'path'" in capsys.readouterr().err
    assert main(["recipe", str(tmp_path / "tiny.toml"), "--card-text-only"]) == 2  # no bundle made yet
    assert "card.json: no measured card figures there" in capsys.readouterr().err
    (tmp_path / "tok.toml").write_text(text.replace('extra_text = "none"', 'extra_text = "wiki"'))
    assert main(["recipe", str(tmp_path / "tok.toml"), "--dry-run"]) == 2
    assert "tok.toml: [tokenizer] candidates entry 1 has extra_text 'wiki'" in capsys.readouterr().err
    (tmp_path / "twice.toml").write_text(text.replace('"corpus only"', '"shipped"'))
    assert main(["recipe", str(tmp_path / "twice.toml"), "--dry-run"]) == 2
    assert "twice.toml: [tokenizer] candidates entry 1 needs a name of its own" in capsys.readouterr().err


def test_a_stage_stopped_by_a_signal_stops_the_recipe_unstamped(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pretraining stopped by SIGTERM (saved, exit 143), or whose command returns short of its final
    step, is not done: no stamp, no fine-tuning on it."""
    import training.cli

    real_main = training.cli.main

    def interrupted_pretrain(argv: list[str]) -> int:
        return 128 + signal.SIGTERM if argv[0] == "pretrain" else real_main(argv)

    write_data(tmp_path)
    recipe = write_recipe(tmp_path)
    monkeypatch.setattr(training.cli, "main", interrupted_pretrain)
    assert real_main(["recipe", str(recipe), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "stopped by a signal (exit code 143)" in err and "run the recipe again to continue" in err
    stamps = tmp_path / "work" / ".stamps"
    assert (stamps / "tokenizer.json").is_file() and not (stamps / "pretrain.json").exists()
    assert not (tmp_path / "work" / "finetune").exists()

    # a command that returns 0 short of the stage's end (no checkpoint at the final step) is not done either
    monkeypatch.setattr(training.cli, "main", lambda argv: 0 if argv[0] == "pretrain" else real_main(argv))
    assert real_main(["recipe", str(recipe), "--threads", "1"]) == 2
    assert "returned before the stage was complete; not stamped" in capsys.readouterr().err
    assert not (stamps / "pretrain.json").exists() and not (tmp_path / "work" / "finetune").exists()


def _runner_with_stages(tmp_path: Path, ran: list[str]) -> Runner:
    """The tiny recipe's runner with two stand-in stages that record their runs and write one file each."""
    write_data(tmp_path)
    runner = Runner(load_recipe(write_recipe(tmp_path)), tmp_path / "work", threads=1)
    runner.stages = []
    for name in ("first", "second"):
        output = tmp_path / "work" / f"{name}.txt"

        def run(name: str = name, output: Path = output) -> None:
            ran.append(name)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(name, encoding="utf-8")

        runner.add(Stage(name, {"setting": 1}, [output], run))
    return runner


def test_a_stage_another_recipe_process_runs_is_waited_for_not_run_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two recipe processes on one work folder (`--only finetune-scratch` beside the full recipe): the
    second waits on the stage's lock and, when the first stamps it with the same fingerprint, skips it."""
    ran: list[str] = []
    runner = _runner_with_stages(tmp_path, ran)
    runner.lock_poll_s = 0.05
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the other process
    try:
        runner.stamps.mkdir(parents=True)
        lock = runner.stamps / "second.lock"
        lock.write_text(f"{other.pid}\n", encoding="utf-8")
        worker = threading.Thread(target=runner.run)
        worker.start()
        printed, deadline = "", time.monotonic() + 30
        while "second: process" not in printed and time.monotonic() < deadline:
            time.sleep(0.05)  # until the runner has finished "first" and waits on "second"
            printed += capsys.readouterr().out
        assert f"second: process {other.pid} runs it" in printed and ran == ["first"]
        (tmp_path / "work" / "second.txt").write_text("the other process's output", encoding="utf-8")
        runner.mark_done(runner.stages[1], 1.0)  # the other process stamps the stage, then unlocks it
        lock.unlink()
        worker.join(timeout=30)
    finally:
        other.kill()
    assert not worker.is_alive()
    assert ran == ["first"], "the stage the other process finished must not run again"
    assert "[2/2] second: done meanwhile by another recipe process, skipped" in capsys.readouterr().out
    assert not lock.exists() and not list(runner.stamps.glob("*.lock*"))


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    ran: list[str] = []
    runner = _runner_with_stages(tmp_path, ran)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    runner.stamps.mkdir(parents=True)
    (runner.stamps / "first.lock").write_text(f"{gone.pid}\n", encoding="utf-8")
    runner.run()
    assert ran == ["first", "second"]
    assert not list(runner.stamps.glob("*.lock*"))


def test_a_failing_stage_releases_its_lock(tmp_path: Path) -> None:
    runner = _runner_with_stages(tmp_path, [])

    def fail() -> None:
        raise RuntimeError("the stage's command broke")

    runner.stages[0].run = fail
    with pytest.raises(RuntimeError):
        runner.run()
    assert not list(runner.stamps.glob("*.lock*"))
    assert not runner.stamp_path(runner.stages[0]).exists()


def test_only_some_stages_does_not_claim_the_recipe_done(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ran: list[str] = []
    runner = _runner_with_stages(tmp_path, ran)
    runner.run(only=["first"])
    out = capsys.readouterr().out
    assert ran == ["first"] and "tiny-sentiment: first done" in out and "every stage done" not in out
    runner.run()
    assert ran == ["first", "second"] and "every stage done; bundle at" in capsys.readouterr().out


def test_a_new_dev_split_reruns_fine_tuning_but_not_pretraining_on_indomain_files(tmp_path: Path) -> None:
    """With [indomain] files (IMDB for the English model) nothing before fine-tuning reads the task: a
    dev split of whole sentences re-runs fine-tuning, the ablation, the baseline and what follows only.
    Without them the in-domain text is the task's training rows minus dev: it follows the split."""
    write_data(tmp_path)
    (tmp_path / "reviews.txt").write_text("a film.\n", encoding="utf-8")

    def fingerprints(indomain_files: bool, task_extra: str) -> dict[str, str]:
        text = write_recipe(tmp_path).read_text(encoding="utf-8")
        text = text.replace("dev_fraction = 0.2\n", f"dev_fraction = 0.2\n{task_extra}")
        if indomain_files:
            text = text.replace("[indomain]\n", f'[indomain]\nfiles = ["{tmp_path / "reviews.txt"}"]\n')
        (tmp_path / "variant.toml").write_text(text, encoding="utf-8")
        recipe = load_recipe(tmp_path / "variant.toml")
        return {s.name: s.fingerprint for s in Runner(recipe, tmp_path / "work", 1).stages}

    rows, sentences = fingerprints(True, ""), fingerprints(True, 'dev_unit = "sentence"\n')
    unchanged = {
        "indomain-text",
        "tokenizer",
        "tokenizer-compare",
        "prepare",
        "prepare-indomain",
        "pretrain",
        "adapt",
    }
    assert {name for name in rows if rows[name] != sentences[name]} == set(rows) - unchanged
    rows, sentences = fingerprints(False, ""), fingerprints(False, 'dev_unit = "sentence"\n')
    assert rows["indomain-text"] != sentences["indomain-text"] and rows["prepare"] == sentences["prepare"]


@pytest.mark.parametrize(
    ("setting", "folders"),
    [
        ("", ["data", "indomain-data"]),
        ("indomain = false\n", ["data"]),
        ('indomain = "only"\n', ["indomain-data"]),
    ],
)
def test_continued_pretraining_reads_the_data_its_indomain_setting_names(
    tmp_path: Path, setting: str, folders: list[str]
) -> None:
    """[adapt] continues on the corpus mixed with the in-domain text by default, on the corpus alone with
    `indomain = false`, and on the in-domain text alone with `indomain = "only"` (task-adaptive
    pretraining); the setting is part of the stage's fingerprint."""
    write_data(tmp_path)
    text = write_recipe(tmp_path).read_text(encoding="utf-8").replace("[adapt]\n", f"[adapt]\n{setting}")
    (tmp_path / "variant.toml").write_text(text, encoding="utf-8")
    runner = Runner(load_recipe(tmp_path / "variant.toml"), tmp_path / "work", 1)
    commands: list[tuple[str, ...]] = []
    runner.command = lambda *argv: commands.append(argv)  # type: ignore[method-assign]
    adapt = next(stage for stage in runner.stages if stage.name == "adapt")
    adapt.run()
    (argv,) = commands
    data = list(argv[argv.index("--data") + 1 : argv.index("--out")])
    assert argv[0] == "pretrain" and data == [str(tmp_path / "work" / name) for name in folders]
    default = next(
        s
        for s in Runner(load_recipe(write_recipe(tmp_path)), tmp_path / "work", 1).stages
        if s.name == "adapt"
    )
    assert (adapt.fingerprint == default.fingerprint) == (setting == "")


@pytest.mark.parametrize(
    ("indomain", "says"),
    [
        (
            True,
            "on the corpus mixed with the in-domain text: 3.3M more tokens; validation MLM 33.1%, NSP 82.6% "
            "on the same held-out articles.",
        ),
        (
            "only",
            "on the in-domain text alone (task-adaptive, Gururangan et al. 2020): 3.3M more tokens; "
            "validation MLM 33.1%, NSP 82.6% on held-out in-domain texts.",
        ),
    ],
)
def test_the_card_says_what_the_continued_pretraining_read(indomain: bool | str, says: str) -> None:
    from training.card import render

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "ko-nsmc.toml")
    data = json.loads((root / "bundles" / "ko-nsmc" / "card.json").read_text(encoding="utf-8"))
    data["adapt"] = {
        "indomain": indomain,
        "valid": {"mlm_acc": 0.331, "nsp_acc": 0.826},
        "tokens_seen": 3.3e6,
    }
    assert f"Continued pretraining {says}" in render(recipe, data)


@pytest.mark.parametrize(
    ("pretrained_from", "says"),
    [
        ("pretrain", "the fill-mask and next-sentence graphs keep the pretrained ones measured above"),
        ("adapt", "The fill-mask and next-sentence graphs carry these adapted weights."),
    ],
)
def test_the_card_says_which_weights_answer_fill_mask_after_continued_pretraining(
    pretrained_from: str, says: str
) -> None:
    """Export builds the classifier from the adapted encoder but the fill-mask / next-sentence graphs
    from `[export] pretrained_from`: a reader of the card must not have to guess which."""
    from training.card import render

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "ko-nsmc.toml")
    data = json.loads((root / "bundles" / "ko-nsmc" / "card.json").read_text(encoding="utf-8"))
    data["pretraining"]["from"] = pretrained_from
    data["adapt"] = {"indomain": "only", "valid": {"mlm_acc": 0.331, "nsp_acc": 0.826}, "tokens_seen": 3.3e6}
    text = render(recipe, data)
    assert says in text
    data["adapt"] = None
    assert "fill-mask and next-sentence graphs" not in render(recipe, data)


def test_the_card_compares_each_target_with_what_the_model_reached() -> None:
    """Targets come from the recipe, reached values from the measured figures: a missed one says by how
    much, a met one says so, and one the card has no figure for says that instead of guessing."""
    from training.card import target_lines

    data = {
        "finetune": {"test_acc_mean": 0.8624, "test_acc_std": 0.0004, "failed_runs": 0, "runs": 3},
        "scratch": {"test_acc_mean": 0.8314},
        "pretraining": {"valid": {"mlm_acc": 0.406, "nsp_acc": 0.926}},
    }
    targets = {"test_mean": 87.0, "test_std": 0.5, "failed_runs": 0, "over_scratch": 2.0, "mlm_acc": 42.0}
    rows = target_lines(targets, data, "nsmc")[4:-1]
    assert rows == [
        "| nsmc test accuracy, mean over seeds: at least 87 | 86.24 | missed by 0.76 |",
        "| nsmc test accuracy, std over seeds: at most 0.5 | 0.04 | met |",
        "| failed fine-tuning runs: at most 0 | 0 | met |",
        "| points over the same recipe without pretraining: at least 2 | 3.10 | met |",
        "| validation MLM accuracy: at least 42 | 40.60 | missed by 1.40 |",
    ]
    data["finetune"] |= {"failed_runs": 1, "runs": 1, "test_acc_std": 0.0}  # one seed: no spread measured
    assert target_lines({"failed_runs": 0, "test_std": 0.5}, data, "nsmc")[4:-1] == [
        "| failed fine-tuning runs: at most 0 | 1 | missed by 1 |",
        "| nsmc test accuracy, std over seeds: at most 0.5 | - | not measured |",
    ]
    for missing in ("scratch", "finetune"):  # either side of the difference absent
        partial = {k: v for k, v in data.items() if k != missing}
        assert target_lines({"over_scratch": 2.0}, partial, "nsmc")[4] == (
            "| points over the same recipe without pretraining: at least 2 | - | not measured |"
        )
    assert target_lines({}, data, "nsmc") == []


def test_the_shipped_cards_show_their_recipes_targets() -> None:
    """Each shipped card holds the targets table its recipe and its own figures (card.json) give."""
    from training.card import target_lines

    root = Path(__file__).resolve().parents[1]
    for name in ("ko-nsmc", "en-sst2"):
        recipe = load_recipe(root / "recipes" / f"{name}.toml")
        data = json.loads((root / "bundles" / name / "card.json").read_text(encoding="utf-8"))
        card = (root / "bundles" / name / "MODEL_CARD.md").read_text(encoding="utf-8")
        table = target_lines(recipe["card"]["targets"], data, recipe["task"]["name"])
        assert len(table) == 5 + len(recipe["card"]["targets"]), name
        assert "\n".join(table) in card, name


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        ("{ test_man = 87.0 }", "[card] targets has 'test_man'; the known targets are test_mean, "),
        ('{ test_mean = "87" }', "[card] targets.test_mean is '87'; it must be a finite number"),
        ("{ test_mean = nan }", "[card] targets.test_mean is nan; it must be a finite number"),
        ("87.0", "[card] targets must be a table"),
    ],
)
def test_a_misspelt_or_non_numeric_target_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, targets: str, says: str
) -> None:
    write_data(tmp_path)
    text = write_recipe(tmp_path).read_text(encoding="utf-8")
    assert "[card]\n" in text
    (tmp_path / "bad.toml").write_text(text.replace("[card]\n", f"[card]\ntargets = {targets}\n"))
    assert main(["recipe", str(tmp_path / "bad.toml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_an_indomain_setting_other_than_true_false_or_only_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_data(tmp_path)
    text = write_recipe(tmp_path).read_text(encoding="utf-8")
    for value, shown in (('"yes"', "'yes'"), ("1", "1")):
        (tmp_path / "bad.toml").write_text(text.replace("[adapt]\n", f"[adapt]\nindomain = {value}\n"))
        assert main(["recipe", str(tmp_path / "bad.toml"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert (
            f'[adapt] has indomain {shown}; it must be true, false or "only"' in err
            and "Traceback" not in err
        )


def test_the_study_start_is_recovered_from_the_head_start(tmp_path: Path, tiny_pretrain_run: Path) -> None:
    """A run that adopted its head start and moved on without keeping step-N.pt: the study's arms start
    from the head start's weights (it stopped at step N); any other step is a one-line error."""
    import shutil

    import torch

    from model.checkpoint import read_weights
    from training.checkpointing import load_training_state
    from training.errors import CLIError
    from training.recipe import recover_phase_snapshot

    head = tmp_path / "head"
    head.mkdir()
    shutil.copy(tiny_pretrain_run / "checkpoint.pt", head / "checkpoint.pt")
    step = load_training_state(head / "checkpoint.pt")["step"]
    run = tmp_path / "run"
    run.mkdir()
    recover_phase_snapshot(run, step, str(head))
    recovered, original = read_weights(run / f"step-{step}.pt"), read_weights(head / "checkpoint.pt")
    assert recovered.metadata["step"] == step
    assert all(torch.equal(recovered.state[k], original.state[k]) for k in original.state)
    with pytest.raises(CLIError, match=f"step-{step + 1}.pt: the study starts from .* at step {step + 1}"):
        recover_phase_snapshot(run, step + 1, str(head))


def test_the_plan_counts_pretraining_from_the_head_start(tmp_path: Path, tiny_pretrain_run: Path) -> None:
    """A recipe that resumes a head start (as the Korean one does from step 4,005) plans only the steps
    after it: the estimate is not that of a run from step 0."""
    write_data(tmp_path)
    text = write_recipe(tmp_path, last_phase=12).read_text(encoding="utf-8")
    with_head = text.replace("[pretrain]\n", f'[pretrain]\nhead_start = "{tiny_pretrain_run}"\n')
    (tmp_path / "head.toml").write_text(with_head, encoding="utf-8")
    plain = Runner(load_recipe(tmp_path / "tiny.toml"), tmp_path / "work", 1)._pretrain_seconds_left()
    headed = Runner(load_recipe(tmp_path / "head.toml"), tmp_path / "work", 1)._pretrain_seconds_left()
    assert headed == pytest.approx(plain * (12 - 2) / 12)  # the head start stopped at step 2 of 12


SHIPPED_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the project")
@pytest.mark.parametrize("recipe", SHIPPED_RECIPES, ids=lambda path: path.stem)
def test_each_shipped_recipe_plans_every_stage_and_its_study(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The recipes that made the shipped bundles stay valid as the code moves: on a machine that has
    run nothing (an empty home, so an empty work folder), the dry run with the study plans every stage."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(recipe.parents[1])
    assert main(["recipe", str(recipe.relative_to(recipe.parents[1])), "--study", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    for stage in ("tokenizer", "prepare", "pretrain", "study", "finetune", "baseline", "export"):
        assert f"\n{stage:<19}run" in plan, plan  # the plan's rows: stage, state, estimate
    assert not (tmp_path / "pocketbert-runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(("native_bf16", "speedup"), [(False, 1.0), (True, 2.0)])
def test_pretraining_estimates_count_bf16_only_where_the_cpu_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool, speedup: float
) -> None:
    """`precision = "auto"` pretrains in bf16 only on a CPU with native bf16, at twice fp32's tokens/s: the
    plan's estimates for pretraining and continued pretraining follow; fp32 sections keep theirs."""
    from training import recipe as recipe_module

    write_data(tmp_path)
    fp32 = load_recipe(write_recipe(tmp_path))
    auto = load_recipe(write_recipe(tmp_path))
    auto["pretrain"]["precision"] = auto["adapt"]["precision"] = "auto"
    monkeypatch.setattr(recipe_module, "cpu_has_native_bf16", lambda: native_bf16)

    def estimates(recipe: dict) -> dict[str, float]:
        runner = Runner(recipe, tmp_path / "work", threads=2)
        return {name: runner._stage(name).estimate_s for name in ("pretrain", "adapt")}

    plain, fast = estimates(fp32), estimates(auto)
    assert all(plain[name] > 0 for name in plain)
    assert fast == pytest.approx({name: seconds / speedup for name, seconds in plain.items()})
