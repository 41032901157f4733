"""A ZeroMQ REQ client in plain Python: ZMTP 3.x over a Unix socket, NULL security.

``clawsupctl`` sends every request over it on an ``ipc://`` endpoint, so that it starts
without pyzmq (see clawsup/client/_call.py for why that matters), and says at once when
the socket is not a control socket. It is also a worked example that
a skill can talk to clawsup with nothing but a Unix socket: ZeroMQ's ``ipc://PATH`` is a
stream socket at PATH, and what goes over it is small (RFC 23/ZMTP 3.0, RFC 37/ZMTP 3.1;
docs/protocol.md has the byte-level walk-through)::

    client -> FF 00 00 00 00 00 00 00 01 7F          signature (10 bytes)
              03 01 "NULL" + 16 x 00  00  31 x 00    version 3.1, mechanism, as-server 0
    client <- the server's 64-byte greeting, the same shape
    client -> 04 LEN 05 "READY" 0B "Socket-Type" 00 00 00 03 "REQ"
                             08 "Identity" 00 00 00 00        (a command frame)
    client <- 04 LEN 05 "READY" ... "Socket-Type" ... "ROUTER"
    client -> 01 00                      the REQ delimiter: empty, MORE
              00 LEN {"cmd":"status"}    the request, last frame
    client <- 01 00  then  00 LEN {...}  (or 02 + 8-byte length past 255 bytes)

Only what a REQ socket needs is here: one request and one reply per connection, no
CURVE, no TCP. Errors are ``ConnectFailed`` (the socket file is missing, refused, not
ours to open), ``TimedOut`` (nothing complete arrived by the deadline) and
``ProtocolError`` (the peer does not speak ZMTP 3 as a ROUTER or REP would).
"""

from __future__ import annotations

import socket
import time

# The signature: FF, 8 bytes of padding, 7F. libzmq fills the padding with a big-endian
# 1 (ZMTP 1.0's "identity length + 1"), so that a 1.0 peer reads a valid, empty identity
# and fails cleanly; pyzmq's REQ sends exactly these bytes.
SIGNATURE = b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f"
VERSION = b"\x03\x01"
NULL_MECHANISM = b"NULL".ljust(20, b"\x00")
GREETING = SIGNATURE + VERSION + NULL_MECHANISM + b"\x00" + b"\x00" * 31
GREETING_SIZE = 64

# Frame flags (RFC 23 section "Framing"): the other five bits are reserved, must be zero.
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
# What a REQ may talk to (RFC 28/REQREP): ROUTER is clawsup's, REP any plain server.
PEER_TYPES = frozenset({b"ROUTER", b"REP"})
# A status reply with dozens of programs is a few KiB; this only stops a garbage length
# (the 8-byte size can claim exabytes) from being honoured.
MAX_FRAME = 16 << 20


class ZmtpError(Exception):
    """One request/reply over ZMTP could not be completed."""


class ConnectFailed(ZmtpError):
    """The Unix socket could not be connected to; ``error`` is the OSError."""

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(f"cannot connect to {path}: {error.strerror or error}")
        self.error = error


class TimedOut(ZmtpError):
    """Nothing complete arrived before the deadline."""


class ProtocolError(ZmtpError):
    """The peer is not a ZMTP 3 ROUTER/REP, or broke off mid-conversation."""


