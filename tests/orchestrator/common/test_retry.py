"""The shared retry helper: back-off schedules, retried calls and polling to a deadline."""

from __future__ import annotations

import pytest

from orchestrator.common.retry import Backoff, RetryPolicy, call_with_retries, poll_until


class Flaky:
    """Fails with ``errors`` one after another, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Retryable(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("try again")
        self.retry_after = retry_after


def test_backoff_doubles_to_its_cap_with_or_without_jitter() -> None:
    plain = Backoff(1.0, 10.0)
    assert [plain.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    # Equal jitter: half fixed, half random; rand=0.5 gives three quarters.
    jittered = Backoff(0.5, 10.0, jitter=True)
    assert [jittered.delay(n, lambda: 0.5) for n in range(1, 7)] == [
        0.375,
        0.75,
        1.5,
        3.0,
        6.0,
        7.5,
    ]
    assert jittered.delay(1, lambda: 0.0) == 0.25 and jittered.delay(1, lambda: 1.0) == 0.5
    assert plain.delay(10_000) == 10  # no float overflow after very many failures


def test_a_call_is_retried_with_the_policy_and_the_servers_retry_after() -> None:
    sleeps: list[float] = []
    heard: list[tuple[str, float]] = []
    flaky = Flaky(Retryable(), Retryable(retry_after=3.0), Retryable(retry_after=999.0))
    policy = RetryPolicy(attempts=4, max_retry_after_s=60.0)
    result = call_with_retries(
        flaky,
        policy,
        retryable=lambda e: isinstance(e, Retryable),
        retry_after=lambda e: getattr(e, "retry_after", None),
        on_retry=lambda e, pause: heard.append((str(e), pause)),
        sleep=sleeps.append,
        rand=lambda: 0.5,
    )
    assert result == "ok" and flaky.calls == 4
    assert sleeps == [0.375, 3.0, 60.0]  # back-off, the server's word, capped
    assert heard == [("try again", 0.375), ("try again", 3.0), ("try again", 60.0)]
    assert all(type(s) is float for s in sleeps)


def test_a_call_gives_up_with_the_last_error_or_at_once_on_another() -> None:
    sleeps: list[float] = []
    last = Retryable()
    flaky = Flaky(Retryable(), Retryable(), last, Retryable())
    with pytest.raises(Retryable) as info:
        call_with_retries(
            flaky,
            RetryPolicy(attempts=3),
            retryable=lambda e: isinstance(e, Retryable),
            sleep=sleeps.append,
            rand=lambda: 0.0,
        )
    assert info.value is last and flaky.calls == 3 and sleeps == [0.25, 0.5]
    # Not retryable: raised as it came, no pause.
    refused = Flaky(ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        call_with_retries(refused, RetryPolicy(), retryable=lambda e: False, sleep=sleeps.append)
    assert refused.calls == 1 and sleeps == [0.25, 0.5]
    # attempts=1 for one call: a single try.
    once = Flaky(Retryable())
    with pytest.raises(Retryable):
        call_with_retries(
            once, RetryPolicy(), retryable=lambda e: True, sleep=sleeps.append, attempts=1
        )
    assert once.calls == 1


def test_a_policy_needs_one_attempt_at_least() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_polling_stops_when_done_and_cuts_the_last_pause_at_the_deadline() -> None:
    clock = Clock()
    waits: list[tuple[int, float, float]] = []
    polls = iter(range(100))
    got = poll_until(
        lambda: next(polls),
        lambda n: n == 3,
        backoff=Backoff(1.0, 10.0),
        deadline_s=60.0,
        clock=clock,
        sleep=clock.sleep,
        on_wait=lambda n, pause, elapsed: waits.append((n, pause, elapsed)),
        on_timeout=lambda n, elapsed: pytest.fail("timed out"),
    )
    assert got == 3 and clock.sleeps == [1, 2, 4]
    assert waits == [(0, 1, 0), (1, 2, 1), (2, 4, 3)]

    class TimedOut(Exception):
        pass

    def give_up(last: int, elapsed: float):
        raise TimedOut(f"last poll {last} after {elapsed:g} s")

    clock = Clock()
    with pytest.raises(TimedOut, match="last poll 9 after 60 s"):
        poll_until(
            iter(range(100)).__next__,
            lambda n: False,
            backoff=Backoff(1.0, 10.0),
            deadline_s=60.0,
            clock=clock,
            sleep=clock.sleep,
            on_timeout=give_up,
        )
    assert clock.sleeps == [1, 2, 4, 8, 10, 10, 10, 10, 5]


def test_an_error_while_polling_is_raised_as_it_came() -> None:
    clock = Clock()

    def broken() -> int:
        raise RuntimeError("NVML went away")

    with pytest.raises(RuntimeError, match="NVML went away"):
        poll_until(
            broken,
            lambda n: True,
            backoff=Backoff(1.0, 10.0),
            deadline_s=60.0,
            clock=clock,
            sleep=clock.sleep,
            on_timeout=lambda n, e: pytest.fail("timed out"),
        )
    assert clock.sleeps == []
