"""The pure decision of restart when idle (idle_restart.py): every verdict, and max_wait."""

from __future__ import annotations

import math

import pytest

from clawsup.supervisor.idle_restart import (
    DEFAULT_MAX_WAIT,
    PendingRestart,
    Verdict,
    decide,
    parse_max_wait,
)

PENDING = PendingRestart(pid=42, requested_at=1000.0, deadline=600.0, max_wait=600.0, detail="x")
LOCK = ["/s/a.jsonl.lock"]


def test_waits_while_a_lock_is_held_before_the_deadline() -> None:
    assert decide(PENDING, pid_now=42, held=LOCK, now=599.9) is Verdict.WAIT


def test_restarts_when_no_lock_is_held() -> None:
    assert decide(PENDING, pid_now=42, held=[], now=0.0) is Verdict.IDLE


def test_restarts_at_the_deadline_with_a_lock_held() -> None:
    assert decide(PENDING, pid_now=42, held=LOCK, now=600.0) is Verdict.MAX_WAIT


def test_idle_wins_over_the_deadline() -> None:
    # At the deadline with nothing held it is simply idle: no turn was cut short.
    assert decide(PENDING, pid_now=42, held=[], now=700.0) is Verdict.IDLE


@pytest.mark.parametrize("pid_now", [None, 43])
def test_a_process_that_went_overtakes_the_request(pid_now: int | None) -> None:
    assert decide(PENDING, pid_now=pid_now, held=[], now=0.0) is Verdict.OVERTAKEN
    assert decide(PENDING, pid_now=pid_now, held=LOCK, now=700.0) is Verdict.OVERTAKEN


@pytest.mark.parametrize(("value", "seconds"), [
    (None, DEFAULT_MAX_WAIT), (90, 90.0), (1.5, 1.5), ("10m", 600.0), ("1m30s", 90.0),
    ("0s", 0.0), ("1d", 86400.0),
])
def test_max_wait_is_seconds_or_a_duration(value: float | str | None, seconds: float) -> None:
    assert parse_max_wait(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "-5s", -5, "2d", 86401, math.inf, math.nan, True])
def test_a_bad_max_wait_is_a_value_error(value: float | str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_max_wait(value)
