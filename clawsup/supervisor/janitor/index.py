"""The session index: what each session directory holds, kept current at one lstat a change.

Per directory (a :class:`SessionDir`, which the directory set opens and watches) the
index keeps the transcript locks with their content, the transcripts and which of them
are over ``max_session_size``, and the archives with their archive time. Three ways to
bring it up to date:

- ``apply_dirty``: re-examine the names inotify reported, one lstat each, nothing else;
- ``scan_warm``, the periodic full pass over a directory watched all along: list it, and
  lstat only the names the index lacks or inotify reported, and the locks -- any other
  entry kept its name, inode and size, or the watch would have said so;
- ``scan_cold``, for a new directory, one without a watch, and every one after an inotify
  queue overflow: list the names and lstat every ``*.jsonl``, lock and archive, relative
  to the directory's descriptor, and nothing else (as ``find -size`` must).

What a directory watch cannot see (a write through a hard link in another directory, a
write through mmap; the gateway does neither) waits for the next cold scan. Only regular
files are indexed: ``lstat`` (never ``stat``) decides, and locks are opened with
O_NOFOLLOW|O_NONBLOCK (a FIFO never blocks a read) and checked with fstat.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from clawsup.supervisor.janitor.names import (
    LOCK_OR_ARCHIVE_SUFFIXES,
    SESSION_SUFFIX,
    archived_at_from_name,
    entry_kind,
)
from clawsup.supervisor.janitor.report import Findings, JanitorStats, Problems
from clawsup.supervisor.locks import LockContent, parse_lock

log = logging.getLogger("clawsup.janitor")


@dataclass(slots=True)
class LockEntry:
    """A lock file as last read: re-read only when its inode, mtime or size change."""

    ino: int
    mtime_ns: int
    size: int
    content: LockContent


@dataclass(eq=False)
class SessionDir:
    """One session directory: the directory set's (path, fd, key, wd), and its index."""

    path: Path  # as the glob matched it: what logs and reports show
    fd: int
    key: tuple[int, int]  # (st_dev, st_ino)
    wd: int | None = None
    rescan: bool = True  # the next pass must stat every entry (new, overflowed, unwatched)
    locks: dict[str, LockEntry] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)  # regular transcripts, by name
    oversized: set[str] = field(default_factory=set)  # those of them over max_session_size
    archives: dict[str, tuple[int, float]] = field(default_factory=dict)  # -> (ino, archived_at)
    dirty: set[str] = field(default_factory=set)  # names inotify reported


def _sort_out(names: list[str]) -> tuple[list[str], list[str]]:
    """The transcripts among ``names``, and the names that may be locks or archives."""
    transcripts: list[str] = []
    others: list[str] = []
    # One loop, not two comprehensions: a cold pass calls endswith once per entry.
    add_transcript, add_other = transcripts.append, others.append
    for name in names:
        if name.endswith(SESSION_SUFFIX):
            add_transcript(name)
        elif name.endswith(LOCK_OR_ARCHIVE_SUFFIXES):
            add_other(name)
    return transcripts, others


def lstat_transcripts(dir_fd: int, names: list[str], limit: int) -> tuple[set[str], set[str]]:
    """The names that are regular files, and those of them over ``limit``, by one lstat
    relative to ``dir_fd`` each.

    A name gone since the listing is left out; any other error (EACCES when the directory
    lost its search permission) is raised. Reads no janitor state.

    One thread, on purpose. os.lstat drops the GIL for the syscall and takes it back after,
    so two threads stat'ing halves of the list hand the GIL to each other once per file
    (a futex wake and usually a sleep): on the 2-core machine that was slower than one
    thread even when idle (best of 34 over 98,000 transcripts: 340 ms against 308 ms) and
    cost more CPU. The syscall is most of the time here (~2 us of kernel, ~0.5-1 us of
    Python per name), so the pass cannot be much faster in one CPython thread either.
    """
    sessions: set[str] = set()
    oversized: set[str] = set()
    # Locals: this loop runs once per transcript, and the stat_result is all it builds.
    lstat, is_regular, add = os.lstat, stat.S_ISREG, sessions.add
    for name in names:
        try:
            info = lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        if is_regular(info.st_mode):  # never a symlink, FIFO or directory named *.jsonl
            add(name)
            if info.st_size > limit:
                oversized.add(name)
    return sessions, oversized


