"""`pocketbert export`: a pretraining checkpoint (and optionally a classifier) -> an ONNX bundle the web
service loads. Either may be a model.pt or a trainer's checkpoint.pt.

Steps, all in a scratch folder; the bundle folder appears (by rename) only when every check passed:
1. export pretraining.onnx (MLM logits at masked_positions + NSP), classifier.onnx (with a classifier)
   and attention.onnx from eager-attention copies of the models (training/onnx_utils.py explains the
   exporter choice);
2. parity: onnxruntime vs torch on random padded two-segment batches, max abs <= 1e-4, else refuse;
3. --optimize: onnxruntime's BERT fusions, the skip layer norms split back into Add + LayerNormalization
   (counts recorded), parity again on the fused fp32 graphs;
4. --quantize int8: dynamic INT8, then fill-mask top-1 agreement and classifier accuracy against fp32
   on --eval-text / --eval-dev when given (recorded either way);
5. bundle.json with config, special ids, labels, metrics, checks, versions and every file's sha256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from model.bert import BertForPreTraining
from model.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    bundle_tasks,
    checksums,
    json_text,
)
from model.checkpoint import load_model
from model.engine import Engine, detect_language, make_session, write_reference
from model.tokenizer import MASK_ID, NUM_SPECIAL, SPECIAL_TOKENS, Tokenizer
from training import onnx_utils
from training.errors import CLIError
from training.publish import check_replaceable, staged
from training.tasks import TASK_FORMATS, read_task
from training.textio import iter_lines

PARITY_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.95  # fill-mask top-1 agreement with fp32
INT8_MAX_ACCURACY_DROP = 0.5  # classifier accuracy, in points, against fp32


class ParityError(CLIError):
    """onnxruntime disagrees with torch: the bundle is not written."""


# --- inputs -----------------------------------------------------------------------------------------
def _load_checkpoint(path: str | Path, kind: str):
    try:
        model, metadata = load_model(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if (kind == "pretraining") != isinstance(model, BertForPreTraining):
        raise CLIError(
            f"{path}: expected a {kind} checkpoint, got a "
            f"{'pretraining' if kind != 'pretraining' else 'classification'} one"
        )
    return model, metadata


def _check_tokenizer(tokenizer, metadata: dict[str, Any], vocab_size: int, what: str) -> None:
    if tokenizer.vocab_size != vocab_size:
        raise CLIError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces, the {what} model {vocab_size}"
        )
    recorded = metadata.get("tokenizer_sha256")
    if recorded and recorded != tokenizer.checksum:
        raise CLIError(
            f"tokenizer {tokenizer.path} is not the one the {what} model was trained with (sha256 differs)"
        )


def read_eval_text(path: str | Path, limit: int) -> list[str]:
    """Held-out sentences, one per line (blank lines skipped)."""
    lines = [line.strip() for line in iter_lines([path]) if line.strip()][:limit]
    if not lines:
        raise CLIError(f"{path}: no sentences")
    return lines


def read_eval_dev(
    path: str | Path, task: str, label_names: list[str], limit: int
) -> tuple[list[str], list[int]]:
    """A labelled dev set in one of fine-tuning's formats (training/tasks.py: nsmc, sst2, csv)."""
    data = read_task(task, path, label_names=label_names if task == "csv" else None)
    if data.label_names != label_names:
        raise CLIError(f"{path}: labels {data.label_names} do not match the classifier's {label_names}")
    return data.texts[:limit], data.labels[:limit]


@dataclass
class EvalSets:
    """The held-out data of the INT8 checks, read before the export: a bad file then costs seconds, not
    the minutes of an export that would fail at its end."""

    text_file: str | None = None
    sentences: list[str] | None = None  # --eval-text
    dev_file: str | None = None
    dev_task: str = "csv"
    dev: tuple[list[str], list[int]] | None = None  # --eval-dev: texts, labels


def read_eval_sets(
    eval_text: str | Path | None, eval_dev: str | Path | None, task: str, labels: list[str], limit: int
) -> EvalSets:
    """The files given (either may be None), each read now: CLIError names a bad one."""
    sets = EvalSets(dev_task=task)
    if eval_text is not None:
        sets.text_file, sets.sentences = str(eval_text), read_eval_text(eval_text, limit)
    if eval_dev is not None:
        sets.dev_file, sets.dev = str(eval_dev), read_eval_dev(eval_dev, task, labels, limit)
    return sets


