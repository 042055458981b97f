"""`pocketbert finetune`: sentence classification from a pretrained checkpoint, over several seeds.

The recipe is the one Mosbach et al. (2020, "On the Stability of Fine-tuning BERT") found stable:
all weights trained end to end, bias-corrected AdamW, linear warmup over the first 10% of the steps
then linear decay, enough epochs, and the best checkpoint chosen on the dev set. Fine-tuning small
data sets still varies with the seed, so one command runs several seeds and reports mean, standard
deviation and the runs that failed (no better than always answering the majority class).

`--init scratch` trains the same classifier from random weights: the ablation that shows what
pretraining buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.bert import BertForSequenceClassification
from model.checkpoint import MODEL_FILENAME, load_model, read_weights, remove_stale_temporaries, save_model
from model.config import BertConfig
from model.tokenizer import Encoding, Tokenizer, file_sha256, pad_batch, resolve_tokenizer
from training.checkpointing import TRAINING_STATE_FILENAME, load_training_state, save_training_state
from training.errors import CLIError, output_folder
from training.loop import HeapTrimmer, Window, clip_and_step, progress_bar
from training.metrics_log import MetricsLog
from training.optim import build_optimizer, build_scheduler
from training.plot import plot_run
from training.runtime import StopSignal, derived_generator, pick_device, rng_state, set_rng_state
from training.tasks import DEFAULT_DEV_UNIT, LabeledTexts, read_task, split_dev

EVAL_BATCH_SIZE = 128
# The options results.json records as the run's recipe (and that a checkpoint must share to be resumed).
HYPERPARAMETERS = (
    "epochs",
    "lr",
    "batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "clip",
    "dropout",
    "dev_fraction",
    "dev_unit",
)
# What a checkpoint written before a setting existed ran with (resumed as if it had said so).
SETTING_DEFAULTS = {"dev_unit": DEFAULT_DEV_UNIT}
BUCKET_BATCHES = 50  # batches per length bucket: enough to sort by length, few enough to stay shuffled


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise CLIError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    if not seeds:
        raise CLIError("--seeds is empty")
    return seeds


def subsample(data: LabeledTexts, limit: int | None, seed: int = 0) -> LabeledTexts:
    """A reproducible random subset (the same one for every seed and for --init scratch)."""
    if limit is None or limit >= len(data):
        return data
    keep = sorted(random.Random(seed).sample(range(len(data)), limit))
    return LabeledTexts(
        [data.texts[i] for i in keep],
        [data.labels[i] for i in keep],
        data.label_names,
        data.path,
        data.skipped,
    )


@dataclass
class EncodedSet:
    """Token ids of every example (unpadded) and the labels; padding happens per batch."""

    ids: list[list[int]]
    token_types: list[list[int]]
    labels: list[int]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(tokenizer: Tokenizer, data: LabeledTexts, max_length: int) -> EncodedSet:
    """[CLS] text [SEP], truncated to max_length by the tokenizer (the one place that encodes text)."""
    encodings = [
        tokenizer.build_inputs(ids, max_length=max_length) for ids in tokenizer.encode_ids_batch(data.texts)
    ]
    return EncodedSet(
        [e.input_ids for e in encodings], [e.token_type_ids for e in encodings], list(data.labels)
    )


def bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar lengths: shuffle, sort within buckets of BUCKET_BATCHES batches, cut,
    shuffle.

    Batches are padded to their longest member, so grouping similar lengths keeps a batch of short
    reviews short (NSMC's median review is about a fifth of the longest).
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    bucket = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(perm), bucket):
        chunk = sorted(perm[start : start + bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def make_batch(data: EncodedSet, indices: list[int], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the batch's longest member; tensors on `device`."""
    padded = pad_batch([Encoding(data.ids[i], data.token_types[i]) for i in indices])
    batch = {k: torch.from_numpy(v).to(device) for k, v in padded.as_dict().items()}
    batch["labels"] = torch.tensor([data.labels[i] for i in indices], device=device)
    return batch


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
@dataclass
class Init:
    """Where the encoder weights come from."""

    name: str  # "scratch" or the checkpoint path
    config: BertConfig
    encoder_state: dict | None = None  # bert.* weights of the pretrained model
    metadata: dict = field(default_factory=dict)


