"""The supervisor: the program table, the effects programs ask for, reload and shutdown.

Read ``Supervisor.run`` first: it is the list of steps, tini-style. Everything that
changes a program's state goes through ``Program`` (program.py); this module only turns
the world (signals, exit statuses, requests) into calls on it, and carries out what it
asks for (spawn, kill, timers, events) through the rooms main.py gives it: the reaper
(reaper.py), the watches (watch.py), the output relay (relay.py) and the service around
the programs (service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from clawsup.protocol import Event, HealthReply, ProgramStatus
from clawsup.supervisor import kinds, libc
from clawsup.supervisor.config import (
    Config,
    ConfigError,
    ProgramConfig,
    load_config,
)
from clawsup.supervisor.logbuffer import Outputs
from clawsup.supervisor.program import Program, SpawnError, State, TimerHandle
from clawsup.supervisor.reaper import Reaper, become_subreaper
from clawsup.supervisor.reload import WATCH_KEYS, ReloadPlan, plan_reload
from clawsup.supervisor.spawn import reset_signal_state
from clawsup.supervisor.tree import PROGRAM_ENV

if TYPE_CHECKING:
    from clawsup.supervisor.relay import Relay
    from clawsup.supervisor.service import Service
    from clawsup.supervisor.watch import Watches

log = logging.getLogger("clawsup")


def _done_stopping(program: Program) -> bool:
    """Stopped, or stuck in the kernel: either way shutdown cannot wait for it longer."""
    return program.state is not State.STOPPING or program.unkillable


class ReloadError(Exception):
    """The config could not be reloaded; nothing was changed. The message says why."""


class ComponentError(Exception):
    """A component could not start (the control socket is taken...): clawsup exits 1."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def release_free_memory() -> bool:
    """Return freed heap pages to the kernel; False where libc cannot (musl).

    glibc keeps memory that was malloc'ed and freed mapped, for reuse, except at the very
    top of the heap: after start-up that is about 1.1 MiB of RSS nothing uses again.
    ``malloc_trim(0)`` releases every whole free page (MADV_DONTNEED), wherever it is.
    """
    return libc.malloc_trim()


