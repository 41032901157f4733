"""Every kind of event the supervisor emits: the one catalogue.

The incident log (incidents.py), the log level of an event (daemon.py) and the kinds an
``[alerts] events`` list may name (config.py) are all read from here, so a kind is named
once, with what it means. Every kind is alertable: an operator may want to hear of a
routine step too (``restarted``), and the quiet period keeps that from flooding.

tests/test_every_event.py scans the supervisor's source for the kinds it emits and fails
on one missing here (or one it does not raise through the real producers).
"""

from __future__ import annotations

from dataclasses import dataclass

from clawsup.protocol import EventKind


@dataclass(frozen=True)
class Kind:
    name: str
    meaning: str
    # Something that went wrong and that clawsup acted on: written to the incident log.
    incident: bool = False
    # Routine (logged at INFO); everything else is a recovery or a problem (WARNING).
    routine: bool = False


_CATALOGUE = (
    # A program's life (program.py).
    Kind("state", "a program changed state", routine=True),
    Kind("exited", "a program's process exited; an incident when it crashed", routine=True),
    Kind("backoff", "a program waits before its next start", routine=True),
    Kind("restarted", "a program was started again", routine=True),
    Kind("crash_loop", "too many restarts in the window: start given up until cooldown",
         incident=True),
    Kind("fatal", "a program is FATAL", incident=True),
    Kind("unkillable", "a process is still present after SIGKILL", incident=True),
    # What the samplers and probes found (daemon.py, hang.py).
    Kind("hung", "the main thread stayed in D state: SIGKILL and respawn", incident=True),
    Kind("thread_hung", "another thread stayed in D state; the process cannot be killed "
         "until the kernel returns", incident=True),
    Kind("zombie_leak", "too many zombie children: graceful restart", incident=True),
    Kind("liveness_failed", "the liveness probe failed in a row: restart", incident=True),
    Kind("resource_limit", "the program's tree stayed over max_rss or max_cpu: graceful "
         "restart", incident=True),
    Kind("reaped", "orphaned processes re-parented to clawsup were reaped"),
    # Program output (daemon.py, logbuffer.py): what `clawsupctl logs -f` follows.
    Kind("log", "lines a program printed (one event per read of its output)", routine=True),
    # The janitor (janitor.py).
    Kind("orphan_lock", "a transcript lock of a dead owner was removed", incident=True),
    Kind("session_archived", "an oversized transcript was archived", incident=True),
    Kind("archive_purged", "old archived transcripts were deleted", routine=True),
    Kind("message_timeout", "a message held its lock too long: restart", incident=True),
    # The model breaker (breaker.py).
    Kind("breaker_open", "the model failed too often: switched to a fallback", incident=True),
    Kind("breaker_half_open", "the primary model is tried again", routine=True),
    Kind("breaker_closed", "the primary model works again", routine=True),
    # Operators' requests (controller.py, daemon.py).
    Kind("model_changed", "the gateway's model was set", routine=True),
    Kind("timezone_changed", "the gateway's time zone was set", routine=True),
    Kind("override_dropped", "a remembered setting was not re-applied: the gateway config "
         "was edited since"),
    Kind("restart_requested", "a restart was asked for through restart.flag", routine=True),
    Kind("restart_scheduled", "a restart when idle was asked for: it waits until the "
         "program holds no transcript lock, or max_wait", routine=True),
    # An incident although asked for: the agent asks for it from a chat ("restart
    # yourself"), and "why did you restart last night?" must find it in the incident log;
    # at max_wait it also cut a turn short.
    Kind("idle_restart", "a restart asked for when idle was carried out: no transcript "
         "lock was held, or max_wait ran out with one still held", incident=True),
    Kind("restart_cancelled", "a pending restart when idle was dropped: an explicit stop or "
         "restart, or its process went", routine=True),
    Kind("reloaded", "the config was reloaded", routine=True),
    Kind("reload_failed", "a config reload failed; the old config is kept"),
)

EVENT_KINDS: dict[str, Kind] = {kind.name: kind for kind in _CATALOGUE}
# The wire enum (what a client may name) and this catalogue are one list, checked at import.
if set(EVENT_KINDS) != {kind.value for kind in EventKind}:  # pragma: no cover
    raise ImportError("kinds.py and protocol.EventKind disagree: "
                      f"{sorted(set(EVENT_KINDS) ^ {kind.value for kind in EventKind})}")
INCIDENT_KINDS = frozenset(kind.name for kind in _CATALOGUE if kind.incident)
ROUTINE_KINDS = frozenset(kind.name for kind in _CATALOGUE if kind.routine)
