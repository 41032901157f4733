"""The one reaper: which process is whose (pid -> owner), collecting every exit status,
and ending a program's whole tree.

Every process clawsup starts (a program's, an exec probe's) is registered here at spawn
and leaves the table only when ``waitpid`` returns its status; every other status is an
orphan's, re-parented to us as PID 1 or subreaper, and only counted. A program's exit is
handed on once the rest of its tree is gone too (tree.py): a restart never runs beside
the leftovers of the last run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from clawsup.supervisor import libc
from clawsup.supervisor.config import ProgramConfig
from clawsup.supervisor.program import Program, SpawnError, State
from clawsup.supervisor.spawn import Spawned, spawn
from clawsup.supervisor.tree import Trees

log = logging.getLogger("clawsup")


# Starts a process: spawn.spawn, or a test's fake.
SpawnProcess = Callable[[str, ProgramConfig, dict[str, str]], Spawned]
# Told when a program's process and the rest of its tree are gone: (program, waitpid
# status, every pid its tree had).
ProgramExited = Callable[[Program, int, set[int]], None]


def become_subreaper() -> None:
    """Orphans must come to us: as PID 1 they do anyway; otherwise ask the kernel."""
    if os.getpid() == 1:
        return
    try:
        libc.set_child_subreaper()
    except OSError as error:
        log.warning(
            "cannot become a child subreaper (%s): orphaned grandchildren will not be "
            "reaped by clawsup", error.strerror
        )


@dataclass
class _Child:
    """A process we spawned, until the reaper has its status."""

    program: Program | None  # None for probe commands
    spawned: Spawned
    on_exit: Callable[[int], None] | None = None
    group_pids: set[int] = field(default_factory=set)  # descendants seen while it ran


class Reaper:
    """The pid -> owner table and the reap loop; see the module docstring."""

    def __init__(self, trees: Trees, program_exited: ProgramExited, orphans_reaped:
                 Callable[[int], None], spawn_process: SpawnProcess = spawn) -> None:
        self.trees = trees
        self._children: dict[int, _Child] = {}
        self._program_exited = program_exited
        self._orphans_reaped = orphans_reaped
        self._spawn = spawn_process

    def spawn(self, program: Program, environment: dict[str, str]) -> Spawned:
        """Start ``program``'s process inside its tree. Raises SpawnError."""
        with self.trees.placed(program.name):
            spawned = self._spawn(program.name, program.config, environment)
        self.trees.started(program.name, spawned.pid)
        self._children[spawned.pid] = _Child(program=program, spawned=spawned)
        return spawned

    def kill(self, program: Program, signum: int) -> None:
        if program.pid is None:
            return
        # Its whole tree, not its process group: detached children have groups of their own.
        self.trees.signal(program.name, signum)

    def seen(self, program: Program, pid: int, tree: tuple[int, ...]) -> None:
        """A walk of the tree under ``pid`` (the hang sampler's) found these processes."""
        child = self._children.get(pid)
        if child is not None:
            child.group_pids.update(tree)
        self.trees.seen(program.name, tree)

    def processes(self, program: Program) -> list[int]:
        """Every live process of the program's whole tree (tree.py)."""
        if program.pid is None:
            return []
        return self.trees.members(program.name)

    def reap(self) -> None:
        """Collect every status until waitpid says there is none left.

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
                self._program_process_exited(child, status)
        self.trees.settle()
        if orphans:
            self._orphans_reaped(orphans)

    def _program_process_exited(self, child: _Child, status: int) -> None:
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
        assert child.program is not None
        self._program_exited(child.program, status, {child.spawned.pid} | child.group_pids)

    async def run_command(self, argv: list[str], timeout: float) -> tuple[bool, str]:
        """Run a short command (an exec probe) through the one reaper; exit 0 passes."""
        probe_config = ProgramConfig(command=argv)
        try:
            spawned = self._spawn("probe", probe_config, {})
        except SpawnError as error:
            return False, str(error)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

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
