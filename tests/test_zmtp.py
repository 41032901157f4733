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
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup.client import Client, zmtp
from clawsup.client._plain_replies import (
    _REQUIRED,
    BREAKER_STATUS,
    HEALTH_REPLY,
    LAST_EXIT,
    LOG_LINE,
    LOGS_REPLY,
    PROGRAM_STATUS,
    STATUS_REPLY,
    read_health,
    read_status,
)
from clawsup.protocol import (
    BreakerStatus,
    HealthReply,
    LastExit,
    LogLine,
    LogsReply,
    ProgramStatus,
    StatusReply,
)
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
    (greeting() + zmtp._command(b"READY", [(b"Socket-Type", b"PUB")]), "is a b'PUB' socket"),
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


# -- the plain reply readers, held to the typed decoder ----------------------------------


@pytest.mark.parametrize(("plain", "struct"), [
    (LAST_EXIT, LastExit), (BREAKER_STATUS, BreakerStatus), (PROGRAM_STATUS, ProgramStatus),
    (STATUS_REPLY, StatusReply), (HEALTH_REPLY, HealthReply), (LOG_LINE, LogLine),
    (LOGS_REPLY, LogsReply),
])
def test_the_plain_readers_know_every_field_of_the_structs(plain: dict[str, Any], struct: type):
    fields = msgspec.structs.fields(struct)
    assert list(plain) == [f.name for f in fields]
    for field in fields:
        default = plain[field.name][1]
        if field.name == "ok":
            continue  # required by the client's first look at any reply
        if field.required:
            assert default is _REQUIRED, field.name
        else:
            expected = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
            assert (default() if callable(default) else default) == expected, field.name


values = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 65), 1 << 65),
                   st.floats(allow_nan=True), st.text(max_size=5),
                   st.sampled_from(["RUNNING", "failing", "open", "closed", "off"]))
last_exits = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "code": values, "signal": values, "reason": values, "at": values}))
programs = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=8), values), "state": st.text(max_size=8),
     "pid": st.one_of(st.none(), st.integers(0, 1 << 22)), "restarts": st.integers(0, 9),
     "uptime": st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10**6)),
     "last_exit": last_exits},
    optional={"main": values, "hung": st.booleans(), "liveness": values, "next_start_in": values,
              "description": values, "extra": values})
replies = st.fixed_dictionaries(
    {"programs": st.lists(programs, max_size=3), "supervisor_pid": st.integers(1, 1 << 22),
     "supervisor_uptime": st.floats(0, 1e6), "version": st.just("0.1.0")},
    optional={"ok": values, "model": values, "timezone": values, "error": values,
              "breaker": st.one_of(st.none(), st.fixed_dictionaries(
                  {"state": values}, optional={"active_model": values, "failures": values}))})


def typed(frame: bytes, reply_type: type) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = msgspec.to_builtins(Client.decode_reply(frame, reply_type))
    except Exception:  # any refusal: what is compared is whether both refuse
        return None
    return data


@settings(max_examples=400, deadline=None)
@given(replies)
def test_what_the_plain_status_reader_accepts_msgspec_reads_the_same(reply: dict[str, Any]):
    import json

    frame = json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
    plain = read_status(frame)
    if plain is not None:
        assert plain == typed(frame, StatusReply)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"ok": values, "healthy": values, "error": values,
                                           "reasons": st.one_of(values, st.lists(values))}))
def test_what_the_plain_health_reader_accepts_msgspec_reads_the_same(reply: dict[str, Any]):
    import json

    frame = json.dumps(reply).encode()
    plain = read_health(frame)
    if plain is not None:
        assert plain == typed(frame, HealthReply)


def test_the_plain_readers_take_what_clawsup_sends():
    status = StatusReply(programs=[ProgramStatus(name="g", state="RUNNING", pid=1, restarts=0,
                                                 uptime=3, last_exit=LastExit(code=1))],
                         supervisor_pid=1, supervisor_uptime=2, version="0.1.0")
    frame = msgspec.json.encode(status)
    assert read_status(frame) == msgspec.to_builtins(status)
    assert read_health(b'{"ok":true,"healthy":false,"reasons":["x"]}') == {
        "ok": True, "healthy": False, "reasons": ["x"]}
