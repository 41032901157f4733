"""The supervisor's event loop: signals, the one reaper, timers, samplers and all I/O.

Read ``Supervisor.run`` first: it is the list of steps, tini-style. Everything that
changes a program's state goes through ``Program`` (program.py); this module only turns
the world (signals, exit statuses, /proc samples, probe results, requests) into calls on
it, and carries out what it asks for (spawn, kill, timers, events).
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
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from clawsup.protocol import Event, HealthReply, LivenessState, ProgramStatus
from clawsup.supervisor import hang, kinds, libc, resources
from clawsup.supervisor.config import (
    Config,
    ConfigError,
    Liveness,
    ProgramConfig,
    load_config,
)
from clawsup.supervisor.logbuffer import Outputs, Stream
from clawsup.supervisor.probes import http_probe, tcp_probe
from clawsup.supervisor.program import Program, SpawnError, State, TimerHandle
from clawsup.supervisor.reload import WATCH_KEYS, ReloadPlan, plan_reload
from clawsup.supervisor.sampler import Observation, Sampler
from clawsup.supervisor.spawn import Spawned, reset_signal_state, spawn
from clawsup.supervisor.tree import PROGRAM_ENV, Trees

log = logging.getLogger("clawsup")

# Lines longer than this are cut; a program printing megabytes without a newline must
# not make the supervisor buffer them.
MAX_LINE = 64 * 1024

EventSink = Callable[[Event], None]


# While STARTING, how often the liveness probe is tried (§8: at least once a second).
# A refused connection costs next to nothing, and each tenth of a second saved is a tenth
# the gateway is not counted as serving; an exec probe starts a process (the gateway's
# own health CLI takes 240 MB), so once a second.
READY_PROBE_INTERVAL = 0.1
READY_EXEC_PROBE_INTERVAL = 1.0


def _starting_interval(settings: Liveness) -> float:
    return READY_EXEC_PROBE_INTERVAL if settings.exec is not None else READY_PROBE_INTERVAL


def _done_stopping(program: Program) -> bool:
    """Stopped, or stuck in the kernel: either way shutdown cannot wait for it longer."""
    return program.state is not State.STOPPING or program.unkillable


class ReloadError(Exception):
    """The config could not be reloaded; nothing was changed. The message says why."""


class ComponentError(Exception):
    """A component could not start (the control socket is taken...): clawsup exits 1."""


class Component(Protocol):
    """Something that lives beside the programs for the supervisor's whole run."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


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


@dataclass
class _Child:
    """A process we spawned, until the reaper has its status."""

    program: Program | None  # None for probe commands
    spawned: Spawned
    on_exit: Callable[[int], None] | None = None
    group_pids: set[int] = field(default_factory=set)  # descendants seen while it ran


