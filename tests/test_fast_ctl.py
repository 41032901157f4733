"""`clawsupctl status` and `health` without click, pyzmq or msgspec, held to the click CLI.

The console script (clawsup.client.entrypoint) against ``python -m clawsup.client.ctl``
(the click CLI, always): the same command lines, the same servers, byte for byte.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import click
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup.client import ctl
from clawsup.client._client import Client
from clawsup.client.entrypoint import REQUESTS, parse
from clawsup.protocol import (
    BreakerStatus,
    Health,
    HealthReply,
    LastExit,
    Logs,
    ProgramStatus,
    Status,
    StatusReply,
    encode,
)
from tests.fake_control import FakeSupervisor, ServerThread
from tests.test_client import SilentPeer
from tests.test_container_files import HEALTH_COMMAND
from tests.util import Clawsup, python_program, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent
FAST = [str(Path(sys.executable).parent / "clawsupctl")]  # the console script users run
CLICK = [sys.executable, "-m", "clawsup.client.ctl"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CLAWSUP_", "_CLAWSUPCTL"))}


def run(argv: list[str], *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**CLEAN_ENV, **(env or {})}, check=False,
    )
    return done.returncode, done.stdout, done.stderr


def both(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the fast and the click path; assert they agree; return what they gave."""
    fast, slow = run(FAST, *args, env=env), run(CLICK, *args, env=env)
    assert fast == slow
    return fast


# -- the command line -------------------------------------------------------------------

WORDS = ["status", "health", "version", "restart", "logs", "-n", "--lines", "--lines=3", "-f",
         "-n5", "gw", "--json", "--socket", "--socket=ipc:///a.sock",
         "ipc:///r/c.sock", "tcp://127.0.0.1:5555", "rel.sock", "--timeout", "--timeout=2",
         "2", "0.5", ".5", "0", "-1", "1e3", "inf", "abc", "--help", "-h", "--version", "--",
         "", "-", "--curve-server-key", "--curve-client-key=k", "--bogus", "--json=1", "ipc://@abs"]
ENVS = [{}, {"CLAWSUP_SOCKET": "ipc:///e/c.sock"}, {"CLAWSUP_SOCKET": "/plain/c.sock"},
        {"CLAWSUP_SOCKET": "tcp://h:1"}, {"CLAWSUP_SOCKET": ""},
        {"CLAWSUP_CURVE_SERVER_KEY": "k"}, {"_CLAWSUPCTL_COMPLETE": "bash_source"}]


def click_reading(argv: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    """What the click CLI would do with ``clawsupctl ARGV``: the status or health call it
    makes, or None (another command, help, an error, completion)."""
    seen: list[dict[str, Any]] = []

    def record(command: str) -> Any:
        def callback(**params: Any) -> None:
            options = click.get_current_context().find_object(ctl._Options)
            assert options is not None
            seen.append({
                "command": command,
                "endpoint": Client(options.endpoint).endpoint,  # as the Client resolves it
                "timeout": options.timeout,
                "as_json": params.get("as_json", False),
                "program": params.get("name"),
                "lines": params.get("count"),
                "follow": params.get("follow", False),
                "curve": (options.curve_server_key, options.curve_client_key),
            })
        return callback

    with (
        mock.patch.dict(os.environ, {**CLEAN_ENV, **env}, clear=True),
        mock.patch.object(ctl.status, "callback", record("status")),
        mock.patch.object(ctl.health, "callback", record("health")),
        mock.patch.object(ctl.logs, "callback", record("logs")),
    ):
        try:
            ctl.cli.main(list(argv), prog_name="clawsupctl", standalone_mode=False)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            return None
    return seen[0] if seen else None


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=6), st.sampled_from(ENVS))
def test_the_fast_path_reads_command_lines_as_click_does(words: list[str], env: dict[str, str]):
    fast = parse(words, env)
    if fast is not None:
        reading = click_reading(words, env)
        assert reading is not None, words
        assert reading.pop("curve") == (None, None)
        assert reading.pop("follow") is False
        assert vars(fast) == reading, words