# --- checks -----------------------------------------------------------------------------------------
def random_batches(vocab_size: int, max_length: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Padded batches with two segments and several masked positions, in two different shapes."""
    rng = np.random.default_rng(seed)
    batches = []
    for batch_size, length in ((4, min(max_length, 19)), (1, min(max_length, 7))):
        lengths = rng.integers(3, length + 1, size=batch_size)
        lengths[0] = length  # the longest member sets T
        ids = rng.integers(7, vocab_size, size=(batch_size, length))
        token_type_ids = np.zeros_like(ids)
        attention_mask = np.zeros_like(ids)
        positions = np.zeros((batch_size, 3), dtype=np.int64)
        for row, n in enumerate(lengths):
            ids[row, n:] = 0
            attention_mask[row, :n] = 1
            token_type_ids[row, n // 2 : n] = 1
            positions[row] = rng.integers(1, n, size=3)
        batches.append(
            {
                "input_ids": ids.astype(np.int64),
                "token_type_ids": token_type_ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64),
                "masked_positions": positions,
            }
        )
    return batches


def _torch_outputs(graph, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    with torch.inference_mode():
        out = graph(*(torch.from_numpy(feeds[n]) for n in names))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def check_parity(
    specs: dict, paths: dict[str, Path], batches: list[dict[str, np.ndarray]], threads: int | None
) -> dict[str, float]:
    """Max abs difference per graph between torch and onnxruntime; raises ParityError above tolerance.

    specs: name -> onnx_utils.GraphSpec (the torch side), paths: name -> the ONNX file. Padded entries
    are compared too: every output of these graphs is defined at every position.
    """
    report = {}
    for name, spec in specs.items():
        session = make_session(paths[name], threads)
        worst = 0.0
        for feeds in batches:
            inputs = {n: feeds[n] for n in spec.inputs}
            expected = _torch_outputs(spec.module, inputs, spec.inputs)
            found = session.run(spec.outputs, inputs)
            worst = max([worst] + [float(np.abs(e - f).max()) for e, f in zip(expected, found, strict=True)])
        report[name] = worst
        if not worst <= PARITY_TOLERANCE:
            raise ParityError(
                f"{paths[name].name}: onnxruntime differs from torch by {worst:.3g} (max abs) > "
                f"{PARITY_TOLERANCE}; "
                "bundle not written"
            )
    return report


def fill_mask_agreement(reference, candidate, sentences: list[str], seed: int = 0) -> dict:
    """Mask one random ordinary token per sentence; top-1 agreement of candidate with reference engine.

    Also records how often each recovers the original token (meaningful for a trained model only).
    """
    rng = np.random.default_rng(seed)
    agree = total = ref_correct = cand_correct = 0
    for start in range(0, len(sentences), 32):
        batch = reference.encode(sentences[start : start + 32])
        positions = np.zeros((len(batch.input_ids), 1), dtype=np.int64)
        originals = np.full(len(batch.input_ids), -1)
        for row, ids in enumerate(batch.input_ids):
            ordinary = np.flatnonzero(ids >= NUM_SPECIAL)
            if len(ordinary):  # a sentence of special tokens only is left out of the counts
                positions[row, 0] = rng.choice(ordinary)
                originals[row] = ids[positions[row, 0]]
                ids[positions[row, 0]] = MASK_ID
        valid = originals >= 0
        ref_top = reference.run_pretraining(batch, positions)[0][:, 0].argmax(-1)[valid]
        cand_top = candidate.run_pretraining(batch, positions)[0][:, 0].argmax(-1)[valid]
        agree += int((ref_top == cand_top).sum())
        ref_correct += int((ref_top == originals[valid]).sum())
        cand_correct += int((cand_top == originals[valid]).sum())
        total += int(valid.sum())
    if not total:
        raise CLIError("--eval-text: no sentence has an ordinary token to mask")
    return {
        "sentences": total,
        "top1_agreement": agree / total,
        "fp32_top1_accuracy": ref_correct / total,
        "int8_top1_accuracy": cand_correct / total,
        "passed": agree / total >= INT8_MIN_AGREEMENT,
        "threshold": INT8_MIN_AGREEMENT,
    }


def classifier_accuracy(engine, texts: list[str], labels: list[int]) -> float:
    # texts of similar length share a batch (padded to its longest): the order does not change the count
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    correct = 0
    for start in range(0, len(order), 32):
        rows = order[start : start + 32]
        logits = engine.run_classifier(engine.encode([texts[i] for i in rows]))
        correct += int((logits.argmax(-1) == np.array([labels[i] for i in rows])).sum())
    return 100.0 * correct / len(texts)


# --- the export -------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        out["pocketbert"] = version("pocketbert")
    except PackageNotFoundError:
        out["pocketbert"] = "unknown"
    return out


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[export] {message}", file=sys.stderr, flush=True)


def home_as_tilde(value: Any) -> Any:
    """The manifest with every path under the builder's home folder written as ~/...: a bundle is
    shipped, and the provenance it records (checkpoints, evaluation files) needs no user name."""
    if isinstance(value, dict):
        return {key: home_as_tilde(item) for key, item in value.items()}
    if isinstance(value, list):
        return [home_as_tilde(item) for item in value]
    home = str(Path.home()).rstrip("/") + "/"
    if isinstance(value, str) and home != "/" and value.startswith(home):
        return "~/" + value[len(home) :]
    return value


def export_bundle(
    pretrained: str | Path,
    classifier: str | Path | None,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    quantize: str | None = None,
    optimize: bool = False,
    max_length: int | None = 128,
    eval_text: str | Path | None = None,
    eval_dev: str | Path | None = None,
    eval_task: str | None = None,
    eval_limit: int = 2000,
    overwrite: bool = False,
    threads: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write the bundle folder out_dir atomically and return its bundle.json content.

    classifier=None makes a bundle of the pretraining model alone (fill-mask and next-sentence; no
    classifier.onnx). max_length=None takes the classifier checkpoint's max_length (else 128). eval_task
    is the format of eval_dev (nsmc, sst2, csv): by default the classifier checkpoint's task, else csv.
    Raises CLIError (ParityError when onnxruntime disagrees with torch) and leaves out_dir untouched on
    any failure.
    """
    if quantize not in (None, "int8"):
        raise CLIError(f"--quantize: only 'int8' is supported, got {quantize!r}")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)  # before any work: a refusal should cost nothing
    for flag, path in (("--eval-text", eval_text), ("--eval-dev", eval_dev)):
        if path is not None and not Path(path).is_file():  # fail before minutes of export, not after
            raise CLIError(f"{flag} {path}: no such file")
    if eval_dev is not None and classifier is None:
        raise CLIError("--eval-dev scores the classifier: give --classifier too")
    pre_model, pre_meta = _load_checkpoint(pretrained, "pretraining")
    cls_model, cls_meta = _load_checkpoint(classifier, "classification") if classifier else (None, {})
    tokenizer = Tokenizer(tokenizer_dir)
    _check_tokenizer(tokenizer, pre_meta, pre_model.config.vocab_size, "pretraining")
    label_names: list[str] = []
    if cls_model is not None:
        _check_tokenizer(tokenizer, cls_meta, cls_model.config.vocab_size, "classifier")
        label_names = list(cls_meta.get("label_names") or [f"LABEL_{i}" for i in range(cls_model.num_labels)])
        if len(label_names) != cls_model.num_labels:
            raise CLIError(f"{classifier}: {len(label_names)} label names for {cls_model.num_labels} classes")
    max_length = int(max_length or cls_meta.get("max_length") or 128)
    models = [m for m in (pre_model, cls_model) if m is not None]
    limit = min(m.config.max_position_embeddings for m in models)
    if not 3 <= max_length <= limit:
        raise CLIError(f"max length {max_length} must be between 3 and the models' {limit} positions")
    eval_sets = read_eval_sets(
        eval_text, eval_dev, eval_task or _default_task(cls_meta), label_names, eval_limit
    )

    with staged(out_dir, overwrite) as staging:
        with tempfile.TemporaryDirectory(prefix="pocketbert-export-") as scratch_dir:
            scratch = Path(scratch_dir)
            shutil.copyfile(tokenizer.path, scratch / "tokenizer.model")
            fp32, final, export_report, parity = _build_graphs(
                pre_model, cls_model, scratch, max_length, optimize, quantize, threads, quiet
            )
            int8 = _int8_checks(
                scratch,
                {"max_length": max_length, "label_names": label_names},
                fp32,
                final,
                quantize,
                eval_sets,
                threads,
            )
            shutil.copyfile(tokenizer.path, staging / TOKENIZER_FILE)
            export_report["weights"] = onnx_utils.save_with_shared_weights(final, staging, WEIGHTS_FILE)
        info = _manifest(
            staging,
            out_dir.name,
            pre_model,
            cls_model,
            pre_meta,
            cls_meta,
            tokenizer,
            max_length,
            label_names,
            export_report,
            {"parity": parity, "int8": int8},
            {"pretrained": str(pretrained), "classifier": str(classifier) if classifier else None},
        )
        (staging / MANIFEST).write_text(json_text(home_as_tilde(info)), encoding="utf-8")
        # the graphs' outputs on fixed inputs, re-run at every load: a damaged or mismatched file fails
        # loudly instead of answering wrongly
        write_reference(staging)
        info = json.loads((staging / MANIFEST).read_text(encoding="utf-8"))
        Engine.load(staging)  # the bundle must load as the service will load it
    _log(f"wrote {out_dir}", quiet)
    return info


