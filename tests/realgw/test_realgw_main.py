"""The real gateway under the shipped config: serving, respawn, control, live settings,
locks, oversized transcripts, exec-tool children.

One clawsup and one gateway serve the whole module (a gateway start costs 5-9 s and
300 MB); each test starts from "the gateway serves" and leaves it serving, so each holds
on its own. The override adds to the test-box essentials (see harness.py) only:

- ``janitor.interval = "1s"``: a sweep each second while there is something to watch;
- ``janitor.max_session_size = "256KB"``: so the oversized transcript need not be 10 MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from tests.realgw.conftest import RunFactory, serving_module_run
from tests.realgw.fake_model import ExecCall, Text
from tests.realgw.harness import GATEWAY_PORT, RealRun, http_answers
from tests.util import wait_until

pytestmark = [pytest.mark.realgw, pytest.mark.timeout(600)]

OVERRIDE = """
[janitor]
interval = "1s"
max_session_size = "256KB"
"""


@pytest.fixture(scope="module")
def gw(module_runs: RunFactory) -> RealRun:
    return serving_module_run(module_runs, "main", OVERRIDE)


@pytest.fixture
def serving(gw: RealRun) -> RealRun:
    """The shared gateway, serving (a test before may have restarted it)."""
    gw.serving()
    return gw


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_start_to_serving(serving: RealRun) -> None:
    program = serving.serving()
    assert http_answers()
    assert serving.listens(program["pid"])
    assert serving.health() == 0
    text = serving.ctl_ok("status")
    assert "RUNNING" in text


def test_turn_reaches_the_fake_model_through_the_gateway(serving: RealRun) -> None:
    serving.model.script(Text("hello from the fake model"))
    reply = serving.turn("turn-basic", "first real turn")
    assert reply["result"]["payloads"][0]["text"] == "hello from the fake model"
    seen = serving.model.matching(lambda r: r.user == "first real turn")
    assert [r.model for r in seen] == ["model-a"]
    assert (serving.sessions / "turn-basic.jsonl").exists()
    assert not serving.lock("turn-basic").exists()


def test_set_model_is_applied_live_by_the_gateway(serving: RealRun) -> None:
    before = serving.serving()
    serving.ctl_ok("set-model", "fake/model-b")
    try:
        # The gateway applies agents.* edits itself; the next turn must ask for model-b.
        def next_turn_uses_model_b() -> bool:
            message = f"which model {time.monotonic_ns()}"
            serving.turn("set-model", message)
            return [r.model for r in serving.model.matching(lambda r: r.user == message)] == [
                "model-b"]

        wait_until(next_turn_uses_model_b, 60, interval=0.5, what="a turn on model-b")
        after = serving.serving()
        assert after["pid"] == before["pid"], "set-model restarted the gateway"
        assert after["restarts"] == before["restarts"]
    finally:
        serving.ctl_ok("set-model", "fake/model-a")


def test_set_timezone_is_applied_live_by_the_gateway(serving: RealRun) -> None:
    before = serving.serving()
    serving.ctl_ok("set-timezone", "Pacific/Chatham")

    # The gateway renders agents.defaults.userTimezone into the system prompt as
    # "Time zone: <zone>" under "## Current Date & Time".
    def prompt_has_zone() -> bool:
        message = f"what time is it {time.monotonic_ns()}"
        serving.turn("set-timezone", message)
        return any("Time zone: Pacific/Chatham" in r.system
                   for r in serving.model.matching(lambda r: r.user == message))

    wait_until(prompt_has_zone, 60, interval=0.5, what="the zone in the system prompt")
    after = serving.serving()
    assert after["pid"] == before["pid"], "set-timezone restarted the gateway"


def test_lock_of_a_dead_pid_is_cleared_and_the_session_works(serving: RealRun) -> None:
    session = "dead-owner"
    serving.turn(session, "before the dead lock")
    dead = subprocess.Popen(["true"])
    dead.wait()
    created = datetime.now(UTC) - timedelta(minutes=10)  # older than the shipped lock_max_age
    lock = serving.lock(session)
    lock.write_text(json.dumps({"pid": dead.pid, "createdAt": _iso(created)}))
    os.utime(lock, (created.timestamp(), created.timestamp()))
    wait_until(lambda: not lock.exists(), 30, what=f"clawsup removing {lock}")
    event = wait_until(lambda: [e for e in serving.events.of("orphan_lock")
                                if e["data"]["path"] == str(lock)], 10)[0]
    assert event["data"]["reason"] == "dead"
    assert event["data"]["pid"] == dead.pid
    serving.turn(session, "after the dead lock")


def test_lock_of_a_reused_pid_is_cleared_and_the_session_works(serving: RealRun) -> None:
    # The owner's PID now belongs to a live process started after the lock was made:
    # kill(pid, 0) succeeds, so the gateway itself would wait on it ("session file locked").
    session = "reused-pid"
    serving.turn(session, "before the reused lock")
    created = datetime.now(UTC) - timedelta(minutes=2)
    impostor = subprocess.Popen(["sleep", "300"])
    try:
        lock = serving.lock(session)
        lock.write_text(json.dumps({"pid": impostor.pid, "createdAt": _iso(created)}))
        wait_until(lambda: not lock.exists(), 30, what=f"clawsup removing {lock}")
        event = wait_until(lambda: [e for e in serving.events.of("orphan_lock")
                                    if e["data"]["path"] == str(lock)], 10)[0]
        assert event["data"]["reason"] == "reused"
        serving.turn(session, "after the reused lock")
    finally:
        impostor.kill()
        impostor.wait()


def test_oversized_transcript_is_archived_without_losing_data(serving: RealRun) -> None:
    session = "oversized"
    serving.turn(session, "start a transcript")
    transcript = serving.sessions / f"{session}.jsonl"
    # What a pasted image does: one message line with ~300 KB of inline base64.
    big = {"type": "message", "id": "big-image", "parentId": None,
           "timestamp": _iso(datetime.now(UTC)),
           "message": {"role": "user", "content": [
               {"type": "image", "data": "A" * (300 << 10), "mimeType": "image/png"}]}}
    with open(transcript, "a") as handle:
        handle.write(json.dumps(big) + "\n")
    content = transcript.read_bytes()
    event = wait_until(lambda: [e for e in serving.events.of("session_archived")
                                if e["data"]["path"] == str(transcript)], 30,
                       what="session_archived")[0]
    archive = serving.sessions / os.path.basename(event["data"]["archive"])
    assert archive.name.endswith(".old")
    assert archive.read_bytes() == content, "the archive is not the transcript as it was"
    serving.model.script(Text("fresh start"))
    reply = serving.turn(session, "after archiving")
    assert reply["result"]["payloads"][0]["text"] == "fresh start"
    assert archive.read_bytes() == content


def test_kill9_of_the_gateway_respawns_to_serving(serving: RealRun) -> None:
    before = serving.serving()
    os.kill(before["pid"], signal.SIGKILL)
    after = serving.serving(other_than=before["pid"], what="the gateway respawned")
    assert after["restarts"] == before["restarts"] + 1
    assert serving.health() == 0
    serving.turn("after-kill9", "still there?")


def test_restart_stop_and_start(serving: RealRun) -> None:
    first = serving.serving()
    serving.ctl_ok("restart")
    second = serving.serving(other_than=first["pid"], what="serving after restart")
    serving.ctl_ok("stop")
    stopped = serving.status()
    assert stopped is not None
    assert stopped["state"] == "STOPPED"
    assert not http_answers(), f"port {GATEWAY_PORT} still answers after stop"
    assert serving.health() == 1
    serving.ctl_ok("start")
    serving.serving(other_than=second["pid"], what="serving after start")
    assert serving.health() == 0
    serving.turn("after-restart", "back again?")


def test_exec_tool_children_end_with_the_gateway(serving: RealRun) -> None:
    # The exec tool starts commands detached (own session and process group): one plain
    # sleeper, one that ignores SIGTERM (SIGKILLed after stop_timeout with the rest).
    def sleepers() -> list[int]:
        return [p.pid for p in serving.leftovers()
                if p.cmdline()[:1] == ["sleep"] and p.cmdline()[1:] in (["1001"], ["1002"])]

    def spawn_children() -> None:
        serving.model.script(ExecCall(
            "setsid sleep 1001 >/dev/null 2>&1 & "
            "setsid sh -c 'trap \"\" TERM; sleep 1002' >/dev/null 2>&1 &"))
        serving.turn("exec-children", f"start the sleepers {time.monotonic_ns()}")
        wait_until(lambda: len(sleepers()) == 2, 20, what="both exec-tool children")

    try:
        spawn_children()
        first = serving.serving()
        serving.ctl_ok("restart")
        serving.serving(other_than=first["pid"])
        assert sleepers() == [], "exec-tool children survived a restart"

        spawn_children()
        serving.ctl_ok("stop")
        assert sleepers() == [], "exec-tool children survived a stop"
    finally:
        for pid in sleepers():
            os.kill(pid, signal.SIGKILL)
        program = serving.status()
        if program is not None and program["state"] == "STOPPED":
            serving.ctl_ok("start")


def test_status_shows_the_gateways_rss_and_cpu(serving: RealRun) -> None:
    program = wait_until(lambda: (p := serving.status()) and p["cpu_percent"] is not None
                         and p, 60, what="an RSS and CPU reading of the gateway")
    host_pid = serving.host_pid(program["pid"])
    assert host_pid is not None
    gateway = psutil.Process(host_pid)
    tree = [gateway, *gateway.children(recursive=True)]
    # A warm gateway holds some hundreds of MiB (270-340 measured); its tree's sum as
    # psutil reads it, a moment apart.
    assert 100 << 20 < program["rss"] < 2 << 30
    assert program["rss"] == pytest.approx(sum(p.memory_info().rss for p in tree), rel=0.2)
    assert 0.0 <= program["cpu_percent"] < 200.0
    header, row = serving.ctl_ok("status").splitlines()[:2]
    assert row[header.index("RSS"):].split()[0] != "-"
