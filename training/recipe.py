"""`pocketbert recipe FILE.toml`: one command from raw text to a served bundle with its model card.

A recipe file names the data and every setting; this module turns it into stages, each an ordinary
`pocketbert` command (printed before it runs, and appended to WORKDIR/commands.log, so every figure
of the card can be traced to the command that made it):

    indomain-text -> tokenizer (-> tokenizer-compare) -> prepare -> prepare-indomain -> pretrain (phases)
      -> adapt -> finetune -> finetune-scratch -> baseline -> export -> card

(tokenizer-compare trains the [tokenizer] candidates the card's tokenizer table sets beside the shipped one.)

A stage is skipped when its outputs exist and its stamp (WORKDIR/.stamps/STAGE.json) records the same
fingerprint: a hash of the stage's settings and of its inputs (data files by name, size and content
hash, earlier stages by their own fingerprints), so changing a setting re-runs that stage and everything
after it that reads it. (The scratch ablation reads the architecture, not the pretraining run: a longer
pretraining schedule leaves it done.)
A stage interrupted half-way is simply run again: pretraining and fine-tuning resume from their
checkpoints, the other stages are short and write their outputs atomically.

A stage is locked (WORKDIR/.stamps/STAGE.lock) while it runs, so two recipe processes can share a work
folder: on a machine with cores the pretraining does not use, the stages that do not need the pretrained
model (the scratch ablation, the baseline) can run beside it, and the full recipe waits for them or skips
them. (Where pretraining already keeps every core busy, as `--threads 2` on 2 cores does, this gains
nothing: a fine-tuning side job at idle priority ran 34-44 s a step, over 100x slower than alone.)

    pocketbert recipe R.toml --only finetune-scratch baseline --threads 2

`--dry-run` prints the plan (stage, state, estimated time) and runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import BertConfig
from model.plans import cpu_has_native_bf16
from training.card import INDOMAIN_VALUES, MEASURE_VERSION, build_card, check_targets, render_from_bundle
from training.errors import CLIError
from training.tokenizer_stats import candidate_dir

ROOT = Path(__file__).resolve().parents[1]  # the checkout: bench/ scripts are run from here
STAMPS = ".stamps"

# Rough CPU throughputs (real tokens/s per thread) of the default 3-layer/256 model, measured on a 2-core
# AVX2 machine; the dry run scales them by --threads. Only for the plan's time estimates. Measured with
# --threads 2: pretraining 4,400-4,800 tokens/s (English, 128-token pairs); fine-tuning on SST-2's short
# sentences ~4,300 tokens/s (8.5 steps/s of 32 sentences: per-step costs weigh more than on NSMC, where
# one thread gave ~2,800).
PRETRAIN_TOKENS_PER_S_PER_THREAD = 2_300
# Pretraining in bf16 autocast on a CPU that computes bf16 natively: 2.0x the tokens/s of fp32
# (`bench/train_step.py --variants --threads 2` on 2 AVX512-BF16 cores: 19,248 against 9,512).
BF16_PRETRAIN_SPEEDUP = 2.0
FINETUNE_TOKENS_PER_S_PER_THREAD = 2_150
TOKENIZER_S_PER_LINE = 3e-4  # SentencePiece on a sample of N lines: the Korean 2M-line one took ~10 minutes


# --------------------------------------------------------------------------------------------------
# the recipe file
# --------------------------------------------------------------------------------------------------
def load_recipe(path: str | Path) -> dict[str, Any]:
    """Parse the TOML file; paths inside it are relative to the directory the command runs in."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{path}: no such recipe file")
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"{path}: not valid TOML ({exc})") from exc
    for key in (
        "name",
        "workdir",
        "bundle",
        "corpus",
        "task",
        "tokenizer",
        "prepare",
        "pretrain",
        "finetune",
    ):
        if key not in recipe:
            raise CLIError(
                f"{path}: missing [{key}]"
                if key not in ("name", "workdir", "bundle")
                else f"{path}: missing the top-level key '{key}'"
            )
    _check_task(path, recipe["task"])
    _check_tokenizer(path, recipe["tokenizer"])
    check_targets(str(path), recipe.get("card", {}).get("targets", {}))
    recipe["_path"] = str(path)
    return recipe


def _check_task(path: Path, task: Any) -> None:
    """[task] names its data; each of its extra_tests names a set to score the bundle on."""
    if not isinstance(task, dict):
        raise CLIError(f"{path}: [task] must be a table")
    for key in ("name", "train", "test"):
        if key not in task:
            raise CLIError(f"{path}: [task] misses '{key}'")
    for number, extra in enumerate(task.get("extra_tests", []), start=1):
        missing = [key for key in ("name", "task", "path") if not isinstance(extra, dict) or key not in extra]
        if missing:
            names = ", ".join(map(repr, missing))
            raise CLIError(f"{path}: [task] extra_tests entry {number} misses {names}")


EXTRA_TEXTS = ("none", "task", "indomain")  # what a tokenizer learns from besides the corpus


def _check_tokenizer(path: Path, tok: dict[str, Any]) -> None:
    """[tokenizer]'s extra_text is one of EXTRA_TEXTS; each of its candidates has a name of its own."""
    names: set[str] = set()
    for where, settings in [("[tokenizer]", tok)] + [
        (f"[tokenizer] candidates entry {n}", c) for n, c in enumerate(tok.get("candidates", []), start=1)
    ]:
        if not isinstance(settings, dict):
            raise CLIError(f"{path}: {where} must be a table")
        if settings.get("extra_text", "none") not in EXTRA_TEXTS:
            raise CLIError(
                f"{path}: {where} has extra_text {settings['extra_text']!r}; expected one of {EXTRA_TEXTS}"
            )
        if where != "[tokenizer]":
            if not isinstance(settings.get("name"), str) or settings["name"] in names | {"shipped"}:
                raise CLIError(f"{path}: {where} needs a name of its own (not 'shipped', not repeated)")
            names.add(settings["name"])


