"""What a sweep reports: the findings (each an event), the locks held, the problems.

Each finding carries the ``program`` it concerns, the log ``message`` and its event's
typed ``payload()`` (kinds.py); the service emits them as they are.
:class:`Problems` logs a problem (a directory that cannot be read, a file that cannot be
moved) once, until it changes or clears.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clawsup.supervisor import kinds
from clawsup.supervisor.janitor.names import SESSION_SUFFIX, session_id
from clawsup.supervisor.locks import TRANSCRIPT_LOCK_SUFFIX, OrphanReason
from clawsup.units import format_duration, format_size

log = logging.getLogger("clawsup.janitor")


@dataclass(frozen=True, slots=True)
class OrphanLock:
    """A lock the janitor removed."""

    path: Path
    pid: int | None  # None when the content named none (reason UNREADABLE)
    reason: OrphanReason
    age: float  # seconds since createdAt (or mtime)
    program: str | None = None  # our program that owned it (reason EXITED)

    @property
    def message(self) -> str:
        age = f"age: {int(self.age)}s"
        if self.reason is OrphanReason.DEAD:
            why = f"PID {self.pid} is dead, {age}"
        elif self.reason is OrphanReason.REUSED:
            why = f"PID {self.pid} was reused, {age}"
        elif self.reason is OrphanReason.EXITED:
            why = f"PID {self.pid} was our {self.program}, exited, {age}"
        else:
            why = f"unreadable lock, {age}"
        return f"Removing orphan lock: {self.path} ({why})"

    def payload(self) -> kinds.OrphanLock:
        return kinds.OrphanLock(
            path=str(self.path), pid=self.pid, reason=self.reason.value, age=round(self.age, 3),
            session_id=session_id(self.path.name, TRANSCRIPT_LOCK_SUFFIX))


@dataclass(frozen=True, slots=True)
class ArchivedSession:
    """A transcript over ``max_session_size`` renamed to its archive name."""

    path: Path  # the transcript's name, now free for a new session
    archive: Path
    size: int
    program: None = None

    @property
    def message(self) -> str:
        return f"Archiving large session: {self.path} ({format_size(self.size)})"

    def payload(self) -> kinds.SessionArchived:
        return kinds.SessionArchived(
            path=str(self.path), archive=str(self.archive), size=self.size,
            session_id=session_id(self.path.name, SESSION_SUFFIX))


@dataclass(frozen=True, slots=True)
class PurgedArchive:
    """An archive deleted ``archive_retention`` after it was archived."""

    path: Path
    archived_at: float
    age: float  # seconds since archiving
    program: None = None

    @property
    def message(self) -> str:
        return f"Purging old session archive: {self.path} (archived {format_duration(self.age)} ago)"

    def payload(self) -> kinds.ArchivePurged:
        return kinds.ArchivePurged(path=str(self.path), archived_at=self.archived_at,
                                   age=round(self.age, 3))


@dataclass(frozen=True, slots=True)
class StuckMessage:
    """A transcript lock held by a live owner for longer than ``message_timeout``.

    Reported once, then again after each further ``message_timeout`` while still held.
    """

    path: Path  # the lock
    pid: int
    session_id: str
    held_for: float
    program: str | None  # our program the owner belongs to (itself or an ancestor)

    @property
    def message(self) -> str:
        owner = f"PID {self.pid}" + (f" of {self.program}" if self.program else "")
        return f"Stuck message: {self.path} (held by {owner} for {int(self.held_for)}s)"

    def payload(self) -> kinds.MessageTimeout:
        return kinds.MessageTimeout(path=str(self.path), pid=self.pid,
                                    session_id=self.session_id, held_for=round(self.held_for, 3))


Finding = OrphanLock | ArchivedSession | PurgedArchive | StuckMessage


@dataclass(frozen=True, slots=True)
class HeldLock:
    """A transcript lock whose owner is alive: a message in flight (not a finding)."""

    path: Path
    pid: int
    held_for: float
    program: str | None  # our program the owner belongs to (itself or an ancestor)


@dataclass(frozen=True, slots=True)
class SweepReport:
    removed_locks: tuple[OrphanLock, ...] = ()
    archived: tuple[ArchivedSession, ...] = ()
    purged: tuple[PurgedArchive, ...] = ()
    stuck: tuple[StuckMessage, ...] = ()
    errors: tuple[str, ...] = ()  # problems logged for the first time by this sweep
    full_pass: bool = False
    # Every transcript lock left with a live owner (restart when idle waits for none of
    # its program's).
    held: tuple[HeldLock, ...] = ()

    def findings(self) -> Iterator[Finding]:
        """Every finding, each with ``program``, ``message`` and its event's ``payload()``."""
        yield from self.removed_locks
        yield from self.archived
        yield from self.purged
        yield from self.stuck


@dataclass
class JanitorStats:
    """Work counters, for metrics and for tests that check what a sweep examined."""

    full_passes: int = 0
    quick_sweeps: int = 0
    entries_scanned: int = 0  # directory entries listed
    stat_calls: int = 0  # lstat/fstatat calls made
    lock_reads: int = 0  # lock files opened and read
    owner_probes: int = 0  # /proc/<pid>/stat reads
    inotify_events: int = 0
    overflows: int = 0


@dataclass
class Findings:
    removed_locks: list[OrphanLock] = field(default_factory=list)
    archived: list[ArchivedSession] = field(default_factory=list)
    purged: list[PurgedArchive] = field(default_factory=list)
    stuck: list[StuckMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    held: list[HeldLock] = field(default_factory=list)

    def report(self, full_pass: bool) -> SweepReport:
        return SweepReport(
            tuple(self.removed_locks),
            tuple(self.archived),
            tuple(self.purged),
            tuple(self.stuck),
            tuple(self.errors),
            full_pass,
            tuple(self.held),
        )


class Problems:
    """Problems logged once, until their message changes or they clear.

    A key is ``"<topic>:<path>"``: what went wrong where.
    """

    def __init__(self) -> None:
        self._logged: dict[str, str] = {}  # key -> the message last logged about it

    def report(self, key: str, message: str, found: Findings) -> None:
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning("%s", message)
            found.errors.append(message)

    def clear(self, key: str) -> bool:
        """Forget a problem; True when it had been reported."""
        return self._logged.pop(key, None) is not None

    def assume(self, key: str, message: str) -> None:
        """Count ``message`` as reported already (it was said in other words)."""
        self._logged[key] = message
