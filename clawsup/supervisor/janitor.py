"""The session janitor: orphaned locks, stuck messages, oversized transcripts, old archives.

The supervisor's event loop owns one :class:`Janitor` and drives it; the janitor sends no
signal and opens no socket, it only reads, renames and deletes files in the configured
session directories and returns what it did and found in a :class:`SweepReport`:

- every ``interval``: ``sweep(owners)``;
- when one of our programs exits, before it is respawned:
  ``program_exited(program, pids, owners)``, so the new gateway never meets a lock of
  the dead one (nor, if it was over the limit, the transcript it choked on);
- when ``fileno()`` (an inotify descriptor, or None without inotify) is readable:
  ``on_readable()``.

Cost. Each session directory has one inotify watch; the janitor keeps an index of the
locks, transcripts (and which are oversized) and archives in it. A sweep re-examines only
the names inotify reported since the last one (one lstat each), plus the locks (few: one
per running agent run), which are re-judged from the index: one /proc read per distinct
owner pid.
A session directory that appears later (a fresh home gets ``agents/main/sessions`` at
the gateway's first turn, in one ``mkdir -p``) is an inotify event too: the directories
it may appear in -- ``agents/`` and each ``agents/<id>/``, or while missing, their
nearest existing ancestor -- are watched for children created, renamed or deleted (never
for writes), and such an event makes the next sweep re-glob, so the new directory is
pinned and swept one interval later, its locks on the same terms as any other. Removing
a session directory is an event on its parent even while our descriptor keeps its inode.
Every ``full_pass_every`` a full pass re-globs the directories all the same and
re-lists each one; in a directory watched all along it lstats only names the index lacks,
names inotify reported, and the locks -- any other entry kept its name, inode and size, or
the watch would have said so. What a directory watch cannot see (a write through a hard
link in another directory, a write through mmap; the gateway does neither) waits for the
next cold scan. A cold scan -- of a new directory, of one without a watch, of every one
after an inotify queue overflow -- lists the names and lstats every ``*.jsonl``, lock and
archive, relative to the directory's descriptor, and nothing else (as ``find -size`` must).
Without inotify every sweep is a cold full pass.

Safety. Only direct children of the session directories are touched, and only regular
files: ``lstat`` (never ``stat``) decides, locks are opened with
O_NOFOLLOW|O_NONBLOCK (a FIFO never blocks a read) and checked with fstat. Rename,
link and unlink act on the directory entry, never on what a symlink points to. All of it
goes through a descriptor of the directory, and a directory is accepted only if the
descriptor's real path (``/proc/self/fd/N``) lies inside the real path of its glob's fixed
prefix (``~/.clawdbot/agents`` for ``~/.clawdbot/agents/*/sessions``), resolved once when
first seen: a ``sessions`` (or agent) symlink pointing elsewhere is skipped and logged
once; one pointing inside is the same directory and swept once. A directory that vanishes
or cannot be read is logged once, until it changes again; the sweep goes on with the rest.

Archiving. A transcript over ``max_session_size`` whose lock file is gone is renamed in
place to ``<id>.jsonl.<UTC yyyymmddTHHMMSSZ>.old`` (``.<n>.old`` if that exists), with
renameat2(RENAME_NOREPLACE): one atomic step that fails rather than replace an earlier
archive, and leaves no moment where the transcript has neither name. Where the filesystem
lacks that flag, link() (which never replaces either) then unlink() of the old name,
only if it still is the same inode. No line is lost to a concurrent writer: an
``appendFile`` that opened the transcript before the rename writes into the archive's
inode, one that opens it after creates a fresh transcript. The archive time is in the
name because the archive keeps the transcript's mtime (its last write); retention counts
from the name, or from the ctime (which rename updates) for a legacy ``<id>.jsonl.old``.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import functools
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from clawsup.supervisor import procinfo
from clawsup.supervisor.config import JanitorConfig, expand_path
from clawsup.supervisor.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_MASK_ADD,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
)
from clawsup.supervisor.locks import (
    TRANSCRIPT_LOCK_SUFFIX,
    LockContent,
    LockKind,
    OrphanReason,
    OwnerProcess,
    classify_lock,
    lock_birth,
    lock_kind,
    parse_lock,
    probe_owner,
    stuck_report_due,
)
from clawsup.supervisor.message_timeout import GATEWAY_TURN_TIMEOUT, MARGIN
from clawsup.units import format_duration, format_size

log = logging.getLogger("clawsup.janitor")

SESSION_SUFFIX = ".jsonl"
ARCHIVE_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# <id>.jsonl.<stamp>.old, <id>.jsonl.<stamp>.<n>.old, or the old watchdog's <id>.jsonl.old.
_ARCHIVE_NAME = re.compile(r"(?P<session>.+\.jsonl)(?:\.(?P<stamp>\d{8}T\d{6}Z)(?:\.\d+)?)?\.old")
_MAX_ARCHIVE_COUNTER = 1000
_MAX_PARENT_HOPS = 16
# The exited pids of our programs remembered (each names its program): enough for every
# process of a few runs of a large tree, bounded whatever the restart rate.
EXITED_PIDS_KEPT = 1024

# On a directory a session directory may appear in (at any depth): a child created,
# renamed in or out, or deleted, or the directory itself going away. Never a write: a
# gateway writing its config next to agents/ must not wake the janitor. IN_MASK_ADD: the
# same inode may be a session directory too (two patterns), whose watch must keep its mask.
_ANCESTOR_MASK = (
    IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
    | IN_ONLYDIR | IN_MASK_ADD
)
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED


# ---------------------------------------------------------------------------------------
# What a sweep reports


@dataclass(frozen=True, slots=True)
class OrphanLock:
    """A lock the janitor removed."""

    kind: ClassVar[str] = "orphan_lock"
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

    def event_data(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "pid": self.pid,
            "reason": self.reason.value,
            "age": round(self.age, 3),
            "session_id": _session_id(self.path.name, TRANSCRIPT_LOCK_SUFFIX),
        }


@dataclass(frozen=True, slots=True)
class ArchivedSession:
    """A transcript over ``max_session_size`` renamed to its archive name."""

    kind: ClassVar[str] = "session_archived"
    path: Path  # the transcript's name, now free for a new session
    archive: Path
    size: int
    program: None = None

    @property
    def message(self) -> str:
        return f"Archiving large session: {self.path} ({format_size(self.size)})"

    def event_data(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "archive": str(self.archive),
            "size": self.size,
            "session_id": _session_id(self.path.name, SESSION_SUFFIX),
        }


@dataclass(frozen=True, slots=True)
class PurgedArchive:
    """An archive deleted ``archive_retention`` after it was archived."""

    kind: ClassVar[str] = "archive_purged"
    path: Path
    archived_at: float
    age: float  # seconds since archiving
    program: None = None

    @property
    def message(self) -> str:
        return f"Purging old session archive: {self.path} (archived {format_duration(self.age)} ago)"

    def event_data(self) -> dict[str, Any]:
        return {"path": str(self.path), "archived_at": self.archived_at, "age": round(self.age, 3)}


@dataclass(frozen=True, slots=True)
class StuckMessage:
    """A transcript lock held by a live owner for longer than ``message_timeout``.

    Reported once, then again after each further ``message_timeout`` while still held.
    """

    kind: ClassVar[str] = "message_timeout"
    path: Path  # the lock
    pid: int
    session_id: str
    held_for: float
    program: str | None  # our program the owner belongs to (itself or an ancestor)

    @property
    def message(self) -> str:
        owner = f"PID {self.pid}" + (f" of {self.program}" if self.program else "")
        return f"Stuck message: {self.path} (held by {owner} for {int(self.held_for)}s)"

    def event_data(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "pid": self.pid,
            "session_id": self.session_id,
            "held_for": round(self.held_for, 3),
        }


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
        """Every finding, each with ``kind``, ``program``, ``message`` and ``event_data()``."""
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
class _Findings:
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


def _session_id(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) and name != suffix else None


# ---------------------------------------------------------------------------------------
# Archive names and race-free renames


def archive_name(session_name: str, archived_at: float, counter: int = 0) -> str:
    """``<id>.jsonl.<UTC stamp>.old``, with ``.<counter>`` before ``.old`` when counter > 0."""
    stamp = time.strftime(ARCHIVE_STAMP_FORMAT, time.gmtime(archived_at))
    return f"{session_name}.{stamp}.{counter}.old" if counter else f"{session_name}.{stamp}.old"


def archived_at_from_name(name: str) -> float | None:
    """The archive time a name records, None for a legacy or malformed name."""
    match = _ARCHIVE_NAME.fullmatch(name)
    stamp = match.group("stamp") if match is not None else None
    if stamp is None:
        return None
    # By hand, not strptime: a full pass may read thousands of these.
    try:
        return datetime(
            int(stamp[0:4]),
            int(stamp[4:6]),
            int(stamp[6:8]),
            int(stamp[9:11]),
            int(stamp[11:13]),
            int(stamp[13:15]),
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        return None


_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def rename_noreplace(dir_fd: int, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` in one directory; FileExistsError if target exists.

    renameat2(RENAME_NOREPLACE) when the filesystem supports it; else link() + unlink(),
    where the unlink only happens if ``source`` is still the inode that was linked.
    """
    if _renameat2 is not None:
        if _renameat2(dir_fd, os.fsencode(source), dir_fd, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), source)
    os.link(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    linked = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
    current = os.stat(source, dir_fd=dir_fd, follow_symlinks=False)
    if (current.st_dev, current.st_ino) == (linked.st_dev, linked.st_ino):
        os.unlink(source, dir_fd=dir_fd)


# ---------------------------------------------------------------------------------------
# The index of one session directory


@dataclass(slots=True)
class _LockEntry:
    ino: int
    mtime_ns: int
    size: int
    content: LockContent


@dataclass(eq=False)
class _SessionDir:
    path: Path  # as the glob matched it: what logs and reports show
    fd: int
    key: tuple[int, int]  # (st_dev, st_ino)
    wd: int | None = None
    rescan: bool = True  # the next pass must stat every entry (new, overflowed, unwatched)
    locks: dict[str, _LockEntry] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)  # regular transcripts, by name
    oversized: set[str] = field(default_factory=set)  # those of them over max_session_size
    archives: dict[str, tuple[int, float]] = field(default_factory=dict)  # -> (ino, archived_at)
    dirty: set[str] = field(default_factory=set)  # names inotify reported


