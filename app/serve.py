"""`pocketbert serve`: start uvicorn on the web app.

Options default to the same settings the app reads (POCKETBERT_* environment variables); options given
on the command line are written back to the environment, which is how they reach the app in each
uvicorn worker process (`create_app` reads Settings() there). Nothing heavy is imported at module top,
so `pocketbert --help` stays instant.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.settings import Settings

    defaults = Settings()
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
        help="model used when a request names none (default: first bundle by name)",
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

    from app.settings import ENV_PREFIX, Settings

    overrides = {
        "BUNDLES": ",".join(args.bundles) if args.bundles else None,
        "DEFAULT_MODEL": args.default_model,
        "MAX_BATCH_SIZE": args.max_batch_size,
        "MAX_WAIT_MS": args.max_wait_ms,
        "LOG_LEVEL": args.log_level,
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[ENV_PREFIX + key] = str(value)
    Settings()  # fail here, with pydantic's message, rather than inside every worker
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0
