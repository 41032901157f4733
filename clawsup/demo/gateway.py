"""The demo gateway: behaves like the Clawdbot gateway, and fails the way it fails, on command.

clawsup's tests, its benchmark and ``clawsup demo`` need a gateway that writes the same
files, takes the same locks, logs the same lines and reacts to signals the same way as the
real Node.js one, and that can be told to break in each of the ways the real one breaks in
production. Everything it does is deterministic and logged, one line per action.

Command line::

    python -m clawsup.demo.gateway [--home DIR] [--port N] [--bind HOST] [--control DIR]
                                   [--shutdown-grace SECONDS]

``--home`` defaults to ``~/.clawdbot``; ``--port`` to 18789 (0 picks a free port);
``--bind`` to 127.0.0.1 (``loopback`` and ``lan`` mean 127.0.0.1 and 0.0.0.0, as for the
real gateway); ``--control`` to ``<home>/.demo-control``; ``--shutdown-grace`` to 5 s, the
real gateway's forced-exit delay (tests shorten it).

What it does like the real gateway
----------------------------------
- Process title ``clawdbot-gateway``: ``/proc/<pid>/comm`` holds the kernel's 15-byte
  truncation ``clawdbot-gatewa`` (as with the real one) and ``/proc/<pid>/cmdline`` the full
  title, so ``pgrep -f clawdbot-gateway`` and ``psutil.Process.name()`` find it.
- HTTP on the port: any ``GET`` answers 200 with ``{"pid", "uptime", "model", "timezone",
  "messages", "lockFailures", "locksHeld"}``. The answer comes from an asyncio loop in the
  only thread, so a wedged loop answers nothing while the kernel still accepts TCP
  connections into the listen backlog -- the reason a TCP probe cannot see a wedged gateway.
- Config ``<home>/clawdbot.json`` (or ``$CLAWDBOT_CONFIG_PATH``), JSON5. It reads
  ``agents.defaults.model.primary`` and ``agents.defaults.userTimezone``, checks the file
  every 200 ms and logs ``config reloaded: model=... timezone=...`` after a change; a file
  that does not parse or has the wrong shape (or an unknown zone) is ignored with a log line.
- Sessions in ``<home>/agents/main/sessions/<sessionId>.jsonl``: a ``{"type":"session",
  "version":3,...}`` header, then ``{"type":"message",...}`` lines; ``sessions.json`` is the
  index (updated under ``sessions.json.lock`` = ``{"pid", "startedAt"}``, stale after 30 s).
  Without a session id a command uses the index's ``agent:main:main`` session; a new id gets
  the index key ``agent:main:demo:<sessionId>``.
- Transcript lock ``<sessionId>.jsonl.lock``, created with O_EXCL, content
  ``{"pid": <pid>, "createdAt": "<UTC ISO-8601 with ms>Z"}`` pretty-printed with two spaces,
  held while a message is processed. A run that finds a lock waits up to 10 s, then logs
  ``session file locked (timeout 10000ms): pid=<pid> <lock path>`` and counts a failure.
  Unlike the newest gateways it does not second-guess the holder: any lock it did not take
  itself blocks it. That is the real gateway's behaviour whenever ``kill(pid, 0)`` succeeds
  -- for instance after a container restart gave it the dead owner's PID -- and it makes
  the orphan-lock scenarios happen whatever PIDs are alive on the machine.
- SIGTERM, SIGINT, SIGQUIT: stop accepting, let running messages finish, remove its locks
  and the ready file, exit 0. A message that does not finish within the grace (5 s) is
  abandoned and the gateway exits 0 anyway, as the real one forces its exit. The handlers
  run on the event loop: a wedged loop or a D state postpones them. SIGKILL leaves locks,
  and so does SIGHUP, which keeps its default action (the process dies) as in Node.
- ``<control>/ready`` holds the pid once it listens (a stale one is removed at start);
  ``<control>/port`` holds the port. Log lines go to stdout, timestamped in local time
  (``TZ`` is honoured), e.g. ``... [gateway] listening on 127.0.0.1:18789 pid=123``.

Commands
--------
``crash [CODE]``
    ``_exit(CODE)`` (default 1) at once: locks, ready file and children are left behind.
``message [SESSION_ID]``
    Process one message: take the lock, append a user line and an assistant line (naming
    the configured model), update the index, release the lock.
``message-slow SECONDS [SESSION_ID]``
    The same, holding the lock SECONDS between the two lines.
``hold-lock [SESSION_ID]``
    A stuck message: take the lock, append the user line, never answer. The rest of the
    gateway keeps working.
``grow-session [SESSION_ID] MB``
    Append user lines with inline base64 images (512 KiB each) until the transcript is
    larger than MB x 2**20 bytes (fractions allowed), under the lock.
``dstate [SECONDS]``
    Real uninterruptible sleep (state D) for SECONDS (default: forever); see below.
``wedge [SECONDS]``
    Block the event loop (``time.sleep`` in its thread) for SECONDS (default: forever).
``zombies N``
    Fork N children that exit at once and are never waited for (N <= 1000).
``ignore-term``
    Ignore SIGTERM from now on (SIGINT and SIGQUIT still stop it gracefully).
``spawn-grandchild``
    Start ``sleep 1000`` in the gateway's process group, never waited for; its pid goes to
    ``<control>/grandchild.pid``. It outlives the gateway unless the group is killed.

Control protocol
----------------
Drop a regular file named ``<anything>.cmd`` into the control directory containing one
command line, e.g. ``message-slow 2 my-session``. The loop looks every 100 ms, takes the
files in name order, deletes each one and logs it; a malformed one is logged as ignored and
deleted. Write the file under another name and rename it, or write it at once: an empty
file younger than one second is left for the next round, in case its writer is not done.
The same commands arrive as HTTP ``POST /demo/<command>`` with the arguments as the body;
the reply (200 ``{"ok": true}``, or 400 with the reason) is sent before the command runs.
A wedged or D-state gateway answers no HTTP, so only files reach it then, once it recovers.

The D state, and what signals do to it
--------------------------------------
``dstate`` calls the raw ``clone`` syscall with ``CLONE_VFORK | SIGCHLD`` and no
``CLONE_VM``: the child gets its own copy of memory, and the kernel keeps the parent in
``wait_for_vfork_done`` until the child execs or exits. The child therefore never execs: it
sleeps SECONDS and ``_exit``\\s. It is made from the main (only) thread, so the whole
process shows ``D`` in ``/proc/<pid>/stat`` (and ``wchan`` reads ``kernel_clone``). Found
on Linux 6.18, and it is what the kernel source says (``TASK_KILLABLE``):

- SIGTERM with the gateway's handler installed is not acted on: it stays pending until the
  child exits, then the gateway shuts down gracefully (exit 0).
- SIGTERM *without* a handler (default action) would kill it at once (exit -15): a fatal
  signal wakes a killable sleep. Hence the handler matters to reproduce a stuck process.
- SIGSTOP does not stop it; it stays in D.
- SIGKILL kills it at once. The child ignores SIGTERM/SIGINT/SIGQUIT/SIGHUP (a signal to
  the process group does not end the D state early) and has ``PR_SET_PDEATHSIG=SIGKILL``,
  so it dies with the gateway. Its pid is in the log line ``vfork child pid=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn, assert_never
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import json5

from clawsup.units import format_size

PROCESS_TITLE = "clawdbot-gateway"
DEFAULT_PORT = 18789
BIND_ALIASES = {"loopback": "127.0.0.1", "lan": "0.0.0.0"}
LOCK_TIMEOUT = 10.0
LOCK_POLL = 0.1
INDEX_LOCK_STALE_AFTER = 30.0
SHUTDOWN_GRACE = 5.0
CONFIG_POLL = 0.2
CONTROL_POLL = 0.1
MAIN_SESSION_KEY = "agent:main:main"
IMAGE_BYTES = 512 * 1024
MAX_ZOMBIES = 1000
MAX_HTTP_BODY = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL held during the call. clone() copies memory as it is at that moment;
# with the GIL released (plain CDLL) the child could wake up with a GIL it does not own.
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)
_libc_holding_gil.syscall.restype = ctypes.c_long

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
CLONE_VFORK = 0x4000
CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}


def log(subsystem: str, message: str) -> None:
    """One line per action, flushed at once so a supervisor sees it in order."""
    stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
    print(f"{stamp} [{subsystem}] {message}", flush=True)


def utc_iso() -> str:
    """Now as the gateway writes it in locks and transcripts: 2026-11-27T21:40:00.020Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_seconds(seconds: float | None) -> str:
    return "forever" if seconds is None else f"{seconds:g}s"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def sleep_forever() -> NoReturn:
    while True:
        time.sleep(3600)


