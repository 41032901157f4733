"""The control server against real ZeroMQ sockets, real processes and a fake handler."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from clawsup.client import Client, CommandFailed, Timeout
from clawsup.protocol import Event
from clawsup.supervisor.control import (
    HARD_LIMIT_FACTOR,
    AnotherSupervisorRunning,
    ControlServer,
    ControlServerError,
)
from tests.fake_control import BOOM, FakeSupervisor, ServerThread
from tests.util import wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _ask(sock: zmq.Socket[bytes], *frames: bytes, timeout: float = 5.0) -> list[bytes] | None:
    """Send ``frames`` from a DEALER as a REQ would (empty delimiter first)."""
    sock.send_multipart([b"", *frames])
    if not sock.poll(int(timeout * 1000)):
        return None
    return sock.recv_multipart()


def _reply(sock: zmq.Socket[bytes], frame: bytes) -> dict[str, object]:
    answer = _ask(sock, frame)
    assert answer is not None, f"no reply to {frame[:80]!r}"
    assert len(answer) == 2, answer
    assert answer[0] == b""
    reply = json.loads(answer[1])
    assert isinstance(reply, dict)
    return reply


def _start_foreground_server(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_control", str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == f"ready {proc.pid}\n", line
    return proc


# -- run_dir and socket files -----------------------------------------------------------


def test_run_dir_is_0700_and_sockets_are_0600(server: ServerThread, run_dir: Path) -> None:
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for name in ("control.sock", "events.sock"):
        st = (run_dir / name).stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600, name
    assert (run_dir / "clawsup.pid").read_text() == f"{os.getpid()}\n"


def test_existing_run_dir_gets_mode_0700(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        with ServerThread(run_dir):
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
            assert stat.S_IMODE((run_dir / "control.sock").stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_symlinked_run_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(real)
    with pytest.raises(ControlServerError, match="symlink"), ServerThread(link):
        pass
    assert list(real.iterdir()) == []


def test_run_dir_owned_by_someone_else_is_refused(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(ControlServerError, match="owned by uid 65534"), ServerThread(run_dir):
        pass


def test_close_removes_sockets_and_pid_file(run_dir: Path) -> None:
    with ServerThread(run_dir):
        assert (run_dir / "control.sock").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_stale_socket_of_dead_supervisor_is_replaced(run_dir: Path) -> None:
    dead = _start_foreground_server(run_dir)
    dead.kill()
    dead.wait()
    # SIGKILL leaves everything behind: the socket files and the pid file.
    assert {"control.sock", "events.sock", "clawsup.pid"} <= {p.name for p in run_dir.iterdir()}
    with ServerThread(run_dir) as server, Client(server.endpoint) as client:
        assert client.status().supervisor_pid == os.getpid()
        assert (run_dir / "clawsup.pid").read_text() == f"{os.getpid()}\n"


def test_live_supervisor_is_refused_and_keeps_its_socket(run_dir: Path) -> None:
    live = _start_foreground_server(run_dir)
    try:
        with pytest.raises(AnotherSupervisorRunning) as refused, ServerThread(run_dir):
            pass
        assert refused.value.pid == live.pid
        assert f"another clawsup is running (pid {live.pid})" in str(refused.value)
        # The refused server touched nothing: the live one still answers.
        with Client(f"ipc://{run_dir}/control.sock", timeout=2) as client:
            assert client.status().supervisor_pid == live.pid
    finally:
        live.send_signal(signal.SIGTERM)
        assert live.wait(10) == 0
    assert not (run_dir / "control.sock").exists()


def test_second_server_in_the_same_process_is_refused(server: ServerThread, run_dir: Path) -> None:
    with pytest.raises(AnotherSupervisorRunning, match=f"pid {os.getpid()}"), ServerThread(run_dir):
        pass
    with Client(server.endpoint) as client:
        assert client.status().programs[0].name == "gateway"


def test_too_long_socket_path_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(ControlServerError, match="sun_path"), ServerThread(deep):
        pass


_CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied")
else:
    print("connected")
"""


def _connect_as_nobody(path: Path) -> str:
    # /usr/bin/python3 rather than the venv's: nobody cannot enter root's pyenv. A raw
    # AF_UNIX connect is exactly what a ZeroMQ ipc connect does first.
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            _CONNECT_AS_NOBODY,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_other_user_cannot_connect() -> None:
    # A world-searchable parent, so only run_dir's and the socket's own modes protect it.
    parent = Path(tempfile.mkdtemp(prefix="clawsup-perm-"))
    parent.chmod(0o755)
    run_dir = parent / "run"
    try:
        with ServerThread(run_dir):
            sock = run_dir / "control.sock"
            assert _connect_as_nobody(sock) == "denied"
            # Even with run_dir opened up, the socket's 0600 alone keeps nobody out.
            run_dir.chmod(0o711)
            assert _connect_as_nobody(sock) == "denied"
            sock.chmod(0o666)  # the control: the same connect works once the mode allows it
            assert _connect_as_nobody(sock) == "connected"
    finally:
        shutil.rmtree(parent)


