"""The plain-socket ZMTP client: against libzmq (a real ControlServer, a pyzmq REQ's own
bytes) and against peers that are not what it expects."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from clawsup.client import Client, zmtp
from clawsup.protocol import StatusReply
from tests.fake_control import ServerThread

READY_ROUTER = zmtp._command(b"READY", [(b"Socket-Type", b"ROUTER")])


@contextmanager
def raw_peer(path: Path, behave: Callable[[socket.socket], Any]) -> Iterator[list[bytes]]:
    """A Unix socket server that runs ``behave`` on its one connection; yields what the
    client sent (filled in as the connection ends)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(TimeoutError, ConnectionError):
            behave(conn)  # a client that gave up already: a broken pipe here
            conn.settimeout(0.3)
            while chunk := conn.recv(65536):
                received.append(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        thread.join(5)
        listener.close()


def greeting(version: bytes = b"\x03\x01", mechanism: bytes = b"NULL") -> bytes:
    return zmtp.SIGNATURE + version + mechanism.ljust(20, b"\x00") + b"\x01" + b"\x00" * 31


def ask(path: Path, timeout: float = 2.0) -> bytes:
    return zmtp.request(str(path), b'{"cmd":"status"}', timeout)


# -- against libzmq ---------------------------------------------------------------------


def test_it_gets_what_the_pyzmq_client_gets_from_a_control_server(tmp_path: Path):
    with ServerThread(tmp_path / "run") as server, Client(server.endpoint) as client:
        path = server.endpoint.removeprefix("ipc://")
        reply = zmtp.request(path, b'{"cmd":"status"}', 2)
        assert len(reply) > 255  # a long frame on the way back
        ours = msgspec.json.decode(reply, type=StatusReply)
        theirs = client.status()
        assert (ours.programs[0].name, ours.version) == (theirs.programs[0].name, theirs.version)
        # A long request (8-byte length) reaches the server whole: its error names the size.
        big = b'{"cmd":"status","pad":"' + b"x" * 70_000 + b'"}'
        assert b"over max_request_size" in zmtp.request(path, big, 2)


def test_it_sends_the_bytes_a_pyzmq_req_sends(tmp_path: Path):
    signature: list[bytes] = []

    def handshake(conn: socket.socket) -> None:
        # libzmq sends its signature, then waits for the peer's before the rest.
        signature.append(conn.recv(10))
        conn.sendall(greeting() + READY_ROUTER)

    with raw_peer(tmp_path / "zmq.sock", handshake) as from_pyzmq:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.connect(f"ipc://{tmp_path}/zmq.sock")
        req.send(b'{"cmd":"status"}')
        time.sleep(0.5)
        req.close(linger=0)
        ctx.term()

    def ours(conn: socket.socket) -> None:
        conn.sendall(greeting() + READY_ROUTER)

    with raw_peer(tmp_path / "ours.sock", ours) as from_us, pytest.raises(zmtp.ZmtpError):
        ask(tmp_path / "ours.sock", 1)  # the peer never replies, then hangs up
    assert signature == [zmtp.SIGNATURE]
    assert b"".join(from_us) == zmtp.SIGNATURE + b"".join(from_pyzmq)


# -- against peers that are not what it expects -----------------------------------------


def test_no_such_socket_and_a_refused_one_are_connect_errors(tmp_path: Path):
    with pytest.raises(zmtp.ConnectFailed) as missing:
        ask(tmp_path / "none.sock")
    assert isinstance(missing.value.error, FileNotFoundError)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    try:
        with pytest.raises(zmtp.ConnectFailed) as refused:
            ask(tmp_path / "stale.sock")
    finally:
        stale.close()
    assert isinstance(refused.value.error, ConnectionRefusedError)


@pytest.mark.parametrize(("sent", "words"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64, "is not a ZeroMQ peer"),
    (greeting(version=b"\x02\x00"), "speaks ZMTP 2.0"),
    (greeting(mechanism=b"CURVE"), "CURVE security mechanism"),
    (greeting() + zmtp._command(b"READY", [(b"Socket-Type", b"PUB")]), "is a PUB socket"),
    (greeting() + zmtp._frame(b"\x05ERROR\x04nope", zmtp.COMMAND), "refused the handshake: nope"),
    (greeting() + b"\x00\x02hi", "sent a message before its READY"),
    (greeting() + READY_ROUTER + b"\x00\x05hello", "without the empty delimiter"),
    (greeting() + READY_ROUTER + b"\x01\x00\x01\x01a\x00\x01b", "more than one frame"),
    (greeting() + READY_ROUTER + b"\x01\x00\x02" + (1 << 62).to_bytes(8, "big"), "announced a frame"),
    (greeting() + READY_ROUTER + b"\x81\x00", "reserved flag bits"),
    (greeting()[:30], "closed the connection during the greeting (30 of 64 bytes came)"),
    (greeting() + READY_ROUTER + b"\x01\x00\x00\x10{\"ok\":", "closed the connection during the reply"),
])
def test_a_peer_that_is_not_a_zmtp_router_gets_a_clear_error(
    tmp_path: Path, sent: bytes, words: str
):
    with (
        raw_peer(tmp_path / "odd.sock", lambda conn: conn.sendall(sent)),
        pytest.raises(zmtp.ProtocolError) as error,
    ):
        ask(tmp_path / "odd.sock")
    assert words in str(error.value)


def test_a_peer_that_says_nothing_times_out_within_the_timeout(tmp_path: Path):
    with raw_peer(tmp_path / "mute.sock", lambda conn: time.sleep(1.5)):
        began = time.monotonic()
        with pytest.raises(zmtp.TimedOut):
            ask(tmp_path / "mute.sock", timeout=0.5)
        assert time.monotonic() - began < 1.0


def test_a_peer_dripping_bytes_cannot_stretch_the_deadline(tmp_path: Path):
    def drip(conn: socket.socket) -> None:
        for byte in greeting():
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    with raw_peer(tmp_path / "drip.sock", drip):
        began = time.monotonic()
        with pytest.raises(zmtp.TimedOut):
            ask(tmp_path / "drip.sock", timeout=0.5)
        assert time.monotonic() - began < 1.0


def test_heartbeat_commands_between_frames_are_skipped(tmp_path: Path):
    ping = zmtp._command(b"PING", [])
    sent = greeting() + READY_ROUTER + ping + b"\x01\x00" + ping + zmtp._frame(b"x" * 300, 0)
    with raw_peer(tmp_path / "ping.sock", lambda conn: conn.sendall(sent)):
        assert ask(tmp_path / "ping.sock") == b"x" * 300
