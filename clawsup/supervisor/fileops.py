"""Small files, read safely and written atomically, and a rename that never replaces.

Generic helpers for the files clawsup writes next to the gateway's (its config, the ops
inbox's results, the overrides) and renames in its session directories: nothing here
knows what a file holds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from clawsup.supervisor import libc


def read_small_file(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file; never blocks on a FIFO.

    Raises FileNotFoundError when absent, IsADirectoryError / OSError(EINVAL) when the
    entry is not a regular file, OSError(ELOOP) for a symlink when not following them.
    The caller compares the length with ``limit`` to tell an oversized file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    before_rename: Callable[[], None] | None = None,
    dir_fd: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new, never half.

    Temp file in the same directory, fsync, rename over, fsync the directory. On error
    (including one raised by ``before_rename``, the last chance to back out) the old file
    is untouched, the temp file removed, and the error raised. With ``dir_fd``, ``path``
    is a name in that open directory: nothing is looked up through a path someone could
    swap for a symlink meanwhile.
    """
    directory = dir_fd if dir_fd is not None else _open_directory(path.parent)
    name = path.name if dir_fd is None else os.fspath(path)
    # os.urandom, not secrets: secrets loads OpenSSL (about 3.5 MiB of RSS) for nothing;
    # the name only has to be unlikely to collide, and O_EXCL makes a collision safe.
    temp = f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                if owner is not None:
                    _give_back(handle.fileno(), owner)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if before_rename is not None:
                before_rename()
            os.rename(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=directory)
            raise
        fsync_directory(directory)
    finally:
        if dir_fd is None:
            os.close(directory)


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_directory(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _give_back(fd: int, owner: tuple[int, int]) -> None:
    """Give the new file the owner of the one it replaces (root, or a group we are in)."""
    current = os.fstat(fd)
    if (current.st_uid, current.st_gid) == owner:
        return
    try:
        os.fchown(fd, *owner)
    except PermissionError:
        raise PermissionError(
            errno.EPERM,
            f"only root can give the new file back to its owner uid={owner[0]} gid={owner[1]}",
        ) from None


def fsync_directory(directory: Path | int) -> None:
    """Make a rename in ``directory`` (a path or an open directory) durable."""
    fd = _open_directory(directory) if isinstance(directory, Path) else directory
    try:
        os.fsync(fd)
    except OSError as error:
        # Some filesystems (and FUSE mounts) cannot fsync a directory; the rename is
        # still atomic there, only its durability is up to the filesystem.
        if error.errno != errno.EINVAL:
            raise
    finally:
        if isinstance(directory, Path):
            os.close(fd)


def owner_for_new_files(directory: Path | int) -> tuple[int, int] | None:
    """As root, the owner of ``directory``: a file root creates there goes to that user
    (the gateway runs as one, and must read it). Otherwise None: keep our own."""
    if os.geteuid() != 0:
        return None
    info = os.stat(directory)
    return (info.st_uid, info.st_gid)


def rename_noreplace(dir_fd: int, source: str, target: str) -> None:
    """Rename ``source`` to ``target`` in one directory; FileExistsError if target exists.

    renameat2(RENAME_NOREPLACE) when the filesystem supports it; else link() + unlink(),
    where the unlink only happens if ``source`` is still the inode that was linked.
    """
    if libc.has_renameat2():
        try:
            libc.renameat2(dir_fd, source, target, libc.RENAME_NOREPLACE)
            return
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                raise
    os.link(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    linked = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
    current = os.stat(source, dir_fd=dir_fd, follow_symlinks=False)
    if (current.st_dev, current.st_ino) == (linked.st_dev, linked.st_ino):
        os.unlink(source, dir_fd=dir_fd)
