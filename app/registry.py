"""The served models: bundles found in the configured folders, each with one batching queue per task it
offers, and the routing of a request to one of them.

A configured folder is either a bundle (it holds bundle.json) or a folder of bundles (each subfolder
holding bundle.json is one), so `POCKETBERT_BUNDLES=bundles` serves e.g. bundles/en and bundles/ko.
A request that names no model goes to the configured default model, else by language: text with Hangul
to the Korean model, other text to the English one; a request whose texts would go to different models
is refused (422), so every answer comes from one model and says which.

Validation that needs the model's tokenizer (token counts, [MASK] tokens the model will see) lives here
too. It is CPU work, so the service runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.batching import BatchStats, DynamicBatcher
from app.metrics import ServiceMetrics
from app.settings import Settings
from model.tokenizer import MASK_ID, full_length

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"  # same name as model.bundle.MANIFEST; not imported so this module stays light
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")  # jamo, compatibility jamo, syllables
LANGUAGE_NAMES = {"ko": "Korean", "en": "English"}
# Numeric figures shown by /v1/models, looked up in bundle.json's metrics.pretraining / .finetuning.
HEADLINE_KEYS = (
    "mlm_accuracy",
    "nsp_accuracy",
    "dev_acc_mean",
    "dev_acc_std",
    "test_acc_mean",
    "test_acc_std",
    "accuracy_mean",
)


class EngineLike(Protocol):
    """What the service needs of model.engine.Engine (tests may pass fakes honouring it)."""

    name: str
    info: dict
    max_length: int
    label_names: list[str]
    tokenizer: Any
    tasks: list[str]
    language: str

    def fill_mask(
        self, texts: list[str], top_k: int = 5, with_sequence: bool = True, ids: list | None = None
    ) -> list: ...
    def next_sentence(self, pairs: list[tuple[str, str]], ids: list | None = None) -> list[dict]: ...
    def classify(
        self, texts: list[str], top_k: int | None = None, ids: list | None = None
    ) -> list[list[dict]]: ...
    def attention(self, text: str) -> dict: ...


@dataclass
class Checked:
    """What checking a request's texts found: per input whether it is cut to the model's length, and its
    pieces (the batch reuses them: each text is encoded once per request). An input is a text, whose
    pieces are a list of ids, or a sentence pair, whose pieces are a (first, second) tuple of such lists."""

    truncated: list[bool]
    ids: list[Any]


class InputError(ValueError):
    """A request value the model cannot answer; rendered as a 422 naming `loc` (e.g. ("inputs", 2))."""

    def __init__(self, loc: Sequence[str | int], message: str, value: Any = None) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.message = message
        self.value = value


class UnknownModelError(InputError):
    """The request's `model` names no loaded bundle."""


class TaskUnavailableError(Exception):
    """No loaded model offers the task (HTTP 404)."""