def load_init(args: argparse.Namespace, vocab_size: int | None) -> Init:
    """The encoder to start from; vocab_size (the tokenizer's) sizes a scratch model."""

    if args.init == "scratch":
        if args.config:
            try:
                config = BertConfig.from_json(args.config)
            except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
                raise CLIError(f"{args.config}: not a valid model config ({exc})") from exc
        else:
            config = BertConfig(vocab_size=vocab_size)
        config.vocab_size = vocab_size
        config.max_position_embeddings = max(config.max_position_embeddings, args.max_length)
        return Init("scratch", config)

    try:
        weights = read_weights(args.init)
    except FileNotFoundError as exc:
        raise CLIError(f"{exc} (give a pretrain model.pt, or --init scratch)") from exc
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    encoder = {k[len("bert.") :]: v for k, v in weights.state.items() if k.startswith("bert.")}
    if not encoder:
        raise CLIError(f"{args.init}: holds no BERT encoder weights")
    return Init(str(args.init), weights.config, encoder, weights.metadata)


def build_classifier(
    init: Init, num_labels: int, seed: int, device: torch.device | str, dropout: float | None = None
) -> BertForSequenceClassification:
    """A BertForSequenceClassification: the pooler and encoder from `init`, a fresh seeded classifier."""
    torch.manual_seed(seed)  # the classifier head and dropout differ per seed; the encoder does not
    config = dataclasses.replace(init.config)
    if dropout is not None:  # fine-tuning's own regularisation, not the pretraining run's
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    model = BertForSequenceClassification(config, num_labels)
    if init.encoder_state is not None:
        model.bert.load_state_dict(init.encoder_state)
    return model.to(device)


# --------------------------------------------------------------------------------------------------
# train / evaluate one seed
# --------------------------------------------------------------------------------------------------
def evaluate(
    model: BertForSequenceClassification, data: EncodedSet, device: torch.device | str
) -> dict[str, float]:
    """Accuracy and mean loss; batches sorted by length (order does not change the figures)."""
    model.eval()
    lengths = data.lengths  # a property that builds the list: once, not once per example
    order = sorted(range(len(data.labels)), key=lengths.__getitem__)
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(order), EVAL_BATCH_SIZE):
            batch = make_batch(data, order[start : start + EVAL_BATCH_SIZE], device)
            out = model(
                batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"]
            )
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            loss_sum += float(out.loss) * len(batch["labels"])
    n = max(1, len(data.labels))
    return {"acc": correct / n, "loss": loss_sum / n}


@dataclass
class SeedResult:
    seed: int
    best_dev_acc: float
    best_step: int
    best_epoch: float
    test_acc: float | None
    failed: bool
    seconds: float
    state: dict | None = None  # the best weights (CPU), kept only until written

    def row(self) -> dict[str, Any]:
        """The seed's row of results.json (and of the checkpoint's finished seeds)."""
        return {k: v for k, v in vars(self).items() if k != "state"}


SaveState = Callable[[dict[str, Any]], None]  # writes a seed's state at the end of an epoch


class Stopped(Exception):
    """SIGINT / SIGTERM arrived: the seed in progress saved its state; the run ends, to be resumed."""


