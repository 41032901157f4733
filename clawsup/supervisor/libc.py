"""The C library calls the standard library lacks, bound once.

One handle for the whole supervisor: ``CDLL(None)`` is the libc the interpreter itself
links, found without ``ctypes.util.find_library`` (which forks ldconfig). Argument types
are declared here, once, and every call reports failure as an ``OSError`` carrying errno,
as ``os`` does. Callers catch the errno they expect.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)

_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

# glibc >= 2.28 has renameat2; musl and older glibc do not (callers fall back).
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

RENAME_NOREPLACE = 1
PR_SET_CHILD_SUBREAPER = 36


def _error(call: str, *filename: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}", *filename)


def inotify_init1(flags: int) -> int:
    fd = _libc.inotify_init1(flags)
    if fd < 0:
        raise _error("inotify_init1")
    return int(fd)


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    wd = _libc.inotify_add_watch(fd, os.fsencode(path), mask)
    if wd < 0:
        raise _error("inotify_add_watch", path)
    return int(wd)


def inotify_rm_watch(fd: int, wd: int) -> None:
    if _libc.inotify_rm_watch(fd, wd) < 0:
        raise _error("inotify_rm_watch")


def has_renameat2() -> bool:
    return _renameat2 is not None


def renameat2(dir_fd: int, source: str, target: str, flags: int) -> None:
    """renameat2(2) within one directory; OSError (FileExistsError...) when refused."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2: not in this C library", source)
    if _renameat2(dir_fd, os.fsencode(source), dir_fd, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), source)


def set_child_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to us."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def malloc_trim() -> bool:
    """Return freed heap pages to the kernel; False where libc has no malloc_trim (musl)."""
    try:
        trim = _libc.malloc_trim
    except AttributeError:
        return False
    trim(0)
    return True
