"""The Store protocol every reader and writer of results talks to; no implementation here.

The trainer and the aggregator only ever talk to a ``Store``, so a sweep behaves the same
whether results go to a local folder or to S3/MinIO. Every write is whole: a reader sees
either the old object or the complete new one, never a torn file. Keys are '/'-separated
paths relative to the store's root (see ``orchestrator.results``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from orchestrator.errors import StoreError


class KeyMissing(StoreError):
    """The key does not exist in the store."""


class BadObject(StoreError):
    """The key names something a results reader must not take in whole: the store is fine,
    this one object is damage (a problem entry), never a reason to stop or to wait."""


class ObjectTooLarge(BadObject):
    """The object is larger than the limit its kind allows (``store.limits``)."""


class NotARegularFile(BadObject):
    """A folder, FIFO, device or socket where a file should be, or a link that leads out of
    the store's folder: reading it could hang, never end, or read what is not results."""


@runtime_checkable
class Store(Protocol):
    uri: str

    def check(self) -> None:
        """Fail now with a one-line ``BadInput``/``StoreError`` if the store is unusable."""
        ...

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """Raise ``KeyMissing`` when absent, ``ObjectTooLarge`` when larger than
        ``max_bytes`` (then at most ``max_bytes + 1`` bytes are ever held), and
        ``NotARegularFile`` for what is no plain object."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def upload_file(self, key: str, path: Path) -> None: ...

    def download_file(self, key: str, path: Path) -> None: ...

    def list(self, prefix: str = "", delimiter: str | None = None) -> list[str]:
        """All keys under ``prefix`` (recursive), sorted.

        With a ``delimiter`` (S3's semantics), every key whose part after the folder
        ``prefix`` contains it is rolled up into one entry that ends at its first
        occurrence, e.g. ``list("sw", "/epoch_")`` gives ``sw/r/run.json`` and
        ``sw/r/epoch_`` instead of every file of every epoch folder.
        """
        ...

    def read_many(
        self, keys: Iterable[str], max_bytes: Callable[[str], int | None] | None = None
    ) -> dict[str, bytes | Exception]:
        """Read many keys; a failed key maps to its exception instead of raising.
        ``max_bytes(key)``: the size limit of each key (``read_bytes``)."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


def unsafe_key(key: str) -> str | None:
    """Why a key a store listed cannot be read back as itself (None when it can): keys
    come from whoever could write to the bucket, and ``a/../b`` or ``a//b`` name other
    objects than they seem to (or none)."""
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        return "its key holds '.' or '..' parts"
    if any(p == "" for p in parts[:-1]) or not key:
        return "its key holds an empty part ('//' or a leading '/')"
    return None


def clean_key(key: str) -> str:
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"store key {key!r} may not contain '..'")
    return "/".join(parts)


def read_json(store: Store, key: str) -> Any:
    return json.loads(store.read_bytes(key))


def write_json(store: Store, key: str, obj: Any) -> None:
    store.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
