"""The control client's implementation; import it as ``clawsup.client``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import zmq

from clawsup.client._endpoint import (
    DEFAULT_TIMEOUT,
    default_endpoint,
    ipc_path,
    normalize_endpoint,
    why_unreachable,
)
from clawsup.client._errors import BadReply, ClawsupError, CommandFailed, Timeout, Unreachable
from clawsup.protocol import (
    IDEMPOTENT_COMMANDS,
    DoneReply,
    ErrorInfo,
    Event,
    HealthReply,
    Incidents,
    IncidentsReply,
    ProgramReply,
    ReloadReply,
    Request,
    Restart,
    ScheduledReply,
    SetModel,
    SetTimezone,
    SettingReply,
    Start,
    Status,
    StatusReply,
    Stop,
    VersionReply,
    encode,
)
from clawsup.protocol import Health as _Health
from clawsup.protocol import Reload as _Reload
from clawsup.protocol import Shutdown as _Shutdown
from clawsup.protocol import Signal as _Signal
from clawsup.protocol import Version as _Version

if TYPE_CHECKING:
    from pathlib import Path


ReplyT = TypeVar("ReplyT", bound=msgspec.Struct)


class _Outcome(msgspec.Struct):
    """Just enough of any reply to tell success from failure."""

    ok: bool
    error: ErrorInfo | None = None


_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
_outcome_decoder = msgspec.json.Decoder(_Outcome)
_event_decoder = msgspec.json.Decoder(Event)
_reply_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _decoder_for(reply_type: type[ReplyT]) -> msgspec.json.Decoder[ReplyT]:
    decoder = _reply_decoders.get(reply_type)
    if decoder is None:
        decoder = _reply_decoders[reply_type] = msgspec.json.Decoder(reply_type)
    return decoder


def events_endpoint_for(control_endpoint: str) -> str:
    """The PUB socket beside an ipc control socket: ``<run_dir>/events.sock``."""
    control_path = ipc_path(control_endpoint)
    if control_path is None:
        raise ClawsupError(
            f"events are published on the ipc socket only; cannot derive it from {control_endpoint}"
        )
    return f"ipc://{os.path.join(os.path.dirname(control_path), 'events.sock')}"


def _load_public_key(key: str | bytes | Path) -> bytes:
    """A CURVE public key: z85 text, or a zmq certificate file (``NAME.key``)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode()
    import zmq.auth

    public, _secret = zmq.auth.load_certificate(key)
    return public


def _load_key_pair(keys: tuple[bytes, bytes] | str | Path) -> tuple[bytes, bytes]:
    """A CURVE (public, secret) pair: as bytes, or from a ``NAME.key_secret`` file."""
    if isinstance(keys, tuple):
        return keys
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys)
    if secret is None:
        raise ClawsupError(f"{keys} holds no secret key: give the .key_secret file")
    return public, secret


