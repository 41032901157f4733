"""What a program's whole tree uses now: resident memory and CPU, read by the sampler thread.

Straight from /proc, not through psutil, as procinfo.py does: ``import psutil`` alone
adds 2.5-4 MiB to PID 1's RSS, and the figures are fields of each member's
``/proc/PID/stat``, one read per process (the RSS field is what psutil's
``memory_info().rss`` reads from ``statm``; tests/test_resources.py holds the two equal).

Which processes: the sampler's own walk below the program's process, and what ``Trees``
knows besides (``Trees.snapshot``): in cgroup mode the kernel's ``cgroup.procs``, which
also holds the members that left the program's process tree; in registry mode the
registry's members, each checked against its recorded start time. Every file is kept open
between readings (``_OpenFiles``), so a reading is one pread a file. The zombies among
the walked processes are counted on the way, for the sampler's zombie check.

CPU is each member's own time plus the time of the children it reaped (``cutime``,
``cstime``), compared member by member with the reading before: a short-lived process
(a build's compiler runs, spawned by the gateway's exec tool) that starts and exits
between two readings is counted through its parent. Only one reaped by clawsup itself
(re-parented) loses what it used since the last reading.

Measured (bench/bench_resources.py) against the cgroup's own files in cgroup mode:
``cpu.stat`` costs about 40 us a read (the kernel flushes its per-CPU counters first),
``cgroup.procs`` 8 us, a /proc/PID/stat 25 us, and the stat files are read for the RSS
anyway, so the CPU figures come with them at no cost: ``cpu.stat`` would only add to
every reading. ``memory.current`` is no alternative for the RSS: clawsup's own cgroup
holds clawsup, so it cannot hand the memory controller down to the programs' cgroups
(the kernel's no-internal-process rule) and the file is absent there; where it exists
it also counts page cache, which is not RSS.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clawsup.supervisor.procinfo import ProcessStat, StatReader, parse_stat
from clawsup.supervisor.resources import Usage

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CHUNK = 65536
# Descriptors a reading keeps open between readings, per program (see _OpenFiles).
MAX_KEPT = 64


@dataclass(frozen=True)
class TreeSnapshot:
    """A program's members as ``Trees`` knows them, readable from another thread."""

    # (pid, start time in clock ticks after boot): the registry's members (registry mode)
    members: tuple[tuple[int, int], ...]
    cgroup: str | None  # the program's cgroup directory (cgroup mode): its cgroup.procs


def _pread_all(fd: int) -> bytes | None:
    chunks: list[bytes] = []
    try:
        # One pread but for a long cgroup.procs: a short read is the end of the file.
        while len(chunk := os.pread(fd, _CHUNK, _CHUNK * len(chunks))) == _CHUNK:
            chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks) + chunk if chunks else chunk


class _OpenFiles:
    """Descriptors kept open between readings: each reading is then one pread a file,
    without the path walk, open and close (a reading every 5 s for the program's life).
    At most ``MAX_KEPT``: a tree of thousands (a fork storm) is read by open and close
    past that, never at the cost of the descriptors clawsup needs to spawn and serve.

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
            except OSError:
                return None  # gone (ENOENT, ESRCH), or out of descriptors (EMFILE)
            if len(self._fds) >= MAX_KEPT:
                try:
                    return _pread_all(fd)
                finally:
                    os.close(fd)
            self._fds[path] = fd
        raw = _pread_all(fd)
        if raw is None:
            self._close(path)
        return raw

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
        # Zombies among the walked processes at the last reading: the sampler's zombie
        # check reads them from here rather than opening each stat file a second time.
        self.zombies = 0

    def close(self) -> None:
        self._files.close()

    def read(self, walked: Iterable[int], at: float) -> Usage | None:
        """The tree's usage now (``walked``: the sampler's walk below ``main``); None
        once the program's own process is gone."""
        main_raw = self._main.stat_line()
        if main_raw is None:
            return None
        main = parse_stat(main_raw)
        if main is None:
            return None
        snapshot = self._snapshot()
        walked = set(walked)
        wanted: dict[int, int | None] = dict.fromkeys(walked)
        wanted.update(snapshot.members)
        paths: set[str] = set()
        if snapshot.cgroup is not None:
            procs = f"{snapshot.cgroup}/cgroup.procs"
            paths.add(procs)
            for word in (self._files.read(procs) or b"").split():
                wanted.setdefault(int(word))
        stats = {(self._main.pid, main.starttime): main}
        zombies = 0
        for pid, start in wanted.items():
            if pid == self._main.pid:
                continue
            path = f"/proc/{pid}/stat"
            raw = self._files.read(path)
            stat = None if raw is None else parse_stat(raw)
            if stat is not None and (start is None or stat.starttime == start):
                stats[(pid, stat.starttime)] = stat
                paths.add(path)
                zombies += stat.state == "Z" and pid in walked
        self._files.keep(paths)
        self.zombies = zombies
        cpu_seconds = self._cpu_seconds(stats)
        last_at, self._last_at = self._last_at, at
        cpu_percent = None
        if last_at is not None and cpu_seconds is not None and at > last_at:
            cpu_percent = round(100.0 * cpu_seconds / (at - last_at), 1)
        return Usage(pid=self._main.pid, at=at, rss=_PAGE_SIZE * sum(s.rss_pages for s in stats.values()),
                     cpu_percent=cpu_percent, since=last_at)

    def _cpu_seconds(self, stats: dict[tuple[int, int], ProcessStat]) -> float | None:
        """CPU seconds the tree used since the last read; None on the first."""
        boot_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS
        first = self._last_at is None
        gone = self._last_ticks
        ticks = 0
        for key, stat in stats.items():
            before = gone.pop(key, None)
            if before is None:
                # New since the last read: all its time is since then if it started
                # since; one found late (re-parented, seen by the registry only now) has
                # a past this read cannot place, and counts from here on.
                before = 0 if stat.starttime >= self._last_boot_ticks else stat.cpu_ticks
            ticks += max(0, stat.cpu_ticks - before)
        # A member that exited since was reaped by its parent, whose children's time
        # (cutime, cstime) now holds all of the member's: what the last reads counted of
        # it is in there again. (One reaped by clawsup, re-parented, loses that much.)
        ticks = max(0, ticks - sum(gone.values()))
        self._last_ticks = {key: stat.cpu_ticks for key, stat in stats.items()}
        self._last_boot_ticks = boot_ticks
        return None if first else ticks / _CLOCK_TICKS