def _build_graphs(
    pre_model,
    cls_model,
    scratch: Path,
    max_length: int,
    optimize: bool,
    quantize: str | None,
    threads: int | None,
    quiet: bool,
) -> tuple[dict[str, Path], dict[str, Path], dict[str, Any], dict[str, Any]]:
    """Export, check parity, optionally fuse (and check again) and quantize.

    Returns (fp32 graph paths, final graph paths, the manifest's "export" entry, the parity report).
    """
    specs = onnx_utils.bundle_graphs(pre_model, cls_model)
    batches = random_batches(pre_model.config.vocab_size, max_length)
    fp32: dict[str, Path] = {}
    for name, spec in specs.items():
        _log(f"exporting {name}.onnx", quiet)
        fp32[name] = scratch / f"{name}.fp32.onnx"
        example = tuple(torch.from_numpy(batches[0][n]) for n in spec.inputs)
        onnx_utils.export_graph(
            spec.module, example, spec.inputs, spec.outputs, fp32[name], spec.dynamic_outputs
        )
    parity: dict[str, Any] = {
        "tolerance": PARITY_TOLERANCE,
        "fp32": check_parity(specs, fp32, batches, threads),
    }
    _log(f"parity fp32 (max abs): {parity['fp32']}", quiet)

    final = dict(fp32)  # attention.onnx stays unfused: fused Attention cannot output its probabilities
    fast = {"pretraining": pre_model, **({"classifier": cls_model} if cls_model is not None else {})}
    fusions: dict[str, dict[str, int]] = {}
    if optimize:
        for name, model in fast.items():
            final[name] = scratch / f"{name}.opt.onnx"
            fusions[name] = onnx_utils.optimize(
                fp32[name], final[name], model.config.num_attention_heads, model.config.hidden_size
            )
        _log(f"fusions: {fusions}", quiet)
        parity["optimized_fp32"] = check_parity({n: specs[n] for n in fast}, final, batches, threads)
    if quantize == "int8":
        # attention.onnx too (unfused, so its MatMuls quantize as they are): a quarter of the fp32 size,
        # and its maps are those of INT8 weights, as the served graphs are
        for name in final:
            quantized = scratch / f"{name}.int8.onnx"
            onnx_utils.quantize_int8(final[name], quantized)
            final[name] = quantized
    export_report = {
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "opset": onnx_utils.OPSET,
        "optimized": optimize,
        "fusions": fusions or None,
        "quantization": quantize,
        "graphs": {
            f"{name}.onnx": {"inputs": spec.inputs, "outputs": spec.outputs} for name, spec in specs.items()
        },
    }
    return fp32, final, export_report, parity


