"""The control server: a ZeroMQ ROUTER for requests and a PUB for events.

Owned by the supervisor's asyncio loop. The loop builds one, starts it, publishes events
through it and closes it on the way out::

    server = ControlServer(run_dir, handler, max_request_size=1 << 20,
                           tcp_endpoint=None, curve_secret_key_file=None,
                           curve_authorized_keys_dir=None)
    await server.start()          # raises ControlServerError if it cannot serve
    server.publish(Event(...))    # from the loop thread; never blocks, never raises
    await server.close()

``handler`` receives one decoded ``Request`` and returns one ``Reply``; each request runs
as its own task, so a ``restart`` that answers only once the program is RUNNING again
never holds up a ``status`` from another client. Bad frames are answered here with an
``ErrorReply`` and never reach the handler; a handler that raises is answered with
``internal`` and logged, and the server carries on.

Who owns ``run_dir``: ``clawsup.pid`` in it is held with ``flock`` for the server's whole
life and holds our PID. The kernel drops the lock when the process dies, however it dies,
so a lock we can take means the sockets beside it are stale; PID reuse cannot fool it
(after a container restart the new clawsup is PID 1 again, like the dead one). The lock
file is opened close-on-exec, so the programs we exec never inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

if TYPE_CHECKING:
    import zmq.auth.asyncio

from clawsup.protocol import (
    BAD_REQUEST,
    COMMANDS,
    FAILED,
    INTERNAL,
    TOO_LARGE,
    UNKNOWN_COMMAND,
    ErrorReply,
    Event,
    Reply,
    Request,
    decode_request,
    encode,
    error_reply,
)

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
EVENTS_SOCKET = "events.sock"
PID_FILE = "clawsup.pid"

Handler = Callable[[Request], Awaitable[Reply]]
# Answers a request at once, or returns None to have ``Handler`` run it as a task. For
# commands that never wait (status, health, version): no task, no extra loop pass.
QuickHandler = Callable[[Request], Reply | None]

# sun_path is 108 bytes including the NUL; libzmq's own error for longer paths is vague.
_MAX_IPC_PATH = 107
# Replies already queued when we close get this long to reach their clients.
_CLOSE_LINGER_MS = 200
# Frames up to this many times max_request_size are read and answered "too_large";
# larger ones are dropped by libzmq with their peer.
HARD_LIMIT_FACTOR = 16
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


class ControlServerError(Exception):
    """The control server cannot start: an unsafe run_dir, a bad key, a bind failure."""


class AnotherSupervisorRunning(ControlServerError):
    """A live clawsup holds run_dir's lock."""

    def __init__(self, pid: int | None, run_dir: Path) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another clawsup is running ({who}) with run_dir {run_dir}")
        self.pid = pid
        self.run_dir = run_dir


