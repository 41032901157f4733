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
from pathlib import Path

from clawsup.supervisor.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
)

log = logging.getLogger("clawsup")

# A flag or a request appears (created, renamed in, written and closed, touched), or the
# directory itself goes away.
_MASK = (IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF
         | IN_MOVE_SELF | IN_ONLYDIR)
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED


class FileWatch:
    """inotify watches on the directories of the restart flag and of the ops inbox."""

    def __init__(self, restart_flag: Path | None, ops_requests: Path | None) -> None:
        # directory -> the one name that matters in it, or None for any name.
        self._interest: dict[Path, str | None] = {}
        if restart_flag is not None:
            self._interest[restart_flag.parent] = restart_flag.name
        if ops_requests is not None:
            self._interest[ops_requests] = None  # also when it is the flag's directory
        self._by_wd: dict[int, Path] = {}
        self._inotify: Inotify | None = None
        if self._interest:
            try:
                self._inotify = Inotify()
            except OSError as error:
                log.warning("cannot watch the restart flag and ops requests (%s); looking "
                            "for them every janitor interval", error.strerror)
        self.refresh()

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fileno()

    @property
    def complete(self) -> bool:
        """Whether every directory is watched: nothing can arrive unnoticed."""
        if not self._interest:
            return True
        return self._inotify is not None and len(self._by_wd) == len(self._interest)

    def refresh(self) -> bool:
        """Watch the directories not watched yet; returns ``complete``."""
        if self._inotify is None:
            return False
        watched = set(self._by_wd.values())
        for directory in self._interest:
            if directory in watched:
                continue
            try:
                wd = self._inotify.add_watch(str(directory), _MASK)
            except OSError:
                continue  # not there (yet), or not a directory: looked at every interval
            self._by_wd[wd] = directory
        return self.complete

    def on_readable(self) -> bool:
        """Drain the events; True when one may be a flag or a request."""
        if self._inotify is None:
            return False
        relevant = False
        for event in self._inotify.read_events():
            if event.mask & IN_Q_OVERFLOW:
                relevant = True  # events were lost: look
                continue
            directory = self._by_wd.get(event.wd)
            if directory is None:
                continue
            if event.mask & _GONE:
                # Removed or renamed away (the watch would follow the old inode): the
                # next look finds out what is there now, and refresh() watches the new
                # directory once there is one.
                del self._by_wd[event.wd]
                if not event.mask & IN_IGNORED:
                    self._inotify.remove_watch(event.wd)
                relevant = True
                continue
            wanted = self._interest[directory]
            if wanted is None or event.name == wanted:
                relevant = True
        return relevant

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._by_wd.clear()
