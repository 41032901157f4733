"""clawsupctl as a whole process against a real ControlServer with a fake handler."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawsup.client import Client
from clawsup.protocol import Event, Status, StatusReply
from tests.fake_control import ServerThread
from tests.test_client import SilentPeer
from tests.util import Clawsup, python_program, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent
CTL = [sys.executable, "-m", "clawsup.client.ctl"]


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def ctl_at(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    return ctl("--socket", server.endpoint, *args)


# -- status -----------------------------------------------------------------------------


def test_status_prints_an_aligned_table(server: ServerThread) -> None:
    server.handler.restarts = 3
    result = ctl_at(server, "status")
    assert result.returncode == 0, result.stderr
    header, row, *rest = result.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "PROCS", "RSS", "CPU", "UPTIME",
                              "RESTARTS", "LAST", "EXIT"]
    assert row.split()[:6] == ["gateway", "*", "RUNNING", "4242", row.split()[4], row.split()[5]]
    # Columns line up: each value starts where its header does.
    for column in ("STATE", "PID", "PROCS", "RESTARTS"):
        assert row[header.index(column) - 1] == " "
    assert row[header.index("RESTARTS")] == "3"
    assert "model: anthropic/claude-opus-4-5" in rest[-1]


def test_status_shows_the_last_exit(server: ServerThread) -> None:
    assert ctl_at(server, "stop").returncode == 0
    row = ctl_at(server, "status").stdout.splitlines()[1]
    assert "STOPPED" in row
    assert row.endswith("signal SIGTERM (stopped by request)")


def test_status_json_is_the_wire_reply(server: ServerThread) -> None:
    result = ctl_at(server, "status", "--json")
    assert result.returncode == 0
    printed = result.stdout
    assert printed.count("\n") == 1  # one compact JSON object, as the wire has it
    with Client(server.endpoint) as client:
        wire = client.request_raw(Status())
    printed_obj, wire_obj = json.loads(printed), json.loads(wire)
    for program in (*printed_obj["programs"], *wire_obj["programs"]):
        program.pop("uptime")
    assert printed_obj == wire_obj
    assert list(json.loads(printed)) == list(json.loads(wire))  # same key order
    msgspec.json.decode(printed, type=StatusReply)


def test_socket_from_environment(server: ServerThread) -> None:
    result = ctl("status", env={"CLAWSUP_SOCKET": server.endpoint})
    assert result.returncode == 0
    assert "gateway" in result.stdout


# -- unreachable ------------------------------------------------------------------------


def test_unreachable_supervisor_is_one_line_and_exit_1(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/control.sock"
    for command in ("status", "restart", "health", "version"):
        result = ctl("--socket", endpoint, command)
        assert result.returncode == 1, command
        assert result.stderr == (f"clawsupctl: cannot reach clawsup at {endpoint} (is it running?)\n"), (
            command
        )
    result = ctl("--socket", endpoint, "version")
    assert result.stdout.startswith("clawsupctl 0.1.0")


def test_default_socket_in_the_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLAWSUP_SOCKET"}
    result = subprocess.run([*CTL, "status"], capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if Path("/run/clawsup/control.sock").exists():
        pytest.skip("a real clawsup is running on this machine")
    assert result.returncode == 1
    assert result.stderr == (
        "clawsupctl: cannot reach clawsup at ipc:///run/clawsup/control.sock (is it running?)\n"
    )


# -- health -----------------------------------------------------------------------------


def test_health_exit_0_when_healthy(server: ServerThread) -> None:
    result = ctl_at(server, "health")
    assert (result.returncode, result.stdout) == (0, "healthy\n")


def test_health_exit_1_when_unhealthy(server: ServerThread) -> None:
    server.handler.healthy = False
    result = ctl_at(server, "health")
    assert result.returncode == 1
    assert result.stdout == "unhealthy: gateway liveness probe failing\n"


def test_health_exit_1_within_timeout_when_the_server_never_answers(tmp_path: Path) -> None:
    peer = SilentPeer(tmp_path / "control.sock")
    try:
        began = time.monotonic()
        result = ctl("--socket", peer.endpoint, "--timeout", "1", "health")
        took = time.monotonic() - began
    finally:
        peer.close()
    assert result.returncode == 1
    assert "no answer within 1s" in result.stderr
    assert len(peer.received) == 1  # no retry: Docker's own timeout would cut it off
    assert took < 1 + 3, took  # the timeout plus a generous process start


def test_health_exit_1_on_a_bad_reply(tmp_path: Path) -> None:
    peer = SilentPeer(tmp_path / "control.sock", reply=b'{"ok": true, "healthy": "yes"}')
    try:
        result = ctl("--socket", peer.endpoint, "health")
    finally:
        peer.close()
    assert result.returncode == 1
    assert result.stderr.startswith("clawsupctl: unexpected reply")


@pytest.mark.parametrize("reply", [
    b'{"ok": false, "error": {"code": "failed", "message": "clawsup is shutting down"}}',
    b'{"ok": true, "healthy": "yes"}',
    b'{"healthy": true}',
    b'{"ok": true, "healthy": true, "error": 5}',
    b'{"ok": true, "healthy": true, "reasons": [1]}',
    b'{"ok": false}',
    b"\xff not json",
    b"[]",
    b'{"ok": true, "programs": [{"name": 1}], "supervisor_pid": 1}',
])
def test_a_reply_that_is_not_what_the_protocol_promises_is_one_line_and_exit_1(
    tmp_path: Path, reply: bytes
) -> None:
    peer = SilentPeer(tmp_path / "control.sock", reply=reply)
    try:
        for command in (["health"], ["status"], ["status", "--json"], ["pid", "gateway"]):
            result = ctl("--socket", peer.endpoint, *command)
            assert result.returncode == 1, (command, result.stderr)
            assert result.stdout == ""
            assert result.stderr.startswith("clawsupctl: ")
            assert result.stderr.count("\n") == 1, result.stderr
    finally:
        peer.close()


@pytest.mark.parametrize(("command", "requests"), [("health", 1), ("status", 2),
                                                   ("restart", 1)])
def test_a_silent_server_gets_a_query_twice_and_anything_else_once(
    tmp_path: Path, command: str, requests: int
) -> None:
    peer = SilentPeer(tmp_path / "control.sock")
    try:
        began = time.monotonic()
        result = ctl("--socket", peer.endpoint, "--timeout", "0.5", command)
        took = time.monotonic() - began
        wait_until(lambda: len(peer.received) == requests, what="the requests")
    finally:
        peer.close()
    assert result.returncode == 1
    assert "within 0.5s" in result.stderr
    assert took < 0.5 * requests + 3, took
    assert len(peer.received) == requests


@pytest.mark.parametrize(
    "args",
    [
        ["health", "--bogus"],
        ["health", "extra"],
        ["--timeout", "abc", "health"],
        ["--timeout", "-1", "health"],
        ["--no-such-option", "health"],
    ],
)
def test_health_never_exits_2_even_on_usage_errors(server: ServerThread, args: list[str]) -> None:
    result = ctl("--socket", server.endpoint, *args)
    assert result.returncode == 1, result.stderr


def test_other_commands_exit_2_on_usage_errors(server: ServerThread) -> None:
    assert ctl_at(server, "status", "--bogus").returncode == 2
    assert ctl_at(server, "no-such-command").returncode == 2


# -- program commands and settings ------------------------------------------------------


def test_restart_waits_for_running_unless_no_wait(server: ServerThread) -> None:
    result = ctl_at(server, "restart")
    assert (result.returncode, result.stdout) == (0, "gateway: RUNNING (pid 4243)\n")
    result = ctl_at(server, "restart", "gateway", "--no-wait")
    assert result.stdout.startswith("gateway: STOPPING")
    wait_until(lambda: server.handler.state == "RUNNING", what="restart finished")


def test_restart_without_an_answer_in_time_says_the_program_may_still_be_starting(
    server: ServerThread,
) -> None:
    server.handler.restart_seconds = 5.0  # a gateway that takes longer to serve again
    result = ctl_at(server, "--timeout", "0.5", "restart")
    assert result.returncode == 1
    assert "no answer from clawsup within 0.5s" in result.stderr
    assert "the main program is probably still starting" in result.stderr
    assert "clawsupctl status" in result.stderr


def test_clawsupctl_waits_longer_than_clawsup_takes_to_answer_a_restart_of_the_shipped_gateway(
) -> None:
    from clawsup.client.ctl import WAIT_TIMEOUT
    from clawsup.supervisor import controller
    from clawsup.supervisor.config import load_config
    from clawsup.supervisor.program import KILL_TIMEOUT

    gateway = load_config(REPO / "etc" / "clawsup.toml", on_this_host=False).programs["gateway"]
    assert gateway.liveness is not None
    # The stop, then a start that may last start_timeout and end in the stop of a failed
    # start: the supervisor answers by then, clawsupctl must still be listening.
    answered_within = (gateway.stop_timeout + KILL_TIMEOUT
                       + controller._start_settles_within(gateway) + controller._WAIT_MARGIN)
    assert answered_within > gateway.liveness.start_timeout
    assert answered_within < WAIT_TIMEOUT


def test_start_stop_signal(server: ServerThread) -> None:
    assert ctl_at(server, "stop", "gateway").stdout == "gateway: STOPPED\n"
    assert ctl_at(server, "start").stdout == "gateway: RUNNING (pid 4243)\n"
    assert ctl_at(server, "signal", "HUP").returncode == 0
    assert server.handler.signals == ["HUP"]


def test_unknown_program_is_an_error_line(server: ServerThread) -> None:
    result = ctl_at(server, "restart", "nope")
    assert result.returncode == 1
    assert result.stderr == "clawsupctl: no program named 'nope' (unknown_program)\n"


def test_set_model_and_timezone(server: ServerThread) -> None:
    result = ctl_at(server, "set-model", "openai/gpt-5.2")
    assert result.stdout == "model: anthropic/claude-opus-4-5 -> openai/gpt-5.2 (reload)\n"
    result = ctl_at(server, "set-timezone", "Europe/Berlin")
    assert result.stdout == "timezone: UTC -> Europe/Berlin (reload)\n"
    result = ctl_at(server, "set-timezone", "Not/AZone")
    assert result.returncode == 1
    assert "unknown time zone 'Not/AZone' (bad_value)" in result.stderr


def test_reload_shutdown_version(server: ServerThread) -> None:
    assert ctl_at(server, "reload").stdout == "config reloaded\n"
    assert ctl_at(server, "shutdown").stdout == "shutting down\n"
    assert server.handler.shutdown_requested
    assert ctl_at(server, "version").stdout == "clawsupctl 0.1.0\nclawsup 0.1.0 (protocol 1)\n"


# -- incidents and events ---------------------------------------------------------------


def test_incidents_table_and_json(server: ServerThread) -> None:
    result = ctl_at(server, "incidents", "--since", "30d")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["DAY", "CRASH_LOOP", "HUNG"]
    assert lines[1].split() == ["2023-11-14", "0", "2"]
    assert lines[2].split() == ["2023-11-15", "1", "0"]
    assert "latest:" in lines
    assert lines[-1].split()[2:] == ["crash_loop", "gateway", "5", "in", "60s"]
    as_json = json.loads(ctl_at(server, "incidents", "--json").stdout)
    assert as_json["counts"]["2023-11-14"] == {"hung": 2}
    bad = ctl_at(server, "incidents", "--since", "soon")
    assert bad.returncode == 2
    assert "--since" in bad.stderr


def test_events_follows_the_stream_with_a_kind_filter(server: ServerThread) -> None:
    follower = subprocess.Popen(
        [*CTL, "--socket", server.endpoint, "events", "--kind", "hung", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:

        def follower_done() -> bool:
            server.publish(Event(ts=1.0, kind="restarted", program="gateway"))
            server.publish(Event(ts=2.0, kind="hung", program="gateway", message="D state"))
            try:
                follower.wait(0.05)
            except subprocess.TimeoutExpired:
                return False
            return True

        wait_until(follower_done, timeout=30, what="clawsupctl events to see two events")
        out, err = follower.communicate()
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["kind"] == "hung" for line in lines)
    assert json.loads(lines[0]) == {
        "ts": 2.0,
        "kind": "hung",
        "program": "gateway",
        "message": "D state",
        "data": {},
    }


# -- keygen, completion, import weight --------------------------------------------------


def test_keygen_writes_a_private_key_pair_and_never_overwrites(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = ctl("keygen", str(keys), "--name", "server")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert "secret-key" in (keys / "server.key_secret").read_text()
    assert "secret-key" not in (keys / "server.key").read_text()
    again = ctl("keygen", str(keys), "--name", "server")
    assert again.returncode == 1
    assert "not overwriting" in again.stderr


def test_bash_completion_script() -> None:
    result = ctl(env={"_CLAWSUPCTL_COMPLETE": "bash_source"})
    assert result.returncode == 0
    assert "_clawsupctl_completion" in result.stdout


# Modules `clawsupctl status` and `health` have no use for: each one costs start-up time on
# every call, which probes make every few seconds (pyzmq or msgspec alone would double it).
NOT_FOR_PROBES = (
    "click",
    "zmq",
    "msgspec",
    "typing",
    "pathlib",
    "zoneinfo",
    "datetime",
    "shutil",
    "dataclasses",
    "asyncio",
    "clawsup.protocol",
    "clawsup.supervisor",
)


@pytest.mark.parametrize("command", ["status", "status --json", "health", "pid"])
def test_probe_commands_load_neither_pyzmq_nor_msgspec(server: ServerThread, command: str) -> None:
    code = (
        "import sys\n"
        "from clawsup.client.ctl import run\n"
        f"code = run(['--socket', {server.endpoint!r}, *{command.split()!r}])\n"
        "print(code, ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    exit_code, *loaded = result.stderr.split()
    assert exit_code == "0", result.stderr
    assert "clawsup.client.zmtp" in loaded  # it did talk to the socket
    unwanted = [m for m in loaded if any(m == n or m.startswith(f"{n}.") for n in NOT_FOR_PROBES)]
    assert unwanted == []


# -- names, as supervisorctl takes them (a real supervisor) -----------------------------

SLEEP = python_program("import time; time.sleep(600)")
QUICK = """
start_seconds = "100ms"
stop_timeout = "2s"
"""


class Real:
    """A real clawsup with three sleeping programs, and clawsupctl pointed at it."""

    def __init__(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "".join(
            f"\n[programs.{name}]\ncommand = {SLEEP}\nmain = {str(name == 'gateway').lower()}\n"
            + QUICK for name in ("gateway", "alpha", "beta")))
        self.endpoint = f"ipc://{tmp_path}/run/control.sock"
        self.events_socket = tmp_path / "run" / "events.sock"
        self.clawsup = Clawsup(config, tmp_path / "clawsup.log")
        wait_until(lambda: self.status_json().get("programs") and all(
            p["state"] == "RUNNING" for p in self.status_json()["programs"]),
            timeout=30, what="every program RUNNING")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return ctl("--socket", self.endpoint, *args, timeout=timeout)

    def status_json(self) -> dict[str, Any]:
        done = self.ctl("status", "--json")
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def pids(self) -> dict[str, int | None]:
        return {p["name"]: p["pid"] for p in self.status_json()["programs"]}


@pytest.fixture
def real(tmp_path: Path) -> Iterator[Real]:
    supervisor = Real(tmp_path)
    try:
        yield supervisor
    finally:
        supervisor.clawsup.stop()


def test_status_shows_only_the_programs_named(real: Real) -> None:
    result = real.ctl("status", "beta", "alpha")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows if row] == ["alpha", "beta"]
    as_json = json.loads(real.ctl("status", "--json", "beta").stdout)
    assert [p["name"] for p in as_json["programs"]] == ["beta"]
    everything = real.ctl("status", "all").stdout.splitlines()[1:]
    assert [row.split()[0] for row in everything] == ["gateway", "alpha", "beta"]


def test_status_json_of_names_or_all(real: Real) -> None:
    alpha = json.loads(real.ctl("status", "--json", "alpha").stdout)
    assert [p["name"] for p in alpha["programs"]] == ["alpha"]
    everything = json.loads(real.ctl("status", "--json", "all").stdout)
    assert [p["name"] for p in everything["programs"]] == ["gateway", "alpha", "beta"]
    assert everything["supervisor_pid"] == real.clawsup.supervisor_pid


def test_only_queries_are_sent_twice() -> None:
    from clawsup.client.ctl import QUERIES
    from clawsup.protocol import IDEMPOTENT_COMMANDS

    assert QUERIES == IDEMPOTENT_COMMANDS


def test_status_of_an_unknown_name_is_one_line_and_exit_4_as_supervisorctl(real: Real) -> None:
    result = real.ctl("status", "alpha", "nosuch")
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr == ("clawsupctl: no program named 'nosuch' "
                             "(known: gateway, alpha, beta)\n")


def test_pid_without_a_name_is_the_supervisors(real: Real) -> None:
    result = real.ctl("pid")
    assert (result.returncode, result.stdout) == (0, f"{real.clawsup.supervisor_pid}\n")


def test_pid_of_a_program_is_its_pid_and_0_once_stopped(real: Real) -> None:
    pids = real.pids()
    assert real.ctl("pid", "alpha").stdout == f"{pids['alpha']}\n"
    assert real.ctl("stop", "alpha").returncode == 0
    assert real.ctl("pid", "alpha").stdout == "0\n"
    all_pids = real.ctl("pid", "all")
    assert all_pids.stdout.split() == [str(pids["gateway"]), "0", str(pids["beta"])]


def test_pid_of_an_unknown_name_is_an_error_and_exit_1(real: Real) -> None:
    result = real.ctl("pid", "nosuch")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("clawsupctl: no program named 'nosuch'")
    assert result.stderr.count("\n") == 1


def test_stop_and_start_take_several_names(real: Real) -> None:
    stopped = real.ctl("stop", "alpha", "beta")
    assert stopped.returncode == 0, stopped.stderr
    assert [line.split(":")[0:2] for line in stopped.stdout.splitlines()] == [
        ["alpha", " STOPPED"], ["beta", " STOPPED"]]
    assert real.pids() == {**real.pids(), "alpha": None, "beta": None}
    assert real.pids()["gateway"] is not None
    started = real.ctl("start", "alpha", "beta")
    assert started.returncode == 0, started.stderr
    assert all(pid is not None for pid in real.pids().values())


def test_restart_all_restarts_every_program(real: Real) -> None:
    before = real.pids()
    result = real.ctl("restart", "all")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "gateway", "alpha", "beta"]
    after = real.pids()
    assert all(after[name] not in (None, before[name]) for name in before)


def test_stop_all_then_start_all(real: Real) -> None:
    assert real.ctl("stop", "all").returncode == 0
    assert set(real.pids().values()) == {None}
    assert real.ctl("start", "all").returncode == 0
    assert None not in real.pids().values()


def test_a_refused_name_among_several_is_said_and_the_others_still_go(real: Real) -> None:
    result = real.ctl("stop", "nosuch", "alpha")
    assert result.returncode == 1
    assert "no program named 'nosuch'" in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout.startswith("alpha: STOPPED")
    assert real.pids()["alpha"] is None


# -- bad input: one line, exit 1 or 2, within the timeout -------------------------------


def quick(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    result = ctl(*args, env=env)
    return result, time.monotonic() - began


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("clawsupctl"), result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


Z85_KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a well-formed public key, of nobody


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--socket", "http://localhost/control"], 2, "http:// is not a control socket"),
    (["--socket", "tcp://nohost:1"], 2, "TCP only with CURVE"),
    (["--socket", "tcp://nohost:1", "--curve-server-key", Z85_KEY], 1, "cannot resolve nohost"),
    (["--socket", "tcp://127.0.0.1:1", "--curve-server-key", Z85_KEY], 1, "refused"),
    (["--socket", "tcp://host"], 2, "not tcp://HOST:PORT"),
    (["--socket", "tcp://127.0.0.1:1", "--curve-server-key", "nokey"], 1, "CURVE keys"),
    (["--socket", "tcp://127.0.0.1:1", "--curve-server-key", "~" * 40], 1, "not a CURVE key"),
    (["--socket", "/no/such/dir/control.sock"], 1, "(is it running?)"),
])
@pytest.mark.parametrize("command", ["status", "restart", "health"])
def test_a_bad_endpoint_or_key_is_one_line_within_the_timeout(args: list[str], code: int, words: str,
                                                       command: str) -> None:
    result, took = quick(*args, "--timeout", "2", command)
    assert result.returncode == (1 if command == "health" else code)
    assert words in one_line_error(result)
    assert took < 2 + 3, took


@pytest.mark.parametrize("value", ["inf", "nan", "1e9", "-1", "abc", "0", "0s", "1000000", "2d",
                                   ""])
def test_a_bad_timeout_is_a_usage_error(value: str) -> None:
    result = ctl("--timeout", value, "status")
    assert result.returncode == 2
    assert "--timeout" in one_line_error(result)
    assert ctl("--timeout", value, "health").returncode == 1  # Docker reserves 2


def test_a_timeout_is_a_duration_as_everywhere_in_clawsup(server: ServerThread) -> None:
    for value in ("10s", "500ms", "1m", "2.5", "1m30s"):
        result = ctl_at(server, "--timeout", value, "status")
        assert result.returncode == 0, (value, result.stderr)


def test_the_events_socket_given_as_the_control_socket_is_said_at_once(real: Real) -> None:
    for command in (["status"], ["restart"], ["health"], ["pid"], ["events"],
                    ["logs", "-f"], ["stop", "all"]):
        result, took = quick("--socket", str(real.events_socket), *command)
        assert result.returncode == 1, command
        assert "not a clawsup control socket: the peer is a PUB socket" in one_line_error(result)
        assert took < 5, (command, took)  # not restart's 300 s, nor a query's 5 s
    assert None not in real.pids().values()  # and nothing was stopped


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_file_or_directory_given_as_the_control_socket_is_said_at_once(tmp_path: Path,
                                                                         kind: str) -> None:
    path = tmp_path / "control.sock"
    if kind == "file":
        path.write_text("not a socket")
    else:
        path.mkdir()
    for command in ("status", "restart", "events"):
        result, took = quick("--socket", str(path), command)
        assert result.returncode == 1
        assert f"{path} is a {'regular file' if kind == 'file' else 'directory'}, not a socket" \
            in one_line_error(result)
        assert took < 5


def test_events_of_an_unknown_kind_is_a_usage_error_naming_the_kinds(server: ServerThread) -> None:
    result, took = quick("--socket", server.endpoint, "events", "--kind", "hung", "--kind",
                         "nosuchkind")
    assert result.returncode == 2
    error = one_line_error(result)
    assert "'nosuchkind'" in error
    assert "crash_loop" in error  # it says what the kinds are
    assert took < 5


def test_events_ends_with_exit_0_when_the_supervisor_shuts_down(real: Real) -> None:
    follower = subprocess.Popen(
        [*CTL, "--socket", real.endpoint, "events"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout is not None
        # Subscribed once it prints the events of a restart.
        wait_until(lambda: bool(real.ctl("restart", "alpha").returncode == 0
                                and select.select([follower.stdout], [], [], 1)[0]),
                   timeout=30, what="the follower to print an event")
        assert real.ctl("shutdown").returncode == 0
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert err == ""
    assert all(json.loads(line)["kind"] for line in out.splitlines())


def test_signal_takes_numbers_as_documented_and_refuses_a_number_that_is_no_signal(
    real: Real,
) -> None:
    result = real.ctl("signal", "999", "alpha")
    assert result.returncode == 2
    assert "999 is not a signal number" in one_line_error(result)
    assert "1-31" in result.stderr  # what numbers are
    for number in ("0", "40"):  # 40: between SIGRTMIN and SIGRTMAX, no name of its own
        assert real.ctl("signal", number, "alpha").returncode == 2, number
    before = real.pids()["alpha"]
    sent = real.ctl("signal", "15", "alpha")  # SIGTERM by number: alpha exits, is restarted
    assert sent.returncode == 0, sent.stderr
    assert "sent SIGTERM" in sent.stdout
    wait_until(lambda: real.pids()["alpha"] not in (None, before), timeout=30,
               what="alpha restarted after SIGTERM")
    refused = real.ctl("signal", "NOSUCH", "alpha")
    assert refused.returncode == 1
    one_line_error(refused)
