"""clawsupctl as a whole process against a real ControlServer with a fake handler."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from clawsup.client import Client
from clawsup.protocol import Event, Status, StatusReply
from tests.fake_control import ServerThread
from tests.test_client import SilentPeer
from tests.util import wait_until

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
    assert header.split() == ["NAME", "STATE", "PID", "PROCS", "UPTIME", "RESTARTS", "LAST",
                              "EXIT"]
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


def test_other_commands_keep_click_usage_exit_2(server: ServerThread) -> None:
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

    gateway = load_config(REPO / "etc" / "clawsup.toml").programs["gateway"]
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


def test_importing_the_cli_loads_neither_zmq_nor_the_supervisor() -> None:
    code = (
        "import sys, clawsup.client.ctl\n"
        "print(' '.join(m for m in ('zmq', 'msgspec', 'clawsup.client._client', 'clawsup.supervisor')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.split() == []


# Modules `clawsupctl status` has no use for: each one costs start-up time on every call
# (pathlib alone drags in urllib.parse, ipaddress and fnmatch).
NOT_FOR_STATUS = (
    "pathlib",
    "socket",
    "json",
    "zoneinfo",
    "datetime",
    "shutil",
    "dataclasses",
    "asyncio",
    "zmq.auth",
    "clawsup.supervisor",
)


def test_status_imports_only_what_it_needs(server: ServerThread) -> None:
    # Whatever click, pyzmq and msgspec load themselves is theirs; what clawsupctl's own
    # code adds on top for `status` must stay off the list above.
    code = (
        "import sys, click, zmq, msgspec\n"
        "libraries = set(sys.modules)\n"
        "from clawsup.client.ctl import main\n"
        "try:\n"
        f"    main(['--socket', {server.endpoint!r}, 'status'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(' '.join(sorted(set(sys.modules) - libraries)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "gateway" in result.stdout
    added = result.stderr.split()
    assert "clawsup.client._client" in added  # it did talk to the socket
    unwanted = [m for m in added if any(m == n or m.startswith(f"{n}.") for n in NOT_FOR_STATUS)]
    assert unwanted == []