class Client:
    """A synchronous connection to the control socket. Not thread-safe: one per thread.

    ``timeout`` bounds each attempt. Commands that are safe to repeat
    (``IDEMPOTENT_COMMANDS``) are sent ``retries`` more times, each on a fresh socket,
    before giving up; the others are sent once, because a reply lost in a timeout may
    belong to a command that was carried out.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        curve_server_key: str | bytes | Path | None = None,
        curve_client_keys: tuple[bytes, bytes] | str | Path | None = None,
        *,
        retries: int = 1,
        events_endpoint: str | None = None,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint) if endpoint else default_endpoint()
        self.timeout = timeout
        self.retries = retries
        self._events_endpoint = events_endpoint
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if curve_server_key is not None:
            if curve_client_keys is None:
                # A throwaway identity: enough for a server that lets any key in.
                curve_client_keys = zmq.curve_keypair()
            public, secret = _load_key_pair(curve_client_keys)
            self._curve = (_load_public_key(curve_server_key), public, secret)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._wait_ms: int | None = None  # the RCVTIMEO set on _sock

    # -- transport ---------------------------------------------------------------------

    def _context(self) -> zmq.Context[zmq.Socket[bytes]]:
        if self._ctx is None:
            self._ctx = zmq.Context()
        return self._ctx

    def _socket(self, wait_ms: int) -> zmq.Socket[bytes]:
        """The REQ socket, its receive timeout set to ``wait_ms``."""
        if self._sock is None:
            sock = self._context().socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            self._apply_curve(sock)
            sock.connect(self.endpoint)
            self._sock, self._wait_ms = sock, None
        if wait_ms != self._wait_ms:
            self._sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._wait_ms = wait_ms
        return self._sock

    def _apply_curve(self, sock: zmq.Socket[bytes]) -> None:
        if self._curve is not None:
            server, public, secret = self._curve
            sock.curve_serverkey = server
            sock.curve_publickey = public
            sock.curve_secretkey = secret

    def _drop_socket(self) -> None:
        # A REQ that sent and got no reply cannot send again: start over with a new one.
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _check_reachable(self) -> None:
        path = ipc_path(self.endpoint)
        if path is not None:
            reason = why_unreachable(path)
            if reason is not None:
                raise Unreachable(self.endpoint, reason)

    def request_raw(self, request: Request, timeout: float | None = None) -> bytes:
        """Send one request and return the reply frame as the supervisor wrote it."""
        timeout = self.timeout if timeout is None else timeout
        path = ipc_path(self.endpoint)
        if path is not None and not os.path.exists(path):
            # Fail at once: an ipc connect to a missing file would only time out.
            raise Unreachable(self.endpoint)
        frame = encode(request)
        attempts = 1 + (self.retries if request.__struct_config__.tag in IDEMPOTENT_COMMANDS else 0)
        wait_ms = round(timeout * 1000)
        for _ in range(attempts):
            sock = self._socket(wait_ms)
            sock.send(frame)
            try:
                # A receive timeout, not poll(): Socket.poll builds a Poller on every
                # call, which was a tenth of a status round trip.
                return sock.recv()
            except zmq.Again:
                self._drop_socket()
        self._check_reachable()
        raise Timeout(self.endpoint, timeout)

    def request(
        self, request: Request, reply_type: type[ReplyT], timeout: float | None = None
    ) -> ReplyT:
        """Send ``request``; return its reply as ``reply_type`` or raise ``ClawsupError``."""
        return self.decode_reply(self.request_raw(request, timeout), reply_type)

    @staticmethod
    def decode_reply(frame: bytes, reply_type: type[ReplyT]) -> ReplyT:
        try:
            outcome = _outcome_decoder.decode(frame)
            if not outcome.ok:
                if outcome.error is None:
                    raise BadReply(f"clawsup replied ok=false without an error: {frame!r:.200}")
                raise CommandFailed(outcome.error.code, outcome.error.message)
            return _decoder_for(reply_type).decode(frame)
        except _DECODE_ERRORS as exc:
            raise BadReply(f"unexpected reply from clawsup ({exc}): {frame!r:.200}") from exc

    # -- commands ------------------------------------------------------------------------

    def status(self) -> StatusReply:
        return self.request(Status(), StatusReply)

    def start(
        self, program: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> ProgramReply:
        return self.request(Start(program=program, wait=wait), ProgramReply, timeout)

    def stop(
        self, program: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> ProgramReply:
        return self.request(Stop(program=program, wait=wait), ProgramReply, timeout)

    def restart(
        self,
        program: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        reason: str | None = None,
    ) -> ProgramReply:
        """Restart ``program`` (the main one by default). With ``wait`` the reply comes
        when it is RUNNING again, which can take longer than the default timeout."""
        return self.request(
            Restart(program=program, wait=wait, reason=reason), ProgramReply, timeout
        )

    def restart_when_idle(
        self,
        program: str | None = None,
        max_wait: float | str | None = None,
        reason: str | None = None,
    ) -> ScheduledReply:
        """Restart ``program`` once it holds no transcript lock (no message in flight), or
        at ``max_wait`` (seconds or "10m"; default 10 minutes). Answered at once; a
        restart already pending is answered with its own schedule, not stacked."""
        return self.request(
            Restart(program=program, when_idle=True, max_wait=max_wait, reason=reason),
            ScheduledReply,
        )

    def signal(self, sig: str | int, program: str | None = None) -> ProgramReply:
        """Send a signal (``"HUP"``, ``"SIGHUP"`` or a number) to a program's group."""
        return self.request(_Signal(signal=str(sig), program=program), ProgramReply)

    def set_model(self, model: str) -> SettingReply:
        return self.request(SetModel(model=model), SettingReply)

    def set_timezone(self, zone: str) -> SettingReply:
        return self.request(SetTimezone(timezone=zone), SettingReply)

    def health(self) -> HealthReply:
        return self.request(_Health(), HealthReply)

    def reload(self, *, dry_run: bool = False) -> ReloadReply:
        """Reload the config: the reply is the plan (what changed, what was done, what
        needs a clawsup restart); with ``dry_run`` the plan only, nothing applied."""
        return self.request(_Reload(dry_run=dry_run), ReloadReply)

    def shutdown(self) -> DoneReply:
        return self.request(_Shutdown(), DoneReply)

    def version(self) -> VersionReply:
        return self.request(_Version(), VersionReply)

    def incidents(self, since: float | None = None, limit: int = 20) -> IncidentsReply:
        """Incident counts and the latest ones; ``since`` is seconds before now."""
        return self.request(Incidents(since=since, limit=limit), IncidentsReply)

    def events(
        self, kinds: Iterable[str] | None = None, timeout: float | None = None
    ) -> Iterator[Event]:
        """Follow the PUB stream, yielding events (of ``kinds``, if given) as they come.

        See ``event_frames``, which this wraps.
        """
        for _frame, event in self.event_frames(kinds, timeout):
            yield event

    def event_frames(
        self, kinds: Iterable[str] | None = None, timeout: float | None = None
    ) -> Iterator[tuple[bytes, Event]]:
        """Follow the PUB stream: each event as published (the raw frame) and decoded.

        Checks first that the supervisor answers, since a SUB would wait silently forever
        on a socket nobody publishes on. ``timeout``, if given, ends the iteration after
        that many seconds without an event. Events published before the subscription is
        connected are not seen (PUB/SUB does not replay).
        """
        self.version()
        wanted = frozenset(kinds) if kinds else None
        endpoint = self._events_endpoint or events_endpoint_for(self.endpoint)
        sub = self._context().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._apply_curve(sub)
        sub.connect(endpoint)
        try:
            while sub.poll(None if timeout is None else round(timeout * 1000), zmq.POLLIN):
                frame = sub.recv()
                try:
                    event = _event_decoder.decode(frame)
                except _DECODE_ERRORS as exc:
                    raise BadReply(f"unexpected event ({exc}): {frame!r:.200}") from exc
                if wanted is None or event.kind in wanted:
                    yield frame, event
        finally:
            sub.close(linger=0)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        self._drop_socket()
        if self._ctx is not None:
            # destroy(), not term(): it also closes an events() SUB socket still open in a
            # generator nobody finished, which term() would wait for forever.
            self._ctx.destroy(linger=0)
            self._ctx = None

    def __del__(self) -> None:
        # A Client dropped without close(): its socket must close before its context is
        # terminated, or the context's own finalizer blocks in term() waiting for the
        # socket, forever (seen as a test run hung inside a garbage collection).
        if self._sock is not None or self._ctx is not None:
            self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
