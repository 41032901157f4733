"""What /proc says about a process tree: run state, context switches, zombie descendants.

The one place that reads and parses ``/proc/PID/stat`` (the sampler, the tree registry,
a lock's owner check). Read straight from /proc rather than through psutil on the
sampling path: a sample every second must cost next to nothing at idle, and these are
three small files.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import NamedTuple

# pid (7 digits at most), " (", the command name (15 bytes at most), ") " and the state
# letter: the state is always within the first 27 bytes of /proc/PID/stat.
_STATE_WITHIN = 64
# The whole line: 52 numbers after a name of 64 bytes at most, in one read.
_STAT_READ = 4096


def _state_in(raw: bytes) -> str | None:
    """The state letter from (the start of) the text of a /proc/PID/stat file."""
    # The command name is in parentheses and may itself contain ") " or spaces; what
    # follows it is numbers only, so the last ")" closes it even in a cut-off read.
    at = raw.rfind(b")") + 2
    return chr(raw[at]) if 1 < at < len(raw) else None


class ProcessStat(NamedTuple):
    """The fields of a /proc/PID/stat line that clawsup reads."""

    state: str  # R, S, D, Z, X...
    ppid: int
    pgid: int
    sid: int
    threads: int
    starttime: int  # clock ticks after boot: with the pid, names one process for good
    # CPU clock ticks of its own (utime, stime) and of the children it reaped (cutime,
    # cstime); resident pages. What a program's tree uses (usage.py).
    cpu_ticks: int
    rss_pages: int


def _fields_after_name(raw: bytes) -> list[bytes]:
    # The command name may hold ") " or spaces: what follows the last ")" is numbers only.
    return raw[raw.rfind(b")") + 2 :].split()


def parse_stat(raw: bytes) -> ProcessStat | None:
    """The text of a /proc/PID/stat file, parsed; None when it is cut short."""
    fields = _fields_after_name(raw)
    if len(fields) < 22:
        return None
    return ProcessStat(chr(fields[0][0]), int(fields[1]), int(fields[2]), int(fields[3]),
                       int(fields[17]), int(fields[19]),
                       int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
                       int(fields[21]))


def read_stat(pid: int) -> ProcessStat | None:
    """One read of ``/proc/PID/stat``; None when the process is gone (or not ours to read)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        raw = os.read(fd, _STAT_READ)
    except OSError:  # ESRCH: it exited between open and read
        return None
    finally:
        os.close(fd)
    return parse_stat(raw)


class StatReader:
    """Reads one process' /proc/PID/stat through a descriptor kept open between samples.

    A sample every second is mostly fixed cost; pread on an open descriptor saves the
    path walk, open and close each time. The descriptor refers to that process only: once
    it is gone the read fails with ESRCH, and a new PID gets a new reader.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None

    def state(self) -> str | None:
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                return None
        try:
            # Only the start: a small read is a cheap small bytes object, every second.
            raw = os.pread(self._fd, _STATE_WITHIN, 0)
        except (ProcessLookupError, OSError):
            self.close()
            return None
        return _state_in(raw)

    def threads(self) -> int | None:
        """The process' thread count (field 20 of the whole stat line), None if gone."""
        if self._fd is None and self.state() is None:
            return None
        assert self._fd is not None
        try:
            raw = os.pread(self._fd, 1024, 0)
        except OSError:
            return None
        fields = _fields_after_name(raw)
        return int(fields[17]) if len(fields) > 17 else None

    def stat_line(self) -> bytes | None:
        """The whole stat line (usage.py reads its CPU and RSS fields), None if gone."""
        if self._fd is None and self.state() is None:
            return None
        assert self._fd is not None
        try:
            return os.pread(self._fd, 1024, 0)
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _name_in(raw: bytes) -> str:
    """The command name (a thread's name, for a task) from the start of a stat line."""
    return raw[raw.find(b"(") + 1 : raw.rfind(b")")].decode(errors="replace")