def _entry_kind(name: str) -> str | None:
    """Which index an entry belongs in: session, lock, archive, or None (never stat'ed)."""
    if name.endswith(SESSION_SUFFIX):
        return "session"
    if name.endswith(".lock"):
        return "lock" if lock_kind(name) is not None else None
    if name.endswith(".old") and _ARCHIVE_NAME.fullmatch(name):
        return "archive"
    return None


def _fixed_parts(parts: tuple[str, ...]) -> int:
    """How many of a glob's leading path components have no wildcard."""
    for count, part in enumerate(parts):
        if glob.has_magic(part):
            return count
    return len(parts)


@functools.cache
def _pattern_parts(pattern: str) -> tuple[str, ...]:
    """A glob's path components, split once per pattern.

    Cached, not only for speed: pathlib interns every component, and CPython drops an
    interned string when the last Path holding it goes. Splitting the pattern at every
    sweep (each program exit sweeps) churned the interpreter's interned-string table, whose
    periodic regrowth showed as ~1 MiB of heap per few thousand restarts.
    """
    return Path(pattern).parts


@functools.cache
def _glob_root(pattern: str) -> str:
    """A glob's fixed directory prefix: ``/h/.clawdbot/agents`` for ``/h/.clawdbot/agents/*/sessions``."""
    parts = _pattern_parts(pattern)
    fixed = parts[: _fixed_parts(parts)]
    return str(Path(*fixed)) if fixed else "/"


