"""Run many ``early-repair`` invocations in one process, each exactly as the console script
runs it, under a memory ceiling - so a corpus of hundreds of hostile inputs costs one
interpreter start instead of hundreds.

``python -m early_repair_testing.cli_batch CASES.json RESULTS.json`` (tests/support on
PYTHONPATH): CASES.json holds ``{"preload": [modules], "memory": bytes, "timeout_s": s,
"cases": [{"id", "argv", "cwd", "env"}]}``. The modules are
imported first; then RLIMIT_AS is set to the address space in use plus ``memory``, so every
case may allocate at most that much more (an alias bomb hits the ceiling, not the machine).
Each case runs ``orchestrator.cli.main(argv)`` in its own working folder with its own
environment variables, its stdout and stderr captured at the file-descriptor level (C
libraries and warnings included), stopped by SIGALRM after ``timeout_s`` as a safety net.
RESULTS.json gets one JSON line per case, written as soon as the case ends: exit code,
stdout, stderr, an exception that escaped ``main`` (with its traceback), the seconds it took
and every path found in its folder afterwards. A case that kills the whole process (a C
library aborting on a failed allocation) is the first one without a line; the caller
starts a new process for the cases after it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any


class CaseTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no ``except Exception`` swallows it."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise CaseTimeout


def _address_space() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _read(f: Any) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _invoke(main: Any, argv: list[str], timeout_s: int) -> tuple[int | None, str | None]:
    """``main(argv)`` -> (exit code, None) or (None, what escaped it)."""
    signal.alarm(timeout_s)
    try:
        main(argv)
        return 0, None
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else (0 if e.code is None else 1)), None
    except CaseTimeout:
        return None, f"timed out after {timeout_s} s"
    except BaseException:  # exactly what must never happen: report it
        return None, traceback.format_exc()
    finally:
        signal.alarm(0)


def run_case(main: Any, case: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    cwd = Path(case["cwd"])
    saved_env = dict(os.environ)
    os.environ.update(case.get("env", {}))
    for name in case.get("unset", []):
        os.environ.pop(name, None)
    home = os.getcwd()
    os.chdir(cwd)
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out_f.fileno(), 1)
        os.dup2(err_f.fileno(), 2)
        started = time.monotonic()
        try:
            code, escaped = _invoke(main, [str(a) for a in case["argv"]], timeout_s)
        finally:
            seconds = time.monotonic() - started
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            os.chdir(home)
            os.environ.clear()
            os.environ.update(saved_env)
        stdout, stderr = _read(out_f), _read(err_f)
    return {
        "id": case["id"],
        "code": code,
        "stdout": stdout,
        "stderr": stderr,
        "escaped": escaped,
        "seconds": round(seconds, 3),
        "created": sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*")),
    }


def main() -> None:
    batch = json.loads(Path(sys.argv[1]).read_text())
    for module in batch.get("preload", []):
        importlib.import_module(module)
    from orchestrator.cli import main as cli_main

    ceiling = _address_space() + int(batch["memory"])
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    signal.signal(signal.SIGALRM, _alarm)
    with open(sys.argv[2], "a") as results:
        for case in batch["cases"]:
            results.write(json.dumps(run_case(cli_main, case, int(batch["timeout_s"]))) + "\n")
            results.flush()


if __name__ == "__main__":
    main()
