"""The control client's implementation; import it as ``clawsup.client``."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
import zmq

from clawsup.client._endpoint import (
    DEFAULT_TIMEOUT,
    default_endpoint,
    ipc_path,
    normalize_endpoint,
    why_not_a_socket,
    why_tcp_unreachable,
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
    LogLine,
    Logs,
    LogsReply,
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


class _LogEventData(msgspec.Struct):
    """A ``log`` event's data: lines numbered from ``seq`` on, all of one read."""

    seq: int
    ts: float
    stream: Literal["stdout", "stderr"]
    pid: int
    lines: list[str]


_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
_outcome_decoder = msgspec.json.Decoder(_Outcome)
_event_decoder = msgspec.json.Decoder(Event)
# While following, how often to look whether the supervisor is still there when nothing
# arrives: the socket monitor says so at once, this is for a peer that never connected.
_GONE_CHECK_MS = 1000
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
        # First: __del__ looks at them even when a key below cannot be loaded.
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._wait_ms: int | None = None  # the RCVTIMEO set on _sock
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if curve_server_key is not None:
            if curve_client_keys is None:
                # A throwaway identity: enough for a server that lets any key in.
                curve_client_keys = zmq.curve_keypair()
            public, secret = _load_key_pair(curve_client_keys)
            self._curve = (_load_public_key(curve_server_key), public, secret)

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
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as error:  # an endpoint libzmq cannot parse
                sock.close(linger=0)
                raise Unreachable(self.endpoint, error.strerror) from None
            self._sock, self._wait_ms = sock, None
        if wait_ms != self._wait_ms:
            self._sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._wait_ms = wait_ms
        return self._sock

    def _apply_curve(self, sock: zmq.Socket[bytes]) -> None:
        if self._curve is not None:
            server, public, secret = self._curve
            try:
                sock.curve_serverkey = server
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            except zmq.ZMQError as error:  # EINVAL: not a 40-character z85 key
                sock.close(linger=0)
                raise ClawsupError(f"not a CURVE key ({error}): give the z85 text of "
                                   "one or its .key file") from None

    def _drop_socket(self) -> None:
        # A REQ that sent and got no reply cannot send again: start over with a new one.
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _check_reachable(self) -> None:
        """After a timeout: Unreachable, with the reason, if nothing accepts a connection
        at the endpoint (libzmq retries a refused connect quietly until then)."""
        path = ipc_path(self.endpoint)
        reason = why_unreachable(path) if path is not None else why_tcp_unreachable(self.endpoint)
        if reason is not None:
            raise Unreachable(self.endpoint, reason)

    def request_raw(self, request: Request, timeout: float | None = None) -> bytes:
        """Send one request and return the reply frame as the supervisor wrote it."""
        idempotent = request.__struct_config__.tag in IDEMPOTENT_COMMANDS
        return self.request_frame(encode(request), self.retries if idempotent else 0, timeout)

    def request_frame(self, frame: bytes, retries: int, timeout: float | None = None) -> bytes:
        """Send one request frame, again up to ``retries`` times on a fresh socket after a
        timeout; return the reply frame."""
        timeout = self.timeout if timeout is None else timeout
        path = ipc_path(self.endpoint)
        if path is not None:
            # Fail at once: an ipc connect to a missing file (or to a regular file, a
            # directory) would only time out.
            reason = why_not_a_socket(path)
            if reason is not None:
                raise Unreachable(self.endpoint, reason)
        wait_ms = round(timeout * 1000)
        for _ in range(1 + retries):
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

    def logs(self, program: str | None = None, lines: int = 20,
             after: int | None = None) -> LogsReply:
        """The last ``lines`` lines ``program`` (the main one by default) printed on
        stdout and stderr, oldest first; with ``after``, only those whose seq is above."""
        return self.request(Logs(program=program, lines=lines, after=after), LogsReply)

    def follow_logs(self, program: str | None = None,
                    lines: int = 20) -> Generator[LogLine, None, None]:
        """The last ``lines`` lines, then each new one as it is printed, until the
        supervisor goes away (the iteration ends).

        Subscribes before asking for the tail, and numbers (``seq``) tell what was seen:
        a line is never given twice, and lines a slow subscription missed are asked for.
        """
        subscription = self._subscribe(["log"], until_gone=True)
        try:
            reply = self.logs(program, lines)
        except BaseException:
            subscription.close()
            raise
        name = reply.program
        last = 0
        for line in reply.lines:
            last = line.seq
            yield line
        for _frame, event in subscription.frames(None):
            if event.program != name:
                continue
            new = _lines_of(event)
            if new and new[0].seq > last + 1 and last:
                for line in self.logs(name, new[0].seq - last - 1, after=last).lines:
                    last = line.seq
                    yield line
            for line in new:
                if line.seq > last:
                    last = line.seq
                    yield line

    def events(
        self, kinds: Iterable[str] | None = None, timeout: float | None = None
    ) -> Iterator[Event]:
        """Follow the PUB stream, yielding events (of ``kinds``, if given) as they come.

        See ``event_frames``, which this wraps.
        """
        for _frame, event in self.event_frames(kinds, timeout):
            yield event

    def event_frames(
        self, kinds: Iterable[str] | None = None, timeout: float | None = None,
        *, until_gone: bool = False,
    ) -> Iterator[tuple[bytes, Event]]:
        """Follow the PUB stream: each event as published (the raw frame) and decoded.

        Checks first that the supervisor answers, since a SUB would wait silently forever
        on a socket nobody publishes on. ``timeout``, if given, ends the iteration after
        that many seconds without an event. Events published before the subscription is
        connected are not seen (PUB/SUB does not replay). With ``until_gone``, the
        iteration also ends when the supervisor closes its events socket (it shuts
        down, or dies), once the events it sent before are read.
        """
        subscription = self._subscribe(kinds, until_gone)
        yield from subscription.frames(timeout)

    def _subscribe(self, kinds: Iterable[str] | None, until_gone: bool) -> _Subscription:
        self.version()
        endpoint = self._events_endpoint or events_endpoint_for(self.endpoint)
        sub = self._context().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._apply_curve(sub)
        monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED) if until_gone else None
        sub.connect(endpoint)
        return _Subscription(sub, monitor, ipc_path(endpoint), kinds)

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