def _name_matches(name: str, component: str) -> bool:
    """Whether glob.glob would match ``name`` with the path component ``component``
    (a wildcard never matches a leading dot)."""
    if name.startswith(".") and not component.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, component)


def _subdirectories(directory: str, component: str, *, follow: bool) -> list[str]:
    """The children of ``directory`` that match ``component`` and are directories now.

    ``follow``: a symlink to a directory counts (a fixed prefix such as ~/.clawdbot may
    be one); otherwise only real directories do, as below the glob's root the janitor
    never follows a symlink.
    """
    if not glob.has_magic(component):
        path = os.path.join(directory, component)
        try:
            info = os.stat(path) if follow else os.lstat(path)
        except OSError:
            return []
        return [path] if stat.S_ISDIR(info.st_mode) else []
    try:
        entries = os.scandir(directory)
    except OSError:
        return []
    with entries:
        try:
            return [
                entry.path
                for entry in entries
                if _name_matches(entry.name, component) and entry.is_dir(follow_symlinks=follow)
            ]
        except OSError:
            return []


@dataclass(slots=True)
class _Ancestor:
    """A directory watched because a session directory may appear in it, at any depth."""

    path: str
    children: set[str]  # the glob components a child's name must match to matter


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


# What a cold scan lstats besides transcripts; _entry_kind has the last word.
_LOCK_OR_ARCHIVE_SUFFIXES = (".lock", ".old")


def _sort_out(names: list[str]) -> tuple[list[str], list[str]]:
    """The transcripts among ``names``, and the names that may be locks or archives."""
    transcripts: list[str] = []
    others: list[str] = []
    # One loop, not two comprehensions: a cold pass calls endswith once per entry.
    add_transcript, add_other = transcripts.append, others.append
    for name in names:
        if name.endswith(SESSION_SUFFIX):
            add_transcript(name)
        elif name.endswith(_LOCK_OR_ARCHIVE_SUFFIXES):
            add_other(name)
    return transcripts, others


def _lstat_transcripts(dir_fd: int, names: list[str], limit: int) -> tuple[set[str], set[str]]:
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


# ---------------------------------------------------------------------------------------