def train_seed(
    args: argparse.Namespace,
    seed: int,
    init: Init,
    num_labels: int,
    data: tuple[EncodedSet, EncodedSet, EncodedSet | None],
    majority_dev: float,
    metrics: MetricsLog,
    save_state: SaveState,
    stop: StopSignal,
    resume: dict[str, Any] | None = None,
) -> SeedResult:
    """Fine-tune one seed's classifier, keep its best dev checkpoint, and score that on the test set.

    At the end of every epoch, and every `--save-every` steps within one, the seed's whole state (weights,
    optimiser, schedule, RNG, best so far, batches done in the epoch) goes to `save_state`; `resume` is
    such a state, from which the seed continues exactly: an epoch's batch order comes from its own
    generator, so the batches already done are skipped without drawing anything. A signal (`stop`) ends
    the seed after the step in progress, its state saved, by raising Stopped.
    """
    train, dev, test = data
    device = pick_device(args.device)
    model = build_classifier(init, num_labels, seed, device, args.dropout)
    steps_per_epoch = math.ceil(len(train.labels) / args.batch_size)
    total = steps_per_epoch * args.epochs
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, max(1, round(args.warmup_ratio * total)), total)
    eval_at = {round(steps_per_epoch * (k + 1) / args.evals_per_epoch) for k in range(args.evals_per_epoch)}

    best_acc, best_step, best_state = -1.0, 0, None
    step, first_epoch, done_in_first_epoch, seconds_before = 0, 0, 0, 0.0
    window = Window()
    heap = HeapTrimmer()  # batches of every length: the heap fragments as in pretraining
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        best_acc, best_step, best_state = resume["best_acc"], resume["best_step"], resume["best_state"]
        step, first_epoch, seconds_before = resume["step"], resume["epoch"], resume["seconds"]
        done_in_first_epoch = resume.get("batch", 0)  # older checkpoints: saved at epoch ends only
        vars(window).update(resume["window"])
        set_rng_state(resume["rng"])
    started = time.perf_counter() - seconds_before

    def seed_state(epoch: int, batch: int) -> dict[str, Any]:
        """What resumes this seed: `epoch` epochs finished and `batch` batches of the next one done."""
        return {
            "seed": seed,
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "best_acc": best_acc,
            "best_step": best_step,
            "best_state": best_state,
            "window": dict(vars(window)),
            "seconds": time.perf_counter() - started,
        }

    bar = progress_bar(total, initial=step, desc=f"seed {seed}")
    for epoch in range(first_epoch, args.epochs):
        batches = bucketed_batches(train.lengths, args.batch_size, derived_generator(seed, epoch))
        skip = done_in_first_epoch if epoch == first_epoch else 0
        for b, indices in enumerate(batches, start=1):
            if b <= skip:
                continue  # done before the checkpoint this run resumed from
            step_started = time.perf_counter()
            model.train()
            batch = make_batch(train, indices, device)
            out = model(
                batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"]
            )
            out.loss.backward()
            clip_and_step(model.parameters(), optimizer, scheduler, args.clip)
            heap.after_step()
            step += 1
            loss = out.loss.item()
            window.add({"loss": loss}, int(batch["attention_mask"].sum()), time.perf_counter() - step_started)
            bar.update(1)
            postfix = {"loss": f"{loss:.3f}", "tok_s": f"{window.tokens_per_s:,.0f}"}
            if best_state is not None:  # nothing to show before the first evaluation
                postfix["best_dev"] = f"{best_acc:.4f}"
            bar.set_postfix(postfix, refresh=False)
            if step % args.log_every == 0:
                metrics.write(
                    {
                        "seed": seed,
                        "step": step,
                        "split": "train",
                        **window.means(),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": window.tokens_per_s,
                    }
                )
                window.reset()
            if b in eval_at:
                dev_metrics = evaluate(model, dev, device)
                metrics.write(
                    {
                        "seed": seed,
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "split": "dev",
                        "acc": dev_metrics["acc"],
                        "loss": dev_metrics["loss"],
                    }
                )
                if dev_metrics["acc"] > best_acc:
                    best_acc, best_step = dev_metrics["acc"], step
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            stopping = stop.received is not None
            if b < len(batches) and (stopping or step % args.save_every == 0):
                save_state(seed_state(epoch, b))
                if stopping:
                    raise Stopped
        save_state(seed_state(epoch + 1, 0))
        if stop.received is not None:
            raise Stopped
    bar.close()
    model.load_state_dict(best_state)
    test_acc = evaluate(model, test, device)["acc"] if test is not None else None
    return SeedResult(
        seed,
        best_acc,
        best_step,
        round(best_step / steps_per_epoch, 3),
        test_acc,
        failed=best_acc <= majority_dev,
        seconds=round(time.perf_counter() - started, 1),
        state=best_state,
    )


