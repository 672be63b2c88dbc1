"""Where results live: one Store protocol, a file-system store here, S3 in ``s3store``.

The trainer and the aggregator only ever talk to a ``Store``, so a sweep behaves the same
whether results go to a local folder or to S3/MinIO. Every write is whole: a reader sees
either the old object or the complete new one, never a torn file. Keys are '/'-separated
paths relative to the store's root (see ``orchestrator.results``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from orchestrator.errors import BadInput, StoreError

if TYPE_CHECKING:
    from orchestrator.spec import StorageSpec


class KeyMissing(StoreError):
    """The key does not exist in the store."""


@runtime_checkable
class Store(Protocol):
    uri: str

    def check(self) -> None:
        """Fail now with a one-line ``BadInput``/``StoreError`` if the store is unusable."""
        ...

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str) -> bytes:
        """Raise ``KeyMissing`` when absent."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def upload_file(self, key: str, path: Path) -> None: ...

    def download_file(self, key: str, path: Path) -> None: ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""
        ...

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | Exception]:
        """Read many keys; a failed key maps to its exception instead of raising."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


def _clean_key(key: str) -> str:
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"store key {key!r} may not contain '..'")
    return "/".join(parts)


class FileStore:
    """A folder on the local file system (a plain path or ``file://`` URI)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

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
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return [prefix] if base.is_file() else []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(".tmp") and name.startswith("."):
                    continue  # an atomic write in flight, not an object
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
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


def open_store(uri: str, **s3_options: Any) -> Store:
    """Open the store a results URI names: a path, ``file://...`` or ``s3://bucket/prefix``.

    ``s3_options`` (endpoint_url, region, addressing_style, client) go to the S3 store.
    """
    if not uri or not uri.strip():
        raise BadInput("results URI is empty: pass a folder, file:// or s3:// URI")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = parsed.path if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise BadInput(f"{uri}: file:// URIs take no host; write file:///absolute/path")
        return FileStore(path)
    if parsed.scheme == "s3":
        from orchestrator.s3store import S3Store  # boto3 only when needed

        return S3Store.from_uri(uri, **s3_options)
    raise BadInput(f"{uri}: unsupported URI scheme {parsed.scheme!r}; use a path, file:// or s3://")


def open_results(uri: str, storage: StorageSpec, *, endpoint_url: str | None = None) -> Store:
    """The store a spec's ``results`` names, with its ``storage`` settings (S3 endpoint,
    region, addressing style); ``endpoint_url`` overrides the spec's, e.g. to reach from a
    laptop the MinIO that pods know by an in-cluster address."""
    options = storage.model_dump()
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return open_store(uri, **options)


def read_json(store: Store, key: str) -> Any:
    return json.loads(store.read_bytes(key))


def write_json(store: Store, key: str, obj: Any) -> None:
    store.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