def test_the_probe_and_script_lines_take_the_fast_path():
    env = {"CLAWSUP_SOCKET": "ipc:///run/clawsup/ctl/control.sock"}  # deploy/kubernetes
    assert vars(parse(HEALTH_COMMAND[1:], env) or {}) == {
        "command": "health", "endpoint": env["CLAWSUP_SOCKET"], "timeout": None, "as_json": False,
        "program": None, "lines": None}
    for argv in (["status"], ["status", "--json"], ["--timeout", "2", "health"],
                 ["--socket", "/tmp/c.sock", "--timeout=0.5", "status"], ["--socket=ipc:///x", "health"],
                 ["logs"], ["logs", "-n", "1000"], ["logs", "gw", "--lines=5"]):
        assert parse(argv, {}) is not None, argv
    line = parse(["logs", "-n", "1000", "gateway"], {})
    assert line is not None
    assert (line.program, line.lines) == ("gateway", 1000)


def test_everything_else_is_left_to_click():
    for argv, env in (
        (["--help"], {}), (["status", "--help"], {}), (["version"], {}), ([], {}),
        (["--socket", "tcp://h:1", "status"], {}), (["status"], {"CLAWSUP_SOCKET": "tcp://h:1"}),
        (["--curve-server-key", "k", "status"], {}), (["status"], {"CLAWSUP_CURVE_SERVER_KEY": "k"}),
        (["health", "--timeout", "2"], {}), (["--timeout", "1e3", "health"], {}),
        (["status"], {"_CLAWSUPCTL_COMPLETE": "bash_source"}),
        (["logs", "-f"], {}), (["logs", "--json"], {}), (["logs", "-n", "1", "-n", "2"], {}),
        (["logs", "a", "b"], {}), (["logs", "-n", "-1"], {}), (["logs", "-n", "\uff11"], {}),
    ):
        assert parse(argv, env) is None, (argv, env)


def test_the_fast_requests_are_the_protocols():
    assert {"status": encode(Status()), "health": encode(Health())} == REQUESTS
    for name in (None, "gateway", "wörker \" \n \x00"):
        line = parse(["logs", "-n", "7", *([name] if name else [])], {})
        assert line is not None
        assert line.request() == encode(Logs(program=name, lines=7))


# -- output parity against a real ControlServer -----------------------------------------


class ManyPrograms(FakeSupervisor):
    """A status with every column and flag the table knows, long enough for 8-byte
    ZMTP frame lengths (over 255 bytes), and fixed, so two calls print the same."""

    def status(self) -> StatusReply:
        programs = [
            ProgramStatus(name="gateway", state="RUNNING", pid=4242, restarts=3, uptime=5123.4,
                          last_exit=LastExit(signal="SIGKILL", reason="hung: D state for 10s"),
                          main=True, liveness="passing"),
            ProgramStatus(name="worker-ümlaut", state="BACKOFF", pid=None, restarts=7, uptime=None,
                          last_exit=LastExit(code=1), next_start_in=2.5, liveness="failing"),
            ProgramStatus(name="stuck", state="STOPPING", pid=99, restarts=0, uptime=0.4,
                          last_exit=None, hung=True, unkillable=True,
                          stuck_thread="thread 101 (libuv-worker) in D state for 14s"),
            *(ProgramStatus(name=f"helper-{i}", state="STOPPED", pid=None, restarts=i,
                            uptime=None, last_exit=LastExit(code=0, reason="stopped by request"))
              for i in range(20)),
        ]
        breaker = BreakerStatus(state="open", model="anthropic/claude-opus-4-5",
                                active_model="openai/gpt-5.2", failures=5, open_until=1e9)
        return StatusReply(programs=programs, supervisor_pid=1, supervisor_uptime=86400.0,
                           version="0.1.0", model="openai/gpt-5.2", timezone="Europe/Berlin",
                           breaker=breaker)


@pytest.fixture
def server_handler() -> FakeSupervisor:
    return ManyPrograms()


def test_status_table_and_json_match_the_click_path(server: ServerThread):
    code, out, err = both("--socket", server.endpoint, "status")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1 + 23 + 2
    assert "worker-ümlaut" in out
    assert "breaker: open (using openai/gpt-5.2)" in out
    assert "thread 101 (libuv-worker) in D state for 14s" in out
    code, out, _ = both("--socket", server.endpoint, "status", "--json")
    assert code == 0
    assert len(out) > 2000
    assert msgspec.json.decode(out, type=StatusReply) == server.handler.status()


