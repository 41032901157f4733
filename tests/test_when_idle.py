"""Restart when idle: ``restart`` with ``when_idle`` on the control socket and
``clawsupctl restart --when-idle [--max-wait]``, against a real clawsup.

The test plays the gateway's part in a turn: it writes a transcript lock naming the
supervised program's pid (as the gateway does while a message is in flight) and removes
it when the turn is over. The janitor's interval is an hour here: a restart that follows
the last lock within a second owes nothing to the periodic sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from clawsup.client import Client
from clawsup.protocol import Restart, ScheduledReply
from clawsup.supervisor.idle_restart import CHECK_INTERVAL, REASON
from tests.realgw.harness import CLAWSUPCTL, EventRecorder
from tests.util import Clawsup, wait_until, write_config


@dataclass
class Box:
    clawsup: Clawsup
    client: Client
    events: EventRecorder
    sessions: Path
    endpoint: str

    def pid(self) -> int | None:
        program = self.client.status().programs[0]
        return program.pid if program.state == "RUNNING" else None

    def restarts(self) -> int:
        return self.client.status().programs[0].restarts

    def hold(self, session: str, pid: int | None = None) -> Path:
        """A transcript lock as the gateway writes it while a message is in flight."""
        lock = self.sessions / f"{session}.jsonl.lock"
        created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lock.write_text(json.dumps({"pid": pid or self.pid(), "createdAt": created}))
        return lock

    def new_pid(self, old: int, timeout: float = 10) -> int:
        return wait_until(lambda: (pid := self.pid()) not in (None, old) and pid, timeout,
                          what=f"a pid other than {old}\n{self.clawsup.log()[-2000:]}")

    def event(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        return wait_until(lambda: next(iter(self.events.of(kind)), None), timeout,
                          what=f"a {kind} event\n{self.clawsup.log()[-2000:]}")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLAWSUPCTL, "--socket", self.endpoint, *args],
                              capture_output=True, text=True, timeout=30)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    sessions = tmp_path / "home" / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True)
    config = write_config(tmp_path, """
