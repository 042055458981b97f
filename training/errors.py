"""The one exception type a command raises for bad input: the CLI prints it as one line and exits 2."""

from __future__ import annotations

from pathlib import Path


class CLIError(Exception):
    """A problem with the user's input (file, argument, data), reported without a stack trace.

    The message names the file (and line, when there is one) and what is wrong with it.
    """


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` as the folder a command writes into; an existing file there is refused before any work."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{folder}: is a file; {flag} names a folder to write into")
    return folder
