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


# -- threads other than the main one ---------------------------------------------------------
#
# A Node program does its file I/O on libuv worker threads: one stuck in D on a dead mount
# stalls every file operation while the main thread sleeps in epoll, so looking at the
# main thread alone never sees it. Such a thread is tracked like the main one (continuous
# D, frozen switch count, for d_state_after), but the remedy differs. A hung main thread
# gets SIGKILL and a respawn, as before. A process with another thread in D cannot exit
# until the kernel returns that thread either, SIGKILL included, and restarting it in a
# loop would only pile up processes stuck in exit. So a stuck thread is reported (event,
# status, health) and one graceful restart is asked for, per process: if the kernel gives
# the thread back, the restart completes; if not, the program is reported unkillable after
# stop_timeout and SIGKILL, and stays so until the kernel lets it go.


@dataclass(frozen=True)
class ThreadInD:
    """A thread other than the main one, seen in D by one sample."""

    tid: int
    name: str
    switches: int | None


@dataclass(frozen=True)
class Threads:
    """The program's other threads seen in D, one record each, and what was done."""

    records: tuple[tuple[ThreadInD, DState], ...] = ()
    reported: int | None = None  # the tid reported stuck, while it stays in D
    restart_asked: bool = False  # the one graceful restart, for this process


NO_THREADS_IN_D = Threads()


def track_threads(previous: Threads, seen: tuple[ThreadInD, ...], now: float) -> Threads:
    """Fold one reading of the threads in D into the records; a thread not seen in D
    any more is dropped, and so is its report."""
    before = {thread.tid: record for thread, record in previous.records}
    records = tuple(
        (thread, track_d_state(before.get(thread.tid, NOT_IN_D), "D", thread.switches, now))
        for thread in seen
    )
    reported = previous.reported if any(t.tid == previous.reported for t, _ in records) else None
    return Threads(records=records, reported=reported, restart_asked=previous.restart_asked)


def newly_stuck(record: Threads, now: float, d_state_after: float) -> tuple[ThreadInD, float] | None:
    """The thread that has been stuck longest past ``d_state_after``, unless one is
    reported already; with its seconds in D."""
    if record.reported is not None:
        return None
    stuck = [(thread, d_state_seconds(d, now)) for thread, d in record.records
             if is_hung(d, now, d_state_after)]
    return max(stuck, key=lambda found: found[1]) if stuck else None


def report_stuck(record: Threads, tid: int) -> tuple[Threads, bool]:
    """Mark ``tid`` reported; True when the process' one graceful restart is due now."""
    restart = not record.restart_asked
    return Threads(records=record.records, reported=tid, restart_asked=True), restart


def stuck_thread(record: Threads, now: float) -> str:
    """The reported thread in the user's words, or ""."""
    for thread, d in record.records:
        if thread.tid == record.reported:
            return (f"thread {thread.tid} ({thread.name}) in D state for "
                    f"{d_state_seconds(d, now):.0f}s")
    return ""


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