def test_status_through_the_environment_and_a_plain_path(server: ServerThread):
    path = server.endpoint.removeprefix("ipc://")
    assert both("status", env={"CLAWSUP_SOCKET": path})[0] == 0
    assert both("--timeout", "3", "status", env={"CLAWSUP_SOCKET": server.endpoint})[0] == 0


def test_health_matches_the_click_path_healthy_or_not(server: ServerThread):
    assert both("--socket", server.endpoint, "health") == (0, "healthy\n", "")
    server.handler.healthy = False
    assert both("--socket", server.endpoint, "health") == (
        1, "unhealthy: gateway liveness probe failing\n", "")


def test_unreachable_is_one_line_naming_the_endpoint(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/control.sock"
    for command in ("status", "health"):
        assert both("--socket", endpoint, command) == (
            1, "", f"clawsupctl: cannot reach clawsup at {endpoint} (is it running?)\n")


def test_a_dead_supervisors_socket_file_is_named_as_such(tmp_path: Path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: connect is refused
    try:
        fast = run(FAST, "--socket", str(path), "--timeout", "0.3", "health")
        assert fast == run(CLICK, "--socket", str(path), "--timeout", "0.3", "health")
    finally:
        stale.close()
    assert fast[0] == 1
    assert fast[2].endswith("(is it running? the socket file is left from a dead supervisor)\n")


@pytest.mark.parametrize(("command", "requests"), [("health", 1), ("status", 2)])
def test_a_server_that_never_answers_times_out_as_the_click_path(
    tmp_path: Path, command: str, requests: int
):
    peer = SilentPeer(tmp_path / "control.sock")
    try:
        began = time.monotonic()
        fast = run(FAST, "--socket", peer.endpoint, "--timeout", "0.5", command)
        took = time.monotonic() - began
        wait_until(lambda: len(peer.received) == requests, what="the fast path's requests")
        assert fast == run(CLICK, "--socket", peer.endpoint, "--timeout", "0.5", command)
    finally:
        peer.close()
    assert fast == (1, "", f"clawsupctl: cannot reach clawsup at {peer.endpoint} (no answer within 0.5s)\n")
    assert took < 0.5 * requests + 2, took
    assert len(peer.received) == 2 * requests  # as many as the click path sent


@pytest.mark.parametrize("reply", [
    b'{"ok": false, "error": {"code": "failed", "message": "clawsup is shutting down"}}',
    b'{"ok": true, "healthy": "yes"}',
    b'{"healthy": true}',
    b'{"ok": true, "healthy": true, "error": 5}',
    b'{"ok": true, "healthy": true, "reasons": [1]}',
    b'{"ok": true, "healthy": NaN}',
    b"\xff not json",
    b'{"ok": true, "healthy": true, "reasons": ["\\ud800"]}',
    b"[]",
])
def test_odd_replies_get_the_click_paths_words(tmp_path: Path, reply: bytes):
    peer = SilentPeer(tmp_path / "control.sock", reply=reply)
    try:
        for command in ("health", "status", "status --json"):
            code, out, err = both("--socket", peer.endpoint, *command.split())
            assert (code, out, err[:12]) == (1, "", "clawsupctl: "), (command, err)
    finally:
        peer.close()


def test_a_reply_msgspec_takes_but_the_plain_reader_doubts_still_prints(tmp_path: Path):
    # A float where the plain reader wants no surprises: it hands over to msgspec.
    peer = SilentPeer(tmp_path / "control.sock",
                      reply=b'{"ok": true, "healthy": false, "reasons": ["a", "b"], "error": null}')
    try:
        assert both("--socket", peer.endpoint, "health") == (1, "unhealthy: a; b\n", "")
    finally:
        peer.close()


def test_ansi_escapes_are_stripped_off_a_terminal_as_click_echo_does(tmp_path: Path):
    class Colourful(FakeSupervisor):
        def __init__(self) -> None:
            super().__init__()
            self.healthy = False

        async def __call__(self, request: Any) -> Any:
            return HealthReply(healthy=False, reasons=["\x1b[31mred\x1b[0m"])

    with ServerThread(tmp_path / "run", Colourful()) as colourful:
        assert both("--socket", colourful.endpoint, "health") == (1, "unhealthy: red\n", "")


# -- a real supervisor ------------------------------------------------------------------


def test_status_and_health_of_a_real_supervisor_match_the_click_path(tmp_path: Path):
    config = write_config(tmp_path, f"""
[programs.gateway]
command = {python_program("import time; time.sleep(600)")}
main = true

[programs.sidecar]
command = {python_program("import time; time.sleep(600)")}

[programs.oneshot]
command = {python_program("pass")}
autorestart = "never"
""")
    env = {"CLAWSUP_SOCKET": f"ipc://{tmp_path}/run/control.sock"}
    supervisor = Clawsup(config, tmp_path / "clawsup.log")
    try:
        wait_until(lambda: run(FAST, "health", env=env)[0] == 0, timeout=30, what="healthy")
        assert both("health", env=env) == (0, "healthy\n", "")

        def same_table() -> bool:
            # Uptimes tick between the two calls now and then: ask again.
            fast, slow = run(FAST, "status", env=env), run(CLICK, "status", env=env)
            return fast == slow and fast[0] == 0 and "oneshot" in fast[1]

        wait_until(same_table, timeout=30, what="the same status table twice")
    finally:
        supervisor.stop()
    assert both("health", env=env)[0] == 1


# -- what it loads ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "status --json", "health"])
def test_the_console_script_loads_neither_click_pyzmq_nor_msgspec(
    server: ServerThread, command: str
):
    probe = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('loaded:', *[m for m in ('click', 'zmq', 'msgspec',"
        " 'clawsup.supervisor', 'clawsup.protocol') if m in sys.modules],"
        " file=sys.stderr))\n"
        f"sys.argv = [{FAST[0]!r}, '--socket', {server.endpoint!r}, *{command.split()!r}]\n"
        f"runpy.run_path({FAST[0]!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "loaded:"


# -- logs -------------------------------------------------------------------------------

PRINTER = r"""
import sys, time
for i in range(30):
    print(f"line {i} \u00fcml\u00e4ut \x1b[31mred\x1b[0m", flush=True)
    print(f"error {i}", file=sys.stderr, flush=True)
    time.sleep(0.002)
while True: time.sleep(1)
"""


def test_logs_of_a_real_supervisor_match_the_click_path(tmp_path: Path):
    config = write_config(tmp_path, f"""
[programs.gateway]
command = {python_program(PRINTER)}
main = true
""")
    env = {"CLAWSUP_SOCKET": f"ipc://{tmp_path}/run/control.sock"}
    supervisor = Clawsup(config, tmp_path / "clawsup.log")
    try:
        wait_until(lambda: "error 29" in run(FAST, "logs", "-n", "1", env=env)[1], timeout=30,
                   what="the last line")
        code, out, err = both("logs", "-n", "5", "gateway", env=env)
        assert (code, err) == (0, "")
        assert out.splitlines() == ["error 27", "line 28 ümläut \x1b[31mred\x1b[0m", "error 28",
                                    "line 29 ümläut \x1b[31mred\x1b[0m", "error 29"]
        assert len(both("logs", env=env)[1].splitlines()) == 20
        assert both("logs", "--lines=0", env=env) == (0, "", "")
        assert both("logs", "nosuch", env=env) == (
            1, "", "clawsupctl: no program named 'nosuch' (known: gateway) (unknown_program)\n")
        probe = (
            "import atexit, runpy, sys\n"
            "atexit.register(lambda: print('loaded:', *[m for m in ('click', 'zmq', 'msgspec',"
            " 'clawsup.supervisor', 'clawsup.protocol') if m in sys.modules],"
            " file=sys.stderr))\n"
            f"sys.argv = [{FAST[0]!r}, 'logs', '-n', '3']\n"
            f"runpy.run_path({FAST[0]!r}, run_name='__main__')\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env={**CLEAN_ENV, **env}, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1] == "loaded:"
    finally:
        supervisor.stop()
