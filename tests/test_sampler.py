"""The hang sampler thread: what it reads from /proc and what it hands to the loop.

Real processes, a real asyncio loop; the sampler runs every 20 ms here instead of every
second so each test takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor import procinfo
from clawsup.supervisor.sampler import TREE_SCAN_EVERY, Observation, Sampler
from tests.util import wait_until

INTERVAL = 0.02


def spawn_python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


class LoopThread:
    """An asyncio loop in a thread, recording what a Sampler delivers to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.seen: list[Observation] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def deliver(self, observation: Observation) -> None:
        assert threading.current_thread() is self._thread  # only ever on the loop
        self.seen.append(observation)

    def sampler(self, pid: int | None) -> Sampler:
        sampler = Sampler("test", INTERVAL, self.deliver, self.loop, time.monotonic)
        sampler.watch(pid)
        return sampler

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.close()


def test_state_letter_of_a_process_with_a_tricky_name(procs: list[subprocess.Popen[bytes]]):
    # prctl(PR_SET_NAME) accepts anything; ") D (" must not be taken for the state.
    child = spawn_python(
        "import ctypes, time\n"
        "ctypes.CDLL(None).prctl(15, b'x) D (7 y', 0, 0, 0)\n"
        "time.sleep(60)\n")
    procs.append(child)
    stat = Path(f"/proc/{child.pid}/stat")
    wait_until(lambda: b"x) D (7 y" in stat.read_bytes(),
               what="renamed")
    wait_until(lambda: procinfo.run_state(child.pid) == "S", what="asleep")
    reader = procinfo.StatReader(child.pid)
    try:
        assert reader.state() == "S"
        child.kill()
        child.wait()
        assert reader.state() is None  # reaped: the open descriptor reads ESRCH
    finally:
        reader.close()


def test_a_sleeping_program_costs_the_loop_nothing_after_its_first_tree(
    loop: LoopThread, procs: list[subprocess.Popen[bytes]]
):
    child = spawn_python("import time; time.sleep(60)")
    procs.append(child)
    wait_until(lambda: procinfo.run_state(child.pid) == "S", what="asleep")
    sampler = loop.sampler(child.pid)
    try:
        wait_until(lambda: loop.seen, what="the first tree walk")
        # Three more walks' worth of samples, and nothing changes.
        time.sleep(3 * TREE_SCAN_EVERY * INTERVAL)  # the time that passes is the point
    finally:
        sampler.close()
    assert len(loop.seen) == 1
    [first] = loop.seen
    assert (first.pid, first.state, first.tree, first.zombies) == (child.pid, "S", (), 0)


def test_d_state_is_handed_over_at_every_sample_and_its_end_once(
    loop: LoopThread, procs: list[subprocess.Popen[bytes]]
):
    # A vfork parent stays in D until its child exits (the demo gateway's way).
    child = spawn_python(
        "import time\n"
        "from clawsup.demo.gateway import enter_d_state\n"
        "time.sleep(0.3)\n"
        "enter_d_state(0.5)\n"
        "time.sleep(60)\n")
    procs.append(child)
    sampler = loop.sampler(child.pid)
    try:
        wait_until(lambda: sum(o.state == "D" for o in loop.seen) >= 5, what="D samples")
        wait_until(lambda: loop.seen[-1].state != "D", what="the end of D")
        time.sleep(3 * INTERVAL)  # nothing more comes for a process asleep again
    finally:
        sampler.close()
    # Every observation is a D sample, the first sample after D (which ends the
    # record on the loop), or a tree walk that found something new: the kernel may show
    # the vfork parent R for an instant mid-D (a wake-up before it sleeps again), and
    # that instant is handed over too, as the end of a spell.
    seen = loop.seen
    assert seen[-1].state in ("R", "S")
    for previous, current in zip([None, *seen], seen, strict=False):
        if current.state != "D" and current.tree is None:
            assert previous is not None
            assert previous.state == "D"
    # Switch counts are read in D only, and the clock is monotonic.
    assert all(o.switches is not None for o in loop.seen if o.state == "D")
    assert all(a.at <= b.at for a, b in zip(loop.seen, loop.seen[1:], strict=False))