# --- process title --------------------------------------------------------------------


def set_process_title(title: str) -> None:
    """Name the process as Node's ``process.title`` does: comm and cmdline."""
    _libc.prctl(PR_SET_NAME, title.encode(), 0, 0, 0)
    try:
        _overwrite_cmdline(title.encode())
    except OSError as error:
        log("gateway", f"cannot set the process title in /proc/self/cmdline: {error}")


def _overwrite_cmdline(title: bytes) -> None:
    # The kernel shows argv from the memory between arg_start and arg_end (fields 48 and 49
    # of /proc/self/stat). Python copied argv at startup, so the area is ours to reuse.
    # Ending it with a non-NUL byte is the setproctitle(3) convention: the kernel then stops
    # at the first NUL, so the title reads as one clean argument.
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    size = end - start
    if size < len(title) + 2:
        return
    area = title + b"\0" * (size - len(title) - 1) + b" "
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        memory.seek(start)
        memory.write(area)


# --- config ---------------------------------------------------------------------------


class InvalidConfig(ValueError):
    """The config file is not one the gateway would apply."""


@dataclass(frozen=True)
class AgentDefaults:
    model: str | None = None
    timezone: str | None = None

    def describe(self) -> str:
        return f"model={self.model} timezone={self.timezone}"


def read_agent_defaults(path: Path) -> AgentDefaults:
    """The two settings the demo uses; OSError if unreadable, InvalidConfig if rejected."""
    try:
        document = json5.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # json5 syntax errors and undecodable bytes
        raise InvalidConfig(f"cannot parse: {error}") from error
    if not isinstance(document, dict):
        raise InvalidConfig("the top level must be an object")
    defaults = _section(_section(document, "agents"), "defaults")
    model = _optional_string(_section(defaults, "model"), "primary")
    timezone = _optional_string(defaults, "userTimezone")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise InvalidConfig(f"userTimezone: unknown time zone {timezone!r}") from error
    return AgentDefaults(model, timezone)


