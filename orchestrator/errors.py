"""Our error types at the boundaries, and the process exit codes they map to.

Every layer raises one of these (``raise ... from e``) with a message that says what to
do; the CLI turns them into one line on stderr and the exit code below. The trainer uses
the same codes so that a Kubernetes podFailurePolicy can tell bad input (never retry)
from a failure that may pass if tried again later (retry) from a crash (count against the
backoff).

Errors are permanent or transient, as in Kopf's ``PermanentError``/``TemporaryError``:
``BadInput`` (and a ``StoreError``: a missing bucket, wrong credentials) fails the same
way however often it is retried; a ``Transient`` error (a storage server answering 5xx,
refusing connections or timing out after botocore's own retries; the GPU guard's timeout)
may well pass a minute later, so it exits with a code that the podFailurePolicy counts
against ``backoffLimitPerIndex`` instead of failing the index.
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
# 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
# Exit codes after which running the same thing again may succeed.
RETRIABLE_EXIT_CODES = (EXIT_TRANSIENT, EXIT_GUARD_TIMEOUT)


class EarlyRepairError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class BadInput(EarlyRepairError):
    """The user gave us something we cannot use: spec, flag, path, URI, dataset layout.
    Permanent: retrying cannot help."""

    exit_code = EXIT_BAD_INPUT


class Transient(EarlyRepairError):
    """Something outside us failed in a way that may pass: try the same thing again later."""

    exit_code = EXIT_TRANSIENT


class RunFailed(EarlyRepairError):
    """A run or job failed after it started."""

    exit_code = EXIT_FAILED


class StoreError(EarlyRepairError):
    """Object storage cannot be used as configured (bucket, credentials, region, a
    request the server refuses): permanent, so bad input."""

    exit_code = EXIT_BAD_INPUT


class TransientStoreError(StoreError, Transient):
    """Object storage failed even after the client's retries (5xx, throttling, refused or
    timed-out connections, bodies cut short): the server may be back soon."""

    exit_code = EXIT_TRANSIENT


class GuardTimeout(Transient):
    """The GPU never had enough free memory within the guard's timeout."""

    exit_code = EXIT_GUARD_TIMEOUT


def one_line(text: str, limit: int = 600) -> str:
    """``text`` as one printable line of at most ``limit`` characters: a message that
    quotes user input (a key with a newline, a megabyte of garbage) stays one line."""
    flat = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