# --------------------------------------------------------------------------------------------------
# checkpoints: an interrupted run continues where it stopped
# --------------------------------------------------------------------------------------------------
# The options that decide what a run computes: a checkpoint is resumed only by a run with the same values.
RUN_SETTINGS = (
    "task",
    "train",
    "dev",
    "test",
    "text_column",
    "label_column",
    "limit_train",
    "limit_dev",
    "limit_test",
    "init",
    "tokenizer",
    "config",
    "seeds",
    "evals_per_epoch",
    *HYPERPARAMETERS,
)
PATH_SETTINGS = ("train", "dev", "test", "init", "tokenizer", "config")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """RUN_SETTINGS' values, with paths made absolute (the same run, started from another folder), and the
    initial weights by content: a pretraining continued since (same path, new weights) is another run."""
    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    for name in PATH_SETTINGS:
        if settings[name] not in (None, "scratch"):
            settings[name] = str(Path(settings[name]).resolve())
    settings["init_sha256"] = None if args.init == "scratch" else file_sha256(args.init)
    return settings


def read_partial_run(path: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The checkpoint of an unfinished run with these settings, or None to start from the first seed.

    A checkpoint of other settings is replaced, unless --resume asked for it: then that is an error.
    """
    if not path.is_file():
        if resume:
            print(f"note: no {path}: starting from the first seed")
        return None
    state = load_training_state(path)
    if state.get("kind") != "finetune":
        raise CLIError(f"{path}: not a fine-tuning checkpoint (a pretraining run's?); choose another --out")
    saved = state["settings"]
    compared = [*RUN_SETTINGS, *(["init_sha256"] if "init_sha256" in saved else [])]  # older: no hash
    differing = [name for name in compared if saved.get(name, SETTING_DEFAULTS.get(name)) != settings[name]]
    if not differing:
        return state
    changes = ", ".join(
        f"the weights in --init changed (sha256 {saved[n][:12]} -> {settings[n][:12]})"
        if n == "init_sha256" and saved[n] and settings[n]
        else f"--{n.replace('_', '-')} {saved.get(n)!r} -> {settings[n]!r}"
        for n in differing
    )
    if resume:
        raise CLIError(f"{path}: the unfinished run there has other settings ({changes}); drop --resume")
    print(f"note: {path} holds an unfinished run with other settings ({changes}); starting afresh")
    return None


def start_or_resume(
    state_path: Path, settings: dict[str, Any], resume: bool
) -> tuple[list[SeedResult], dict[str, Any] | None, MetricsLog]:
    """The finished seeds and the seed in progress (its last saved state) of an unfinished run with these
    settings, none for a new run; and the run's metrics log, without the rows the run will write again."""
    partial = read_partial_run(state_path, settings, resume)
    metrics = MetricsLog(state_path.parent)
    if partial is None:
        metrics.start(0)
        return [], None, metrics
    results = [SeedResult(**row) for row in partial["finished"]]
    in_progress = partial if partial["seed"] is not None else None
    done = {r.seed for r in results}
    print(
        f"resuming {state_path}: seeds done {sorted(done) or 'none'}"
        + (f", seed {partial['seed']} at step {partial['step']}" if in_progress else "")
    )
    metrics.keep(lambda row: row.get("seed") in done or _before(row, in_progress))
    return results, in_progress, metrics


def _before(row: dict[str, Any], state: dict[str, Any] | None) -> bool:
    """Whether a metrics row was written by the seed in progress before its checkpoint."""
    return state is not None and row.get("seed") == state["seed"] and row["step"] <= state["step"]


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(args: argparse.Namespace, results: list[SeedResult], extra: dict[str, Any]) -> dict[str, Any]:
    """results.json: one row per seed, then mean, standard deviation and failed runs."""
    dev_mean, dev_std = _mean_std([r.best_dev_acc for r in results])
    test_values = [r.test_acc for r in results if r.test_acc is not None]
    test_mean, test_std = _mean_std(test_values)
    best = max(results, key=lambda r: r.best_dev_acc)
    return {
        "task": args.task,
        "init": args.init,
        "seeds": [r.row() for r in results],
        "dev_acc_mean": dev_mean,
        "dev_acc_std": dev_std,
        "test_acc_mean": test_mean,
        "test_acc_std": test_std,
        "failed_runs": sum(r.failed for r in results),
        "runs": len(results),
        "best_seed": best.seed,
        "hyperparameters": {k: getattr(args, k) for k in HYPERPARAMETERS},
        **extra,
    }


def print_table(summary: dict[str, Any]) -> None:
    has_test = summary["test_acc_mean"] is not None
    print(f"\n{'seed':>6} {'dev acc':>8} {'test acc':>9} {'best epoch':>11} {'failed':>7}")
    for r in summary["seeds"]:
        test = f"{r['test_acc']:.4f}" if r["test_acc"] is not None else "-"
        print(
            f"{r['seed']:>6} {r['best_dev_acc']:>8.4f} {test:>9} {r['best_epoch']:>11} {str(r['failed']):>7}"
        )
    test = f"{summary['test_acc_mean']:.4f} ± {summary['test_acc_std']:.4f}" if has_test else "-"
    print(
        f"  mean dev {summary['dev_acc_mean']:.4f} ± {summary['dev_acc_std']:.4f}, test {test}, "
        f"failed {summary['failed_runs']}/{summary['runs']} (majority-class dev accuracy "
        f"{summary['majority_dev_acc']:.4f})"
    )


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)  # counts and rates are checked by their argparse types (arguments.py)
    output_folder(args.out)
    if args.max_length < 8:
        raise CLIError(f"--max-length must be at least 8, got {args.max_length}")
    if args.threads:
        torch.set_num_threads(args.threads)

    if (args.dev is None) == (args.dev_fraction is None):
        raise CLIError("give a dev set: either --dev FILE or --dev-fraction F (carved from --train)")
    train_data = read_task(args.task, args.train, None, args.text_column, args.label_column)
    if args.dev_fraction is not None:
        train_data, dev_data = split_dev(train_data, args.dev_fraction, unit=args.dev_unit)
    else:
        dev_data = read_task(args.task, args.dev, train_data.label_names, args.text_column, args.label_column)
    test_data = (
        read_task(args.task, args.test, train_data.label_names, args.text_column, args.label_column)
        if args.test
        else None
    )
    for d in (train_data, dev_data, test_data):
        if d is not None and d.skipped:
            print(f"{d.path}: skipped {d.skipped} rows with an empty or missing text")
    train_data = subsample(train_data, args.limit_train)
    dev_data = subsample(dev_data, args.limit_dev)
    test_data = subsample(test_data, args.limit_test) if test_data is not None else None

    if args.init == "scratch":
        tokenizer = resolve_tokenizer(args.tokenizer, {}, "a scratch model")
        init = load_init(args, tokenizer.vocab_size)
    else:
        init = load_init(args, vocab_size=None)
        tokenizer = resolve_tokenizer(args.tokenizer, init.metadata, args.init)
    if init.config.vocab_size != tokenizer.vocab_size:
        raise CLIError(
            f"{args.init}: vocabulary {init.config.vocab_size} but the tokenizer has {tokenizer.vocab_size}"
        )
    if args.max_length > init.config.max_position_embeddings:
        raise CLIError(
            f"--max-length {args.max_length} exceeds the model's "
            f"{init.config.max_position_embeddings} positions"
        )

    train_set = encode(tokenizer, train_data, args.max_length)
    dev_set = encode(tokenizer, dev_data, args.max_length)
    test_set = encode(tokenizer, test_data, args.max_length) if test_data is not None else None
    num_labels = len(train_data.label_names)
    majority_dev = dev_data.majority_accuracy()
    parameters = build_classifier(init, num_labels, seeds[0], "cpu").num_parameters()
    print(
        f"{args.task}: {len(train_set.labels)} train, {len(dev_set.labels)} dev"
        + (f", {len(test_set.labels)} test" if test_set else "")
        + f"; labels {train_data.label_names}; init {init.name} ({parameters:,} parameters); seeds {seeds}"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILENAME, TRAINING_STATE_FILENAME):
        remove_stale_temporaries(out, name)  # left by writes that a kill interrupted
    state_path = out / TRAINING_STATE_FILENAME
    settings = run_settings(args)
    results, in_progress, metrics = start_or_resume(state_path, settings, args.resume)

    def save_state(seed_state: dict[str, Any] | None) -> None:
        """checkpoint.pt: the finished seeds' rows and the seed in progress; written after everything else
        (the commit point)."""
        save_training_state(
            state_path,
            {
                "kind": "finetune",
                "settings": settings,
                "finished": [r.row() for r in results],
                **(seed_state or {"seed": None, "model": None}),
            },
        )

    extra = {
        "label_names": train_data.label_names,
        "majority_dev_acc": majority_dev,
        "majority_test_acc": test_data.majority_accuracy() if test_data is not None else None,
        "examples": {
            "train": len(train_set.labels),
            "dev": len(dev_set.labels),
            "test": len(test_set.labels) if test_set else 0,
        },
        "skipped": {
            "train": train_data.skipped,
            "dev": dev_data.skipped,
            "test": test_data.skipped if test_data is not None else 0,
        },
        "tokenizer_sha256": tokenizer.checksum,
    }
    best_dev = max((r.best_dev_acc for r in results), default=-1.0)
    stop = StopSignal().install()  # SIGINT / SIGTERM: save the seed in progress, then exit 130 / 143
    try:
        for seed in [s for s in seeds if s not in {r.seed for r in results}]:
            if stop.received is not None:
                raise Stopped  # arrived while the last seed was scored and written: all of it is saved
            resume = in_progress if in_progress is not None and in_progress["seed"] == seed else None
            data = (train_set, dev_set, test_set)
            result = train_seed(
                args, seed, init, num_labels, data, majority_dev, metrics, save_state, stop, resume
            )
            results.append(result)
            summary = summarise(args, results, extra)
            if result.best_dev_acc > best_dev:  # write the best classifier as soon as it exists
                best_dev = result.best_dev_acc
                model = build_classifier(init, num_labels, seed, "cpu", args.dropout)
                model.load_state_dict(result.state)
                save_model(
                    out / MODEL_FILENAME,
                    model,
                    {
                        "label_names": train_data.label_names,
                        "task": args.task,
                        "max_length": args.max_length,
                        "seed": seed,
                        "results": summary,
                        "tokenizer_sha256": tokenizer.checksum,
                        "tokenizer": str(tokenizer.path.resolve()),
                        "init": args.init,
                    },
                )
            result.state = None
            (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            save_state(None)  # the seed is done: its row is committed
            plot_run(out)
    except Stopped:
        print(
            f"\nstopped by signal; {state_path} holds the run so far (seeds done "
            f"{sorted(r.seed for r in results) or 'none'}): run the same command again to resume"
        )
        return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C while saving: the last complete save is what resumes
        if state_path.is_file():
            print(f"\ninterrupted; {state_path} holds the run so far: run the same command again to resume")
        raise
    finally:
        stop.restore()
    summary = summarise(args, results, extra)
    model, metadata = load_model(out / MODEL_FILENAME)
    save_model(out / MODEL_FILENAME, model, {**metadata, "results": summary})  # the final table, all seeds
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    state_path.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    plot_run(out)
    print_table(summary)
    print(
        f"wrote {out / 'results.json'}, {out / MODEL_FILENAME} (seed {summary['best_seed']}), "
        f"{out / 'metrics.png'}"
    )
    return 0