def prepare_run_dir(run_dir: Path) -> None:
    """Make ``run_dir`` a 0700 directory of ours, or refuse.

    Checked through an O_NOFOLLOW descriptor so the directory cannot be swapped for a
    symlink between the check and the chmod.
    """
    with contextlib.suppress(FileExistsError):
        run_dir.mkdir(mode=0o700, parents=True)
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if run_dir.is_symlink() else "not a directory"
            raise ControlServerError(f"refusing run_dir {run_dir}: it is {kind}") from exc
        raise ControlServerError(f"cannot open run_dir {run_dir}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ControlServerError(
                f"refusing run_dir {run_dir}: owned by uid {st.st_uid}, not by us "
                f"(uid {os.geteuid()})"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            log.info("run_dir %s had mode %o, setting 0700", run_dir, stat.S_IMODE(st.st_mode))
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


class RunDirLock:
    """``clawsup.pid`` in run_dir, flock-ed while we serve (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AnotherSupervisorRunning(pid, self.path.parent) from None
            # The previous owner may have unlinked the file between our open and our
            # flock: then we hold a lock on an orphan inode and must try again.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so nobody can lock the file we are leaving.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _request_error(frame: bytes, exc: Exception) -> ErrorReply:
    """Say precisely what is wrong with a frame the typed decoder refused.

    Only the error path pays for this second, untyped parse.
    """
    try:
        value = msgspec.json.decode(frame)
    except _DECODE_ERRORS as parse_error:
        return error_reply(BAD_REQUEST, f"request is not UTF-8 JSON: {parse_error}")
    if not isinstance(value, dict):
        return error_reply(
            BAD_REQUEST,
            f'request must be a JSON object like {{"cmd": "status"}}, got {value!r:.60}',
        )
    if "cmd" not in value:
        return error_reply(BAD_REQUEST, 'request has no "cmd"')
    cmd = value["cmd"]
    if not isinstance(cmd, str):
        return error_reply(BAD_REQUEST, f'"cmd" must be a string, got {cmd!r:.60}')
    if cmd not in COMMANDS:
        return error_reply(
            UNKNOWN_COMMAND, f"unknown command {cmd!r:.60}; known: {', '.join(COMMANDS)}"
        )
    return error_reply(BAD_REQUEST, f"bad {cmd} request: {exc}")


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Routing envelope and body of what a ROUTER received.

    A REQ peer's message is [identity, b"", body...]; a DEALER may leave out the empty
    delimiter: [identity, body...]. The reply goes back with the same envelope.
    """
    for i in range(1, len(frames)):
        if frames[i] == b"":
            return frames[: i + 1], frames[i + 1 :]
    return frames[:1], frames[1:]


def _load_secret_key(path: Path) -> bytes:
    """A CURVE secret key from a zmq certificate file or a file holding just the z85 key."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ControlServerError(
            f"cannot read curve_secret_key_file {path}: {exc.strerror}"
        ) from exc
    if st.st_mode & 0o077:
        raise ControlServerError(
            f"refusing curve_secret_key_file {path}: mode {stat.S_IMODE(st.st_mode):o} lets "
            "others read it (chmod 600)"
        )
    text = path.read_bytes().strip()
    if len(text) == 40 and b"\n" not in text:
        secret: bytes | None = text
    else:
        from zmq.auth import load_certificate

        try:
            _public, secret = load_certificate(path)
        except ValueError as exc:
            raise ControlServerError(f"cannot load curve_secret_key_file {path}: {exc}") from exc
    if secret is None:
        raise ControlServerError(
            f"curve_secret_key_file {path} holds no secret key (is it the .key public half?)"
        )
    try:
        zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError) as exc:
        raise ControlServerError(f"curve_secret_key_file {path}: not a z85 CURVE key") from exc
    return secret


class ControlServer:
    """Serve the control protocol on ``ipc://<run_dir>/control.sock`` (+ optional CURVE TCP)
    and publish events on ``ipc://<run_dir>/events.sock``."""

    def __init__(
        self,
        run_dir: Path,
        handler: Handler,
        *,
        max_request_size: int,
        tcp_endpoint: str | None = None,
        curve_secret_key_file: str | None = None,
        curve_authorized_keys_dir: str | None = None,
        quick: QuickHandler | None = None,
    ) -> None:
        if tcp_endpoint is not None and (
            curve_secret_key_file is None or curve_authorized_keys_dir is None
        ):
            raise ControlServerError(
                f"refusing TCP control endpoint {tcp_endpoint} without CURVE: it needs both "
                "curve_secret_key_file and curve_authorized_keys_dir"
            )
        self.run_dir = Path(run_dir)
        self.control_path = self.run_dir / CONTROL_SOCKET
        self.events_path = self.run_dir / EVENTS_SOCKET
        self._handler = handler
        self._quick = quick
        self._max_request_size = max_request_size
        self._tcp_endpoint = tcp_endpoint
        self._curve_secret_key_file = curve_secret_key_file
        self._curve_authorized_keys_dir = curve_authorized_keys_dir
        self._lock = RunDirLock(self.run_dir)
        self._ctx: zmq.asyncio.Context | None = None
        self._routers: list[zmq.Socket[bytes]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._auth: zmq.auth.asyncio.AsyncioAuthenticator | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self.tcp_endpoint: str | None = None  # as bound, with the real port

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.control_path}"

    @property
    def events_endpoint(self) -> str:
        return f"ipc://{self.events_path}"

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        return len(self._requests)

    async def start(self) -> None:
        for path in (self.control_path, self.events_path):
            if len(os.fsencode(path)) > _MAX_IPC_PATH:
                raise ControlServerError(
                    f"socket path {path} is longer than {_MAX_IPC_PATH} bytes (sun_path limit)"
                )
        curve_secret = self._check_curve_files()  # a bad key fails before anything is bound
        prepare_run_dir(self.run_dir)
        self._lock.acquire()
        try:
            self._open_sockets(curve_secret)
        except BaseException:
            ctx = self._close_sockets()
            if ctx is not None:
                ctx.term()
            self._remove_socket_files()
            self._lock.release()
            raise
        self._started = True
        self._closing = False
        self._loop = asyncio.get_running_loop()
        for router in self._routers:
            self._loop.add_reader(router.fileno(), self._drain, router)
            # Requests may have queued between bind and add_reader; the FD would not
            # signal them again.
            self._drain(router)
        log.info("control socket %s, events %s", self.control_endpoint, self.events_endpoint)

    def _check_curve_files(self) -> bytes | None:
        if self._tcp_endpoint is None:
            return None
        assert self._curve_secret_key_file is not None
        assert self._curve_authorized_keys_dir is not None
        secret = _load_secret_key(Path(self._curve_secret_key_file))
        keys_dir = Path(self._curve_authorized_keys_dir)
        if not keys_dir.is_dir():
            raise ControlServerError(f"curve_authorized_keys_dir {keys_dir} is not a directory")
        return secret

    def _open_sockets(self, curve_secret: bytes | None) -> None:
        ctx = self._ctx = zmq.asyncio.Context()
        router = self._router()
        self._bind_ipc(router, self.control_path)
        # A plain (blocking-API) socket: publish() only ever sends with NOBLOCK.
        pub: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.PUB)
        self._pub = pub
        pub.setsockopt(zmq.LINGER, 0)
        self._bind_ipc(pub, self.events_path)
        if self._tcp_endpoint is not None and curve_secret is not None:
            self._open_tcp(self._tcp_endpoint, curve_secret)

    def _router(self) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        # Plain sockets driven by loop.add_reader rather than zmq.asyncio's futures: half
        # the latency per request, and replies are sent without awaiting (a ROUTER never
        # blocks on send: an unroutable or full peer's reply is dropped).
        router: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.ROUTER)
        # Two limits. A frame over max_request_size is answered "too_large" (DESIGN §4: an
        # oversized frame gets an error reply, not a hang). One over HARD_LIMIT_FACTOR times
        # that is dropped by libzmq with its peer while it is read, before it is buffered:
        # the memory bound a hostile client cannot push past.
        router.setsockopt(zmq.MAXMSGSIZE, self._max_request_size * HARD_LIMIT_FACTOR)
        router.setsockopt(zmq.LINGER, _CLOSE_LINGER_MS)
        self._routers.append(router)
        return router

    def _bind_ipc(self, sock: zmq.Socket[Any], path: Path) -> None:
        # libzmq unlinks whatever is at the path before binding, so only call this while
        # holding the run_dir lock: the file there is a dead supervisor's.
        #
        # bind() creates the socket file with mode 0777 & ~umask and we chmod it to 0600
        # just after; in between, a looser umask would leave it open to others. The umask
        # of 077 closes that window (bind runs in this thread, so it applies), and the
        # 0700 run_dir keeps others out even if it were open. umask is process-wide: other
        # threads creating files in these microseconds would get 0600/0700 too, which is
        # only ever stricter.
        old_umask = os.umask(0o077)
        try:
            sock.bind(f"ipc://{path}")
        except zmq.ZMQError as exc:
            raise ControlServerError(f"cannot bind ipc://{path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    def _open_tcp(self, endpoint: str, secret: bytes) -> None:
        assert self._ctx is not None
        # Imported only for a TCP endpoint: the ipc-only supervisor (the usual one) has
        # no use for zmq.auth and its certificate code.
        from zmq.auth.asyncio import AsyncioAuthenticator

        self._auth = AsyncioAuthenticator(self._ctx, log=log)
        self._auth.start()
        self.reload_authorized_keys()
        router = self._router()
        router.curve_server = True
        router.curve_secretkey = secret
        router.curve_publickey = zmq.curve_public(secret)
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ControlServerError(f"cannot bind {endpoint}: {exc}") from exc
        self.tcp_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def reload_authorized_keys(self) -> int:
        """Re-read the CURVE client public keys (``*.key``); returns how many there are."""
        if self._auth is None or self._curve_authorized_keys_dir is None:
            return 0
        self._auth.configure_curve(domain="*", location=self._curve_authorized_keys_dir)
        count = len(self._auth.certs.get("*", {}))
        log.info("CURVE: %d authorized client key(s) in %s", count, self._curve_authorized_keys_dir)
        return count

    def _drain(self, router: zmq.Socket[bytes]) -> None:
        """Take every queued request off ``router``: answer it at once when the quick
        handler can (or it is malformed), else in a task of its own.

        The ZeroMQ FD is edge-triggered: it signals a change, not a level. So read until
        EAGAIN here, and call this again after every send, which can swallow the edge.
        """
        while not self._closing:  # nothing new starts once close() has begun
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("control socket receive failed: %s", exc)
                return
            envelope, body = _split_envelope(frames)
            decoded = self._decode(body)
            if isinstance(decoded, bytes):
                self._send_frames(router, [*envelope, decoded])
                continue
            quick = self._quick_reply(decoded)
            if quick is not None:
                # Sent from inside this loop: it keeps reading until EAGAIN, so the edge a
                # send may swallow is not lost.
                self._send_frames(router, [*envelope, quick])
                continue
            task = asyncio.create_task(self._answer(router, envelope, decoded))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    def _send_frames(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        if router.closed:
            return
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("cannot send a control reply: %s", exc)

    def _send(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        """Send from a task: then read what the send's swallowed edge may be hiding."""
        self._send_frames(router, frames)
        self._drain(router)

    async def _answer(self, router: zmq.Socket[bytes], envelope: list[bytes],
                      request: Request) -> None:
        try:
            reply = await self._handled(request)
        except asyncio.CancelledError:
            # close() is tearing us down mid-request (a restart still waiting): tell the
            # client rather than let it wait out its timeout.
            self._send(router, [*envelope, encode(error_reply(FAILED, "clawsup is shutting down"))])
            raise
        self._send(router, [*envelope, reply])

    def _decode(self, body: list[bytes]) -> Request | bytes:
        """The request, or the encoded error reply for a frame that is not one."""
        if len(body) != 1:
            return encode(
                error_reply(BAD_REQUEST, f"a request is exactly one frame, got {len(body)}")
            )
        frame = body[0]
        if len(frame) > self._max_request_size:
            return encode(error_reply(
                TOO_LARGE,
                f"request of {len(frame)} bytes is over max_request_size "
                f"({self._max_request_size} bytes)",
            ))
        try:
            return decode_request(frame)
        except _DECODE_ERRORS as exc:
            return encode(_request_error(frame, exc))

    def _quick_reply(self, request: Request) -> bytes | None:
        if self._quick is None:
            return None
        try:
            reply = self._quick(request)
        except Exception as exc:  # a handler bug must not take the control socket down
            log.exception("control handler failed on %r", request)
            return encode(error_reply(INTERNAL, f"{type(exc).__name__}: {exc}"))
        return None if reply is None else encode(reply)

    async def _handled(self, request: Request) -> bytes:
        try:
            return encode(await self._handler(request))
        except Exception as exc:  # a handler bug must not take the control socket down
            log.exception("control handler failed on %r", request)
            return encode(error_reply(INTERNAL, f"{type(exc).__name__}: {exc}"))

    def publish(self, event: Event) -> None:
        """Send ``event`` to the subscribers, if any. Call from the loop's thread.

        PUB never blocks: with no subscriber, or one too slow (high-water mark), the event
        is dropped. Nothing here raises into the loop.
        """
        if self._pub is None:
            log.debug("event %s not published: control server not running", event.kind)
            return
        try:
            self._pub.send(encode(event), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("cannot publish event %s: %s", event.kind, exc)
        except TypeError as exc:  # msgspec: a value in event.data it cannot encode
            log.warning("cannot encode event %s: %s", event.kind, exc)

    async def close(self) -> None:
        """Stop serving, answer in-flight requests with ``failed``, remove our files."""
        if not self._started:
            return  # the files in run_dir, if any, are not ours
        self._started = False
        self._closing = True
        if self._loop is not None:
            for router in self._routers:
                self._loop.remove_reader(router.fileno())
        requests = list(self._requests)
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        ctx = self._close_sockets()
        if ctx is not None:
            # term() waits up to the linger for queued replies; not on the loop's thread.
            await asyncio.to_thread(ctx.term)
        self._remove_socket_files()
        self._lock.release()

    def _remove_socket_files(self) -> None:
        # libzmq unlinks an ipc socket file when its listener closes, but asynchronously
        # in its I/O thread; do it here so nothing is left once we return.
        for path in (self.control_path, self.events_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _close_sockets(self) -> zmq.asyncio.Context | None:
        """Close what _open_sockets opened; the context is the caller's to term."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        for router in self._routers:
            router.close()
        self._routers = []
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        ctx, self._ctx = self._ctx, None
        return ctx
