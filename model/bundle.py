"""Model bundles: the folder `pocketbert export` writes and the web service loads.

A bundle is a folder with `bundle.json` (format version, model config, special token ids, label names,
metrics, checks, the sha256 of every other file) beside the files it lists. `tokenizer.model` and
`pretraining.onnx` are required; `classifier.onnx` (classification), `attention.onnx` (attention maps)
and `reference.json` (a self-test: a few inputs and the outputs the graphs gave at export) are optional,
so a bundle of a model that was never fine-tuned serves fill-mask and next-sentence. `weights.bin` holds
the graphs' large initializers as ONNX external data, each distinct tensor once (the pretraining and
attention graphs share the pretrained encoder); bundles whose graphs hold their weights inline have none.

Loading verifies the manifest before any onnxruntime session is created, so a damaged or too-new bundle
is reported in one precise sentence instead of an error from deep inside onnxruntime. The reference
self-test (`check_reference`) then catches what checksums cannot: a graph or tokenizer replaced together
with its checksum. Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from model.tokenizer import file_sha256

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
TOKENIZER_FILE = "tokenizer.model"
PRETRAINING_FILE = "pretraining.onnx"
CLASSIFIER_FILE = "classifier.onnx"
ATTENTION_FILE = "attention.onnx"
REFERENCE_FILE = "reference.json"
WEIGHTS_FILE = "weights.bin"  # the graphs' large initializers, each distinct tensor once (ONNX external data)
REQUIRED_FILES = (TOKENIZER_FILE, PRETRAINING_FILE)
OPTIONAL_FILES = (CLASSIFIER_FILE, ATTENTION_FILE, REFERENCE_FILE, WEIGHTS_FILE)
BUNDLE_FILES = (*REQUIRED_FILES, *OPTIONAL_FILES)
REQUIRED_KEYS = ("format_version", "config", "max_length", "special_tokens", "files")
REFERENCE_FORMAT = 1
# Tolerance of the self-test: |found - expected| <= atol + rtol * scale, the scale being the largest
# |expected| of that output over all the cases (a near-zero logit is held to the output's usual size:
# kernel differences are absolute, so a bound relative to one small case would fail a sound graph).
# Outputs differ between CPUs (instruction sets, INT8 kernels) by far less; a replaced or corrupted graph
# by far more. INT8 graphs get a wider rtol (REFERENCE_RTOL_INT8): their kernels differ most between CPUs
# (AVX2's u8s8 products saturate, VNNI's do not: the shipped bundles' logits moved by up to 0.1 between
# the two, 3% of their scale).
REFERENCE_ATOL = 1e-4
REFERENCE_RTOL = 1e-2
REFERENCE_RTOL_INT8 = 5e-2


class BundleError(ValueError):
    """A bundle folder that cannot be served; the message names the bundle and exactly what is wrong."""


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse bundle.json and check its format version and required keys (no checksums yet)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir}: no such folder")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"bundle {bundle_dir}: missing file {MANIFEST} (not a bundle written by `pocketbert export`)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST} is not a JSON object")
    version = info.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {bundle_dir}: format version {version} is newer than this pocketbert supports "
            f"({FORMAT_VERSION}); upgrade pocketbert or re-export the bundle"
        )
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST} lacks the key(s) {', '.join(missing)}")
    if not isinstance(info["files"], dict):
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST}'s files is not an object of name -> sha256")
    return info


def verify_files(bundle_dir: str | Path, info: dict[str, Any]) -> None:
    """Every required file is listed and present, and every listed file has its recorded sha256."""
    bundle_dir = Path(bundle_dir)
    files: dict[str, str] = info["files"]
    unlisted = [name for name in REQUIRED_FILES if name not in files]
    if unlisted:
        raise BundleError(f"bundle {bundle_dir}: {MANIFEST} does not list {', '.join(unlisted)}")
    absent = [name for name in files if not (bundle_dir / name).is_file()]
    if absent:
        raise BundleError(f"bundle {bundle_dir}: missing file(s) {', '.join(absent)}")
    for name, expected in files.items():
        found = file_sha256(bundle_dir / name)
        if found != expected:
            raise BundleError(
                f"bundle {bundle_dir}: {name} changed since export (sha256 {found[:12]}..., "
                f"{MANIFEST} records {expected[:12]}...); re-export the bundle"
            )


def load_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """read_manifest + verify_files: the parsed bundle.json of a bundle that is safe to load."""
    info = read_manifest(bundle_dir)
    verify_files(bundle_dir, info)
    return info


def checksums(bundle_dir: str | Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of the named files of a folder, for the manifest's "files".

    The named files must exist; every optional bundle file (OPTIONAL_FILES) present in the folder is
    added too, because a bundle must list each file it holds for the loader to serve (and check) it.
    """
    bundle_dir = Path(bundle_dir)
    wanted = set(names) | {name for name in OPTIONAL_FILES if (bundle_dir / name).is_file()}
    return {name: file_sha256(bundle_dir / name) for name in sorted(wanted)}


def graphs_bytes(bundle_dir: str | Path) -> int:
    """Bytes of the model itself: the ONNX graphs and their shared weights file."""
    return sum(f.stat().st_size for f in Path(bundle_dir).iterdir() if f.suffix in (".onnx", ".bin"))


def bundle_tasks(info: dict[str, Any]) -> list[str]:
    """The tasks a bundle serves, from the files its manifest lists."""
    files = info.get("files", {})
    tasks = ["fill-mask", "next-sentence"]
    if CLASSIFIER_FILE in files:
        tasks.append("classify")
    if ATTENTION_FILE in files:
        tasks.append("attention")
    return tasks