def request(path: str, body: bytes, timeout: float) -> bytes:
    """Send ``body`` as a REQ socket at ``ipc://path`` would; return the reply's body.

    ``timeout`` bounds the whole exchange (connect, handshake, request, reply), as the
    receive timeout of a pyzmq REQ bounds its wait.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except TimeoutError as exc:  # a listen backlog full for the whole timeout
            raise TimedOut(f"{path}: no connection within {timeout:g}s") from exc
        except OSError as exc:
            raise ConnectFailed(path, exc) from exc
        conversation = _Conversation(sock, deadline)
        conversation.handshake()
        conversation.send_request(body)
        return conversation.read_reply()
    finally:
        sock.close()


class _Conversation:
    """Reads and writes on one connected socket, every wait bounded by the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = bytearray()

    def handshake(self) -> None:
        # All 64 bytes at once: libzmq sends its signature first and the rest only after
        # it has read ours, but it reads whatever has arrived, so no need to wait.
        self._send(GREETING)
        self._check_greeting(self._read(GREETING_SIZE, "the greeting"))
        self._send(_command(b"READY", [(b"Socket-Type", b"REQ"), (b"Identity", b"")]))
        flags, body = self._read_frame("the READY command")
        if not flags & COMMAND:
            raise ProtocolError("sent a message before its READY command")
        self._check_ready(body)

    def send_request(self, body: bytes) -> None:
        # A REQ puts an empty delimiter frame before the body; clawsup's ROUTER splits
        # the routing envelope from the request there and sends the reply back under it.
        self._send(_frame(b"", MORE) + _frame(body, 0))

    def read_reply(self) -> bytes:
        delimiter = self._read_message_frame()
        if delimiter != (MORE, b""):
            raise ProtocolError("replied without the empty delimiter frame a REQ expects")
        flags, body = self._read_message_frame()
        if flags & MORE:
            raise ProtocolError("replied with more than one frame; a reply is one frame")
        return body

    # -- checks ------------------------------------------------------------------------

    @staticmethod
    def _check_greeting(greeting: bytes) -> None:
        if greeting[0] != 0xFF or greeting[9] != 0x7F:
            raise ProtocolError(f"is not a ZeroMQ peer (it sent {greeting[:10]!r})")
        major, minor = greeting[10], greeting[11]
        if major < 3:
            raise ProtocolError(f"speaks ZMTP {major}.{minor}; this client needs 3.0 or later")
        mechanism = greeting[12:32].rstrip(b"\x00")
        if mechanism != b"NULL":
            raise ProtocolError(
                f"asks for the {mechanism.decode(errors='replace')} security mechanism;"
                " this client speaks NULL only (ipc, no CURVE)"
            )

    @staticmethod
    def _check_ready(body: bytes) -> None:
        name, properties = _parse_command(body)
        if name == b"ERROR":
            reason = properties.get(b"", b"").decode(errors="replace")
            raise ProtocolError(f"refused the handshake: {reason}")
        if name != b"READY":
            raise ProtocolError(f"sent {name!r} where READY was due")
        peer_type = properties.get(b"socket-type")
        if peer_type not in PEER_TYPES:
            kind = (peer_type or b"untyped").decode(errors="replace")
            raise ProtocolError(f"is a {kind} socket; a REQ talks to ROUTER or REP only")

    # -- frames ------------------------------------------------------------------------

    def _read_message_frame(self) -> tuple[int, bytes]:
        while True:
            flags, body = self._read_frame("the reply")
            # A command between messages can only be a ZMTP 3.1 heartbeat (PING), which
            # clawsup does not enable; a one-shot client has nothing to answer it with.
            if not flags & COMMAND:
                return flags, body

    def _read_frame(self, what: str) -> tuple[int, bytes]:
        flags = self._read(1, what)[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ProtocolError(f"sent a frame with reserved flag bits set ({flags:#04x})")
        if flags & LONG:
            size = int.from_bytes(self._read(8, what), "big")
            if size > MAX_FRAME:
                raise ProtocolError(f"announced a frame of {size} bytes (at most {MAX_FRAME})")
        else:
            size = self._read(1, what)[0]
        return flags & (MORE | COMMAND), self._read(size, what)

    def _read(self, size: int, what: str) -> bytes:
        while len(self._buffer) < size:
            self._sock.settimeout(self._remaining())
            try:
                chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            except TimeoutError as exc:
                raise TimedOut(f"no complete reply before the deadline ({what})") from exc
            except ConnectionError as exc:
                raise ProtocolError(f"reset the connection during {what}") from exc
            if not chunk:
                raise ProtocolError(
                    f"closed the connection during {what} "
                    f"({len(self._buffer)} of {size} bytes came)"
                )
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _send(self, data: bytes) -> None:
        self._sock.settimeout(self._remaining())
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise TimedOut("the peer took nothing before the deadline") from exc
        except ConnectionError as exc:
            raise ProtocolError("closed the connection before the request was sent") from exc

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimedOut("the deadline passed")
        return left


def _frame(body: bytes, flags: int) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def _command(name: bytes, properties: list[tuple[bytes, bytes]]) -> bytes:
    body = bytes([len(name)]) + name
    for key, value in properties:
        body += bytes([len(key)]) + key + len(value).to_bytes(4, "big") + value
    return _frame(body, COMMAND)


def _parse_command(body: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """A command's name and its properties (names lower-cased: RFC 23 makes them
    case-insensitive). An ERROR command's reason is kept under the empty name."""
    if not body or len(body) < 1 + body[0]:
        raise ProtocolError("sent a malformed command frame")
    name = body[1 : 1 + body[0]]
    rest = body[1 + body[0] :]
    if name == b"ERROR":
        return name, {b"": rest[1 : 1 + rest[0]] if rest else b""}
    properties: dict[bytes, bytes] = {}
    while rest:
        key_end = 1 + rest[0]
        value_end = key_end + 4
        if len(rest) < value_end:
            raise ProtocolError(f"sent a malformed {name!r} command")
        size = int.from_bytes(rest[key_end:value_end], "big")
        if len(rest) < value_end + size:
            raise ProtocolError(f"sent a malformed {name!r} command")
        properties[rest[1:key_end].lower()] = rest[value_end : value_end + size]
        rest = rest[value_end + size :]
    return name, properties
