"""The wire types of the control socket: the only code the client and supervisor share.

One request and one reply per ZeroMQ frame, UTF-8 JSON. A request is tagged on ``cmd``::

    {"cmd": "restart", "program": "gateway"}

A reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code": "...", "message": "..."}}``.

Events on the PUB socket are single-frame JSON objects with ``ts``, ``kind``, ``program``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import msgspec

from clawsup.status_text import describe_exit

PROTOCOL_VERSION = 1


class _Request(msgspec.Struct, tag_field="cmd", frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Status(_Request, tag="status", frozen=True):
    pass


class Start(_Request, tag="start", frozen=True):
    program: str | None = None
    wait: bool = True


class Stop(_Request, tag="stop", frozen=True):
    program: str | None = None
    wait: bool = True


class Restart(_Request, tag="restart", frozen=True):
    program: str | None = None
    wait: bool = True
    reason: str | None = None  # free text, shown in events; never steers what clawsup does
    # Restart when the program holds no transcript lock (no message in flight), or at
    # max_wait (seconds, or a duration string like "10m"; default 10 minutes) with one
    # still held. Answered at once with a ScheduledReply; ``wait`` does not apply.
    when_idle: bool = False
    max_wait: float | str | None = None


class Signal(_Request, tag="signal", frozen=True):
    signal: str
    program: str | None = None


class SetModel(_Request, tag="set_model", frozen=True):
    model: str


class SetTimezone(_Request, tag="set_timezone", frozen=True):
    timezone: str


class Health(_Request, tag="health", frozen=True):
    pass


class Reload(_Request, tag="reload", frozen=True, omit_defaults=True):
    # Sent only when true (omit_defaults): a plain reload stays ``{"cmd": "reload"}``,
    # which supervisors from before the plan accept.
    dry_run: bool = False


class Shutdown(_Request, tag="shutdown", frozen=True):
    pass


class Version(_Request, tag="version", frozen=True):
    pass


class Incidents(_Request, tag="incidents", frozen=True):
    since: float | None = None  # seconds before now
    limit: int = 20


class Logs(_Request, tag="logs", frozen=True):
    program: str | None = None  # the main program by default
    lines: int = 20
    after: int | None = None  # only lines whose seq is above this


Request = (
    Status
    | Start
    | Stop
    | Restart
    | Signal
    | SetModel
    | SetTimezone
    | Health
    | Reload
    | Shutdown
    | Version
    | Incidents
    | Logs
)

COMMANDS: tuple[str, ...] = (
    "status",
    "start",
    "stop",
    "restart",
    "signal",
    "set_model",
    "set_timezone",
    "health",
    "reload",
    "shutdown",
    "version",
    "incidents",
    "logs",
)
# Safe to send twice: the client retries only these after a timeout.
IDEMPOTENT_COMMANDS = frozenset({"status", "health", "version", "incidents", "logs"})


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str


# Error codes a reply may carry.
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
UNKNOWN_PROGRAM = "unknown_program"
BAD_VALUE = "bad_value"
INVALID_STATE = "invalid_state"
FAILED = "failed"
TOO_LARGE = "too_large"
INTERNAL = "internal"


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[False] = False
    error: ErrorInfo


class LastExit(msgspec.Struct, frozen=True, kw_only=True):
    code: int | None = None
    signal: str | None = None
    reason: str = ""
    at: float = 0.0  # wall-clock time of the exit

    def describe(self) -> str:
        return describe_exit(self.code, self.signal, self.reason)


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["closed", "open", "half_open"]
    model: str | None = None
    active_model: str | None = None
    failures: int = 0
    open_until: float | None = None


LivenessState = Literal["unknown", "passing", "failing", "off"]


class ProgramStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    pid: int | None
    restarts: int
    uptime: float | None
    last_exit: LastExit | None
    main: bool = False
    hung: bool = False
    unkillable: bool = False
    liveness: LivenessState = "off"
    next_start_in: float | None = None
    description: str = ""
    # A thread other than the main one stuck in D ("thread 12 (libuv-worker) in D...").
    stuck_thread: str = ""
    processes: int = 0  # live processes of its whole tree (0 in old supervisors' replies)
    # What its whole tree uses, at the sampler's last reading; None while it does not run
    # (or before the first reading, or with no sampler: hang.enabled = false).
    rss: int | None = None  # bytes resident
    cpu_percent: float | None = None  # percent of one core since the reading before


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    programs: list[ProgramStatus]
    supervisor_pid: int
    supervisor_uptime: float
    version: str
    model: str | None = None
    timezone: str | None = None
    breaker: BreakerStatus | None = None


class HealthReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    healthy: bool
    reasons: list[str] = []


class ProgramReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    program: str
    state: str
    pid: int | None = None
    message: str = ""


class SettingReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to set_model / set_timezone: what the value was and what it is now."""

    ok: Literal[True] = True
    key: str
    old: str | None
    new: str
    applied: str  # "reload", "restart" or "pending"


class ScheduledReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to a restart with ``when_idle``: the restart it scheduled (or found pending)."""

    ok: Literal[True] = True
    program: str
    pid: int | None  # the process that will be restarted
    requested_at: float  # wall clock of the request that scheduled it
    deadline: float  # wall clock: the restart happens by then, lock or not
    max_wait: float  # seconds
    reason: str = ""  # the free text of the request that scheduled it
    # True when this request found one pending and changed nothing (requests never stack).
    already_pending: bool = False
    # Transcript locks the program held when it answered; none: it is restarting now.
    locks: list[str] = []
    message: str = ""


class VersionReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    version: str
    protocol: int = PROTOCOL_VERSION


class DoneReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    message: str = ""


ReloadAction = Literal[
    "add",  # a program new in the config: added, and started if autostart
    "remove",  # a program gone from the config: stopped, then forgotten
    "restart",  # what it runs changed (command, environment...): restarted if running
    "update",  # applied live, nothing restarted
    "reopen",  # the janitor: closed and opened again on the new settings
    "start",  # a section that was not configured now is (alerts, metrics, breaker)
    "stop",  # a section that was configured is no longer
    "rebuild",  # built again from the new settings: its state starts over
    "needs_restart",  # cannot change while clawsup runs: the old value is kept until then
]


class ReloadChange(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a reload plan: a section (``programs.gateway``, ``metrics``...), what
    is done to it, the keys that changed, and how it went."""

    section: str
    action: ReloadAction
    keys: list[str] = []
    detail: str = ""
    error: str = ""  # applying it failed (the rest of the plan was still applied)

    def describe(self) -> str:
        what = "needs a clawsup restart" if self.action == "needs_restart" else self.action
        keys = f" ({', '.join(self.keys)})" if self.keys else ""
        detail = f": {self.detail}" if self.detail else ""
        error = f" FAILED: {self.error}" if self.error else ""
        return f"{self.section}: {what}{keys}{detail}{error}"


class ReloadReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to reload: the plan, applied unless ``dry_run``. A client from before the
    plan reads it as a DoneReply (``message``); a supervisor from before it sends one,
    read here as a plan without changes."""

    ok: Literal[True] = True
    message: str = ""
    dry_run: bool = False
    changes: list[ReloadChange] = []


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    ts: float
    kind: str
    program: str | None = None
    message: str = ""
    data: dict[str, Any] = {}


class IncidentsReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    counts: dict[str, dict[str, int]]  # day (YYYY-MM-DD) -> kind -> count
    latest: list[Incident]


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line a program printed; also the items of a ``log`` event's ``data.lines``."""

    seq: int  # numbers the program's lines since clawsup started: a gap is lines missed
    ts: float  # wall-clock time clawsup read it
    stream: Literal["stdout", "stderr"]
    pid: int  # the process that printed it: it changes with each restart
    text: str


class LogsReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: Literal[True] = True
    program: str
    lines: list[LogLine]


# Every reply the supervisor's handler may return to the control server.
Reply = (
    StatusReply
    | HealthReply
    | ProgramReply
    | SettingReply
    | ScheduledReply
    | VersionReply
    | DoneReply
    | ReloadReply
    | IncidentsReply
    | LogsReply
    | ErrorReply
)


def plain(value: Any) -> Any:
    """What ``msgspec.to_builtins`` cannot convert, as a plain JSON value.

    Number subclasses (``Duration``, ``Size`` from the config) become the number; anything
    else its text: an event must reach every sink, whatever a producer put in it.
    """
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


class EventKind(StrEnum):
    """The kind of every event on the PUB socket (what ``clawsupctl events --kind`` takes).

    The names only: what each means, and whether it is an incident, is the supervisor's
    catalogue (supervisor/kinds.py), which must list exactly these.
    """

    STATE = "state"
    EXITED = "exited"
    BACKOFF = "backoff"
    RESTARTED = "restarted"
    CRASH_LOOP = "crash_loop"
    FATAL = "fatal"
    UNKILLABLE = "unkillable"
    HUNG = "hung"
    THREAD_HUNG = "thread_hung"
    ZOMBIE_LEAK = "zombie_leak"
    LIVENESS_FAILED = "liveness_failed"
    RESOURCE_LIMIT = "resource_limit"
    REAPED = "reaped"
    LOG = "log"
    ORPHAN_LOCK = "orphan_lock"
    SESSION_ARCHIVED = "session_archived"
    ARCHIVE_PURGED = "archive_purged"
    MESSAGE_TIMEOUT = "message_timeout"
    BREAKER_OPEN = "breaker_open"
    BREAKER_HALF_OPEN = "breaker_half_open"
    BREAKER_CLOSED = "breaker_closed"
    MODEL_CHANGED = "model_changed"
    TIMEZONE_CHANGED = "timezone_changed"
    OVERRIDE_DROPPED = "override_dropped"
    RESTART_REQUESTED = "restart_requested"
    RESTART_SCHEDULED = "restart_scheduled"
    IDLE_RESTART = "idle_restart"
    RESTART_CANCELLED = "restart_cancelled"
    RELOADED = "reloaded"
    RELOAD_FAILED = "reload_failed"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One PUB-socket event (and incident-log line).

    ``data`` is made plain JSON types when the event is built. Not an ``enc_hook`` at each
    encoder: there are several sinks (PUB socket, incident log, alerts...), each with its
    own encoder, and one that forgot the hook would lose events again, unseen, as the
    ``crash_loop`` event carrying a ``Duration`` was lost. Built here, an event can be
    encoded by any of them, and every consumer sees the same plain values.
    """

    ts: float
    kind: str
    program: str | None = None
    message: str = ""
    data: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.data:
            msgspec.structs.force_setattr(
                self, "data", msgspec.to_builtins(self.data, enc_hook=plain, str_keys=True)
            )


_encoder = msgspec.json.Encoder()
_request_decoder: msgspec.json.Decoder[Request] = msgspec.json.Decoder(Request)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_request(frame: bytes) -> Request:
    """Decode one request frame; raises msgspec.DecodeError/ValidationError on bad input."""
    return _request_decoder.decode(frame)


def error_reply(code: str, message: str) -> ErrorReply:
    return ErrorReply(error=ErrorInfo(code=code, message=message))
