"""Hang detection thresholds: pure functions of samples and time.

A gateway is hung when its main thread has been in D state *continuously* for
``d_state_after``. The old watchdog killed on one sample of D, which also killed a gateway
that was merely waiting on the disk for a few milliseconds. Here every sample must be D,
and the thread's context-switch count must not move between samples: a thread that left
D and came back (many short disk waits) is making progress, not hung.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DState:
    """Since when (monotonic) the process has been seen stuck in D, and its switch count."""

    since: float | None = None
    switches: int | None = None


NOT_IN_D = DState()


def track_d_state(previous: DState, state: str | None, switches: int | None, now: float) -> DState:
    """Fold one sample (state letter, context switches) into the D-state record."""
    if state != "D":
        return NOT_IN_D
    if previous.since is None or switches is None or switches != previous.switches:
        # First sample in D, or it switched context since the last one: the clock
        # starts again from this sample.
        return DState(since=now, switches=switches)
    return previous


def d_state_seconds(record: DState, now: float) -> float:
    return 0.0 if record.since is None else now - record.since


def is_hung(record: DState, now: float, d_state_after: float) -> bool:
    return record.since is not None and now - record.since >= d_state_after


def is_zombie_leak(zombies: int, zombie_children_max: int) -> bool:
    """More zombies than allowed under a program; 0 disables the check."""
    return zombie_children_max > 0 and zombies > zombie_children_max


@dataclass(frozen=True)
class Liveness:
    """Consecutive probe failures; ``failing`` once ``failures`` in a row."""

    consecutive_failures: int = 0
    last_ok: bool | None = None


def record_probe(previous: Liveness, ok: bool) -> Liveness:
    if ok:
        return Liveness(consecutive_failures=0, last_ok=True)
    return Liveness(consecutive_failures=previous.consecutive_failures + 1, last_ok=False)


def liveness_failed(record: Liveness, failures: int) -> bool:
    return record.consecutive_failures >= failures
