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
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from clawsup.protocol import Event
from clawsup.supervisor.config import Config, expand_path
from clawsup.supervisor.control import ControlServer, ControlServerError
from clawsup.supervisor.controller import Controller
from clawsup.supervisor.daemon import ComponentError, Supervisor
from clawsup.supervisor.incidents import IncidentLog
from clawsup.supervisor.janitor import Janitor, SweepReport
from clawsup.supervisor.program import Program, State
from clawsup.supervisor.sdnotify import Notifier

if TYPE_CHECKING:
    # Imported only when configured: prometheus_client and the HTTP client code cost
    # about 3.6 MiB of RSS that a supervisor without [metrics]/[alerts] should not pay.
    from clawsup.supervisor.alerts import Alerter
    from clawsup.supervisor.metrics import Metrics

log = logging.getLogger("clawsup")

# The breaker's timers and the flag/ops inbox are looked at this often at most.
_TICK = 1.0


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
        self._tasks: list[asyncio.Task[None]] = []
        self._janitor_fd: int | None = None
        self._ready_sent = False

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
        supervisor.sinks.append(self.incidents.observe)
        if self.config.metrics is not None:
            from clawsup.supervisor.metrics import Metrics, MetricsError

            self.metrics = Metrics(self.config.metrics)
            try:
                self.metrics.start()
            except MetricsError as error:
                raise ComponentError(f"cannot serve metrics: {error}") from None
            supervisor.sinks.append(self.metrics.observe)
        if self.config.alerts is not None:
            from clawsup.supervisor.alerts import Alerter

            self.alerter = Alerter(self.config.alerts)
            await self.alerter.start()
            supervisor.sinks.append(self.alerter.submit)
        self.controller = Controller(supervisor, self.incidents)
        supervisor.sinks.append(self._on_event)
        await self._start_control()
        self._start_janitor()
        self.controller.apply_overrides()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._janitor_loop()))
        if self.metrics is not None or self.config.breaker is not None:
            # Nothing else needs a 1 s tick: idle wakeups are what idle CPU is made of.
            self._tasks.append(loop.create_task(self._tick_loop()))
        if self.notifier.enabled:
            interval = self.notifier.watchdog_interval()
            if interval:
                self._tasks.append(loop.create_task(self._watchdog_loop(interval)))

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
        self.supervisor.sinks.append(self.control.publish)
        log.info("control socket at %s", self.control.control_endpoint)

    def _start_janitor(self) -> None:
        self.janitor = Janitor(self.config.janitor)
        fd = self.janitor.fileno()
        if fd is not None:
            asyncio.get_running_loop().add_reader(fd, self.janitor.on_readable)
            self._janitor_fd = fd
        self.supervisor.exit_hooks.append(self._program_exited)
        self.supervisor.reload_hooks.append(self._reconfigure)
        # Locks left by a gateway that died with the previous container: no process of
        # ours owns anything yet, so a lock whose PID now belongs to a younger process
        # (PID reuse) or to no process goes now, before the new gateway starts.
        self._handle(self.janitor.sweep({}))

    def _reconfigure(self, old: Config, new: Config) -> None:
        """After a successful reload: new janitor settings take effect at once."""
        if self.controller is not None:
            self.controller.configure(new)
        if old.janitor != new.janitor and self.janitor is not None:
            if self._janitor_fd is not None:
                asyncio.get_running_loop().remove_reader(self._janitor_fd)
                self._janitor_fd = None
            self.janitor.close()
            self.janitor = Janitor(new.janitor)
            fd = self.janitor.fileno()
            if fd is not None:
                asyncio.get_running_loop().add_reader(fd, self.janitor.on_readable)
                self._janitor_fd = fd

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notifier.stopping()
        if self.janitor is not None:
            if self._janitor_fd is not None:
                asyncio.get_running_loop().remove_reader(self._janitor_fd)
            self.janitor.close()
        if self.control is not None:
            await self.control.close()
        if self.alerter is not None:
            await self.alerter.close()
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
            for pid in self.supervisor.processes(program)
        }

    def _program_exited(self, program: Program, pids: set[int]) -> None:
        if self.janitor is not None:
            self._handle(self.janitor.program_exited(program.name, pids, self.owners()))

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.janitor.interval)
            if self.janitor is not None:
                self._handle(self.janitor.sweep(self.owners()))
            if self.controller is not None:
                self.controller.poll_files()

    def _handle(self, report: SweepReport) -> None:
        supervisor = self.supervisor
        for finding in report.findings():
            # The janitor logged its own line (the watchdog's wording); don't log twice.
            supervisor.emit(finding.kind, finding.program, finding.message,
                            finding.event_data(), logged=True)
        for stuck in report.stuck:
            if stuck.program is None or stuck.program not in supervisor.programs:
                continue
            log.warning("restarting %s: a message has held %s for %.0fs", stuck.program,
                        stuck.path, stuck.held_for)
            supervisor.programs[stuck.program].restart("message_timeout")
            if self.controller is not None:
                self.controller.record_model_failure("message_timeout")

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        supervisor = self.supervisor
        main = supervisor.main
        crashed = (event.kind == "exited" and event.program == main.name
                   and event.data.get("restart") and event.data.get("reason") == "crashed")
        if crashed and self.controller is not None:
            self.controller.record_model_failure("crash")
        if event.kind == "state" and event.program == main.name:
            to = event.data.get("to")
            if to == State.RUNNING.value and not self._ready_sent:
                self._ready_sent = True
                self.notifier.ready(f"{main.name} is RUNNING")
            else:
                self.notifier.status(event.message)
        if self.metrics is not None and event.kind in ("state", "exited"):
            self.metrics.update_programs(supervisor.statuses())

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            if self.controller is not None:
                self.controller.tick_breaker()
                if self.metrics is not None:
                    self.metrics.update_breaker(
                        self.controller.breaker.status(time.monotonic())
                        if self.controller.breaker else None
                    )
            if self.metrics is not None:
                self.metrics.update_programs(self.supervisor.statuses())

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


async def _serve(config: Config, config_paths: list[str]) -> int:
    supervisor = Supervisor(config, config_paths)
    service = Service(supervisor)
    supervisor.components.append(service)
    return await supervisor.run()


def run_service(config: Config, config_paths: list[str]) -> int:
    return asyncio.run(_serve(config, config_paths))
