"""Session locks: what the gateway writes in them, and whether one is orphaned.

Two kinds live in a sessions directory:

- ``<sessionId>.jsonl.lock``: the transcript lock, created with O_EXCL and held for a whole
  agent run. Content ``{"pid": N, "createdAt": "<ISO-8601>"}``; newer gateways add
  ``"starttime"``, the owner's start time in clock ticks since boot (field 22 of
  ``/proc/<pid>/stat``).
- ``sessions.json.lock``: the index lock, ``{"pid": N, "startedAt": ...}``, held only while
  the gateway rewrites ``sessions.json``.

Everything here but :func:`probe_owner` is pure, so the decisions can be tested with a fake
clock. A lock is orphaned when

- its owner was one of our programs and has exited (the loop tells us which pids): at once;
- its owner's PID is alive but belongs to a process that started after the lock was
  created (the PID was reused, typically by the new gateway after a container restart,
  whose old locks the gateway's own ``kill(pid, 0)`` check takes for live): at once;
- its owner is dead (or a zombie) and the lock is older than ``lock_max_age``;
- its content is unreadable (empty, not JSON, no usable pid) and the file is older than
  ``lock_max_age``: the gateway creates the file before it writes the content, so a young
  empty lock is one being written.

A lock whose live owner started before it was created is held, whatever its age.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeGuard

from clawsup.supervisor import procinfo

TRANSCRIPT_LOCK_SUFFIX = ".jsonl.lock"
INDEX_LOCK_NAME = "sessions.json.lock"

# The gateway itself takes an index lock over once its mtime is 30 s old: it is only ever
# held while sessions.json is rewritten. A dead owner's index lock is therefore removed
# after min(lock_max_age, 30 s), never reported as a stuck message, and cleared at once
# when our gateway exits -- the new gateway would otherwise wait on it for its 10 s lock
# timeout and fail, since that is shorter than the 30 s staleness.
INDEX_LOCK_STALE_AFTER = 30.0

# How much later than its own lock an honest owner may appear to have started.
# psutil (and probe_owner, which uses the same formula) derives a start time as
# btime + starttime / CLK_TCK: btime is the boot time in whole seconds, recomputed from the
# current wall clock, and starttime counts 10 ms ticks. createdAt is the wall clock the
# gateway read when it wrote the lock, in ms; a lock without createdAt falls back to its
# mtime, which the kernel takes from a coarse, jiffy-granular clock. Tick and ms rounding,
# the coarse mtime, and small wall-clock steps between the lock's writing and our check
# (an NTP step, a leap second) can each make the real owner look up to a fraction of a
# second younger than its lock. A reuse is a process born after its predecessor died and
# after the lock was written; one second of slack only misses a reuse within one second
# of the lock's creation, which the stuck-message timeout still catches.
START_TIME_SLACK = 1.0

# A real lock is under 100 bytes; anything much larger is not one of the gateway's.
MAX_LOCK_BYTES = 4096

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class LockKind(enum.Enum):
    TRANSCRIPT = "transcript"
    INDEX = "index"


def lock_kind(name: str) -> LockKind | None:
    """Which kind of gateway lock a file name is, or None for any other name."""
    if name == INDEX_LOCK_NAME:
        return LockKind.INDEX
    if name.endswith(TRANSCRIPT_LOCK_SUFFIX) and len(name) > len(TRANSCRIPT_LOCK_SUFFIX):
        return LockKind.TRANSCRIPT
    return None


@dataclass(frozen=True, slots=True)
class LockContent:
    """What a lock file says; every field None when it says nothing usable."""

    pid: int | None = None
    created_at: float | None = None  # epoch seconds, from createdAt (or startedAt)
    starttime: int | None = None  # owner's start, clock ticks since boot


def _is_count(value: object) -> TypeGuard[int]:
    # bool is an int in Python; JSON's true is not a pid.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_timestamp(value: object) -> float | None:
    """An ISO-8601 string (``...Z`` or with an offset) or epoch ms/s number -> epoch seconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if parsed.tzinfo is None:  # JavaScript's toISOString() always means UTC
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        # Date.now() is in ms; a number that small is in seconds.
        return float(value) / 1000.0 if value > 1e11 else float(value)
    return None


