"""`pocketbert pretrain`: masked-LM + next-sentence-prediction pretraining from a prepared data folder.

The loop, top to bottom: build (or resume) model, optimiser and schedule; each step draws
grad_accum micro-batches in a deterministic order, masks them with a generator derived from
(seed, step), and takes one clipped AdamW step; every few steps it logs, evaluates on the valid split
and writes an atomic checkpoint. SIGINT / SIGTERM end the current step, save, and exit cleanly.

Determinism is what makes `--resume` exact: the data order is a function of (seed, epoch), the masks
of (seed, step), and dropout draws from torch's global RNG whose state is saved in the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.bert import IGNORE_INDEX, BertForPreTraining
from model.checkpoint import MODEL_FILENAME, Weights, read_weights, remove_stale_temporaries, save_model
from model.config import BertConfig
from model.tokenizer import resolve_tokenizer
from training.checkpointing import TRAINING_STATE_FILENAME, load_training_state, save_training_state
from training.data_format import INDEX_FILENAME, read_shared_index
from training.dataset import PretrainingDataset, collate
from training.errors import CLIError, output_folder
from training.loop import HeapTrimmer, Window, clip_and_step, progress_bar, resident_mb
from training.masking import mask_tokens, word_start_table
from training.metrics_log import MetricsLog
from training.optim import build_optimizer, build_scheduler, warmup_linear_decay
from training.plot import plot_run
from training.runtime import (
    Runtime,
    StopSignal,
    autocast_dtype,
    derived_generator,
    rng_state,
    seed_everything,
    set_rng_state,
    setup,
    teardown,
)

LOSSES = ("loss", "mlm_loss", "nsp_loss")  # what a training step reports and a train metrics row averages
EVAL_MASK_SEED = 20_240_917  # validation masks are the same at every evaluation, so curves are comparable
# ...and the same whatever the training masking (rate, whole words), so runs with different recipes compare
EVAL_MLM_PROBABILITY = 0.15


# --------------------------------------------------------------------------------------------------
# the command (its options: training/arguments.py)
# --------------------------------------------------------------------------------------------------
# Options that define a run. Left out on --resume they take the checkpoint's values, so that
# `pocketbert pretrain --data D --out O --resume` continues the same schedule; else these defaults.
RUN_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "grad_accum": 1,
    "steps": 1000,
    "lr": 5e-4,
    "warmup": None,
    "weight_decay": 0.01,
    "clip": 1.0,
    "mlm_probability": 0.15,
    "seed": 0,
    "precision": "fp32",
    "whole_word_mask": False,
    "tokenizer": None,
}
# How the run reports and saves: left out on --resume these too take the checkpoint's values.
REPORTING_DEFAULTS: dict[str, Any] = {
    "eval_every": 100,
    "eval_batches": 50,
    "save_every": 500,
    "log_every": 10,
}


def run(args: argparse.Namespace) -> int:
    resume_state = run_in_folder(Path(args.out), args.resume)
    fill_run_options(args, resume_state["args"] if resume_state else {})
    _check_args(args)
    runtime = setup(args.device, args.threads)
    finished = False
    try:
        code = Trainer(args, runtime, resume_state).train()
        finished = True
        return code
    finally:
        teardown(finished)


# Options a resumed run cannot change: the saved data position counts batches of this size, drawn in
# the order this seed defines.
FIXED_ON_RESUME = {
    "batch_size": "the saved data position counts batches of that size",
    "seed": "the saved data position refers to the data order that seed defines",
}


def fill_run_options(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    """Give each run option left out on the command line the checkpoint's value, else its default.

    An option given with a value other than the checkpoint's takes effect from the resumed step on (the
    learning-rate schedule is recomputed with the new lr / warmup / steps); the two that cannot change
    are refused with the reason.
    """
    for name, default in {**RUN_DEFAULTS, **REPORTING_DEFAULTS}.items():
        given = getattr(args, name)
        flag = f"--{name.replace('_', '-')}"
        if given is None:
            setattr(args, name, saved.get(name, default))
        elif name in saved and saved[name] != given:
            if name in FIXED_ON_RESUME:
                raise CLIError(
                    f"{flag} {given} differs from the checkpoint's {saved[name]} and cannot change on "
                    f"--resume: {FIXED_ON_RESUME[name]}"
                )
            print(f"note: {flag} changes from {saved[name]} to {given} from the resumed step on")


def run_in_folder(out: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint of the run in `out` to continue, or None to start one.

    The same command run again goes on where the last one stopped, --resume or not (as `finetune` does):
    starting over would replace hours of pretraining. A folder holding something else (a fine-tuning run,
    a model.pt with no checkpoint of its own beside it) is refused, so no other run's model is overwritten.
    """
    state_path = output_folder(out) / TRAINING_STATE_FILENAME
    if state_path.is_file():
        state = load_training_state(state_path)
        if "kind" in state:  # fine-tuning states name their kind; pretraining's never did
            found = f"{state_path}: not a pretraining checkpoint (a {state['kind']} run's)"
            raise CLIError(f"{found}; choose another --out")
        if not resume:
            print(f"note: {state_path} holds this run at step {state['step']}: continuing it (as --resume)")
        return state
    if resume:
        print(f"note: no {state_path}: starting from step 0")
    elif (out / MODEL_FILENAME).is_file():
        raise CLIError(
            f"{out / MODEL_FILENAME}: a model with no pretraining checkpoint beside it (another run's?); "
            "choose another --out"
        )
    return None