# -- concurrency ------------------------------------------------------------------------


def test_slow_restart_does_not_block_status_from_another_client(server: ServerThread) -> None:
    restarted: list[object] = []

    def restart() -> None:
        with Client(server.endpoint) as client:
            restarted.append(client.restart())

    worker = threading.Thread(target=restart)
    worker.start()
    wait_until(lambda: server.handler.state == "STOPPING", what="restart under way")
    with Client(server.endpoint) as other:
        began = time.monotonic()
        status = other.status()
        answered_in = time.monotonic() - began
    assert status.programs[0].state == "STOPPING"
    assert answered_in < server.handler.restart_seconds / 2, answered_in
    assert server.server.in_flight >= 1  # the restart is still waiting
    worker.join(10)
    assert [r.state for r in restarted] == ["RUNNING"]  # type: ignore[attr-defined]


def test_a_thousand_concurrent_clients_are_all_answered(
    server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    zctx.setsockopt(zmq.MAX_SOCKETS, 1100)
    clients = [_dealer(zctx, server.endpoint) for _ in range(1000)]
    try:
        for i, sock in enumerate(clients):
            request = b'{"cmd":"status"}' if i % 2 else b'{"cmd":"health"}'
            sock.send_multipart([b"", request])
        poller = zmq.Poller()
        for sock in clients:
            poller.register(sock, zmq.POLLIN)
        replies: dict[int, dict[str, object]] = {}
        deadline = time.monotonic() + 60
        while len(replies) < len(clients) and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                frames = sock.recv_multipart()
                poller.unregister(sock)
                replies[clients.index(sock)] = json.loads(frames[-1])
        assert len(replies) == 1000
        for i, reply in replies.items():
            assert reply["ok"] is True
            if i % 2:
                assert reply["programs"][0]["state"] == "RUNNING"  # type: ignore[index]
            else:
                assert reply["healthy"] is True
    finally:
        for sock in clients:
            sock.close(linger=0)


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "says"),
    [
        (b"", "bad_request", "not UTF-8 JSON"),
        (b"\xff\xfe{", "bad_request", "not UTF-8 JSON"),
        (b'{"cmd": "set_model", "model": "\xff"}', "bad_request", "not UTF-8 JSON"),
        (b"{not json", "bad_request", "not UTF-8 JSON"),
        (b"[" * 50_000, "bad_request", "not UTF-8 JSON"),  # deeper than msgspec recurses
        (b'["status"]', "bad_request", "JSON object"),
        (b'"status"', "bad_request", "JSON object"),
        (b"{}", "bad_request", 'no "cmd"'),
        (b'{"cmd": 7}', "bad_request", '"cmd" must be a string'),
        (b'{"cmd": "explode"}', "unknown_command", "unknown command 'explode'"),
        (b'{"cmd": "STATUS"}', "unknown_command", "unknown command"),
        (b'{"cmd": "status", "extra": 1}', "bad_request", "unknown field `extra`"),
        (b'{"cmd": "set_model"}', "bad_request", "missing required field `model`"),
        (b'{"cmd": "set_model", "model": 3}', "bad_request", "$.model"),
        (b'{"cmd": "restart", "wait": "yes"}', "bad_request", "$.wait"),
        (b'{"cmd": "incidents", "limit": "all"}', "bad_request", "$.limit"),
        (b'{"cmd": "set_model", "model": "no-slash"}', "bad_value", "PROVIDER/NAME"),
        (b'{"cmd": "set_timezone", "timezone": "Mars/Olympus"}', "bad_value", "Mars/Olympus"),
        (b'{"cmd": "restart", "program": "nope"}', "unknown_program", "nope"),
    ],
)
def test_bad_input_gets_the_right_error_code(
    server: ServerThread,
    zctx: zmq.Context[zmq.Socket[bytes]],
    frame: bytes,
    code: str,
    says: str,
) -> None:
    reply = _reply(_dealer(zctx, server.endpoint), frame)
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    assert says in error["message"]