def _section(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise InvalidConfig(f"{key} must be an object")
    return value


def _optional_string(parent: dict[str, Any], key: str) -> str | None:
    value = parent.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidConfig(f"{key} must be a string")


class ConfigWatcher:
    """Re-reads the config when its mtime, size or inode changes (temp+rename included)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.defaults = AgentDefaults()
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> None:
        self._stamp = self._read_stamp()
        if self._stamp is None:
            log("reload", f"config missing: {self.path}; using defaults")
            return
        self._apply("config loaded")

    def poll(self) -> None:
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp is None:
            log("reload", f"config missing: {self.path}; keeping {self.defaults.describe()}")
            return
        self._apply("config reloaded")

    def _apply(self, verb: str) -> None:
        try:
            self.defaults = read_agent_defaults(self.path)
        except (OSError, InvalidConfig) as error:
            log("reload", f"config reload skipped (invalid config): {self.path}: {error}")
            return
        log("reload", f"{verb}: {self.defaults.describe()}")

    def _read_stamp(self) -> tuple[int, int, int] | None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return None
        return (status.st_mtime_ns, status.st_size, status.st_ino)


# --- lock files -----------------------------------------------------------------------


class LockTimeout(Exception):
    """A lock file stayed in place for the whole wait."""


class SessionLocked(Exception):
    """A transcript lock held by someone else outlasted the gateway's 10 s wait."""

    def __init__(self, lock_path: Path) -> None:
        holder = lock_holder(lock_path)
        super().__init__(
            f"session file locked (timeout {int(LOCK_TIMEOUT * 1000)}ms): "
            f"pid={holder if holder is not None else '?'} {lock_path}"
        )


def lock_holder(path: Path) -> int | None:
    """The pid written in a lock file, None if it is gone or unreadable."""
    try:
        pid = json.loads(path.read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def try_create_lock(path: Path, content: str) -> bool:
    """Create ``path`` exclusively, as the gateway does; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return True


async def acquire_lock(
    path: Path, content: Callable[[], str], timeout: float, stale_after: float | None = None
) -> None:
    """Poll until ``path`` can be created; LockTimeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not try_create_lock(path, content()):
        if stale_after is not None and _age(path) > stale_after:
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() >= deadline:
            raise LockTimeout(path)
        await asyncio.sleep(LOCK_POLL)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def release_lock(path: Path) -> None:
    """Remove a lock we took, unless someone cleared it and another process took it since."""
    holder = lock_holder(path)
    if holder not in (None, os.getpid()):
        log("session", f"not removing {path}: now held by pid={holder}")
        return
    path.unlink(missing_ok=True)


def transcript_lock_content() -> str:
    return json.dumps({"pid": os.getpid(), "createdAt": utc_iso()}, indent=2) + "\n"


def index_lock_content() -> str:
    return json.dumps({"pid": os.getpid(), "startedAt": int(time.time() * 1000)}, indent=2)


# --- sessions -------------------------------------------------------------------------


def _json_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"


class Transcript:
    """One ``<sessionId>.jsonl`` file, appended to while its lock is held."""

    def __init__(self, path: Path, session_id: str) -> None:
        self.path = path
        self.session_id = session_id
        if not path.exists():
            header = {"type": "session", "version": 3, "id": session_id}
            self._write({**header, "timestamp": utc_iso(), "cwd": os.getcwd()})
        self._parent_id = self._last_entry_id()

    def append_message(self, message: dict[str, Any]) -> None:
        entry_id = uuid.uuid4().hex[:8]
        entry = {"type": "message", "id": entry_id, "parentId": self._parent_id}
        self._write({**entry, "timestamp": utc_iso(), "message": message})
        self._parent_id = entry_id

    def size(self) -> int:
        return self.path.stat().st_size

    def _write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(_json_line(entry))

    def _last_entry_id(self) -> str | None:
        last = b""
        with self.path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    last = line
        try:
            entry_id = json.loads(last).get("id")
        except (ValueError, AttributeError):
            return None
        return entry_id if isinstance(entry_id, str) else None


class SessionStore:
    """``<home>/agents/main/sessions``: transcripts, their locks and ``sessions.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index_path = directory / "sessions.json"

    def resolve(self, session_id: str | None) -> tuple[str, str]:
        """(index key, session id): the main session when no id is given."""
        index = self._read_index()
        if session_id is None:
            entry = index.get(MAIN_SESSION_KEY)
            if isinstance(entry, dict) and isinstance(entry.get("sessionId"), str):
                return MAIN_SESSION_KEY, entry["sessionId"]
            return MAIN_SESSION_KEY, str(uuid.uuid4())
        for key, entry in index.items():
            if isinstance(entry, dict) and entry.get("sessionId") == session_id:
                return key, session_id
        return f"agent:main:demo:{session_id}", session_id

    def lock_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.jsonl.lock"

    def open(self, session_id: str) -> Transcript:
        self.directory.mkdir(parents=True, exist_ok=True)
        return Transcript(self.directory / f"{session_id}.jsonl", session_id)

    async def record(self, key: str, session_id: str) -> None:
        """Point the index entry at the transcript and mark it updated now."""
        lock = self.index_path.with_name("sessions.json.lock")
        try:
            await acquire_lock(lock, index_lock_content, LOCK_TIMEOUT, INDEX_LOCK_STALE_AFTER)
        except LockTimeout:
            log("session", f"index not updated: {lock} held by pid={lock_holder(lock)}")
            return
        try:
            index = self._read_index()
            entry = index.get(key)
            if not isinstance(entry, dict):
                entry = {}
            index[key] = {
                **entry,
                "sessionId": session_id,
                "updatedAt": int(time.time() * 1000),
                "sessionFile": f"{session_id}.jsonl",
            }
            write_atomically(self.index_path, json.dumps(index, indent=2) + "\n")
        finally:
            release_lock(lock)

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as error:
            log("session", f"{self.index_path} unreadable, starting a new index: {error}")
            return {}
        return index if isinstance(index, dict) else {}


def user_message(text: str, image: bytes | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image is not None:
        data = base64.b64encode(image).decode("ascii")
        content.append({"type": "image", "data": data, "mimeType": "image/png"})
    return {"role": "user", "content": content}


def assistant_message(text: str, model: str | None) -> dict[str, Any]:
    provider, _, name = (model or "demo/unconfigured").partition("/")
    return {
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "provider": provider,
        "model": name or provider,
        "usage": {"input": len(text) * 4, "output": len(text)},
        "stopReason": "stop",
    }


def demo_image(size: int = IMAGE_BYTES) -> bytes:
    """A deterministic "photo": a PNG signature followed by a byte ramp."""
    signature = b"\x89PNG\r\n\x1a\n"
    ramp = bytes(range(256)) * (size // 256 + 1)
    return (signature + ramp)[:size]


# --- kernel tricks --------------------------------------------------------------------


def wedge_event_loop(seconds: float | None) -> None:
    """Block the loop's thread. Signals and HTTP wait; the kernel still accepts TCP."""
    log("demo", f"wedging the event loop for {describe_seconds(seconds)}")
    if seconds is None:
        sleep_forever()
    else:
        time.sleep(seconds)
    log("demo", "event loop running again")


def enter_d_state(seconds: float | None) -> None:
    """Stay in uninterruptible sleep (D) for ``seconds``, or forever: see the module doc."""
    number = CLONE_SYSCALL.get(platform.machine())
    if number is None:
        log("demo", f"cannot enter D state: no clone syscall number for {platform.machine()}")
        return
    parent = os.getpid()
    started = time.monotonic()
    log("demo", f"entering D state for {describe_seconds(seconds)}")
    flags = CLONE_VFORK | signal.SIGCHLD
    args = (ctypes.c_long(number), ctypes.c_long(flags), *[ctypes.c_long(0)] * 4)
    child = _libc_holding_gil.syscall(*args)
    if child == 0:
        _vfork_child(parent, seconds)
    if child < 0:
        log("demo", f"cannot enter D state: clone failed: {os.strerror(ctypes.get_errno())}")
        return
    # The vfork completion fires as the child releases its memory, before it is a zombie.
    os.waitpid(child, 0)
    elapsed = time.monotonic() - started
    log("demo", f"left D state after {elapsed:.1f}s (vfork child pid={child} exited)")


def _vfork_child(parent: int, seconds: float | None) -> NoReturn:
    # A copy of a single-threaded process, as after fork(): Python is safe to run here.
    # Never exec: exec would release the parent from its vfork wait.
    try:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)  # the fd is the parent's loop self-pipe; not ours to poke
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == parent:  # else the gateway was SIGKILLed before prctl took hold
            log("demo", f"vfork child pid={os.getpid()} holds gateway pid={parent} in D state")
            if seconds is None:
                sleep_forever()
            time.sleep(seconds)
    finally:
        os._exit(0)


def leave_zombies(count: int) -> list[int]:
    """Fork children that exit at once and are never waited for."""
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pids.append(pid)
    return pids


# --- commands -------------------------------------------------------------------------


class BadCommand(ValueError):
    """A control command that cannot be run as written."""


@dataclass(frozen=True)
class Crash:
    code: int = 1


@dataclass(frozen=True)
class Message:
    session_id: str | None = None
    hold_seconds: float = 0.0


@dataclass(frozen=True)
class HoldLock:
    session_id: str | None = None


@dataclass(frozen=True)
class GrowSession:
    megabytes: float
    session_id: str | None = None


@dataclass(frozen=True)
class DState:
    seconds: float | None = None


@dataclass(frozen=True)
class Wedge:
    seconds: float | None = None


@dataclass(frozen=True)
class Zombies:
    count: int


@dataclass(frozen=True)
class IgnoreTerm:
    pass


@dataclass(frozen=True)
class SpawnGrandchild:
    pass


Command = Crash | Message | HoldLock | GrowSession | DState | Wedge | Zombies | IgnoreTerm | SpawnGrandchild


def _arguments(args: list[str], usage: str, most: int, least: int = 0) -> list[str]:
    if not least <= len(args) <= most:
        raise BadCommand(f"usage: {usage}")
    return args


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadCommand(f"{what} must be a number, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise BadCommand(f"{what} must be positive, not {text!r}")
    return value


def _integer(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadCommand(f"{what} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise BadCommand(f"{what} must be between {low} and {high}, not {value}")
    return value


def _session_id(args: list[str]) -> str | None:
    if not args:
        return None
    session_id = args[0]
    if session_id.startswith(".") or not all(c.isalnum() or c in "-_." for c in session_id):
        raise BadCommand(f"session id must be letters, digits, '-', '_' or '.': {session_id!r}")
    return session_id


def _seconds_or_forever(args: list[str], usage: str) -> float | None:
    args = _arguments(args, usage, most=1)
    return _number(args[0], "SECONDS") if args else None


def _parse_crash(args: list[str]) -> Crash:
    args = _arguments(args, "crash [CODE]", most=1)
    return Crash(_integer(args[0], "CODE", 0, 255)) if args else Crash()


def _parse_message(args: list[str]) -> Message:
    return Message(_session_id(_arguments(args, "message [SESSION_ID]", most=1)))


def _parse_message_slow(args: list[str]) -> Message:
    args = _arguments(args, "message-slow SECONDS [SESSION_ID]", most=2, least=1)
    return Message(_session_id(args[1:]), _number(args[0], "SECONDS"))


def _parse_hold_lock(args: list[str]) -> HoldLock:
    return HoldLock(_session_id(_arguments(args, "hold-lock [SESSION_ID]", most=1)))


def _parse_grow(args: list[str]) -> GrowSession:
    args = _arguments(args, "grow-session [SESSION_ID] MB", most=2, least=1)
    return GrowSession(_number(args[-1], "MB"), _session_id(args[:-1]))


def _parse_zombies(args: list[str]) -> Zombies:
    args = _arguments(args, "zombies N", most=1, least=1)
    return Zombies(_integer(args[0], "N", 1, MAX_ZOMBIES))


_PARSERS: dict[str, Callable[[list[str]], Command]] = {
    "crash": _parse_crash,
    "message": _parse_message,
    "message-slow": _parse_message_slow,
    "hold-lock": _parse_hold_lock,
    "grow-session": _parse_grow,
    "dstate": lambda args: DState(_seconds_or_forever(args, "dstate [SECONDS]")),
    "wedge": lambda args: Wedge(_seconds_or_forever(args, "wedge [SECONDS]")),
    "zombies": _parse_zombies,
    "ignore-term": lambda args: IgnoreTerm(*_arguments(args, "ignore-term", most=0)),
    "spawn-grandchild": lambda args: SpawnGrandchild(*_arguments(args, "spawn-grandchild", most=0)),
}


def parse_command(text: str) -> Command:
    """``"message-slow 2 abc"`` -> ``Message("abc", 2.0)``; BadCommand says what is wrong."""
    words = text.split()
    if not words:
        raise BadCommand("empty command")
    parser = _PARSERS.get(words[0])
    if parser is None:
        raise BadCommand(f"unknown command {words[0]!r}; known: {', '.join(_PARSERS)}")
    return parser(words[1:])


# --- the gateway ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    home: Path
    config_path: Path
    control_dir: Path
    host: str
    port: int
    shutdown_grace: float


class Gateway:
    """The running demo gateway: HTTP, control files, config watch, message runs."""

    def __init__(self, options: Options, listener: socket.socket) -> None:
        self.options = options
        self.listener = listener
        self.config = ConfigWatcher(options.config_path)
        self.sessions = SessionStore(options.home / "agents" / "main" / "sessions")
        self.started = time.monotonic()
        self.messages = 0
        self.lock_failures = 0
        self.held_locks: set[Path] = set()
        self.runs: set[asyncio.Task[None]] = set()
        self.grandchildren: list[subprocess.Popen[bytes]] = []
        self.stopping = asyncio.Event()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(number, self.request_shutdown, number)
        self.config.load()
        server = await asyncio.start_server(self.handle_http, sock=self.listener)
        host, port = self.listener.getsockname()[:2]
        control = self.options.control_dir
        write_atomically(control / "port", f"{port}\n")
        write_atomically(control / "ready", f"{os.getpid()}\n")
        log("gateway", f"listening on {host}:{port} pid={os.getpid()}")
        pollers = [loop.create_task(self.poll_control()), loop.create_task(self.poll_config())]
        await self.stopping.wait()
        server.close()
        for poller in pollers:
            poller.cancel()
        await self.finish_runs()
        (control / "ready").unlink(missing_ok=True)
        log("gateway", "closed; exiting with code 0")
        return 0

    def request_shutdown(self, number: int) -> None:
        name = signal.Signals(number).name
        if self.stopping.is_set():
            log("gateway", f"{name} received again; already shutting down")
            return
        log("gateway", f"{name} received; shutting down")
        self.stopping.set()

    async def finish_runs(self) -> None:
        """Let running messages end within the grace, then abandon them as the gateway does."""
        if self.runs:
            grace = self.options.shutdown_grace
            log("gateway", f"waiting up to {grace:g}s for {len(self.runs)} running message(s)")
            _, pending = await asyncio.wait(self.runs, timeout=grace)
            if pending:
                log("gateway", f"graceful close took longer than {grace:g}s; forcing exit")
                for run in pending:
                    run.cancel()
                await asyncio.wait(pending)  # each run's lock is released on its way out
        for lock in list(self.held_locks):
            self._release(lock)

    # -- inputs --

    async def poll_control(self) -> None:
        while True:
            for path in sorted(self.options.control_dir.glob("*.cmd")):
                text = self._take_command_file(path)
                if text is None:
                    continue
                try:
                    command = parse_command(text)
                except BadCommand as error:
                    log("control", f"ignored {path.name}: {error}")
                    continue
                log("control", f"{path.name}: {text.strip()}")
                self.execute(command)
            await asyncio.sleep(CONTROL_POLL)

    def _take_command_file(self, path: Path) -> str | None:
        try:
            if not path.is_file():
                return None
            raw = path.read_bytes()
            if not raw and _age(path) < 1.0:
                return None  # its writer may not have written yet
            path.unlink()
        except FileNotFoundError:
            return None
        return raw.decode("utf-8", errors="replace")

    async def poll_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL)
            self.config.poll()

    async def handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command: Command | None = None
        try:
            status, payload, command = await self._answer(reader)
            writer.write(http_response(status, payload))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        if command is not None:
            self.execute(command)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any], Command | None]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            return 400, {"ok": False, "error": "malformed request line"}, None
        method, target = parts[0], urllib.parse.urlsplit(parts[1]).path
        if method == "GET":
            return 200, self.status(), None
        if method != "POST":
            return 405, {"ok": False, "error": f"method {method} not allowed"}, None
        if not target.startswith("/demo/"):
            return 404, {"ok": False, "error": f"no route {target}; POST /demo/<command>"}, None
        length = _content_length(header_lines)
        if length > MAX_HTTP_BODY:
            return 413, {"ok": False, "error": f"body larger than {MAX_HTTP_BODY} bytes"}, None
        body = (await reader.readexactly(length)).decode("utf-8", errors="replace")
        text = f"{urllib.parse.unquote(target.removeprefix('/demo/'))} {body}".strip()
        try:
            command = parse_command(text)
        except BadCommand as error:
            log("control", f"ignored HTTP command {text!r}: {error}")
            return 400, {"ok": False, "error": str(error)}, None
        log("control", f"http: {text}")
        return 200, {"ok": True, "command": text}, command

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "model": self.config.defaults.model,
            "timezone": self.config.defaults.timezone,
            "messages": self.messages,
            "lockFailures": self.lock_failures,
            "locksHeld": sorted(str(lock) for lock in self.held_locks),
        }

    # -- commands --

    def execute(self, command: Command) -> None:
        match command:
            case Crash(code):
                held = len(self.held_locks)
                log("demo", f"crashing with exit code {code}; leaving {held} lock(s) behind")
                os._exit(code)
            case Message(session_id, hold_seconds):
                self._start_run(self.run_message(session_id, hold_seconds))
            case HoldLock(session_id):
                self._start_run(self.run_stuck_message(session_id))
            case GrowSession(megabytes, session_id):
                self._start_run(self.run_grow(session_id, megabytes))
            case DState(seconds):
                enter_d_state(seconds)
            case Wedge(seconds):
                wedge_event_loop(seconds)
            case Zombies(count):
                pids = leave_zombies(count)
                log("demo", f"left {count} zombie children: {' '.join(map(str, pids))}")
            case IgnoreTerm():
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                log("demo", "ignoring SIGTERM from now on")
            case SpawnGrandchild():
                self.spawn_grandchild()
            case _:
                assert_never(command)

    def spawn_grandchild(self) -> None:
        child = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
        self.grandchildren.append(child)  # kept, never waited for
        write_atomically(self.options.control_dir / "grandchild.pid", f"{child.pid}\n")
        log("demo", f"spawned grandchild pid={child.pid} (sleep 1000, same process group)")

    # -- message runs --

    def _start_run(self, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._report_failure(run))
        self.runs.add(task)
        task.add_done_callback(self.runs.discard)

    async def _report_failure(self, run: Coroutine[Any, Any, None]) -> None:
        try:
            await run
        except SessionLocked as error:
            log("session", str(error))
        except OSError as error:
            log("session", f"message failed: {error}")

    @contextlib.asynccontextmanager
    async def transcript(self, session_id: str | None) -> AsyncIterator[Transcript]:
        """The session's transcript, under its lock for as long as the block runs."""
        key, session_id = self.sessions.resolve(session_id)
        lock = self.sessions.lock_path(session_id)
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            await acquire_lock(lock, transcript_lock_content, LOCK_TIMEOUT)
        except LockTimeout:
            self.lock_failures += 1
            raise SessionLocked(lock) from None
        self.held_locks.add(lock)
        log("session", f"lock taken: {lock}")
        try:
            yield self.sessions.open(session_id)
            await self.sessions.record(key, session_id)
        finally:
            self._release(lock)

    def _release(self, lock: Path) -> None:
        if lock in self.held_locks:
            self.held_locks.discard(lock)
            release_lock(lock)
            log("session", f"lock released: {lock}")

    def _next_message(self) -> int:
        self.messages += 1
        return self.messages

    async def run_message(self, session_id: str | None, hold_seconds: float) -> None:
        async with self.transcript(session_id) as transcript:
            number = self._next_message()
            transcript.append_message(user_message(f"demo message #{number}"))
            log("session", f"message #{number} in {transcript.session_id}: processing")
            if hold_seconds:
                await asyncio.sleep(hold_seconds)
            transcript.append_message(assistant_message(self._reply(number), self._model()))
        log("session", f"message #{number} in {transcript.session_id}: answered")

    async def run_stuck_message(self, session_id: str | None) -> None:
        async with self.transcript(session_id) as transcript:
            number = self._next_message()
            transcript.append_message(user_message(f"demo message #{number}"))
            log("session", f"message #{number} in {transcript.session_id}: stuck, never answered")
            await asyncio.Event().wait()

    async def run_grow(self, session_id: str | None, megabytes: float) -> None:
        target = int(megabytes * 2**20)
        image = demo_image()
        async with self.transcript(session_id) as transcript:
            while transcript.size() <= target:
                number = self._next_message()
                transcript.append_message(user_message(f"demo photo #{number}", image))
                await asyncio.sleep(0)  # let HTTP and control files through between writes
            size = transcript.size()
        log("session", f"{transcript.session_id} grown to {format_size(size)}")

    def _model(self) -> str | None:
        return self.config.defaults.model

    def _reply(self, number: int) -> str:
        timezone = self.config.defaults.timezone
        if timezone is None:
            return f"demo reply #{number}"
        local = datetime.now(ZoneInfo(timezone)).strftime("%H:%M")
        return f"demo reply #{number}; it is {local} in {timezone}"