def _lines_of(event: Event) -> list[LogLine]:
    try:
        data = msgspec.convert(event.data, _LogEventData)
    except msgspec.ValidationError as exc:
        raise BadReply(f"unexpected log event ({exc}): {event.data!r:.200}") from exc
    return [LogLine(seq=data.seq + offset, ts=data.ts, stream=data.stream, pid=data.pid,
                    text=text) for offset, text in enumerate(data.lines)]


def _decode_event(frame: bytes) -> Event:
    try:
        return _event_decoder.decode(frame)
    except _DECODE_ERRORS as exc:
        raise BadReply(f"unexpected event ({exc}): {frame!r:.200}") from exc


class _Subscription:
    """A connected SUB socket, read by ``frames``, which closes it when done. With a
    ``monitor`` (EVENT_DISCONNECTED) it ends when the publisher goes away."""

    def __init__(self, sub: zmq.Socket[bytes], monitor: zmq.Socket[bytes] | None,
                 path: str | None, kinds: Iterable[str] | None) -> None:
        self._sub = sub
        self._monitor = monitor
        self._path = path
        self._wanted = frozenset(kinds) if kinds else None

    def frames(self, timeout: float | None) -> Iterator[tuple[bytes, Event]]:
        sub, monitor = self._sub, self._monitor
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        idle_ms = None if timeout is None else round(timeout * 1000)
        quiet_since = time.monotonic()
        try:
            while True:
                wait = idle_ms
                if wait is not None:
                    wait = max(0, wait - round((time.monotonic() - quiet_since) * 1000))
                if monitor is not None:
                    wait = _GONE_CHECK_MS if wait is None else min(wait, _GONE_CHECK_MS)
                ready = dict(poller.poll(wait))
                if sub in ready:
                    yield from self._take(zmq.NOBLOCK)
                    quiet_since = time.monotonic()
                    continue
                if monitor is not None and (monitor in ready or self._gone()):
                    # What it published before it went is queued here still.
                    yield from self._take(zmq.NOBLOCK)
                    return
                if idle_ms is not None and time.monotonic() - quiet_since >= idle_ms / 1000:
                    return
        finally:
            self.close()

    def _take(self, flags: int) -> Iterator[tuple[bytes, Event]]:
        """Every frame queued now."""
        while True:
            try:
                frame = self._sub.recv(flags)
            except zmq.Again:
                return
            event = _decode_event(frame)
            if self._wanted is None or event.kind in self._wanted:
                yield frame, event

    def _gone(self) -> bool:
        """Its socket file is gone (the supervisor removes it on the way out): for a
        publisher that went away before our connection was made, which the monitor
        cannot report."""
        return self._path is not None and not os.path.exists(self._path)

    def close(self) -> None:
        if self._monitor is not None:
            if not self._sub.closed:  # Client.close() may have closed every socket
                self._sub.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._sub.close(linger=0)
