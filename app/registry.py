"""The served models: bundles found in the configured folders, each with one batching queue per task.

A configured folder is either a bundle (it holds bundle.json) or a folder of bundles (each subfolder
holding bundle.json is one), so `POCKETBERT_BUNDLES=bundles` serves e.g. bundles/en and bundles/ko.
Request validation that needs the model's tokenizer (is there a [MASK] the model will see?) lives
here too, so routes stay thin and the engine only ever receives inputs it can answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.batching import BatchStats, DynamicBatcher
from app.metrics import ServiceMetrics
from app.settings import Settings
from model.tokenizer import MASK_ID

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"  # same name as model.bundle.MANIFEST; not imported so this module stays light
TASKS = ("fill-mask", "next-sentence", "classify", "attention")


class EngineLike(Protocol):
    """What the service needs of model.engine.Engine (tests may pass fakes honouring it)."""

    name: str
    info: dict
    max_length: int
    label_names: list[str]
    tokenizer: Any

    def fill_mask(self, texts: list[str], top_k: int = 5) -> list[list[list[dict]]]: ...
    def next_sentence(self, pairs: list[tuple[str, str]]) -> list[dict]: ...
    def classify(self, texts: list[str], top_k: int | None = None) -> list[list[dict]]: ...
    def attention(self, text: str) -> dict: ...


class InputError(ValueError):
    """A request value the model cannot answer; rendered as a 422 naming `loc` (e.g. ("inputs", 2))."""

    def __init__(self, loc: Sequence[str | int], message: str, value: Any = None) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.message = message
        self.value = value


class UnknownModelError(InputError):
    """The request's `model` names no loaded bundle."""


