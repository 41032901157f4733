"""A turn that never finishes on the real gateway: clawsup ends it, clears its lock.

The fake model never answers, so the gateway holds the session's transcript lock for the
whole turn (its own turn timeout is ``agents.defaults.timeoutSeconds``, 600 s). The
override sets an explicit, short ``janitor.message_timeout`` so the stuck message is seen
in seconds (explicit, so it holds however the default is derived), and a 1 s janitor
interval.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.realgw.conftest import RunFactory, serving_module_run
from tests.realgw.fake_model import Hold, Text
from tests.realgw.harness import RealRun
from tests.util import wait_until

pytestmark = [pytest.mark.realgw, pytest.mark.timeout(600)]

MESSAGE_TIMEOUT = 15.0
OVERRIDE = f"""
[janitor]
interval = "1s"
message_timeout = "{MESSAGE_TIMEOUT:g}s"
"""


@pytest.fixture(scope="module")
def gw(module_runs: RunFactory) -> RealRun:
    return serving_module_run(module_runs, "stuck", OVERRIDE)


def _hang_a_turn(gw: RealRun, session: str) -> int:
    """Start a turn the model never answers; return the lock owner's pid.

    The agent CLI is ended once the gateway holds the lock: it would otherwise fall back
    to running the turn itself when the gateway goes away. The gateway's run goes on.
    """
    gw.model.script(Hold())
    message = f"never answered in {session}"
    agent = gw.turn_in_background(session, message)
    lock = gw.lock(session)
    wait_until(lambda: lock.exists() and gw.model.matching(lambda r: r.user == message), 60,
               interval=0.1, what=f"the gateway holding {lock} and asking the model")
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait(10)
    return int(json.loads(lock.read_text())["pid"])


def test_stuck_message_restarts_the_gateway_and_clears_its_lock(gw: RealRun) -> None:
    session = "stuck"
    before = gw.serving()
    owner = _hang_a_turn(gw, session)
    assert owner == before["pid"], "the lock is not the gateway's"
    event = wait_until(lambda: gw.events.of("message_timeout"), MESSAGE_TIMEOUT + 30,
                       interval=0.2, what="a message_timeout event")[0]
    assert event["data"]["session_id"] == session
    assert event["data"]["held_for"] >= MESSAGE_TIMEOUT
    after = gw.serving(other_than=before["pid"], what="the gateway restarted")
    assert not gw.lock(session).exists()
    gw.model.script(Text("unstuck"))
    reply = gw.turn(session, "after the stuck message")
    assert reply["result"]["payloads"][0]["text"] == "unstuck"
    assert gw.serving()["pid"] == after["pid"]


def test_kill9_mid_turn_lock_is_cleared_before_the_respawn_serves(gw: RealRun) -> None:
    # SIGKILL leaves the transcript lock behind; it is our own exited gateway's, so
    # clawsup clears it before the new gateway starts.
    session = "killed-mid-turn"
    before = gw.serving()
    _hang_a_turn(gw, session)
    lock = gw.lock(session)
    os.kill(before["pid"], signal.SIGKILL)
    event = wait_until(lambda: [e for e in gw.events.of("orphan_lock")
                                if e["data"]["path"] == str(lock)], 30,
                       interval=0.1, what="the dead gateway's lock removed")[0]
    assert event["data"]["reason"] == "exited"
    assert event["data"]["pid"] == before["pid"]
    gw.serving(other_than=before["pid"], what="the gateway respawned")
    assert not lock.exists()
    gw.model.script(Text("after the kill"))
    reply = gw.turn(session, "after kill -9 mid-turn")
    assert reply["result"]["payloads"][0]["text"] == "after the kill"
