"""At idle the supervisor's event loop sleeps: inotify, not polling, brings it work.

The janitor sweeps every ``interval`` only while time alone can bring work (a lock whose
owner may die, a directory that is not watched). Otherwise a flag, a request or a new lock
wakes it through inotify. Measured here by the context switches of clawsup's main thread,
the one that runs the event loop (the hang sampler and ZeroMQ have threads of their own).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.util import Clawsup, wait_until, write_config

WINDOW = 2.0  # seconds of watching the loop
INTERVAL = "100ms"  # 20 sweeps per window, if it swept every interval
# At idle: a few stray wake-ups at most (a restart's timers firing late, on purpose, a
# flag or request just handled); sweeping every interval makes 20 and more.
IDLE_MOST = 6
BUSY_LEAST = 15


@pytest.fixture
def clawsup(tmp_path: Path) -> Iterator[Clawsup]:
    home = tmp_path / "home"
    (home / "agents" / "main" / "sessions").mkdir(parents=True)
    (home / "ops-requests").mkdir()
    config = write_config(tmp_path, """
[programs.gw]
command = ["sleep", "1000"]
main = true
start_seconds = "0s"
hang = { enabled = false }
""")
    config.write_text(config.read_text().replace(
        "[janitor]\n", f'[janitor]\ninterval = "{INTERVAL}"\nfull_pass_every = "1h"\n', 1))
    running = Clawsup(config, tmp_path / "clawsup.log")
    running.wait_log("gw: STARTING -> RUNNING")
    yield running
    running.stop()


def loop_wakeups(pid: int, seconds: float) -> int:
    """Context switches of the process' main thread over ``seconds``."""
    def switches() -> int:
        with open(f"/proc/{pid}/task/{pid}/status") as status:
            return sum(int(line.split()[1]) for line in status
                       if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
    before = switches()
    time.sleep(seconds)  # the time that passes is what is measured
    return switches() - before


def test_an_idle_supervisor_does_not_wake_up_every_interval(clawsup: Clawsup, tmp_path: Path):
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST
    # A lock held by a live process: its owner may die with no file event, so the
    # janitor looks every interval again.
    sessions = tmp_path / "home" / "agents" / "main" / "sessions"
    # Written now by this test's own (live, older) process: a lock the janitor keeps.
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    lock = {"pid": os.getpid(), "createdAt": created}
    (sessions / "a.jsonl").write_text("{}\n")
    (sessions / "a.jsonl.lock").write_text(json.dumps(lock))
    time.sleep(0.5)  # let inotify and the next sweep index the lock
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) >= BUSY_LEAST
    assert (sessions / "a.jsonl.lock").exists()
    # Gone again: back to sleep.
    (sessions / "a.jsonl.lock").unlink()
    time.sleep(0.5)
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST


def test_a_flag_and_a_request_are_seen_at_once_by_an_idle_supervisor(
    clawsup: Clawsup, tmp_path: Path
):
    home = tmp_path / "home"
    (home / "restart.flag").write_text("skill installed")
    clawsup.wait_log("restart flag: skill installed: restarting gw", timeout=5)
    inbox = home / "ops-requests"
    (inbox / ".r.json.tmp").write_text('{"action": "restart", "reason": "from a skill"}')
    os.rename(inbox / ".r.json.tmp", inbox / "r.json")
    wait_until((inbox / "done" / "r.json.result.json").exists, 5, what="request done")
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST


def test_an_inbox_created_later_is_watched_from_then_on(clawsup: Clawsup, tmp_path: Path):
    inbox = tmp_path / "home" / "ops-requests"
    inbox.rename(tmp_path / "old-inbox")
    # Not there: its creation in home/ is waited for, not polled for.
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST
    inbox.mkdir()
    (inbox / "r.json").write_text('{"action": "restart"}')
    wait_until((inbox / "done" / "r.json.result.json").exists, 5, what="request done")
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:inotify")


def test_the_janitor_and_the_flag_watch_share_one_inotify_instance(
    clawsup: Clawsup, tmp_path: Path
):
    """One instance, one reader on the loop: the janitor (session directories) and
    FileWatch (restart flag, ops inbox) are two watchers of one dispatcher. Each still
    gets its own events: the flag here, a new lock in the first test of this module."""
    assert inotify_instances(clawsup.supervisor_pid) == 1
    (tmp_path / "home" / "restart.flag").write_text("shared instance")
    clawsup.wait_log("restart flag: shared instance: restarting gw", timeout=5)
    assert inotify_instances(clawsup.supervisor_pid) == 1
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST
