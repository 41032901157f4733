"""One request and its reply as ``clawsupctl`` sends them: JSON in, checked JSON out.

Light on purpose: ``clawsupctl status`` and ``health`` run every few seconds in probes,
and pyzmq and msgspec would each cost them about as much as the rest of the process
(``python -X importtime``). So a request is encoded with the stdlib json module and, on
an ``ipc://`` endpoint, sent by the ZMTP client in zmtp.py over a plain Unix socket; only
``tcp://`` (CURVE) goes through pyzmq, in ``Client``. The reply is read by ``Reply``:
a field that is missing or of the wrong type is a ``BadReply``, never a traceback.
"""

from __future__ import annotations

import json

from clawsup.client import zmtp
from clawsup.client._endpoint import TCP, ipc_path, unreachable_reason, why_not_a_socket
from clawsup.client._errors import BadReply, CommandFailed, Timeout, Unreachable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms)
if TYPE_CHECKING:
    from typing import Any


REQUIRED: Any = object()  # a field's default: none, it must be there


class Target:
    """Where the supervisor listens, and the CURVE keys for a ``tcp://`` endpoint."""

    def __init__(self, endpoint: str, curve_server_key: str | None = None,
                 curve_client_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.curve_server_key = curve_server_key
        self.curve_client_key = curve_client_key

    def call(self, request: dict[str, Any], timeout: float, retries: int = 0) -> Reply:
        """Send ``request``; its reply, or ClawsupError. ``retries``: how many more times
        to send it after a timeout (only for requests that are safe to repeat)."""
        frame = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
        raw = self._exchange(frame.encode("utf-8", "surrogatepass"), timeout, retries)
        return Reply.of_frame(raw)

    def _exchange(self, frame: bytes, timeout: float, retries: int) -> bytes:
        path = ipc_path(self.endpoint)
        if path is None or self.curve_server_key is not None or path.startswith("@"):
            return self._exchange_zmq(frame, timeout, retries)
        reason = why_not_a_socket(path)
        if reason is not None:
            raise Unreachable(self.endpoint, reason)
        for _ in range(1 + retries):
            try:
                return zmtp.request(path, frame, timeout)
            except zmtp.TimedOut:
                continue
            except zmtp.ConnectFailed as exc:
                raise Unreachable(self.endpoint, unreachable_reason(exc.error, path)) from None
            except zmtp.ProtocolError as exc:
                # The events socket, another program's socket: said at once, not after a
                # timeout spent waiting for an answer that cannot come.
                raise Unreachable(self.endpoint,
                                  f"not a clawsup control socket: the peer {exc}") from None
        raise Timeout(self.endpoint, timeout)

    def _exchange_zmq(self, frame: bytes, timeout: float, retries: int) -> bytes:
        from clawsup.client._client import Client
        from clawsup.client._errors import ClawsupError

        if self.endpoint.startswith(TCP):
            # libzmq would try an unknown host name quietly until the timeout.
            import socket

            host, _, port = self.endpoint[len(TCP):].rpartition(":")
            try:
                socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                raise Unreachable(self.endpoint, f"cannot resolve {host}: {error}") from None

        try:
            client = Client(self.endpoint, timeout, self.curve_server_key,
                            self.curve_client_key, retries=retries)
        except (OSError, ValueError) as error:  # a key file that is missing or no key
            raise ClawsupError(f"cannot use the CURVE keys: {error}") from None
        with client:
            return client.request_frame(frame, retries)


class Reply:
    """A successful reply's JSON object, read field by field with the type expected."""

    def __init__(self, data: dict[str, Any], frame: bytes) -> None:
        self.data = data
        self.frame = frame

    @classmethod
    def of_frame(cls, frame: bytes) -> Reply:
        """The reply in ``frame``; CommandFailed for ``{"ok": false, ...}``, BadReply for
        anything that is not a reply."""
        try:
            # Decoded here, not by json.loads(bytes), which would also take UTF-16 and -32.
            data = json.loads(frame.decode())
        except ValueError as exc:  # not UTF-8, not JSON
            raise BadReply(f"unexpected reply from clawsup ({exc}): {frame!r:.200}") from None
        if type(data) is not dict:
            raise BadReply(f"unexpected reply from clawsup (not an object): {frame!r:.200}")
        reply = cls(data, frame)
        if data.get("ok") is True and data.get("error") is None:
            return reply
        error = reply.object("error") if data.get("ok") is False else None
        if error is None:
            raise BadReply(f"unexpected reply from clawsup (no ok, or ok without error): "
                           f"{frame!r:.200}")
        raise CommandFailed(error.text("code"), error.text("message"))

    def field(self, name: str, kinds: tuple[type, ...], default: Any = REQUIRED) -> Any:
        value = self.data.get(name, default)
        if value is REQUIRED:
            raise BadReply(f"unexpected reply from clawsup (no {name!r}): {self.frame!r:.200}")
        # By type, not isinstance: True is an int, and a bool where a count is due is wrong.
        if type(value) not in kinds and not (value is None and default is None):
            raise BadReply(f"unexpected reply from clawsup ({name!r} is "
                           f"{type(value).__name__}): {self.frame!r:.200}")
        return value

    def text(self, name: str, default: Any = REQUIRED) -> str:
        value: str = self.field(name, (str,), default)
        return value

    def optional_text(self, name: str) -> str | None:
        value: str | None = self.field(name, (str,), None)
        return value

    def flag(self, name: str, default: Any = REQUIRED) -> bool:
        value: bool = self.field(name, (bool,), default)
        return value

    def integer(self, name: str, default: Any = REQUIRED) -> int | None:
        value: int | None = self.field(name, (int,), default)
        return value

    def number(self, name: str, default: Any = REQUIRED) -> float | None:
        value: float | None = self.field(name, (int, float), default)
        return value

    def texts(self, name: str) -> list[str]:
        values: list[Any] = self.field(name, (list,), [])
        if any(type(value) is not str for value in values):
            raise BadReply(f"unexpected reply from clawsup ({name!r} holds a non-text): "
                           f"{self.frame!r:.200}")
        return values

    def object(self, name: str) -> Reply | None:
        value = self.field(name, (dict,), None)
        return None if value is None else Reply(value, self.frame)

    def objects(self, name: str) -> list[Reply]:
        values: list[Any] = self.field(name, (list,))
        if any(type(value) is not dict for value in values):
            raise BadReply(f"unexpected reply from clawsup ({name!r} holds a non-object): "
                           f"{self.frame!r:.200}")
        return [Reply(value, self.frame) for value in values]
