"""The janitor's decisions: which locks go, which messages are stuck, what to archive and
purge, when a full pass is due. Pure functions of the index, the clock and what /proc says.

Like program.py's state machine, nothing here touches a file: the world comes in as
arguments (``owner_of`` is the /proc probe, a dict's ``get`` in a test) and the
decisions go out as values, carried out by the janitor (core.py), which re-checks each
file right before it acts.

A lock is judged by locks.py's ``classify_lock``; an orphan is removed, a transcript lock
with a live owner is held (a message in flight), and reported as a stuck message once it
has been held for ``message_timeout``, then again each further ``message_timeout``. A
transcript over ``max_session_size`` is archived once its lock is gone; an archive is
purged ``archive_retention`` after its archive time (from its name, or its ctime for a
legacy ``<id>.jsonl.old``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from clawsup.supervisor.janitor.index import LockEntry, SessionDir
from clawsup.supervisor.janitor.report import HeldLock, OrphanLock, StuckMessage
from clawsup.supervisor.locks import (
    TRANSCRIPT_LOCK_SUFFIX,
    LockKind,
    OrphanReason,
    OwnerProcess,
    classify_lock,
    lock_birth,
    lock_kind,
    stuck_report_due,
)

# How far up a lock owner's parents to look for one of our programs.
MAX_PARENT_HOPS = 16

OwnerOf = Callable[[int], OwnerProcess | None]
# (directory key, lock name, pid, birth): one holding of one lock.
HoldingKey = tuple[tuple[int, int], str, int, float]


class Removal(NamedTuple):
    """An orphaned lock to remove: the very file judged (``entry``), nothing newer."""

    directory: SessionDir
    name: str
    entry: LockEntry
    orphan: OrphanLock


@dataclass
class LockJudgement:
    # Removals and stuck messages in the order the locks were judged.
    actions: list[Removal | StuckMessage] = field(default_factory=list)
    held: list[HeldLock] = field(default_factory=list)
    # When each holding still live was last reported as stuck.
    stuck_reported: dict[HoldingKey, float] = field(default_factory=dict)


def judge_locks(
    directories: Iterable[SessionDir],
    *,
    now: float,
    owner_of: OwnerOf,
    owners: Mapping[int, str],
    exited: Mapping[int, tuple[str, float]],
    lock_max_age: float,
    message_timeout: float,
    stuck_reported: Mapping[HoldingKey, float],
    report_stuck: bool,
) -> LockJudgement:
    """Judge every indexed lock. ``owners``: pid -> our program, for the live ones;
    ``exited``: pid -> (program, exit time) of our programs' exited processes."""
    judgement = LockJudgement()
    live: set[HoldingKey] = set()
    for directory in directories:
        for name, entry in directory.locks.items():
            content = entry.content
            kind = lock_kind(name) or LockKind.TRANSCRIPT
            owner = owner_of(content.pid) if content.pid is not None else None
            mtime = entry.mtime_ns / 1e9
            verdict = classify_lock(
                content,
                mtime,
                owner,
                now=now,
                exited_pids=exited,
                lock_max_age=lock_max_age,
                kind=kind,
            )
            if verdict.orphan is not None:
                exit_seen = exited.get(content.pid) if content.pid is not None else None
                orphan = OrphanLock(
                    directory.path / name,
                    content.pid,
                    verdict.orphan,
                    verdict.age,
                    exit_seen[0] if exit_seen is not None and verdict.orphan is OrphanReason.EXITED else None,
                )
                judgement.actions.append(Removal(directory, name, entry, orphan))
                continue
            if kind is not LockKind.TRANSCRIPT or content.pid is None or not verdict.owner_alive:
                continue
            key = (directory.key, name, content.pid, lock_birth(content, mtime, now))
            live.add(key)
            # Without owners there is no program to find (and no ancestors to walk).
            held_by = program_of(content.pid, owners, owner_of) if owners else None
            judgement.held.append(HeldLock(directory.path / name, content.pid, verdict.age, held_by))
            if report_stuck and stuck_report_due(verdict.age, message_timeout, stuck_reported.get(key), now):
                judgement.stuck_reported[key] = now
                judgement.actions.append(
                    StuckMessage(
                        directory.path / name,
                        content.pid,
                        name[: -len(TRANSCRIPT_LOCK_SUFFIX)],
                        verdict.age,
                        held_by,
                    )
                )
    for key, at in stuck_reported.items():
        if key in live:
            judgement.stuck_reported.setdefault(key, at)
    return judgement


def program_of(pid: int, owners: Mapping[int, str], owner_of: OwnerOf) -> str | None:
    """Our program ``pid`` belongs to: itself, or its nearest ancestor in ``owners``
    (a launcher that re-spawns itself leaves the lock to its child)."""
    current: int | None = pid
    for _ in range(MAX_PARENT_HOPS):
        if current is None or current <= 1:
            return None
        if current in owners:
            return owners[current]
        process = owner_of(current)
        current = process.ppid if process is not None else None
    return None


def to_archive(directory: SessionDir) -> list[str]:
    """The oversized transcripts whose lock is gone, by name. A held one is archived on
    the sweep after its lock goes."""
    return [name for name in sorted(directory.oversized) if name + ".lock" not in directory.locks]


def to_purge(directory: SessionDir, now: float, retention: float) -> list[tuple[str, int, float]]:
    """The archives archived more than ``retention`` ago, as (name, inode, archived_at)."""
    return [
        (name, ino, archived_at)
        for name, (ino, archived_at) in directory.archives.items()
        if now - archived_at > retention
    ]


def full_pass_due(now: float, next_full: float | None, last_full: float, *, untrusted: bool) -> bool:
    """Whether this sweep is a full pass. ``untrusted``: no inotify, or it lost events or
    a directory itself changed. (A deleted directory, found by fstat, also makes one.)"""
    return (
        untrusted
        or next_full is None
        or now >= next_full
        or now < last_full  # the wall clock went back: do not wait for it
    )


def quiet_until(directories: Iterable[SessionDir], next_full: float | None, retention: float) -> float | None:
    """Until when sweeps would find nothing to do unless inotify reports a change, given
    inotify reports every change of the set itself; None when time alone may bring work.

    Time alone brings work while a lock is indexed (its owner may die or its message get
    stuck, with no file event), an oversized session waits for its lock, inotify reported
    names not looked at yet, or a directory is not (yet) watched. Otherwise only the next
    full pass and the first archive to expire are on the clock.
    """
    deadline = next_full
    if deadline is None:
        return None
    for directory in directories:
        if (directory.wd is None or directory.rescan or directory.dirty
                or directory.locks or directory.oversized):
            return None
        for _, archived_at in directory.archives.values():
            deadline = min(deadline, archived_at + retention)
    return deadline