def _check_args(args: argparse.Namespace) -> None:
    """What the options' argparse types (arguments.py: counts >= 1, --lr > 0) cannot say alone."""
    if args.warmup is None:
        args.warmup = max(1, args.steps // 10)
    if not 0 < args.mlm_probability < 1:
        raise CLIError(f"--mlm-probability must be between 0 and 1, got {args.mlm_probability}")


def build_config(args: argparse.Namespace, index: dict[str, Any]) -> BertConfig:
    """The model config from --config or the size flags; vocabulary and length come from the data."""
    vocab_size, max_length = int(index["vocab_size"]), int(index["max_length"])
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CLIError(f"{path}: no such config file")
        try:
            config = BertConfig.from_json(path)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise CLIError(f"{path}: not a valid model config ({exc})") from exc
        if config.vocab_size != vocab_size:
            raise CLIError(
                f"{path}: vocab_size {config.vocab_size} but the data's tokenizer has {vocab_size}"
            )
    else:
        try:
            config = BertConfig(
                vocab_size=vocab_size,
                hidden_size=args.hidden_size,
                num_hidden_layers=args.layers,
                num_attention_heads=args.heads,
                intermediate_size=args.intermediate_size or 4 * args.hidden_size,
                max_position_embeddings=max(512, max_length),
            )
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    if config.max_position_embeddings < max_length:
        raise CLIError(
            f"max_position_embeddings {config.max_position_embeddings} < data max_length {max_length}"
        )
    return config


def read_init(path: str | Path, index: dict[str, Any]) -> Weights:
    """The weights --init starts from, checked against the data's vocabulary and tokenizer."""
    try:
        weights = read_weights(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if weights.kind != "pretraining":
        raise CLIError(
            f"{path}: a {weights.kind} model; --init needs a pretraining model.pt or checkpoint.pt"
        )
    if weights.config.vocab_size != int(index["vocab_size"]):
        raise CLIError(
            f"{path}: vocabulary {weights.config.vocab_size}, the data's tokenizer has {index['vocab_size']}"
        )
    recorded = weights.metadata.get("tokenizer_sha256")
    if recorded and index.get("tokenizer_sha256") and recorded != index["tokenizer_sha256"]:
        raise CLIError(f"{path}: trained with another tokenizer than the data's (sha256 differs)")
    if weights.config.max_position_embeddings < int(index["max_length"]):
        raise CLIError(
            f"{path}: {weights.config.max_position_embeddings} positions < data max_length "
            f"{index['max_length']}"
        )
    return weights


# --------------------------------------------------------------------------------------------------
# data order: a pure function of (seed, epoch, rank) so a checkpoint only needs (epoch, batch index)
# --------------------------------------------------------------------------------------------------
def epoch_batches(
    sizes: int | list[int], batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """The micro-batches (tensors of example indices) this rank reads in `epoch`.

    One permutation per epoch, dealt round-robin to the ranks and cut to equal lengths, so every rank
    takes the same number of steps (DDP needs that) and together they read each example once.
    With several data folders (`sizes` = their instance counts, concatenated in that order) each folder
    is cut into batches of its own and the batches are then shuffled together: a batch never mixes
    folders, so a batch of short in-domain reviews stays short instead of padding to Wikipedia's length.
    """
    generator = derived_generator(seed, epoch)
    batches, offset = [], 0
    for size in [sizes] if isinstance(sizes, int) else sizes:
        perm = torch.randperm(size, generator=generator) + offset
        per_rank = size // world_size
        mine = perm[rank::world_size][:per_rank]
        batches.extend(mine[: (per_rank // batch_size) * batch_size].split(batch_size))
        offset += size
    if not isinstance(sizes, int) and len(sizes) > 1:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


@dataclass
class DataPosition:
    """Where the next micro-batch comes from; saved in checkpoints."""

    epoch: int = 0
    batch: int = 0


class BatchStream:
    """Micro-batches of the train split in a deterministic order, resumable from a DataPosition."""

    def __init__(
        self,
        dataset: PretrainingDataset | torch.utils.data.ConcatDataset,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        position: DataPosition,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self._batches = self._epoch(position.epoch)

    def _epoch(self, epoch: int) -> list[torch.Tensor]:
        sizes = (
            [len(d) for d in self.dataset.datasets]
            if hasattr(self.dataset, "datasets")
            else len(self.dataset)
        )
        batches = epoch_batches(sizes, self.batch_size, self.seed, epoch, self.rank, self.world_size)
        if not batches:
            raise CLIError(
                f"the train split has {len(self.dataset)} examples: too few for one batch of "
                f"{self.batch_size} per process"
            )
        return batches

    def next(self) -> dict[str, torch.Tensor]:
        if self.position.batch >= len(self._batches):
            self.position = DataPosition(self.position.epoch + 1, 0)
            self._batches = self._epoch(self.position.epoch)
        indices = self._batches[self.position.batch]
        self.position = DataPosition(self.position.epoch, self.position.batch + 1)
        return collate([self.dataset[int(i)] for i in indices])


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------
class Trainer:
    """One pretraining run: state, the step, evaluation, checkpoints, logging."""

    def __init__(self, args: argparse.Namespace, runtime: Runtime, resume_state: dict | None = None) -> None:
        self.args = args
        self.rt = runtime
        self.out = Path(args.out)
        self.index = read_shared_index(args.data)
        self.state_path = self.out / TRAINING_STATE_FILENAME
        init = None
        if resume_state is not None:
            self.config = BertConfig.from_dict(resume_state["config"])
        elif args.init:
            init = read_init(args.init, self.index)
            self.config = init.config
        else:
            self.config = build_config(args, self.index)
        if args.dropout is not None:
            self.config.hidden_dropout_prob = self.config.attention_probs_dropout_prob = args.dropout
        seed_everything(args.seed)  # same initial weights on every rank
        self.model = BertForPreTraining(self.config).to(runtime.device)
        if init is not None:
            self.model.load_state_dict(init.state)
        if runtime.is_main:
            print(f"model: {self.model.num_parameters():,} parameters")
        self.optimizer = build_optimizer(self.model, args.lr, args.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, args.warmup, args.steps)
        self.step = 0
        self.tokens_seen = 0
        self.position = DataPosition()
        self.last_valid: dict[str, float] = {}
        if resume_state is not None:
            self._restore(resume_state)
            set_rng_state(self._rank_rng(resume_state))

        splits = [PretrainingDataset(folder, split="train") for folder in args.data]
        self.train_data = splits[0] if len(splits) == 1 else torch.utils.data.ConcatDataset(splits)
        self.valid_data = PretrainingDataset(args.data[0], split="valid")
        self.stream = BatchStream(
            self.train_data, args.batch_size, args.seed, runtime.rank, runtime.world_size, self.position
        )

        self.train_model = self.model
        if args.compile:
            self.train_model = torch.compile(self.train_model)
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)
        self.autocast_dtype = autocast_dtype(args.precision, runtime.device)
        if runtime.is_main and args.precision != "fp32":
            used = "bf16 autocast" if self.autocast_dtype is not None else "fp32 (no native bf16 here)"
            print(f"precision: {args.precision} -> {used} on {runtime.device.type}")
        self.heap = HeapTrimmer()
        self.word_starts = self._word_start_table() if args.whole_word_mask else None  # (V,) bool
        self.metrics = MetricsLog(self.out, enabled=runtime.is_main)
        if runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.start(self.step)  # drops the rows after the checkpoint: the run died before saving
            for name in (MODEL_FILENAME, TRAINING_STATE_FILENAME):
                remove_stale_temporaries(self.out, name)  # left by writes that a kill interrupted
            if resume_state is not None:
                self._sync_model_file(resume_state)

    # --- checkpoint state ---------------------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        saved_batch = state["args"].get("batch_size")
        if saved_batch != self.args.batch_size:  # the data position counts batches of that size
            raise CLIError(
                f"{self.state_path}: written with --batch-size {saved_batch}; resume with the same "
                f"batch size (got {self.args.batch_size})"
            )
        if state.get("world_size", 1) != self.rt.world_size and self.rt.is_main:
            print(
                f"note: the checkpoint was written by {state.get('world_size', 1)} processes, this run has "
                f"{self.rt.world_size}: the data order from here on differs from an uninterrupted run"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self._apply_schedule_options()
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.position = DataPosition(**state["position"])
        self.last_valid = dict(state.get("valid", {}))
        if self.rt.is_main:
            print(
                f"resuming from {self.state_path} at step {self.step} "
                f"(epoch {self.position.epoch}, batch {self.position.batch})"
            )

    def _apply_schedule_options(self) -> None:
        """Make --lr / --warmup / --steps / --weight-decay given on --resume take effect.

        Loading the optimiser and scheduler states brings back the values they were built with (the
        peak lr in `initial_lr` / `base_lrs`, the decay in each group); set them from this run's options
        and recompute the current lr from the schedule at the resumed step. With unchanged options this
        changes nothing, so an ordinary resume stays exact.
        """
        self.scheduler.base_lrs = [self.args.lr for _ in self.optimizer.param_groups]
        factor = warmup_linear_decay(self.step, self.args.warmup, self.args.steps)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.args.lr
            group["lr"] = self.args.lr * factor
        matrices = self.optimizer.param_groups[0]  # the decayed group (optim.param_groups)
        matrices["weight_decay"] = self.args.weight_decay
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _rank_rng(self, state: dict) -> dict:
        """This rank's RNG state; a run resumed with a different process count re-derives one."""
        states = state["rng"]
        if len(states) == self.rt.world_size:
            return states[self.rt.rank]
        seed_everything(self.args.seed * 1_000_003 + self.step * 101 + self.rt.rank)
        return rng_state()

    def save(self) -> None:
        """model.pt and config.json, then checkpoint.pt: the commit point; rank 0 writes.

        Each file is written atomically, and checkpoint.pt last, so whatever a resume reads is never
        behind the other files: a kill between the writes leaves model.pt ahead of checkpoint.pt, and
        the resumed run rewrites it from the checkpoint (`_sync_model_file`).
        """
        digests = self._rank_weight_digests()  # collective: every rank takes part
        rng = [rng_state()]
        if self.rt.distributed:
            gathered: list = [None] * self.rt.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not self.rt.is_main:
            return
        metadata = self._model_metadata()
        save_model(self.out / MODEL_FILENAME, self.model, metadata)
        self.config.to_json(self.out / "config.json")
        save_training_state(
            self.state_path,
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "position": {"epoch": self.stream.position.epoch, "batch": self.stream.position.batch},
                "config": self.config.to_dict(),
                "args": {k: v for k, v in vars(self.args).items() if k != "func"},
                "world_size": self.rt.world_size,
                "valid": self.last_valid,
                "rank_weight_sha256": digests,
                "metadata": metadata,
            },
        )

    def _sync_model_file(self, state: dict) -> None:
        """Make model.pt the checkpoint's weights when a kill left it at another step (or without it)."""
        path = self.out / MODEL_FILENAME
        try:
            model_step = read_weights(path).metadata.get("step")
        except (FileNotFoundError, ValueError):
            model_step = None
        if model_step != self.step:
            print(f"note: {path} was at step {model_step}; rewritten from the checkpoint (step {self.step})")
            save_model(path, self.model, state.get("metadata") or self._model_metadata())
            self.config.to_json(self.out / "config.json")

    def _rank_weight_digests(self) -> list[str]:
        """sha256 of the weights on every rank: DDP keeps the replicas identical, and this proves it.

        All ranks hash their own parameters and gather the digests; rank 0 warns if they differ.
        """
        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digests = [digest.hexdigest()]
        if self.rt.distributed:
            digests = [None] * self.rt.world_size  # type: ignore[list-item]
            dist.all_gather_object(digests, digest.hexdigest())
            if self.rt.is_main and len(set(digests)) > 1:
                print(f"warning: the {self.rt.world_size} ranks hold different weights: {digests}")
        return digests

    def _model_metadata(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "valid": self.last_valid,
            "tokenizer_sha256": self.index.get("tokenizer_sha256"),
            "tokenizer": self.index.get("args", {}).get("tokenizer"),
            "max_length": self.index.get("max_length"),
            "data": [str(Path(folder).resolve()) for folder in self.args.data],
            "seed": self.args.seed,
        }

    # --- one step -----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.rt.device.type, dtype=self.autocast_dtype)

    def _word_start_table(self) -> torch.Tensor:
        """Which vocabulary ids begin a word, from the tokenizer the data was prepared with."""
        recorded = {
            "tokenizer": self.index.get("args", {}).get("tokenizer"),
            "tokenizer_sha256": self.index.get("tokenizer_sha256"),
        }
        tokenizer = resolve_tokenizer(self.args.tokenizer, recorded, f"{self.args.data[0]}/{INDEX_FILENAME}")
        return word_start_table(tokenizer)

    def _mask(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        word_starts = None if self.word_starts is None else self.word_starts[batch["input_ids"]]  # (B, T)
        return mask_tokens(
            batch["input_ids"],
            self.config.vocab_size,
            generator=generator,
            mlm_probability=self.args.mlm_probability,
            word_starts=word_starts,
        )

    def train_step(self) -> tuple[dict[str, float], int]:
        """grad_accum micro-batches -> one clipped optimiser step; returns this step's mean losses and
        the tokens this process read."""
        args, dev = self.args, self.rt.device
        self.train_model.train()
        totals = dict.fromkeys(LOSSES, 0.0)
        tokens = 0
        for micro in range(args.grad_accum):
            batch = self.stream.next()
            masked_ids, labels = self._mask(
                batch, derived_generator(args.seed, self.step, micro, self.rt.rank)
            )
            last = micro == args.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.rt.distributed else self.train_model.no_sync()
            with sync, self._autocast():
                out = self.train_model(
                    masked_ids.to(dev),
                    batch["token_type_ids"].to(dev),
                    batch["attention_mask"].to(dev),
                    labels=labels.to(dev),
                    next_sentence_label=batch["next_sentence_label"].to(dev),
                    sparse_mlm=True,
                )
                (out.loss / args.grad_accum).backward()
            for key in totals:
                totals[key] += getattr(out, key).item() / args.grad_accum
            tokens += int(batch["attention_mask"].sum())
        clip_and_step(self.model.parameters(), self.optimizer, self.scheduler, args.clip)
        self.heap.after_step()
        self.step += 1
        self.tokens_seen += tokens * self.rt.world_size
        return totals, tokens

    # --- evaluation ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """MLM and NSP loss and accuracy over the first --eval-batches batches of the valid split.

        The masks come from a fixed generator with BERT's standard masking (15% of single pieces), so
        every evaluation of every run scores the same masked positions, whatever its training masking.
        """
        self.model.eval()
        dev, bs = self.rt.device, self.args.batch_size
        sums = {
            "mlm_loss": 0.0,
            "mlm_correct": 0,
            "mlm_count": 0,
            "nsp_loss": 0.0,
            "nsp_correct": 0,
            "nsp_count": 0,
        }
        num_batches = min(self.args.eval_batches, math.ceil(len(self.valid_data) / bs))
        with torch.no_grad(), self._autocast():
            for b in range(num_batches):
                batch = collate(
                    [self.valid_data[i] for i in range(b * bs, min((b + 1) * bs, len(self.valid_data)))]
                )
                masked_ids, labels = mask_tokens(
                    batch["input_ids"],
                    self.config.vocab_size,
                    generator=derived_generator(EVAL_MASK_SEED, b),
                    mlm_probability=EVAL_MLM_PROBABILITY,
                )
                nsp = batch["next_sentence_label"].to(dev).reshape(-1)
                out = self.model(
                    masked_ids.to(dev),
                    batch["token_type_ids"].to(dev),
                    batch["attention_mask"].to(dev),
                    labels=labels.to(dev),
                    next_sentence_label=nsp,
                    sparse_mlm=True,
                )
                targets = labels.to(dev)[labels.to(dev) != IGNORE_INDEX]  # (N,), the order of out.mlm_logits
                sums["mlm_loss"] += float(out.mlm_loss) * targets.numel()
                sums["mlm_correct"] += int((out.mlm_logits.argmax(-1) == targets).sum())
                sums["mlm_count"] += targets.numel()
                sums["nsp_loss"] += float(out.nsp_loss) * nsp.numel()
                sums["nsp_correct"] += int((out.nsp_logits.argmax(-1) == nsp).sum())
                sums["nsp_count"] += nsp.numel()
        mlm_n, nsp_n = max(1, sums["mlm_count"]), max(1, sums["nsp_count"])
        return {
            "mlm_loss": sums["mlm_loss"] / mlm_n,
            "nsp_loss": sums["nsp_loss"] / nsp_n,
            "mlm_acc": sums["mlm_correct"] / mlm_n,
            "nsp_acc": sums["nsp_correct"] / nsp_n,
        }

    def _evaluate_and_log(self) -> None:
        if self.rt.is_main:
            self.last_valid = self.evaluate()
            self.metrics.write({"step": self.step, "split": "valid", **self.last_valid})
        if self.rt.distributed:
            dist.barrier()

    # --- the loop -----------------------------------------------------------------------------------
    def train(self) -> int:
        args = self.args
        end = min(args.steps, args.stop_at) if args.stop_at else args.steps
        stop = StopSignal().install()
        bar = progress_bar(args.steps, initial=self.step, disable=not self.rt.is_main)
        window = Window(self.rt.world_size)
        try:
            if self.step == 0:
                self._evaluate_and_log()  # the untrained baseline: the curves start at chance
            while self.step < end:
                started = time.perf_counter()
                losses, tokens = self.train_step()
                window.add(losses, tokens, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{losses['loss']:.3f}",
                    mlm=f"{losses['mlm_loss']:.3f}",
                    nsp=f"{losses['nsp_loss']:.3f}",
                    tok_s=f"{window.tokens_per_s:,.0f}",
                    refresh=False,
                )
                if self.step % args.log_every == 0:
                    self.metrics.write(
                        {
                            "step": self.step,
                            "split": "train",
                            **window.means(),
                            "lr": self.scheduler.get_last_lr()[0],
                            "tokens_per_s": window.tokens_per_s,
                            "tokens_seen": self.tokens_seen,
                            "rss_mb": resident_mb(),
                        }
                    )
                    window.reset()
                if self.step % args.eval_every == 0 or self.step == args.steps:
                    self._evaluate_and_log()
                    self._plot()
                if stop.should_stop(self.rt):
                    break
                if self.step % args.save_every == 0 and self.step < end:
                    self.save()
            self.save()
        finally:
            bar.close()
            stop.restore()
        self._plot()
        if self.rt.is_main:
            how = "stopped by signal" if stop.received else "done"
            print(
                f"{how} at step {self.step}; checkpoint {self.state_path}, model {self.out / MODEL_FILENAME}"
            )
            if self.last_valid:
                print("valid: " + ", ".join(f"{k} {v:.4f}" for k, v in self.last_valid.items()))
        return stop.exit_code if stop.received else 0

    def _plot(self) -> None:
        if not self.rt.is_main:
            return
        with contextlib.suppress(CLIError):  # nothing to draw yet
            plot_run(self.out)
