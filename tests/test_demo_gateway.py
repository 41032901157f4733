"""The demo gateway, run as a real process in a temp gateway home, driven as clawsup drives it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.util import WaitTimeout, wait_until, zombies_under

GATEWAY = [sys.executable, "-m", "clawsup.demo.gateway"]
FIXTURE_SESSION = "708fd147-3c2e-4b8a-9d51-2f4e6a1b0c93"
FIXTURE_LOCKED_SESSION = "c0ffee00-1111-4222-8333-444455556666"
LOCK_CONTENT = re.compile(
    r'\{\n  "pid": (\d+),\n  "createdAt": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\n\}\n'
)


class DemoGateway:
    """One running ``python -m clawsup.demo.gateway`` and the ways to look at it."""

    def __init__(self, home: Path, extra_args: list[str]) -> None:
        self.home = home
        self.control = home / ".demo-control"
        self.sessions = home / "agents" / "main" / "sessions"
        self.log_path = home.parent / "gateway.log"
        env = {k: v for k, v in os.environ.items() if k != "CLAWDBOT_CONFIG_PATH"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*GATEWAY, "--home", str(home), "--port", "0", *extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        ready = self.control / "ready"
        wait_until(lambda: ready.exists() and ready.read_text().strip(), what="ready file")
        self.port = int((self.control / "port").read_text())

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group already exited
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def send(self, command: str, name: str = "test") -> Path:
        """Drop a control file the way the docstring says: write aside, rename into place."""
        aside = self.control / f"{name}.tmp"
        aside.write_text(command + "\n")
        target = self.control / f"{name}.cmd"
        aside.rename(target)
        return target

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        return wait_until(lambda: self.log() if text in self.log() else "", timeout, what=text)

    def request(
        self, method: str = "GET", path: str = "/", body: str = "", timeout: float = 2.0
    ) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body.encode())
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def state(self) -> str:
        with open(f"/proc/{self.pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]

    def exited(self) -> bool:
        return self.process.poll() is not None


@pytest.fixture
def start_gateway(clawdbot_home: Path) -> Iterator[Callable[..., DemoGateway]]:
    started: list[DemoGateway] = []

    def start(*extra_args: str) -> DemoGateway:
        gateway = DemoGateway(clawdbot_home, list(extra_args))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.kill_group()


@pytest.fixture
def gateway(start_gateway: Callable[..., DemoGateway]) -> DemoGateway:
    return start_gateway()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def vfork_child(log: str) -> int:
    """The pid the D-state child logs for itself."""
    found = re.search(r"vfork child pid=(\d+)", log)
    assert found, log
    return int(found.group(1))


def test_http_get_answers_with_pid_and_uptime(gateway: DemoGateway) -> None:
    status, body = gateway.request("GET", "/anything")
    assert status == 200
    assert body["pid"] == gateway.pid
    assert body["uptime"] >= 0
    assert body["model"] == "anthropic/claude-opus-4-5"
    assert (gateway.control / "ready").read_text().strip() == str(gateway.pid)


def test_process_title_is_clawdbot_gateway(gateway: DemoGateway) -> None:
    process = psutil.Process(gateway.pid)
    assert Path(f"/proc/{gateway.pid}/comm").read_text().strip() == "clawdbot-gatewa"
    assert process.name() == "clawdbot-gateway"
    assert process.cmdline() == ["clawdbot-gateway"]


def test_message_writes_lock_in_gateway_format_then_removes_it(gateway: DemoGateway) -> None:
    lock = gateway.sessions / "new-session.jsonl.lock"
    gateway.send("message-slow 1 new-session")

    content = wait_until(lambda: lock.exists() and lock.read_text(), what="lock content")
    assert isinstance(content, str)
    match = LOCK_CONTENT.fullmatch(content)
    assert match, content
    assert int(match.group(1)) == gateway.pid
    wait_until(lambda: not lock.exists(), what="lock removed")

    header, user, assistant = read_lines(gateway.sessions / "new-session.jsonl")
    assert (header["type"], header["version"]) == ("session", 3)
    assert header["id"] == "new-session"
    assert (user["type"], user["message"]["role"]) == ("message", "user")
    assert assistant["parentId"] == user["id"]
    assert assistant["message"]["model"] == "claude-opus-4-5"
    index = json.loads((gateway.sessions / "sessions.json").read_text())
    assert index["agent:main:demo:new-session"]["sessionFile"] == "new-session.jsonl"


def test_message_without_session_id_appends_to_the_main_session(gateway: DemoGateway) -> None:
    transcript = gateway.sessions / f"{FIXTURE_SESSION}.jsonl"
    before = read_lines(transcript)
    status, body = gateway.request("POST", "/demo/message")
    assert (status, body["ok"]) == (200, True)

    wait_until(lambda: len(read_lines(transcript)) == len(before) + 2, what="two new lines")
    user = read_lines(transcript)[len(before)]
    assert user["parentId"] == before[-1]["id"]


def test_sigterm_removes_held_locks_and_exits_zero(
    start_gateway: Callable[..., DemoGateway],
) -> None:
    gateway = start_gateway("--shutdown-grace", "0.5")
    lock = gateway.sessions / "stuck.jsonl.lock"
    gateway.send("hold-lock stuck")
    wait_until(lock.exists, what="lock taken")

    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=5) == 0
    assert not lock.exists()
    assert not (gateway.control / "ready").exists()
    assert "graceful close took longer than 0.5s; forcing exit" in gateway.log()


def test_sigterm_lets_a_running_message_finish(gateway: DemoGateway) -> None:
    lock = gateway.sessions / "slow.jsonl.lock"
    gateway.send("message-slow 1 slow")
    wait_until(lock.exists, what="lock taken")

    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=5) == 0
    assert not lock.exists()
    roles = [e["message"]["role"] for e in read_lines(gateway.sessions / "slow.jsonl")[1:]]
    assert roles == ["user", "assistant"]


def test_sigkill_leaves_the_lock_behind(gateway: DemoGateway) -> None:
    lock = gateway.sessions / "stuck.jsonl.lock"
    gateway.send("hold-lock stuck")
    wait_until(lambda: lock.exists() and lock.read_text(), what="lock content")

    gateway.process.kill()
    gateway.process.wait(timeout=5)
    assert lock.exists()
    assert json.loads(lock.read_text())["pid"] == gateway.pid


def test_a_lock_held_by_another_pid_times_out_after_10s(gateway: DemoGateway) -> None:
    gateway.send(f"message {FIXTURE_LOCKED_SESSION}")
    gateway.send("message other-session", "second")
    gateway.wait_for_log("message #1 in other-session: answered")  # the wait blocks no one
    lock = gateway.sessions / f"{FIXTURE_LOCKED_SESSION}.jsonl.lock"
    expected = f"session file locked (timeout 10000ms): pid=37 {lock}"

    gateway.wait_for_log(expected, timeout=13)
    assert gateway.request()[1]["lockFailures"] == 1
    assert json.loads(lock.read_text())["pid"] == 37


def test_dstate_shows_d_for_its_duration_then_sleeps_again(gateway: DemoGateway) -> None:
    gateway.send("dstate 2")
    wait_until(lambda: gateway.state() == "D", what="state D")
    entered = time.monotonic()
    wait_until(lambda: gateway.state() == "S", timeout=5, what="state S")
    assert time.monotonic() - entered > 1.0
    assert psutil.Process(gateway.pid).status() == psutil.STATUS_SLEEPING
    assert gateway.request()[0] == 200
    child = vfork_child(gateway.log())
    assert re.search(rf"left D state after 2\.\ds \(vfork child pid={child} exited\)", gateway.log())


def test_sigterm_waits_until_dstate_ends(gateway: DemoGateway) -> None:
    gateway.send("dstate 2")
    wait_until(lambda: gateway.state() == "D", what="state D")
    gateway.process.send_signal(signal.SIGTERM)

    with pytest.raises(WaitTimeout):
        wait_until(lambda: gateway.exited() or gateway.state() != "D", timeout=1.0)
    assert gateway.process.wait(timeout=5) == 0
    assert "SIGTERM received; shutting down" in gateway.log()


def test_sigkill_ends_dstate_and_its_vfork_child(gateway: DemoGateway) -> None:
    gateway.send("dstate")
    log = gateway.wait_for_log("vfork child pid=")
    child = vfork_child(log)
    wait_until(lambda: gateway.state() == "D", what="state D")

    gateway.process.kill()
    assert gateway.process.wait(timeout=5) == -signal.SIGKILL
    wait_until(
        lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie",
        what="vfork child gone",
    )


def test_wedge_accepts_tcp_but_http_gets_no_answer(gateway: DemoGateway) -> None:
    gateway.send("wedge 1.5")
    gateway.wait_for_log("wedging the event loop for 1.5s")

    with socket.create_connection(("127.0.0.1", gateway.port), timeout=1):
        pass
    with pytest.raises(TimeoutError):
        gateway.request(timeout=0.5)
    wait_until(lambda: "event loop running again" in gateway.log(), what="unwedged")
    assert gateway.request()[0] == 200


def test_zombies_pile_up_under_the_gateway(gateway: DemoGateway) -> None:
    gateway.send("zombies 5")
    wait_until(lambda: len(zombies_under(gateway.pid)) == 5, what="5 zombies")
    assert gateway.request()[0] == 200


def test_grow_session_exceeds_the_size(gateway: DemoGateway) -> None:
    transcript = gateway.sessions / "big.jsonl"
    gateway.send("grow-session big 1.5")
    gateway.wait_for_log("big grown to")

    assert transcript.stat().st_size > 1.5 * 2**20
    assert not (gateway.sessions / "big.jsonl.lock").exists()
    images = [
        part
        for entry in read_lines(transcript)[1:]
        for part in entry["message"]["content"]
        if part["type"] == "image"
    ]
    assert images
    assert {image["mimeType"] for image in images} == {"image/png"}


def test_config_change_is_noticed_and_a_broken_one_ignored(gateway: DemoGateway) -> None:
    config = gateway.home / "clawdbot.json"
    edited = config.read_text().replace("anthropic/claude-opus-4-5", "openai/gpt-5.2")
    aside = config.with_name("clawdbot.json.tmp")
    aside.write_text(edited)
    aside.rename(config)
    gateway.wait_for_log("config reloaded: model=openai/gpt-5.2 timezone=America/Sao_Paulo")
    assert gateway.request()[1]["model"] == "openai/gpt-5.2"

    config.write_text("{ agents: { defaults: { model: ")
    gateway.wait_for_log("config reload skipped (invalid config)")
    assert gateway.request()[1]["model"] == "openai/gpt-5.2"


def test_environment_sets_config_path_and_log_time_zone(clawdbot_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json5"
    elsewhere.write_text('{agents: {defaults: {model: {primary: "x/y"}}}}')
    env = {**os.environ, "CLAWDBOT_CONFIG_PATH": str(elsewhere), "TZ": "America/Sao_Paulo"}
    process = subprocess.Popen(
        [*GATEWAY, "--home", str(clawdbot_home), "--port", "0"],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        wait_until((clawdbot_home / ".demo-control" / "ready").exists, what="ready")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=5)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "[reload] config loaded: model=x/y timezone=None" in output
    assert re.search(r"^\S+-03:00 \[gateway\] listening on ", output, re.MULTILINE)


def test_malformed_commands_are_logged_and_ignored(gateway: DemoGateway) -> None:
    files = [gateway.send("frobnicate now", "a"), gateway.send("zombies lots", "b")]
    gateway.wait_for_log("ignored b.cmd: N must be an integer, not 'lots'")

    assert "ignored a.cmd: unknown command 'frobnicate'" in gateway.log()
    assert not any(path.exists() for path in files)
    assert not gateway.exited()
    assert gateway.request()[0] == 200
    status, body = gateway.request("POST", "/demo/crash", body="300")
    assert (status, body["ok"]) == (400, False)
    assert gateway.request()[0] == 200


def test_crash_exits_with_the_code_and_leaves_the_ready_file(gateway: DemoGateway) -> None:
    gateway.send("crash 3")
    assert gateway.process.wait(timeout=5) == 3
    assert (gateway.control / "ready").exists()


def test_ignore_term_needs_sigkill(gateway: DemoGateway) -> None:
    gateway.send("ignore-term")
    gateway.wait_for_log("ignoring SIGTERM from now on")
    gateway.process.send_signal(signal.SIGTERM)

    with pytest.raises(WaitTimeout):
        wait_until(gateway.exited, timeout=0.5)
    assert gateway.request()[0] == 200
    gateway.process.kill()
    assert gateway.process.wait(timeout=5) == -signal.SIGKILL


def test_spawned_grandchild_is_a_child_of_the_gateway(gateway: DemoGateway) -> None:
    pid_file = gateway.control / "grandchild.pid"
    gateway.send("spawn-grandchild")
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="pid file"))

    grandchild = psutil.Process(pid)
    assert grandchild.ppid() == gateway.pid
    assert grandchild.cmdline() == ["sleep", "1000"]
    assert os.getpgid(pid) == gateway.pid
