"""One way to wait and try again: exponential back-off, retried calls, polling to a deadline.

Three places used to carry a loop of their own - Kubernetes API calls, the Kubernetes pod
watch and the trainer's GPU guard. They now share ``Backoff`` (the pauses) and
tenacity's retry engine: ``RetryPolicy`` and ``call_with_retries`` for calls that fail
with an exception worth another try (the Kubernetes client, and its watch through
``RetryPolicy.delay``), ``poll_until`` for a condition awaited up to a deadline (the GPU
guard). The clock, ``sleep`` and the random source are parameters, so tests run every
schedule without waiting.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import tenacity

T = TypeVar("T")

# 2**64 times any first pause is beyond every cap: larger exponents only overflow floats.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class Backoff:
    """Pauses that start at ``first_s`` and double up to ``max_s``; with ``jitter`` each is
    "equal jitter" - half of it fixed, half random - so that clients that failed together
    do not come back together."""

    first_s: float
    max_s: float
    jitter: bool = False

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The pause after the ``failures``-th failure in a row (counting from 1)."""
        base = min(self.max_s, self.first_s * 2 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))
        return base / 2 + rand() * base / 2 if self.jitter else base


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing call is tried again.

    ``attempts`` tries in all (a watch: failures in a row), pausing ``backoff`` between
    them, or what the server asked for (``Retry-After``), at most ``max_retry_after_s``.
    """

    attempts: int = 6
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0, jitter=True))
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def delay(
        self,
        failures: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The pause after the ``failures``-th failure: the server's ``retry_after``
        (capped), else the back-off."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self.backoff.delay(failures, rand)


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None] = lambda e: None,
    on_retry: Callable[[BaseException, float], None] = lambda e, s: None,
    sleep: Callable[[float], None],
    rand: Callable[[], float] = random.random,
    attempts: int | None = None,
) -> T:
    """``fn()``, tried again after a ``retryable`` exception until ``attempts`` (default
    the policy's) tries have failed; the last exception, or one that is not retryable,
    propagates as it was raised."""

    def wait(state: tenacity.RetryCallState) -> float:
        error = _exception(state)
        return policy.delay(state.attempt_number, retry_after(error), rand)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        on_retry(_exception(state), state.upcoming_sleep)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts or policy.attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(retryable),
        sleep=lambda seconds: sleep(float(seconds)),  # tenacity hands a float subclass
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


def poll_until(
    poll: Callable[[], T],
    done: Callable[[T], bool],
    *,
    backoff: Backoff,
    deadline_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_wait: Callable[[T, float, float], None] = lambda r, pause, elapsed: None,
    on_timeout: Callable[[T, float], NoReturn],
) -> T:
    """Call ``poll`` until ``done`` says its result will do, pausing ``backoff`` between
    polls; the last pause is cut so that no poll comes after ``deadline_s`` seconds.
    ``on_wait(result, pause, elapsed)`` hears of every pause; when the deadline has passed
    with the condition unmet, ``on_timeout(last result, elapsed)`` raises."""
    start = clock()

    def elapsed() -> float:
        return clock() - start

    def wait(state: tenacity.RetryCallState) -> float:
        return min(backoff.delay(state.attempt_number), deadline_s - elapsed())

    def stop(state: tenacity.RetryCallState) -> bool:
        return deadline_s - elapsed() <= 0

    def before_sleep(state: tenacity.RetryCallState) -> None:
        on_wait(_result(state), state.upcoming_sleep, elapsed())

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        on_timeout(_result(state), elapsed())

    retrying = tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_result(lambda result: not done(result)),
        sleep=lambda seconds: sleep(float(seconds)),
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    return retrying(poll)


def _exception(state: tenacity.RetryCallState) -> BaseException:
    assert state.outcome is not None and state.outcome.failed
    error = state.outcome.exception()
    assert error is not None
    return error


def _result(state: tenacity.RetryCallState) -> Any:
    assert state.outcome is not None
    return state.outcome.result()
