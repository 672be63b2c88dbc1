"""Writing a file so that it is either all there or not there, even across a power cut.

A reader (``status`` from another shell, a resumed run, ``aggregate``) must never see half
a file. Every file the project writes in place is therefore written under a temporary
name in the same folder, flushed and fsynced, renamed over the destination (atomic on
POSIX), and then the folder itself is fsynced so that the rename is on disk too - without
that last step a crash can bring back the old file, or none.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (where folders can be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform (or file system) that cannot open folders: nothing more to do
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: Path, dest: Path) -> None:
    """Move the finished file ``src`` over ``dest`` (same file system), contents and name
    on disk before this returns."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dest)
    fsync_folder(Path(dest).parent)


def atomic_write(path: Path, data: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Write ``path`` whole or not at all: ``data`` (bytes, or text as UTF-8) or whatever
    ``data(file)`` writes into the open binary file. Creates missing parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode())
            elif isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
