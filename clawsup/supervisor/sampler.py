"""The hang sampler: a thread per watched program that reads /proc every ``sample_interval``.

Why a thread and not a timer on the event loop: the sample runs every second for the
supervisor's whole life, and at idle nearly all of its cost is waking Python up with cold
caches. Measured on the bench machine, one idle wake of an asyncio loop (``_run_once``,
the selector, the timer heap: some hundred bytecodes) costs about 240 us of CPU; a thread
blocked in ``poll()`` that reads one /proc file costs about 120 us. supervisord's own 1 s
tick costs about 190 us, and the issue wants clawsup's idle CPU at or below it.

The thread only reads. Every decision (is it hung? leaking zombies?) and every change of
state stays on the loop: the thread hands over only the samples that matter (a D state,
the first sample after one, a process tree or zombie count that changed, another thread
in D and the first reading after it left) through ``call_soon_threadsafe``, and nothing
at all while the program sleeps as usual.

At the walks of the tree it also reads what the tree uses (usage.py; how often:
``USAGE_EVERY``): the last reading is kept for ``status`` to read (``usage_of``), and
handed to the loop only when it is over a limit of ``[programs.NAME.resources]`` or the
first under after one over (resources.py judges them there). With ``hang`` off
(``hang.enabled = false``) only that is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from clawsup.supervisor import procinfo
from clawsup.supervisor.hang import ThreadInD
from clawsup.supervisor.resources import NO_LIMITS, Limits, Usage, over
from clawsup.supervisor.usage import TreeSnapshot, TreeUsage

log = logging.getLogger("clawsup")

# The process tree under a program (zombie count, owned PIDs) is walked every this many
# samples: walking it costs more than the D-state read, and zombies pile up over minutes.
TREE_SCAN_EVERY = 5
# What the tree uses is read at every walk while it is needed: a limit to judge, or
# someone who looked at it (status, the metrics) within WANTED_FOR seconds. Otherwise at
# every USAGE_EVERY-th walk only (30 s at the default interval), so that a first look
# finds a reading: a reading costs some 200 us of CPU with cold caches, more than the
# sampler's whole second otherwise.
USAGE_EVERY = 6
WANTED_FOR = 60.0


@dataclass(frozen=True)
class Observation:
    """One sample of a program's process, as the loop receives it."""

    pid: int
    state: str | None  # the main thread's state letter; None once the process is gone
    switches: int | None  # its context switches, read only in D
    at: float  # monotonic time of the sample
    # Set when the tree was walked and differs from the last one handed over.
    tree: tuple[int, ...] | None = None
    zombies: int | None = None
    # The other threads in D, when they were read (see _Process.threads_in_d).
    threads_in_d: tuple[ThreadInD, ...] | None = None
    # What the tree uses, when over a limit or the first sample back under.
    usage: Usage | None = None