def json_text(data: Any) -> str:
    """The project's JSON files as text: indented, Hangul kept readable (not \\uXXXX), newline-ended."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to path through a temporary file in the same folder, so a reader never sees half."""
    write_texts_atomic({path: json_text(data)})


def write_texts_atomic(texts: dict[Path, str]) -> None:
    """Write each text to its path through a temporary file beside it, and rename them into place only once
    every one is written: a failure while writing leaves every path as it was, and no reader sees half."""
    temporaries: dict[Path, str] = {}
    try:
        for path, text in texts.items():
            fd, temporaries[path] = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(temporaries[path], 0o644)
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporaries.values():
            Path(tmp).unlink(missing_ok=True)


# --- reference self-test ------------------------------------------------------------------------------
def add_reference(bundle_dir: str | Path, reference: dict[str, Any]) -> None:
    """Write reference.json into a bundle and record its sha256 in bundle.json (the manifest is rewritten;
    every other file is unchanged)."""
    bundle_dir = Path(bundle_dir)
    write_json_atomic(bundle_dir / REFERENCE_FILE, reference)
    manifest = bundle_dir / MANIFEST
    info = json.loads(manifest.read_text(encoding="utf-8"))
    info["files"] = {**info["files"], REFERENCE_FILE: file_sha256(bundle_dir / REFERENCE_FILE)}
    write_json_atomic(manifest, info)


def read_reference(bundle_dir: str | Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's reference.json, or None for a bundle without one (bundles made before it existed)."""
    bundle_dir = Path(bundle_dir)
    if REFERENCE_FILE not in info["files"]:
        return None
    try:
        reference = json.loads((bundle_dir / REFERENCE_FILE).read_text(encoding="utf-8"))
        version = reference["format"]
        cases = reference["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle {bundle_dir}: {REFERENCE_FILE} is unreadable ({exc!r})") from exc
    if not isinstance(version, int) or version > REFERENCE_FORMAT:
        raise BundleError(
            f"bundle {bundle_dir}: {REFERENCE_FILE} format {version!r} is not one this pocketbert reads "
            f"({REFERENCE_FORMAT})"
        )
    if not isinstance(cases, list) or not cases:
        raise BundleError(f"bundle {bundle_dir}: {REFERENCE_FILE} holds no cases")
    return reference


def compare_outputs(
    bundle_dir: Path, file: str, what: str, found: Any, expected: Any, tolerance: float
) -> None:
    """Raise a BundleError naming `file` when found and expected differ by more than `tolerance`."""
    found_array = np.asarray(found, dtype=np.float64)
    expected_array = np.asarray(expected, dtype=np.float64)
    if found_array.shape != expected_array.shape:
        raise BundleError(
            f"bundle {bundle_dir}: {file} disagrees with {REFERENCE_FILE}: {what} has shape "
            f"{found_array.shape}, expected {expected_array.shape}"
        )
    if not found_array.size:
        return
    worst = float(np.abs(found_array - expected_array).max()) if np.isfinite(found_array).all() else np.inf
    if worst > tolerance:
        raise BundleError(
            f"bundle {bundle_dir}: {file} disagrees with {REFERENCE_FILE}: {what} differs by up to "
            f"{worst:.4g} (tolerance {tolerance:.3g}); the graph is not the model the bundle was exported "
            "with: re-export it"
        )


def output_scale(bundle_dir: Path, cases: list[Any], key: str) -> float:
    """The largest |value| of output `key` over all the cases that record it: its tolerance's scale."""
    scale = 0.0
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or key not in case:
            continue
        try:
            values = np.abs(np.asarray(case[key], dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise BundleError(
                f"bundle {bundle_dir}: {REFERENCE_FILE} case {index} {key} is malformed"
            ) from exc
        scale = max(scale, float(values.max()) if values.size else 0.0)
    return scale


def check_cases(
    bundle_dir: Path,
    reference: dict[str, Any],
    encode: Callable[[str, str | None], list[int]],
    run_case: Callable[[dict[str, Any]], dict[str, tuple[str, Any]]],
) -> None:
    """Run every reference case: the tokenizer must give the recorded ids and each graph output must
    match. run_case(case) returns {output key: (graph file, value)} for the outputs it computed."""
    atol = float(reference.get("atol", REFERENCE_ATOL))
    rtol = float(reference.get("rtol", REFERENCE_RTOL))
    scale: dict[str, float] = {}  # per output, computed when first compared
    for index, case in enumerate(reference["cases"]):
        try:
            text, pair, expected_ids = case["text"], case.get("pair"), case["input_ids"]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"bundle {bundle_dir}: {REFERENCE_FILE} case {index} is malformed") from exc
        if encode(text, pair) != list(expected_ids):
            raise BundleError(
                f"bundle {bundle_dir}: {TOKENIZER_FILE} encodes {REFERENCE_FILE}'s case {index} "
                "differently from the tokenizer the model was exported with (a swapped tokenizer?)"
            )
        for key, (file, value) in run_case(case).items():
            if key not in case:
                raise BundleError(
                    f"bundle {bundle_dir}: {REFERENCE_FILE} case {index} lacks {key} although {file} "
                    "is in the bundle; re-export it"
                )
            if key not in scale:
                scale[key] = output_scale(bundle_dir, reference["cases"], key)
            tolerance = atol + rtol * scale[key]
            compare_outputs(bundle_dir, file, f"{key} of case {index}", value, case[key], tolerance)
