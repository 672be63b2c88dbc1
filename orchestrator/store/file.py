"""A results store in a folder of the local file system (a path or ``file://`` URI).

Writes go to a temporary name in the same folder and are renamed into place, so a reader
sees the old file or the whole new one, never a torn one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.common.atomic import atomic_write
from orchestrator.errors import BadInput, StoreError
from orchestrator.store.base import KeyMissing, clean_key


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

    @classmethod
    def from_uri(cls, uri: str, **_s3_options: Any) -> FileStore:
        """A plain path or ``file:///absolute/path``; S3 options do not apply here."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return cls(uri)
        if parsed.netloc not in ("", "localhost"):
            raise BadInput(f"{uri}: file:// URIs take no host; write file:///absolute/path")
        return cls(parsed.path)

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"results: {self.root} is a file; pass a folder, file:// or s3:// URI")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
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
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if _in_flight(name):
                    continue
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

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
            for name in files:
                if not _in_flight(name):
                    inner = inner_dir + name
                    out.add(rolled(inner) or lead + inner)
        return sorted(out)

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | Exception]:
        out: dict[str, bytes | Exception] = {}
        for key in keys:
            try:
                out[key] = self.read_bytes(key)
            except (StoreError, OSError) as e:
                out[key] = e
        return out

    def delete_prefix(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