def find_bundles(folders: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Bundle folders under the configured folders (a bundle itself, or its subfolders that are), and a
    message per folder that could not be read (e.g. permissions).

    Hidden subfolders are skipped: an export or a recipe stages its bundle in `.NAME.tmp-PID` beside the
    final folder before the atomic rename, and a server started meanwhile must not load that copy."""
    found: list[Path] = []
    errors: list[str] = []
    for folder in folders:
        try:
            if (folder / MANIFEST).is_file():
                found.append(folder)
            elif folder.is_dir():
                subfolders = (p for p in folder.iterdir() if not p.name.startswith("."))
                found.extend(sorted(p for p in subfolders if (p / MANIFEST).is_file()))
        except OSError as exc:
            errors.append(f"cannot read bundle folder {folder}: {exc}")
    return found, errors


def text_language(text: str) -> str:
    """'ko' for text with any Hangul, else 'en' (the two languages this project trains)."""
    return "ko" if HANGUL.search(text) else "en"


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The few numbers a model card leads with, from bundle.json's metrics, where recorded."""
    found: dict[str, float] = {}
    for section in ("pretraining", "finetuning"):
        values = metrics.get(section)
        if not isinstance(values, dict):
            continue
        for key in HEADLINE_KEYS:
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in found:
                found[key] = float(value)
    return found


@dataclass
class ServedModel:
    """One engine and its queues; methods check inputs against the model and queue them."""

    engine: EngineLike
    batchers: dict[str, DynamicBatcher] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def tasks(self) -> list[str]:
        return list(self.engine.tasks)

    @property
    def language(self) -> str:
        return self.engine.language

    def describe(self, is_default: bool) -> dict[str, Any]:
        info = self.engine.info
        metrics = info.get("metrics") or {}
        return {
            "name": self.name,
            "default": is_default,
            "language": self.language,
            "tasks": self.tasks,
            "max_length": self.engine.max_length,
            "labels": list(self.engine.label_names) if "classify" in self.tasks else [],
            "headline": headline(metrics),
            "config": info.get("config", {}),
            "metrics": metrics,
            "bundle": info,
        }

    # --- checks (CPU work: run them in a worker thread) -----------------------------------------------
    def _too_long(self, loc: tuple[str | int, ...], tokens: int) -> InputError:
        limit = self.engine.max_length
        return InputError(
            loc,
            f"the input is {tokens} tokens long ([CLS]/[SEP] included), more than model "
            f'{self.name!r} reads ({limit}); shorten it or send "truncate": true',
            tokens,
        )

    def check_texts(
        self, texts: Sequence[str], truncate: bool, field: str = "inputs", indexed: bool = True
    ) -> Checked:
        """Per text, whether it is cut to max_length; InputError for a long text unless truncate.

        The error's place is (field, index) in a list of texts, or the field alone when it holds one text
        (indexed=False)."""
        checked = Checked([], [])
        for index, text in enumerate(texts):
            ids = self.engine.tokenizer.encode_ids(text)
            tokens = full_length(ids)
            if tokens > self.engine.max_length and not truncate:
                raise self._too_long((field, index) if indexed else (field,), tokens)
            checked.truncated.append(tokens > self.engine.max_length)
            checked.ids.append(ids)
        return checked

    def check_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool) -> Checked:
        """check_texts for sentence pairs ([CLS] A [SEP] B [SEP])."""
        encode = self.engine.tokenizer.encode_ids
        checked = Checked([], [])
        for index, (first, second) in enumerate(pairs):
            ids = (encode(first), encode(second))
            tokens = full_length(*ids)
            if tokens > self.engine.max_length and not truncate:
                raise self._too_long(("pairs", index), tokens)
            checked.truncated.append(tokens > self.engine.max_length)
            checked.ids.append(ids)
        return checked

    def check_masks(self, texts: Sequence[str], top_k: int, truncate: bool, settings: Settings) -> Checked:
        """Every text has 1..max_masks_per_text [MASK] tokens the model will see, the request at most
        max_masks_per_request of them and masks x top_k at most max_predictions."""
        tokenizer, max_length = self.engine.tokenizer, self.engine.max_length
        checked, total = Checked([], []), 0
        for index, text in enumerate(texts):
            ids = tokenizer.encode_ids(text)
            masks = ids.count(MASK_ID)
            if not masks:
                raise InputError(("inputs", index), "the text has no [MASK] token to fill")
            if masks > settings.max_masks_per_text:
                raise InputError(
                    ("inputs", index),
                    f"at most {settings.max_masks_per_text} [MASK] tokens per text, got {masks}",
                    masks,
                )
            tokens = full_length(ids)
            cut = tokens > max_length
            if cut and not truncate:
                raise self._too_long(("inputs", index), tokens)
            # what the model will see: the tokenizer's own truncation, not a copy of its rule
            seen = (
                tokenizer.build_inputs(ids, max_length=max_length).input_ids.count(MASK_ID) if cut else masks
            )
            if not seen:
                raise InputError(
                    ("inputs", index),
                    f"every [MASK] lies beyond the model's maximum length of {max_length} tokens",
                )
            checked.truncated.append(cut)
            checked.ids.append(ids)
            total += seen
        if total > settings.max_masks_per_request:
            raise InputError(
                ("inputs",),
                f"at most {settings.max_masks_per_request} [MASK] tokens per request, got {total}",
                total,
            )
        if total * top_k > settings.max_predictions:
            raise InputError(
                ("top_k",),
                f"{total} [MASK] tokens x top_k {top_k} = {total * top_k} predictions, more than the "
                f"{settings.max_predictions} a request may ask for; lower top_k or send fewer masks",
                top_k,
            )
        return checked

    # --- tasks ---------------------------------------------------------------------------------------
    async def fill_mask(
        self, texts: list[str], checked: Checked, top_k: int, with_sequence: bool, timeout: float
    ) -> list[list[list[dict]]]:
        items = [(t, ids, top_k, with_sequence) for t, ids in zip(texts, checked.ids, strict=True)]
        return await self.batchers["fill-mask"].submit(items, timeout)

    async def next_sentence(
        self, pairs: list[tuple[str, str]], checked: Checked, timeout: float
    ) -> list[dict]:
        items = list(zip(pairs, checked.ids, strict=True))
        return await self.batchers["next-sentence"].submit(items, timeout)

    async def classify(
        self, texts: list[str], checked: Checked, top_k: int | None, timeout: float
    ) -> list[list[dict]]:
        items = [(t, ids, top_k) for t, ids in zip(texts, checked.ids, strict=True)]
        return await self.batchers["classify"].submit(items, timeout)

    async def attention(self, text: str, timeout: float) -> dict:
        (result,) = await self.batchers["attention"].submit([text], timeout)
        return result


