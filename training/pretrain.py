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
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import CLIError

INDEX_FILENAME = "index.json"
EVAL_MASK_SEED = 20_240_917  # validation masks are the same at every evaluation, so curves are comparable
# ...and the same whatever the training masking (rate, whole words), so runs with different recipes compare
EVAL_MLM_PROBABILITY = 0.15


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data and output")
    io.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="DIR",
        help="folder(s) written by `pocketbert prepare` with the same tokenizer and length; several "
        "are read as one training set (e.g. Wikipedia + in-domain text), validated on the first",
    )
    io.add_argument(
        "--out", required=True, help="run folder: checkpoint.pt, model.pt, metrics.jsonl, metrics.png"
    )
    io.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt exactly where it stopped (starts fresh if there is none)",
    )

    model = parser.add_argument_group("model (ignored on --resume: the checkpoint's config is used)")
    model.add_argument(
        "--init",
        metavar="MODEL",
        help="start from the weights of a model.pt or checkpoint.pt (its config; a fresh optimiser "
        "and schedule): continued pretraining on other data or with another recipe",
    )
    model.add_argument("--config", help="model config JSON (BertConfig / Hugging Face field names)")
    model.add_argument("--hidden-size", type=int, default=256, help="hidden size (default 256)")
    model.add_argument("--layers", type=int, default=3, help="number of transformer layers (default 3)")
    model.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    model.add_argument("--intermediate-size", type=int, help="feed-forward size (default 4 x hidden size)")
    model.add_argument(
        "--dropout",
        type=float,
        help="hidden and attention dropout (default: the config's, 0.1 for a new model)",
    )

    opt = parser.add_argument_group("optimisation (on --resume, each defaults to the checkpoint's value)")
    opt.add_argument("--batch-size", type=int, help="sequences per micro-batch per process (default 32)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step (default 1)")
    opt.add_argument("--steps", type=int, help="total optimiser steps of the schedule (default 1000)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    opt.add_argument("--warmup", type=int, help="linear warmup steps (default 10%% of --steps)")
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.01)")
    opt.add_argument("--clip", type=float, help="gradient clipping max norm, 0 = off (default 1.0)")
    opt.add_argument("--mlm-probability", type=float, help="share of tokens masked (default 0.15)")
    opt.add_argument(
        "--whole-word-mask",
        action="store_true",
        default=None,
        help="choose whole words (a '▁' piece and the pieces after it) instead of single pieces",
    )
    opt.add_argument(
        "--tokenizer",
        help="tokenizer folder for --whole-word-mask (default: the one the data's index.json records)",
    )
    opt.add_argument("--seed", type=int, help="seed of initialisation, data order and masks (default 0)")

    run_ = parser.add_argument_group("running")
    run_.add_argument(
        "--device", default="auto", help="auto (GPU when present), cpu, cuda or mps (default auto)"
    )
    run_.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="bf16 autocast for matmuls (faster on GPUs and CPUs with AVX512-BF16/AMX; default fp32)",
    )
    run_.add_argument(
        "--compile", action="store_true", help="torch.compile the model (off: it does not pay on CPU)"
    )
    run_.add_argument(
        "--threads", type=int, help="torch CPU threads (default: all cores, split between DDP ranks)"
    )
    run_.add_argument("--eval-every", type=int, default=100, help="evaluate on the valid split every N steps")
    run_.add_argument(
        "--eval-batches", type=int, default=50, help="validation batches per evaluation (default 50)"
    )
    run_.add_argument(
        "--save-every", type=int, default=500, help="write checkpoint.pt every N steps (and at the end)"
    )
    run_.add_argument("--log-every", type=int, default=10, help="write a training metrics row every N steps")
    run_.add_argument(
        "--stop-at",
        type=int,
        help="save and stop after this step, keeping the schedule of --steps (to pause a run)",
    )


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


def run(args: argparse.Namespace) -> int:
    from training.checkpointing import STATE_FILENAME, load_training_state
    from training.runtime import setup, teardown

    state_path = Path(args.out) / STATE_FILENAME
    resume_state = load_training_state(state_path) if args.resume and state_path.is_file() else None
    fill_run_options(args, resume_state["args"] if resume_state else {})
    _check_args(args)
    runtime = setup(args.device, args.threads)
    try:
        return Trainer(args, runtime, resume_state).train()
    finally:
        teardown()


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
    for name, default in RUN_DEFAULTS.items():
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


