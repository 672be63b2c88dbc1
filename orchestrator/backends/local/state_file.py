"""Reading the local backend's own JSON files (``state.json``, the sweep file it points at)
as the untrusted data they are: a damaged or hostile file is one line that says so.

These files live in a folder of the user's, but anything may have happened to them: a
truncated write, a hand edit, a link to ``/dev/zero``, a FIFO, JSON nested a million deep.
Each is read as a regular file of bounded size (``store.file.read_regular_file``), parsed
with the nesting error caught, and must be a JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import BadInput, StoreError, one_line
from orchestrator.store.file import read_regular_file
from orchestrator.store.limits import LIMITS


def read_json_object(path: Path, kind: str = "local_state") -> dict[str, Any]:
    """The JSON object in ``path``; ``FileNotFoundError`` when absent, ``ValueError`` (one
    line) when it is not a regular file within ``LIMITS[kind]`` holding a JSON object."""
    try:
        data = read_regular_file(path, LIMITS[kind])
        value = json.loads(data)
    except (FileNotFoundError, NotADirectoryError) as e:
        # No file there (a folder above it being a file is for the writer to report).
        raise FileNotFoundError(str(path)) from e
    except (StoreError, OSError) as e:
        raise ValueError(one_line(str(e))) from e
    except RecursionError as e:
        raise ValueError("nested too deeply to be a state file") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("not valid JSON (truncated or partly written)") from e
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def read_state(path: Path, version: int) -> dict[str, Any] | None:
    """The state in ``path``; None when there is none or it is another version's (not
    ours to act on); ``BadInput`` naming the file when it is damaged."""
    try:
        data = read_json_object(path)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise BadInput(
            f"{path}: the local state file is damaged ({e}); delete its folder"
            f" ({path.parent}) to forget that record, then run again or pass --results"
        ) from e
    return data if data.get("version") == version else None