def batch_runners(engine: EngineLike) -> dict[str, Callable[[list[Any]], list[Any]]]:
    """Per task the engine offers, the function a batch runs in the worker thread.

    Requests in one batch may ask for different top_k: the batch asks the engine for the largest and
    each request keeps its own first k, which equals what it would get alone (predictions are sorted).
    """

    def fill_mask(items: list[tuple[str, list[int], int, bool]]) -> list[list[list[dict]]]:
        with_sequence = any(s for _, _, _, s in items)
        results = engine.fill_mask(
            [t for t, _, _, _ in items],
            top_k=max(k for _, _, k, _ in items),
            with_sequence=with_sequence,
            ids=[ids for _, ids, _, _ in items],
        )
        out = []
        for (_, _, k, keep), per_mask in zip(items, results, strict=True):
            drop = with_sequence and not keep
            out.append([[_without_sequence(p) if drop else p for p in preds[:k]] for preds in per_mask])
        return out

    def classify(items: list[tuple[str, list[int], int | None]]) -> list[list[dict]]:
        results = engine.classify([t for t, _, _ in items], top_k=None, ids=[ids for _, ids, _ in items])
        return [labels[:k] if k else labels for (_, _, k), labels in zip(items, results, strict=True)]

    def next_sentence(items: list[tuple[tuple[str, str], tuple[list[int], list[int]]]]) -> list[dict]:
        return engine.next_sentence([pair for pair, _ in items], ids=[ids for _, ids in items])

    def attention(texts: list[str]) -> list[dict]:
        return [engine.attention(t) for t in texts]

    runners = {
        "fill-mask": fill_mask,
        "next-sentence": next_sentence,
        "classify": classify,
        "attention": attention,
    }
    return {task: runners[task] for task in engine.tasks}


def _without_sequence(prediction: dict) -> dict:
    return {key: value for key, value in prediction.items() if key != "sequence"}