def test_a_new_grandchild_and_zombies_are_handed_over(
    loop: LoopThread, procs: list[subprocess.Popen[bytes]]
):
    child = spawn_python(
        "import os, time\n"
        "time.sleep(0.2)\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os._exit(0)\n"  # never waited for: three zombies
        "time.sleep(60)\n")
    procs.append(child)
    sampler = loop.sampler(child.pid)
    try:
        found = wait_until(lambda: [o for o in loop.seen if o.zombies == 3], what="zombies")
        # Zombies are handed over at every walk, changed or not.
        wait_until(lambda: len([o for o in loop.seen if o.zombies == 3]) >= 3,
                   what="zombies again")
    finally:
        sampler.close()
    assert len(found[0].tree or ()) == 3


def test_the_sampler_thread_blocks_every_signal(loop: LoopThread):
    sampler = loop.sampler(None)
    try:
        [thread] = [t for t in threading.enumerate() if t.name == "clawsup-sampler-test"]
        tid = thread.native_id
        status = Path(f"/proc/self/task/{tid}/status").read_text()
        blocked = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("SigBlk:")), 16)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            assert blocked & (1 << (number - 1)), number
    finally:
        sampler.close()


def test_watching_nothing_samples_nothing_and_close_ends_the_thread(
    loop: LoopThread, procs: list[subprocess.Popen[bytes]]
):
    child = spawn_python("import time; time.sleep(60)")
    procs.append(child)
    sampler = loop.sampler(None)
    time.sleep(3 * TREE_SCAN_EVERY * INTERVAL)
    assert loop.seen == []
    sampler.watch(child.pid)
    wait_until(lambda: loop.seen, what="sampling once watched")
    threads = threading.active_count()
    sampler.close()
    assert threading.active_count() == threads - 1
    sampler.close()  # twice is harmless


# -- the children of every thread, through kept-open descriptors -------------------------

THREAD_FORKS = """
import os, sys, threading, time
def fork_from_a_thread():
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
time.sleep(float(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    threading.Thread(target=fork_from_a_thread, daemon=True).start()
print("forked", flush=True)
time.sleep(60)
"""


def spawn_forker(delay: float, threads: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", THREAD_FORKS, str(delay), str(threads)],
                            start_new_session=True, stdout=subprocess.PIPE)


def test_children_forked_by_other_threads_are_found(procs: list[subprocess.Popen[bytes]]):
    child = spawn_forker(0.0, 2)
    procs.append(child)
    assert child.stdout is not None
    assert child.stdout.readline() == b"forked\n"
    reader = procinfo.StatReader(child.pid)
    kids = procinfo.ChildrenReader(child.pid)
    try:
        found = wait_until(lambda: len(kids.children(reader.threads())) == 2, what="2 kids")
        assert found
        assert sorted(kids.children(reader.threads())) == sorted(procinfo.children(child.pid))
    finally:
        reader.close()
        kids.close()


def test_a_new_thread_is_listed_when_the_count_changes(procs: list[subprocess.Popen[bytes]]):
    child = spawn_forker(0.5, 1)
    procs.append(child)
    reader = procinfo.StatReader(child.pid)
    kids = procinfo.ChildrenReader(child.pid)
    try:
        wait_until(lambda: reader.state() == "S", what="asleep")
        assert kids.children(reader.threads()) == []  # one thread, nothing forked yet
        assert child.stdout is not None
        assert child.stdout.readline() == b"forked\n"
        # Two threads now: the new one's children file is opened and read.
        wait_until(lambda: len(kids.children(reader.threads())) == 1, what="its child")
    finally:
        reader.close()
        kids.close()


def test_a_thread_that_replaced_another_is_listed_within_relist_every(
    procs: list[subprocess.Popen[bytes]]
):
    # Same thread count before and after: only the periodic listing finds the new one.
    code = """
import os, threading, time
gone = threading.Event()
threading.Thread(target=gone.wait, daemon=True).start()
time.sleep(0.5)
gone.set()
time.sleep(0.2)
def fork():
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
threading.Thread(target=fork, daemon=True).start()
print("replaced", flush=True)
time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                             stdout=subprocess.PIPE)
    procs.append(child)
    reader = procinfo.StatReader(child.pid)
    kids = procinfo.ChildrenReader(child.pid)
    try:
        wait_until(lambda: reader.threads() == 2, what="two threads")
        assert kids.children(reader.threads()) == []
        assert child.stdout is not None
        assert child.stdout.readline() == b"replaced\n"
        wait_until(lambda: procinfo.children(child.pid), what="the new thread's child")
        reads = [kids.children(reader.threads())
                 for _ in range(procinfo.ChildrenReader.RELIST_EVERY)]
        assert reads[-1] == procinfo.children(child.pid)
    finally:
        reader.close()
        kids.close()
