"""The Janitor: one sweep over the directory set, its index and the policy's decisions.

The supervisor's event loop owns one :class:`Janitor` and drives it; the janitor sends no
signal and opens no socket, it only reads, renames and deletes files in the configured
session directories and returns what it did and found in a :class:`SweepReport`:

- every ``interval``: ``sweep(owners)``;
- when one of our programs exits, before it is respawned:
  ``program_exited(program, pids, owners)``, so the new gateway never meets a lock of
  the dead one (nor, if it was over the limit, the transcript it choked on);
- when ``fileno()`` (an inotify descriptor, or None without inotify) is readable:
  ``on_readable()``.

A sweep brings the index up to date (only the names inotify reported, plus the locks; a
warm full pass every ``full_pass_every``; cold scans where nothing can be trusted), asks
the policy what to do, and does it here, each file checked again right before: a lock is
removed only if it is still the very file judged (the gateway may have taken it over),
an archive purged only if it is still the inode indexed. Without inotify every sweep is
a cold full pass.

Archiving. A transcript over ``max_session_size`` whose lock file is gone is renamed in
place to its archive name with renameat2(RENAME_NOREPLACE) (fileops.rename_noreplace):
one atomic step that fails rather than replace an earlier archive, and leaves no moment
where the transcript has neither name. No line is lost to a concurrent writer: an
``appendFile`` that opened the transcript before the rename writes into the archive's
inode, one that opens it after creates a fresh transcript. Rename, link and unlink act on
the directory entry, through the directory's descriptor, never on what a symlink points to.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from clawsup.supervisor import procinfo
from clawsup.supervisor.config import JanitorConfig, expand_path
from clawsup.supervisor.fileops import rename_noreplace
from clawsup.supervisor.inotify import Dispatcher
from clawsup.supervisor.janitor import policy
from clawsup.supervisor.janitor.dirset import DirectorySet
from clawsup.supervisor.janitor.index import LockEntry, SessionDir, SessionIndex
from clawsup.supervisor.janitor.names import archive_name, archived_at_from_name
from clawsup.supervisor.janitor.report import (
    ArchivedSession,
    Findings,
    JanitorStats,
    OrphanLock,
    Problems,
    PurgedArchive,
    SweepReport,
)
from clawsup.supervisor.locks import OwnerProcess, probe_owner
from clawsup.supervisor.message_timeout import GATEWAY_TURN_TIMEOUT, MARGIN

log = logging.getLogger("clawsup.janitor")

_MAX_ARCHIVE_COUNTER = 1000
# The exited pids of our programs remembered (each names its program): enough for every
# process of a few runs of a large tree, bounded whatever the restart rate.
EXITED_PIDS_KEPT = 1024


class Janitor:
    """Sweeps the configured session directories. See the package docstring for the rules.

    ``clock`` is the wall clock (lock ``createdAt`` values are wall-clock times); tests
    inject a fake one. ``use_inotify=False`` forces the polling fallback. ``watches``: an
    inotify dispatcher to share with other watchers (FileWatch); by default its own.
    """

    def __init__(
        self,
        config: JanitorConfig,
        clock: Callable[[], float] = time.time,
        *,
        use_inotify: bool = True,
        message_timeout: float | None = None,
        watches: Dispatcher | None = None,
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
        self._stats = JanitorStats()
        self._problems = Problems()
        self._dirs = DirectorySet(
            [str(expand_path(pattern)) for pattern in config.sessions],
            self._stats,
            self._problems,
            use_inotify=use_inotify,
            watches=watches,
        )
        self._index = SessionIndex(config.max_session_size, self._stats, self._problems)
        self._exited: dict[int, tuple[str, float]] = {}  # pid -> (program, exit time)
        self._stuck_reported: dict[policy.HoldingKey, float] = {}
        self._next_full: float | None = None
        self._last_full = 0.0
        self._closed = False

    # -- the loop's interface ------------------------------------------------------------

    def fileno(self) -> int | None:
        """The inotify descriptor to watch for reading, or None when polling."""
        return self._dirs.fileno()

    @property
    def stats(self) -> JanitorStats:
        """A copy of the work counters."""
        return replace(self._stats)

    @property
    def directories(self) -> list[Path]:
        """The session directories currently swept."""
        return sorted(directory.path for directory in self._dirs)

    def on_readable(self) -> bool:
        """Drain inotify: note which names changed. Cheap; the work waits for the sweep.
        True when one of the events was the janitor's."""
        return self._dirs.dispatch()

    def sweep(self, owners: Mapping[int, str] | None = None, *, refresh: bool = False) -> SweepReport:
        """One interval's work. ``owners``: pid -> program name of our live programs, used
        to say which program a stuck message or a held lock belongs to. ``refresh``
        re-globs the directories first (an agent directory created since the last full
        pass counts too)."""
        return self._sweep(owners or {}, report_stuck=True, refresh=refresh)

    def quiet_until(self) -> float | None:
        """Until when (wall clock) sweeps would find nothing to do unless inotify reports
        a change; None when time alone may bring work, so a sweep is due every interval.

        Besides what policy.quiet_until says of the directories: time alone brings work
        while there is no inotify, it lost events, or a new session directory may appear
        unreported (a directory on the way to one has no watch).
        """
        dirs = self._dirs
        if not dirs.watched or dirs.overflowed or dirs.dirs_changed or dirs.refresh_due:
            return None
        return policy.quiet_until(dirs, self._next_full, self._config.archive_retention)

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
        self._dirs.close()

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
        found = Findings()
        dirs, index = self._dirs, self._index
        dirs.dispatch()
        horizon = now - self._config.lock_max_age
        self._exited = {pid: seen for pid, seen in self._exited.items() if seen[1] >= horizon}
        untrusted = not dirs.watched or dirs.overflowed or dirs.dirs_changed
        full = policy.full_pass_due(now, self._next_full, self._last_full, untrusted=untrusted) or (
            dirs.any_deleted()
        )
        if full or refresh or dirs.refresh_due:
            dirs.refresh(found)
        for directory in dirs:
            try:
                if directory.wd is None or directory.rescan:
                    index.scan_cold(directory, found)
                elif full:
                    index.scan_warm(directory, found)
                else:
                    index.apply_dirty(directory)
            except OSError as error:
                index.lost_search_permission(directory, error, found)
        if full:
            self._stats.full_passes += 1
            self._last_full = now
            self._next_full = now + self._config.full_pass_every
            dirs.overflowed = dirs.dirs_changed = False
        else:
            self._stats.quick_sweeps += 1
        self._check_locks(now, owners, report_stuck, found)
        for directory in dirs:
            try:
                self._archive_oversized(directory, now, found)
                self._purge_archives(directory, now, found)
            except OSError as error:
                index.lost_search_permission(directory, error, found)
        return found.report(full)

    # -- locks ---------------------------------------------------------------------------

    def _check_locks(
        self, now: float, owners: Mapping[int, str], report_stuck: bool, found: Findings
    ) -> None:
        boot_time: list[float] = []  # read once per sweep, and only if a lock names a pid
        probed: dict[int, OwnerProcess | None] = {}

        def owner_of(pid: int) -> OwnerProcess | None:
            if pid not in probed:
                if not boot_time:
                    boot_time.append(procinfo.boot_time())
                self._stats.owner_probes += 1
                probed[pid] = probe_owner(pid, boot_time[0])
            return probed[pid]

        judgement = policy.judge_locks(
            self._dirs,
            now=now,
            owner_of=owner_of,
            owners=owners,
            exited=self._exited,
            lock_max_age=self._config.lock_max_age,
            message_timeout=self.message_timeout,
            stuck_reported=self._stuck_reported,
            report_stuck=report_stuck,
        )
        self._stuck_reported = judgement.stuck_reported
        found.held.extend(judgement.held)
        for action in judgement.actions:
            if isinstance(action, policy.Removal):
                self._remove_lock(action.directory, action.name, action.entry, action.orphan, found)
            else:
                log.warning("%s", action.message)
                found.stuck.append(action)

    def _remove_lock(
        self, directory: SessionDir, name: str, entry: LockEntry, orphan: OrphanLock, found: Findings
    ) -> None:
        # The gateway may have taken a stale lock over in the meantime (unlink + O_EXCL
        # create): only the very file that was judged is removed. What is left is the
        # microseconds between this lstat and the unlink.
        try:
            info = self._index.lstat(directory, name)
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
            self._problems.report(
                f"remove:{orphan.path}", f"Cannot remove orphan lock {orphan.path}: {error.strerror}", found
            )
            return
        directory.locks.pop(name, None)
        log.warning("%s", orphan.message)
        found.removed_locks.append(orphan)

    # -- transcripts and archives --------------------------------------------------------

    def _archive_oversized(self, directory: SessionDir, now: float, found: Findings) -> None:
        limit = self._config.max_session_size
        index = self._index
        for name in policy.to_archive(directory):
            info = index.lstat(directory, name)
            if info is None or not stat.S_ISREG(info.st_mode):
                index.forget(directory, name)
                continue
            if info.st_size <= limit:  # truncated or rewritten since it was indexed
                directory.sessions.add(name)
                directory.oversized.discard(name)
                continue
            lock_name = name + ".lock"
            if index.lstat(directory, lock_name) is not None:
                directory.dirty.add(lock_name)  # a lock we have not indexed yet: held
                continue
            try:
                archive = self._rename_to_archive(directory, name, now)
            except FileNotFoundError:
                index.forget(directory, name)
                continue
            except OSError as error:
                self._problems.report(
                    f"archive:{directory.path / name}",
                    f"Cannot archive session {directory.path / name}: {error.strerror}",
                    found,
                )
                continue
            index.forget(directory, name)
            # The time as the name records it, as a later full pass will read it back.
            directory.archives[archive] = (info.st_ino, archived_at_from_name(archive) or now)
            archived = ArchivedSession(directory.path / name, directory.path / archive, info.st_size)
            log.info("%s", archived.message)
            found.archived.append(archived)

    def _rename_to_archive(self, directory: SessionDir, name: str, now: float) -> str:
        for counter in range(_MAX_ARCHIVE_COUNTER):
            target = archive_name(name, now, counter)
            try:
                rename_noreplace(directory.fd, name, target)
            except FileExistsError:
                continue
            return target
        raise OSError(errno.EEXIST, f"{_MAX_ARCHIVE_COUNTER} archive names already taken", name)

    def _purge_archives(self, directory: SessionDir, now: float, found: Findings) -> None:
        for name, ino, archived_at in policy.to_purge(directory, now, self._config.archive_retention):
            info = self._index.lstat(directory, name)
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
                self._problems.report(
                    f"purge:{directory.path / name}",
                    f"Cannot delete session archive {directory.path / name}: {error.strerror}",
                    found,
                )
                continue
            directory.archives.pop(name, None)
            purged = PurgedArchive(directory.path / name, archived_at, now - archived_at)
            log.info("%s", purged.message)
            found.purged.append(purged)
