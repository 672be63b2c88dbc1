"""Our error types at the boundaries, and the process exit codes they map to.

Every layer raises one of these (``raise ... from e``) with a message that says what to
do; the CLI turns them into one line on stderr and the exit code below. The trainer uses
the same codes so that a Kubernetes podFailurePolicy can tell bad input (never retry)
from a GPU-memory wait that timed out (retry) from a crash (count against the backoff).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# EX_UNAVAILABLE from sysexits.h: a service we need (object storage, the Kubernetes API)
# could not be reached or kept failing after retries; trying again later may work.
EXIT_TRANSIENT = 69
# EX_TEMPFAIL from sysexits.h: "try again later" - the GPU guard's timeout.
EXIT_GUARD_TIMEOUT = 75


class EarlyRepairError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class BadInput(EarlyRepairError):
    """The user gave us something we cannot use: spec, flag, path, URI, dataset layout."""

    exit_code = EXIT_BAD_INPUT


class RunFailed(EarlyRepairError):
    """A run or job failed after it started."""

    exit_code = EXIT_FAILED


class StoreError(EarlyRepairError):
    """Object storage could not be used (after retries)."""

    exit_code = EXIT_BAD_INPUT


class GuardTimeout(EarlyRepairError):
    """The GPU never had enough free memory within the guard's timeout."""

    exit_code = EXIT_GUARD_TIMEOUT
