"""Wiring: the Supervisor plus what lives around it for the whole run.

Started before the programs (so stale locks are gone and remembered settings applied
before the gateway sees them), closed after they stopped:

1. the incident log, metrics and alerts (event sinks);
2. the controller (commands from every door) and the control socket;
3. the janitor: a sweep now, then every ``interval`` and at once when a program exits;
4. systemd notification when not PID 1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from clawsup.protocol import Event
from clawsup.supervisor.config import (
    AlertsConfig,
    Config,
    JanitorConfig,
    MetricsConfig,
    expand_path,
)
from clawsup.supervisor.control import ControlServer, ControlServerError
from clawsup.supervisor.controller import Controller
from clawsup.supervisor.daemon import ComponentError, Supervisor
from clawsup.supervisor.filewatch import FileWatch
from clawsup.supervisor.incidents import IncidentLog
from clawsup.supervisor.inotify import Dispatcher
from clawsup.supervisor.janitor import Janitor, SweepReport
from clawsup.supervisor.kinds import ExitCause, Exited, Payload, RestartReason, StateChanged
from clawsup.supervisor.message_timeout import MessageTimeoutWatch
from clawsup.supervisor.program import Program, State
from clawsup.supervisor.reload import ReloadPlan
from clawsup.supervisor.sdnotify import Notifier

# The variable clawsupctl reads its control endpoint from (client/ctl.py).
SOCKET_ENV = "CLAWSUP_SOCKET"

if TYPE_CHECKING:
    # Imported only when configured: prometheus_client and the HTTP client code cost
    # about 3.6 MiB of RSS that a supervisor without [metrics]/[alerts] should not pay.
    from clawsup.supervisor.alerts import Alerter
    from clawsup.supervisor.metrics import Metrics

log = logging.getLogger("clawsup")

# The breaker's timers and the metrics are brought up to date this often.
_TICK = 1.0
# How long after inotify reports a flag or a request it is looked at: its writer has
# closed it by then.
_AFTER_CHANGE = 0.2


class _Every:
    """Calls ``callback`` every ``interval()`` seconds, from a bare timer on the loop.

    Not a task sleeping in a loop: a task's wake-up resolves a future, then steps the
    coroutine in a second pass of the event loop, and at idle each pass costs some 200 us
    of CPU with cold caches. These run for the supervisor's whole life. A callback that
    raises is reported by the loop's exception handler and runs again next time.
    """

    def __init__(self, interval: Callable[[], float], callback: Callable[[], object]) -> None:
        self._interval = interval
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(interval(), self._fire)
        self.last = self._loop.time()

    def _fire(self) -> None:
        self.last = self._loop.time()
        try:
            self._callback()
        finally:
            # If the callback brought the next time forward, that timer is replaced too.
            self._timer.cancel()
            self._timer = self._loop.call_later(self._interval(), self._fire)

    def no_later_than(self, when: float) -> None:
        """Fire at ``when`` (loop time) if that is sooner than planned."""
        if when < self._timer.when():
            self._timer.cancel()
            self._timer = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        self._timer.cancel()


class Service:
    """Everything around the Supervisor; one instance per run."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.controller: Controller | None = None
        self.control: ControlServer | None = None
        self.janitor: Janitor | None = None
        self.metrics: Metrics | None = None
        self.alerter: Alerter | None = None
        self.incidents: IncidentLog | None = None
        self.notifier = Notifier(unset_environment=True)
        self._timers: list[_Every] = []
        self._janitor_tick_timer: _Every | None = None
        self.files: FileWatch | None = None
        # One inotify instance for the janitor and FileWatch (inotify.py's Dispatcher).
        self._inotify: Dispatcher | None = None
        self._message_timeout = MessageTimeoutWatch()
        self._look_timer: asyncio.TimerHandle | None = None
        self._ready_sent = False
        self._tick_timer: _Every | None = None
        # Alerts replaced by a reload delivering what they had queued, and their
        # successors starting: awaited at close.
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        return self.supervisor.config

    async def start(self) -> None:
        supervisor = self.supervisor
        state_dir = expand_path(self.config.supervisor.state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise ComponentError(f"cannot create state_dir {state_dir}: {error.strerror}") from None
        self.incidents = IncidentLog(state_dir / "incidents.jsonl")
        if self.config.metrics is not None:
            failure = self._start_metrics(self.config.metrics)
            if failure is not None:
                raise ComponentError(failure)
        if self.config.alerts is not None:
            await self._start_alerts(self.config.alerts)
        self.controller = Controller(supervisor, self.incidents, locks_held=self._locks_held)
        await self._start_control()
        self._start_janitor()
        self.controller.apply_overrides()
        self._janitor_tick_timer = _Every(self._janitor_delay, self._janitor_tick)
        self._timers.append(self._janitor_tick_timer)
        self._tick_if_needed()
        if self.notifier.enabled:
            interval = self.notifier.watchdog_interval()
            if interval:
                self.notifier.watchdog()
                self._timers.append(_Every(lambda: interval, self.notifier.watchdog))

    def _tick_if_needed(self) -> None:
        # Nothing else needs a 1 s tick: idle wakeups are what idle CPU is made of. Once
        # started it stays (a reload may stop metrics and start them again).
        if self._tick_timer is None and (
                self.metrics is not None or self.config.breaker is not None):
            self._tick_timer = _Every(lambda: _TICK, self._tick)
            self._timers.append(self._tick_timer)

    def _start_metrics(self, config: MetricsConfig) -> str | None:
        """Serve metrics; the reason if the address cannot be bound."""
        from clawsup.supervisor.metrics import Metrics, MetricsError

        metrics = Metrics(config)
        try:
            metrics.start()
        except MetricsError as error:
            return f"cannot serve metrics: {error}"
        self.metrics = metrics
        return None

    async def _start_alerts(self, config: AlertsConfig) -> None:
        from clawsup.supervisor.alerts import Alerter

        self.alerter = Alerter(config)
        await self.alerter.start()

    def deliver(self, event: Event, payload: Payload) -> None:
        """Every event (``Supervisor.emit``) to every sink, in this order: the incident
        log, metrics, alerts, what the service itself does with it, the control socket's
        event stream. A sink that fails is logged; the others still get the event.
        ``payload`` is the event's data as the producer built it: the sinks that dispatch
        on its type take it as it is, not read back from ``event.data`` each (a ``log``
        event, one per read of a program's output, carries its lines)."""
        sinks: list[functools.partial[None]] = []
        if self.incidents is not None:
            sinks.append(functools.partial(self.incidents.observe, event, payload))
        # Looked up at each event: a reload may start, stop or replace either.
        if self.metrics is not None:
            sinks.append(functools.partial(self.metrics.observe, event, payload))
        if self.alerter is not None:
            sinks.append(functools.partial(self.alerter.submit, event))
        if self.controller is not None:
            sinks.append(functools.partial(self._on_event, event, payload))
        if self.control is not None:
            sinks.append(functools.partial(self.control.publish, event))
        for sink in sinks:
            try:
                sink()
            except Exception:
                log.exception("event sink %r failed", sink.func)

    async def _start_control(self) -> None:
        assert self.controller is not None
        settings = self.config.supervisor
        self.control = ControlServer(
            expand_path(settings.run_dir),
            self.controller.handle,
            max_request_size=settings.max_request_size,
            tcp_endpoint=settings.control_tcp,
            curve_secret_key_file=settings.curve_secret_key_file,
            curve_authorized_keys_dir=settings.curve_authorized_keys_dir,
            quick=self.controller.answer_now,
        )
        try:
            await self.control.start()
        except (ControlServerError, OSError) as error:
            self.control = None
            raise ComponentError(f"cannot open the control socket: {error}") from None
        log.info("control socket at %s", self.control.control_endpoint)
        # Where clawsupctl finds this supervisor, for the programs' own commands (the
        # clawsup skill the agent runs through its exec tool). A program's configured
        # environment still wins.
        self.supervisor.program_environment[SOCKET_ENV] = self.control.control_endpoint

    def _start_janitor(self) -> None:
        self._open_janitor(self.config.janitor)
        assert self.janitor is not None
        # Locks left by a gateway that died with the previous container: no process of
        # ours owns anything yet, so a lock whose PID now belongs to a younger process
        # (PID reuse) or to no process goes now, before the new gateway starts.
        self._handle(self.janitor.sweep({}))

    def _open_janitor(self, config: JanitorConfig) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._inotify = Dispatcher()
        except OSError:
            # No instance to be had (fs.inotify.max_user_instances): each of the two tries
            # its own, says so, and polls.
            self._inotify = None
        self.janitor = Janitor(config, watches=self._inotify)
        self._refresh_message_timeout(force=True)
        self.files = FileWatch(
            expand_path(config.restart_flag) if config.restart_flag else None,
            expand_path(config.ops_requests) if config.ops_requests else None,
            watches=self._inotify,
        )
        if self._inotify is not None:
            loop.add_reader(self._inotify.fileno(), self._inotify_events)

    def _refresh_message_timeout(self, *, force: bool = False) -> None:
        """The explicit message_timeout, else the gateway's turn timeout + a margin, read
        again when the gateway's config changed: at start, on reload, before each sweep."""
        changed = self._message_timeout.refresh(self.config.janitor, self.config.gateway_config)
        current = self._message_timeout.current
        assert current is not None
        if changed is not None:
            if current.problem is not None:
                log.warning("%s; %s", current.problem, current.describe())
            else:
                log.info("%s", current.describe())
        if (changed is not None or force) and self.janitor is not None:
            self.janitor.message_timeout = current.seconds

    def _close_janitor(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
        for watcher in (self.janitor, self.files):
            if watcher is not None:
                watcher.close()  # leaves the shared instance, its watches removed
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._look_timer is not None:
            self._look_timer.cancel()
            self._look_timer = None

    def reconfigure(self, old: Config, plan: ReloadPlan) -> dict[str, str]:
        """After a successful reload: apply what the plan says of the sections around the
        programs (the supervisor applied the programs). Returns section -> why applying
        its change failed."""
        new = plan.config
        if self.controller is not None:
            self.controller.configure(new, keep_breaker=plan.change("breaker") is None)
        if plan.change("janitor") is not None and self.janitor is not None:
            self._close_janitor()
            self._open_janitor(new.janitor)
            if self._janitor_tick_timer is not None:
                self._janitor_tick_timer.no_later_than(asyncio.get_running_loop().time())
        else:
            self._refresh_message_timeout()
        if old.supervisor.log_level != new.supervisor.log_level:
            logging.getLogger().setLevel(new.supervisor.log_level.upper())
        errors = {}
        if plan.change("alerts") is not None:
            self._replace_alerts(new.alerts)
        if plan.change("metrics") is not None:
            error = self._replace_metrics(old.metrics, new.metrics)
            if error is not None:
                errors["metrics"] = error
        self._tick_if_needed()
        return errors

    def _replace_alerts(self, config: AlertsConfig | None) -> None:
        """New alerts take the events from now on; the old ones deliver their queue."""
        old, self.alerter = self.alerter, None
        if old is not None:
            self._in_background(old.close())
        if config is not None:
            from clawsup.supervisor.alerts import Alerter

            self.alerter = Alerter(config)
            self._in_background(self.alerter.start())

    def _replace_metrics(self, old: MetricsConfig | None,
                         new: MetricsConfig | None) -> str | None:
        """Serve on the new address, the counters kept; if it cannot be bound, on the old
        one still. The reason it could not, or None."""
        if self.metrics is None:
            return None if new is None else self._start_metrics(new)
        if new is None:
            self.metrics.close()
            self.metrics = None
            return None
        from clawsup.supervisor.metrics import MetricsError

        try:
            self.metrics.listen_on(new)
        except MetricsError as error:
            if old is not None:
                try:
                    self.metrics.listen_on(old)
                except MetricsError as again:
                    log.error("metrics are not served any more: %s", again)
            return f"{error}; still on {old.listen if old else 'nothing'}"
        return None

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.controller is not None:
            self.controller.close()
        self.notifier.stopping()
        self._close_janitor()
        if self.control is not None:
            await self.control.close()
        if self.alerter is not None:
            await self.alerter.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        self.notifier.close()

    # -- the janitor ------------------------------------------------------------------------

    def owners(self) -> dict[int, str]:
        """pid -> program name for every process of our programs, as of the sampler's
        last tree walk (seconds old at most; a message times out after minutes)."""
        return {
            pid: program.name
            for program in self.supervisor.programs.values()
            for pid in self.supervisor.reaper.processes(program)
        }

    def _locks_held(self, program: Program, refresh: bool) -> list[str]:
        """The transcript locks ``program``'s tree holds, after a sweep of its own (the
        index must be current: restart when idle follows the last lock within a second).
        ``refresh`` re-globs the directories (an agent directory may be new)."""
        if self.janitor is None:
            return []
        report = self.janitor.sweep(self.owners(), refresh=refresh)
        self._handle(report)
        return [str(lock.path) for lock in report.held if lock.program == program.name]

    def program_exited(self, program: Program, pids: set[int]) -> None:
        """Its process and tree are gone (``Supervisor.program_exited``): its locks go
        before it can start again."""
        if self.janitor is not None:
            self._handle(self.janitor.program_exited(program.name, pids, self.owners()))

    def _janitor_tick(self) -> None:
        if self.janitor is not None:
            self._refresh_message_timeout()
            self._handle(self.janitor.sweep(self.owners()))
        self._poll_files()

    def _janitor_delay(self) -> float:
        """Seconds to the next janitor tick.

        Every ``interval`` while time alone can bring work (a lock, a name inotify
        reported, a directory or a flag that is not watched); otherwise not before the
        janitor's next deadline (a full pass, an archive to purge), and an inotify event
        brings the tick forward to one interval after the last. At idle the loop then
        wakes once a full pass, not once an interval.
        """
        interval = self.config.janitor.interval
        if self.files is not None and not self.files.refresh():
            return interval
        quiet_until = self.janitor.quiet_until() if self.janitor is not None else None
        if quiet_until is None:
            return interval
        return max(interval, quiet_until - time.time())

    def _inotify_events(self) -> None:
        """The shared instance is readable. The janitor's dispatch drains it and hands
        FileWatch its events too, which FileWatch keeps for its own on_readable()."""
        assert self.janitor is not None
        assert self.files is not None
        if self.janitor.on_readable():
            # Not at once: a gateway appends to transcripts all the time, and the sweep
            # batches what changed over an interval, as it always did.
            self._tick_within_an_interval()
        if self.files.on_readable():
            # Not at once: the event may be the creation of a flag whose reason is not
            # written yet (``echo reason > restart.flag`` creates, then writes).
            self._look_again(_AFTER_CHANGE)
        if not self.files.complete:
            self._tick_within_an_interval()  # a directory went: look for it every interval

    def _tick_within_an_interval(self) -> None:
        """Bring the janitor tick forward to one interval after the last one."""
        if self._janitor_tick_timer is not None:
            interval = self.config.janitor.interval
            self._janitor_tick_timer.no_later_than(self._janitor_tick_timer.last + interval)

    def _look_again(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._look_timer is not None:
            if self._look_timer.when() <= when:
                return
            self._look_timer.cancel()
        self._look_timer = loop.call_at(when, self._poll_files)

    def _poll_files(self) -> None:
        """The restart flag and the ops inbox: at each tick, and when inotify says so."""
        if self._look_timer is not None:
            self._look_timer.cancel()
            self._look_timer = None
        if self.controller is None:
            return
        settles_at = self.controller.poll_files()
        if settles_at is not None:
            # A request still being written: look again once it has settled.
            self._look_again(max(0.0, settles_at - time.time()) + 0.01)

    def _handle(self, report: SweepReport) -> None:
        supervisor = self.supervisor
        for finding in report.findings():
            # The janitor logged its own line (the watchdog's wording); don't log twice.
            supervisor.emit(finding.payload(), finding.program, finding.message, logged=True)
        for stuck in report.stuck:
            if stuck.program is None or stuck.program not in supervisor.programs:
                continue
            log.warning("restarting %s: a message has held %s for %.0fs", stuck.program,
                        stuck.path, stuck.held_for)
            supervisor.programs[stuck.program].restart(RestartReason.MESSAGE_TIMEOUT)
            if self.controller is not None:
                self.controller.record_model_failure("message_timeout")

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: Event, payload: Payload) -> None:
        supervisor = self.supervisor
        main = supervisor.main
        if not isinstance(payload, (StateChanged, Exited)):
            return
        if event.program == main.name:
            match payload:
                case Exited(restart=True, cause=ExitCause.CRASHED):
                    if self.controller is not None:
                        self.controller.record_model_failure("crash")
                case StateChanged(to=State.RUNNING.value) if not self._ready_sent:
                    self._ready_sent = True
                    self.notifier.ready(f"{main.name} is RUNNING")
                case StateChanged():
                    self.notifier.status(event.message)
        if self.metrics is not None:
            self.metrics.update_programs(supervisor.statuses())

    def _tick(self) -> None:
        if self.controller is not None:
            self.controller.tick_breaker()
            if self.metrics is not None:
                self.metrics.update_breaker(
                    self.controller.breaker.status(time.monotonic())
                    if self.controller.breaker else None
                )
        if self.metrics is not None:
            self.metrics.update_programs(self.supervisor.statuses())
