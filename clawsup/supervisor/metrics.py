"""Prometheus metrics on ``[metrics] listen``: counters fed by events, gauges by the loop.

The loop adds ``Metrics.observe`` to its event sinks, and calls ``update_programs`` (and
``update_breaker``) whenever it has fresh statuses. prometheus_client serves ``/metrics``
from its own daemon thread, out of the loop's way; its metric objects are thread-safe.

A dedicated ``CollectorRegistry`` keeps the exposition to clawsup's own metrics (no
Python process/GC collectors from the global registry) and lets tests run several.
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

from clawsup import __version__
from clawsup.protocol import BreakerStatus, Event, ProgramStatus
from clawsup.supervisor.config import MetricsConfig, parse_listen
from clawsup.supervisor.kinds import (
    ArchivePurged,
    BreakerChange,
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpen,
    CrashLoop,
    Exited,
    Hung,
    LivenessFailed,
    MessageTimeout,
    OrphanLock,
    Payload,
    Reaped,
    ResourceLimit,
    Restarted,
    SessionArchived,
    Unkillable,
    ZombieLeak,
    payload_of,
)

log = logging.getLogger(__name__)

PROGRAM_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
BREAKER_STATES = ("closed", "open", "half_open")


class MetricsError(Exception):
    """The metrics endpoint cannot be served (bad address, port taken)."""


class Metrics:
    def __init__(self, config: MetricsConfig, *, version: str = __version__) -> None:
        self.host, self._requested_port = parse_listen(config.listen)
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._programs: set[str] = set()
        self._breaker_models: set[str] = set()
        self._define(version)

    def _define(self, version: str) -> None:
        r = self.registry
        Info("clawsup", "The supervisor", registry=r).info(
            {"version": version, "python": platform.python_version(),
             "hostname": socket.gethostname()}
        )
        Gauge("clawsup_start_time_seconds", "When the supervisor started (Unix time)",
              registry=r).set(time.time())
        self.events = Counter("clawsup_events", "Events published, by kind", ["kind"],
                              registry=r)
        self.restarts = Counter("clawsup_restarts", "Program restarts, by reason",
                                ["program", "reason"], registry=r)
        self.exits = Counter("clawsup_exits", "Program exits, by reason",
                             ["program", "reason"], registry=r)
        self.hangs = Counter("clawsup_hangs", "Hangs detected (D state held too long)",
                             ["program"], registry=r)
        self.unkillable = Counter("clawsup_unkillable", "Processes still present after SIGKILL",
                                  ["program"], registry=r)
        self.crash_loops = Counter("clawsup_crash_loops", "Crash loops (program went FATAL)",
                                   ["program"], registry=r)
        self.zombie_leaks = Counter("clawsup_zombie_leaks", "Zombie leaks under a program",
                                    ["program"], registry=r)
        self.zombies_reaped = Counter("clawsup_zombies_reaped", "Zombie processes reaped",
                                      registry=r)
        self.liveness_failures = Counter("clawsup_liveness_failures",
                                         "Liveness probes that failed past their threshold",
                                         ["program"], registry=r)
        self.message_timeouts = Counter("clawsup_message_timeouts",
                                        "Gateway messages stuck past message_timeout",
                                        ["program"], registry=r)
        self.locks_removed = Counter("clawsup_orphan_locks_removed",
                                     "Orphaned session locks removed", registry=r)
        self.sessions_archived = Counter("clawsup_sessions_archived",
                                         "Oversized sessions archived", registry=r)
        self.archives_purged = Counter("clawsup_archives_purged",
                                       "Session archives deleted after retention", registry=r)
        self.breaker_opens = Counter("clawsup_breaker_opens", "Model breaker trips, by model",
                                     ["model"], registry=r)
        self.breaker_state = Gauge("clawsup_breaker_state",
                                   "Model breaker state: 1 for the current one",
                                   ["model", "state"], registry=r)
        self.program_state = Gauge("clawsup_program_state",
                                   "Program state: 1 for the current one",
                                   ["program", "state"], registry=r)
        self.program_uptime = Gauge("clawsup_program_uptime_seconds",
                                    "Seconds since the program's current run started",
                                    ["program"], registry=r)
        self.program_hung = Gauge("clawsup_program_hung", "1 while the program is hung",
                                  ["program"], registry=r)
        self.program_restarts = Gauge("clawsup_program_restarts",
                                      "Restarts since the supervisor started",
                                      ["program"], registry=r)
        # Absent while the program does not run (no reading to give).
        self.program_rss = Gauge("clawsup_program_rss_bytes",
                                 "Resident memory of the program's whole tree",
                                 ["program"], registry=r)
        self.program_cpu = Gauge("clawsup_program_cpu_percent",
                                 "CPU of the program's whole tree, percent of one core",
                                 ["program"], registry=r)
        self.resource_limits = Counter("clawsup_resource_limits",
                                       "Restarts for a resource limit (rss or cpu)",
                                       ["program", "resource"], registry=r)

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> None:
        """Serve ``/metrics``; raises MetricsError when the address cannot be bound."""
        try:
            self._server, self._thread = start_http_server(
                self._requested_port, self.host, registry=self.registry
            )
        except OSError as error:
            raise MetricsError(
                f"cannot serve metrics on {self.host}:{self._requested_port}: {error}"
            ) from error
        log.info("metrics on http://%s/metrics", self.address)

    def listen_on(self, config: MetricsConfig) -> None:
        """Serve the same counters on another address (a reload); raises MetricsError,
        serving nothing then."""
        self.close()
        self.host, self._requested_port = parse_listen(config.listen)
        self.start()

    @property
    def port(self) -> int | None:
        """The bound port (the real one when the config asked for port 0)."""
        if self._server is None:
            return None
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self.port is not None else self._requested_port}"

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, event: Event, payload: Payload | None = None) -> None:
        """Event sink: move the counters. Labels come from the payload's enums and
        programs' names only: a client's free text never makes a time series."""
        program = event.program or ""
        self.events.labels(kind=event.kind).inc()
        # The producer's payload when the supervisor delivers it; read back from the data
        # for an event built elsewhere.
        match payload if payload is not None else payload_of(event):
            case Restarted(reason=reason):
                self.restarts.labels(program=program, reason=reason.value).inc()
            case Exited(cause=cause):
                self.exits.labels(program=program, reason=cause.value).inc()
            case Hung():
                self.hangs.labels(program=program).inc()
            case Unkillable():
                self.unkillable.labels(program=program).inc()
            case CrashLoop():
                self.crash_loops.labels(program=program).inc()
            case ZombieLeak():
                self.zombie_leaks.labels(program=program).inc()
            case Reaped(count=count):
                self.zombies_reaped.inc(max(count, 0))
            case ResourceLimit(resource=resource):
                self.resource_limits.labels(program=program, resource=resource).inc()
            case LivenessFailed():
                self.liveness_failures.labels(program=program).inc()
            case MessageTimeout():
                self.message_timeouts.labels(program=program).inc()
            case OrphanLock():
                self.locks_removed.inc()
            case SessionArchived():
                self.sessions_archived.inc()
            case ArchivePurged():
                self.archives_purged.inc()
            case BreakerOpen() | BreakerHalfOpen() | BreakerClosed() as change:
                self._observe_breaker(change)

    def _observe_breaker(self, change: BreakerChange) -> None:
        if change.model is None or change.state not in BREAKER_STATES:
            return
        if isinstance(change, BreakerOpen):
            self.breaker_opens.labels(model=change.model).inc()
        self._set_breaker_state(change.model, change.state)

    def update_breaker(self, status: BreakerStatus | None) -> None:
        """The breaker's status (None: no breaker); clears models no longer primary."""
        if status is None or status.model is None:
            self._forget_breaker_models(keep=None)
            return
        self._forget_breaker_models(keep=status.model)
        self._set_breaker_state(status.model, status.state)

    def _set_breaker_state(self, model: str, current: str) -> None:
        self._breaker_models.add(model)
        for state in BREAKER_STATES:
            self.breaker_state.labels(model=model, state=state).set(1 if state == current else 0)

    def _forget_breaker_models(self, keep: str | None) -> None:
        for model in self._breaker_models - {keep}:
            for state in BREAKER_STATES:
                self.breaker_state.remove(model, state)
        self._breaker_models &= {keep} if keep is not None else set()

    def update_programs(self, statuses: Iterable[ProgramStatus]) -> None:
        """Gauges from the current program statuses; programs gone since are removed."""
        seen: set[str] = set()
        for status in statuses:
            seen.add(status.name)
            for state in PROGRAM_STATES:
                self.program_state.labels(program=status.name, state=state).set(
                    1 if state == status.state else 0
                )
            self.program_uptime.labels(program=status.name).set(status.uptime or 0.0)
            self.program_hung.labels(program=status.name).set(1 if status.hung else 0)
            self.program_restarts.labels(program=status.name).set(status.restarts)
            for gauge, value in ((self.program_rss, status.rss),
                                 (self.program_cpu, status.cpu_percent)):
                if value is None:
                    gauge.remove(status.name)
                else:
                    gauge.labels(program=status.name).set(value)
        for name in self._programs - seen:
            for state in PROGRAM_STATES:
                self.program_state.remove(name, state)
            self.program_uptime.remove(name)
            self.program_hung.remove(name)
            self.program_restarts.remove(name)
            self.program_rss.remove(name)
            self.program_cpu.remove(name)
        self._programs = seen
