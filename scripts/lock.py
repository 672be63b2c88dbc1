"""Write constraints.txt: every runtime dependency of early-repair pinned to the version
installed in this environment (the development venv, where the tests run).

    .venv/bin/python scripts/lock.py          # rewrite constraints.txt
    .venv/bin/python scripts/lock.py --check  # exit 1 if it is out of date

The pins are the closure of pyproject.toml's ``[project].dependencies`` (no dev tools),
walked through the installed packages' own requirements with their markers evaluated here
(Linux, this Python), which is what ``pip freeze --exclude-editable`` lists minus the dev
tools and their own dependencies. ``scripts/bootstrap`` installs with the file as
constraints and the Dockerfile installs exactly it, so development, tests and both images
run the same versions. Lines ending in ``# gpu`` are what only torch's CUDA build needs
(its Linux-only requirements: the CUDA libraries and triton); the CPU image leaves them out
and takes the CPU build of the same torch version from PyTorch's CPU index.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
GPU_MARK = "# gpu"
# torch's requirements that only its CUDA build has carry this marker.
CUDA_ONLY_MARKER = 'platform_system == "Linux"'

HEADER = """\
# Runtime dependencies of early-repair, pinned to the versions the tests run with.
# Written by scripts/lock.py from the development venv (do not edit by hand; run
# `.venv/bin/python scripts/lock.py` after changing dependencies). scripts/bootstrap
# installs with it as constraints; the Dockerfile installs exactly it. Lines marked
# "# gpu" are only for torch's CUDA build (the GPU image); the CPU image leaves them out.
"""


def _applies(marker: Marker | None, extras: Iterable[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": e}) for e in ("", *extras))


def _requirements(dist: str, extras: Iterable[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    return [r for r in reqs if _applies(r.marker, extras)]


def closure(roots: Iterable[Requirement], skip: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    """canonical name -> installed version, for ``roots`` and everything they need here."""
    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [r for r in roots if _applies(r.marker, ())]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if name in found and not new_extras:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock: {req.name} is required but not installed; run scripts/bootstrap")
        found[name] = dist.version
        extras_seen.setdefault(name, set()).update(req.extras)
        todo.extend(_requirements(req.name, extras_seen[name]))
    return found


def _cuda_only_of_torch() -> set[str]:
    reqs = [Requirement(r) for r in metadata.requires("torch") or []]
    return {
        canonicalize_name(r.name) for r in reqs if r.marker and CUDA_ONLY_MARKER in str(r.marker)
    }


def render() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    everything = closure(roots)
    without_cuda = closure(roots, skip=_cuda_only_of_torch())
    names = {
        canonicalize_name(d.metadata["Name"]): d.metadata["Name"] for d in metadata.distributions()
    }
    lines = []
    for name in sorted(everything):
        line = f"{names.get(name, name)}=={everything[name]}"
        lines.append(f"{line}  {GPU_MARK}" if name not in without_cuda else line)
    return HEADER + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if constraints.txt is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not LOCK.exists() or LOCK.read_text() != text:
            sys.exit("constraints.txt is out of date: run .venv/bin/python scripts/lock.py")
        return
    LOCK.write_text(text)
    print(f"wrote {LOCK.relative_to(ROOT)} ({text.count(chr(10)) - HEADER.count(chr(10))} pins)")


if __name__ == "__main__":
    main()