def test_multi_frame_request_is_refused(server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    sock = _dealer(zctx, server.endpoint)
    answer = _ask(sock, b'{"cmd": "status"}', b'{"cmd": "status"}')
    assert answer is not None
    reply = json.loads(answer[-1])
    assert reply["error"]["code"] == "bad_request"
    assert "exactly one frame, got 2" in reply["error"]["message"]
    assert server.handler.requests == []


def test_dealer_without_delimiter_gets_a_bare_reply(
    server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    sock = _dealer(zctx, server.endpoint)
    sock.send(b'{"cmd": "version"}')
    assert sock.poll(5000)
    frames = sock.recv_multipart()
    assert len(frames) == 1
    assert json.loads(frames[0])["version"]


def test_handler_exception_is_internal_and_the_server_goes_on(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(server.endpoint) as client:
        with pytest.raises(CommandFailed) as failed:
            client.signal(BOOM)
        assert failed.value.code == "internal"
        assert "RuntimeError: the fake handler exploded" in failed.value.message
        assert client.status().programs[0].state == "RUNNING"
        assert client.signal("HUP").program == "gateway"
    assert "control handler failed" in caplog.text
    assert "Traceback" in caplog.text


def test_frame_over_max_request_size_gets_too_large(
    server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    sock = _dealer(zctx, server.endpoint)
    oversized = b'{"cmd": "set_model", "model": "' + b"x" * (64 * 1024) + b'"}'
    reply = _ask(sock, oversized)
    assert reply is not None
    error = json.loads(reply[-1])
    assert error["ok"] is False
    assert error["error"]["code"] == "too_large"
    assert "max_request_size" in error["error"]["message"]
    assert not [r for r in server.handler.requests if type(r).__name__ == "SetModel"]
    with Client(server.endpoint) as client:
        assert client.status().programs[0].state == "RUNNING"


def test_frame_over_the_hard_limit_drops_that_peer_and_others_are_served(
    server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    # The monitor is attached before connecting: an ipc connect completes at once, and
    # a CONNECTED event fired before the monitor exists is never seen.
    big = zctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    monitor = big.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    big.connect(server.endpoint)

    def next_event(wanted: int) -> None:
        # Monitor events come with a deadline: a DEALER that is dropped reconnects, so a
        # CONNECTED may come before or after the event a step waits for.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if monitor.poll(500) and recv_monitor_message(monitor)["event"] == wanted:
                return
        raise AssertionError(f"no monitor event {wanted} within 10s")

    next_event(zmq.EVENT_CONNECTED)
    limit = 64 * 1024 * HARD_LIMIT_FACTOR
    oversized = b'{"cmd": "set_model", "model": "' + b"x" * limit + b'"}'
    big.send_multipart([b"", oversized])
    # libzmq refuses the frame while reading it and closes that connection.
    next_event(zmq.EVENT_DISCONNECTED)
    assert big.poll(200) == 0  # and no reply ever comes
    with Client(server.endpoint) as client:
        assert client.status().programs[0].state == "RUNNING"
    assert server.handler.requests
    assert all(type(r).__name__ == "Status" for r in server.handler.requests)
    big.disable_monitor()
    monitor.close(linger=0)


# -- events -----------------------------------------------------------------------------


def test_publish_reaches_subscribers_and_never_raises(
    server: ServerThread, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    # No subscriber yet: PUB drops, publish() returns.
    server.run(_publish_now(server.server, Event(ts=1.0, kind="lost")))
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(server.server.events_endpoint)
    event = Event(ts=2.0, kind="hung", program="gateway", data={"seconds": 12})

    def received() -> bytes | None:
        server.publish(event)  # again and again: a SUB joins a little after connect()
        return sub.recv() if sub.poll(50) else None

    frame = wait_until(received, what="an event on the SUB socket")
    assert json.loads(frame) == {
        "ts": 2.0,
        "kind": "hung",
        "program": "gateway",
        "message": "",
        "data": {"seconds": 12},
    }
    # A value no encoder knows is made text when the event is built: published too.
    server.run(_publish_now(server.server, Event(ts=3.0, kind="odd", data={"x": object()})))

    def odd() -> dict[str, object] | None:  # after the repeats of the first event
        seen = json.loads(sub.recv()) if sub.poll(50) else None
        return seen if seen is not None and seen["kind"] == "odd" else None

    assert str(wait_until(odd, what="the odd event")["data"]).startswith("{'x': '<object")


async def _publish_now(server: ControlServer, event: Event) -> None:
    server.publish(event)


def test_publish_after_close_does_not_raise(run_dir: Path) -> None:
    with ServerThread(run_dir) as running:
        pass
    running.server.publish(Event(ts=1.0, kind="late"))


def test_close_answers_waiting_requests_with_failed(run_dir: Path) -> None:
    running = ServerThread(run_dir, FakeSupervisor(restart_seconds=30)).__enter__()
    outcome: list[BaseException] = []

    def restart() -> None:
        with Client(running.endpoint, timeout=20) as client:
            try:
                client.restart()
            except CommandFailed as exc:
                outcome.append(exc)

    worker = threading.Thread(target=restart)
    worker.start()
    wait_until(lambda: running.handler.state == "STOPPING", what="restart under way")
    began = time.monotonic()
    running.__exit__(None, None, None)
    worker.join(10)
    assert time.monotonic() - began < 5
    assert len(outcome) == 1
    assert isinstance(outcome[0], CommandFailed)
    assert outcome[0].code == "failed"
    assert "shutting down" in outcome[0].message


# -- CURVE over TCP ---------------------------------------------------------------------


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    keys = tmp_path / "keys"
    authorized = tmp_path / "authorized"
    keys.mkdir()
    authorized.mkdir()
    zmq.auth.create_certificates(keys, "server")
    zmq.auth.create_certificates(keys, "client")
    zmq.auth.create_certificates(keys, "stranger")
    (keys / "server.key_secret").chmod(0o600)
    (authorized / "client.key").write_bytes((keys / "client.key").read_bytes())
    return {
        "server_public": keys / "server.key",
        "server_secret": keys / "server.key_secret",
        "client_secret": keys / "client.key_secret",
        "stranger_secret": keys / "stranger.key_secret",
        "authorized": authorized,
    }


def test_curve_tcp_serves_authorized_keys_only(run_dir: Path, curve_keys: dict[str, Path]) -> None:
    with ServerThread(
        run_dir,
        tcp_endpoint="tcp://127.0.0.1:*",
        curve_secret_key_file=str(curve_keys["server_secret"]),
        curve_authorized_keys_dir=str(curve_keys["authorized"]),
    ) as server:
        endpoint = server.server.tcp_endpoint
        assert endpoint is not None
        assert endpoint.startswith("tcp://127.0.0.1:")
        with Client(
            endpoint,
            curve_server_key=curve_keys["server_public"],
            curve_client_keys=curve_keys["client_secret"],
        ) as client:
            assert client.status().programs[0].name == "gateway"
        with (
            Client(
                endpoint,
                timeout=0.5,
                retries=0,
                curve_server_key=curve_keys["server_public"],
                curve_client_keys=curve_keys["stranger_secret"],
            ) as stranger,
            pytest.raises(Timeout),
        ):
            stranger.status()
        with Client(endpoint, timeout=0.5, retries=0) as plain, pytest.raises(Timeout):
            plain.status()  # no CURVE at all: the handshake never completes
        # The ipc socket stays CURVE-free for local clients.
        with Client(server.endpoint) as local:
            assert local.version().protocol == 1


def test_curve_secret_key_as_bare_z85_works(run_dir: Path, tmp_path: Path) -> None:
    public, secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    secret_file = tmp_path / "server.z85"
    secret_file.write_bytes(secret + b"\n")
    secret_file.chmod(0o600)
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    zmq.auth.create_certificates(authorized, "unused")  # writes a pair; keep only .key
    (authorized / "unused.key_secret").unlink()
    (authorized / "unused.key").unlink()
    (authorized / "me.key").write_text(f'metadata\ncurve\n    public-key = "{client_public.decode()}"\n')
    with ServerThread(
        run_dir,
        tcp_endpoint="tcp://127.0.0.1:*",
        curve_secret_key_file=str(secret_file),
        curve_authorized_keys_dir=str(authorized),
    ) as server:
        assert server.server.tcp_endpoint is not None
        with Client(
            server.server.tcp_endpoint,
            curve_server_key=public.decode(),
            curve_client_keys=(client_public, client_secret),
        ) as client:
            assert client.health().healthy


def test_tcp_without_curve_is_refused(run_dir: Path) -> None:
    with pytest.raises(ControlServerError, match="without CURVE"):
        ServerThread(run_dir, tcp_endpoint="tcp://127.0.0.1:*")


@pytest.mark.parametrize(
    ("key", "mode", "says"),
    [
        ("server_secret", 0o644, "lets others read it"),
        ("server_public", 0o600, "holds no secret key"),
    ],
)
def test_unusable_secret_key_file_is_refused_before_binding(
    run_dir: Path, curve_keys: dict[str, Path], key: str, mode: int, says: str
) -> None:
    curve_keys[key].chmod(mode)
    with (
        pytest.raises(ControlServerError, match=says),
        ServerThread(
            run_dir,
            tcp_endpoint="tcp://127.0.0.1:*",
            curve_secret_key_file=str(curve_keys[key]),
            curve_authorized_keys_dir=str(curve_keys["authorized"]),
        ),
    ):
        pass
    assert not run_dir.exists() or list(run_dir.iterdir()) == []
