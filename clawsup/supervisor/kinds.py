"""Every kind of event the supervisor emits: the one catalogue.

Each kind is a payload struct: its fields are the event's ``data`` on the wire, its
docstring says what it means, and its class attributes say, once, what is done with it:
``incident`` (written to the incident log), ``routine`` (logged at INFO; everything else
is a recovery or a problem, logged at WARNING) and ``alert`` (in ``[alerts] events`` by
default). Every kind is alertable: an operator may want to hear of a routine step too
(``restarted``), and the quiet period keeps that from flooding.

A producer builds the payload (``Supervisor.emit(Hung(...), program, message)``), so the
kind follows from its type and mypy sees a producer and a consumer that disagree on a
field. A sink reads it back with ``payload_of(event)`` and dispatches on the type.

``RestartReason`` is why clawsup restarted a program, a closed set: the free text of an
operator's request travels beside it (``detail``) and never picks one of these, so it
cannot count against the crash-loop budget or become a metrics label.

tests/test_every_event.py scans the supervisor's source for the payloads it builds and
raises each kind through its real producer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

import msgspec

from clawsup.protocol import Event, EventKind, plain


class RestartReason(StrEnum):
    """Why clawsup (re)started a program: a failure, a recovery, or a request."""

    # Failures of the program: they count toward backoff and the crash-loop budget.
    CRASHED = "crashed"  # exited with a code not in exit_codes, or by a signal
    EXITED = "exited"  # exited with an expected code, and autorestart = "always"
    SPAWN_FAILED = "spawn_failed"  # exec failed (no such command, permission...)
    HUNG = "hung"  # the main thread held D state: SIGKILL
    START_TIMEOUT = "start_timeout"  # no liveness probe passed within start_timeout
    # Recoveries clawsup decided on: a graceful restart, not counted as a failure.
    THREAD_HUNG = "thread_hung"
    ZOMBIE_LEAK = "zombie_leak"
    RESOURCE_LIMIT = "resource_limit"  # over max_rss or max_cpu (resources.py)
    LIVENESS = "liveness"
    MESSAGE_TIMEOUT = "message_timeout"
    CONFIG_CHANGED = "config_changed"  # the gateway config changed and apply = "restart"
    # Asked for: by a client (with its free text as ``detail``) or the old files.
    REQUESTED = "requested"
    REQUESTED_WHEN_IDLE = "requested_when_idle"
    RESTART_FLAG = "restart_flag"
    OPS_REQUEST = "ops_request"


def describe_reason(reason: RestartReason, detail: str = "") -> str:
    """The reason as people read it: ``requested: new plugin``."""
    return f"{reason}: {detail}" if detail else str(reason)


class ExitCause(StrEnum):
    """How a program's process came to exit."""

    CRASHED = "crashed"
    EXITED = "exited"  # by itself, with a code in exit_codes
    STOPPED = "stopped"  # clawsup stopped it: a stop, or a restart (``restart`` says)


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """The ``data`` of one kind of event."""

    kind: ClassVar[EventKind]
    incident: ClassVar[bool] = False  # something went wrong and clawsup acted on it
    routine: ClassVar[bool] = False  # logged at INFO, not WARNING
    alert: ClassVar[bool] = False  # in the default [alerts] events


# -- a program's life (program.py) ------------------------------------------------------------


class StateChanged(Payload, frozen=True):
    """a program changed state"""

    kind = EventKind.STATE
    routine = True
    old: str = msgspec.field(name="from")
    to: str
    trigger: str
    reason: str  # text: what moved it


class Exited(Payload, frozen=True):
    """a program's process exited; an incident when it crashed"""

    kind = EventKind.EXITED
    routine = True
    pid: int
    code: int | None
    signal: str | None
    reason: str  # text, as in last_exit: "crashed", "hung (state: D for 10.0s)"...
    restart: bool  # it is started again
    cause: ExitCause


class Backoff(Payload, frozen=True):
    """a program waits before its next start"""

    kind = EventKind.BACKOFF
    routine = True
    delay: float
    reason: RestartReason
    quick_failures: int
    detail: str = ""


class Restarted(Payload, frozen=True):
    """a program was started again"""

    kind = EventKind.RESTARTED
    routine = True
    pid: int
    reason: RestartReason
    detail: str = ""  # a client's free text, or what failed


class CrashLoop(Payload, frozen=True):
    """too many restarts in the window: start given up until cooldown"""

    kind = EventKind.CRASH_LOOP
    incident = True
    alert = True
    cooldown: float
    reason: RestartReason
    detail: str = ""


