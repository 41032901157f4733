"""Watches the restart flag's directory and the ops-requests inbox, so idle costs nothing.

The old watchdog looked for restart.flag every 5 s. Looking costs little, but at idle each
look is a wake-up of the supervisor, and wake-ups are what idle CPU is made of. With
inotify on the two directories a flag or a request wakes the loop at once, and nothing
else does. A directory that does not exist (yet), or was removed or replaced since, or a
kernel without inotify, is looked at every janitor interval instead, as before, until a
watch can be set again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from clawsup.supervisor.inotify import (
    DIRECTORY_GONE,
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Dispatcher,
    InotifyEvent,
    Watcher,
    open_watcher,
)

log = logging.getLogger("clawsup")

# A flag or a request appears (created, renamed in, written and closed, touched), or the
# directory itself goes away.
_MASK = (IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF
         | IN_MOVE_SELF | IN_ONLYDIR)


class FileWatch:
    """inotify watches on the directories of the restart flag and of the ops inbox.

    A directory that does not exist yet (an ops inbox no skill has created, say) is
    waited for through a watch on its nearest existing ancestor, so its creation is an
    event too; only where no watch can be set at all does the supervisor poll.
    ``watches``: an inotify dispatcher to share (the janitor's); by default it has one of
    its own. On a shared one, another watcher's dispatch may drain this one's events:
    they are kept, and the next ``on_readable()`` returns them, so whoever dispatches
    calls it after each dispatch.
    """

    def __init__(
        self, restart_flag: Path | None, ops_requests: Path | None, watches: Dispatcher | None = None
    ) -> None:
        # directory -> the one name that matters in it, or None for any name.
        self._interest: dict[Path, str | None] = {}
        if restart_flag is not None:
            self._interest[restart_flag.parent] = restart_flag.name
        if ops_requests is not None:
            self._interest[ops_requests] = None  # also when it is the flag's directory
        self._by_wd: dict[int, Path] = {}  # the directories and ancestors watched
        self._complete = not self._interest  # as of the last refresh()
        # What the events dispatched since the last on_readable() said.
        self._relevant = self._refresh_due = False
        self._watcher: Watcher | None = None
        if self._interest:
            try:
                self._watcher = open_watcher(self._on_events, watches)
            except OSError as error:
                log.warning("cannot watch the restart flag and ops requests (%s); looking "
                            "for them every janitor interval", error.strerror)
        self.refresh()

    def fileno(self) -> int | None:
        return None if self._watcher is None else self._watcher.fileno()

    @property
    def complete(self) -> bool:
        """Whether nothing can arrive unnoticed: every directory, or the ancestor it will
        be created in, is watched."""
        return self._complete

    def refresh(self) -> bool:
        """Watch what is not watched yet, drop ancestors no longer needed; ``complete``."""
        if self._watcher is None:
            return self._complete
        wanted: set[Path] = set()
        complete = True
        for directory in self._interest:
            if self._watch(directory):
                wanted.add(directory)
                continue
            ancestor = self._ancestor(directory)
            if ancestor is not None and self._watch(ancestor):
                wanted.add(ancestor)
            else:
                complete = False
        for wd, path in list(self._by_wd.items()):
            if path not in wanted:
                del self._by_wd[wd]
                self._watcher.remove_watch(wd)
        self._complete = complete
        return complete

    def _watch(self, directory: Path) -> bool:
        assert self._watcher is not None
        if directory in self._by_wd.values():
            return True
        try:
            wd = self._watcher.add_watch(str(directory), _MASK)
        except OSError:
            return False  # not there (yet), not a directory, or not ours to read
        # The same inode under two names (a symlink) gives the same wd: one entry.
        self._by_wd[wd] = directory
        return True

    @staticmethod
    def _ancestor(directory: Path) -> Path | None:
        """The nearest ancestor of ``directory`` that is a directory now."""
        for parent in directory.parents:
            if parent.is_dir():
                return parent
        return None

    def on_readable(self) -> bool:
        """Drain the events; True when one may be a flag or a request."""
        if self._watcher is None:
            return False
        self._watcher.dispatch()
        relevant, refresh = self._relevant, self._refresh_due
        self._relevant = self._refresh_due = False
        if refresh:
            self.refresh()
        return relevant

    def _on_events(self, events: Sequence[InotifyEvent]) -> None:
        assert self._watcher is not None
        relevant = refresh = False
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                relevant = refresh = True  # events were lost: look
                continue
            directory = self._by_wd.get(event.wd)
            if directory is None:
                continue
            if event.mask & DIRECTORY_GONE:
                # Removed or renamed away (the watch would follow the old inode): the
                # next look finds out what is there now, and the refresh watches the new
                # directory, or the ancestor it will be created in.
                del self._by_wd[event.wd]
                if not event.mask & IN_IGNORED:
                    self._watcher.remove_watch(event.wd)
                relevant = refresh = True
                continue
            if directory in self._interest:
                wanted = self._interest[directory]
                if wanted is None or event.name == wanted:
                    relevant = True
            child = directory / event.name
            if any(target == child or child in target.parents for target in self._interest
                   if target not in self._by_wd.values()):
                # A step on the way to a directory that was missing: watch it now. What
                # was put in it before the watch is found by the look this triggers.
                relevant = refresh = True
        self._relevant |= relevant
        self._refresh_due |= refresh

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self._by_wd.clear()
