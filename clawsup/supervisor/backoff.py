"""Restart timing and the crash-loop breaker: pure functions of their inputs.

The rules (DESIGN.md §5, after Pebble):

- a run that lasted at least ``reset_after`` was healthy: the restart after it is
  immediate, and the count of quick failures starts again from zero;
- each further quick failure waits ``initial * factor**n``, capped at ``max``;
- jitter is applied separately so that many supervisors restarted together (a fleet
  after a host reboot) do not hit the model API in lock step;
- ``max_restarts`` automatic restarts within ``window`` is a crash loop: the program goes
  FATAL for ``cooldown``.
"""

from __future__ import annotations

from collections.abc import Iterable


def backoff_delay(quick_failures: int, initial: float, factor: float, maximum: float) -> float:
    """Delay before the restart that follows ``quick_failures`` consecutive quick failures.

    ``quick_failures == 0`` means the last run was healthy: restart at once.
    """
    if quick_failures <= 0 or initial <= 0.0:
        return 0.0
    # factor ** n overflows to inf for a long crash history; min() keeps it at the cap.
    try:
        delay = initial * factor ** (quick_failures - 1)
    except OverflowError:
        return maximum
    return min(delay, maximum)


def with_jitter(delay: float, jitter: float, unit_random: float, maximum: float) -> float:
    """Spread ``delay`` by up to +-``jitter`` (a fraction), never past ``maximum``.

    ``unit_random`` is a number in [0, 1) supplied by the caller, so this stays pure.
    """
    if delay <= 0.0:
        return 0.0
    spread = delay * jitter * (2.0 * unit_random - 1.0)
    return max(0.0, min(delay + spread, maximum))


def next_quick_failures(quick_failures: int, run_seconds: float, reset_after: float) -> int:
    """Count of consecutive quick failures after a run of ``run_seconds`` ended."""
    if run_seconds >= reset_after:
        return 0
    return quick_failures + 1


def restarts_in_window(restart_times: Iterable[float], now: float, window: float) -> int:
    return sum(1 for at in restart_times if now - at < window)


def is_crash_loop(restart_times: Iterable[float], now: float, max_restarts: int, window: float) -> bool:
    """True when ``max_restarts`` restarts already happened within ``window`` before ``now``.

    Called before scheduling another restart: the restart that would exceed the budget is
    the one refused.
    """
    return restarts_in_window(restart_times, now, window) >= max_restarts
