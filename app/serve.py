"""`pocketbert serve` (or `python -m app.serve`): start uvicorn on the web app.

Options default to the same settings the app reads (POCKETBERT_* environment variables); options given
on the command line are written back to the environment, which is how they reach the app in each
uvicorn worker process (`app.main:factory` reads Settings() there). A bundles path that holds no bundle
is refused before uvicorn starts, in one line naming what the user gave (the flag, the environment
variable or the default); a bundle that fails to load stops start-up in the factory, also in one line,
with exit status 2. With several workers, the metrics go through prometheus-client's multiprocess mode
(app/metrics.py): PROMETHEUS_MULTIPROC_DIR is the user's folder, emptied at start, or a temporary one
removed at exit. Nothing heavy is imported at module top, so `pocketbert --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        defaults = Settings()
    except ValidationError:  # a bad POCKETBERT_* variable: `run` names it; the help shows the built-in values
        defaults = Settings.model_construct()
    parser.add_argument(
        "--bundles",
        nargs="+",
        metavar="DIR",
        default=None,
        help="bundle folder(s): a bundle, or a folder of bundles "
        f"(default: {','.join(str(p) for p in defaults.bundles)}; env POCKETBERT_BUNDLES)",
    )
    parser.add_argument(
        "--default-model",
        metavar="NAME",
        default=None,
        help="model used when a request names none (default: by the text's language, else the first "
        "bundle by name)",
    )
    parser.add_argument("--host", default=defaults.host, help=f"address to bind (default: {defaults.host})")
    parser.add_argument(
        "--port", type=int, default=defaults.port, help=f"port to bind (default: {defaults.port})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=f"uvicorn worker processes, each loading every bundle (default: {defaults.workers})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"most sequences per inference batch (default: {defaults.max_batch_size})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=None,
        metavar="MS",
        help=f"longest a request waits for its batch to fill (default: {defaults.max_wait_ms:g})",
    )
    parser.add_argument(
        "--log-level",
        default=defaults.log_level,
        choices=["critical", "error", "warning", "info", "debug"],
        help=f"log level (default: {defaults.log_level})",
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from app.settings import ENV_PREFIX, Settings

    overrides = {
        "BUNDLES": ",".join(args.bundles) if args.bundles else None,
        "DEFAULT_MODEL": args.default_model,
        "MAX_BATCH_SIZE": args.max_batch_size,
        "MAX_WAIT_MS": args.max_wait_ms,
        "LOG_LEVEL": args.log_level,
        "WORKERS": args.workers,  # each worker divides the cores by it (Settings.inference_threads)
    }
    if not 0 <= args.port <= 65535:
        print(f"pocketbert serve: --port: must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    from_environment = ENV_PREFIX + "BUNDLES" in os.environ
    for key, value in overrides.items():
        if value is not None:
            os.environ[ENV_PREFIX + key] = str(value)
    try:
        settings = Settings()  # fail here, in one line per setting, rather than inside every worker
    except ValidationError as exc:
        for line in settings_problems(exc, {key for key, value in overrides.items() if value is not None}):
            print(f"pocketbert serve: {line}", file=sys.stderr)
        return 2
    problem = bundles_problem(settings.bundles, bundles_source(bool(args.bundles), from_environment))
    if problem:
        print(f"pocketbert serve: {problem}", file=sys.stderr)
        return 2
    from app.metrics import prepare_multiprocess_dir, remove_multiprocess_dir

    created = prepare_multiprocess_dir(args.workers)  # before the workers start: they inherit it
    try:
        uvicorn.run(
            "app.main:factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
    finally:
        remove_multiprocess_dir(created)
    return 0


def settings_problems(exc: Any, from_flags: set[str]) -> list[str]:
    """pydantic's refusal of the settings as one line per setting, named as the user gave it: the flag
    (--max-batch-size) when it came from one, else the environment variable (POCKETBERT_MAX_BATCH_SIZE)."""
    from app.settings import ENV_PREFIX

    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]).upper() if error.get("loc") else "?"
        name = "--" + key.lower().replace("_", "-") if key in from_flags else ENV_PREFIX + key
        lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return lines


def bundles_source(flag: bool, environment: bool) -> str:
    """How the user named the bundles, for the hint: the flag, the environment variable or the default."""
    if flag:
        return "--bundles"
    return (
        "POCKETBERT_BUNDLES"
        if environment
        else "the default bundles folder (set --bundles or POCKETBERT_BUNDLES)"
    )


def bundles_problem(folders: Sequence[os.PathLike | str], source: str) -> str | None:
    """One line saying why `folders` serve nothing (a missing folder, no bundle in it), or None."""
    from pathlib import Path

    from app.registry import MANIFEST, find_bundles

    paths = [Path(f) for f in folders]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return f"{source}: no such folder {', '.join(missing)}"
    found, errors = find_bundles(paths)
    if errors:
        return f"{source}: {'; '.join(errors)}"
    if not found:
        where = ", ".join(str(p) for p in paths)
        return (
            f"{source}: no bundle in {where} (a bundle is a folder holding {MANIFEST}, or a folder of "
            "them); make one with `pocketbert export` (see README)"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.serve`: the serve command without the training CLI (the Docker image's command)."""
    parser = argparse.ArgumentParser(prog="python -m app.serve", description="Serve model bundles over HTTP.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
