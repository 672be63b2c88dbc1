"""A trainer started by the local backend ends when the ``run`` that started it does.

Killing only ``run`` (``kill PID``, a closed terminal, an OOM kill) used to leave trainers
that went on until their next progress line hit the closed pipe and died of a
BrokenPipeError traceback. On Linux the child asks the kernel for SIGTERM when its parent
goes (``PR_SET_PDEATHSIG``); the trainer's SIGTERM handler then stops it the usual way -
one log line, the log archived, resumable. Elsewhere the closed pipe still ends it quietly
(the trainer treats a broken stdout as a stop).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

# Set by the local backend to its own pid; absent on a cluster, where the kubelet is the
# parent and pod deletion already sends SIGTERM.
PARENT_ENV = "EARLY_REPAIR_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """Arrange SIGTERM for this process when its parent (named in $PARENT_ENV) exits."""
    expected = os.environ.get(PARENT_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no libc to ask (musl without prctl, ...): the pipe
        return
    # The run may have died before we asked. It need not be our direct parent: a wrapper
    # given as the backend's python (``nice``, a recording shell script) sits between.
    if str(os.getppid()) != expected and not _alive(expected):
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's, or not a pid
        return True
    return True