[programs.gw]
command = ["sleep", "1000"]
main = true
start_seconds = "0s"
stop_timeout = "2s"
hang = { enabled = false }
""")
    config.write_text(config.read_text().replace("[janitor]\n", '[janitor]\ninterval = "1h"\n', 1))
    events = EventRecorder(f"ipc://{tmp_path}/run/events.sock")
    events.start()
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    endpoint = f"ipc://{tmp_path}/run/control.sock"
    client = Client(endpoint, timeout=10)
    running = Box(clawsup, client, events, sessions, endpoint)
    try:
        wait_until((tmp_path / "run" / "control.sock").exists, 20)
        wait_until(running.pid, 20, what="gw RUNNING")
        # The subscription has reached clawsup once an event comes through.
        wait_until(lambda: client.reload() and events.of("reloaded"), 20, interval=0.05,
                   what="the SUB socket's first event")
        yield running
    finally:
        client.close()
        clawsup.stop()
        events.stop()


def _elapsed_since(start: float) -> float:
    return time.monotonic() - start


# -- the schedule ----------------------------------------------------------------------------


def test_answered_at_once_as_scheduled_while_a_lock_is_held(box: Box) -> None:
    pid = box.pid()
    lock = box.hold("turn-1")
    start = time.monotonic()
    reply = box.client.restart_when_idle(max_wait="1m", reason="from a test")
    assert _elapsed_since(start) < 1.0
    assert (reply.program, reply.pid, reply.locks) == ("gw", pid, [str(lock)])
    assert reply.max_wait == 60.0
    assert reply.deadline == pytest.approx(reply.requested_at + 60.0)
    assert (reply.reason, reply.already_pending) == ("from a test", False)
    scheduled = box.event("restart_scheduled")
    assert scheduled["data"]["reason"] == REASON
    assert scheduled["data"]["detail"] == "from a test"
    assert scheduled["data"]["locks"] == [str(lock)]
    assert box.pid() == pid


def test_restarts_within_a_second_when_the_last_lock_goes(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    first, second = box.hold("turn-1"), box.hold("turn-2")
    box.client.restart_when_idle(reason="asked in chat")
    first.unlink()
    time.sleep(3 * CHECK_INTERVAL)  # the time that passes with a lock still held is tested
    assert box.pid() == pid, "restarted while a lock was still held"
    second.unlink()
    gone = time.monotonic()
    box.new_pid(pid)
    # Within a check interval, with room for a busy box (stop + spawn included).
    assert _elapsed_since(gone) < CHECK_INTERVAL + 1.5
    restart = box.event("idle_restart")
    assert restart["data"]["at_max_wait"] is False
    assert restart["data"]["locks"] == []
    assert (restart["data"]["reason"], restart["data"]["detail"]) == (REASON, "asked in chat")
    restarted = box.event("restarted")
    assert restarted["data"]["reason"] == REASON
    logged = [i for i in box.client.incidents().latest if i.kind == "idle_restart"]
    assert [i.data["detail"] for i in logged] == ["asked in chat"]


def test_restarts_at_max_wait_with_a_lock_held_and_says_so(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    lock = box.hold("never-ends")
    start = time.monotonic()
    reply = box.client.restart_when_idle(max_wait="2s", reason="impatient")
    assert reply.locks == [str(lock)]
    box.new_pid(pid)
    assert _elapsed_since(start) >= 2.0
    restart = box.event("idle_restart")
    assert restart["data"]["at_max_wait"] is True
    assert restart["data"]["locks"] == [str(lock)]
    assert "max wait 2s ran out" in restart["message"]
    incident = next(i for i in box.client.incidents().latest if i.kind == "idle_restart")
    assert incident.data["at_max_wait"] is True
    # The lock of the process that was restarted is cleared before the new one starts.
    assert not lock.exists()


def test_no_lock_restarts_at_once(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    start = time.monotonic()
    reply = box.client.restart_when_idle(reason="nothing in flight")
    assert reply.locks == []
    assert "restarting gw now" in reply.message
    box.new_pid(pid)
    assert _elapsed_since(start) < 3.0
    restart = box.event("idle_restart")
    assert restart["data"]["waited"] < 1.0
    assert not box.events.of("restart_scheduled")


def test_a_lock_of_another_process_does_not_hold_the_restart(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    box.hold("someone-else", pid=os.getpid())  # alive, but not of gw's tree
    reply = box.client.restart_when_idle()
    assert reply.locks == []
    box.new_pid(pid)


def test_a_second_request_does_not_stack(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    restarts = box.restarts()
    lock = box.hold("turn-1")
    first = box.client.restart_when_idle(max_wait="1m", reason="first")
    second = box.client.restart_when_idle(max_wait="5m", reason="second")
    assert second.already_pending is True
    assert (second.requested_at, second.deadline, second.max_wait, second.reason) == (
        first.requested_at, first.deadline, 60.0, "first")
    assert "already pending" in second.message
    lock.unlink()
    box.new_pid(pid)
    assert box.restarts() == restarts + 1
    assert len(box.events.of("restart_scheduled")) == 1
    assert [e["data"]["detail"] for e in box.events.of("idle_restart")] == ["first"]


def test_an_explicit_restart_cancels_the_pending_one(box: Box) -> None:
    pid = box.pid()
    assert pid is not None
    lock = box.hold("turn-1")
    box.client.restart_when_idle(reason="later")
    box.client.restart()
    new = box.new_pid(pid)
    cancelled = box.event("restart_cancelled")
    assert cancelled["data"]["cause"] == "restarted by operator"
    wait_until(lambda: not lock.exists(), 10, what="the restarted process' lock cleared")
    time.sleep(3 * CHECK_INTERVAL)  # the time in which a pending restart would happen
    assert box.pid() == new
    assert not box.events.of("idle_restart")


def test_a_stop_cancels_the_pending_one(box: Box) -> None:
    box.hold("turn-1")
    box.client.restart_when_idle(reason="later")
    box.client.stop()
    cancelled = box.event("restart_cancelled")
    assert cancelled["data"]["cause"] == "stopped by operator"
    time.sleep(3 * CHECK_INTERVAL)  # the time in which a pending restart would happen
    assert box.client.status().programs[0].state == "STOPPED"
    assert not box.events.of("idle_restart")


# -- clawsupctl --------------------------------------------------------------------------------


def test_clawsupctl_restart_when_idle_prints_the_schedule(box: Box) -> None:
    pid = box.pid()
    box.hold("turn-1")
    done = box.ctl("restart", "--when-idle", "--max-wait", "90s", "--reason", "from the CLI")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gw: restart of gw scheduled")
    assert "max wait 1m30s" in done.stdout
    scheduled = box.event("restart_scheduled")
    assert (scheduled["data"]["detail"], scheduled["data"]["max_wait"]) == ("from the CLI", 90.0)
    assert box.pid() == pid


@pytest.mark.parametrize("args", [
    ["--when-idle", "--max-wait", "soon"],
    ["--when-idle", "--max-wait", "-5s"],
    ["--when-idle", "--max-wait", "2d"],
    ["--max-wait", "10m"],
])
def test_clawsupctl_refuses_a_bad_max_wait_with_exit_2(box: Box, args: list[str]) -> None:
    pid = box.pid()
    done = box.ctl("restart", *args)
    assert done.returncode == 2, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("clawsupctl")]
    assert len(errors) == 1
    assert "max-wait" in errors[0]
    assert box.pid() == pid
    assert not box.events.of("restart_scheduled")


# -- the wire ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_wait", ["soon", -5, "-5s", "2d", "", 1e9])
def test_a_bad_max_wait_on_the_wire_is_refused_and_changes_nothing(
    box: Box, max_wait: float | str
) -> None:
    pid = box.pid()
    box.hold("turn-1")
    frame = box.client.request_raw(Restart(when_idle=True, max_wait=max_wait))
    reply = json.loads(frame)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_value"
    assert "\n" not in reply["error"]["message"]
    assert "when idle" in reply["error"]["message"]
    assert box.pid() == pid
    assert not box.events.of("restart_scheduled")


def test_max_wait_without_when_idle_is_refused(box: Box) -> None:
    pid = box.pid()
    reply = json.loads(box.client.request_raw(Restart(max_wait=60)))
    assert reply["error"]["code"] == "bad_value"
    assert "when_idle" in reply["error"]["message"]
    assert box.pid() == pid


def test_max_wait_travels_as_seconds_or_a_duration_string(box: Box) -> None:
    box.hold("turn-1")
    reply = box.client.request(Restart(when_idle=True, max_wait="1m30s"), ScheduledReply)
    assert reply.max_wait == 90.0
    again = box.client.request(Restart(when_idle=True, max_wait=45), ScheduledReply)
    assert (again.already_pending, again.max_wait) == (True, 90.0)


# -- the programs' environment -------------------------------------------------------------------


def test_programs_find_the_control_socket_in_their_environment(box: Box) -> None:
    pid = box.pid()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"CLAWSUP_SOCKET={box.endpoint}".encode() in environ


# -- free text never steers accounting ---------------------------------------------------------


@pytest.mark.parametrize("text", ["hung", "crashed", "start_timeout", REASON])
def test_a_reason_that_spells_an_internal_one_stays_free_text(box: Box, text: str) -> None:
    pid = box.pid()
    assert pid is not None
    box.client.restart(reason=text)
    box.new_pid(pid)
    exited = box.event("exited")
    assert exited["data"]["reason"] == f"manual: {text}"
    assert box.event("restarted")["data"]["reason"] == f"manual: {text}"
    assert box.client.incidents().latest == []
    assert box.client.status().programs[0].last_exit.reason == f"manual: {text}"