class ChildrenReader:
    """One process' direct children, through descriptors kept open on each of its
    threads' ``/proc/PID/task/TID/children`` files; and, through each thread's
    ``stat``, opened with them, which of its threads are in D state.

    Opening them by path every walk (list /proc/PID/task, then one file per thread) costs
    about 200 us of cold procfs lookups, every few seconds for a supervisor's life; a
    pread on an open descriptor is one system call. The threads are listed again when
    their count changes, and every ``RELIST_EVERY`` reads anyway: the file of a thread
    that has exited reads empty, not as an error, so a thread that replaced another one
    under the same count is only seen by listing. Its children are found that much later.
    """

    RELIST_EVERY = 12  # reads; the sampler reads every 5 s, so about once a minute

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fds: list[int] = []
        self._stats: dict[int, int] = {}  # tid -> its stat, for threads_in_d()
        self._reads_left = 0

    def children(self, threads: int | None) -> list[int]:
        self._reads_left -= 1
        if threads is not None and threads == len(self._fds) and self._reads_left > 0:
            found = self._read()
            if found is not None:
                return found
        self._reopen()
        self._reads_left = self.RELIST_EVERY
        return self._read() or []

    def _read(self) -> list[int] | None:
        found: list[int] = []
        for fd in self._fds:
            raw = _pread_all(fd)
            if raw is None:
                return None
            found.extend(int(word) for word in raw.split())
        return found

    def _reopen(self) -> None:
        self.close()
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return
        for tid in tids:
            try:
                fd = os.open(f"/proc/{self.pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            self._fds.append(fd)
            if int(tid) == self.pid:
                continue  # the main thread is sampled through the process' own stat
            try:
                stat_fd = os.open(f"/proc/{self.pid}/task/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            self._stats[int(tid)] = stat_fd

    def threads_in_d(self, among: Collection[int] | None = None) -> list[tuple[int, str]]:
        """The threads other than the main one that are in D, as (tid, name).

        Only the threads found by the last listing (``children()`` lists them), and of
        those only ``among`` when given: one pread each on a kept-open descriptor. A
        thread that has exited fails its read and is skipped until the next listing.
        """
        found: list[tuple[int, str]] = []
        for tid, fd in self._stats.items():
            if among is not None and tid not in among:
                continue
            try:
                raw = os.pread(fd, _STATE_WITHIN, 0)
            except OSError:
                continue
            if _state_in(raw) == "D":
                found.append((tid, _name_in(raw)))
        return found

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for fd in self._stats.values():
            os.close(fd)
        self._stats = {}


def _pread_all(fd: int) -> bytes | None:
    """The whole of an open /proc file from its start; None once its task is gone."""
    chunks = []
    offset = 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError:
        return None
    return b"".join(chunks)


def _read(path: str) -> bytes | None:
    """A small /proc file whole; None when its process is gone (or not ours to read).

    Plain open/read/close: a buffered file object costs five more system calls (fstat,
    ioctl, lseek...) and Python objects, every walk of the tree, for a supervisor's life.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    try:
        return _pread_all(fd)
    finally:
        os.close(fd)


def run_state(pid: int) -> str | None:
    """The one-letter state of the process' main thread (R, S, D, Z, T...), None if gone."""
    reader = StatReader(pid)
    try:
        return reader.state()  # one read of the line's start, not the whole file
    finally:
        reader.close()


def context_switches(pid: int, tid: int | None = None) -> int | None:
    """Voluntary + involuntary context switches of the main thread (of thread ``tid``).

    A thread that sleeps in D and wakes up (disk I/O finishing) switches context; one that
    is stuck in D does not. Two samples in D with the same count mean it never left D in
    between, which a single state sample cannot tell.
    """
    raw = _read(f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status")
    if raw is None:
        return None
    return sum(int(line.split()[1]) for line in raw.splitlines()
               if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")))


def boot_time() -> float:
    """When the machine booted, in wall-clock seconds: the ``btime`` line of /proc/stat.

    What ``psutil.boot_time()`` returns, without importing psutil into PID 1 (2.5 MiB of
    RSS for this one line).
    """
    with open("/proc/stat", "rb") as handle:
        for line in handle:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime line in /proc/stat")


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from every thread's ``children`` file."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found
    for tid in tids:
        raw = _read(f"/proc/{pid}/task/{tid}/children")
        if raw:
            found.extend(int(word) for word in raw.split())
    return found


def descendants(pid: int, limit: int = 100_000, first: list[int] | None = None) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...); ``first``: its children,
    when already read (a ChildrenReader)."""
    result: list[int] = []
    queue = children(pid) if first is None else list(first)
    while queue and len(result) < limit:
        child = queue.pop()
        result.append(child)
        queue.extend(children(child))
    return result
