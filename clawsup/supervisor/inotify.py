"""A small inotify binding (ctypes), enough for the janitor to watch session directories.

The standard library has none and the project takes no extra dependency for it. Only
directories are watched, never files: one watch per session directory reports every
child that is created, written, touched, renamed or deleted, whatever the number of files.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

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

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_HEADER = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for events about the watched directory itself


def _libc() -> ctypes.CDLL:
    # The interpreter itself links libc: no ctypes.util.find_library, which forks ldconfig.
    return ctypes.CDLL(None, use_errno=True)


class Inotify:
    """One inotify instance: a non-blocking, close-on-exec file descriptor.

    Raises OSError when the kernel refuses one (inotify compiled out, or the per-user
    limit ``fs.inotify.max_user_instances`` reached); callers fall back to polling.
    """

    def __init__(self) -> None:
        self._libc = _libc()
        self._libc.inotify_init1.argtypes = [ctypes.c_int]
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd: int = int(fd)

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int = DIRECTORY_CHANGES) -> int:
        """Watch ``path`` (followed if a symlink); returns the watch descriptor."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", path)
        return int(wd)

    def remove_watch(self, wd: int) -> None:
        """Stop watching; a watch the kernel already dropped (directory deleted) is fine."""
        if self._libc.inotify_rm_watch(self._fd, wd) < 0:
            code = ctypes.get_errno()
            if code != errno.EINVAL:
                raise OSError(code, f"inotify_rm_watch: {os.strerror(code)}")

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
