"""Where results live: open the store a URI names, whichever scheme it uses.

The trainer and the aggregator only ever talk to a ``Store`` (``store.base``), so a sweep
behaves the same whether results go to a local folder (``store.file``) or to S3/MinIO
(``store.s3``, imported only when an ``s3://`` URI is opened, so boto3 stays unloaded
otherwise). Keys are '/'-separated paths relative to the store's root
(see ``orchestrator.results.layout``).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from orchestrator.errors import BadInput
from orchestrator.store.base import KeyMissing, Store, clean_key, read_json, write_json
from orchestrator.urls import redact

if TYPE_CHECKING:
    from orchestrator.spec import StorageSpec

__all__ = [
    "KeyMissing",
    "Store",
    "clean_key",
    "open_results",
    "open_store",
    "read_json",
    "write_json",
]

# URI scheme -> "module:factory"; a factory takes (uri, **options) and returns a Store.
SCHEMES: dict[str, str] = {
    "": "orchestrator.store.file:FileStore.from_uri",
    "file": "orchestrator.store.file:FileStore.from_uri",
    "s3": "orchestrator.store.s3:S3Store.from_uri",
}


def _factory(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def open_store(uri: str, **s3_options: Any) -> Store:
    """Open the store a results URI names: a path, ``file://...`` or ``s3://bucket/prefix``.

    ``s3_options`` (endpoint_url, region, addressing_style, client) go to the S3 store.
    """
    if not uri or not uri.strip():
        raise BadInput("results URI is empty: pass a folder, file:// or s3:// URI")
    try:
        scheme = urlparse(uri).scheme
    except ValueError as e:  # "s3://[bucket": an unbalanced '[' where a host should be
        raise BadInput(
            f"{redact(uri)!r}: not a valid URI; pass a folder, file:// or s3:// URI"
        ) from e
    if len(scheme) == 1 and os.name == "nt":  # a drive letter, not a scheme
        scheme = ""
    if scheme not in SCHEMES:
        raise BadInput(f"{uri}: unsupported URI scheme {scheme!r}; use a path, file:// or s3://")
    return _factory(SCHEMES[scheme])(uri, **s3_options)


def open_results(uri: str, storage: StorageSpec, *, endpoint_url: str | None = None) -> Store:
    """The store a spec's ``results`` names, with its ``storage`` settings (S3 endpoint,
    region, addressing style); ``endpoint_url`` overrides the spec's, e.g. to reach from a
    laptop the MinIO that pods know by an in-cluster address."""
    options = storage.model_dump()
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return open_store(uri, **options)
