"""Installed package versions, recorded in run.json and in prepared-split manifests so a
result can be traced to the software that produced it."""

from __future__ import annotations

from importlib import metadata


def package_versions(*dists: str) -> dict[str, str]:
    """``{distribution: version}``; "missing" for one that is not installed."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out
