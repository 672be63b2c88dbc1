"""Reading a YAML (or JSON) file as plain data, within bounds, before any schema sees it.

A sweep file comes from a user or a stored ConfigMap, so it is untrusted: it is read only
up to ``MAX_SPEC_BYTES``, and its events are walked (nothing built) to refuse nesting
deeper than ``MAX_DEPTH`` or more than ``MAX_NODES`` values once aliases are expanded -
an alias bomb or a 50,000-deep document costs neither memory nor a deep recursion. Every
problem is one ``BadInput`` line naming the file. This module knows nothing of the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)

from orchestrator.errors import BadInput, one_line

MAX_SPEC_BYTES = 4 << 20  # 100,000 seeds fit, even as indented JSON (sweep.json)
MAX_DEPTH = 64  # YAML nesting (mappings and sequences); a spec needs fewer than 10
# Nodes of the spec with every YAML alias expanded: bounds the memory an alias bomb takes
# once validation and hashing walk it as a tree.
MAX_NODES = 1_000_000
# The C parser when PyYAML has it: ~30x faster, and it refuses absurd nesting by itself.
_YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_spec_text(p: Path) -> str:
    """The file's text, reading at most MAX_SPEC_BYTES (+1 to notice more): /dev/zero or a
    multi-gigabyte file is refused without being read."""
    try:
        with p.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError as e:
        raise BadInput(f"{p}: no such file; pass the path of a sweep YAML file") from e
    except (OSError, ValueError) as e:  # a folder, no permission, a symlink loop, a NUL byte
        why = getattr(e, "strerror", None) or type(e).__name__
        raise BadInput(f"{p}: cannot read the sweep file ({why})") from e
    if len(data) > MAX_SPEC_BYTES:
        raise BadInput(
            f"{p}: larger than {MAX_SPEC_BYTES // 1024} KiB; a sweep file is a short YAML"
            " document (pass data through files it names, not inline)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{p}: not a text file (not UTF-8); pass a sweep YAML file") from e


def _check_shape(text: str, source: str) -> None:
    """Walk the YAML events (no objects built) and refuse nesting deeper than MAX_DEPTH or
    more than MAX_NODES nodes once aliases are expanded - before anything is constructed,
    so an alias bomb or a 50,000-deep document costs neither memory nor a deep recursion."""
    sizes: list[int] = [0]  # expanded node count of each open collection; [0] is the root
    anchors: list[str | None] = [None]
    done: dict[str, int] = {}  # anchor -> expanded size of its finished node

    def add(n: int, line: int) -> None:
        sizes[-1] += n
        if sizes[-1] > MAX_NODES:
            raise BadInput(
                f"{source}: more than {MAX_NODES:,} values once YAML aliases are expanded"
                f" (line {line}); write the spec out without an alias bomb"
            )

    for event in yaml.parse(text, Loader=_YAML_LOADER):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, CollectionStartEvent):
            if len(sizes) > MAX_DEPTH:
                raise BadInput(
                    f"{source}: nested deeper than {MAX_DEPTH} levels (line {line}); a sweep"
                    " spec needs only a few"
                )
            sizes.append(1)
            anchors.append(event.anchor)
            if event.anchor:
                done.pop(event.anchor, None)  # open: an alias to it now would be a cycle
        elif isinstance(event, CollectionEndEvent):
            size, anchor = sizes.pop(), anchors.pop()
            if anchor:
                done[anchor] = size
            add(size, line)
        elif isinstance(event, AliasEvent):
            if event.anchor in anchors:
                raise BadInput(f"{source}: alias *{event.anchor} refers to itself (line {line})")
            add(done.get(event.anchor or "", 1), line)  # an unknown one: the loader says so
        elif isinstance(event, NodeEvent):  # a scalar
            if event.anchor:
                done[event.anchor] = 1
            add(1, line)


def load_yaml(path: str | Path) -> Any:
    """A YAML (or JSON) file as plain data, within bounds: at most MAX_SPEC_BYTES, nested
    at most MAX_DEPTH deep, at most MAX_NODES values with aliases expanded."""
    p = Path(path)
    text = _read_spec_text(p)
    try:
        _check_shape(text, str(p))
        return yaml.load(text, Loader=_YAML_LOADER)  # CSafeLoader or SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        why = f" ({' '.join(str(problem).split())})" if problem else ""
        raise BadInput(one_line(f"{p}: not valid YAML{where}{why}; fix the syntax")) from e
    except (ValueError, OverflowError) as e:  # an int of 5,000 digits, a date like 2024-13-45
        raise BadInput(one_line(f"{p}: a value cannot be read ({e}); fix it")) from e
