"""The clawsup skill on the real gateway: loaded and judged eligible by the gateway's own
loader, offered to the model in its prompt, and run by the agent through its exec tool.

One clawsup and one gateway serve the module (harness.py); the skill is installed with
``clawsup install-skill`` into the run's ``~/.clawdbot/skills`` before the gateway starts,
and ``clawsupctl`` is on the gateway's PATH (harness.py), as the image has them. The agent
reaches clawsup through ``CLAWSUP_SOCKET``, which clawsup sets for its programs (the
harness removes it from the environment clawsup itself is started with). The fake model
decides each turn: an exec call of one of the skill's commands, then "done" once it has
the tool result. The restart test comes last: it restarts the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from clawsup.skill import source
from tests.realgw.conftest import RunFactory, serving_module_run
from tests.realgw.fake_model import ExecCall, Request, Text
from tests.realgw.harness import RealRun
from tests.test_skill import front_matter
from tests.util import wait_until

pytestmark = [pytest.mark.realgw, pytest.mark.timeout(600)]

# A sweep each second: the janitor sees the turn's lock come and go.
OVERRIDE = """
[janitor]
interval = "1s"
"""


def _install_skill(directory: str) -> None:
    subprocess.run([sys.executable, "-m", "clawsup", "install-skill", directory],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def gw(module_runs: RunFactory) -> RealRun:
    return serving_module_run(module_runs, "skill", OVERRIDE,
                              prepare=lambda run: _install_skill(str(run.clawdbot / "skills")))


@pytest.fixture
def serving(gw: RealRun) -> RealRun:
    gw.serving()
    return gw


def _skill_info(run: RealRun, **env: str) -> dict[str, Any]:
    """``clawdbot skills info clawsup --json``: the release's own loader and judgement."""
    done = subprocess.run(
        [str(run.install.node), "dist/index.js", "skills", "info", "clawsup", "--json"],
        cwd=run.install.app, env={**run.env, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{"):])
    return info


def _tool_result(request: Request) -> str:
    """The text of the tool result the gateway sent the model (the exec's output)."""
    content = request.body["messages"][-1].get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _exec_turn(run: RealRun, session: str, command: str) -> tuple[dict[str, Any], str]:
    """A turn in which the model runs ``command`` with the exec tool, then says "done":
    the reply, and the tool result the model saw."""
    message = f"please run {command} {time.monotonic_ns()}"
    run.model.script(ExecCall(command))
    reply = run.turn(session, message)
    (result,) = run.model.matching(lambda r: r.user == message and r.tool_result)
    return reply, _tool_result(result)


# -- the gateway's loader ------------------------------------------------------------------


def test_the_gateway_loads_the_skill_as_eligible_when_clawsupctl_is_on_path(gw: RealRun) -> None:
    info = _skill_info(gw)
    assert info["name"] == "clawsup"
    assert info["source"] == "clawdbot-managed"
    assert info["eligible"] is True
    assert info["requirements"]["bins"] == ["clawsupctl"]
    assert info["description"] == front_matter((source() / "SKILL.md").read_text())["description"]


def test_without_clawsupctl_on_path_the_skill_is_not_eligible(gw: RealRun) -> None:
    path = os.pathsep.join(
        [str(gw.install.node.parent), *(d for d in ("/usr/local/bin", "/usr/bin", "/bin")
                                        if not os.path.exists(f"{d}/clawsupctl"))])
    info = _skill_info(gw, PATH=path)
    assert info["eligible"] is False
    assert info["missing"]["bins"] == ["clawsupctl"]


def test_the_images_place_is_loaded_as_a_bundled_skill(gw: RealRun) -> None:
    # The image runs `clawsup install-skill /app/skills`: the release's own skills folder.
    bundled = gw.tmp / "bundled-skills"
    _install_skill(str(bundled))
    managed = gw.clawdbot / "skills" / "clawsup"
    hidden = gw.clawdbot / "skills" / ".clawsup-away"
    managed.rename(hidden)  # a managed copy would win over the bundled one
    try:
        info = _skill_info(gw, CLAWDBOT_BUNDLED_SKILLS_DIR=str(bundled))
    finally:
        hidden.rename(managed)
    assert (info["source"], info["eligible"]) == ("clawdbot-bundled", True)
    assert info["filePath"] == str(bundled / "clawsup" / "SKILL.md")


# -- the agent -------------------------------------------------------------------------------


def test_the_model_sees_the_skill_in_its_prompt(serving: RealRun) -> None:
    message = f"hello {time.monotonic_ns()}"
    serving.model.script(Text("hi"))
    serving.turn("skill-prompt", message)
    (request,) = serving.model.matching(lambda r: r.user == message)
    assert "<name>clawsup</name>" in request.system
    description = front_matter((source() / "SKILL.md").read_text())["description"]
    escaped = description.replace("'", "&apos;")  # the prompt's XML escaping
    assert f"<description>{escaped}</description>" in request.system
    assert f"<location>{serving.clawdbot / 'skills' / 'clawsup' / 'SKILL.md'}</location>" in \
        request.system


def test_a_turn_sets_the_model_with_the_skill_and_the_next_turn_uses_it(serving: RealRun) -> None:
    try:
        reply, result = _exec_turn(serving, "skill-model", "clawsupctl set-model fake/model-b")
        assert reply["result"]["payloads"][0]["text"] == "done"
        assert "fake/model-a -> fake/model-b" in result
        changed = wait_until(lambda: serving.events.of("model_changed"), 10)
        assert changed[-1]["data"]["new"] == "fake/model-b"

        def next_turn_uses_model_b() -> bool:
            message = f"which model {time.monotonic_ns()}"
            serving.turn("skill-model-next", message)
            (request,) = serving.model.matching(lambda r: r.user == message)
            return request.model == "model-b"

        # The gateway applies the edit itself, a moment after the file changed.
        wait_until(next_turn_uses_model_b, 60, interval=0.5, what="a turn on model-b")
    finally:
        serving.ctl_ok("set-model", "fake/model-a")


@pytest.mark.parametrize(("command", "error", "field", "kind"), [
    ("set-model no-such-model", "bad model name 'no-such-model'", "model", "model_changed"),
    ("set-timezone Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'", "timezone",
     "timezone_changed"),
])
def test_a_bad_value_gets_clawsupctls_error_back_into_the_turn_and_changes_nothing(
    serving: RealRun, command: str, error: str, field: str, kind: str,
) -> None:
    before = json.loads(serving.ctl_ok("status", "--json"))[field]
    changes = len(serving.events.of(kind))
    reply, result = _exec_turn(serving, f"skill-bad-{field}", f"clawsupctl {command}")
    assert reply["result"]["payloads"][0]["text"] == "done"
    # clawsupctl's one line, as the exec tool hands the command's output to the model.
    assert f"clawsupctl: {error}" in result, result
    assert "code 1" in result, result  # the exec tool reports the exit status
    assert json.loads(serving.ctl_ok("status", "--json"))[field] == before
    assert len(serving.events.of(kind)) == changes


def test_a_turn_asks_for_a_restart_when_idle_and_its_reply_comes_first(serving: RealRun) -> None:
    before = serving.serving()
    session = "skill-restart"
    reply, result = _exec_turn(
        serving, session, "clawsupctl restart --when-idle --reason 'asked by the agent'")
    # The turn that asked completed with its reply: the restart waited for it.
    assert reply["status"] == "ok"
    assert reply["result"]["payloads"][0]["text"] == "done"
    assert "restart of gateway scheduled" in result
    after = serving.serving(other_than=before["pid"], what="the gateway restarted")
    assert after["pid"] != before["pid"]
    scheduled = serving.events.of("restart_scheduled")[-1]
    assert scheduled["data"]["locks"] == [str(serving.lock(session))]
    restart = wait_until(lambda: serving.events.of("idle_restart"), 10)[-1]
    assert restart["data"]["detail"] == "asked by the agent"
    assert restart["data"]["at_max_wait"] is False
    assert restart["data"]["pid"] == before["pid"]
    assert not serving.lock(session).exists()
    incidents = json.loads(serving.ctl_ok("incidents", "--since", "1h", "--json"))
    logged = [i for i in incidents["latest"] if i["kind"] == "idle_restart"]
    assert [i["data"]["detail"] for i in logged] == ["asked by the agent"]
