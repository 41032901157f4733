"""What operators and skills ask for, from any door: the control socket, the old
``restart.flag``, ops-request files and the model breaker all end up here.

Each command is validated, carried out through the Supervisor (which owns the programs)
and answered with a typed reply. Nothing here raises into the control server: every
failure is an ``ErrorReply`` that says what could not be done and why.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from clawsup import __version__
from clawsup.protocol import (
    BAD_VALUE,
    FAILED,
    INVALID_STATE,
    UNKNOWN_PROGRAM,
    DoneReply,
    ErrorReply,
    Health,
    Incidents,
    IncidentsReply,
    LogLine,
    Logs,
    LogsReply,
    ProgramReply,
    Reload,
    ReloadReply,
    Reply,
    Request,
    Restart,
    ScheduledReply,
    SetModel,
    SetTimezone,
    SettingReply,
    Shutdown,
    Signal,
    Start,
    Status,
    StatusReply,
    Stop,
    Version,
    VersionReply,
    error_reply,
)
from clawsup.protocol import HealthReply as HealthReplyType
from clawsup.supervisor import settings
from clawsup.supervisor.breaker import Decision, ModelBreaker
from clawsup.supervisor.config import Config, ProgramConfig, _signal_number, expand_path
from clawsup.supervisor.daemon import ReloadError, Supervisor
from clawsup.supervisor.idle_restart import (
    CHECK_INTERVAL,
    PendingRestart,
    Verdict,
    decide,
    parse_max_wait,
)
from clawsup.supervisor.incidents import IncidentLog
from clawsup.supervisor.kinds import (
    IdleRestart,
    ModelChanged,
    OverrideDropped,
    RestartCancelled,
    RestartReason,
    RestartRequested,
    RestartScheduled,
    TimezoneChanged,
)
from clawsup.supervisor.opsfiles import (
    FlagError,
    OpsInbox,
    RestartFlag,
    RestartRequest,
    SetModelRequest,
    SetTimezoneRequest,
)
from clawsup.supervisor.program import (
    KILL_TIMEOUT,
    Program,
    State,
    TimerHandle,
)
from clawsup.units import format_duration

log = logging.getLogger("clawsup")


_SETTLED = (State.RUNNING, State.BACKOFF, State.FATAL, State.EXITED, State.STOPPED)
# How long `restart`/`start` wait beyond the program's own timeouts before answering
# with the state it is in. clawsupctl's own wait (WAIT_TIMEOUT in client/ctl.py) covers
# the shipped config's restart: 10 + 5 + (120 + 10 + 5) + 30 = 180 s.
_WAIT_MARGIN = 30.0


# The transcript locks a program's tree holds, as paths; ``refresh`` re-globs the session
# directories first. Given by the service, which owns the janitor.
LocksHeld = Callable[[Program, bool], list[str]]


@dataclass(eq=False)
class _IdleWait:
    """A restart when idle, pending: keyed on the program object, not its name (a reload
    may remove a program and add another of the same name)."""

    program: Program
    pending: PendingRestart
    timer: TimerHandle | None = None


def _running_pid(program: Program) -> int | None:
    return program.pid if program.state in (State.STARTING, State.RUNNING) else None


def _start_settles_within(config: ProgramConfig) -> float:
    """The longest a start can leave a program unsettled: start_seconds, or with a
    liveness probe start_timeout and then the stop of that failed start."""
    if config.liveness is None:
        return config.start_seconds
    return config.liveness.start_timeout + config.stop_timeout + KILL_TIMEOUT


class Controller:
    def __init__(self, supervisor: Supervisor, incidents: IncidentLog | None,
                 locks_held: LocksHeld) -> None:
        self.supervisor = supervisor
        self.incidents = incidents
        self.breaker: ModelBreaker | None = None
        self._model_cache: tuple[float, str | None, str | None] | None = None
        self._restart_flag: RestartFlag | None = None
        self._ops: OpsInbox | None = None
        self.locks_held = locks_held
        self._idle_waits: list[_IdleWait] = []
        self.configure(supervisor.config)

    @property
    def config(self) -> Config:
        return self.supervisor.config

    def configure(self, config: Config, *, keep_breaker: bool = False) -> None:
        """Take the settings of ``config``; with ``keep_breaker`` (a reload that left
        [breaker] as it was) the breaker keeps its state: an open one stays open on its
        fallback instead of taking the fallback now in the file for the primary."""
        janitor = config.janitor
        self._restart_flag = RestartFlag(janitor.restart_flag) if janitor.restart_flag else None
        self._ops = OpsInbox(janitor.ops_requests) if janitor.ops_requests else None
        self._model_cache = None  # gateway_config.path may name another file now
        if keep_breaker:
            return
        if config.breaker is not None and config.breaker.fallbacks:
            # Rebuilt by a reload: the primary is still the operator's, not what an open
            # breaker wrote to the file.
            model = (self.breaker.primary if self.breaker is not None
                     else self.current_settings()[0])
            self.breaker = ModelBreaker(config.breaker, model)
        else:
            self.breaker = None

    # -- startup ------------------------------------------------------------------------------

    def apply_overrides(self) -> None:
        """Re-apply set_model / set_timezone from state_dir before the gateway starts."""
        state_dir = self.config.supervisor.state_dir
        overrides = settings.load_overrides(state_dir)
        try:
            result = settings.apply_overrides(self.config.gateway_config, overrides)
        except settings.SettingError as error:
            log.error("cannot re-apply remembered settings: %s", error)
        else:
            for change in result.changes:
                log.info("re-applied %s = %r (was %r)", change.key, change.new, change.old)
            for dropped in result.dropped:
                self.supervisor.emit(
                    OverrideDropped(key=dropped.key, value=dropped.value, found=dropped.found,
                                    replaced=dropped.replaced, reason=dropped.reason),
                    self._gateway_program().name,
                    f"not re-applying {dropped.key} = {dropped.value!r}: the file holds "
                    f"{dropped.found!r} ({dropped.reason}); that value stays and clawsup "
                    "forgets its own",
                )
            if result.dropped:
                overrides = result.kept
                try:
                    settings.save_overrides(state_dir, overrides)
                except settings.SettingError as error:
                    log.error("cannot forget the dropped settings: %s", error)
        zone = settings.override_value(overrides.timezone)
        if zone is not None:
            self._gateway_program().extra_environment["TZ"] = zone
        if self.breaker is not None:
            model, _ = self.current_settings()
            self.breaker.set_primary(model, time.monotonic())

    # -- the control socket ---------------------------------------------------------------------

    def answer_now(self, request: Request) -> Reply | None:
        """Commands that never wait, answered without a task (the control server's quick
        handler); None for the others."""
        match request:
            case Status():
                return self.status()
            case Health():
                return self.health()
            case Version():
                return VersionReply(version=__version__)
            case Logs(program=name, lines=count, after=after):
                return self.logs(name, count, after)
            case _:
                return None

    async def handle(self, request: Request) -> Reply:
        quick = self.answer_now(request)
        if quick is not None:
            return quick
        match request:
            case Status() | Health() | Version() | Logs():
                raise AssertionError("answered by answer_now")
            case Start(program=name, wait=wait):
                return await self._start(name, wait)
            case Stop(program=name, wait=wait):
                self._cancel_idle_restart(name, "stopped by operator")
                return await self._stop(name, wait)
            case Restart(program=name, when_idle=True, max_wait=max_wait, reason=reason):
                return self.restart_when_idle(name, max_wait, reason or "")
            case Restart(max_wait=max_wait) if max_wait is not None:
                return error_reply(BAD_VALUE, "max_wait applies only to a restart with when_idle")
            case Restart(program=name, wait=wait, reason=reason):
                self._cancel_idle_restart(name, "restarted by operator")
                return await self.restart(name, reason or "", wait)
            case Signal(signal=signame, program=name):
                return self._signal(signame, name)
            case SetModel(model=model):
                return self.set_model(model, "control socket")
            case SetTimezone(timezone=zone):
                return self.set_timezone(zone, "control socket")
            case Reload(dry_run=dry_run):
                try:
                    plan = self.supervisor.reload(dry_run=dry_run)
                except ReloadError as error:
                    return error_reply(FAILED, str(error))
                return ReloadReply(
                    message=("dry run, nothing applied: " if dry_run else "config reloaded: ")
                    + ("no changes" if not plan.changes else f"{len(plan.changes)} change(s)"),
                    dry_run=dry_run, changes=list(plan.changes))
            case Shutdown():
                self.supervisor.request_shutdown()
                return DoneReply(message="shutting down")
            case Incidents(since=since, limit=limit):
                if self.incidents is None:
                    return IncidentsReply(counts={}, latest=[])
                return self.incidents.summary(since, time.time(), max(0, min(limit, 1000)))

    def status(self) -> StatusReply:
        model, zone = self.current_settings()
        return StatusReply(
            programs=self.supervisor.statuses(),
            supervisor_pid=os.getpid(),
            supervisor_uptime=time.monotonic() - self.supervisor.started_at,
            version=__version__,
            model=model,
            timezone=zone,
            breaker=self.breaker.status(time.monotonic()) if self.breaker else None,
        )

    def health(self) -> HealthReplyType:
        reply = self.supervisor.health()
        if self.breaker is not None and self.breaker.state != "closed":
            reasons = [*reply.reasons, f"model breaker is {self.breaker.state}"]
            return HealthReplyType(healthy=False, reasons=reasons)
        return reply

    def logs(self, name: str | None, count: int, after: int | None) -> Reply:
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        if count < 0:
            return error_reply(BAD_VALUE, f"lines must be 0 or more, got {count}")
        output = self.supervisor.outputs.get(program.name)
        kept = [] if output is None else output.buffer.tail(count, after)
        return LogsReply(program=program.name,
                         lines=[LogLine(seq=line.seq, ts=line.ts, stream=line.stream,
                                        pid=line.pid, text=line.text) for line in kept])

    def _program(self, name: str | None) -> Program | ErrorReply:
        if name is None:
            return self.supervisor.main
        program = self.supervisor.programs.get(name)
        if program is None:
            known = ", ".join(self.supervisor.programs)
            return error_reply(UNKNOWN_PROGRAM, f"no program named {name!r} (known: {known})")
        return program

    def _gateway_program(self) -> Program:
        name = self.config.gateway_config.program
        return self.supervisor.programs[name] if name else self.supervisor.main

    async def _start(self, name: str | None, wait: bool) -> Reply:
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        if program.state in (State.STARTING, State.RUNNING):
            return error_reply(INVALID_STATE, f"{program.name} is already {program.state.value}")
        if program.state is State.STOPPING:
            return error_reply(INVALID_STATE, f"cannot start {program.name} while it is STOPPING")
        program.start("started by operator")
        if wait:
            await self.supervisor.wait_for(
                lambda: program.state in _SETTLED,
                _start_settles_within(program.config) + _WAIT_MARGIN,
            )
        return self._program_reply(program, "start", waited=wait)

    async def _stop(self, name: str | None, wait: bool) -> Reply:
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        if program.state is State.STOPPED:
            return error_reply(INVALID_STATE, f"{program.name} is already STOPPED")
        program.stop("stopped by operator")
        if wait:
            await self.supervisor.wait_for(
                lambda: program.state is State.STOPPED or program.unkillable,
                program.config.stop_timeout + KILL_TIMEOUT + _WAIT_MARGIN,
            )
        if program.unkillable:
            return error_reply(
                FAILED, f"{program.name} is still present after SIGKILL (stuck in the kernel)"
            )
        # The reply's fields say it all: a message would only say it again.
        return ProgramReply(program=program.name, state=program.state.value, pid=program.pid)

    async def restart(self, name: str | None, detail: str, wait: bool) -> Reply:
        """A client's restart: always ``requested``, its free text only ``detail``."""
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        old_pid = program.pid
        program.restart(RestartReason.REQUESTED, detail)
        if not wait:
            return ProgramReply(program=program.name, state=program.state.value, pid=program.pid,
                                message=f"restarting {program.name}")

        def settled() -> bool:
            if program.state is State.RUNNING:
                return program.pid != old_pid
            return program.state in _SETTLED or program.unkillable

        timeout = (program.config.stop_timeout + KILL_TIMEOUT
                   + _start_settles_within(program.config) + _WAIT_MARGIN)
        await self.supervisor.wait_for(settled, timeout)
        return self._program_reply(program, "restart", waited=True)

    # -- restart when idle (idle_restart.py decides) ------------------------------------------

    def restart_when_idle(self, name: str | None, max_wait: float | str | None,
                          detail: str) -> Reply:
        """Schedule a restart for when the program holds no transcript lock; answer at once.

        A second request while one is pending changes nothing and gets the pending one's
        schedule: requests from several turns must not stack into several restarts.
        """
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        try:
            seconds = parse_max_wait(max_wait)
        except ValueError as error:
            return error_reply(BAD_VALUE, f"cannot restart {program.name} when idle: {error}")
        waiting = self._idle_wait(program)
        if waiting is not None:
            return self._scheduled(waiting, self.locks_held(program, False), already_pending=True)
        clock = self.supervisor.clock
        pid = _running_pid(program)
        held = self.locks_held(program, True) if pid is not None else []
        waiting = _IdleWait(program, PendingRestart(
            pid=pid or 0, requested_at=clock.time(), deadline=clock.monotonic() + seconds,
            max_wait=seconds, detail=detail))
        reply = self._scheduled(waiting, held)
        if pid is None or not held:
            # Nothing in flight (or nothing running at all): no reason to wait.
            self._restart_idle(waiting, Verdict.IDLE, [])
            return reply
        self.supervisor.emit(
            RestartScheduled(reason=RestartReason.REQUESTED_WHEN_IDLE, detail=detail, pid=pid,
                             max_wait=seconds, deadline=reply.deadline, locks=held),
            program.name,
            f"restart of {program.name} when idle asked for{_quoted(detail)}: waiting for "
            f"{len(held)} transcript lock(s) to go, at most {_seconds(seconds)}")
        self._idle_waits.append(waiting)
        self._check_idle_later(waiting)
        return reply

    def _scheduled(self, waiting: _IdleWait, held: list[str], *,
                   already_pending: bool = False) -> ScheduledReply:
        pending, program = waiting.pending, waiting.program
        deadline = pending.requested_at + pending.max_wait
        if already_pending:
            message = (f"a restart of {program.name} when idle is already pending (asked for "
                       f"at {_clock(pending.requested_at)}): it happens when no transcript lock "
                       f"is held, at the latest at {_clock(deadline)}")
        elif held:
            message = (f"restart of {program.name} scheduled: when no transcript lock is held "
                       f"({len(held)} now), at the latest at {_clock(deadline)} "
                       f"(max wait {_seconds(pending.max_wait)})")
        else:
            message = f"no transcript lock held: restarting {program.name} now"
        return ScheduledReply(
            program=program.name, pid=program.pid, requested_at=pending.requested_at,
            deadline=deadline, max_wait=pending.max_wait, reason=pending.detail,
            already_pending=already_pending, locks=held, message=message)

    def _idle_wait(self, program: Program) -> _IdleWait | None:
        return next((w for w in self._idle_waits if w.program is program), None)

    def _check_idle_later(self, waiting: _IdleWait) -> None:
        waiting.timer = self.supervisor.call_later(
            CHECK_INTERVAL, lambda: self._check_idle(waiting))

    def _check_idle(self, waiting: _IdleWait) -> None:
        if waiting not in self._idle_waits:
            return  # cancelled; a timer that fires late is ignored
        program = waiting.program
        pid_now = _running_pid(program)
        held = self.locks_held(program, False) if pid_now is not None else []
        verdict = decide(waiting.pending, pid_now=pid_now, held=held,
                         now=self.supervisor.clock.monotonic())
        if verdict is Verdict.WAIT:
            self._check_idle_later(waiting)
            return
        self._idle_waits.remove(waiting)
        if verdict is Verdict.OVERTAKEN:
            now = f"pid {pid_now}" if pid_now is not None else program.state.value
            self._cancelled(waiting, f"pid {waiting.pending.pid} is gone ({program.name} is {now})")
            return
        self._restart_idle(waiting, verdict, held)

    def _restart_idle(self, waiting: _IdleWait, verdict: Verdict, held: list[str]) -> None:
        program, pending = waiting.program, waiting.pending
        waited = max(0.0, self.supervisor.clock.time() - pending.requested_at)
        at_max_wait = verdict is Verdict.MAX_WAIT
        if at_max_wait:
            why = (f"max wait {_seconds(pending.max_wait)} ran out with {len(held)} transcript "
                   f"lock(s) still held ({', '.join(held)})")
        else:
            why = f"no transcript lock held after {_seconds(waited)}"
        self.supervisor.emit(
            IdleRestart(reason=RestartReason.REQUESTED_WHEN_IDLE, detail=pending.detail,
                        pid=program.pid, waited=round(waited, 3), max_wait=pending.max_wait,
                        at_max_wait=at_max_wait, locks=held),
            program.name,
            f"restarting {program.name} as asked for{_quoted(pending.detail)}: {why}")
        program.restart(RestartReason.REQUESTED_WHEN_IDLE, pending.detail)

    def _cancel_idle_restart(self, name: str | None, cause: str) -> None:
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return
        waiting = self._idle_wait(program)
        if waiting is not None:
            self._idle_waits.remove(waiting)
            self._cancelled(waiting, cause)

    def _cancelled(self, waiting: _IdleWait, cause: str) -> None:
        if waiting.timer is not None:
            waiting.timer.cancel()
        program, pending = waiting.program, waiting.pending
        self.supervisor.emit(
            RestartCancelled(reason=RestartReason.REQUESTED_WHEN_IDLE, detail=pending.detail,
                             cause=cause),
            program.name,
            f"pending restart of {program.name} when idle{_quoted(pending.detail)} "
            f"cancelled: {cause}")

    def close(self) -> None:
        """The supervisor is going: pending restarts go with it, quietly."""
        for waiting in self._idle_waits:
            if waiting.timer is not None:
                waiting.timer.cancel()
        self._idle_waits.clear()

    def _program_reply(self, program: Program, what: str, *, waited: bool) -> Reply:
        if program.state is State.RUNNING:
            return ProgramReply(program=program.name, state="RUNNING", pid=program.pid)
        if program.state is State.STARTING and not waited:
            return ProgramReply(program=program.name, state="STARTING", pid=program.pid)
        if program.state in (State.STARTING, State.STOPPING) and not program.unkillable:
            # Only when a timer of its own is late (an overloaded host): not a failure yet.
            return error_reply(
                FAILED, f"{what} of {program.name} did not finish in time: it is still "
                f"{program.state.value}; `clawsupctl status` shows when it is RUNNING"
            )
        why = program.last_exit.describe() if program.last_exit else program.state.value
        if program.unkillable:
            why = "the old process is still present after SIGKILL"
        return error_reply(
            FAILED, f"{what} of {program.name} failed: it is {program.state.value} ({why})"
        )

    def _signal(self, signame: str, name: str | None) -> Reply:
        program = self._program(name)
        if isinstance(program, ErrorReply):
            return program
        try:
            signum = _signal_number(signame)
        except ValueError as error:
            return error_reply(BAD_VALUE, str(error))
        pid = program.pid
        if pid is None:
            return error_reply(INVALID_STATE,
                               f"cannot signal {program.name}: it is {program.state.value}")
        try:
            # Its process group, as `clawsupctl signal` says: the leader and the children
            # that stayed in its group (process_group=0 at spawn: the pgid is its pid).
            os.killpg(pid, signum)
        except ProcessLookupError:
            return error_reply(INVALID_STATE, f"cannot signal {program.name}: pid {pid} is gone")
        return ProgramReply(program=program.name, state=program.state.value, pid=pid,
                            message=f"sent {signal.Signals(signum).name} to {program.name}'s "
                                    "process group")

    # -- settings -----------------------------------------------------------------------------

    def current_settings(self) -> tuple[str | None, str | None]:
        """(model, timezone) from the gateway's config, re-read only when it changed."""
        gateway = self.config.gateway_config
        path = expand_path(gateway.path)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None, None
        if self._model_cache is not None and self._model_cache[0] == mtime:
            return self._model_cache[1], self._model_cache[2]
        try:
            doc = settings.read_gateway_config(path)
        except settings.SettingError as error:
            log.debug("cannot read the gateway config: %s", error)
            return None, None
        model, zone = settings.get_key(doc, gateway.model_key), settings.get_key(
            doc, gateway.timezone_key)
        result = (model if isinstance(model, str) else None, zone if isinstance(zone, str) else None)
        self._model_cache = (mtime, *result)
        return result

    def set_model(self, model: str, source: str, *, by_breaker: bool = False) -> Reply:
        try:
            change = settings.set_model(self.config.gateway_config, model)
        except settings.SettingError as error:
            return error_reply(BAD_VALUE, str(error))
        if not by_breaker:
            # The operator's choice is the new primary; the breaker's switches are not.
            self._remember(model=change)
            if self.breaker is not None:
                self.breaker.set_primary(model, time.monotonic())
        elif change.changed:
            self._remember_written(model)
        applied = self._apply(change.changed)
        self.supervisor.emit(
            ModelChanged(old=change.old, new=change.new, source=source, applied=applied),
            self._gateway_program().name, f"model {change.old!r} -> {change.new!r} ({source})",
        )
        return SettingReply(key=change.key, old=change.old, new=change.new, applied=applied)

    def set_timezone(self, zone: str, source: str) -> Reply:
        try:
            change = settings.set_timezone(self.config.gateway_config, zone)
        except settings.SettingError as error:
            return error_reply(BAD_VALUE, str(error))
        self._remember(timezone=change)
        # The gateway reads userTimezone live; TZ is for what it formats through libc,
        # and for every future start.
        self._gateway_program().extra_environment["TZ"] = zone
        applied = self._apply(change.changed)
        self.supervisor.emit(
            TimezoneChanged(old=change.old, new=change.new, source=source, applied=applied),
            self._gateway_program().name,
            f"time zone {change.old!r} -> {change.new!r} ({source})",
        )
        return SettingReply(key=change.key, old=change.old, new=change.new, applied=applied)

    def _remember(self, *, model: settings.Change | None = None,
                  timezone: settings.Change | None = None) -> None:
        """Persist what an operator set, with the value it replaced (settings.py)."""
        state_dir = self.config.supervisor.state_dir
        current = settings.load_overrides(state_dir)
        updated = settings.Overrides(
            model=current.model if model is None else settings.remembered(current.model, model),
            timezone=(current.timezone if timezone is None
                      else settings.remembered(current.timezone, timezone)),
        )
        self._save_overrides(updated)

    def _remember_written(self, model: str) -> None:
        """The breaker switched models: the file holding its fallback at the next start
        is clawsup's own doing, over which the operator's model is re-applied."""
        state_dir = self.config.supervisor.state_dir
        current = settings.load_overrides(state_dir)
        if not isinstance(current.model, settings.Override):
            return
        self._save_overrides(msgspec.structs.replace(
            current, model=msgspec.structs.replace(current.model, written=model)))

    def _save_overrides(self, updated: settings.Overrides) -> None:
        state_dir = self.config.supervisor.state_dir
        try:
            settings.save_overrides(state_dir, updated)
        except settings.SettingError as error:
            log.error("the change is applied but will not survive a restart: %s", error)

    def _apply(self, changed: bool) -> str:
        if not changed:
            return "unchanged"
        if self.config.gateway_config.apply == "restart":
            program = self._gateway_program()
            program.restart(RestartReason.CONFIG_CHANGED)
            return "restart"
        return "reload"

    # -- the old watchdog's files ---------------------------------------------------------------

    def poll_files(self) -> float | None:
        """The restart flag and the ops-requests inbox; called every janitor interval and
        when inotify sees them change. Returns when (wall clock) a request file that is
        still being written will have settled, to look again then; None if there is none."""
        if self._restart_flag is not None:
            try:
                reason = self._restart_flag.take()
            except FlagError as error:
                log.error("%s", error)
                reason = None
            if reason is not None:
                program = self.supervisor.main
                why = f"restart flag: {reason}" if reason else "restart flag"
                self.supervisor.emit(
                    RestartRequested(reason=RestartReason.RESTART_FLAG, detail=reason),
                    program.name, f"{why}: restarting {program.name}")
                program.restart(RestartReason.RESTART_FLAG, reason)
        if self._ops is None:
            return None
        for pending in self._ops.take():
            request = pending.request
            reply: Reply
            match request:
                case RestartRequest(program=target_name, reason=ops_reason):
                    target = self._program(target_name)
                    if isinstance(target, ErrorReply):
                        reply = target
                    else:
                        target.restart(RestartReason.OPS_REQUEST, ops_reason or "")
                        reply = ProgramReply(program=target.name, state=target.state.value,
                                             pid=target.pid,
                                             message=f"restarting {target.name}: {ops_reason or ''}")
                case SetModelRequest(model=model):
                    reply = self.set_model(model, f"ops request {pending.name}")
                case SetTimezoneRequest(timezone=zone):
                    reply = self.set_timezone(zone, f"ops request {pending.name}")
                case _:
                    continue
            ok = not isinstance(reply, ErrorReply)
            result: dict[str, Any] = (
                {"code": reply.error.code, "message": reply.error.message}
                if isinstance(reply, ErrorReply) else _as_dict(reply)
            )
            self._ops.finish(pending, ok, result)
        return self._ops.settles_at

    # -- the model breaker ----------------------------------------------------------------------

    def record_model_failure(self, why: str) -> None:
        if self.breaker is None:
            return
        model, _ = self.current_settings()
        self._act(self.breaker.record_failure(model, time.monotonic()), why)

    def tick_breaker(self) -> None:
        if self.breaker is not None:
            self._act(self.breaker.tick(time.monotonic()), "timer")

    def _act(self, decision: Decision | None, why: str) -> None:
        if decision is None:
            return
        self.supervisor.emit(msgspec.structs.replace(decision.payload, cause=why),
                             self._gateway_program().name, decision.message)
        if decision.switch_to is not None:
            reply = self.set_model(decision.switch_to, "model breaker", by_breaker=True)
            if isinstance(reply, ErrorReply):
                log.error("the model breaker could not switch models: %s", reply.error.message)


def _quoted(detail: str) -> str:
    return f" ({detail!r})" if detail else ""


def _seconds(seconds: float) -> str:
    return format_duration(seconds)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _as_dict(reply: Reply) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(reply)
    result.pop("ok", None)
    return result