class _Process:
    """The sampler thread's open descriptors on one process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stat = procinfo.StatReader(pid)
        self._children = procinfo.ChildrenReader(pid)
        self.reader: TreeUsage | None = None  # what the tree uses, when asked to read it

    def tree(self) -> tuple[int, ...]:
        """Every process below this one."""
        first = self._children.children(self.stat.threads())
        return tuple(procinfo.descendants(self.pid, first=first))

    def threads_in_d(self, among: tuple[int, ...] | None) -> tuple[ThreadInD, ...]:
        """The other threads in D (of ``among`` only, when given), switch counts read
        only for those."""
        return tuple(
            ThreadInD(tid, name, procinfo.context_switches(self.pid, tid))
            for tid, name in self._children.threads_in_d(among)
        )

    def close(self) -> None:
        self.stat.close()
        self._children.close()
        if self.reader is not None:
            self.reader.close()


class Sampler:
    """Samples one program's current process from a thread; see the module docstring.

    ``watch(pid)`` (from the loop) says which process to sample; ``None`` pauses sampling
    while no process runs. The PID is handed over as one attribute: a reference
    assignment is atomic under the GIL, and a sample of a PID the loop has just dropped is
    harmless because the loop checks the PID of each observation it receives.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        deliver: Callable[[Observation], None],
        loop: asyncio.AbstractEventLoop,
        monotonic: Callable[[], float],
        *,
        tree: Callable[[], TreeSnapshot] | None = None,
        limits: Limits = NO_LIMITS,
        hang: bool = True,
    ) -> None:
        """``tree``: the program's members (Trees.snapshot), to read what they use;
        None reads nothing. ``hang``: judge D states and zombies at all."""
        self.name = name
        self._tree = tree
        self._limits = limits
        self._hang = hang
        # The last reading of what the tree uses; None while nothing runs. Written by the
        # thread, read by the loop: one reference, as ``_pid`` is.
        self.usage: Usage | None = None
        self._wanted_at = -WANTED_FOR  # monotonic time of the last look at the readings
        self._interval_ms = max(1, round(interval * 1000))
        self._deliver = deliver
        self._loop = loop
        self._monotonic = monotonic
        self._pid: int | None = None
        # close() writes here to end the thread's poll() at once, not at the next sample.
        self._stop_read, self._stop_write = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name=f"clawsup-sampler-{name}", daemon=True
        )
        self._thread.start()

    def watch(self, pid: int | None) -> None:
        self._pid = pid
        self.usage = None

    def usage_of(self, pid: int | None) -> Usage | None:
        """The last reading of what the tree uses, if it is one of ``pid``'s run."""
        self._wanted_at = self._monotonic()  # one float: as atomic as ``_pid``
        usage = self.usage
        return usage if usage is not None and usage.pid == pid else None

    def close(self) -> None:
        if self._stop_write < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_write, b"x")
        self._thread.join(timeout=5.0)
        os.close(self._stop_write)
        self._stop_write = -1
        if not self._thread.is_alive():
            # Only once the thread is gone: it may still be inside poll() on this fd.
            os.close(self._stop_read)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        # Signals are the main thread's business (asyncio's wakeup fd, the reaper); with
        # them blocked here the kernel never picks this thread to deliver one to, and
        # poll() is never interrupted.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        poller = select.poll()
        poller.register(self._stop_read, select.POLLIN)
        # Everything below is this thread's own: the loop never touches it.
        watched: _Process | None = None
        samples = 0
        in_d = False
        last_tree: tuple[int, tuple[int, ...], int] | None = None
        # Other threads seen in D at the last reading: read again every sample until
        # they leave it. All threads are read only at the tree walks, with the thread
        # list the walk keeps open: a stuck worker is seen up to TREE_SCAN_EVERY samples
        # late, against a d_state_after of seconds, for about 5 us per thread per walk
        # (a 13-thread gateway: some 12 us a second at the default interval), not
        # 60 us every sample.
        following: tuple[int, ...] = ()
        failing = False
        was_over = False  # the last reading of what the tree uses was over a limit
        # Keep this loop short: it is the idle cost of clawsup.
        while not poller.poll(self._interval_ms):
            pid = self._pid
            if pid is None:
                if watched is not None:
                    watched.close()
                    watched = None
                    self.usage = None
                continue
            try:
                if watched is None or watched.pid != pid:
                    if watched is not None:
                        watched.close()
                    watched = _Process(pid)
                    if self._tree is not None:
                        watched.reader = TreeUsage(watched.stat, self._tree)
                    samples = 0
                    in_d = False
                    following = ()
                    was_over = False
                state = watched.stat.state()
                samples += 1
                walk = samples % TREE_SCAN_EVERY == 1
                if not self._hang:
                    state = None if state is None else "S"  # D states are not judged
                if state != "D" and not in_d and not walk and not following:
                    continue
                tree = watched.tree() if walk and state is not None else None
                usage = self._read_usage(watched, tree, samples // TREE_SCAN_EVERY)
                due = False
                if usage is not None:
                    # Over a limit, or the first reading back under: the loop judges.
                    above = bool(over(usage, self._limits))
                    due, was_over = above or was_over, above
                if not self._hang:
                    if due:
                        self._loop.call_soon_threadsafe(
                            self._deliver, Observation(pid=pid, state=state, switches=None,
                                                       at=self._monotonic(), usage=usage))
                    continue
                threads = None
                if state is not None and (walk or following):
                    threads = watched.threads_in_d(None if walk else following)
                # The reading has just read every walked stat: it counted the zombies.
                counted = None if usage is None or watched.reader is None else watched.reader.zombies
                seen = self._observe(pid, state, tree, last_tree, threads, zombies=counted)
                if due:
                    seen = dataclasses.replace(seen, usage=usage)
                # The first sample out of D goes to the loop too: it ends the D record.
                was_in_d, in_d = in_d, state == "D"
                was_following = bool(following)
                if threads is not None:
                    following = tuple(thread.tid for thread in threads)
                if seen.tree is not None:
                    assert seen.zombies is not None
                    last_tree = (pid, seen.tree, seen.zombies)
                if (in_d or was_in_d or seen.tree is not None or due
                        or (threads is not None and (threads or was_following))):
                    self._loop.call_soon_threadsafe(self._deliver, seen)
                failing = False
            except RuntimeError:
                return  # the loop is closed: the supervisor is exiting
            except Exception:
                # A bug, not a /proc race (those return None): say so once per run of
                # failures, and keep sampling rather than silently losing hang detection.
                if not failing:
                    log.exception("hang sampler of %s failed; it keeps sampling", self.name)
                failing = True
        if watched is not None:
            watched.close()

    def _read_usage(self, watched: _Process, tree: tuple[int, ...] | None,
                    walks: int) -> Usage | None:
        """What the tree uses, at the walks it is due (``USAGE_EVERY``); kept for
        ``status`` too."""
        if tree is None or watched.reader is None:
            return None
        if not (self._limits.any or walks % USAGE_EVERY == 0
                or self._monotonic() - self._wanted_at < WANTED_FOR):
            return None
        usage = watched.reader.read(tree, self._monotonic())
        self.usage = usage
        return usage

    def _observe(
        self, pid: int, state: str | None, tree: tuple[int, ...] | None,
        last_tree: tuple[int, tuple[int, ...], int] | None,
        threads: tuple[ThreadInD, ...] | None = None, *, zombies: int | None = None,
    ) -> Observation:
        switches = procinfo.context_switches(pid) if state == "D" else None
        at = self._monotonic()
        if tree is None:
            return Observation(pid=pid, state=state, switches=switches, at=at,
                               threads_in_d=threads)
        # Zombies whose parent is alive: only that parent can reap them, so only a restart
        # clears them (an orphaned zombie would be re-parented to us and reaped).
        if zombies is None:
            zombies = sum(1 for p in tree if procinfo.run_state(p) == "Z")
        # Zombies are handed over at every walk, changed or not: a leak found while the
        # program was STARTING must still be judged once it is RUNNING.
        if last_tree == (pid, tree, zombies) and not zombies:
            return Observation(pid=pid, state=state, switches=switches, at=at,
                               threads_in_d=threads)
        return Observation(pid=pid, state=state, switches=switches, at=at,
                           tree=tree, zombies=zombies, threads_in_d=threads)
