"""What a program's whole tree uses now: resident memory and CPU, read by the sampler thread.

Straight from /proc, not through psutil, as procinfo.py does: ``import psutil`` alone
adds about 2.5 MiB to PID 1's RSS, and the figures are two fields of each member's
``/proc/PID/stat``, one read per process (the RSS field is what psutil's
``memory_info().rss`` reads from ``statm``; tests/test_resources.py holds the two equal).

Which processes: the members ``Trees.snapshot`` lists (the kernel's ``cgroup.procs`` in
cgroup mode, the registry's in registry mode) and the sampler's own walk below the
program's process, which sees children forked since the registry last looked.

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
from pathlib import Path

from clawsup.supervisor.procinfo import StatReader
from clawsup.supervisor.resources import Usage

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TreeSnapshot:
    """A program's members as ``Trees`` knows them, readable from another thread."""

    # (pid, start time in clock ticks after boot, or None where the kernel keeps the list)
    members: tuple[tuple[int, int | None], ...]
    cpu_stat: Path | None  # the program's cgroup's cpu.stat, in cgroup mode


class _Stat:
    __slots__ = ("rss", "start", "ticks")

    def __init__(self, raw: bytes) -> None:
        # After the command name (which may hold ") "), numbers only: field 3 is [0].
        fields = raw[raw.rfind(b")") + 2:].split()
        self.ticks = int(fields[11]) + int(fields[12])  # utime + stime
        self.start = int(fields[19])
        self.rss = int(fields[21]) * _PAGE_SIZE


def _read_stat(pid: int) -> _Stat | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return _Stat(os.read(fd, 1024))
    except (OSError, ValueError, IndexError):
        return None  # gone between open and read, or cut short
    finally:
        os.close(fd)


def _cgroup_cpu_usec(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    for line in raw.splitlines():
        if line.startswith(b"usage_usec "):
            return int(line.split()[1])
    return None


class TreeUsage:
    """Samples one run of a program (its process ``main``); owned by the sampler thread."""

    def __init__(self, main: StatReader, snapshot: Callable[[], TreeSnapshot]) -> None:
        self._main = main
        self._snapshot = snapshot
        self._last_at: float | None = None
        self._last_boot_ticks = 0.0
        self._last_ticks: dict[tuple[int, int], int] = {}  # (pid, start) -> its CPU ticks
        self._last_usec: int | None = None  # the cgroup's usage_usec

    def read(self, walked: Iterable[int], at: float) -> Usage | None:
        """The tree's usage now (``walked``: the sampler's walk below ``main``); None
        once the program's own process is gone."""
        main_raw = self._main.stat_line()
        if main_raw is None:
            return None
        snapshot = self._snapshot()
        stats: dict[tuple[int, int], _Stat] = {}
        try:
            main = _Stat(main_raw)
        except (ValueError, IndexError):
            return None
        stats[(self._main.pid, main.start)] = main
        wanted: dict[int, int | None] = dict.fromkeys(walked)
        wanted.update(snapshot.members)
        for pid, start in wanted.items():
            if pid == self._main.pid:
                continue
            stat = _read_stat(pid)
            if stat is not None and (start is None or stat.start == start):
                stats[(pid, stat.start)] = stat
        boot_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS
        cpu_seconds = self._cpu_seconds(stats, snapshot.cpu_stat)
        last_at, self._last_at = self._last_at, at
        self._last_boot_ticks = boot_ticks
        cpu_percent = None
        if last_at is not None and cpu_seconds is not None and at > last_at:
            cpu_percent = round(100.0 * cpu_seconds / (at - last_at), 1)
        return Usage(pid=self._main.pid, at=at, rss=sum(s.rss for s in stats.values()),
                     cpu_percent=cpu_percent, since=last_at)

    def _cpu_seconds(self, stats: dict[tuple[int, int], _Stat],
                     cpu_stat: Path | None) -> float | None:
        """CPU seconds used since the last read; None on the first."""
        usec = None if cpu_stat is None else _cgroup_cpu_usec(cpu_stat)
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
