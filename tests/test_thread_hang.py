"""A thread other than the main one stuck in D: seen, reported, restarted once.

The stuck thread is real: a second Python thread calls clone(CLONE_VFORK | SIGCHLD)
without CLONE_VM, and sleeps in D until its child exits, while the main thread sleeps
in S as a Node main thread sleeps in epoll.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from clawsup.client import Client
from clawsup.supervisor import hang, procinfo
from clawsup.supervisor.hang import ThreadInD
from tests.test_ctl import ctl
from tests.test_sampler import LoopThread
from tests.test_supervisor import program, run_clawsup  # noqa: F401 - a fixture
from tests.util import incidents, wait_incident, wait_until

# The worker thread stays in D for argv[1] seconds; the main thread sleeps normally.
# A marker file makes the respawned process a healthy one.
WORKER_IN_D = """
import ctypes, os, signal, sys, threading, time
{handler}
marker = {marker!r}
if marker and os.path.exists(marker):
    print('respawned', flush=True)
    while True: time.sleep(1)
if marker:
    open(marker, 'w').close()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

main_tid = threading.get_native_id()

def main_is_blocked():
    # In select(2) (23) or pselect6 (270), not running and not in futex(2) (202): a main
    # thread waiting for the GIL.
    with open(f'/proc/self/task/{{main_tid}}/syscall') as f:
        return f.read().split()[0] in ('23', '270')