def _check_args(args: argparse.Namespace) -> None:
    for name in (
        "batch_size",
        "grad_accum",
        "steps",
        "eval_every",
        "eval_batches",
        "save_every",
        "log_every",
    ):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    if args.warmup is None:
        args.warmup = max(1, args.steps // 10)
    if not 0 < args.mlm_probability < 1:
        raise CLIError(f"--mlm-probability must be between 0 and 1, got {args.mlm_probability}")


def read_index(data_dirs: str | Path | list) -> dict[str, Any]:
    """The index.json of the (first) prepared folder; several folders must share tokenizer and length."""
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    indexes = [_read_one_index(d) for d in dirs]
    first = indexes[0]
    for folder, index in zip(dirs[1:], indexes[1:], strict=True):
        for key in ("tokenizer_sha256", "max_length", "vocab_size"):
            if index.get(key) != first.get(key):
                raise CLIError(
                    f"{folder}: {key} {index.get(key)!r} differs from {dirs[0]}'s {first.get(key)!r}; "
                    "prepare every --data folder with the same tokenizer and --max-length"
                )
    return first


def _read_one_index(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / INDEX_FILENAME
    if not path.is_file():
        raise CLIError(f"{path}: not found; make the data folder with `pocketbert prepare`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    for key in ("vocab_size", "max_length", "splits"):
        if key not in index:
            raise CLIError(f"{path}: missing '{key}'; remake the data folder with `pocketbert prepare`")
    return index


def build_config(args: argparse.Namespace, index: dict[str, Any]):
    """The model config from --config or the size flags; vocabulary and length come from the data."""
    from model.config import BertConfig

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


def read_init(path: str | Path, index: dict[str, Any]):
    """The weights --init starts from, checked against the data's vocabulary and tokenizer."""
    from model.checkpoint import read_weights

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
):
    """The micro-batches (tensors of example indices) this rank reads in `epoch`.

    One permutation per epoch, dealt round-robin to the ranks and cut to equal lengths, so every rank
    takes the same number of steps (DDP needs that) and together they read each example once.
    With several data folders (`sizes` = their instance counts, concatenated in that order) each folder
    is cut into batches of its own and the batches are then shuffled together: a batch never mixes
    folders, so a batch of short in-domain reviews stays short instead of padding to Wikipedia's length.
    """
    import torch

    from training.runtime import derived_generator

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
        dataset,
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

    def _epoch(self, epoch: int) -> list:
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

    def next(self) -> dict:
        from training.dataset import collate

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

    def __init__(self, args: argparse.Namespace, runtime, resume_state: dict | None = None) -> None:
        import torch

        from model.bert import BertForPreTraining
        from training.checkpointing import STATE_FILENAME
        from training.dataset import PretrainingDataset
        from training.optim import build_optimizer, build_scheduler
        from training.runtime import seed_everything, set_rng_state

        self.args = args
        self.rt = runtime
        self.out = Path(args.out)
        self.index = read_index(args.data)
        self.state_path = self.out / STATE_FILENAME
        init = None
        if resume_state is not None:
            from model.config import BertConfig

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
        self.optimizer = build_optimizer(self.model, args.lr, args.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, args.warmup, args.steps)
        self.step = 0
        self.tokens_seen = 0
        self.position = DataPosition()
        self.last_valid: dict[str, float] = {}
        if resume_state is not None:
            self._restore(resume_state)
            set_rng_state(self._rank_rng(resume_state))

        try:
            splits = [PretrainingDataset(folder, split="train") for folder in args.data]
            self.train_data = splits[0] if len(splits) == 1 else torch.utils.data.ConcatDataset(splits)
            self.valid_data = PretrainingDataset(args.data[0], split="valid")
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise CLIError(f"{' '.join(args.data)}: cannot open the prepared data ({exc})") from exc
        self.stream = BatchStream(
            self.train_data, args.batch_size, args.seed, runtime.rank, runtime.world_size, self.position
        )

        self.train_model = self.model
        if args.compile:
            self.train_model = torch.compile(self.train_model)
        if runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)
        self.autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
        self.word_starts = self._word_start_table() if args.whole_word_mask else None  # (V,) bool
        if runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._trim_metrics()

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
        from training.optim import warmup_linear_decay

        self.scheduler.base_lrs = [self.args.lr for _ in self.optimizer.param_groups]
        factor = warmup_linear_decay(self.step, self.args.warmup, self.args.steps)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.args.lr
            group["lr"] = self.args.lr * factor
        self.optimizer.param_groups[0]["weight_decay"] = (
            self.args.weight_decay
        )  # the matrices (optim.param_groups)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _rank_rng(self, state: dict) -> dict:
        """This rank's RNG state; a run resumed with a different process count re-derives one."""
        from training.runtime import rng_state, seed_everything

        states = state["rng"]
        if len(states) == self.rt.world_size:
            return states[self.rt.rank]
        seed_everything(self.args.seed * 1_000_003 + self.step * 101 + self.rt.rank)
        return rng_state()

    def save(self) -> None:
        """checkpoint.pt (training state) and model.pt (export format), both atomic; rank 0 writes."""
        import torch.distributed as dist

        from model.checkpoint import save_model
        from training.checkpointing import save_training_state
        from training.runtime import rng_state

        digests = self._rank_weight_digests()  # collective: every rank takes part
        rng = [rng_state()]
        if self.rt.distributed:
            gathered: list = [None] * self.rt.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not self.rt.is_main:
            return
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
                "metadata": self._model_metadata(),
            },
        )
        save_model(self.out / "model.pt", self.model, self._model_metadata())
        self.config.to_json(self.out / "config.json")

    def _rank_weight_digests(self) -> list[str]:
        """sha256 of the weights on every rank: DDP keeps the replicas identical, and this proves it.

        All ranks hash their own parameters and gather the digests; rank 0 warns if they differ.
        """
        import hashlib

        import torch
        import torch.distributed as dist

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

    # --- metrics ------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        from training.plot import METRICS_FILENAME

        return self.out / METRICS_FILENAME

    def _trim_metrics(self) -> None:
        """Drop rows written after the checkpoint we resume from (the run died before saving them)."""
        if not self.metrics_path.is_file():
            return
        if self.step == 0:  # a fresh run in an old folder starts a fresh log
            self.metrics_path.unlink()
            return
        keep = [
            line
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= self.step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        if self.rt.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    # --- one step -----------------------------------------------------------------------------------
    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.rt.device.type, dtype=self.autocast_dtype)

    def _word_start_table(self):
        """Which vocabulary ids begin a word, from the tokenizer the data was prepared with."""
        from model.tokenizer import resolve_tokenizer
        from training.masking import word_start_table

        recorded = {
            "tokenizer": self.index.get("args", {}).get("tokenizer"),
            "tokenizer_sha256": self.index.get("tokenizer_sha256"),
        }
        tokenizer = resolve_tokenizer(self.args.tokenizer, recorded, f"{self.args.data[0]}/{INDEX_FILENAME}")
        return word_start_table(tokenizer)

    def _mask(self, batch: dict, generator) -> tuple:
        from training.masking import mask_tokens

        word_starts = None if self.word_starts is None else self.word_starts[batch["input_ids"]]  # (B, T)
        return mask_tokens(
            batch["input_ids"],
            self.config.vocab_size,
            generator=generator,
            mlm_probability=self.args.mlm_probability,
            word_starts=word_starts,
        )

    def train_step(self) -> dict[str, float]:
        """grad_accum micro-batches -> one clipped optimiser step; returns this step's mean losses."""
        import torch

        from training.runtime import derived_generator

        args, dev = self.args, self.rt.device
        self.train_model.train()
        totals = {"loss": 0.0, "mlm_loss": 0.0, "nsp_loss": 0.0}
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
        if args.clip > 0:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens * self.rt.world_size
        totals["tokens"] = tokens
        return totals

    # --- evaluation ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """MLM and NSP loss and accuracy over the first --eval-batches batches of the valid split.

        The masks come from a fixed generator with BERT's standard masking (15% of single pieces), so
        every evaluation of every run scores the same masked positions, whatever its training masking.
        """
        import torch

        from model.bert import IGNORE_INDEX
        from training.dataset import collate
        from training.masking import mask_tokens
        from training.runtime import derived_generator

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
        import torch.distributed as dist

        if self.rt.is_main:
            self.last_valid = self.evaluate()
            self.log({"step": self.step, "split": "valid", **self.last_valid})
        if self.rt.distributed:
            dist.barrier()

    # --- the loop -----------------------------------------------------------------------------------
    def train(self) -> int:
        from tqdm import tqdm

        from training.runtime import StopSignal

        args = self.args
        end = min(args.steps, args.stop_at) if args.stop_at else args.steps
        stop = StopSignal().install()
        bar = tqdm(
            total=args.steps,
            initial=self.step,
            disable=not self.rt.is_main,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        window: dict[str, float] = {}
        window_steps, window_tokens, window_time = 0, 0, 0.0  # time spent in train steps only
        try:
            if self.step == 0:
                self._evaluate_and_log()  # the untrained baseline: the curves start at chance
            while self.step < end:
                started = time.perf_counter()
                losses = self.train_step()
                window_time += time.perf_counter() - started
                for key in ("loss", "mlm_loss", "nsp_loss"):
                    window[key] = window.get(key, 0.0) + losses[key]
                window_steps += 1
                window_tokens += int(losses["tokens"])
                tokens_per_s = window_tokens * self.rt.world_size / max(window_time, 1e-9)  # all ranks
                bar.update(1)
                bar.set_postfix(
                    loss=f"{losses['loss']:.3f}",
                    mlm=f"{losses['mlm_loss']:.3f}",
                    nsp=f"{losses['nsp_loss']:.3f}",
                    tok_s=f"{tokens_per_s:,.0f}",
                    refresh=False,
                )
                if self.step % args.log_every == 0:
                    self.log(
                        {
                            "step": self.step,
                            "split": "train",
                            **{k: v / window_steps for k, v in window.items()},
                            "lr": self.scheduler.get_last_lr()[0],
                            "tokens_per_s": tokens_per_s,
                            "tokens_seen": self.tokens_seen,
                        }
                    )
                    window, window_steps, window_tokens, window_time = {}, 0, 0, 0.0
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
            print(f"{how} at step {self.step}; checkpoint {self.state_path}, model {self.out / 'model.pt'}")
            if self.last_valid:
                print("valid: " + ", ".join(f"{k} {v:.4f}" for k, v in self.last_valid.items()))
        return stop.exit_code if stop.received else 0

    def _plot(self) -> None:
        if not self.rt.is_main:
            return
        from training.plot import plot_run

        with contextlib.suppress(CLIError):  # nothing to draw yet
            plot_run(self.out)