def http_response(status: int, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _content_length(header_lines: list[str]) -> int:
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                return max(0, int(value.strip()))
            except ValueError:
                return 0
    return 0


# --- startup --------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m clawsup.demo.gateway",
        description="Demo Clawdbot gateway: behaves like the real one, fails on command.",
    )
    parser.add_argument("--home", type=Path, default=Path("~/.clawdbot"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--bind", default="127.0.0.1", help="host, 'loopback' or 'lan'")
    parser.add_argument("--control", type=Path, help="default: <home>/.demo-control")
    parser.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE)
    parsed = parser.parse_args(argv)
    home = parsed.home.expanduser()
    # Like the real gateway, CLAWDBOT_CONFIG_PATH names the config file outright.
    config_path = os.environ.get("CLAWDBOT_CONFIG_PATH") or str(home / "clawdbot.json")
    return Options(
        home=home,
        config_path=Path(config_path).expanduser(),
        control_dir=(parsed.control or home / ".demo-control").expanduser(),
        host=BIND_ALIASES.get(parsed.bind, parsed.bind),
        port=parsed.port,
        shutdown_grace=parsed.shutdown_grace,
    )


def open_listener(host: str, port: int) -> socket.socket:
    # Bound here, before the loop starts: asyncio would resolve the host in a worker
    # thread, and the D-state trick wants a process with a single thread.
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(128)
    listener.setblocking(False)
    return listener


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    set_process_title(PROCESS_TITLE)
    options.control_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("ready", "port"):
        (options.control_dir / stale).unlink(missing_ok=True)
    try:
        listener = open_listener(options.host, options.port)
    except OSError as error:
        log("gateway", f"cannot listen on {options.host}:{options.port}: {error}")
        return 1
    return asyncio.run(Gateway(options, listener).serve())


if __name__ == "__main__":
    sys.exit(main())