def worker():
    # clone(CLONE_VFORK | SIGCHLD) without CLONE_VM: this thread sleeps in D until the
    # child exits; the child has its own copy of memory, so it may run Python. ctypes lets
    # go of the GIL around the call: were the main thread to take it at that instant, the
    # child would inherit a GIL held by a thread it does not have and never return from
    # the call (the parent then stays in D for good). So the clone waits until the main
    # thread sits in select(), which it leaves only for a signal.
    while not main_is_blocked():
        time.sleep(0.01)
    child = libc.syscall(56, 0x4000 | signal.SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        time.sleep({seconds})
        os._exit(0)
    print('worker left D state', flush=True)

print('worker started', flush=True)
threading.Thread(target=worker, name='stuck-worker', daemon=True).start()
import select
while True: select.select([], [], [])
"""


def worker_in_d(seconds: float, marker: str = "", handler: str = "") -> str:
    return WORKER_IN_D.format(seconds=seconds, marker=marker, handler=handler)


def _with_a_thread_in_d(pid: int) -> tuple[str | None, list[tuple[int, str]]] | None:
    """(the main thread's state, the other threads in D), once there is one."""
    reader = procinfo.ChildrenReader(pid)
    try:
        reader.children(None)  # lists the threads
        stuck = reader.threads_in_d()
        return (procinfo.run_state(pid), stuck) if stuck else None
    finally:
        reader.close()


# -- procinfo and the sampler ------------------------------------------------------------


def test_a_worker_thread_in_d_is_found_while_the_main_thread_sleeps() -> None:
    child = subprocess.Popen([sys.executable, "-c", worker_in_d(60)], start_new_session=True)
    try:
        main, stuck = wait_until(lambda: _with_a_thread_in_d(child.pid), what="a thread in D")
        assert main == "S"
        assert len(stuck) == 1
        tid, name = stuck[0]
        assert tid != child.pid
        assert name, "the thread's name, from its stat line"
        assert procinfo.context_switches(child.pid, tid) is not None
    finally:
        child.kill()
        child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # the vfork child


def test_the_sampler_hands_over_the_other_threads_in_d_and_their_end() -> None:
    child = subprocess.Popen([sys.executable, "-c", worker_in_d(1.0)], start_new_session=True,
                             stdout=subprocess.PIPE)
    loop = LoopThread()
    sampler = loop.sampler(child.pid)
    try:
        assert child.stdout is not None
        wait_until(lambda: any(o.threads_in_d for o in loop.seen), 10, what="a thread in D")
        in_d = next(o for o in loop.seen if o.threads_in_d)
        assert in_d.state == "S", "the main thread is not the stuck one"
        assert in_d.threads_in_d is not None
        assert in_d.threads_in_d[0].switches is not None
        assert child.stdout.readline() == b"worker started\n"
        assert child.stdout.readline() == b"worker left D state\n"
        # The reading that finds it gone is handed over too: it ends the record.
        wait_until(lambda: loop.seen[-1].threads_in_d == (), 10, what="the end of D")
    finally:
        sampler.close()
        loop.close()
        child.kill()
        child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


# -- the pure rules (hang.py) --------------------------------------------------------------


def _seen(tid: int, switches: int) -> tuple[ThreadInD, ...]:
    return (ThreadInD(tid=tid, name="libuv-worker", switches=switches),)


def test_a_thread_frozen_in_d_for_the_threshold_is_stuck_once() -> None:
    record = hang.track_threads(hang.NO_THREADS_IN_D, _seen(7, 3), 0.0)
    assert hang.newly_stuck(record, 0.5, 1.0) is None
    record = hang.track_threads(record, _seen(7, 3), 1.0)
    stuck = hang.newly_stuck(record, 1.0, 1.0)
    assert stuck is not None
    assert (stuck[0].tid, stuck[1]) == (7, 1.0)
    record, restart = hang.report_stuck(record, 7)
    assert restart
    assert hang.stuck_thread(record, 2.0) == "thread 7 (libuv-worker) in D state for 2s"
    # Reported: not again while it lasts.
    assert hang.newly_stuck(hang.track_threads(record, _seen(7, 3), 5.0), 5.0, 1.0) is None


def test_a_thread_whose_switch_count_moves_is_not_stuck() -> None:
    record = hang.NO_THREADS_IN_D
    for at, switches in ((0.0, 1), (1.0, 2), (2.0, 3)):
        record = hang.track_threads(record, _seen(7, switches), at)
    assert hang.newly_stuck(record, 2.0, 1.0) is None


def test_a_thread_out_of_d_ends_its_report_but_not_the_one_restart() -> None:
    record = hang.track_threads(hang.NO_THREADS_IN_D, _seen(7, 3), 0.0)
    record, restart = hang.report_stuck(record, 7)
    assert restart
    record = hang.track_threads(record, (), 2.0)
    assert (record.reported, hang.stuck_thread(record, 2.0)) == (None, "")
    # Stuck again in the same process: reported again, but no second restart.
    record = hang.track_threads(record, _seen(7, 9), 3.0)
    record = hang.track_threads(record, _seen(7, 9), 4.0)
    assert hang.newly_stuck(record, 4.0, 1.0) is not None
    record, restart = hang.report_stuck(record, 7)
    assert not restart


# -- the whole supervisor ------------------------------------------------------------------

HANG = """
[programs.gw.hang]
d_state_after = "1s"
sample_interval = "100ms"
"""


def test_a_worker_thread_stuck_in_d_is_reported_fails_health_and_restarts_once(
    run_clawsup, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    # The program ignores SIGTERM: the graceful restart waits stop_timeout, long enough
    # to see what the status and health say while the thread stays stuck.
    code = worker_in_d(60, marker=str(tmp_path / "once"),
                       handler="signal.signal(signal.SIGTERM, lambda *a: print('TERM ignored', "
                               "flush=True))")
    clawsup = run_clawsup(program(code).replace('stop_timeout = "2s"', 'stop_timeout = "4s"')
                          + HANG)
    client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=10)
    clawsup.wait_log("gw | worker started", timeout=20)
    pid = wait_until(lambda: client.status().programs[0].pid, 10)

    reported = wait_incident(tmp_path, "thread_hung", timeout=15)
    assert (reported["program"], reported["data"]["pid"], reported["data"]["restart"]) == (
        "gw", pid, True)
    status = client.status().programs[0]
    assert status.pid == pid
    assert status.stuck_thread.startswith("thread ")
    assert "in D state for" in status.stuck_thread
    assert not status.hung, "the main thread is not hung"
    health = client.health()
    assert not health.healthy
    assert any("has a thread" in reason and "in D state" in reason for reason in health.reasons)
    health_cli = ctl("--socket", f"ipc://{tmp_path}/run/control.sock", "health")
    assert health_cli.returncode == 1, health_cli.stdout + health_cli.stderr
    # One graceful restart: SIGTERM (ignored here), SIGKILL after stop_timeout ends the
    # killable wait, and the new process is healthy.
    text = clawsup.wait_log("gw | respawned", timeout=20)
    assert "gw | TERM ignored" in text
    assert len(incidents(tmp_path, "thread_hung")) == 1
    wait_until(lambda: client.health().healthy, 10, what="healthy again")
    assert client.status().programs[0].stuck_thread == ""
    assert "worker left D state" not in text
    client.close()


def test_a_short_spell_of_a_worker_in_d_is_not_reported(
    run_clawsup, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    clawsup = run_clawsup(program(worker_in_d(0.5)) + HANG.replace('"1s"', '"3s"'))
    clawsup.wait_log("gw | worker left D state", timeout=20)
    assert incidents(tmp_path) == []


def test_the_report_ends_when_the_thread_leaves_d_even_while_stopping(
    run_clawsup, tmp_path: Path  # noqa: F811 - the fixture
) -> None:
    # In D for 2 s, reported after 1 s; SIGTERM is ignored, so the restart is still
    # waiting for stop_timeout when the kernel gives the thread back.
    code = worker_in_d(2, handler="signal.signal(signal.SIGTERM, lambda *a: None)")
    clawsup = run_clawsup(program(code).replace('stop_timeout = "2s"', 'stop_timeout = "6s"')
                          + HANG)
    client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=10)
    wait_incident(tmp_path, "thread_hung", timeout=20)
    clawsup.wait_log("gw | worker left D state", timeout=10)
    wait_until(lambda: client.status().programs[0].stuck_thread == "", 5,
               what="the report to end")
    program_status = client.status().programs[0]
    assert program_status.state == "STOPPING", "ended by the thread, not by the restart"
    assert not any("thread" in reason for reason in client.health().reasons)
    client.close()