def file_identity(path: str | Path) -> dict[str, Any]:
    """What a data file's fingerprint depends on: its name, size and content (sha256).

    Not its folder or modification time: a fresh copy of the same corpus (another machine, a new
    download, a re-provisioned data share) is the same input and must not re-run days of training.
    Hashing costs about a second per few hundred MB, once per file per recipe command.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CLIError(f"{path}: no such file (named by the recipe)")
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "sha256": _sha256(path.resolve(), stat.st_mtime_ns)}


@functools.cache
def _sha256(path: Path, mtime_ns: int) -> str:
    """The file's hash; mtime_ns only keys the cache, so a file rewritten in this process is hashed again."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One step of the recipe: what it depends on, what it writes, how to run it and roughly how long."""

    name: str
    inputs: dict[str, Any]  # settings + input identities; hashed into the fingerprint
    outputs: list[Path]
    run: Callable[[], None]
    estimate_s: float = 0.0
    after: list[str] = field(default_factory=list)  # earlier stages whose fingerprints feed this one
    complete: Callable[[], bool] | None = None  # extra "is it finished" test (e.g. pretraining's step)
    # Without a stamp (outputs made by hand, or by an earlier version): do the outputs match the settings?
    adopt: Callable[[], bool] | None = None
    fingerprint: str = ""


