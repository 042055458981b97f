"""Publishing an output folder: build it in a staging folder beside the target, then swap it in.

`pocketbert prepare`, `export` and `export-hf` write their folders this way, so that no reader ever
sees half a folder, a failure leaves the previous output as it was, and what is published is readable
by every user (a server or a container often runs as another user than the one who trained):

    with staged(out_dir, overwrite) as staging:
        ...write files into staging...
    # here out_dir is the finished folder; had the block raised, staging would be gone and out_dir untouched
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.errors import CLIError

FOLDER_MODE, FILE_MODE = 0o755, 0o644  # published: everyone may read, only the owner may write


@contextmanager
def staged(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """An empty staging folder, published as out_dir when the block ends and removed if it raises.

    overwrite: whether a non-empty out_dir may be replaced (an empty one always is). Checked before the
    block runs, so a refusal costs no work.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)
    staging = _new_staging_dir(out_dir)
    try:
        yield staging
        publish(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CLIError(f"{out_dir} already exists and is not empty (pass --overwrite to replace it)")


def publish(staging: Path, out_dir: Path, overwrite: bool = False) -> None:
    """Make staging world-readable and put it in out_dir's place."""
    check_replaceable(out_dir, overwrite)
    _make_world_readable(staging)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if out_dir.exists():
        _swap(staging, out_dir)
    else:
        os.replace(staging, out_dir)


def _swap(staging: Path, out_dir: Path) -> None:
    """Rename the old folder aside, the new one into place, and only then delete the old one.

    An error between the two renames puts the old folder back; a crash there leaves it whole, beside the
    target as `.NAME.old-PID`.
    """
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)  # left by a crashed process that had our pid
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _make_world_readable(folder: Path) -> None:
    """Folders FOLDER_MODE, files FILE_MODE, whatever the umask or mkstemp made them."""
    folder.chmod(FOLDER_MODE)
    for path in folder.rglob("*"):
        path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)


def _new_staging_dir(out_dir: Path) -> Path:
    """`.NAME.tmp-PID` beside out_dir (same file system, so the final rename is atomic), created empty."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging_dirs(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _remove_stale_staging_dirs(out_dir: Path) -> None:
    """Delete the staging folders of killed earlier runs (their process no longer exists)."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user
