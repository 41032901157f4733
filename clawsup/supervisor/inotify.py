"""inotify for the supervisor: the kernel's instance, and one dispatcher its users share.

The standard library has no binding and the project takes no extra dependency for it
(libc.py binds the three calls). Only directories are watched, never files: one watch per
directory reports every child that is created, written, touched, renamed or deleted,
whatever the number of files.

Two components watch directories: the janitor (session directories, and the directories
one may appear in) and FileWatch (the restart flag's directory, the ops inbox). Each is
a :class:`Watcher` of a :class:`Dispatcher`, which owns the instance, routes each event
to the watchers of its watch descriptor and keeps the rules they would otherwise each
keep: the kernel has one watch per inode per instance, a watch goes when its last user
lets go, IN_IGNORED ends a watch for everyone, and a queue overflow concerns everyone.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clawsup.supervisor import libc

# Event bits, from <sys/inotify.h>.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Everything that can change what a directory holds or the size, mtime or type of a child.
# IN_EXCL_UNLINK: no events for a child that is already unlinked but still open (a writer
# that keeps appending to an archived transcript's old inode is not news).
DIRECTORY_CHANGES = (
    IN_CREATE
    | IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)

# On a watched directory: it was deleted, renamed away or unmounted, or the kernel ended
# the watch. A watch follows the inode, so whatever the path names now is not watched.
DIRECTORY_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_HEADER = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for events about the watched directory itself


class Inotify:
    """One inotify instance: a non-blocking, close-on-exec file descriptor.

    Raises OSError when the kernel refuses one (inotify compiled out, or the per-user
    limit ``fs.inotify.max_user_instances`` reached); callers fall back to polling.
    """

    def __init__(self) -> None:
        self._fd: int = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int = DIRECTORY_CHANGES) -> int:
        """Watch ``path`` (followed if a symlink); returns the watch descriptor."""
        return libc.inotify_add_watch(self._fd, path, mask)

    def remove_watch(self, wd: int) -> None:
        """Stop watching; a watch the kernel already dropped (directory deleted) is fine."""
        try:
            libc.inotify_rm_watch(self._fd, wd)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise

    def read_events(self) -> list[InotifyEvent]:
        """Every event queued so far; an empty list when there is none (never blocks)."""
        events: list[InotifyEvent] = []
        while True:
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _HEADER.size <= len(buffer):
                wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
                offset += _HEADER.size
                raw_name = buffer[offset : offset + length].rstrip(b"\0")
                offset += length
                events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw_name)))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# The bits of a mask that name events, as opposed to flags of the add call.
_EVENT_BITS = 0x00000FFF
# Sent whatever a watch's mask: the watch itself ended, or its filesystem went away.
_ALWAYS = IN_IGNORED | IN_UNMOUNT

EventHandler = Callable[[Sequence[InotifyEvent]], None]


class Dispatcher:
    """One inotify instance and the watchers that share it.

    ``dispatch()`` drains the instance and hands each :class:`Watcher` the events of its
    own watches, in order, plus every queue overflow (IN_Q_OVERFLOW: events were dropped,
    for all of them). The kernel keeps one watch per inode per instance, so two watchers
    of the same directory get the same wd: it is added with IN_MASK_ADD (the kernel's
    mask is the union), an event goes to each watcher whose own mask asked for it, and the
    watch is removed from the kernel only when its last watcher lets go. IN_IGNORED (the
    kernel dropped the watch: directory deleted, unmounted) goes to every holder and ends
    the watch for all of them.

    Raises OSError when the kernel refuses an instance; its users then poll.
    """

    def __init__(self) -> None:
        self._inotify = Inotify()
        self._holders: dict[int, dict[Watcher, int]] = {}  # wd -> watcher -> its event bits
        self._watchers: list[Watcher] = []

    def fileno(self) -> int:
        return self._inotify.fileno()

    def watcher(self, on_events: EventHandler, *, owns: bool = False) -> Watcher:
        """A new user of this instance; ``on_events`` receives its events at each dispatch.
        ``owns``: closing the watcher closes the dispatcher (it has no other user)."""
        watcher = Watcher(self, on_events, owns=owns)
        self._watchers.append(watcher)
        return watcher

    def dispatch(self) -> None:
        """Read every queued event and hand each to its watchers. Never blocks."""
        batches: dict[Watcher, list[InotifyEvent]] = {}
        for event in self._inotify.read_events():
            if event.mask & IN_Q_OVERFLOW:
                for watcher in self._watchers:
                    batches.setdefault(watcher, []).append(event)
                continue
            holders = self._holders.get(event.wd)
            if holders is None:
                continue  # a watch its last watcher removed; its IN_IGNORED arrives late
            for watcher, wanted in holders.items():
                if event.mask & (wanted | _ALWAYS):
                    batches.setdefault(watcher, []).append(event)
            if event.mask & IN_IGNORED:
                del self._holders[event.wd]
                for watcher in holders:
                    watcher.wds.discard(event.wd)
        for watcher, events in batches.items():
            watcher.on_events(events)

    def add_watch(self, watcher: Watcher, path: str, mask: int) -> int:
        wd = self._inotify.add_watch(path, mask | IN_MASK_ADD)
        holders = self._holders.setdefault(wd, {})
        holders[watcher] = holders.get(watcher, 0) | (mask & _EVENT_BITS)
        watcher.wds.add(wd)
        return wd

    def remove_watch(self, watcher: Watcher, wd: int) -> None:
        watcher.wds.discard(wd)
        holders = self._holders.get(wd)
        if holders is not None:
            holders.pop(watcher, None)
            if holders:
                return  # another watcher still uses it
            del self._holders[wd]
        self._inotify.remove_watch(wd)

    def leave(self, watcher: Watcher) -> None:
        """Remove every watch of ``watcher`` and forget it."""
        for wd in list(watcher.wds):
            self.remove_watch(watcher, wd)
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def close(self) -> None:
        self._inotify.close()
        self._holders.clear()
        for watcher in self._watchers:
            watcher.wds.clear()
        self._watchers.clear()


class Watcher:
    """One user's view of a :class:`Dispatcher`: its watches and its events.

    ``open_watcher`` makes one on a dispatcher of its own (closed with it) or on a shared
    one; either way the user adds and removes watches and drains events through it alone.
    """

    def __init__(self, dispatcher: Dispatcher, on_events: EventHandler, *, owns: bool = False) -> None:
        self._dispatcher = dispatcher
        self.on_events = on_events
        self.wds: set[int] = set()  # its watches, as the dispatcher keeps them
        self._owns = owns

    def fileno(self) -> int:
        return self._dispatcher.fileno()

    def add_watch(self, path: str, mask: int = DIRECTORY_CHANGES) -> int:
        """Watch ``path`` (followed if a symlink, unless IN_DONT_FOLLOW); its wd."""
        return self._dispatcher.add_watch(self, path, mask)

    def remove_watch(self, wd: int) -> None:
        """Stop watching; a watch the kernel already dropped (directory deleted) is fine."""
        self._dispatcher.remove_watch(self, wd)

    def dispatch(self) -> None:
        """Drain the instance: this watcher's events go to its handler (others' to theirs)."""
        self._dispatcher.dispatch()

    def close(self) -> None:
        if self._owns:
            self._dispatcher.close()  # closing the instance drops every watch at once
        else:
            self._dispatcher.leave(self)


def open_watcher(on_events: EventHandler, shared: Dispatcher | None = None) -> Watcher:
    """A watcher on ``shared``, or on a dispatcher of its own (OSError if none can be had)."""
    if shared is not None:
        return shared.watcher(on_events)
    return Dispatcher().watcher(on_events, owns=True)