class Runner:
    """Builds the stages of a recipe and runs them in order, skipping the ones already done."""

    def __init__(self, recipe: dict[str, Any], workdir: Path, threads: int, study: bool = False) -> None:
        self.recipe = recipe
        self.work = workdir
        self.threads = threads
        self.study = study
        self.stamps = workdir / STAMPS
        self.lock_poll_s = 5.0  # how often a stage another process holds is checked again
        self.stages: list[Stage] = []
        self._build()

    # --- helpers ----------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def command(self, *argv: str) -> None:
        """Run one `pocketbert` command in this process, echoing it and logging it to commands.log."""
        from training.cli import main

        line = "pocketbert " + " ".join(shlex.quote(str(a)) for a in argv)
        print(f"\n$ {line}", flush=True)
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.path("commands.log"), "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")
        code = main([str(a) for a in argv])
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            raise CLIError(
                f"stopped by a signal (exit code {code}); its progress is saved: run the recipe again "
                f"to continue: {line}"
            )
        if code != 0:
            raise CLIError(f"stage command failed with exit code {code}: {line}")

    def script(self, *argv: str) -> None:
        """Run a script of the checkout (bench/...) with this interpreter, echoed and logged the same way."""
        line = " ".join(shlex.quote(str(a)) for a in argv)
        print(f"\n$ python {line}", flush=True)
        with open(self.path("commands.log"), "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  python {line}\n")
        subprocess.run([sys.executable, *map(str, argv)], cwd=Path.cwd(), check=True)

    def add(self, stage: Stage) -> None:
        upstream = {name: self._stage(name).fingerprint for name in stage.after}
        stage.fingerprint = fingerprint({"stage": stage.name, "inputs": stage.inputs, "after": upstream})
        self.stages.append(stage)

    def _stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def stamp_path(self, stage: Stage) -> Path:
        return self.stamps / f"{stage.name}.json"

    def is_done(self, stage: Stage) -> bool:
        """Outputs present, finished, and either stamped with this fingerprint or verified to match."""
        if not all(p.exists() for p in stage.outputs):
            return False
        if stage.complete is not None and not stage.complete():
            return False
        stamp = self.stamp_path(stage)
        if stamp.is_file():
            return json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") == stage.fingerprint
        return stage.adopt is not None and stage.adopt()

    def mark_done(self, stage: Stage, seconds: float) -> None:
        self.stamps.mkdir(parents=True, exist_ok=True)
        self.stamp_path(stage).write_text(
            json.dumps(
                {
                    "stage": stage.name,
                    "fingerprint": stage.fingerprint,
                    "inputs": stage.inputs,
                    "seconds": round(seconds, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=2,
                default=str,
            )
            + "\n",
            encoding="utf-8",
        )

    # --- the stages -------------------------------------------------------------------------------
    def _build(self) -> None:
        r, task = self.recipe, self.recipe["task"]
        corpus = [str(Path(p).expanduser()) for p in r["corpus"]["files"]]
        prep, indomain, tok = r["prepare"], r.get("indomain", {}), r["tokenizer"]
        self.tokenizer_dir = self.path("tokenizer")
        self.data_dir, self.indomain_dir = self.path("data"), self.path("indomain-data")
        indomain_text = self.path("task", "indomain.txt")
        # what fine-tuning, the baseline and the card read: an edited task file re-runs them
        tests = [task["test"], *(extra["path"] for extra in task.get("extra_tests", []))]
        self.task_files = [file_identity(path) for path in [task["train"], *tests]]

        # 1. in-domain text, one document a line: [indomain] files (e.g. IMDB reviews), or by default
        #    the task's training texts minus the dev rows fine-tuning scores on
        indomain_files = [str(Path(f).expanduser()) for f in indomain.get("files", [])]
        sources = [file_identity(f) for f in indomain_files] or [file_identity(task["train"])]
        # from [indomain] files the text owes nothing to the task: a new dev split or test file must not
        # re-run the tokenizer and pretraining that read it
        reads_task = {} if indomain_files else {"task": task}
        self.add(
            Stage(
                "indomain-text",
                {**reads_task, "indomain": indomain, "sources": sources},
                [indomain_text],
                lambda: print(
                    f"wrote {write_text_lines(indomain_text, indomain_texts(task, indomain))} texts "
                    f"to {indomain_text}"
                ),
                estimate_s=30,
                adopt=lambda: indomain_text.read_bytes() == "".join(indomain_texts(task, indomain)).encode(),
            )
        )

        # 2. tokenizer: the corpus, plus the task's training texts or the in-domain text
        task_text_all = self.path("task", "train_text_all.txt")

        def train_tokenizer(changes: dict[str, Any], out: Path) -> None:
            """`pocketbert tokenizer train` with the [tokenizer] settings, `changes` applied: on the corpus
            plus the extra_text ("task", "indomain", or "none")."""
            setting = {**tok, **changes}.get
            extra = setting("extra_text")
            if extra == "task":
                write_text_lines(task_text_all, task_texts(task, dev_fraction=None))
            extra_files = {"task": [str(task_text_all)], "indomain": [str(indomain_text)]}.get(extra, [])
            self.command(
                "tokenizer",
                "train",
                *flags(
                    input=corpus + extra_files,
                    vocab_size=setting("vocab_size"),
                    model_type=setting("model_type", "unigram"),
                    input_sentence_size=setting("input_sentence_size", 2_000_000),
                    seed=setting("seed", 0),
                    out=out,
                ),
            )

        def run_tokenizer() -> None:
            train_tokenizer({}, self.tokenizer_dir)
            check_sha256(self.tokenizer_dir / "tokenizer.model", tok.get("sha256"))

        def reads_indomain(changes: dict[str, Any]) -> list[str]:
            return ["indomain-text"] if {**tok, **changes}.get("extra_text") == "indomain" else []

        tokenizer_inputs = {"corpus": [file_identity(p) for p in corpus], "sources": sources}
        candidates = tok.get("candidates", [])
        self.add(
            Stage(
                "tokenizer",
                {"settings": {k: v for k, v in tok.items() if k != "candidates"}, **tokenizer_inputs},
                [self.tokenizer_dir / "tokenizer.model"],
                run_tokenizer,
                estimate_s=600,
                after=reads_indomain({}),
                adopt=lambda: (
                    bool(tok.get("sha256"))
                    and sha256_of(self.tokenizer_dir / "tokenizer.model") == tok["sha256"]
                ),
            )
        )

        # the model card's tokenizer table: other tokenizers the shipped one is compared with, each
        # trained by the same command with a few settings changed (e.g. no extra text, BPE, a smaller sample)
        if candidates:

            def run_candidates() -> None:
                for candidate in candidates:
                    changes = {k: v for k, v in candidate.items() if k != "name"}
                    train_tokenizer(changes, candidate_dir(self.work, candidate["name"]))

            self.add(
                Stage(
                    "tokenizer-compare",
                    {"tokenizer": tok, **tokenizer_inputs},
                    [candidate_dir(self.work, c["name"]) / "tokenizer.model" for c in candidates],
                    run_candidates,
                    estimate_s=TOKENIZER_S_PER_LINE
                    * sum({**tok, **c}.get("input_sentence_size", 2_000_000) for c in candidates),
                    after=sorted({name for c in candidates for name in reads_indomain(c)}),
                )
            )

        # 3-4. pretraining pairs from the corpus, and from the in-domain text
        self._add_prepare(
            "prepare",
            corpus,
            r["corpus"].get("format", "lines"),
            prep.get("dupe_factor", 1),
            self.data_dir,
            {"corpus": [file_identity(p) for p in corpus]},
            after=["tokenizer"],
        )
        self._add_prepare(
            "prepare-indomain",
            [str(indomain_text)],
            indomain.get("format", "docs"),
            indomain.get("dupe_factor", 5),
            self.indomain_dir,
            {"indomain": indomain},
            after=["tokenizer", "indomain-text"],
        )

        # 5. pretraining, in phases; 6. continued pretraining on corpus + in-domain text (optional)
        self._add_pretrain()
        if "adapt" in r:
            self._add_adapt()
        # the recipe study (only with --study): arms continued from one step, each probed on the task
        if self.study and "study" in r:
            self._add_study()
        # 7-8. fine-tuning over seeds, and the same recipe from random weights (the ablation)
        self._add_finetune()
        # 9. the TF-IDF line on the same split
        baseline_json = self.path("baseline.json")
        self.add(
            Stage(
                "baseline",
                {"task": task, "task_files": self.task_files},
                [baseline_json],
                lambda: self.script(
                    ROOT / "bench" / "baseline.py",
                    *flags(
                        task=task["name"],
                        train=task["train"],
                        dev_fraction=task["dev_fraction"],
                        dev_unit=task.get("dev_unit"),
                        test=task["test"],
                        out=baseline_json,
                    ),
                ),
                estimate_s=900,
                adopt=lambda: (
                    json.loads(baseline_json.read_text(encoding="utf-8")).get("task") == task["name"]
                ),
            )
        )
        # 10. export; 11. the card, beside the bundle in its home
        self._add_export()
        self._add_card()

    def _add_prepare(
        self,
        name: str,
        inputs: list[str],
        input_format: str,
        dupe_factor: int,
        out: Path,
        identity: dict[str, Any],
        after: list[str],
    ) -> None:
        prep = self.recipe["prepare"]
        self.add(
            Stage(
                name,
                {"settings": prep, "format": input_format, "dupe_factor": dupe_factor, **identity},
                [out / "index.json"],
                lambda: self.command(
                    "prepare",
                    *flags(
                        input=inputs,
                        format=input_format,
                        out=out,
                        dupe_factor=dupe_factor,
                        tokenizer=self.tokenizer_dir,
                        max_length=prep["max_length"],
                        valid_fraction=prep.get("valid_fraction", 0.01),
                        seed=prep.get("seed", 0),
                    ),
                ),
                estimate_s=60,
                after=after,
                adopt=lambda: prepared_matches(
                    out, inputs, dupe_factor, prep, self.tokenizer_dir, input_format
                ),
            )
        )

    def _pretrain_flags(self, section: dict[str, Any], **overrides: Any) -> list[str]:
        """`pocketbert pretrain` options from a [pretrain] / [adapt] / [study] section."""
        names = (
            "batch_size",
            "grad_accum",
            "lr",
            "warmup",
            "weight_decay",
            "clip",
            "seed",
            "mlm_probability",
            "precision",
            "dropout",
            "whole_word_mask",
            "eval_every",
            "eval_batches",
            "save_every",
            "log_every",
        )
        options = {name: section[name] for name in names if name in section}
        options.setdefault("save_every", 50)
        return flags(threads=self.threads, **{**options, **overrides})

    def _add_pretrain(self) -> None:
        pre = self.recipe["pretrain"]
        out, config_path = self.path("pretrain"), self.path("pretrain-config.json")
        phases = pre.get("phases") or [{"steps": pre["steps"]}]
        final_step = phases[-1].get("stop_at", phases[-1]["steps"])
        tokens_per_step = pre["batch_size"] * pre.get("grad_accum", 1) * self.recipe["prepare"]["max_length"]
        data = [self.data_dir, *([self.indomain_dir] if pre.get("with_indomain") else [])]

        def run_pretrain() -> None:
            self.model_config().to_json(config_path)
            adopt_head_start(pre.get("head_start"), out, self.tokenizer_dir / "tokenizer.model")
            for phase in phases:  # each a --resume of the same run, with its own schedule
                end = phase.get("stop_at", phase["steps"])
                if checkpoint_step(out) < end:
                    self.command(
                        "pretrain",
                        *flags(data=data, out=out, config=config_path, resume=True),
                        *self._pretrain_flags(pre, steps=phase["steps"], stop_at=phase.get("stop_at")),
                    )
                keep_phase_snapshot(out, end)

        self.add(
            Stage(
                "pretrain",
                {"settings": pre},
                [out / "model.pt"],
                run_pretrain,
                estimate_s=final_step * tokens_per_step / self._pretrain_rate(pre),
                after=["prepare", "prepare-indomain"] if pre.get("with_indomain") else ["prepare"],
                complete=lambda: checkpoint_step(out) >= final_step,
                adopt=lambda: True,  # a run that reached its final step (its phases ran as --resume)
            )
        )
        self._pretrain_seconds_left = lambda: (
            max(0, final_step - (checkpoint_step(out) or head_start_step(pre.get("head_start"))))
            * tokens_per_step
            / self._pretrain_rate(pre)
        )

    def _pretrain_rate(self, section: dict[str, Any]) -> float:
        """The tokens/s a pretraining stage's estimate assumes: the AVX2 figure, doubled where the section's
        precision runs bf16 natively on this CPU."""
        rate = PRETRAIN_TOKENS_PER_S_PER_THREAD * self.threads
        if section.get("precision") in ("auto", "bf16") and cpu_has_native_bf16():
            rate *= BF16_PRETRAIN_SPEEDUP
        return rate

    def model_config(self) -> BertConfig:
        """The architecture every model of the recipe has: the pretrained one and the scratch ablation."""
        vocab_size = self.recipe["tokenizer"]["vocab_size"]
        return BertConfig(vocab_size=vocab_size, **self.recipe["pretrain"].get("config", {}))

    def continued_data(self, indomain: bool | str, where: str) -> list[Path]:
        """The data folders a continued pretraining reads, by its `indomain` setting: false the corpus,
        true the corpus and the in-domain text, "only" the in-domain text alone (task-adaptive
        pretraining, Gururangan et al. 2020; its validation figures are then on held-out in-domain text)."""
        # the type check first: 1 and 0 would find the keys True and False
        if not isinstance(indomain, bool | str) or indomain not in INDOMAIN_VALUES:
            raise CLIError(f'{where} has indomain {indomain!r}; it must be true, false or "only"')
        folders = {"corpus": self.data_dir, "indomain": self.indomain_dir}
        return [folders[name] for name in INDOMAIN_VALUES[indomain][0]]

    def _add_adapt(self) -> None:
        adapt = self.recipe["adapt"]
        out = self.path("adapt")
        data = self.continued_data(adapt.get("indomain", True), "[adapt]")
        tokens = (
            adapt["steps"] * adapt["batch_size"] * adapt.get("grad_accum", 1) * 80
        )  # short reviews mixed in
        self.add(
            Stage(
                "adapt",
                {"settings": adapt},
                [out / "model.pt"],
                lambda: self.command(
                    "pretrain",
                    *flags(
                        data=data,
                        out=out,
                        init=self.path("pretrain", "model.pt"),
                        resume=True,
                    ),
                    *self._pretrain_flags(adapt, steps=adapt["steps"]),
                ),
                estimate_s=tokens / self._pretrain_rate(adapt),
                after=["pretrain", "prepare-indomain"],
                complete=lambda: checkpoint_step(out) >= adapt["steps"],
            )
        )

    def _add_study(self) -> None:
        """Arms that continue the pretraining run from `init_step` for the same number of tokens, each with
        one setting changed, then a short fine-tuning probe of each (and of the start and of scratch)."""
        st, task = self.recipe["study"], self.recipe["task"]
        init = self.path("pretrain", f"step-{st['init_step']}.pt")
        folder, probe = self.path("study"), st["probe"]
        start = st.get("init_name", "start")  # the probe of the arms' common starting point
        arm_data = {
            a["name"]: self.continued_data(a.get("indomain", False), f"[study.arm] {a['name']}")
            for a in st["arm"]
        }

        def run_probe(name: str, weights: str | Path, lr: float | str | None = None) -> None:
            if not (folder / f"probe-{name}" / "results.json").is_file():
                self.command(
                    "finetune",
                    *flags(
                        task=task["name"],
                        train=task["train"],
                        dev_fraction=task["dev_fraction"],
                        dev_unit=task.get("dev_unit"),
                        limit_train=probe["limit_train"],
                        init=weights,
                        tokenizer=self.tokenizer_dir,
                        out=folder / f"probe-{name}",
                        seeds=_seeds(probe["seeds"]),
                        epochs=probe["epochs"],
                        lr=lr or probe["lr"],
                        batch_size=probe.get("batch_size", 32),
                        max_length=probe["max_length"],
                        dropout=probe.get("dropout", 0.1),
                        threads=self.threads,
                    ),
                )

        def run_study() -> None:
            recover_phase_snapshot(init.parent, st["init_step"], self.recipe["pretrain"].get("head_start"))
            run_probe(start, init)
            for arm in st["arm"]:
                steps = arm.get("steps", st["steps"])
                data = arm_data[arm["name"]]
                if checkpoint_step(folder / arm["name"]) < steps:
                    self.command(
                        "pretrain",
                        *flags(data=data, out=folder / arm["name"], init=init, resume=True),
                        *self._pretrain_flags(
                            {**st, **arm.get("options", {})}, steps=steps, warmup=steps // 10, log_every=10
                        ),
                    )
                run_probe(arm["name"], folder / arm["name"] / "model.pt")
            run_probe("scratch", "scratch")
            for lr in st.get("lr_probes", []):  # the fine-tuning learning rate, chosen on the dev split
                run_probe(f"{start}-lr{lr}", init, lr=lr)
            write_study_table(st, folder, self.path("study.json"))

        # what is left of it: the arms' remaining steps and the probes without results
        arm_steps = sum(
            max(0, arm.get("steps", st["steps"]) - checkpoint_step(folder / arm["name"])) for arm in st["arm"]
        )
        tokens = arm_steps * st["batch_size"] * st.get("grad_accum", 1) * self.recipe["prepare"]["max_length"]
        probes = [start, *(arm["name"] for arm in st["arm"]), "scratch"]
        probes += [f"{start}-lr{lr}" for lr in st.get("lr_probes", [])]
        probes_left = sum(not (folder / f"probe-{name}" / "results.json").is_file() for name in probes)
        self.add(
            Stage(
                "study",
                {"settings": st},
                [self.path("study.json")],
                run_study,
                estimate_s=tokens / self._pretrain_rate(st) + 600 * probes_left,
                after=["pretrain", "prepare-indomain"],
            )
        )

    def _add_finetune(self) -> None:
        ft, task = self.recipe["finetune"], self.recipe["task"]
        source = "adapt" if "adapt" in self.recipe else "pretrain"
        init = self.path(source, "model.pt")
        files = self.task_files
        per_seed = ft["epochs"] * ft.get("train_examples", 150_000) * ft.get("mean_tokens", 24)
        estimate = per_seed / (FINETUNE_TOKENS_PER_S_PER_THREAD * self.threads)
        out, scratch = self.path("finetune"), self.path("finetune-scratch")
        seeds, scratch_seeds = ft["seeds"], ft.get("scratch_seeds", ft["seeds"])
        scratch_lr = ft.get("scratch_lr", ft["lr"])
        self.add(
            Stage(
                "finetune",
                {"settings": _without(ft, "scratch_seeds", "scratch_lr"), "task": task, "task_files": files},
                [out / "results.json", out / "model.pt"],
                lambda: self.command(
                    "finetune",
                    *self._finetune_flags(ft["lr"]),
                    *flags(init=init, seeds=_seeds(seeds), out=out),
                ),
                estimate_s=estimate * len(seeds),
                after=[source],
                adopt=lambda: finetune_matches(out / "results.json", ft, seeds, ft["lr"], init, task),
            )
        )
        scratch_config = self.path("scratch-config.json")

        def run_scratch() -> None:
            self.model_config().to_json(scratch_config)
            self.command(
                "finetune",
                *self._finetune_flags(scratch_lr),
                *flags(
                    init="scratch",
                    config=scratch_config,
                    tokenizer=self.tokenizer_dir,
                    seeds=_seeds(scratch_seeds),
                    out=scratch,
                ),
            )

        self.add(
            Stage(
                "finetune-scratch",
                # the pretrained model's seeds are not the ablation's (unless it has none of its own);
                # it shares pretraining's architecture, not its run: a longer pretraining leaves it done
                {
                    "settings": _without(ft, "seeds") if "scratch_seeds" in ft else ft,
                    "config": self.model_config().to_dict(),
                    "task": task,
                    "task_files": files,
                },
                [scratch / "results.json"],
                run_scratch,
                estimate_s=estimate * len(scratch_seeds),
                after=["tokenizer"],
                adopt=lambda: finetune_matches(
                    scratch / "results.json", ft, scratch_seeds, scratch_lr, "scratch", task
                ),
            )
        )

    def _finetune_flags(self, lr: float) -> list[str]:
        """The `pocketbert finetune` options of [task] and [finetune] (lr apart: the ablation may differ)."""
        ft, task = self.recipe["finetune"], self.recipe["task"]
        return flags(
            task=task["name"],
            train=task["train"],
            dev_fraction=task["dev_fraction"],
            dev_unit=task.get("dev_unit"),
            test=task["test"],
            epochs=ft["epochs"],
            lr=lr,
            batch_size=ft.get("batch_size", 32),
            max_length=ft["max_length"],
            dropout=ft.get("dropout", 0.1),
            warmup_ratio=ft.get("warmup_ratio", 0.1),
            threads=self.threads,
        )

    def _add_export(self) -> None:
        ex, task = self.recipe.get("export", {}), self.recipe["task"]
        bundle = self.path(self.recipe["name"])  # the bundle is named after its folder
        source = ex.get("pretrained_from", "pretrain")
        eval_text = self.path("eval-sentences.txt")

        def run_export() -> None:
            write_eval_sentences(self.data_dir, self.tokenizer_dir, eval_text, ex.get("eval_sentences", 1000))
            self.command(
                "export",
                *flags(
                    pretrained=self.path(source, "model.pt"),
                    classifier=self.path("finetune", "model.pt"),
                    tokenizer=self.tokenizer_dir,
                    out=bundle,
                    overwrite=True,
                    threads=self.threads,
                    optimize=ex.get("optimize", True),
                    quantize=ex.get("quantize", "int8") or None,
                    eval_text=eval_text,
                    eval_dev=task["test"],
                    eval_task=task["name"],
                    eval_limit=ex.get("eval_limit", 50_000),
                ),
            )

        self.add(
            Stage(
                "export",
                {"settings": ex},
                [bundle / "bundle.json"],
                run_export,
                estimate_s=300,
                after=["finetune", source],
            )
        )

    def _add_card(self) -> None:
        target, card = Path(self.recipe["bundle"]), self.recipe.get("card", {})
        after = ["export", "finetune-scratch", "baseline"]
        after += ["tokenizer-compare"] if self.recipe["tokenizer"].get("candidates") else []

        def run_card() -> None:
            """The card's figures depend on the stages before it, the exported bundle, the study and the
            card's examples, not on its texts: under the same key they are reused and only the text is
            rendered again."""
            study, bundle = self.path("study.json"), self.path(self.recipe["name"], "bundle.json")
            key = fingerprint(
                {
                    "version": MEASURE_VERSION,
                    "after": {name: self._stage(name).fingerprint for name in after},
                    "bundle": file_identity(bundle),
                    "study": file_identity(study) if study.is_file() else None,
                    "examples": {name: card.get(name) for name in ("fill_mask", "attention_text")},
                }
            )
            build_card(self.recipe, self.work, target, threads=self.threads, key=key)

        self.add(
            Stage(
                "card",
                {"card": card, "target": str(target)},
                [target / "MODEL_CARD.md", target / "bundle.json"],
                run_card,
                estimate_s=240,
                after=after,
            )
        )

    # --- running ----------------------------------------------------------------------------------
    def plan(self) -> list[tuple[Stage, str]]:
        """Each stage with "done", "run" or "resume"; a stage after one that runs runs too."""
        states: dict[str, str] = {}
        for stage in self.stages:
            upstream_runs = any(states[name] != "done" for name in stage.after)
            if not upstream_runs and self.is_done(stage):
                states[stage.name] = "done"
            else:
                started = any(p.exists() for p in stage.outputs) or self.path(stage.name).exists()
                states[stage.name] = "resume" if started else "run"
        return [(stage, states[stage.name]) for stage in self.stages]

    def print_plan(self) -> None:
        total = 0.0
        print(
            f"recipe {self.recipe['name']} ({self.recipe['_path']}), work folder {self.work}, "
            f"{self.threads} thread(s)"
        )
        print(f"{'stage':<18} {'state':<8} {'estimate':>10}")
        for stage, state in self.plan():
            estimate = 0.0 if state == "done" else stage.estimate_s
            if stage.name == "pretrain" and state != "done":
                estimate = self._pretrain_seconds_left()
            total += estimate
            print(f"{stage.name:<18} {state:<8} {_duration(estimate):>10}")
        rough = "rough: CPU figures of a 2-core AVX2 machine; bf16 pretraining at 2x where this CPU has it"
        print(f"{'total':<18} {'':<8} {_duration(total):>10}  ({rough})")

    def run(self, only: list[str] | None = None) -> None:
        planned = self.plan()
        run_started = time.time()
        for number, (stage, state) in enumerate(planned, start=1):
            if only and stage.name not in only:
                continue
            header = f"[{number}/{len(planned)}] {stage.name}"
            if state == "done" and not only:
                if not self.stamp_path(stage).is_file():
                    self.mark_done(stage, 0.0)  # verified outputs made outside the recipe: adopted
                print(f"{header}: done (outputs match the recipe), skipped")
                continue
            with self.stage_lock(stage):
                # e.g. `recipe --only finetune-scratch baseline` run alongside, at idle priority, while
                # this process pretrained: the same stage with the same fingerprint, finished meanwhile
                if not only and self.stamped_since(stage, run_started):
                    print(f"{header}: done meanwhile by another recipe process, skipped")
                    continue
                print(f"\n{header}: {state}", flush=True)
                started = time.perf_counter()
                stage.run()
                if stage.complete is not None and not stage.complete():  # e.g. a run that stopped early
                    raise CLIError(
                        f"{stage.name}: its command returned before the stage was complete; not stamped"
                    )
                self.mark_done(stage, time.perf_counter() - started)
        if only:  # the other stages were not looked at: the bundle may not be made yet
            print(f"\nrecipe {self.recipe['name']}: {', '.join(only)} done")
        else:
            print(f"\nrecipe {self.recipe['name']}: every stage done; bundle at {self.recipe['bundle']}")

    def stamped_since(self, stage: Stage, since: float) -> bool:
        """Done, by a stamp written after `since` (so by another process: this one has not run it)."""
        stamp = self.stamp_path(stage)
        return stamp.is_file() and stamp.stat().st_mtime >= since and self.is_done(stage)

    @contextlib.contextmanager
    def stage_lock(self, stage: Stage) -> Iterator[None]:
        """Hold WORKDIR/.stamps/STAGE.lock while the stage runs, so two recipe processes on one work
        folder never write the same outputs at once: the second waits for the first. A lock left by a
        process that no longer exists (killed) is taken over."""
        self.stamps.mkdir(parents=True, exist_ok=True)
        lock = self.stamps / f"{stage.name}.lock"
        mine = lock.with_name(f"{lock.name}.{os.getpid()}")
        mine.write_text(f"{os.getpid()}\n", encoding="utf-8")
        waiting = False
        try:
            while True:
                try:
                    os.link(mine, lock)  # atomic, and fails when the lock exists: never half-written
                    break
                except FileExistsError:
                    try:
                        holder = _lock_holder(lock)
                    except FileNotFoundError:  # released meanwhile: try again, never removing a new lock
                        continue
                    if holder is None:  # its process is gone (killed): a stale lock
                        lock.unlink(missing_ok=True)
                        continue
                    if not waiting:
                        print(f"{stage.name}: process {holder} runs it in {self.work}; waiting", flush=True)
                        waiting = True
                    time.sleep(self.lock_poll_s)
        finally:
            mine.unlink(missing_ok=True)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# stage helpers
# --------------------------------------------------------------------------------------------------
def _lock_holder(lock: Path) -> int | None:
    """The process id written in a stage lock, if that process is still running; else None (stale)."""
    try:
        pid = int(lock.read_text(encoding="utf-8").split()[0])
    except FileNotFoundError:  # released meanwhile: the caller tries to take it again
        raise
    except (OSError, ValueError, IndexError):  # not a lock this code wrote: left as it is, reported
        raise CLIError(f"{lock}: unreadable stage lock; remove it if no recipe is running") from None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return None
    except PermissionError:  # it exists, under another user
        pass
    return pid


def flags(**options: Any) -> list[str]:
    """Command-line options from keywords: dropout=0.1 -> --dropout 0.1; a list gives several values;
    True gives the bare flag; None and False give nothing."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _without(settings: dict[str, Any], *keys: str) -> dict[str, Any]:
    """A stage's settings less the keys that belong to another stage (they must not invalidate it)."""
    return {k: v for k, v in settings.items() if k not in keys}


def _seeds(seeds: list[int]) -> str:
    return ",".join(str(s) for s in seeds)


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{max(1, rest // 60)}m"


def checkpoint_step(run_dir: Path) -> int:
    """The step a run folder's training state has reached (0 without one), read cheaply from model.pt."""
    from model.checkpoint import read_weights

    for name in ("model.pt",):
        path = run_dir / name
        if path.is_file():
            try:
                return int(read_weights(path).metadata.get("step", 0))
            except (ValueError, FileNotFoundError):
                return 0
    return 0


def keep_phase_snapshot(run_dir: Path, step: int) -> None:
    """Keep the weights at the end of a pretraining phase (the study's arms start from them)."""
    snapshot = run_dir / f"step-{step}.pt"
    if not snapshot.is_file() and (run_dir / "checkpoint.pt").is_file() and checkpoint_step(run_dir) == step:
        from model.checkpoint import load_model, save_model

        model, metadata = load_model(run_dir / "checkpoint.pt")
        save_model(snapshot, model, metadata)


def recover_phase_snapshot(run_dir: Path, step: int, head_start: str | None) -> None:
    """Make run_dir/step-STEP.pt from the head start when the run has moved past that step without one
    (a run that adopted its head start before snapshots were kept): the head start stopped at the step
    whose weights the study's arms start from. Anything else is an error naming what is missing."""
    snapshot = run_dir / f"step-{step}.pt"
    keep_phase_snapshot(run_dir, step)  # the run itself is at that step
    source = Path(head_start).expanduser() / "checkpoint.pt" if head_start else None
    if not snapshot.is_file() and source is not None and source.is_file():
        from model.checkpoint import load_model, save_model
        from training.checkpointing import load_training_state

        if load_training_state(source).get("step") == step:
            model, metadata = load_model(source)
            save_model(snapshot, model, {**metadata, "step": step})
            print(f"recovered {snapshot} from the head start {source}")
    if not snapshot.is_file():
        raise CLIError(
            f"{snapshot}: the study starts from the pretraining run's weights at step {step}, and neither "
            f"the run (now at step {checkpoint_step(run_dir)}) nor a head start at that step holds them"
        )


def write_study_table(study: dict[str, Any], folder: Path, out: Path) -> None:
    """study.json: per arm its final validation MLM / NSP accuracy and its probe's dev accuracy."""
    rows = []
    start = study.get("init_name", "start")
    names = [start, *[arm["name"] for arm in study["arm"]], "scratch"]
    for name in names:
        arm = next((a for a in study["arm"] if a["name"] == name), None)
        row: dict[str, Any] = {
            "arm": name,
            "description": arm.get("description", "")
            if arm
            else (
                "the starting point, no further pretraining"
                if name != "scratch"
                else "random weights, no pretraining"
            ),
        }
        metrics = folder / name / "metrics.jsonl"
        if metrics.is_file():
            valid = [
                json.loads(line)
                for line in metrics.read_text(encoding="utf-8").splitlines()
                if line.strip() and '"valid"' in line
            ]
            if valid:
                row.update(step=valid[-1]["step"], mlm_acc=valid[-1]["mlm_acc"], nsp_acc=valid[-1]["nsp_acc"])
        results = folder / f"probe-{name}" / "results.json"
        if results.is_file():
            row["probe_dev_acc"] = json.loads(results.read_text(encoding="utf-8"))["dev_acc_mean"]
        rows.append(row)
    lr_rows = []
    for lr in study.get("lr_probes", []):
        results = folder / f"probe-{start}-lr{lr}" / "results.json"
        if results.is_file():
            lr_rows.append(
                {"lr": lr, "probe_dev_acc": json.loads(results.read_text(encoding="utf-8"))["dev_acc_mean"]}
            )
    base = folder / f"probe-{start}" / "results.json"
    if base.is_file():
        lr_rows.append(
            {"lr": study["probe"]["lr"], "probe_dev_acc": json.loads(base.read_text())["dev_acc_mean"]}
        )
    out.write_text(
        json.dumps(
            {
                "settings": {k: v for k, v in study.items() if k != "arm"},
                "arms": rows,
                "finetune_lr": lr_rows,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )


def finetune_matches(
    results_path: Path,
    ft: dict[str, Any],
    seeds: list[int],
    lr: float,
    init: str | Path,
    task: dict[str, Any],
) -> bool:
    """Did this results.json come from these seeds, this init and these settings?"""
    from training.finetune import SETTING_DEFAULTS
    from training.tasks import DEFAULT_DEV_UNIT

    if not results_path.is_file():
        return False
    results = json.loads(results_path.read_text(encoding="utf-8"))
    hp = {**SETTING_DEFAULTS, **results.get("hyperparameters", {})}  # older runs did not record some
    wanted = {
        "epochs": ft["epochs"],
        "lr": lr,
        "batch_size": ft.get("batch_size", 32),
        "max_length": ft["max_length"],
        "dropout": ft.get("dropout", 0.1),
        "dev_unit": task.get("dev_unit", DEFAULT_DEV_UNIT),
    }
    return (
        [row["seed"] for row in results.get("seeds", [])] == list(seeds)
        and all(hp.get(key) == value for key, value in wanted.items())
        and (str(init) == "scratch") == (results.get("init") == "scratch")
    )


def sha256_of(path: Path) -> str | None:
    from model.tokenizer import file_sha256

    return file_sha256(path) if path.is_file() else None


def _same_file(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if not (a.is_file() and b.is_file()):
        return False
    if a.resolve() == b.resolve():
        return True
    return a.stat().st_size == b.stat().st_size and sha256_of(a) == sha256_of(b)


def prepared_matches(
    data_dir: Path,
    inputs: list[str],
    dupe_factor: int,
    prep: dict[str, Any],
    tokenizer_dir: Path,
    input_format: str,
) -> bool:
    """Was this prepared folder made from these inputs, with these settings and this tokenizer?
    (index.json records all of it.)"""
    index_path = data_dir / "index.json"
    if not index_path.is_file():
        return False
    index = json.loads(index_path.read_text(encoding="utf-8"))
    args = index.get("args", {})
    wanted = {
        "max_length": prep["max_length"],
        "dupe_factor": dupe_factor,
        "input_format": input_format,
        "valid_fraction": prep.get("valid_fraction", 0.01),
        "seed": prep.get("seed", 0),
    }
    return (
        all(args.get(key) == value for key, value in wanted.items())
        and index.get("tokenizer_sha256") == sha256_of(tokenizer_dir / "tokenizer.model")
        and len(args.get("inputs", [])) == len(inputs)
        and all(_same_file(a, b) for a, b in zip(args["inputs"], inputs, strict=True))
    )


def check_sha256(path: Path, expected: str | None) -> None:
    from model.tokenizer import file_sha256

    if expected and file_sha256(path) != expected:
        print(
            f"warning: {path} has sha256 {file_sha256(path)}, the recipe recorded {expected}: the later "
            "stages will not reproduce the recipe's figures exactly"
        )


def head_start_step(head_start: str | None) -> int:
    """The step a head start stopped at (0 without one): where a run folder that adopts it begins."""
    source = Path(head_start).expanduser() / "checkpoint.pt" if head_start else None
    if source is None or not source.is_file():
        return 0
    from training.checkpointing import load_training_state

    return int(load_training_state(source).get("step", 0))


def adopt_head_start(head_start: str | None, out: Path, tokenizer: Path) -> None:
    """Copy a head start's training state into an empty run folder when it was made with this tokenizer.

    A head start is a run folder (checkpoint.pt, metrics.jsonl, tokenizer.model) of the same recipe,
    stopped part-way; the first phase of `pretrain` then resumes it instead of starting at step 0.
    """
    from model.tokenizer import file_sha256

    if not head_start or (out / "checkpoint.pt").is_file():
        return
    source = Path(head_start).expanduser()
    if not (source / "checkpoint.pt").is_file():
        print(f"note: head start {source} not found; pretraining starts at step 0")
        return
    if file_sha256(source / "tokenizer.model") != file_sha256(tokenizer):
        print(f"note: head start {source} used another tokenizer; pretraining starts at step 0")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.pt", "metrics.jsonl"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    print(f"adopted the head start {source} (its checkpoint.pt and metrics.jsonl)")


def task_texts(task: dict[str, Any], dev_fraction: float | None) -> list[str]:
    """The texts of the task's training file, one line each; with dev_fraction, the dev rows left out."""
    from training.tasks import DEFAULT_DEV_UNIT, read_task, split_dev

    data = read_task(
        task["name"], task["train"], None, task.get("text_column", "text"), task.get("label_column", "label")
    )
    if dev_fraction is not None:
        data, _ = split_dev(data, dev_fraction, unit=task.get("dev_unit", DEFAULT_DEV_UNIT))
    return [t.replace("\n", " ") + "\n" for t in data.texts]


_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def indomain_texts(task: dict[str, Any], indomain: dict[str, Any]) -> list[str]:
    """The in-domain pretraining text, one document per line: the [indomain] files (a text column of
    CSV/TSV files, e.g. IMDB reviews, with `<br />` tags turned into spaces when clean_html is set), or
    by default the task's training texts without the dev rows that fine-tuning scores on."""
    if not indomain.get("files"):
        return task_texts(task, task["dev_fraction"])
    lines = []
    for path in indomain["files"]:
        for text in read_text_column(Path(path).expanduser(), indomain.get("text_column", "text")):
            if indomain.get("clean_html"):
                text = _HTML_BREAK.sub(" ", text)
            lines.append(" ".join(text.split()) + "\n")
    return lines


def read_text_column(path: Path, column: str) -> list[str]:
    """One column of a CSV (RFC 4180) or TSV file (.gz too) with a header row; empty texts skipped."""
    import csv

    from training.textio import open_text

    tsv = ".tsv" in path.suffixes
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=quoting)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise CLIError(f"{path}:1: no column {column!r} in the header {reader.fieldnames}")
        return [row[column] for row in reader if (row.get(column) or "").strip()]


def write_text_lines(out: Path, lines: list[str]) -> int:
    """Write lines atomically; returns how many."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return len(lines)


def write_eval_sentences(data_dir: Path, tokenizer_dir: Path, out: Path, limit: int) -> None:
    """Held-out sentences for the INT8 fill-mask check: segment A of validation instances, decoded."""
    import numpy as np

    from model.tokenizer import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    ids = np.load(data_dir / "valid.input_ids.npy", mmap_mode="r")
    seg_a = np.load(data_dir / "valid.segment_a.npy", mmap_mode="r")
    sentences = []
    for row in range(min(len(ids), limit * 2)):
        text = tokenizer.decode([int(i) for i in ids[row, 1 : int(seg_a[row]) - 1]])
        if len(text) > 10:
            sentences.append(" ".join(text.split()))
        if len(sentences) >= limit:
            break
    out.write_text("\n".join(sentences) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    if args.card_text_only:
        print(f"wrote {render_from_bundle(recipe, Path(recipe['bundle']))}")
        return 0
    workdir = Path(args.workdir or recipe["workdir"]).expanduser()
    runner = Runner(recipe, workdir, args.threads, study=args.study)
    names = [s.name for s in runner.stages]
    for name in args.only or []:
        if name not in names:
            raise CLIError(f"--only {name}: no such stage; the stages are {', '.join(names)}")
    runner.print_plan()
    if not args.dry_run:
        runner.run(args.only)
    return 0