def _manifest(
    staging: Path,
    name: str,
    pre_model,
    cls_model,
    pre_meta: dict,
    cls_meta: dict,
    tokenizer,
    max_length: int,
    label_names: list[str],
    export_report: dict,
    checks: dict,
    sources: dict,
) -> dict[str, Any]:
    """The content of bundle.json (see model/bundle.py for what loading requires of it)."""
    files = checksums(staging, list(REQUIRED_FILES))
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": pre_model.config.to_dict(),
        "classifier_config": cls_model.config.to_dict() if cls_model is not None else None,
        "max_length": max_length,
        "vocab_size": tokenizer.vocab_size,
        "language": detect_language(tokenizer),  # routes un-named requests (Hangul -> "ko")
        "special_tokens": {token: i for i, token in enumerate(SPECIAL_TOKENS)},
        "label_names": label_names,
        "task": cls_meta.get("task"),
        "tasks": bundle_tasks({"files": files}),
        "metrics": {
            # `pretrain` writes its last validation under "valid"; "metrics" is accepted too
            "pretraining": pre_meta.get("metrics") or pre_meta.get("valid"),
            "pretraining_step": pre_meta.get("step"),
            "finetuning": cls_meta.get("results"),
        },
        "export": export_report,
        "checks": checks,
        "sources": {**sources, "tokenizer_sha256": tokenizer.checksum},
        "versions": _versions(),
        "files": files,
    }


