"""Knowing a process again from a record: pid, start time and command line.

A local record (``state.json``) names the ``run`` process and each trainer by pid. A pid is
reused once its process ends, so a pid read back is signalled only when /proc shows the very
process recorded: the same start time and the same command line, which for a run is our
trainer command; a pidfd taken before the check pins it until the signal is sent.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def _proc_start(pid: int) -> str | None:
    """The process's start time (Linux), so a recycled pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


_CMDLINE_WAIT_S = 5.0  # a bound for a process that never gets its arguments, not a delay


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else None


def _identity(pid: int) -> dict[str, Any]:
    """What a record keeps of a process to know it again: pid, start time, command line."""
    cmdline = _proc_cmdline(pid)
    # Popen returns as soon as the child execs (CPython vforks), which can be before the
    # kernel has set up the new program's arguments: /proc/PID/cmdline then reads empty
    # for a moment. Recorded so, the process could never be recognised (cancel --local).
    deadline = time.monotonic() + _CMDLINE_WAIT_S
    while cmdline is None and _proc_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.001)
        cmdline = _proc_cmdline(pid)
    return {"pid": pid, "pid_start": _proc_start(pid), "cmdline": cmdline}


def _ours(rec: dict[str, Any], *, trainer: bool = False) -> bool:
    """Whether the process a record names is still that very process: alive, same start
    time, same command line (and, for a run, our trainer command). A record without both
    (another version's, or one written by hand) never matches: nothing is signalled on
    a guess."""
    pid, start, cmdline = rec.get("pid"), rec.get("pid_start"), rec.get("cmdline")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not isinstance(start, str) or not isinstance(cmdline, list):
        return False
    if trainer and not ("trainer" in cmdline and "--run-index" in cmdline):
        return False
    return _proc_start(pid) == start and _proc_cmdline(pid) == cmdline


def _terminate(rec: dict[str, Any], *, trainer: bool) -> bool:
    """SIGTERM the process ``rec`` names if it is still that process (``_ours``). A pidfd
    taken before the check pins the process, so a pid recycled between the check and the
    signal cannot be hit."""
    pid = rec["pid"]
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (old kernel): the narrow window remains
        fd = None
    try:
        if not _ours(rec, trainer=trainer):
            return False
        if fd is None:
            os.kill(pid, signal.SIGTERM)
        else:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log: the trainer's one-line error, or a traceback's end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""
