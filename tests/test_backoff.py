"""Restart timing and the crash-loop budget: pure functions, examples and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawsup.supervisor.backoff import (
    backoff_delay,
    is_crash_loop,
    next_quick_failures,
    restarts_in_window,
    with_jitter,
)

initials = st.floats(min_value=0.001, max_value=60.0, allow_nan=False)
factors = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
maxima = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)
units = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
delays = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)


# -- backoff_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize("quick_failures", [0, -1, -100])
def test_no_quick_failures_restarts_at_once(quick_failures: int) -> None:
    assert backoff_delay(quick_failures, 0.5, 2.0, 30.0) == 0.0


def test_delay_grows_by_factor_then_caps_at_max() -> None:
    got = [backoff_delay(n, 0.5, 2.0, 30.0) for n in range(1, 10)]
    assert got == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_factor_one_is_a_constant_delay() -> None:
    assert {backoff_delay(n, 3.0, 1.0, 30.0) for n in range(1, 50)} == {3.0}


@pytest.mark.parametrize("quick_failures", [1100, 10**6, 10**18])
def test_huge_failure_count_overflows_to_max(quick_failures: int) -> None:
    assert backoff_delay(quick_failures, 0.5, 2.0, 30.0) == 30.0


def test_zero_initial_stays_zero_for_huge_failure_count() -> None:
    assert backoff_delay(2000, 0.0, 2.0, 30.0) == 0.0


@given(n=st.integers(min_value=1, max_value=10**6), initial=initials, factor=factors)
def test_delay_is_between_initial_and_max(n: int, initial: float, factor: float) -> None:
    maximum = initial * 100
    delay = backoff_delay(n, initial, factor, maximum)
    assert math.isfinite(delay)
    assert initial <= delay <= maximum


@given(n=st.integers(min_value=1, max_value=5000), initial=initials, factor=factors, maximum=maxima)
def test_delay_never_decreases_with_more_failures(
    n: int, initial: float, factor: float, maximum: float
) -> None:
    maximum = max(maximum, initial)
    assert backoff_delay(n + 1, initial, factor, maximum) >= backoff_delay(n, initial, factor, maximum)


@given(n=st.integers(min_value=1, max_value=60), initial=initials, factor=factors, maximum=maxima)
def test_delay_matches_the_formula_below_the_cap(
    n: int, initial: float, factor: float, maximum: float
) -> None:
    maximum = max(maximum, initial)
    expected = min(initial * factor ** (n - 1), maximum)
    assert backoff_delay(n, initial, factor, maximum) == pytest.approx(expected)


# -- with_jitter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_random", "expected"),
    [(0.0, 9.0), (0.25, 9.5), (0.5, 10.0), (0.75, 10.5)],
)
def test_jitter_spreads_by_up_to_the_fraction(unit_random: float, expected: float) -> None:
    assert with_jitter(10.0, 0.1, unit_random, 30.0) == pytest.approx(expected)


def test_jitter_never_goes_past_max() -> None:
    assert with_jitter(30.0, 0.5, 0.99, 30.0) == 30.0


def test_jitter_of_zero_delay_is_zero() -> None:
    # A healthy run's immediate restart must stay immediate whatever the random number.
    assert with_jitter(0.0, 1.0, 0.99, 30.0) == 0.0


def test_no_jitter_is_the_delay() -> None:
    assert with_jitter(7.0, 0.0, 0.123, 30.0) == 7.0


@given(delay=delays, jitter=jitters, unit_random=units, maximum=maxima)
def test_jitter_stays_within_bounds(delay: float, jitter: float, unit_random: float, maximum: float) -> None:
    delay = min(delay, maximum)
    got = with_jitter(delay, jitter, unit_random, maximum)
    assert 0.0 <= got <= maximum
    assert delay * (1.0 - jitter) - 1e-9 <= got <= delay * (1.0 + jitter) + 1e-9


@given(delay=st.floats(min_value=0.001, max_value=3600.0), jitter=st.floats(0.0, 0.99), unit_random=units)
def test_jitter_below_one_never_turns_a_backoff_into_an_immediate_restart(
    delay: float, jitter: float, unit_random: float
) -> None:
    assert with_jitter(delay, jitter, unit_random, 3600.0) > 0.0


# -- next_quick_failures ---------------------------------------------------------------------


def test_a_quick_failure_adds_one() -> None:
    assert next_quick_failures(0, 1.0, 60.0) == 1
    assert next_quick_failures(4, 59.999, 60.0) == 5


def test_a_run_of_reset_after_or_longer_resets_the_count() -> None:
    assert next_quick_failures(7, 60.0, 60.0) == 0
    assert next_quick_failures(7, 3 * 3600.0, 60.0) == 0


@given(
    count=st.integers(min_value=0, max_value=10**6),
    run_seconds=st.floats(min_value=0.0, max_value=1e6),
    reset_after=maxima,
)
def test_quick_failures_either_reset_or_count_up(count: int, run_seconds: float, reset_after: float) -> None:
    got = next_quick_failures(count, run_seconds, reset_after)
    assert got == (0 if run_seconds >= reset_after else count + 1)


@given(
    run_seconds=st.floats(min_value=0.0, max_value=1e6), reset_after=maxima, initial=initials, factor=factors
)
def test_a_healthy_run_always_restarts_immediately(
    run_seconds: float, reset_after: float, initial: float, factor: float
) -> None:
    """Whatever came before, a crash after reset_after of service does not wait."""
    count = next_quick_failures(12, max(run_seconds, reset_after), reset_after)
    delay = with_jitter(backoff_delay(count, initial, factor, 600.0), 0.5, 0.0, 600.0)
    assert delay == 0.0


# -- crash loop ------------------------------------------------------------------------------


def test_restarts_in_window_counts_only_recent_ones() -> None:
    assert restarts_in_window([0.0, 50.0, 95.0, 99.0], now=100.0, window=10.0) == 2
    assert restarts_in_window([90.0], now=100.0, window=10.0) == 0  # exactly window ago


def test_budget_reached_within_window_is_a_crash_loop() -> None:
    times = [100.0, 110.0, 120.0, 130.0, 140.0]
    assert is_crash_loop(times, now=150.0, max_restarts=5, window=60.0)
    assert not is_crash_loop(times[:4], now=150.0, max_restarts=5, window=60.0)


def test_old_restarts_fall_out_of_the_window() -> None:
    times = [0.0, 10.0, 20.0, 30.0, 40.0]
    assert not is_crash_loop(times, now=65.0, max_restarts=5, window=60.0)


def test_no_history_is_never_a_crash_loop() -> None:
    assert not is_crash_loop([], now=0.0, max_restarts=1, window=60.0)


@given(
    times=st.lists(st.floats(min_value=0.0, max_value=1000.0), max_size=50),
    now=st.floats(min_value=0.0, max_value=1000.0),
    max_restarts=st.integers(min_value=1, max_value=20),
    window=st.floats(min_value=0.001, max_value=1000.0),
)
def test_crash_loop_is_the_windowed_count_against_the_budget(
    times: list[float], now: float, max_restarts: int, window: float
) -> None:
    recent = [t for t in times if now - t < window]
    assert is_crash_loop(times, now, max_restarts, window) == (len(recent) >= max_restarts)
    # More history can only make it more of a crash loop.
    if is_crash_loop(times, now, max_restarts, window):
        assert is_crash_loop([*times, now], now, max_restarts, window)
