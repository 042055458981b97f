"""Model bundles: the folder `pocketbert export` writes and the web service loads.

A bundle is a folder with `bundle.json` (format version, model config, special token ids, label names,
metrics, checks, the sha256 of every other file) beside the files it lists: `tokenizer.model`,
`pretraining.onnx`, `classifier.onnx`, `attention.onnx`. Loading verifies the manifest before any
onnxruntime session is created, so a damaged or too-new bundle is reported in one precise sentence
instead of an error from deep inside onnxruntime. Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.tokenizer import file_sha256

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
TOKENIZER_FILE = "tokenizer.model"
PRETRAINING_FILE = "pretraining.onnx"
CLASSIFIER_FILE = "classifier.onnx"
ATTENTION_FILE = "attention.onnx"
REQUIRED_FILES = (TOKENIZER_FILE, PRETRAINING_FILE, CLASSIFIER_FILE, ATTENTION_FILE)
REQUIRED_KEYS = ("format_version", "config", "max_length", "special_tokens", "label_names", "files")


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


def checksums(bundle_dir: str | Path, names: list[str]) -> dict[str, str]:
    """sha256 of the named files of a folder, for the manifest's "files"."""
    return {name: file_sha256(Path(bundle_dir) / name) for name in sorted(names)}