def find_bundles(folders: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Bundle folders under the configured folders (a bundle itself, or its subfolders that are), and a
    message per folder that could not be read (e.g. permissions)."""
    found: list[Path] = []
    errors: list[str] = []
    for folder in folders:
        try:
            if (folder / MANIFEST).is_file():
                found.append(folder)
            elif folder.is_dir():
                found.extend(sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file()))
        except OSError as exc:
            errors.append(f"cannot read bundle folder {folder}: {exc}")
    return found, errors


@dataclass
class ServedModel:
    """One engine and its queues; methods validate inputs, queue them and return per-input results."""

    engine: EngineLike
    batchers: dict[str, DynamicBatcher] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.engine.name

    def describe(self, is_default: bool) -> dict[str, Any]:
        info = self.engine.info
        return {
            "name": self.name,
            "default": is_default,
            "tasks": list(TASKS),
            "max_length": self.engine.max_length,
            "labels": list(self.engine.label_names),
            "config": info.get("config", {}),
            "metrics": info.get("metrics", {}),
            "bundle": info,
        }

    # --- validation --------------------------------------------------------------------------------
    def check_masks(self, texts: Sequence[str]) -> None:
        """Every text has a [MASK] within the model's max length (the engine truncates the rest)."""
        tokenizer = self.engine.tokenizer
        for index, text in enumerate(texts):
            ids = tokenizer.encode_ids(text)
            if MASK_ID not in ids:
                raise InputError(("inputs", index), "the text has no [MASK] token to fill", texts[index])
            # what the model will see: the tokenizer's own truncation, not a copy of its rule
            if MASK_ID not in tokenizer.build_inputs(ids, max_length=self.engine.max_length).input_ids:
                raise InputError(
                    ("inputs", index),
                    f"every [MASK] lies beyond the model's maximum length of {self.engine.max_length} tokens",
                    texts[index],
                )

    # --- tasks ---------------------------------------------------------------------------------------
    async def fill_mask(self, texts: list[str], top_k: int, timeout: float) -> list[list[list[dict]]]:
        self.check_masks(texts)
        return await self.batchers["fill-mask"].submit([(t, top_k) for t in texts], timeout)

    async def next_sentence(self, pairs: list[tuple[str, str]], timeout: float) -> list[dict]:
        return await self.batchers["next-sentence"].submit(pairs, timeout)

    async def classify(self, texts: list[str], top_k: int | None, timeout: float) -> list[list[dict]]:
        return await self.batchers["classify"].submit([(t, top_k) for t in texts], timeout)

    async def attention(self, text: str, timeout: float) -> dict:
        (result,) = await self.batchers["attention"].submit([text], timeout)
        return result


def batch_runners(engine: EngineLike) -> dict[str, Callable[[list[Any]], list[Any]]]:
    """Per task, the function a batch runs in the worker thread.

    Requests in one batch may ask for different top_k: the batch asks the engine for the largest and
    each request keeps its own first k, which equals what it would get alone (predictions are sorted).
    """

    def fill_mask(items: list[tuple[str, int]]) -> list[list[list[dict]]]:
        results = engine.fill_mask([t for t, _ in items], top_k=max(k for _, k in items))
        return [[preds[:k] for preds in per_mask] for (_, k), per_mask in zip(items, results, strict=True)]

    def classify(items: list[tuple[str, int | None]]) -> list[list[dict]]:
        results = engine.classify([t for t, _ in items], top_k=None)
        return [labels[:k] if k else labels for (_, k), labels in zip(items, results, strict=True)]

    def next_sentence(pairs: list[tuple[str, str]]) -> list[dict]:
        return engine.next_sentence(list(pairs))

    def attention(texts: list[str]) -> list[dict]:
        return [engine.attention(t) for t in texts]

    return {
        "fill-mask": fill_mask,
        "next-sentence": next_sentence,
        "classify": classify,
        "attention": attention,
    }


class ModelRegistry:
    """Loaded models by name plus the default one."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, executor: Executor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.models: dict[str, ServedModel] = {}
        self.default: str | None = None

    def add(self, engine: EngineLike) -> ServedModel:
        """Serve `engine` under its name, with a queue per task."""
        if engine.name in self.models:
            raise ValueError(f"two bundles are named {engine.name!r}; give them different names")
        served = ServedModel(engine)
        for task, runner in batch_runners(engine).items():
            served.batchers[task] = DynamicBatcher(
                run_batch=runner,
                executor=self.executor,
                # An attention map is one large answer per text: no point waiting to batch them.
                max_batch_size=1 if task == "attention" else self.settings.max_batch_size,
                max_wait_s=0.0 if task == "attention" else self.settings.max_wait_ms / 1000.0,
                max_queue=self.settings.max_queue,
                name=f"{engine.name}/{task}",
                stats=self._stats(engine.name, task),
            )
        self.models[engine.name] = served
        return served

    def _stats(self, model: str, task: str) -> BatchStats:
        m = self.metrics

        def on_batch(size: int, seconds: float) -> None:
            m.batch_size.observe(size, model=model, task=task)
            m.batch_latency.observe(seconds, model=model, task=task)

        m.queue_depth.set(0, model=model, task=task)
        return BatchStats(
            on_batch=on_batch,
            on_depth=lambda depth: m.queue_depth.set(depth, model=model, task=task),
            on_reject=lambda: m.rejected.inc(model=model, task=task),
        )

    def load_bundles(self) -> list[str]:
        """Open every bundle under settings.bundles; returns one message per bundle that failed."""
        from model.bundle import BundleError
        from model.engine import Engine

        paths, errors = find_bundles(self.settings.bundles)
        if not paths and not errors:
            folders = ", ".join(str(p) for p in self.settings.bundles)
            errors.append(f"no bundle (a folder with {MANIFEST}) found in {folders}; set POCKETBERT_BUNDLES")
        for path in paths:
            try:
                engine = Engine.load(path, intra_op_threads=self.settings.inference_threads)
                self.add(engine)
                log.info("serving bundle %s from %s", engine.name, path)
            except (BundleError, ValueError, OSError) as exc:
                log.error("cannot serve bundle %s: %s", path, exc)
                errors.append(str(exc))
        self.choose_default()
        return errors

    def choose_default(self) -> None:
        wanted = self.settings.default_model
        if wanted and wanted in self.models:
            self.default = wanted
        elif wanted:
            log.error("default model %r is not loaded; loaded: %s", wanted, sorted(self.models))
            self.default = None
        else:
            self.default = min(self.models) if self.models else None

    def get(self, name: str | None) -> ServedModel:
        """The model a request names, or the default; UnknownModelError (a 422) otherwise."""
        key = name or self.default
        if key is None or key not in self.models:
            loaded = ", ".join(sorted(self.models)) or "none"
            what = f"unknown model {name!r}" if name else "no default model is loaded"
            raise UnknownModelError(("model",), f"{what}; loaded models: {loaded}", name)
        return self.models[key]

    def warm_up(self) -> None:
        """One inference per task and model (blocking: call in a thread), so the first user request
        does not pay for onnxruntime's lazy initialisation."""
        for served in self.models.values():
            engine = served.engine
            engine.fill_mask(["hello [MASK] world"], top_k=1)
            engine.next_sentence([("hello", "world")])
            engine.classify(["hello world"])

    async def close(self) -> None:
        for served in self.models.values():
            for batcher in served.batchers.values():
                await batcher.close()
