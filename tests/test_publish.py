"""Publishing an output folder (prepare, export, export-hf): world-readable, swapped in whole, and an
earlier output that survives any failure, including one between the two renames of the swap."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import training.publish as publish
from training.errors import CLIError
from training.publish import staged


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def modes(folder: Path) -> set[tuple[bool, int]]:
    return {(p.is_dir(), stat.S_IMODE(p.stat().st_mode)) for p in [folder, *folder.rglob("*")]}


def write_output(folder: Path, text: str) -> None:
    (folder / "sub").mkdir()
    (folder / "a.txt").write_text(text)
    (folder / "sub" / "b.txt").write_text(text)


@pytest.fixture
def earlier(tmp_path: Path) -> Path:
    """An earlier output folder, `out`, that a new one is to replace."""
    out = tmp_path / "out"
    out.mkdir()
    write_output(out, "old")
    return out


@pytest.fixture
def private_umask() -> Iterator[None]:
    """New files and folders private to their owner, as mkstemp / mkdtemp or a strict umask make them."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def test_a_published_folder_is_readable_by_everyone(tmp_path: Path, private_umask) -> None:
    out = tmp_path / "out"
    with staged(out) as staging:
        write_output(staging, "new")
        assert modes(staging) == {(True, 0o700), (False, 0o600)}
    assert tree(out) == {"a.txt": "new", "sub/b.txt": "new"}
    assert modes(out) == {(True, 0o755), (False, 0o644)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_earlier_output_is_replaced_only_by_a_finished_one(tmp_path: Path, earlier: Path) -> None:
    out = earlier
    with pytest.raises(RuntimeError), staged(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("the export failed midway")
    assert tree(out) == {"a.txt": "old", "sub/b.txt": "old"}
    with staged(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    assert tree(out) == {"a.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_non_empty_folder_needs_overwrite_and_an_empty_one_does_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with staged(out) as staging:
        (staging / "a.txt").write_text("new")
    with pytest.raises(CLIError, match="already exists and is not empty"), staged(out):
        pytest.fail("the block must not run: a refusal costs no work")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CLIError, match="is not a folder"), staged(tmp_path / "file", overwrite=True):
        pytest.fail("the block must not run")
    assert tree(out) == {"a.txt": "new"}


def test_an_interruption_between_the_renames_puts_the_old_folder_back(
    tmp_path: Path, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = earlier
    renames = []

    def replace(src: Path, dst: Path) -> None:
        renames.append((Path(src).name, Path(dst).name))
        if len(renames) == 2:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt
        os.rename(src, dst)

    monkeypatch.setattr(publish.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), staged(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    assert renames[:2] == [("out", f".out.old-{os.getpid()}"), (f".out.tmp-{os.getpid()}", "out")]
    assert tree(out) == {"a.txt": "old", "sub/b.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_crash_between_the_renames_leaves_the_old_folder_whole(
    tmp_path: Path, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is deleted before the new folder is in place: a kill there leaves the old one aside."""
    out = earlier
    seen_at_delete = []
    monkeypatch.setattr(publish.shutil, "rmtree", lambda path, **_: seen_at_delete.append(tree(out)))
    with staged(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    old = tmp_path / f".out.old-{os.getpid()}"
    assert seen_at_delete[-1] == {"a.txt": "new"}  # the old folder is deleted only after the swap
    assert tree(old) == {"a.txt": "old", "sub/b.txt": "old"}  # (deletion disabled here: what a kill leaves)


def test_staging_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = tmp_path / f".out.tmp-{dead_pid}"
    stale.mkdir()
    (stale / "half.txt").write_text("x")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a running process's staging folder is left alone
    live.mkdir()
    with staged(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