class Fatal(Payload, frozen=True):
    """a program is FATAL"""

    kind = EventKind.FATAL
    incident = True
    alert = True


class Unkillable(Payload, frozen=True):
    """a process is still present after SIGKILL"""

    kind = EventKind.UNKILLABLE
    incident = True
    pid: int | None


# -- what the samplers and probes found (watch.py, hang.py, resources.py) --------------------


class Hung(Payload, frozen=True):
    """the main thread stayed in D state: SIGKILL and respawn"""

    kind = EventKind.HUNG
    incident = True
    alert = True
    state: str
    seconds: float
    pid: int
    reason: RestartReason = RestartReason.HUNG


class ThreadHung(Payload, frozen=True):
    """another thread stayed in D state; the process cannot be killed until the kernel
    returns"""

    kind = EventKind.THREAD_HUNG
    incident = True
    alert = True
    tid: int
    thread: str
    seconds: float
    pid: int | None
    restart: bool
    reason: RestartReason = RestartReason.THREAD_HUNG


class ZombieLeak(Payload, frozen=True):
    """too many zombie children: graceful restart"""

    kind = EventKind.ZOMBIE_LEAK
    incident = True
    alert = True
    zombies: int
    reason: RestartReason = RestartReason.ZOMBIE_LEAK


class ResourceLimit(Payload, frozen=True):
    """the program's tree stayed over max_rss or max_cpu: graceful restart"""

    kind = EventKind.RESOURCE_LIMIT
    incident = True
    alert = True
    resource: Literal["rss", "cpu"]
    value: float  # bytes (rss) or percent of one core (cpu), at the last reading
    limit: float
    seconds: float  # how long it was over
    samples: int  # readings in a row over max_rss; 0 for cpu
    pid: int
    reason: RestartReason = RestartReason.RESOURCE_LIMIT


class LivenessFailed(Payload, frozen=True):
    """the liveness probe failed in a row: restart"""

    kind = EventKind.LIVENESS_FAILED
    incident = True
    detail: str
    reason: RestartReason = RestartReason.LIVENESS


class Reaped(Payload, frozen=True):
    """orphaned processes re-parented to clawsup were reaped"""

    kind = EventKind.REAPED
    count: int


# -- program output (relay.py, logbuffer.py): what `clawsupctl logs -f` follows --------------


class Log(Payload, frozen=True):
    """lines a program printed (one event per read of its output)"""

    kind = EventKind.LOG
    routine = True
    seq: int  # of the first line
    ts: float
    stream: Literal["stdout", "stderr"]
    pid: int
    lines: list[str]


# -- the janitor (janitor/) --------------------------------------------------------------------


class OrphanLock(Payload, frozen=True):
    """a transcript lock of a dead owner was removed"""

    kind = EventKind.ORPHAN_LOCK
    incident = True
    path: str
    pid: int | None
    reason: str  # locks.OrphanReason
    age: float
    session_id: str | None


class SessionArchived(Payload, frozen=True):
    """an oversized transcript was archived"""

    kind = EventKind.SESSION_ARCHIVED
    incident = True
    path: str
    archive: str
    size: int
    session_id: str | None


class ArchivePurged(Payload, frozen=True):
    """old archived transcripts were deleted"""

    kind = EventKind.ARCHIVE_PURGED
    routine = True
    path: str
    archived_at: float
    age: float


class MessageTimeout(Payload, frozen=True):
    """a message held its lock too long: restart"""

    kind = EventKind.MESSAGE_TIMEOUT
    incident = True
    alert = True
    path: str
    pid: int
    session_id: str
    held_for: float


# -- the model breaker (breaker.py) -----------------------------------------------------------


class _BreakerChange(Payload, frozen=True):
    model: str | None  # the primary
    old: str | None = msgspec.field(name="from")
    to: str | None
    state: str
    failures: int
    cooldown: float
    open_until: float | None
    cause: str = ""  # what made the loop ask the breaker: "crash", "message_timeout", "timer"


class BreakerOpen(_BreakerChange, frozen=True):
    """the model failed too often: switched to a fallback"""

    kind = EventKind.BREAKER_OPEN
    incident = True
    alert = True


class BreakerHalfOpen(_BreakerChange, frozen=True):
    """the primary model is tried again"""

    kind = EventKind.BREAKER_HALF_OPEN
    routine = True


class BreakerClosed(_BreakerChange, frozen=True):
    """the primary model works again"""

    kind = EventKind.BREAKER_CLOSED
    routine = True


BreakerChange = BreakerOpen | BreakerHalfOpen | BreakerClosed


# -- operators' requests (controller.py, daemon.py) -------------------------------------------


class _SettingChanged(Payload, frozen=True):
    old: str | None
    new: str
    source: str
    applied: str


class ModelChanged(_SettingChanged, frozen=True):
    """the gateway's model was set"""

    kind = EventKind.MODEL_CHANGED
    routine = True


class TimezoneChanged(_SettingChanged, frozen=True):
    """the gateway's time zone was set"""

    kind = EventKind.TIMEZONE_CHANGED
    routine = True


class OverrideDropped(Payload, frozen=True):
    """a remembered setting was not re-applied: the gateway config was edited since"""

    kind = EventKind.OVERRIDE_DROPPED
    key: str
    value: str
    found: str | None
    replaced: str | None
    reason: str


class RestartRequested(Payload, frozen=True):
    """a restart was asked for through restart.flag"""

    kind = EventKind.RESTART_REQUESTED
    routine = True
    reason: RestartReason
    detail: str


class RestartScheduled(Payload, frozen=True):
    """a restart when idle was asked for: it waits until the program holds no transcript
    lock, or max_wait"""

    kind = EventKind.RESTART_SCHEDULED
    routine = True
    reason: RestartReason
    detail: str
    pid: int
    max_wait: float
    deadline: float
    locks: list[str]


class IdleRestart(Payload, frozen=True):
    """a restart asked for when idle was carried out: no transcript lock was held, or
    max_wait ran out with one still held"""

    # An incident although asked for: the agent asks for it from a chat ("restart
    # yourself"), and "why did you restart last night?" must find it in the incident log;
    # at max_wait it also cut a turn short.
    kind = EventKind.IDLE_RESTART
    incident = True
    reason: RestartReason
    detail: str
    pid: int | None
    waited: float
    max_wait: float
    at_max_wait: bool
    locks: list[str]


class RestartCancelled(Payload, frozen=True):
    """a pending restart when idle was dropped: an explicit stop or restart, or its
    process went"""

    kind = EventKind.RESTART_CANCELLED
    routine = True
    reason: RestartReason
    detail: str
    cause: str


class Reloaded(Payload, frozen=True):
    """the config was reloaded"""

    kind = EventKind.RELOADED
    routine = True
    changes: list[str]


class ReloadFailed(Payload, frozen=True):
    """a config reload failed; the old config is kept"""

    kind = EventKind.RELOAD_FAILED


# -- the catalogue ----------------------------------------------------------------------------

CATALOGUE: dict[EventKind, type[Payload]] = {payload.kind: payload for payload in (
    StateChanged, Exited, Backoff, Restarted, CrashLoop, Fatal, Unkillable,
    Hung, ThreadHung, ZombieLeak, ResourceLimit, LivenessFailed, Reaped, Log,
    OrphanLock, SessionArchived, ArchivePurged, MessageTimeout,
    BreakerOpen, BreakerHalfOpen, BreakerClosed,
    ModelChanged, TimezoneChanged, OverrideDropped,
    RestartRequested, RestartScheduled, IdleRestart, RestartCancelled, Reloaded, ReloadFailed,
)}
# The wire enum (what a client may name) and this catalogue are one list, checked at import.
if set(CATALOGUE) != set(EventKind):  # pragma: no cover
    raise ImportError("kinds.py and protocol.EventKind disagree: "
                      f"{sorted(set(EventKind) - set(CATALOGUE))}")

# By the kind's plain string, as an event carries it (EventKind(name) is slow, per event).
_BY_NAME: dict[str, type[Payload]] = {kind.value: payload for kind, payload in CATALOGUE.items()}
EVENT_KINDS = frozenset(CATALOGUE)
INCIDENT_KINDS = frozenset(kind for kind, payload in CATALOGUE.items() if payload.incident)
DEFAULT_ALERT_KINDS = frozenset(kind for kind, payload in CATALOGUE.items() if payload.alert)


def as_data(payload: Payload) -> dict[str, Any]:
    """The payload as the event's ``data``: plain JSON values under the wire's keys."""
    # plain: a Duration from the config is a float subclass, which to_builtins refuses (the
    # crash_loop event carrying one was once lost).
    data: dict[str, Any] = msgspec.to_builtins(payload, enc_hook=plain)
    return data


def payload_of(event: Event) -> Payload | None:
    """An event's data as its kind's payload; None for a kind or data that is not one
    (an event built by hand, or by a newer supervisor)."""
    payload_type = _BY_NAME.get(event.kind)
    if payload_type is None:
        return None
    try:
        return msgspec.convert(event.data, payload_type)
    except msgspec.ValidationError:
        return None