def parse_lock(raw: bytes) -> LockContent:
    """Parse a lock file's bytes; garbage (binary, not JSON, wrong types) gives LockContent()."""
    if len(raw) > MAX_LOCK_BYTES:
        return LockContent()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return LockContent()
    if not isinstance(data, dict):
        return LockContent()
    pid = data.get("pid")
    starttime = data.get("starttime")
    created = data.get("createdAt", data.get("startedAt"))
    return LockContent(
        pid=pid if _is_count(pid) and pid > 0 else None,
        created_at=parse_timestamp(created),
        starttime=starttime if _is_count(starttime) else None,
    )


@dataclass(frozen=True, slots=True)
class OwnerProcess:
    """A live (non-zombie) process, as far as a lock's owner check needs it."""

    pid: int
    ppid: int
    starttime: int  # clock ticks since boot, immune to wall-clock changes
    create_time: float  # wall-clock seconds, as psutil.Process(pid).create_time()


def probe_owner(pid: int, boot_time: float) -> OwnerProcess | None:
    """The process ``pid`` now, or None when there is none or it is a zombie.

    One read of ``/proc/<pid>/stat``. ``boot_time`` is ``psutil.boot_time()``, read once
    per sweep by the caller: with it the start time is exactly psutil's ``create_time()``.
    A zombie has exited and holds nothing any more, even before its parent reaps it.
    """
    stat = procinfo.read_stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return None
    return OwnerProcess(
        pid=pid,
        ppid=stat.ppid,
        starttime=stat.starttime,
        create_time=boot_time + stat.starttime / _CLOCK_TICKS,
    )


class OrphanReason(enum.Enum):
    DEAD = "dead"  # owner PID gone, lock older than lock_max_age
    REUSED = "reused"  # owner PID now belongs to a process born after the lock
    EXITED = "exited"  # owner was one of our programs and has exited
    UNREADABLE = "unreadable"  # no usable content, file older than lock_max_age


@dataclass(frozen=True, slots=True)
class Verdict:
    orphan: OrphanReason | None  # None: keep the lock
    age: float  # seconds since the lock was created (createdAt, else mtime)
    owner_alive: bool


def lock_birth(content: LockContent, mtime: float, now: float) -> float:
    """When the lock was created: its createdAt, or its mtime when that is missing or lies
    in the future (a garbage or clock-skewed value must not keep a lock forever)."""
    created = content.created_at
    if created is None or created > now + START_TIME_SLACK:
        return mtime
    return created


def classify_lock(
    content: LockContent,
    mtime: float,
    owner: OwnerProcess | None,
    *,
    now: float,
    exited_pids: Collection[int],
    lock_max_age: float,
    kind: LockKind = LockKind.TRANSCRIPT,
) -> Verdict:
    """Decide whether a lock is orphaned.

    ``owner`` is what :func:`probe_owner` says about ``content.pid`` (None: dead or zombie),
    ``exited_pids`` the pids of our programs that have exited.
    """
    birth = lock_birth(content, mtime, now)
    age = max(0.0, now - birth)
    if content.pid is None:
        orphan = OrphanReason.UNREADABLE if age > lock_max_age else None
        return Verdict(orphan, age, owner_alive=False)
    if owner is None:
        if content.pid in exited_pids:
            return Verdict(OrphanReason.EXITED, age, owner_alive=False)
        limit = lock_max_age
        if kind is LockKind.INDEX:
            limit = min(lock_max_age, INDEX_LOCK_STALE_AFTER)
        return Verdict(OrphanReason.DEAD if age > limit else None, age, owner_alive=False)
    if content.starttime is not None:
        # Ticks since boot from the same kernel counter: an exact comparison, no slack.
        reused = owner.starttime != content.starttime
    else:
        reused = owner.create_time > birth + START_TIME_SLACK
    if reused:
        reason = OrphanReason.EXITED if content.pid in exited_pids else OrphanReason.REUSED
        return Verdict(reason, age, owner_alive=True)
    return Verdict(None, age, owner_alive=True)


def stuck_report_due(
    held_for: float, message_timeout: float, last_reported: float | None, now: float
) -> bool:
    """Whether a lock held by a live owner should be reported as a stuck message now.

    Once when it first exceeds ``message_timeout``, then again each further
    ``message_timeout`` it is still held -- not on every sweep.
    """
    if held_for <= message_timeout:
        return False
    return last_reported is None or now - last_reported >= message_timeout