class Janitor:
    """Sweeps the configured session directories. See the module docstring for the rules.

    ``clock`` is the wall clock (lock ``createdAt`` values are wall-clock times); tests
    inject a fake one. ``use_inotify=False`` forces the polling fallback.
    """

    def __init__(
        self,
        config: JanitorConfig,
        clock: Callable[[], float] = time.time,
        *,
        use_inotify: bool = True,
        message_timeout: float | None = None,
    ) -> None:
        self._config = config
        # The value in force (message_timeout.py works it out from the gateway's config
        # and sets it again when that changes); the explicit one, else the default.
        self.message_timeout = (
            message_timeout if message_timeout is not None
            else config.message_timeout if config.message_timeout is not None
            else GATEWAY_TURN_TIMEOUT + MARGIN
        )
        self._clock = clock
        self._patterns = [str(expand_path(pattern)) for pattern in config.sessions]
        self._roots: dict[str, str] = {}  # pattern -> realpath of its fixed prefix, pinned
        self._dirs: dict[tuple[int, int], _SessionDir] = {}
        self._by_wd: dict[int, _SessionDir] = {}
        # Directories a new session directory may appear in: each pattern's nearest
        # existing fixed ancestor, its root, and the directories between root and match.
        self._ancestors: dict[int, _Ancestor] = {}
        self._ancestors_complete = True  # every one of them has its watch
        self._globs_changed = False  # one of them reported a change: re-glob next sweep
        self._problems: dict[str, str] = {}  # "topic:path" -> message last logged about it
        self._exited: dict[int, tuple[str, float]] = {}  # pid -> (program, exit time)
        # (directory key, lock name, pid, birth) -> when last reported as stuck
        self._stuck_reported: dict[tuple[tuple[int, int], str, int, float], float] = {}
        self._stats = JanitorStats()
        self._next_full: float | None = None
        self._last_full = 0.0
        self._overflowed = False
        self._dirs_changed = False
        self._closed = False
        self._inotify: Inotify | None = None
        if use_inotify:
            try:
                self._inotify = Inotify()
            except OSError as error:
                log.warning("inotify unavailable (%s): a full pass every sweep instead", error)

    # -- the loop's interface ------------------------------------------------------------

    def fileno(self) -> int | None:
        """The inotify descriptor to watch for reading, or None when polling."""
        return self._inotify.fileno() if self._inotify is not None else None

    @property
    def stats(self) -> JanitorStats:
        """A copy of the work counters."""
        return replace(self._stats)

    @property
    def directories(self) -> list[Path]:
        """The session directories currently swept."""
        return sorted(d.path for d in self._dirs.values())

    def on_readable(self) -> None:
        """Drain inotify: note which names changed. Cheap; the work waits for the sweep."""
        if self._inotify is None:
            return
        events = self._inotify.read_events()
        self._stats.inotify_events += len(events)
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                # Events were dropped: nothing in the index can be trusted until rescanned.
                self._overflowed = True
                self._stats.overflows += 1
                for watched in self._dirs.values():
                    watched.rescan = True
                continue
            ancestor = self._ancestors.get(event.wd)
            if ancestor is not None:
                if event.mask & _SELF_GONE:
                    self._globs_changed = True  # the next walk finds what is there now
                    if event.mask & IN_IGNORED:
                        del self._ancestors[event.wd]
                elif any(_name_matches(event.name, child) for child in ancestor.children):
                    self._globs_changed = True
            directory = self._by_wd.get(event.wd)
            if directory is None:
                continue
            if event.mask & _SELF_GONE:
                self._dirs_changed = True
                if event.mask & IN_IGNORED:  # the kernel dropped the watch
                    del self._by_wd[event.wd]
                    directory.wd = None
            elif event.name:
                directory.dirty.add(event.name)

    def sweep(self, owners: Mapping[int, str] | None = None, *, refresh: bool = False) -> SweepReport:
        """One interval's work. ``owners``: pid -> program name of our live programs, used
        to say which program a stuck message or a held lock belongs to. ``refresh``
        re-globs the directories first (an agent directory created since the last full
        pass counts too)."""
        return self._sweep(owners or {}, report_stuck=True, refresh=refresh)

    def quiet_until(self) -> float | None:
        """Until when (wall clock) sweeps would find nothing to do unless inotify reports
        a change; None when time alone may bring work, so a sweep is due every interval.

        Time alone brings work while a lock is indexed (its owner may die or its message
        get stuck, with no file event), an oversized session waits for its lock, inotify
        reported names not looked at yet, a directory is not (yet) watched, or a new
        session directory may appear unreported (a directory on the way to one has no
        watch). Otherwise only the next full pass and the first archive to expire are on
        the clock.
        """
        if (self._inotify is None or self._overflowed or self._dirs_changed
                or self._globs_changed or not self._ancestors_complete):
            return None
        deadline = self._next_full
        if deadline is None:
            return None
        retention = self._config.archive_retention
        for directory in self._dirs.values():
            if (directory.wd is None or directory.rescan or directory.dirty
                    or directory.locks or directory.oversized):
                return None
            for _, archived_at in directory.archives.values():
                deadline = min(deadline, archived_at + retention)
        return deadline

    def program_exited(
        self, program: str, pids: Collection[int], owners: Mapping[int, str] | None = None
    ) -> SweepReport:
        """Clear the locks ``pids`` (the exited program's processes) held, now.

        Call before respawning, after reaping or not (a zombie holds nothing). Also
        archives an oversized transcript the program held, so the new process starts a
        fresh session instead of choking on the same one. Re-globs the directories (a
        lock in an agent directory created since the last full pass counts too). Stuck
        messages are not reported here.
        """
        now = self._clock()
        for pid in pids:
            self._exited.pop(pid, None)  # a reused pid moves to the newest end
            self._exited[pid] = (program, now)
        # The newest only: a crash loop exits pids by the thousand within lock_max_age, and
        # PID 1 must not grow with them. An older pid's locks went at its own exit's sweep;
        # one that shows up later still goes, as DEAD or REUSED (locks.py).
        while len(self._exited) > EXITED_PIDS_KEPT:
            del self._exited[next(iter(self._exited))]
        return self._sweep(owners or {}, report_stuck=False, refresh=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for directory in list(self._dirs.values()):
            self._drop(directory)
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def __enter__(self) -> Janitor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- one sweep -----------------------------------------------------------------------

    def _sweep(self, owners: Mapping[int, str], report_stuck: bool, refresh: bool) -> SweepReport:
        if self._closed:
            raise RuntimeError("cannot sweep: the janitor is closed")
        now = self._clock()
        found = _Findings()
        self.on_readable()
        horizon = now - self._config.lock_max_age
        self._exited = {pid: seen for pid, seen in self._exited.items() if seen[1] >= horizon}
        full = self._full_pass_due(now)
        if full or refresh or self._globs_changed or not self._ancestors_complete:
            self._refresh_directories(found)
        for directory in list(self._dirs.values()):
            try:
                if directory.wd is None or directory.rescan:
                    self._scan_cold(directory, found)
                elif full:
                    self._scan_warm(directory, found)
                else:
                    self._apply_dirty(directory)
            except OSError as error:
                self._lost_search_permission(directory, error, found)
        if full:
            self._stats.full_passes += 1
            self._last_full = now
            self._next_full = now + self._config.full_pass_every
            self._overflowed = self._dirs_changed = False
        else:
            self._stats.quick_sweeps += 1
        self._check_locks(now, owners, report_stuck, found)
        for directory in list(self._dirs.values()):
            try:
                self._archive_oversized(directory, now, found)
                self._purge_archives(directory, now, found)
            except OSError as error:
                self._lost_search_permission(directory, error, found)
        return found.report(full)

    def _full_pass_due(self, now: float) -> bool:
        return (
            self._inotify is None
            or self._overflowed
            or self._dirs_changed
            or self._next_full is None
            or now >= self._next_full
            or now < self._last_full  # the wall clock went back: do not wait for it
            or any(self._deleted(directory) for directory in self._dirs.values())
        )

    @staticmethod
    def _deleted(directory: _SessionDir) -> bool:
        # Our open descriptor keeps a removed directory's inode alive, and the kernel
        # sends IN_DELETE_SELF only when the last reference goes: ask the inode instead.
        # One fstat per directory (not per file) and sweep.
        return os.fstat(directory.fd).st_nlink == 0

    # -- directories ---------------------------------------------------------------------

    def _problem(self, key: str, message: str, found: _Findings) -> None:
        """Log a problem once, until its message changes or it clears.

        ``key`` is ``"<topic>:<path>"``: what went wrong where.
        """
        if self._problems.get(key) != message:
            self._problems[key] = message
            log.warning("%s", message)
            found.errors.append(message)

    def _root(self, pattern: str) -> str | None:
        root = self._roots.get(pattern)
        if root is None:
            fixed = _glob_root(pattern)
            if not os.path.isdir(fixed):
                return None
            root = self._roots[pattern] = os.path.realpath(fixed)
        return root

    def _open_directory(self, match: str, root: str, found: _Findings) -> int | None:
        try:
            fd = os.open(match, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # gone since glob listed it: the next pass will say so
        except OSError as error:
            self._problem(f"dir:{match}", f"Cannot open session directory {match}: {error.strerror}", found)
            return None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the path, resolved now (racy, but never outside root)
            real = os.path.realpath(match)
        if not _inside(real, root):
            os.close(fd)
            self._problem(
                f"dir:{match}",
                f"Skipping session directory {match}: it resolves to {real}, outside {root}",
                found,
            )
            return None
        return fd

    def _refresh_directories(self, found: _Findings) -> None:
        """Re-glob: start on new directories, drop the ones that vanished."""
        self._watch_ancestors(found)  # first: what appears after the glob is an event
        seen: set[tuple[int, int]] = set()
        new: list[tuple[tuple[int, int], str, int]] = []
        for pattern in self._patterns:
            root = self._root(pattern)
            matches = sorted(glob.glob(pattern)) if root is not None else []
            if not matches and not glob.has_magic(pattern):
                self._problem(f"dir:{pattern}", f"Session directory missing: {pattern}", found)
            for match in matches:
                fd = self._open_directory(match, root or "/", found)
                if fd is None:
                    continue
                if self._problems.pop(f"dir:{match}", None) is not None:
                    log.info("Session directory usable again: %s", match)
                info = os.fstat(fd)
                key = (info.st_dev, info.st_ino)
                known = self._dirs.get(key)
                if key in seen or known is not None:
                    os.close(fd)  # known, or a second glob or in-root symlink to the same
                    if known is not None and key not in seen:
                        self._recheck(known, Path(match), found)
                else:
                    new.append((key, match, fd))
                seen.add(key)
        for key, directory in list(self._dirs.items()):
            if key not in seen:
                message = f"Session directory vanished: {directory.path}"
                log.warning("%s", message)
                found.errors.append(message)
                # If its literal pattern now reports it missing, that is the same news.
                self._problems[f"dir:{directory.path}"] = f"Session directory missing: {directory.path}"
                self._drop(directory)
        for key, match, fd in new:
            self._add(key, Path(match), fd, found)

    def _watch_ancestors(self, found: _Findings) -> None:
        """Watch every directory a session directory may yet appear in, at any depth.

        For ``~/.clawdbot/agents/*/sessions``: ``agents`` (a new agent) and each
        ``agents/<id>`` (its ``sessions``); while ``agents`` is missing, its nearest
        existing ancestor instead, as FileWatch waits for a missing inbox. A fresh home
        gets the whole chain from one ``mkdir -p`` when the gateway's first turn starts,
        and its lock comes right after: with these watches the janitor re-globs at the
        next sweep instead of at the next full pass, up to ``full_pass_every`` later.

        Level by level, each directory is watched before it is listed, so a child made
        before its parent's watch existed is in the listing, and one made after is an
        event. Below the glob's root no symlink is followed (nor watched): the glob and
        the root check of ``_open_directory`` still decide what is swept. The watches
        carry no timer: at idle they cost nothing.
        """
        if self._inotify is None:
            return
        self._globs_changed = False
        wanted: dict[int, _Ancestor] = {}
        complete = True
        for pattern in self._patterns:
            parts = _pattern_parts(pattern)
            fixed = _fixed_parts(parts)
            last = len(parts) - 1  # the level of a match's parent
            depth = max(1, min(fixed, last))  # parts[0] is "/": absolute
            while depth > 1 and not os.path.isdir(os.path.join(*parts[:depth])):
                depth -= 1
            start = depth
            level = [os.path.join(*parts[:depth])]
            while level and depth <= last:
                child = parts[depth]
                below: list[str] = []
                for path in level:
                    wd = self._watch_ancestor(path, depth <= fixed, found)
                    if wd is None:
                        # Gone since its parent's listing: that was an event on the
                        # parent's watch. Otherwise nothing will report what appears here.
                        complete = complete and depth > start and not os.path.isdir(path)
                        continue
                    wanted.setdefault(wd, _Ancestor(path, set())).children.add(child)
                    if depth < last:
                        below.extend(_subdirectories(path, child, follow=depth < fixed))
                level = below
                depth += 1
        for wd in self._ancestors.keys() - wanted.keys():
            if wd not in self._by_wd:
                self._inotify.remove_watch(wd)
        self._ancestors = wanted
        self._ancestors_complete = complete

    def _watch_ancestor(self, path: str, follow: bool, found: _Findings) -> int | None:
        assert self._inotify is not None
        try:
            wd = self._inotify.add_watch(path, _ANCESTOR_MASK if follow else _ANCESTOR_MASK | IN_DONT_FOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None  # gone, or replaced by a file, since it was listed
        except OSError as error:  # EACCES, ENOSPC (fs.inotify.max_user_watches)
            self._problem(
                f"ancestor:{path}",
                f"Cannot watch {path} for new session directories ({error.strerror}): "
                "looking for them every sweep",
                found,
            )
            return None
        self._problems.pop(f"ancestor:{path}", None)
        return wd

    def _add(self, key: tuple[int, int], path: Path, fd: int, found: _Findings) -> None:
        directory = _SessionDir(path=path, fd=fd, key=key)
        self._dirs[key] = directory
        self._watch(directory, found)
        log.info("Watching session directory: %s", path)

    def _recheck(self, directory: _SessionDir, match: Path, found: _Findings) -> None:
        """A known directory, globbed again: renamed within the pattern? Lost its watch?"""
        if directory.path != match:
            try:
                same = os.stat(directory.path).st_ino == directory.key[1]
            except OSError:
                same = False
            if not same:
                log.info("Session directory %s is now %s", directory.path, match)
                directory.path = match
        if directory.wd is None:
            self._watch(directory, found)

    def _watch(self, directory: _SessionDir, found: _Findings) -> None:
        if self._inotify is None:
            return
        # Watch the very inode we opened and vetted, not whatever the path names now.
        try:
            try:
                wd = self._inotify.add_watch(f"/proc/self/fd/{directory.fd}")
            except FileNotFoundError:  # no /proc
                wd = self._inotify.add_watch(str(directory.path))
        except OSError as error:
            self._problem(
                f"watch:{directory.path}",
                f"Cannot watch session directory {directory.path} ({error.strerror}): "
                "scanning it in full every sweep",
                found,
            )
            return
        directory.wd = wd
        directory.rescan = True  # events before the watch existed were never seen
        self._by_wd[wd] = directory
        self._problems.pop(f"watch:{directory.path}", None)

    def _drop(self, directory: _SessionDir) -> None:
        if directory.wd is not None and self._inotify is not None:
            self._by_wd.pop(directory.wd, None)
            if directory.wd not in self._ancestors:  # the same inode watched as both
                self._inotify.remove_watch(directory.wd)
        os.close(directory.fd)
        self._dirs.pop(directory.key, None)

    # -- the index -----------------------------------------------------------------------

    def _lstat(self, directory: _SessionDir, name: str) -> os.stat_result | None:
        self._stats.stat_calls += 1
        try:
            return os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _scan_cold(self, directory: _SessionDir, found: _Findings) -> None:
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
            sessions, oversized = _lstat_transcripts(directory.fd, transcripts, self._config.max_session_size)
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
        self, directory: _SessionDir, names: list[str]
    ) -> tuple[dict[str, _LockEntry], dict[str, tuple[int, float]]]:
        """Index entries for the (few) locks and archives of a cold scan. Raises OSError
        for anything but a name that vanished."""
        locks: dict[str, _LockEntry] = {}
        archives: dict[str, tuple[int, float]] = {}
        for name in names:
            kind = _entry_kind(name)
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

    def _scan_warm(self, directory: _SessionDir, found: _Findings) -> None:
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
                    self._forget(directory, name)
        # New names include ones never indexed (not ours, or not regular files):
        # _apply_dirty skips the first by name and the second after one lstat.
        unknown = present.difference(directory.sessions)
        unknown.difference_update(directory.locks, directory.archives)
        directory.dirty |= unknown
        directory.dirty.update(directory.locks)
        self._apply_dirty(directory)

    def _unreadable(self, directory: _SessionDir, error: OSError, found: _Findings) -> None:
        self._problem(
            f"read:{directory.path}",
            f"Cannot read session directory {directory.path}: {error.strerror}",
            found,
        )

    def _lost_search_permission(self, directory: _SessionDir, error: OSError, found: _Findings) -> None:
        # A directory still listable but no longer searchable (chmod a-x while watched)
        # fails on the lstat of a name, not on the listing. The names already taken off
        # ``dirty`` were never examined: trust nothing until a cold scan succeeds.
        directory.rescan = True
        self._unreadable(directory, error, found)

    def _readable(self, directory: _SessionDir) -> None:
        if self._problems.pop(f"read:{directory.path}", None) is not None:
            log.info("Session directory readable again: %s", directory.path)

    def _apply_dirty(self, directory: _SessionDir) -> None:
        """Re-examine the names inotify reported, one lstat each, and nothing else."""
        dirty, directory.dirty = directory.dirty, set()
        for name in dirty:
            kind = _entry_kind(name)
            if kind is None:
                continue
            info = self._lstat(directory, name)
            if info is None or not stat.S_ISREG(info.st_mode):
                self._forget(directory, name)
            elif kind == "session":
                directory.sessions.add(name)
                if info.st_size > self._config.max_session_size:
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

    def _forget(self, directory: _SessionDir, name: str) -> None:
        directory.locks.pop(name, None)
        directory.sessions.discard(name)
        directory.oversized.discard(name)
        directory.archives.pop(name, None)

    def _lock_entry(
        self, directory: _SessionDir, name: str, info: os.stat_result, old: _LockEntry | None
    ) -> _LockEntry | None:
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
        return _LockEntry(info.st_ino, info.st_mtime_ns, info.st_size, content)

    def _read_lock(self, directory: _SessionDir, name: str, info: os.stat_result) -> LockContent | None:
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

    # -- locks ---------------------------------------------------------------------------

    def _check_locks(
        self, now: float, owners: Mapping[int, str], report_stuck: bool, found: _Findings
    ) -> None:
        boot_time: list[float] = []  # read once per sweep, and only if a lock names a pid
        probed: dict[int, OwnerProcess | None] = {}
        exited = self._exited
        live_keys: set[tuple[tuple[int, int], str, int, float]] = set()

        def owner_of(pid: int) -> OwnerProcess | None:
            if pid not in probed:
                if not boot_time:
                    boot_time.append(procinfo.boot_time())
                self._stats.owner_probes += 1
                probed[pid] = probe_owner(pid, boot_time[0])
            return probed[pid]

        for directory in list(self._dirs.values()):
            for name, entry in list(directory.locks.items()):
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
                    lock_max_age=self._config.lock_max_age,
                    kind=kind,
                )
                if verdict.orphan is not None:
                    program = exited[content.pid][0] if content.pid in exited else None
                    orphan = OrphanLock(
                        directory.path / name,
                        content.pid,
                        verdict.orphan,
                        verdict.age,
                        program if verdict.orphan is OrphanReason.EXITED else None,
                    )
                    self._remove_lock(directory, name, entry, orphan, found)
                    continue
                if kind is not LockKind.TRANSCRIPT or content.pid is None or not verdict.owner_alive:
                    continue
                key = (directory.key, name, content.pid, lock_birth(content, mtime, now))
                live_keys.add(key)
                # Without owners there is no program to find (and no ancestors to walk).
                held_by = self._program_of(content.pid, owners, owner_of) if owners else None
                found.held.append(HeldLock(directory.path / name, content.pid, verdict.age, held_by))
                if report_stuck and stuck_report_due(
                    verdict.age, self.message_timeout, self._stuck_reported.get(key), now
                ):
                    self._stuck_reported[key] = now
                    stuck = StuckMessage(
                        directory.path / name,
                        content.pid,
                        name[: -len(TRANSCRIPT_LOCK_SUFFIX)],
                        verdict.age,
                        held_by,
                    )
                    log.warning("%s", stuck.message)
                    found.stuck.append(stuck)
        self._stuck_reported = {key: at for key, at in self._stuck_reported.items() if key in live_keys}

    @staticmethod
    def _program_of(
        pid: int, owners: Mapping[int, str], owner_of: Callable[[int], OwnerProcess | None]
    ) -> str | None:
        """Our program ``pid`` belongs to: itself, or its nearest ancestor in ``owners``
        (a launcher that re-spawns itself leaves the lock to its child)."""
        current: int | None = pid
        for _ in range(_MAX_PARENT_HOPS):
            if current is None or current <= 1:
                return None
            if current in owners:
                return owners[current]
            process = owner_of(current)
            current = process.ppid if process is not None else None
        return None

    def _remove_lock(
        self, directory: _SessionDir, name: str, entry: _LockEntry, orphan: OrphanLock, found: _Findings
    ) -> None:
        # The gateway may have taken a stale lock over in the meantime (unlink + O_EXCL
        # create): only the very file that was judged is removed. What is left is the
        # microseconds between this lstat and the unlink.
        try:
            info = self._lstat(directory, name)
            if info is None:
                directory.locks.pop(name, None)
                return
            if (info.st_ino, info.st_mtime_ns, info.st_size) != (entry.ino, entry.mtime_ns, entry.size):
                directory.dirty.add(name)  # changed: judge it again next sweep
                return
            os.unlink(name, dir_fd=directory.fd)
        except FileNotFoundError:
            directory.locks.pop(name, None)
            return
        except OSError as error:
            self._problem(
                f"remove:{orphan.path}", f"Cannot remove orphan lock {orphan.path}: {error.strerror}", found
            )
            return
        directory.locks.pop(name, None)
        log.warning("%s", orphan.message)
        found.removed_locks.append(orphan)

    # -- transcripts and archives --------------------------------------------------------

    def _archive_oversized(self, directory: _SessionDir, now: float, found: _Findings) -> None:
        limit = self._config.max_session_size
        for name in sorted(directory.oversized):
            lock_name = name + ".lock"
            if lock_name in directory.locks:
                continue  # held: archived on the sweep after its lock goes
            info = self._lstat(directory, name)
            if info is None or not stat.S_ISREG(info.st_mode):
                self._forget(directory, name)
                continue
            if info.st_size <= limit:  # truncated or rewritten since it was indexed
                directory.sessions.add(name)
                directory.oversized.discard(name)
                continue
            if self._lstat(directory, lock_name) is not None:
                directory.dirty.add(lock_name)  # a lock we have not indexed yet: held
                continue
            try:
                archive = self._rename_to_archive(directory, name, now)
            except FileNotFoundError:
                self._forget(directory, name)
                continue
            except OSError as error:
                self._problem(
                    f"archive:{directory.path / name}",
                    f"Cannot archive session {directory.path / name}: {error.strerror}",
                    found,
                )
                continue
            self._forget(directory, name)
            # The time as the name records it, as a later full pass will read it back.
            directory.archives[archive] = (info.st_ino, archived_at_from_name(archive) or now)
            archived = ArchivedSession(directory.path / name, directory.path / archive, info.st_size)
            log.info("%s", archived.message)
            found.archived.append(archived)

    def _rename_to_archive(self, directory: _SessionDir, name: str, now: float) -> str:
        for counter in range(_MAX_ARCHIVE_COUNTER):
            target = archive_name(name, now, counter)
            try:
                rename_noreplace(directory.fd, name, target)
            except FileExistsError:
                continue
            return target
        raise OSError(errno.EEXIST, f"{_MAX_ARCHIVE_COUNTER} archive names already taken", name)

    def _purge_archives(self, directory: _SessionDir, now: float, found: _Findings) -> None:
        retention = self._config.archive_retention
        for name, (ino, archived_at) in list(directory.archives.items()):
            if now - archived_at <= retention:
                continue
            info = self._lstat(directory, name)
            if info is None or not stat.S_ISREG(info.st_mode) or info.st_ino != ino:
                directory.archives.pop(name, None)
                if info is not None:
                    directory.dirty.add(name)  # replaced: index it afresh
                continue
            try:
                os.unlink(name, dir_fd=directory.fd)
            except FileNotFoundError:
                directory.archives.pop(name, None)
                continue
            except OSError as error:
                self._problem(
                    f"purge:{directory.path / name}",
                    f"Cannot delete session archive {directory.path / name}: {error.strerror}",
                    found,
                )
                continue
            directory.archives.pop(name, None)
            purged = PurgedArchive(directory.path / name, archived_at, now - archived_at)
            log.info("%s", purged.message)
            found.purged.append(purged)