def _default_task(metadata: dict[str, Any]) -> str:
    return metadata.get("task") if metadata.get("task") in TASK_FORMATS else "csv"


def _int8_checks(
    scratch: Path,
    info: dict[str, Any],
    fp32: dict[str, Path],
    final: dict[str, Path],
    quantize: str | None,
    eval_sets: EvalSets,
    threads: int | None,
) -> dict[str, Any]:
    """INT8 vs fp32 on held-out sentences and a dev set; records why a check did not run."""
    if quantize != "int8":
        return {"run": False, "reason": "not quantized"}
    report: dict[str, Any] = {"run": True}
    roles = [name for name in ("pretraining", "classifier") if name in final]
    files = {"tokenizer": TOKENIZER_FILE}
    reference = Engine(
        scratch, info, intra_op_threads=threads, files={**files, **{r: fp32[r].name for r in roles}}
    )
    candidate = Engine(
        scratch, info, intra_op_threads=threads, files={**files, **{r: final[r].name for r in roles}}
    )
    if eval_sets.sentences is None:
        report["fill_mask"] = {"run": False, "reason": "no --eval-text given"}
    else:
        report["fill_mask"] = {
            "run": True,
            "file": eval_sets.text_file,
            **fill_mask_agreement(reference, candidate, eval_sets.sentences),
        }
    if eval_sets.dev is None:
        report["classifier"] = {"run": False, "reason": "no --eval-dev given"}
    else:
        texts, labels = eval_sets.dev
        fp32_acc = classifier_accuracy(reference, texts, labels)
        int8_acc = classifier_accuracy(candidate, texts, labels)
        report["classifier"] = {
            "run": True,
            "file": eval_sets.dev_file,
            "task": eval_sets.dev_task,
            "examples": len(texts),
            "fp32_accuracy": fp32_acc,
            "int8_accuracy": int8_acc,
            "drop_points": fp32_acc - int8_acc,
            "passed": fp32_acc - int8_acc <= INT8_MAX_ACCURACY_DROP,
            "threshold_points": INT8_MAX_ACCURACY_DROP,
        }
    return report


# --- CLI --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    info = export_bundle(
        args.pretrained,
        args.classifier,
        args.tokenizer,
        args.out,
        quantize=args.quantize,
        optimize=args.optimize,
        max_length=args.max_length,
        eval_text=args.eval_text,
        eval_dev=args.eval_dev,
        eval_task=args.eval_task,
        eval_limit=args.eval_limit,
        overwrite=args.overwrite,
        threads=args.threads,
        quiet=False,
    )
    print(json.dumps({"bundle": str(args.out), "export": info["export"], "checks": info["checks"]}, indent=2))
    return 0
