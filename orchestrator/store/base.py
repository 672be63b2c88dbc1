"""The Store protocol every reader and writer of results talks to; no implementation here.

The trainer and the aggregator only ever talk to a ``Store``, so a sweep behaves the same
whether results go to a local folder or to S3/MinIO. Every write is whole: a reader sees
either the old object or the complete new one, never a torn file. Keys are '/'-separated
paths relative to the store's root (see ``orchestrator.results``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from orchestrator.errors import StoreError


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

    def list(self, prefix: str = "", delimiter: str | None = None) -> list[str]:
        """All keys under ``prefix`` (recursive), sorted.

        With a ``delimiter`` (S3's semantics), every key whose part after the folder
        ``prefix`` contains it is rolled up into one entry that ends at its first
        occurrence, e.g. ``list("sw", "/epoch_")`` gives ``sw/r/run.json`` and
        ``sw/r/epoch_`` instead of every file of every epoch folder.
        """
        ...

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | Exception]:
        """Read many keys; a failed key maps to its exception instead of raising."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


def clean_key(key: str) -> str:
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"store key {key!r} may not contain '..'")
    return "/".join(parts)


def read_json(store: Store, key: str) -> Any:
    return json.loads(store.read_bytes(key))


def write_json(store: Store, key: str, obj: Any) -> None:
    store.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
