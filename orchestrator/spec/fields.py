"""The spec's building blocks: bounded number types, plain data, names and limits.

Every field of the sweep spec is built from these, so a hostile or mistyped value (a
boolean where a number belongs, ``.inf``, a 70-bit integer, a credential in a URI, a name
Kubernetes refuses) is refused while the spec is validated, never once a run started.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    Strict,
)

from orchestrator.errors import BadInput, one_line
from orchestrator.urls import endpoint_problem, uri_credentials_problem

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Sweep names become object names: "<name>-<8 hex>" plus the Job controller's pod
# suffix "-<index>-<5 random>" must stay within 63 characters.
MAX_SWEEP_NAME = 40
MAX_RUN_NAME = 63

# Bounds that keep a hostile or mistyped spec from reaching the runs (or the memory) at all.
INT64_MAX = 2**63 - 1  # what JSON consumers, Kubernetes int64 fields and torch seeds hold
INT32_MAX = 2**31 - 1  # Kubernetes int32 fields (parallelism, backoffLimitPerIndex, ...)
SPLIT_SEED_MAX = 2**32 - 1  # scikit-learn's random_state goes to numpy's RandomState
MAX_RUNS = 100_000  # an Indexed Job allows at most 100,000 completions


def _not_bool(value: Any) -> Any:
    # YAML's `true`/`yes`/`on` are booleans; pydantic would take them as 1 (or 1.0).
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


def _finite(value: Any) -> Any:
    # Before range checks, so `.nan` is called what it is rather than "not >= 0".
    _not_bool(value)
    try:
        number = float(value) if isinstance(value, float | str) else None
    except ValueError:
        return value  # not a number at all: pydantic says so
    if number is not None and not math.isfinite(number):
        raise ValueError(f"expected a finite number, not {value!r}")
    return value


# Shared number types: integers in 64 bits and never a boolean or a string; floats finite
# (`.inf`/`.nan` would pass `gt=0` and fail only once a run started) and never a boolean.
# Floats stay lax about strings because YAML 1.1 reads `1e-4` (no dot) as a string.
Int = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
Int32 = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=-(2**31), le=INT32_MAX)]
Seed = Annotated[int, Strict(), BeforeValidator(_not_bool), Field(ge=0, le=INT64_MAX)]
Float = Annotated[float, BeforeValidator(_finite), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Bytes = Annotated[ByteSize, BeforeValidator(_not_bool), Field(le=INT64_MAX)]


def _plain(value: Any, where: str = "") -> None:
    """Free-form data (options, tolerations): JSON-like, with finite numbers in 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where or 'a'} key {k!r} is not a string")
            _plain(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{where}.{i}" if where else str(i))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'}: {value} is not a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ValueError(f"{where or 'value'}: {value} does not fit in 64 bits")
    elif not isinstance(value, str | int | float | type(None)):
        raise ValueError(f"{where or 'value'}: a {type(value).__name__} is not plain data")


def _plain_data(value: Any) -> Any:
    _plain(value)
    return value


def _endpoint(value: str | None) -> str | None:
    problem = endpoint_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value.rstrip("/") if value else value


def _path_text(value: str | None) -> str | None:
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("a path may not contain a NUL character")
    problem = uri_credentials_problem(value)
    if problem:  # s3://KEY:SECRET@bucket would be written to sweep.json and a ConfigMap
        raise ValueError(problem)
    return value


PlainDict = Annotated[dict[str, Any], AfterValidator(_plain_data)]
PathText = Annotated[str, AfterValidator(_path_text)]


def _added(default: Any, **kwargs: Any) -> Any:
    """A field added after the first release: left out of dumps while it holds ``default``.

    Dumps are what the spec hash, sweep.json and every run.json are made of; leaving a new
    field out at its default keeps them byte-identical for specs that never set it.
    """
    same: Callable[[Any], bool] = lambda value: value == default  # noqa: E731
    return Field(default, exclude_if=same, **kwargs)


def _dns_label(value: str) -> str:
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name: use lower-case letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return value


def _sweep_name(value: str) -> str:
    _dns_label(value)
    if len(value) > MAX_SWEEP_NAME:
        raise ValueError(f"{value!r} is longer than {MAX_SWEEP_NAME} characters")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
SweepName = Annotated[str, AfterValidator(_sweep_name)]


def check_sweep_name(value: str, field: str | None = None) -> str:
    """``value`` if it can be a sweep's name (a spec's ``name``), else BadInput - before a
    name typed on the command line becomes a path, a label selector or an object name."""
    if not (
        isinstance(value, str) and len(value) <= MAX_SWEEP_NAME and DNS1123_LABEL.fullmatch(value)
    ):
        shown = repr(value) if len(value) <= 60 else repr(value[:57] + "...")
        where = f"{field}: " if field else ""
        raise BadInput(
            one_line(
                f"{where}{shown} is not a sweep name: sweep names are the spec's `name`,"
                f" lower-case letters, digits and '-', at most {MAX_SWEEP_NAME} characters"
            )
        )
    return value


@functools.lru_cache(maxsize=1024)  # run names of a 100,000-run sweep ask for the same few
def slug(value: str) -> str:
    """A DNS-1123 label derived from a registry key or an import path."""
    out = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return out or "x"


def _as_named(value: Any) -> Any:
    # Lets YAML say `datasets: [digits]` as well as `datasets: [{name: digits, ...}]`.
    return {"name": value} if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
