"""The directory set: which session directories exist, are pinned and are watched.

The configured globs (``~/.clawdbot/agents/*/sessions``) name the session directories.
Each match is opened once and kept open (pinned): every later file operation goes
through that descriptor, and a directory is accepted only if the descriptor's real path
(``/proc/self/fd/N``) lies inside the real path of its glob's fixed prefix
(``~/.clawdbot/agents``), resolved once when first seen. A ``sessions`` (or agent)
symlink pointing elsewhere is skipped and logged once; one pointing inside is the same
directory and swept once. A directory that vanishes or cannot be opened is logged once,
until it changes again.

Each session directory has one inotify watch (the index's dirty names come from it). A
session directory that appears later (a fresh home gets ``agents/main/sessions`` at the
gateway's first turn, in one ``mkdir -p``) is an inotify event too: the directories it
may appear in -- ``agents/`` and each ``agents/<id>/``, or while missing, their nearest
existing ancestor -- are watched for children created, renamed or deleted (never for
writes), and such an event asks for a re-glob at the next sweep. Removing a session
directory is an event on its parent even while our descriptor keeps its inode.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clawsup.supervisor import inotify
from clawsup.supervisor.janitor.index import SessionDir
from clawsup.supervisor.janitor.report import Findings, JanitorStats, Problems

log = logging.getLogger("clawsup.janitor")

# On a directory a session directory may appear in (at any depth): a child created,
# renamed in or out, or deleted, or the directory itself going away. Never a write: a
# gateway writing its config next to agents/ must not wake the janitor. The same inode
# may be a session directory too (two patterns): the dispatcher adds every watch with
# IN_MASK_ADD, so the session directory's watch keeps its mask.
_ANCESTOR_MASK = (
    inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
    | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_ONLYDIR
)


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
class Ancestor:
    """A directory watched because a session directory may appear in it, at any depth."""

    path: str
    children: set[str]  # the glob components a child's name must match to matter


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _deleted(directory: SessionDir) -> bool:
    # Our open descriptor keeps a removed directory's inode alive, and the kernel
    # sends IN_DELETE_SELF only when the last reference goes: ask the inode instead.
    # One fstat per directory (not per file) and sweep.
    return os.fstat(directory.fd).st_nlink == 0


class DirectorySet:
    """The session directories the globs match now, each pinned and watched.

    ``use_inotify=False``, or a kernel that refuses an inotify instance, leaves every
    directory unwatched (the janitor then scans them cold every sweep). ``watches``: an
    inotify dispatcher to share; by default the set has one of its own.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        stats: JanitorStats,
        problems: Problems,
        *,
        use_inotify: bool = True,
        watches: inotify.Dispatcher | None = None,
    ) -> None:
        self._patterns = list(patterns)
        self._stats = stats
        self._problems = problems
        self._roots: dict[str, str] = {}  # pattern -> realpath of its fixed prefix, pinned
        self._by_key: dict[tuple[int, int], SessionDir] = {}  # (st_dev, st_ino) -> it
        self._by_wd: dict[int, SessionDir] = {}
        # Directories a new session directory may appear in: each pattern's nearest
        # existing fixed ancestor, its root, and the directories between root and match.
        self._ancestors: dict[int, Ancestor] = {}
        self.ancestors_complete = True  # every one of them has its watch
        self.globs_changed = False  # one of them reported a change: re-glob next sweep
        self.overflowed = False  # inotify dropped events: nothing indexed can be trusted
        self.dirs_changed = False  # a session directory itself went: a full pass is due
        self._watcher: inotify.Watcher | None = None
        if use_inotify:
            try:
                self._watcher = inotify.open_watcher(self._on_events, watches)
            except OSError as error:
                log.warning("inotify unavailable (%s): a full pass every sweep instead", error)

    def __iter__(self) -> Iterator[SessionDir]:
        """The session directories now; the set may change while the caller goes through them."""
        return iter(list(self._by_key.values()))

    @property
    def watched(self) -> bool:
        """Whether inotify reports changes (else every sweep must look for itself)."""
        return self._watcher is not None

    @property
    def refresh_due(self) -> bool:
        """A re-glob is due: an ancestor reported a change, or one has no watch."""
        return self.globs_changed or not self.ancestors_complete

    def fileno(self) -> int | None:
        return self._watcher.fileno() if self._watcher is not None else None

    def dispatch(self) -> bool:
        """Drain inotify: note which names changed. Cheap; the work waits for the sweep.
        True when an event was about the janitor's own watches (on a shared dispatcher,
        the readiness may have been another watcher's)."""
        if self._watcher is None:
            return False
        before = self._stats.inotify_events
        self._watcher.dispatch()
        return self._stats.inotify_events != before

    def _on_events(self, events: Sequence[inotify.InotifyEvent]) -> None:
        self._stats.inotify_events += len(events)
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                # Events were dropped: nothing in the index can be trusted until rescanned.
                self.overflowed = True
                self._stats.overflows += 1
                for watched in self._by_key.values():
                    watched.rescan = True
                continue
            ancestor = self._ancestors.get(event.wd)
            if ancestor is not None:
                if event.mask & inotify.DIRECTORY_GONE:
                    self.globs_changed = True  # the next walk finds what is there now
                    if event.mask & inotify.IN_IGNORED:
                        del self._ancestors[event.wd]
                elif any(_name_matches(event.name, child) for child in ancestor.children):
                    self.globs_changed = True
            directory = self._by_wd.get(event.wd)
            if directory is None:
                continue
            if event.mask & inotify.DIRECTORY_GONE:
                self.dirs_changed = True
                if event.mask & inotify.IN_IGNORED:  # the kernel dropped the watch
                    del self._by_wd[event.wd]
                    directory.wd = None
            elif event.name:
                directory.dirty.add(event.name)

    def any_deleted(self) -> bool:
        return any(_deleted(directory) for directory in self._by_key.values())

    def close(self) -> None:
        for directory in list(self._by_key.values()):
            self.drop(directory)
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def _root(self, pattern: str) -> str | None:
        root = self._roots.get(pattern)
        if root is None:
            fixed = _glob_root(pattern)
            if not os.path.isdir(fixed):
                return None
            root = self._roots[pattern] = os.path.realpath(fixed)
        return root

    def _open_directory(self, match: str, root: str, found: Findings) -> int | None:
        try:
            fd = os.open(match, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # gone since glob listed it: the next pass will say so
        except OSError as error:
            self._problems.report(
                f"dir:{match}", f"Cannot open session directory {match}: {error.strerror}", found
            )
            return None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the path, resolved now (racy, but never outside root)
            real = os.path.realpath(match)
        if not _inside(real, root):
            os.close(fd)
            self._problems.report(
                f"dir:{match}",
                f"Skipping session directory {match}: it resolves to {real}, outside {root}",
                found,
            )
            return None
        return fd

    def refresh(self, found: Findings) -> None:
        """Re-glob: start on new directories, drop the ones that vanished."""
        self._watch_ancestors(found)  # first: what appears after the glob is an event
        seen: set[tuple[int, int]] = set()
        new: list[tuple[tuple[int, int], str, int]] = []
        for pattern in self._patterns:
            root = self._root(pattern)
            matches = sorted(glob.glob(pattern)) if root is not None else []
            if not matches and not glob.has_magic(pattern):
                self._problems.report(f"dir:{pattern}", f"Session directory missing: {pattern}", found)
            for match in matches:
                fd = self._open_directory(match, root or "/", found)
                if fd is None:
                    continue
                if self._problems.clear(f"dir:{match}"):
                    log.info("Session directory usable again: %s", match)
                info = os.fstat(fd)
                key = (info.st_dev, info.st_ino)
                known = self._by_key.get(key)
                if key in seen or known is not None:
                    os.close(fd)  # known, or a second glob or in-root symlink to the same
                    if known is not None and key not in seen:
                        self._recheck(known, Path(match), found)
                else:
                    new.append((key, match, fd))
                seen.add(key)
        for key, directory in list(self._by_key.items()):
            if key not in seen:
                message = f"Session directory vanished: {directory.path}"
                log.warning("%s", message)
                found.errors.append(message)
                # If its literal pattern now reports it missing, that is the same news.
                self._problems.assume(f"dir:{directory.path}", f"Session directory missing: {directory.path}")
                self.drop(directory)
        for key, match, fd in new:
            self._add(key, Path(match), fd, found)

    def _watch_ancestors(self, found: Findings) -> None:
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
        if self._watcher is None:
            return
        self.globs_changed = False
        wanted: dict[int, Ancestor] = {}
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
                    wanted.setdefault(wd, Ancestor(path, set())).children.add(child)
                    if depth < last:
                        below.extend(_subdirectories(path, child, follow=depth < fixed))
                level = below
                depth += 1
        for wd in self._ancestors.keys() - wanted.keys():
            if wd not in self._by_wd:
                self._watcher.remove_watch(wd)
        self._ancestors = wanted
        self.ancestors_complete = complete

    def _watch_ancestor(self, path: str, follow: bool, found: Findings) -> int | None:
        assert self._watcher is not None
        try:
            mask = _ANCESTOR_MASK if follow else _ANCESTOR_MASK | inotify.IN_DONT_FOLLOW
            wd = self._watcher.add_watch(path, mask)
        except (FileNotFoundError, NotADirectoryError):
            return None  # gone, or replaced by a file, since it was listed
        except OSError as error:  # EACCES, ENOSPC (fs.inotify.max_user_watches)
            self._problems.report(
                f"ancestor:{path}",
                f"Cannot watch {path} for new session directories ({error.strerror}): "
                "looking for them every sweep",
                found,
            )
            return None
        self._problems.clear(f"ancestor:{path}")
        return wd

    def _add(self, key: tuple[int, int], path: Path, fd: int, found: Findings) -> None:
        directory = SessionDir(path=path, fd=fd, key=key)
        self._by_key[key] = directory
        self._watch(directory, found)
        log.info("Watching session directory: %s", path)

    def _recheck(self, directory: SessionDir, match: Path, found: Findings) -> None:
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

    def _watch(self, directory: SessionDir, found: Findings) -> None:
        if self._watcher is None:
            return
        # Watch the very inode we opened and vetted, not whatever the path names now.
        try:
            try:
                wd = self._watcher.add_watch(f"/proc/self/fd/{directory.fd}")
            except FileNotFoundError:  # no /proc
                wd = self._watcher.add_watch(str(directory.path))
        except OSError as error:
            self._problems.report(
                f"watch:{directory.path}",
                f"Cannot watch session directory {directory.path} ({error.strerror}): "
                "scanning it in full every sweep",
                found,
            )
            return
        directory.wd = wd
        directory.rescan = True  # events before the watch existed were never seen
        self._by_wd[wd] = directory
        self._problems.clear(f"watch:{directory.path}")

    def drop(self, directory: SessionDir) -> None:
        if directory.wd is not None and self._watcher is not None:
            self._by_wd.pop(directory.wd, None)
            if directory.wd not in self._ancestors:  # the same inode watched as both
                self._watcher.remove_watch(directory.wd)
        os.close(directory.fd)
        self._by_key.pop(directory.key, None)