class SessionIndex:
    """Keeps each :class:`SessionDir`'s index current; counts its work in ``stats``."""

    def __init__(self, max_session_size: int, stats: JanitorStats, problems: Problems) -> None:
        self._limit = max_session_size
        self._stats = stats
        self._problems = problems

    def lstat(self, directory: SessionDir, name: str) -> os.stat_result | None:
        self._stats.stat_calls += 1
        try:
            return os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def scan_cold(self, directory: SessionDir, found: Findings) -> None:
        """List the directory and lstat every transcript, lock and archive in it.

        For a new directory, one without a watch, and every directory after an overflow.
        Unchanged locks are not re-read. The transcripts are nearly every entry, so they
        take a lean path: a listing (no per-entry objects) and one relative lstat each,
        keeping only the name and whether it is over the limit.
        """
        stats = self._stats
        try:
            names = os.listdir(directory.fd)
            stats.entries_scanned += len(names)
            transcripts, others = _sort_out(names)
            stats.stat_calls += len(transcripts)
            sessions, oversized = lstat_transcripts(directory.fd, transcripts, self._limit)
            locks, archives = self._index_locks_and_archives(directory, others)
        except OSError as error:  # EACCES (lost its search permission), EIO...
            self._unreadable(directory, error, found)
            return
        self._readable(directory)
        directory.locks, directory.sessions, directory.archives = locks, sessions, archives
        directory.oversized = oversized
        directory.dirty = set()
        directory.rescan = directory.wd is None

    def _index_locks_and_archives(
        self, directory: SessionDir, names: list[str]
    ) -> tuple[dict[str, LockEntry], dict[str, tuple[int, float]]]:
        """Index entries for the (few) locks and archives of a cold scan. Raises OSError
        for anything but a name that vanished."""
        locks: dict[str, LockEntry] = {}
        archives: dict[str, tuple[int, float]] = {}
        for name in names:
            kind = entry_kind(name)
            if kind is None:
                continue
            self._stats.stat_calls += 1
            try:
                info = os.lstat(name, dir_fd=directory.fd)
            except FileNotFoundError:
                continue  # gone between listing and stat
            if not stat.S_ISREG(info.st_mode):
                continue  # a symlink, FIFO or directory named like ours: never touched
            if kind == "lock":
                lock = self._lock_entry(directory, name, info, directory.locks.get(name))
                if lock is not None:
                    locks[name] = lock
            else:
                known = directory.archives.get(name)
                if known is None or known[0] != info.st_ino:
                    archived_at = archived_at_from_name(name)
                    known = (info.st_ino, info.st_ctime if archived_at is None else archived_at)
                archives[name] = known
        return locks, archives

    def scan_warm(self, directory: SessionDir, found: Findings) -> None:
        """The periodic pass over a directory watched all along: list it, and lstat only
        the names the index lacks or inotify reported, and the locks.

        Any other entry kept its name and inode, and its size, or inotify would have
        reported it: a write, truncate, touch, rename or unlink through this directory
        is an event on its watch.
        """
        try:
            present = set(os.listdir(directory.fd))
        except OSError as error:
            self._unreadable(directory, error, found)
            return
        self._stats.entries_scanned += len(present)
        self._readable(directory)
        # Set operations against the dicts run in C without copying the index.
        for index in (directory.sessions, directory.locks, directory.archives):
            if not present.issuperset(index):
                for name in [name for name in index if name not in present]:
                    self.forget(directory, name)
        # New names include ones never indexed (not ours, or not regular files):
        # apply_dirty skips the first by name and the second after one lstat.
        unknown = present.difference(directory.sessions)
        unknown.difference_update(directory.locks, directory.archives)
        directory.dirty |= unknown
        directory.dirty.update(directory.locks)
        self.apply_dirty(directory)

    def _unreadable(self, directory: SessionDir, error: OSError, found: Findings) -> None:
        self._problems.report(
            f"read:{directory.path}",
            f"Cannot read session directory {directory.path}: {error.strerror}",
            found,
        )

    def lost_search_permission(self, directory: SessionDir, error: OSError, found: Findings) -> None:
        # A directory still listable but no longer searchable (chmod a-x while watched)
        # fails on the lstat of a name, not on the listing. The names already taken off
        # ``dirty`` were never examined: trust nothing until a cold scan succeeds.
        directory.rescan = True
        self._unreadable(directory, error, found)

    def _readable(self, directory: SessionDir) -> None:
        if self._problems.clear(f"read:{directory.path}"):
            log.info("Session directory readable again: %s", directory.path)

    def apply_dirty(self, directory: SessionDir) -> None:
        """Re-examine the names inotify reported, one lstat each, and nothing else."""
        dirty, directory.dirty = directory.dirty, set()
        for name in dirty:
            kind = entry_kind(name)
            if kind is None:
                continue
            info = self.lstat(directory, name)
            if info is None or not stat.S_ISREG(info.st_mode):
                self.forget(directory, name)
            elif kind == "session":
                directory.sessions.add(name)
                if info.st_size > self._limit:
                    directory.oversized.add(name)
                else:
                    directory.oversized.discard(name)
            elif kind == "lock":
                entry = self._lock_entry(directory, name, info, directory.locks.get(name))
                if entry is None:
                    directory.locks.pop(name, None)
                else:
                    directory.locks[name] = entry
            else:
                archived_at = archived_at_from_name(name)
                directory.archives[name] = (
                    info.st_ino,
                    info.st_ctime if archived_at is None else archived_at,
                )

    def forget(self, directory: SessionDir, name: str) -> None:
        directory.locks.pop(name, None)
        directory.sessions.discard(name)
        directory.oversized.discard(name)
        directory.archives.pop(name, None)

    def _lock_entry(
        self, directory: SessionDir, name: str, info: os.stat_result, old: LockEntry | None
    ) -> LockEntry | None:
        """The index entry for a lock file, reading its content only when it changed."""
        if old is not None and (old.ino, old.mtime_ns, old.size) == (
            info.st_ino,
            info.st_mtime_ns,
            info.st_size,
        ):
            return old
        content = self._read_lock(directory, name, info)
        if content is None:
            return None
        return LockEntry(info.st_ino, info.st_mtime_ns, info.st_size, content)

    def _read_lock(self, directory: SessionDir, name: str, info: os.stat_result) -> LockContent | None:
        """The lock's content; LockContent() when unreadable; None when it is not a
        regular file any more (replaced between lstat and open)."""
        self._stats.lock_reads += 1
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=directory.fd)
        except FileNotFoundError:
            return None
        except OSError:  # EACCES, ELOOP (became a symlink)...: judged by age alone
            return LockContent()
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                return None
            if opened.st_ino != info.st_ino:
                return LockContent()  # replaced in between: re-read on its own event
            return parse_lock(os.read(fd, 2 * 4096))
        except OSError:
            return LockContent()
        finally:
            os.close(fd)