@dataclass
class _Watch:
    """Per-program sampling state (D state, zombies, liveness)."""

    d_state: hang.DState = hang.NOT_IN_D
    threads: hang.Threads = hang.NO_THREADS_IN_D  # the other threads in D
    # The last walk of the process tree under ``tree_of`` (a program's pid).
    tree: tuple[int, ...] = ()
    tree_of: int | None = None
    sampler: Sampler | None = None
    over_limits: resources.Judgement = resources.NOT_OVER

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.sampler is not None:
            self.sampler.close()
    liveness: hang.Liveness = field(default_factory=hang.Liveness)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
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
        self.sinks: list[EventSink] = []
        self.started_at = self.clock.monotonic()
        self._children: dict[int, _Child] = {}
        self._watches: dict[Program, _Watch] = {}
        # Removed by a reload and still stopping, by name: a program added again under
        # that name waits for it (its tree, cgroup and locks go by the name).
        self._leaving: dict[str, Program] = {}
        # A program added by a reload while its namesake was leaving: started after it.
        self._start_after_leaving: dict[str, Program] = {}
        # Output pipe -> (program, container log fd, pid that writes it, partial line).
        self._relays: dict[int, tuple[str, int, int, bytearray]] = {}
        self.outputs = Outputs()  # what each program printed (logbuffer.py)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown_requested: asyncio.Event | None = None
        self._exit_code: int | None = None
        self._state_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._random = random.Random()
        self.trees = Trees(self.call_later)
        # Hooks other components (janitor, control plane) attach to.
        self.exit_hooks: list[Callable[[Program, set[int]], None]] = []
        self.components: list[Component] = []
        # Set for every program by the components (CLAWSUP_SOCKET); a program's own
        # ``environment`` and its extra_environment win.
        self.program_environment: dict[str, str] = {}
        # Called after a reload with (the old config, the plan applied); each returns
        # section -> why applying that section's change failed.
        self.reload_hooks: list[Callable[[Config, ReloadPlan], dict[str, str]]] = []

    # -- the steps ------------------------------------------------------------------------

    async def run(self) -> int:
        """Supervise until told to stop; return the exit status for the container."""
        self._loop = asyncio.get_running_loop()
        self._shutdown_requested = asyncio.Event()
        # 1. Orphans must come to us: as PID 1 they do anyway; otherwise ask the kernel.
        self._become_subreaper()
        #    A program is its whole tree: a cgroup of its own where we may make one.
        self.trees.open(self.config.supervisor.cgroups)
        # 2. Whatever mask or ignored signals we inherited must not reach the programs.
        reset_signal_state()
        # 3. Signals become events on the loop (wakeup fd), never work in a handler.
        self._install_signal_handlers()
        # 4. Reap anything that exited before we were ready (inherited children).
        self._reap()
        # 5. Create the programs, then bring up the components around them (control
        #    socket, janitor...): stale locks are cleared and remembered settings applied
        #    before the gateway starts.
        for name, program_config in self.config.programs.items():
            self._add_program(name, program_config)
        started: list[Component] = []
        try:
            for component in self.components:
                await component.start()
                started.append(component)
        except ComponentError as error:
            log.error("%s", error)
            for component in reversed(started):
                await component.close()
            self._remove_signal_handlers()
            for watch in self._watches.values():
                watch.cancel()
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
        await self.trees.close(max((p.config.stop_timeout for p in self.programs.values()),
                                   default=0.0))
        self._reap()
        for component in reversed(started):
            await component.close()
        self._remove_signal_handlers()
        for watch in self._watches.values():
            watch.cancel()
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

    def _become_subreaper(self) -> None:
        if os.getpid() == 1:
            return
        try:
            libc.set_child_subreaper()
        except OSError as error:
            log.warning(
                "cannot become a child subreaper (%s): orphaned grandchildren will not be "
                "reaped by clawsup", error.strerror
            )

    def _install_signal_handlers(self) -> None:
        assert self._loop is not None
        loop = self._loop
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
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

    # -- the reaper ---------------------------------------------------------------------------

    def _reap(self) -> None:
        """The one reaper: collect every status until waitpid says there is none left.

        SIGCHLD is not queued: one delivery can stand for many exits, so a single waitpid
        per signal would leave zombies behind.
        """
        orphans = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # ECHILD: no children at all
            if pid == 0:
                break  # children exist, none has exited
            child = self._children.pop(pid, None)
            if child is None:
                orphans += 1  # a grandchild re-parented to us (PID 1 or subreaper)
                continue
            # Popen must never poll this pid again (see spawn.py).
            child.spawned.popen.returncode = status
            if child.on_exit is not None:
                child.on_exit(status)
            if child.program is not None:
                self._program_exited(child, status)
        self.trees.settle()
        if orphans:
            # Not logged: an orphan storm would flood the log; metrics count them.
            self.emit(kinds.Reaped(count=orphans), None,
                      f"reaped {orphans} orphaned process(es)", logged=True)

    def _program_exited(self, child: _Child, status: int) -> None:
        program = child.program
        assert program is not None
        # The rest of its tree goes too, and the exit counts once it has (tree.py): a
        # half-dead gateway tree would hold the port and the session locks.
        left = self.trees.ended(
            program.name, program.config.stop_signal_number, program.config.stop_timeout,
            signalled=program.state is State.STOPPING,
            done=functools.partial(self._tree_exited, child, status))
        child.group_pids.update(left)

    def _tree_exited(self, child: _Child, status: int) -> None:
        program = child.program
        assert program is not None
        pids = {child.spawned.pid} | child.group_pids
        # Before the program can be started again: its locks must be gone first.
        for hook in self.exit_hooks:
            try:
                hook(program, pids)
            except Exception:
                log.exception("exit hook failed for %s", program.name)
        watch = self._watches.get(program)
        if watch is not None:
            if watch.sampler is not None:
                watch.sampler.watch(None)
            watch.d_state = hang.NOT_IN_D
            watch.threads = hang.NO_THREADS_IN_D
            watch.liveness = hang.Liveness()
        program.exited(status)

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
        with self.trees.placed(program.name):
            spawned = spawn(program.name, program.config, environment)
        self.trees.started(program.name, spawned.pid)
        self._children[spawned.pid] = _Child(program=program, spawned=spawned)
        self._relay_output(program.name, spawned.stdout, 1, spawned.pid)
        self._relay_output(program.name, spawned.stderr, 2, spawned.pid)
        watch = self._watches.get(program)
        if watch is not None and watch.sampler is not None:
            watch.sampler.watch(spawned.pid)
        return spawned.pid

    def kill(self, program: Program, signum: int) -> None:
        if program.pid is None:
            return
        # Its whole tree, not its process group: detached children have groups of their own.
        self.trees.signal(program.name, signum)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay, callback)

    def random(self) -> float:
        return self._random.random()

    def publish(self, program: Program, payload: kinds.Payload, message: str) -> None:
        self.emit(payload, program.name, message)

    def emit(self, payload: kinds.Payload, program: str | None, message: str, *,
             logged: bool = False) -> None:
        """Publish an event to every sink; log it unless its source already did."""
        # kinds.as_data makes plain JSON types, so that every sink can encode it.
        event = Event(ts=self.clock.time(), kind=payload.kind, program=program,
                      message=message, data=kinds.as_data(payload))
        if not logged:
            log.log(logging.INFO if payload.routine else logging.WARNING, "%s", message)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed", sink)

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

    # -- output ------------------------------------------------------------------------------

    def _relay_output(self, name: str, fd: int, target: int, pid: int) -> None:
        assert self._loop is not None
        self._relays[fd] = (name, target, pid, bytearray())
        self._loop.add_reader(fd, self._read_output, fd)

    def _read_output(self, fd: int) -> None:
        name, target, pid, pending = self._relays[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as error:
            log.debug("output of %s: %s", name, error)
            chunk = b""
        if not chunk:
            assert self._loop is not None
            self._loop.remove_reader(fd)
            del self._relays[fd]
            os.close(fd)
            if pending:
                self._write_lines(name, target, pid, bytes(pending) + b"\n")
            return
        pending.extend(chunk)
        cut = pending.rfind(b"\n")
        if cut >= 0:
            self._write_lines(name, target, pid, bytes(pending[: cut + 1]))
            del pending[: cut + 1]
        if len(pending) > MAX_LINE:
            self._write_lines(name, target, pid, bytes(pending) + b"\n")
            pending.clear()

    def _write_lines(self, name: str, target: int, pid: int, data: bytes) -> None:
        prefix = name.encode() + b" | "
        lines = data.splitlines()
        out = b"".join(prefix + line + b"\n" for line in lines)
        # A full container log pipe: drop rather than stall supervision (the buffer
        # below still keeps the lines).
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(target, out)
        self._keep_lines(name, "stdout" if target == 1 else "stderr", pid, lines)

    def _keep_lines(self, name: str, stream: Stream, pid: int, lines: list[bytes]) -> None:
        """Into the program's buffer (and file), and out as one ``log`` event per read:
        what `clawsupctl logs -f` follows. One event per chunk, not per line, and only
        when there is output: an idle gateway costs nothing here."""
        added = self.outputs.add(name, self.clock.time(), stream, pid, lines)
        if added is not None:
            self.emit(kinds.Log(seq=added.first_seq, ts=added.ts, stream=stream, pid=pid,
                                lines=added.texts),
                      name, f"{len(added.texts)} line(s) of {name}'s {stream}", logged=True)

    # -- programs -----------------------------------------------------------------------------

    def _add_program(self, name: str, program_config: ProgramConfig) -> Program:
        program = Program(name=name, config=program_config, effects=self, clock=self.clock)
        self.programs[name] = program
        self.outputs.configure(name, program_config.logs)
        self._watch(program)
        return program

    def _watch(self, program: Program) -> None:
        """Start hang sampling and the liveness probe as the program's config says."""
        old = self._watches.pop(program, None)
        if old is not None:
            old.cancel()
        watch = _Watch()
        self._watches[program] = watch
        assert self._loop is not None
        config = program.config
        if config.hang.enabled or config.resources.limits.any:
            watch.sampler = Sampler(
                program.name, config.hang.sample_interval,
                functools.partial(self._observed, program, watch), self._loop,
                self.clock.monotonic, tree=functools.partial(self.trees.snapshot, program.name),
                limits=config.resources.limits, hang=config.hang.enabled,
            )
            watch.sampler.watch(program.pid)
        if config.liveness is not None:
            watch.tasks.append(self._loop.create_task(self._liveness_loop(program, watch)))

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

    # -- hang detection ---------------------------------------------------------------------

    def _observed(self, program: Program, watch: _Watch, seen: Observation) -> None:
        """A sample the sampler thread found worth a look (sampler.py): judge it here."""
        if self.programs.get(program.name) is not program or program.pid != seen.pid:
            return  # removed by a reload, or a sample of a process that is gone
        if seen.usage is not None:
            self._usage_observed(program, watch, seen.usage)
        if not program.config.hang.enabled:
            return  # sampled for its resources only
        if seen.threads_in_d is not None:
            # Kept up to date while STOPPING too: a stuck thread stays reported for as
            # long as it holds up the stop, and no longer.
            watch.threads = hang.track_threads(watch.threads, seen.threads_in_d, seen.at)
        if program.state not in (State.STARTING, State.RUNNING):
            watch.d_state = hang.NOT_IN_D
            return
        child = self._children.get(seen.pid)
        watch.d_state = hang.track_d_state(watch.d_state, seen.state, seen.switches, seen.at)
        settings = program.config.hang
        if hang.is_hung(watch.d_state, seen.at, settings.d_state_after):
            seconds = hang.d_state_seconds(watch.d_state, seen.at)
            description = f"state: D for {seconds:.1f}s"
            self.emit(kinds.Hung(state="D", seconds=round(seconds, 3), pid=seen.pid),
                      program.name, f"{program.name} is hung ({description}), restarting")
            watch.d_state = hang.NOT_IN_D
            program.hang_detected(description)
            return
        if seen.threads_in_d is not None:
            self._threads_observed(program, watch, seen.at)
        if seen.tree is None or seen.zombies is None:
            return
        watch.tree, watch.tree_of = seen.tree, seen.pid
        if child is not None:
            child.group_pids.update(seen.tree)
        self.trees.seen(program.name, seen.tree)
        if program.state is State.RUNNING and hang.is_zombie_leak(
            seen.zombies, settings.zombie_children_max
        ):
            self.emit(kinds.ZombieLeak(zombies=seen.zombies), program.name,
                      f"{program.name} leaks zombies ({seen.zombies} > "
                      f"{settings.zombie_children_max}), restarting")
            program.restart(kinds.RestartReason.ZOMBIE_LEAK)

    def _usage_observed(self, program: Program, watch: _Watch, usage: resources.Usage) -> None:
        """Over a resource limit: restart gracefully once it has held (resources.py)."""
        watch.over_limits, verdict = resources.judge(
            watch.over_limits, usage, program.config.resources.limits,
            running=program.state is State.RUNNING)
        if verdict is not None:
            self.emit(kinds.ResourceLimit(
                resource=verdict.resource, value=verdict.value, limit=verdict.limit,
                seconds=round(verdict.seconds, 3), samples=verdict.samples, pid=usage.pid,
            ), program.name, verdict.message(program.name))
            program.restart(kinds.RestartReason.RESOURCE_LIMIT)

    def _threads_observed(self, program: Program, watch: _Watch, at: float) -> None:
        """Another thread stuck in D: report it, restart gracefully once (hang.py says why)."""
        stuck = hang.newly_stuck(watch.threads, at, program.config.hang.d_state_after)
        if stuck is None:
            return
        thread, seconds = stuck
        watch.threads, restart = hang.report_stuck(watch.threads, thread.tid)
        then = ("restarting it once; it cannot exit before the kernel returns the thread"
                if restart else "already restarted once: not again")
        self.emit(kinds.ThreadHung(tid=thread.tid, thread=thread.name,
                                   seconds=round(seconds, 3), pid=program.pid, restart=restart),
                  program.name,
                  f"{program.name} has a thread stuck in D state (thread {thread.tid} "
                  f"{thread.name!r} for {seconds:.1f}s), {then}")
        if restart:
            program.restart(kinds.RestartReason.THREAD_HUNG)

    # -- liveness -----------------------------------------------------------------------------

    async def _liveness_loop(self, program: Program, watch: _Watch) -> None:
        """Ready, then alive: while STARTING the probe runs every ``_starting_interval``
        until it first passes (then RUNNING, program.py); while RUNNING every ``period``,
        and ``failures`` failures in a row restart it. Asleep in every other state."""
        settings = program.config.liveness
        assert settings is not None
        while True:
            if program.state is State.STARTING:
                await self._probe_until_ready(program, watch)
            elif program.state is State.RUNNING:
                # Woken early when it leaves RUNNING: a restart must not wait a period
                # before its readiness probes begin.
                if not await self.wait_for(lambda: not program.running, settings.period):
                    await self._probe_running(program, watch)
            else:
                await self.wait_for(lambda: program.state is State.STARTING, None)

    async def _probe_until_ready(self, program: Program, watch: _Watch) -> None:
        settings = program.config.liveness
        assert settings is not None
        pid = program.pid
        interval = _starting_interval(settings)
        began = self.clock.monotonic()
        ok, detail = await self.probe(program)
        if program.state is not State.STARTING or program.pid != pid:
            return  # it died, was stopped or timed out while we probed
        if ok:
            watch.liveness = hang.record_probe(hang.Liveness(), True)
            program.ready(detail)
            return
        log.debug("readiness probe of %s: %s", program.name, detail)
        await self.wait_for(
            lambda: program.state is not State.STARTING or program.pid != pid,
            max(0.0, interval - (self.clock.monotonic() - began)),
        )

    async def _probe_running(self, program: Program, watch: _Watch) -> None:
        settings = program.config.liveness
        assert settings is not None
        pid = program.pid
        ok, detail = await self.probe(program)
        if not program.running or program.pid != pid:
            return  # it died or was restarted while we probed
        watch.liveness = hang.record_probe(watch.liveness, ok)
        if not ok:
            log.warning("liveness probe of %s failed (%d/%d): %s", program.name,
                        watch.liveness.consecutive_failures, settings.failures, detail)
        if hang.liveness_failed(watch.liveness, settings.failures):
            self.emit(kinds.LivenessFailed(detail=detail), program.name,
                      f"{program.name} failed {settings.failures} liveness probes "
                      f"({detail}), restarting")
            watch.liveness = hang.Liveness()
            program.restart(kinds.RestartReason.LIVENESS)

    async def probe(self, program: Program) -> tuple[bool, str]:
        settings = program.config.liveness
        assert settings is not None
        if settings.http is not None:
            return await http_probe(settings.http, settings.timeout)
        if settings.tcp is not None:
            return await tcp_probe(settings.tcp, settings.timeout)
        assert settings.exec is not None
        return await self.run_command(settings.exec, settings.timeout)

    async def run_command(self, argv: list[str], timeout: float) -> tuple[bool, str]:
        """Run a short command (an exec probe) through the one reaper; exit 0 passes."""
        assert self._loop is not None
        probe_config = ProgramConfig(command=argv)
        try:
            spawned = spawn("probe", probe_config, {})
        except SpawnError as error:
            return False, str(error)
        done: asyncio.Future[int] = self._loop.create_future()

        def finished(status: int) -> None:
            if not done.done():
                done.set_result(status)

        self._children[spawned.pid] = _Child(program=None, spawned=spawned, on_exit=finished)
        for fd in (spawned.stdout, spawned.stderr):
            os.close(fd)
        try:
            status = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spawned.pid, signal.SIGKILL)
            return False, f"{argv[0]} did not finish within {timeout:g}s"
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return True, "exit 0"
        return False, f"{argv[0]} exited with status {os.waitstatus_to_exitcode(status)}"

    def processes(self, program: Program) -> list[int]:
        """Every live process of the program's whole tree (tree.py)."""
        if program.pid is None:
            return []
        return self.trees.members(program.name)

    def liveness_state(self, program: Program) -> LivenessState:
        if program.config.liveness is None:
            return "off"
        watch = self._watches.get(program)
        last = None if watch is None else watch.liveness.last_ok
        return "unknown" if last is None else ("passing" if last else "failing")

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
        errors: dict[str, str] = {}
        for hook in self.reload_hooks:
            errors.update(hook(old, plan))
        plan = plan.failed(errors)
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
                self._watch(program)
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
        watch = self._watches.pop(program, None)
        if watch is not None:
            watch.cancel()
        if self.programs.get(program.name) is program:
            del self.programs[program.name]
            self.outputs.forget(program.name)  # not a namesake's, which keeps the name

    # -- queries ------------------------------------------------------------------------------

    def statuses(self) -> list[ProgramStatus]:
        return [self._status(p) for p in self.programs.values()]

    def _status(self, program: Program) -> ProgramStatus:
        watch = self._watches.get(program)
        usage = None if watch is None or watch.sampler is None else watch.sampler.usage_of(
            program.pid)
        status = msgspec.structs.replace(
            program.status(self.liveness_state(program)), processes=len(self.processes(program)),
            rss=None if usage is None else usage.rss,
            cpu_percent=None if usage is None else usage.cpu_percent)
        stuck = self.stuck_thread(program)
        return msgspec.structs.replace(status, stuck_thread=stuck) if stuck else status

    def stuck_thread(self, program: Program) -> str:
        watch = self._watches.get(program)
        return "" if watch is None else hang.stuck_thread(watch.threads, self.clock.monotonic())

    def health(self) -> HealthReply:
        main = self.main
        reasons = []
        if main.state is not State.RUNNING:
            reasons.append(f"{main.name} is {main.state.value}")
        if main.hung:
            reasons.append(f"{main.name} is hung")
        if main.unkillable:
            reasons.append(f"{main.name} is unkillable")
        if stuck := self.stuck_thread(main):
            reasons.append(f"{main.name} has a {stuck}")
        if self.liveness_state(main) == "failing":
            reasons.append(f"{main.name}'s last liveness probe failed")
        return HealthReply(healthy=not reasons, reasons=reasons)
