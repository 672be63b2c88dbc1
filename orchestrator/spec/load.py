"""From a file or plain data to a validated ``SweepSpec``, with one-line errors; the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import BadInput, one_line
from orchestrator.spec.repair import REPAIR_TAGS
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.yaml_file import load_yaml


def describe_error(err: ValidationError, source: str) -> str:
    """One line naming the field and the problem (pydantic's own words)."""
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"]]
    # pydantic names the union member in the location (repair.arachne.particles); the
    # user wrote repair.particles.
    parts = [
        p for i, p in enumerate(parts) if not (i and parts[i - 1] == "repair" and p in REPAIR_TAGS)
    ]
    # A check of the whole spec (loc ()) names its fields itself.
    loc = ".".join(parts) + ": " if parts else ""
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return one_line(f"{source}: {loc}{msg}{more}")


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise BadInput(
            f"{source}: the spec must be a mapping of fields (see `early-repair schema`)"
        )
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        raise BadInput(describe_error(e, source)) from e
    except RecursionError as e:  # a dict that contains itself, handed in by a caller
        raise BadInput(f"{source}: the spec refers to itself; write it out as a tree") from e


def load_spec(path: str | Path, **overrides: Any) -> SweepSpec:
    """Read a YAML (or JSON) sweep file; ``overrides`` replace top-level fields."""
    data = load_yaml(path)
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_spec(data, str(path))


def json_schema() -> dict[str, Any]:
    """The sweep spec's JSON Schema; pydantic writes draft 2020-12, named by ``$schema``, and
    ``$id`` names this schema by the version of early-repair that wrote it."""
    from orchestrator import __version__

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:early-repair:sweep-spec:{__version__}",
        **SweepSpec.model_json_schema(),
    }