class ModelRegistry:
    """Loaded models by name, the default one, and the routing of requests to them."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, executor: Executor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.models: dict[str, ServedModel] = {}
        self.default: str | None = None

    @property
    def routing(self) -> str:
        """'default' when a default model is configured, else 'language'."""
        return "default" if self.settings.default_model else "language"

    def add(self, engine: EngineLike) -> ServedModel:
        """Serve `engine` under its name, with a queue per task it offers."""
        if engine.name in self.models:
            raise ValueError(f"two bundles are named {engine.name!r}; give them different names")
        served = ServedModel(engine)
        for task, runner in batch_runners(engine).items():
            attention = task == "attention"
            served.batchers[task] = DynamicBatcher(
                run_batch=runner,
                executor=self.executor,
                # An attention map is one large answer per text: no point waiting to batch them.
                max_batch_size=1 if attention else self.settings.max_batch_size,
                max_wait_s=0.0 if attention else self.settings.max_wait_ms / 1000.0,
                max_queue=self.settings.attention_max_queue if attention else self.settings.max_queue,
                name=f"{engine.name}/{task}",
                stats=self._stats(engine.name, task),
            )
        self.models[engine.name] = served
        return served

    def _stats(self, model: str, task: str) -> BatchStats:
        m = self.metrics
        batch_size, batch_latency = m.batch_size.labels(model, task), m.batch_latency.labels(model, task)
        depth, rejected = m.queue_depth.labels(model, task), m.rejected.labels(model, task)

        def on_batch(size: int, seconds: float) -> None:
            batch_size.observe(size)
            batch_latency.observe(seconds)

        depth.set(0)
        return BatchStats(on_batch=on_batch, on_depth=depth.set, on_reject=rejected.inc)

    def load_bundles(self) -> list[str]:
        """Open every bundle under settings.bundles (checksums, consistency, reference self-test); returns
        one message per bundle that failed, naming the file and the reason."""
        from model.bundle import BundleError
        from model.engine import Engine

        paths, errors = find_bundles(self.settings.bundles)
        if not paths and not errors:
            folders = ", ".join(str(p) for p in self.settings.bundles)
            source = (
                "POCKETBERT_BUNDLES"
                if "bundles" in self.settings.model_fields_set
                else "the default; set POCKETBERT_BUNDLES"
            )
            errors.append(f"no bundle (a folder with {MANIFEST}) found in {folders} ({source})")
        for path in paths:
            try:
                # No spinning: threads waiting for the next operator would take the event loop's CPU.
                threads, plan = self.settings.inference_threads, self.settings.engine_plan
                engine = Engine.load(path, intra_op_threads=threads, plan=plan, spinning=False)
                self.add(engine)
                log.info(
                    "serving bundle %s (%s) from %s; plans: %s",
                    engine.name,
                    engine.language,
                    path,
                    engine.plans,
                )
            except (BundleError, ValueError, OSError) as exc:
                errors.append(str(exc))
        return errors

    def choose_default(self) -> str | None:
        """The configured default model (None when it is not loaded), else the first by name."""
        wanted = self.settings.default_model
        if wanted:
            self.default = wanted if wanted in self.models else None
        else:
            self.default = min(self.models) if self.models else None
        return self.default

    def get(self, name: str | None) -> ServedModel:
        """The model a request names, or the default; UnknownModelError (a 422) otherwise."""
        key = name or self.default
        if key is None or key not in self.models:
            loaded = ", ".join(sorted(self.models)) or "none"
            what = f"unknown model {name!r}" if name else "no default model is loaded"
            raise UnknownModelError(("model",), f"{what}; loaded models: {loaded}", name)
        return self.models[key]

    def route(self, task: str, name: str | None, languages: Sequence[str], field: str) -> ServedModel:
        """The model that answers a request for `task` whose inputs have `languages` (one per input)."""
        offering = [m for _, m in sorted(self.models.items()) if task in m.tasks]
        if name:
            model = self.get(name)
            if task not in model.tasks:
                others = ", ".join(m.name for m in offering) or "none"
                raise InputError(
                    ("model",),
                    f"model {name!r} does not offer {task} (it offers {', '.join(model.tasks)}); "
                    f"models that do: {others}",
                    name,
                )
            return model
        if not offering:
            raise TaskUnavailableError(f"no loaded model offers {task}")
        default = self.models.get(self.default or "")
        if self.settings.default_model and default is not None and default in offering:
            return default
        fallback = default if default in offering else offering[0]
        by_language = {m.language: m for m in reversed(offering)}  # the first by name per language
        chosen = [by_language.get(language, fallback) for language in languages]
        if len({m.name for m in chosen}) > 1:
            raise InputError((field,), _mixed_message(field, languages, chosen))
        return chosen[0]

    def warm_up(self) -> None:
        """One inference per task and model (blocking), so the first user request does not pay for
        onnxruntime's lazy initialisation."""
        for served in self.models.values():
            engine = served.engine
            engine.fill_mask(["hello [MASK] world"], top_k=1)
            engine.next_sentence([("hello", "world")])
            if "classify" in served.tasks:
                engine.classify(["hello world"])

    async def close(self) -> None:
        for served in self.models.values():
            for batcher in served.batchers.values():
                await batcher.close()


def _mixed_message(field: str, languages: Sequence[str], chosen: Sequence[ServedModel]) -> str:
    """'the inputs mix languages ...: inputs 0, 2 Korean (model ko); inputs 1 English (model en); ...'."""
    groups: dict[str, list[int]] = {}
    for index, model in enumerate(chosen):
        groups.setdefault(model.name, []).append(index)
    parts = []
    for name, indices in groups.items():
        language = languages[indices[0]]
        where = ", ".join(map(str, indices))
        parts.append(f"{field} {where} {LANGUAGE_NAMES.get(language, language)} (model {name})")
    return (
        f"the {field} mix languages that different models answer: {'; '.join(parts)}; send one language "
        "per request or name a model"
    )
