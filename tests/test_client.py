"""The control client against a real ControlServer (fake handler) and hand-made peers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from clawsup.client import (
    BadReply,
    ClawsupError,
    Client,
    CommandFailed,
    Timeout,
    Unreachable,
    default_endpoint,
    events_endpoint_for,
    normalize_endpoint,
)
from clawsup.protocol import Event
from tests.fake_control import ServerThread
from tests.util import wait_until


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.endpoint) as connected:
        yield connected


class SilentPeer:
    """A ROUTER that counts requests and answers with ``reply`` (or never, if None)."""

    def __init__(self, path: Path, reply: bytes | None = None) -> None:
        self.endpoint = f"ipc://{path}"
        self.reply = reply
        self.received: list[bytes] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.bind(self.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._router.poll(20):
                continue
            frames = self._router.recv_multipart()
            self.received.append(frames[-1])
            if self.reply is not None:
                self._router.send_multipart([*frames[:-1], self.reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._router.close(linger=0)
        self._ctx.term()


# -- isolation --------------------------------------------------------------------------


def test_client_and_ctl_never_import_the_supervisor() -> None:
    code = (
        "import sys, clawsup.client, clawsup.client.ctl\n"
        "print(sorted(m for m in sys.modules if m.startswith('clawsup')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.replace("'", '"'))
    assert not [m for m in loaded if m.startswith("clawsup.supervisor")], loaded
    assert "clawsup.client" in loaded


# -- endpoints --------------------------------------------------------------------------


def test_endpoint_defaults_to_env_then_run_clawsup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLAWSUP_SOCKET", raising=False)
    assert default_endpoint() == "ipc:///run/clawsup/control.sock"
    monkeypatch.setenv("CLAWSUP_SOCKET", "/tmp/x/control.sock")
    assert default_endpoint() == "ipc:///tmp/x/control.sock"
    assert Client().endpoint == "ipc:///tmp/x/control.sock"
    monkeypatch.setenv("CLAWSUP_SOCKET", "tcp://10.0.0.1:7777")
    assert Client().endpoint == "tcp://10.0.0.1:7777"


def test_plain_path_becomes_ipc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_endpoint("run/control.sock") == f"ipc://{tmp_path}/run/control.sock"
    assert normalize_endpoint("ipc:///a/b.sock") == "ipc:///a/b.sock"


def test_events_endpoint_sits_beside_the_control_socket() -> None:
    assert events_endpoint_for("ipc:///run/clawsup/control.sock") == ("ipc:///run/clawsup/events.sock")
    with pytest.raises(ClawsupError, match="ipc socket only"):
        events_endpoint_for("tcp://127.0.0.1:7777")


# -- typed commands ---------------------------------------------------------------------


def test_status_is_typed(client: Client, server: ServerThread) -> None:
    reply = client.status()
    assert reply.supervisor_pid == os.getpid()
    [gateway] = reply.programs
    assert (gateway.name, gateway.state, gateway.pid, gateway.main) == (
        "gateway",
        "RUNNING",
        4242,
        True,
    )


def test_program_commands(client: Client, server: ServerThread) -> None:
    assert client.stop().state == "STOPPED"
    assert client.status().programs[0].last_exit is not None
    assert client.start("gateway").state == "RUNNING"
    began = time.monotonic()
    assert client.restart().state == "RUNNING"
    assert time.monotonic() - began >= server.handler.restart_seconds
    assert client.restart(wait=False).state == "STOPPING"
    wait_until(lambda: client.status().programs[0].state == "RUNNING", what="restarted")
    assert client.status().programs[0].restarts == 2
    assert client.signal("HUP").program == "gateway"
    assert server.handler.signals == ["HUP"]


def test_settings_and_queries(client: Client) -> None:
    model = client.set_model("openai/gpt-5.2")
    assert (model.key, model.old, model.new) == ("model", "anthropic/claude-opus-4-5", "openai/gpt-5.2")
    zone = client.set_timezone("America/Sao_Paulo")
    assert (zone.old, zone.new) == ("UTC", "America/Sao_Paulo")
    assert client.health().healthy is True
    assert client.reload().message == "config reloaded"
    assert client.version().protocol == 1
    incidents = client.incidents(since=7 * 86400, limit=2)
    assert incidents.counts == {"2023-11-14": {"hung": 2}, "2023-11-15": {"crash_loop": 1}}
    assert [i.kind for i in incidents.latest] == ["hung", "crash_loop"]
    assert client.shutdown().message == "shutting down"


def test_refusals_raise_command_failed(client: Client) -> None:
    with pytest.raises(CommandFailed) as unknown:
        client.restart("nope")
    assert unknown.value.code == "unknown_program"
    with pytest.raises(CommandFailed) as bad_zone:
        client.set_timezone("Mars/Olympus")
    assert bad_zone.value.code == "bad_value"
    assert "Mars/Olympus" in str(bad_zone.value)
    assert client.status().ok  # the same socket goes on


# -- failures ---------------------------------------------------------------------------


def test_missing_socket_is_unreachable_at_once(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/control.sock"
    with Client(endpoint, timeout=5) as client:
        began = time.monotonic()
        with pytest.raises(Unreachable) as failed:
            client.status()
    assert time.monotonic() - began < 1
    assert str(failed.value) == f"cannot reach clawsup at {endpoint} (is it running?)"


def test_socket_left_by_a_dead_supervisor_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()  # the file stays, nobody listens
    with Client(str(path), timeout=0.3) as client, pytest.raises(Unreachable) as failed:
        client.status()
    assert not isinstance(failed.value, Timeout)
    assert "dead supervisor" in str(failed.value)


def test_silent_server_times_out_and_only_idempotent_commands_are_resent(
    tmp_path: Path,
) -> None:
    peer = SilentPeer(tmp_path / "control.sock")
    try:
        with Client(peer.endpoint, timeout=0.3, retries=1) as client:
            began = time.monotonic()
            with pytest.raises(Timeout, match=r"no answer within 0\.3s"):
                client.status()
            assert 0.6 <= time.monotonic() - began < 2
            assert peer.received == [b'{"cmd":"status"}'] * 2
            peer.received.clear()
            with pytest.raises(Timeout):
                client.restart()
            assert len(peer.received) == 1  # a restart is never sent twice
    finally:
        peer.close()


def test_a_fresh_socket_after_a_timeout(tmp_path: Path) -> None:
    peer = SilentPeer(tmp_path / "control.sock")
    try:
        with Client(peer.endpoint, timeout=0.2, retries=0) as client:
            with pytest.raises(Timeout):
                client.version()
            # A REQ that timed out could not send again; the client must have replaced it.
            peer.reply = b'{"ok": true, "version": "9.9", "protocol": 1}'
            assert client.version().version == "9.9"
    finally:
        peer.close()


@pytest.mark.parametrize(
    "reply",
    [b"not json", b'{"ok": true}', b'{"ok": false}', b"[1, 2]", b"\xff"],
)
def test_garbage_reply_is_bad_reply(tmp_path: Path, reply: bytes) -> None:
    peer = SilentPeer(tmp_path / "control.sock", reply=reply)
    try:
        with Client(peer.endpoint, timeout=2) as client, pytest.raises(BadReply):
            client.status()
    finally:
        peer.close()


# -- events -----------------------------------------------------------------------------


def test_events_iterator_follows_the_pub_stream_with_a_kind_filter(
    client: Client, server: ServerThread
) -> None:
    seen: list[Event] = []
    done = threading.Event()

    def follow() -> None:
        with Client(server.endpoint) as follower:
            for event in follower.events(kinds=["hung"], timeout=10):
                seen.append(event)
                if len(seen) == 2:
                    break
        done.set()

    worker = threading.Thread(target=follow)
    worker.start()

    def published_until_seen() -> bool:
        # A subscriber misses what is published before it is connected, so keep going.
        server.publish(Event(ts=time.time(), kind="restarted", program="gateway"))
        server.publish(Event(ts=time.time(), kind="hung", program="gateway", message="D"))
        return done.wait(0.05)

    wait_until(published_until_seen, what="two hung events")
    worker.join(5)
    assert [e.kind for e in seen] == ["hung", "hung"]
    assert seen[0].message == "D"


def test_events_need_a_running_supervisor(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/control.sock") as client, pytest.raises(Unreachable):
        next(client.events())


def test_close_with_an_unfinished_events_generator_does_not_hang(server: ServerThread) -> None:
    client = Client(server.endpoint)
    events = client.events(timeout=10)
    stop = threading.Event()

    def publish_until_stopped() -> None:
        # Keep publishing: the SUB misses whatever comes before it is connected.
        while not stop.wait(0.02):
            server.publish(Event(ts=1.0, kind="tick"))

    publisher = threading.Thread(target=publish_until_stopped)
    publisher.start()
    try:
        assert next(events).kind == "tick"
    finally:
        stop.set()
        publisher.join()
    began = time.monotonic()
    client.close()  # the generator still holds its SUB socket open
    assert time.monotonic() - began < 1


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_file_or_directory_as_the_socket_is_unreachable_at_once(tmp_path: Path,
                                                                  kind: str) -> None:
    path = tmp_path / "control.sock"
    if kind == "file":
        path.write_text("")
    else:
        path.mkdir()
    with Client(str(path), timeout=5) as client:
        began = time.monotonic()
        with pytest.raises(Unreachable, match="not a socket"):
            client.status()
        with pytest.raises(Unreachable, match="not a socket"):
            client.restart()
    assert time.monotonic() - began < 1


def test_an_endpoint_libzmq_cannot_take_is_unreachable_not_a_zmq_error() -> None:
    with Client("http://localhost/control", timeout=1) as client, pytest.raises(
        Unreachable, match="not supported"
    ):
        client.status()


def test_a_refused_tcp_port_is_named_after_the_timeout() -> None:
    with Client("tcp://127.0.0.1:1", timeout=0.3, retries=0) as client, pytest.raises(
        Unreachable
    ) as failed:
        client.version()
    assert not isinstance(failed.value, Timeout)
    assert "refused" in str(failed.value)
