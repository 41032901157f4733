"""Watching each program while it runs: the hang sampler (D state, stuck threads, zombies)
and the liveness probe (readiness while STARTING, liveness while RUNNING).

Each watch belongs to one ``Program`` object, never to its name: a reload may remove a
program (it stays, STOPPING, until it has exited) and add another of the same name, and
the old one's last samples, probe results or exit must not touch the new one's watch.
Every judgement made here ends in a call on ``Program`` (program.py), which decides.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clawsup.protocol import LivenessState
from clawsup.supervisor import hang, kinds, resources
from clawsup.supervisor.config import Liveness
from clawsup.supervisor.probes import http_probe, tcp_probe
from clawsup.supervisor.program import Program, State
from clawsup.supervisor.sampler import Observation, Sampler

if TYPE_CHECKING:
    from clawsup.supervisor.daemon import Supervisor

log = logging.getLogger("clawsup")

# While STARTING, how often the liveness probe is tried (§8: at least once a second).
# A refused connection costs next to nothing, and each tenth of a second saved is a tenth
# the gateway is not counted as serving; an exec probe starts a process (the gateway's
# own health CLI takes 240 MB), so once a second.
READY_PROBE_INTERVAL = 0.1
READY_EXEC_PROBE_INTERVAL = 1.0


def _starting_interval(settings: Liveness) -> float:
    return READY_EXEC_PROBE_INTERVAL if settings.exec is not None else READY_PROBE_INTERVAL


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
    liveness: hang.Liveness = field(default_factory=hang.Liveness)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.sampler is not None:
            self.sampler.close()


class Watches:
    """One watch per ``Program`` object; see the module docstring."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._watches: dict[Program, _Watch] = {}

    # -- a program's life ---------------------------------------------------------------

    def watch(self, program: Program) -> None:
        """Start hang sampling and the liveness probe as the program's config says."""
        self.forget(program)
        watch = _Watch()
        self._watches[program] = watch
        loop = asyncio.get_running_loop()
        config = program.config
        if config.hang.enabled or config.resources.limits.any:
            watch.sampler = Sampler(
                program.name, config.hang.sample_interval,
                functools.partial(self._observed, program, watch), loop,
                self.supervisor.clock.monotonic,
                tree=functools.partial(self.supervisor.reaper.trees.snapshot, program.name),
                limits=config.resources.limits, hang=config.hang.enabled,
            )
            watch.sampler.watch(program.pid)
        if config.liveness is not None:
            watch.tasks.append(loop.create_task(self._liveness_loop(program, watch)))

    def spawned(self, program: Program, pid: int) -> None:
        watch = self._watches.get(program)
        if watch is not None and watch.sampler is not None:
            watch.sampler.watch(pid)

    def exited(self, program: Program) -> None:
        """Its process and tree are gone: pause the sampler, forget what it saw."""
        watch = self._watches.get(program)
        if watch is not None:
            if watch.sampler is not None:
                watch.sampler.watch(None)
            watch.d_state = hang.NOT_IN_D
            watch.threads = hang.NO_THREADS_IN_D
            watch.liveness = hang.Liveness()

    def forget(self, program: Program) -> None:
        watch = self._watches.pop(program, None)
        if watch is not None:
            watch.cancel()

    def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()

    # -- queries ----------------------------------------------------------------------------

    def liveness_state(self, program: Program) -> LivenessState:
        if program.config.liveness is None:
            return "off"
        watch = self._watches.get(program)
        last = None if watch is None else watch.liveness.last_ok
        return "unknown" if last is None else ("passing" if last else "failing")

    def usage(self, program: Program) -> resources.Usage | None:
        """The last reading of its tree's RSS and CPU, while it runs (usage.py)."""
        watch = self._watches.get(program)
        if watch is None or watch.sampler is None:
            return None
        return watch.sampler.usage_of(program.pid)

    def stuck_thread(self, program: Program) -> str:
        watch = self._watches.get(program)
        return ("" if watch is None
                else hang.stuck_thread(watch.threads, self.supervisor.clock.monotonic()))

    # -- hang detection ---------------------------------------------------------------------

    def _observed(self, program: Program, watch: _Watch, seen: Observation) -> None:
        """A sample the sampler thread found worth a look (sampler.py): judge it here."""
        if self._watches.get(program) is not watch or program.pid != seen.pid:
            return  # a watch replaced or forgotten, or a sample of a process that is gone
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
        watch.d_state = hang.track_d_state(watch.d_state, seen.state, seen.switches, seen.at)
        settings = program.config.hang
        if hang.is_hung(watch.d_state, seen.at, settings.d_state_after):
            seconds = hang.d_state_seconds(watch.d_state, seen.at)
            description = f"state: D for {seconds:.1f}s"
            self.supervisor.emit(
                kinds.Hung(state="D", seconds=round(seconds, 3), pid=seen.pid),
                program.name, f"{program.name} is hung ({description}), restarting")
            watch.d_state = hang.NOT_IN_D
            program.hang_detected(description)
            return
        if seen.threads_in_d is not None:
            self._threads_observed(program, watch, seen.at)
        if seen.tree is None or seen.zombies is None:
            return
        watch.tree, watch.tree_of = seen.tree, seen.pid
        self.supervisor.reaper.seen(program, seen.pid, seen.tree)
        if program.state is State.RUNNING and hang.is_zombie_leak(
            seen.zombies, settings.zombie_children_max
        ):
            self.supervisor.emit(kinds.ZombieLeak(zombies=seen.zombies), program.name,
                                 f"{program.name} leaks zombies ({seen.zombies} > "
                                 f"{settings.zombie_children_max}), restarting")
            program.restart(kinds.RestartReason.ZOMBIE_LEAK)

    def _usage_observed(self, program: Program, watch: _Watch, usage: resources.Usage) -> None:
        """Over a resource limit: restart gracefully once it has held (resources.py)."""
        watch.over_limits, verdict = resources.judge(
            watch.over_limits, usage, program.config.resources.limits,
            running=program.state is State.RUNNING)
        if verdict is not None:
            self.supervisor.emit(kinds.ResourceLimit(
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
        self.supervisor.emit(
            kinds.ThreadHung(tid=thread.tid, thread=thread.name, seconds=round(seconds, 3),
                             pid=program.pid, restart=restart),
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
        wait_for = self.supervisor.wait_for
        while True:
            if program.state is State.STARTING:
                await self._probe_until_ready(program, watch)
            elif program.state is State.RUNNING:
                # Woken early when it leaves RUNNING: a restart must not wait a period
                # before its readiness probes begin.
                if not await wait_for(lambda: not program.running, settings.period):
                    await self._probe_running(program, watch)
            else:
                await wait_for(lambda: program.state is State.STARTING, None)

    async def _probe_until_ready(self, program: Program, watch: _Watch) -> None:
        settings = program.config.liveness
        assert settings is not None
        pid = program.pid
        interval = _starting_interval(settings)
        clock = self.supervisor.clock
        began = clock.monotonic()
        ok, detail = await self.probe(program)
        if program.state is not State.STARTING or program.pid != pid:
            return  # it died, was stopped or timed out while we probed
        if ok:
            watch.liveness = hang.record_probe(hang.Liveness(), True)
            program.ready(detail)
            return
        log.debug("readiness probe of %s: %s", program.name, detail)
        await self.supervisor.wait_for(
            lambda: program.state is not State.STARTING or program.pid != pid,
            max(0.0, interval - (clock.monotonic() - began)),
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
            self.supervisor.emit(kinds.LivenessFailed(detail=detail), program.name,
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
        return await self.supervisor.reaper.run_command(settings.exec, settings.timeout)