class Supervisor:
    """The program table; built and wired by ``main.build``, which sets ``reaper``,
    ``watches``, ``relay`` and ``service``."""

    reaper: Reaper
    watches: Watches
    relay: Relay
    service: Service

    def __init__(
        self,
        config: Config,
        config_paths: list[str] | None = None,
        clock: SystemClock | None = None,
    ) -> None:
        self.config = config
        self.config_paths = config_paths or []
        self.clock = clock or SystemClock()
        self.programs: dict[str, Program] = {}
        self.started_at = self.clock.monotonic()
        # Removed by a reload and still stopping, by name: a program added again under
        # that name waits for it (its tree, cgroup and locks go by the name).
        self._leaving: dict[str, Program] = {}
        # A program added by a reload while its namesake was leaving: started after it.
        self._start_after_leaving: dict[str, Program] = {}
        self.outputs = Outputs()  # what each program printed (logbuffer.py)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown_requested: asyncio.Event | None = None
        self._exit_code: int | None = None
        self._state_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._random = random.Random()
        # Set for every program by the service (CLAWSUP_SOCKET); a program's own
        # ``environment`` and its extra_environment win.
        self.program_environment: dict[str, str] = {}

    # -- the steps ------------------------------------------------------------------------

    async def run(self) -> int:
        """Supervise until told to stop; return the exit status for the container."""
        self._loop = asyncio.get_running_loop()
        self._shutdown_requested = asyncio.Event()
        # 1. Orphans must come to us: as PID 1 they do anyway; otherwise ask the kernel.
        become_subreaper()
        #    A program is its whole tree: a cgroup of its own where we may make one.
        self.reaper.trees.open(self.config.supervisor.cgroups)
        # 2. Whatever mask or ignored signals we inherited must not reach the programs.
        reset_signal_state()
        # 3. Signals become events on the loop (wakeup fd), never work in a handler.
        self._install_signal_handlers()
        # 4. Reap anything that exited before we were ready (inherited children).
        self.reaper.reap()
        # 5. Create the programs, then bring up the service around them (control
        #    socket, janitor...): stale locks are cleared and remembered settings applied
        #    before the gateway starts.
        for name, program_config in self.config.programs.items():
            self._add_program(name, program_config)
        try:
            await self.service.start()
        except ComponentError as error:
            log.error("%s", error)
            self._remove_signal_handlers()
            self.watches.close()
            return 1
        # 6. Start the programs in the order the config lists them.
        for program in list(self.programs.values()):
            if program.config.autostart:
                program.start("autostart")
        # 7. Give back what start-up used and freed (config parsing, imports, the first
        #    janitor pass): PID 1 would otherwise carry it for its whole life.
        release_free_memory()
        # 8. Wait for a stop signal, a shutdown request or a FATAL main program.
        await self._shutdown_requested.wait()
        # 9. Stop everything in reverse order, then report the main program's status.
        if self._exit_code is None and self.main.state is State.FATAL:
            self._exit_code = self._fatal_status(self.main)
        await self._stop_all()
        await self.reaper.trees.close(max((p.config.stop_timeout
                                           for p in self.programs.values()), default=0.0))
        self.reaper.reap()
        await self.service.close()
        self._remove_signal_handlers()
        self.watches.close()
        self.outputs.close(timeout=2.0)
        return self._final_status()

    def request_shutdown(self, exit_code: int | None = None) -> None:
        if exit_code is not None and self._exit_code is None:
            self._exit_code = exit_code
        if self._shutdown_requested is not None:
            self._shutdown_requested.set()

    @property
    def main(self) -> Program:
        return next(p for p in self.programs.values() if p.config.main)

    # -- signals ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        loop = self._loop
        loop.add_signal_handler(signal.SIGCHLD, self.reaper.reap)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
            loop.add_signal_handler(signum, self._forward, signum)

    def _remove_signal_handlers(self) -> None:
        assert self._loop is not None
        for signum in (
            signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
            signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
        ):
            self._loop.remove_signal_handler(signum)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._shutdown_requested is not None and self._shutdown_requested.is_set():
            log.warning("got %s again: not waiting for stop_timeout, killing what is left",
                        name)
            for program in self.programs.values():
                program.hurry()
            return
        log.info("got %s, stopping all programs", name)
        self.request_shutdown()

    def _on_reload_signal(self) -> None:
        log.info("got SIGHUP, reloading the config")
        try:
            plan = self.reload()
        except ReloadError as error:
            log.error("%s", error)
            return
        for change in plan.changes:
            log.info("reload: %s", change.describe())

    def _forward(self, signum: int) -> None:
        """USR1/USR2/WINCH received: pass it on to the process group of every program
        whose ``forward_signals`` lists it (config.py: USR1 only when asked for)."""
        name = signal.Signals(signum).name
        targets = [p for p in self.programs.values() if signum in p.config.forwarded_signals]
        if not targets:
            log.info("got %s: no program has it in forward_signals, not passed on", name)
        for program in targets:
            pid = program.pid
            if pid is None:
                log.warning("not forwarding %s: %s is %s", name, program.name,
                            program.state.value)
                continue
            try:
                # process_group=0 at spawn: the group id is the leader's pid.
                os.killpg(pid, signum)
            except ProcessLookupError:
                log.debug("process group %d of %s already gone", pid, program.name)
            except PermissionError as error:
                log.error("cannot forward %s to %s (pid %d): %s", name, program.name, pid,
                          error)

    # -- Effects for Program --------------------------------------------------------------------

    def spawn(self, program: Program) -> int:
        leaving = self._leaving.get(program.name)
        if leaving is not None and leaving is not program:
            # Its tree and cgroup are named after it: two at once would be one tree.
            raise SpawnError(f"the previous {program.name}, removed by a reload, has not "
                             "exited yet")
        environment = {
            **{key: value for key, value in self.program_environment.items()
               if key not in program.config.environment},
            **program.extra_environment,
            PROGRAM_ENV: program.name,
        }
        spawned = self.reaper.spawn(program, environment)
        self.relay.relay_output(program.name, spawned.stdout, 1, spawned.pid)
        self.relay.relay_output(program.name, spawned.stderr, 2, spawned.pid)
        self.watches.spawned(program, spawned.pid)
        return spawned.pid

    def kill(self, program: Program, signum: int) -> None:
        self.reaper.kill(program, signum)

    # -- what the reaper reports --------------------------------------------------------------

    def program_exited(self, program: Program, status: int, pids: set[int]) -> None:
        """``program``'s process and the rest of its tree are gone (reaper.py)."""
        # Before the program can be started again: its locks must be gone first.
        self.service.program_exited(program, pids)
        self.watches.exited(program)
        program.exited(status)

    def orphans_reaped(self, orphans: int) -> None:
        # Not logged: an orphan storm would flood the log; metrics count them.
        self.emit(kinds.Reaped(count=orphans), None,
                  f"reaped {orphans} orphaned process(es)", logged=True)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay, callback)

    def random(self) -> float:
        return self._random.random()

    def publish(self, program: Program, payload: kinds.Payload, message: str) -> None:
        self.emit(payload, program.name, message)

    def emit(self, payload: kinds.Payload, program: str | None, message: str, *,
             logged: bool = False) -> None:
        """Publish an event to every sink (``Service.deliver``); log it unless its source
        already did."""
        # kinds.as_data makes plain JSON types, so that every sink can encode it.
        event = Event(ts=self.clock.time(), kind=payload.kind, program=program,
                      message=message, data=kinds.as_data(payload))
        if not logged:
            log.log(logging.INFO if payload.routine else logging.WARNING, "%s", message)
        self.service.deliver(event, payload)

    def transitioned(self, program: Program, old: State, new: State) -> None:
        if new is State.FATAL and program.config.main and self.config.supervisor.exit_on_fatal:
            log.error("%s is FATAL and exit_on_fatal is set: exiting so the container "
                      "restarts", program.name)
            self.emit(kinds.Fatal(), program.name, f"{program.name} is FATAL, clawsup exits")
            self.request_shutdown(exit_code=self._fatal_status(program))
        elif new is State.FATAL:
            self.emit(kinds.Fatal(), program.name, f"{program.name} is FATAL")
        elif new is State.EXITED and program.config.main:
            # The main program is done for good (autorestart said so): like tini, the
            # container ends with it, carrying its status.
            log.info("%s exited and will not be restarted: clawsup exits", program.name)
            self.request_shutdown()
        for predicate, future in list(self._state_waiters):
            if not future.done() and predicate():
                future.set_result(None)
        self._state_waiters = [(p, f) for p, f in self._state_waiters if not f.done()]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate`` holds after some state change; False on timeout."""
        if predicate():
            return True
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        waiter = (predicate, future)
        self._state_waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            # A waiter that timed out would otherwise stay listed until the next change
            # of state: the liveness loop waits a period at a time, for days.
            with contextlib.suppress(ValueError):
                self._state_waiters.remove(waiter)
        return True

    # -- programs -----------------------------------------------------------------------------

    def _add_program(self, name: str, program_config: ProgramConfig) -> Program:
        program = Program(name=name, config=program_config, effects=self, clock=self.clock)
        self.programs[name] = program
        self.outputs.configure(name, program_config.logs)
        self.watches.watch(program)
        return program

    async def _stop_all(self) -> None:
        for program in [*reversed(list(self.programs.values())), *self._leaving.values()]:
            program.stop("shutdown")
            await self.wait_for(functools.partial(_done_stopping, program), None)

    def _fatal_status(self, program: Program) -> int:
        last = program.last_exit
        if last is not None and last.code:
            return last.code
        return 1

    def _final_status(self) -> int:
        if self._exit_code is not None:
            return self._exit_code
        last = self.main.last_exit
        if last is None:
            return 0
        if last.signal is not None:
            try:
                return 128 + signal.Signals[last.signal].value
            except KeyError:
                return 1
        return last.code or 0

    # -- reload -------------------------------------------------------------------------------

    def reload(self, *, dry_run: bool = False) -> ReloadPlan:
        """Re-read the config and apply the plan (reload.py); with ``dry_run`` only say
        what it would do. Raises ReloadError, changing nothing, if it cannot be read."""
        if not self.config_paths:
            raise ReloadError("cannot reload: clawsup was started without a config file")
        try:
            new = load_config(*self.config_paths)
        except ConfigError as error:
            message = f"config reload failed, keeping the old one: {error}"
            if not dry_run:
                self.emit(kinds.ReloadFailed(), None, message)
            raise ReloadError(message) from None
        old = self.config
        # entrypoint.py leaves ssl out (a None entry) when nothing needs it; absent, it
        # can still be imported.
        tls = sys.modules.get("ssl", sys) is not None
        plan = plan_reload(old, new, tls=tls)
        if dry_run:
            return plan
        self.config = plan.config
        self._apply_to_programs(plan)
        plan = plan.failed(self.service.reconfigure(old, plan))
        self.emit(kinds.Reloaded(changes=[change.describe() for change in plan.changes]),
                  None, f"config reloaded: {plan.summary()}")
        return plan

    def _apply_to_programs(self, plan: ReloadPlan) -> None:
        new = plan.config.programs
        for name, program in list(self.programs.items()):
            if name not in new:
                self._remove(program)
        for name, config in new.items():
            current = self.programs.get(name)
            if current is None or current in self._leaving.values():
                self._re_add(name, config)
                continue
            program = current
            change = plan.change(f"programs.{name}")
            if change is None:
                continue
            if program.config.logs != config.logs:
                # Applied at once; the kept lines stay (logbuffer.py).
                self.outputs.configure(name, config.logs)
            program.config = config
            if any(key in WATCH_KEYS for key in change.keys):
                self.watches.watch(program)
            if change.action == "restart" and program.state in (
                    State.STARTING, State.RUNNING, State.BACKOFF):
                program.restart(kinds.RestartReason.CONFIG_CHANGED)

    def _remove(self, program: Program) -> None:
        """Stop it; it stays listed (STOPPING) until it has exited, then is forgotten."""
        if self._leaving.get(program.name) is program:
            return  # removed by an earlier reload, still stopping
        self._start_after_leaving.pop(program.name, None)
        program.stop("removed from config")
        if program.state is not State.STOPPING:
            self._forget(program)
            return
        self._leaving[program.name] = program
        assert self._loop is not None
        self._loop.create_task(self._forget_when_stopped(program))

    def _re_add(self, name: str, config: ProgramConfig) -> None:
        """Added by a reload; if a removed namesake is still stopping, it replaces that one
        in the table at once and starts once the old one has exited."""
        program = self._add_program(name, config)
        if not config.autostart:
            return
        if name in self._leaving:
            self._start_after_leaving[name] = program
        else:
            program.start("added by reload")

    async def _forget_when_stopped(self, program: Program) -> None:
        # Not done while unkillable: its tree is still ending under its name (tree.py).
        await self.wait_for(lambda: program.state is not State.STOPPING, None)
        if self._leaving.get(program.name) is program:
            del self._leaving[program.name]
        self._forget(program)
        successor = self._start_after_leaving.pop(program.name, None)
        if (successor is not None and self.programs.get(program.name) is successor
                and successor.state is State.STOPPED):
            successor.start("added by reload")

    def _forget(self, program: Program) -> None:
        """Drop a removed program's watch, and its table entry unless a namesake has it."""
        self.watches.forget(program)
        if self.programs.get(program.name) is program:
            del self.programs[program.name]
            self.outputs.forget(program.name)  # not a namesake's, which keeps the name

    # -- queries ------------------------------------------------------------------------------

    def statuses(self) -> list[ProgramStatus]:
        return [self._status(p) for p in self.programs.values()]

    def _status(self, program: Program) -> ProgramStatus:
        usage = self.watches.usage(program)
        status = msgspec.structs.replace(
            program.status(self.watches.liveness_state(program)),
            processes=len(self.reaper.processes(program)),
            rss=None if usage is None else usage.rss,
            cpu_percent=None if usage is None else usage.cpu_percent)
        stuck = self.watches.stuck_thread(program)
        return msgspec.structs.replace(status, stuck_thread=stuck) if stuck else status

    def health(self) -> HealthReply:
        main = self.main
        reasons = []
        if main.state is not State.RUNNING:
            reasons.append(f"{main.name} is {main.state.value}")
        if main.hung:
            reasons.append(f"{main.name} is hung")
        if main.unkillable:
            reasons.append(f"{main.name} is unkillable")
        if stuck := self.watches.stuck_thread(main):
            reasons.append(f"{main.name} has a {stuck}")
        if self.watches.liveness_state(main) == "failing":
            reasons.append(f"{main.name}'s last liveness probe failed")
        return HealthReply(healthy=not reasons, reasons=reasons)
