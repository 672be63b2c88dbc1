"""A results store in a folder of the local file system (a path or ``file://`` URI).

Writes go to a temporary name in the same folder and are renamed into place, so a reader
sees the old file or the whole new one, never a torn one. Reads take regular files only,
opened without blocking (a FIFO would wait forever for a writer), never through a link
that leads out of the folder, and at most ``max_bytes`` of them (``/dev/zero`` or a file
of gigabytes is refused, not read).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.common.atomic import atomic_write
from orchestrator.errors import BadInput, StoreError
from orchestrator.results import layout
from orchestrator.store.base import KeyMissing, NotARegularFile, ObjectTooLarge, clean_key

# Folders named like the layout's data files are listed as keys, so that their reader
# reports them ("a folder, not a file") instead of their silently not being there.
_READ_KINDS = frozenset({"sweep_json", "run_json", "summary", "records", "base", "repair"})
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "no regular file"


def _leads_out(real: str, top: str) -> bool:
    return real != top and not real.startswith(top.rstrip(os.sep) + os.sep)


def _opened_path(fd: int, path: Path) -> str:
    """Where the open file ``fd`` really lies (Linux says it in /proc; else resolve)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def read_regular_file(path: Path, max_bytes: int | None, *, inside: str | None = None) -> bytes:
    """The bytes of the regular file ``path``: ``NotARegularFile`` for anything else (a
    folder, FIFO, device, socket, or - with ``inside``, a resolved folder - a file outside
    that folder reached through a link), ``ObjectTooLarge`` above ``max_bytes``. Nothing
    but a regular file is ever opened (opening a device can have effects), opening never
    blocks, and at most ``max_bytes + 1`` bytes are held. ``FileNotFoundError`` (an
    ``OSError``) when absent."""
    st = os.lstat(path)
    target = os.fspath(path)
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if inside is not None and _leads_out(target, inside):
            raise NotARegularFile(f"{path}: a link that leads out of {inside}; not read")
        st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{path}: {_what(st.st_mode)}, not a regular file; not read")
    fd = os.open(target, _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)  # what was opened, should the name have changed meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path}: {_what(st.st_mode)}, not a regular file; not read")
        if inside is not None and _leads_out(_opened_path(fd, path), inside):
            raise NotARegularFile(f"{path}: lies outside {inside} (a linked folder); not read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ObjectTooLarge(
                f"{path}: {st.st_size:,} bytes, over the {max_bytes:,}-byte limit for it"
            )
        cap = None if max_bytes is None else max_bytes + 1
        chunks, held = [], 0
        while cap is None or held < cap:  # a file growing while read still stops at the cap
            chunk = os.read(fd, _CHUNK if cap is None else min(_CHUNK, cap - held))
            if not chunk:
                break
            chunks.append(chunk)
            held += len(chunk)
        if cap is not None and held >= cap:
            raise ObjectTooLarge(f"{path}: over the {max_bytes:,}-byte limit for it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _in_flight(name: str) -> bool:
    """An atomic write in flight (see ``_atomic``), not an object."""
    return name.startswith(".") and name.endswith(".tmp")


class FileStore:
    """A folder on the local file system (a plain path or ``file://`` URI)."""

    def __init__(self, root: str | Path) -> None:
        if "\x00" in str(root):
            raise BadInput(f"results: {str(root)!r} contains a NUL character; pass a folder")
        try:
            self.root = Path(root).expanduser().absolute()
        except RuntimeError as e:  # "~nosuchuser/x": no such user, so no home to expand
            raise BadInput(
                f"results: cannot expand {str(root)!r} ({e}); write the folder out in full"
            ) from e
        try:
            too_long = len(os.fsencode(self.root)) > 4096 or any(
                len(os.fsencode(part)) > 255 for part in self.root.parts
            )
        except UnicodeEncodeError as e:
            raise BadInput(f"results: {str(root)[:100]!r}... is not a valid path") from e
        if too_long:  # the file system would answer ENAMETOOLONG to every call
            raise BadInput(
                f"results: {str(root)[:100]!r}... is longer than a path or file name may be"
            )
        self.uri = str(self.root)
        self._resolved: str | None = None

    @classmethod
    def from_uri(cls, uri: str, **_s3_options: Any) -> FileStore:
        """A plain path or ``file:///absolute/path``; S3 options do not apply here."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return cls(uri)
        if parsed.netloc not in ("", "localhost"):
            raise BadInput(f"{uri}: file:// URIs take no host; write file:///absolute/path")
        return cls(parsed.path)

    def _real_root(self) -> str:
        """The root with every link resolved: what reads may not leave."""
        if self._resolved is None:
            self._resolved = os.path.realpath(self.root)
        return self._resolved

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"results: {self.root} is a file; pass a folder, file:// or s3:// URI")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            return read_regular_file(self._path(key), max_bytes, inside=self._real_root())
        except (FileNotFoundError, NotADirectoryError) as e:
            raise KeyMissing(f"{self.uri}/{key}: not found") from e

    def _atomic(self, key: str, fill: Any) -> None:
        atomic_write(self._path(key), fill)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda f: f.write(data))

    def upload_file(self, key: str, path: Path) -> None:
        def fill(f: Any) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        self._atomic(key, fill)

    def download_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise KeyMissing(f"{self.uri}/{key}: not found")
        if not stat.S_ISREG(os.stat(src).st_mode):  # is_file() follows links: check the end
            raise NotARegularFile(f"{self.uri}/{key}: not a regular file")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def list(self, prefix: str = "", delimiter: str | None = None) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return [prefix] if base.is_file() else []
        if delimiter:
            return self._list_rolled_up(base, delimiter)
        out = []
        for dirpath, dirs, files in os.walk(base):
            for name in files:
                if _in_flight(name):
                    continue
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
            out += self._folders_named_as_files(dirpath, dirs)
        return sorted(out)

    def _folders_named_as_files(self, dirpath: str, dirs: list[str]) -> list[str]:
        """Keys of the folders among ``dirs`` named like a data file of the layout
        (``run.json/``): listed so that reading them says what they are."""
        found = []
        for d in dirs:
            if d.endswith((".json", ".arrow")):
                key = Path(dirpath, d).relative_to(self.root).as_posix()
                for root in (True, False):
                    k = layout.parse(key, root=root)
                    if k is not None and k.kind in _READ_KINDS:
                        found.append(key)
                        break
        return found

    def _list_rolled_up(self, base: Path, delimiter: str) -> list[str]:
        """``list`` with a delimiter: folders whose path (plus "/") holds it are rolled up
        without being walked, so their size does not matter."""
        top = base.relative_to(self.root).as_posix()
        lead = "" if top == "." else f"{top}/"
        out: set[str] = set()

        def rolled(inner: str) -> str | None:
            i = inner.find(delimiter)
            return None if i < 0 else lead + inner[: i + len(delimiter)]

        skip = len(str(base)) + 1
        for dirpath, dirs, files in os.walk(base):
            inner_dir = dirpath[skip:].replace(os.sep, "/")
            inner_dir = f"{inner_dir}/" if inner_dir else ""
            keep = []
            for d in dirs:
                entry = rolled(f"{inner_dir}{d}/")
                if entry is None:
                    keep.append(d)
                else:
                    out.add(entry)
            dirs[:] = keep
            out.update(self._folders_named_as_files(dirpath, keep))
            for name in files:
                if not _in_flight(name):
                    inner = inner_dir + name
                    out.add(rolled(inner) or lead + inner)
        return sorted(out)

    def read_many(
        self, keys: Iterable[str], max_bytes: Callable[[str], int | None] | None = None
    ) -> dict[str, bytes | Exception]:
        out: dict[str, bytes | Exception] = {}
        for key in keys:
            try:
                out[key] = self.read_bytes(key, max_bytes(key) if max_bytes else None)
            except (StoreError, OSError) as e:
                out[key] = e
        return out

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
