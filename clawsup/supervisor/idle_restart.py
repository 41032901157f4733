"""Restart when idle: a restart asked for from inside a turn waits for the turn to end.

The agent runs ``clawsupctl restart --when-idle`` through its exec tool, as a child of
the very gateway it asks to restart, while its turn holds the session's transcript lock.
A restart then would kill the turn mid-reply, leave the lock behind, and the user would
never hear back. So the request is answered at once, and the restart waits until no
process of the program's tree holds a transcript lock (the janitor indexes the locks and
their owners), or until ``max_wait`` runs out: a turn that never ends must not put the
restart off forever, and the restart then says it interrupted one.

Only the decision lives here, a pure function of the pending request, the program's
process now, the locks it holds and the time; the controller carries it out (timer,
restart, events), as program.py's effects are carried out by the daemon.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from clawsup.units import parse_duration

# How long a restart waits for the last lock by default, and at most. A gateway turn
# times out after 600 s (agents.defaults.timeoutSeconds): by then every turn has ended.
DEFAULT_MAX_WAIT = 600.0
MAX_MAX_WAIT = 86400.0
# While a restart is pending, the locks are looked at this often: the restart follows
# the end of the turn within about this long.
CHECK_INTERVAL = 1.0


class Verdict(enum.Enum):
    WAIT = "wait"  # a lock is held and there is time left
    IDLE = "idle"  # no lock held: restart now
    MAX_WAIT = "max_wait"  # max_wait ran out with a lock still held: restart now anyway
    # The process it was asked for is gone (stopped, crashed, restarted for another
    # reason): a fresh one is not what the request was about, so it is dropped.
    OVERTAKEN = "overtaken"


@dataclass(frozen=True)
class PendingRestart:
    pid: int  # the process to restart
    requested_at: float  # wall clock
    deadline: float  # monotonic: restart by then, lock or not
    max_wait: float
    detail: str  # the client's free text, for events only


def parse_max_wait(value: float | str | None) -> float:
    """Seconds from the wire's ``max_wait`` (a number of seconds or a duration string);
    the default when None. Raises ValueError saying what is wrong."""
    if value is None:
        return DEFAULT_MAX_WAIT
    seconds = float(parse_duration(value))
    if math.isnan(seconds) or seconds > MAX_MAX_WAIT:
        raise ValueError(f"max_wait must be at most 1d (86400 s), got {value!r}")
    return seconds


def decide(pending: PendingRestart, *, pid_now: int | None, held: Sequence[object],
           now: float) -> Verdict:
    """Restart now? ``pid_now``: the program's process if it is STARTING or RUNNING (else
    None); ``held``: the transcript locks its tree holds; ``now``: monotonic."""
    if pid_now != pending.pid:
        return Verdict.OVERTAKEN
    if not held:
        return Verdict.IDLE
    if now >= pending.deadline:
        return Verdict.MAX_WAIT
    return Verdict.WAIT
