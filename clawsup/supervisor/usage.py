"""What a program's whole tree uses now: resident memory and CPU, read by the sampler thread.

Straight from /proc, not through psutil, as procinfo.py does: ``import psutil`` alone
adds about 2.5 MiB to PID 1's RSS, and the figures are two fields of each member's
``/proc/PID/stat``, one read per process (the RSS field is what psutil's
``memory_info().rss`` reads from ``statm``; tests/test_resources.py holds the two equal).

Which processes: the sampler's own walk below the program's process, and what ``Trees``
knows besides (``Trees.snapshot``): in cgroup mode the kernel's ``cgroup.procs``, which
also holds the members that left the program's process tree; in registry mode the
registry's members, each checked against its recorded start time. Every file is kept open
between readings (``_OpenFiles``), so a reading is one pread a file.

CPU in cgroup mode comes from the cgroup's ``cpu.stat`` (``usage_usec``): one read, and
exact, since the kernel keeps counting a member's time after it exits; a build of many
short compiler runs spawned by the gateway's exec tool is counted whole. ``memory.current``
is not used: clawsup's own cgroup holds clawsup, so it cannot hand the memory controller
down to the programs' cgroups (the kernel's no-internal-process rule), and the file is
absent there; where it exists it also counts page cache, which is not RSS. In registry
mode CPU is the sum of the members' own times, compared process by process with the sample
before: a process that exited between two samples loses its last interval's share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clawsup.supervisor.procinfo import StatReader
from clawsup.supervisor.resources import Usage

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CHUNK = 65536


@dataclass(frozen=True)
class TreeSnapshot:
    """A program's members as ``Trees`` knows them, readable from another thread."""

    # (pid, start time in clock ticks after boot): the registry's members (registry mode)
    members: tuple[tuple[int, int], ...]
    cgroup: str | None  # the program's cgroup directory (cgroup mode)


class _Stat:
    __slots__ = ("rss", "start", "ticks")

    def __init__(self, raw: bytes) -> None:
        # After the command name (which may hold ") "), numbers only: field 3 is [0].
        fields = raw[raw.rfind(b")") + 2:].split()
        self.ticks = int(fields[11]) + int(fields[12])  # utime + stime
        self.start = int(fields[19])
        self.rss = int(fields[21]) * _PAGE_SIZE


class _OpenFiles:
    """Descriptors kept open between readings: each reading is then one pread a file,
    without the path walk, open and close (a reading every 5 s for the program's life).

    A /proc/PID/stat descriptor stays on the process it was opened for: once that one
    has exited the read fails, and the descriptor is dropped, never read for a newcomer
    that got the same pid.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> bytes | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
                return None
            self._fds[path] = fd
        chunks: list[bytes] = []
        try:
            # One pread but for a long cgroup.procs: a short read is the end of the file.
            while len(chunk := os.pread(fd, _CHUNK, _CHUNK * len(chunks))) == _CHUNK:
                chunks.append(chunk)
        except OSError:
            self._close(path)
            return None
        return b"".join(chunks) + chunk if chunks else chunk

    def keep(self, paths: set[str]) -> None:
        for path in [p for p in self._fds if p not in paths]:
            self._close(path)

    def _close(self, path: str) -> None:
        os.close(self._fds.pop(path))

    def close(self) -> None:
        self.keep(set())


class TreeUsage:
    """Samples one run of a program (its process ``main``); owned by the sampler thread."""

    def __init__(self, main: StatReader, snapshot: Callable[[], TreeSnapshot]) -> None:
        self._main = main
        self._snapshot = snapshot
        self._files = _OpenFiles()
        self._last_at: float | None = None
        self._last_boot_ticks = 0.0
        self._last_ticks: dict[tuple[int, int], int] = {}  # (pid, start) -> its CPU ticks
        self._last_usec: int | None = None  # the cgroup's usage_usec

    def close(self) -> None:
        self._files.close()

    def read(self, walked: Iterable[int], at: float) -> Usage | None:
        """The tree's usage now (``walked``: the sampler's walk below ``main``); None
        once the program's own process is gone."""
        main_raw = self._main.stat_line()
        if main_raw is None:
            return None
        try:
            main = _Stat(main_raw)
        except (ValueError, IndexError):
            return None
        snapshot = self._snapshot()
        wanted: dict[int, int | None] = dict.fromkeys(walked)
        wanted.update(snapshot.members)
        usec = None
        paths: set[str] = set()
        if snapshot.cgroup is not None:
            procs, cpu = f"{snapshot.cgroup}/cgroup.procs", f"{snapshot.cgroup}/cpu.stat"
            paths.update((procs, cpu))
            for word in (self._files.read(procs) or b"").split():
                wanted.setdefault(int(word))
            usec = _usage_usec(self._files.read(cpu))
        stats = {(self._main.pid, main.start): main}
        for pid, start in wanted.items():
            if pid == self._main.pid:
                continue
            path = f"/proc/{pid}/stat"
            raw = self._files.read(path)
            try:
                stat = None if raw is None else _Stat(raw)
            except (ValueError, IndexError):
                stat = None
            if stat is not None and (start is None or stat.start == start):
                stats[(pid, stat.start)] = stat
                paths.add(path)
        self._files.keep(paths)
        boot_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS
        cpu_seconds = self._cpu_seconds(stats, usec)
        last_at, self._last_at = self._last_at, at
        self._last_boot_ticks = boot_ticks
        cpu_percent = None
        if last_at is not None and cpu_seconds is not None and at > last_at:
            cpu_percent = round(100.0 * cpu_seconds / (at - last_at), 1)
        return Usage(pid=self._main.pid, at=at, rss=sum(s.rss for s in stats.values()),
                     cpu_percent=cpu_percent, since=last_at)

    def _cpu_seconds(self, stats: dict[tuple[int, int], _Stat], usec: int | None) -> float | None:
        """CPU seconds used since the last read; None on the first."""
        if usec is not None:
            last, self._last_usec = self._last_usec, usec
            self._last_ticks = {}
            return None if last is None or usec < last else (usec - last) / 1e6
        self._last_usec = None
        first = self._last_at is None
        ticks = 0
        for key, stat in stats.items():
            before = self._last_ticks.get(key)
            if before is None:
                # New since the last read: all its time is since then if it started
                # since; one found late (re-parented, seen by the registry only now) has
                # a past this read cannot place, and counts from here on.
                before = 0 if stat.start >= self._last_boot_ticks else stat.ticks
            ticks += max(0, stat.ticks - before)
        self._last_ticks = {key: stat.ticks for key, stat in stats.items()}
        return None if first else ticks / _CLOCK_TICKS


def _usage_usec(raw: bytes | None) -> int | None:
    for line in (raw or b"").splitlines():
        if line.startswith(b"usage_usec "):
            return int(line.split()[1])
    return None
