"""Which processes belong to which program (pid -> owner), and ending a program's tree.

A program is its whole tree: every process descended from it, including those that
started a session or process group of their own (the gateway's exec tool spawns its
commands ``detached``) and those re-parented to clawsup after their parent exited (a
double fork, ``setsid -f``). A process-group kill misses all of these. Two ways find them:

- **cgroup mode**, where clawsup may create a cgroup v2: each program gets
  ``<clawsup's own cgroup>/clawsup-<pid>-<token>/<program>``, its process is placed there
  at spawn and everything it ever starts stays there, whatever it does with sessions or
  parents. The kernel lists the members (``cgroup.procs``) and kills them all at once
  (``cgroup.kill``), with no pid-reuse race.
- **registry mode**, everywhere else (no cgroup2, a read-only ``/sys/fs/cgroup`` as in a
  default Docker container, ``[supervisor] cgroups = "off"``): a pid -> program registry
  keyed by (pid, start time), fed by every walk of a program's tree (the hang sampler's,
  and one each time the program is signalled or counted). Children of clawsup that were
  re-parented to it are attributed through the registry, the process group or session
  they share with a known member, or else the ``CLAWSUP_PROGRAM`` variable every program
  is started with (which a double fork into a session of its own between two walks still
  carries). A signal goes to every live member through a pidfd opened and then checked
  against the recorded start time, so a reused pid is never hit. One that also cleared
  its environment is found only at shutdown, when every descendant of clawsup is ended.

``Trees`` also keeps the rule for a program whose own process exited while part of its
tree lives on: the program's exit is reported (to the state machine, the janitor) only
once the whole tree is gone, so a restart never runs beside the leftovers of the last
run. The leftovers of a program that exited on its own get its ``stop_signal``, and
SIGKILL after ``stop_timeout``: exec-tool commands are the agent's work (a build, a
download), and a crash of the gateway is no reason to deny them the graceful end a
``clawsupctl stop`` would give them; a SIGTERM-proof one costs one ``stop_timeout``
before the respawn, the same as stopping it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from clawsup.supervisor import procinfo
from clawsup.supervisor.usage import TreeSnapshot

log = logging.getLogger("clawsup")

CgroupMode = Literal["auto", "off"]
# Set to the program's name in the environment of every program clawsup starts.
PROGRAM_ENV = "CLAWSUP_PROGRAM"
# After SIGKILL the tree normally vanishes at once; members still present after this long
# are stuck in the kernel (as program.KILL_TIMEOUT says for the main process).
KILL_TIMEOUT = 5.0
# How often a tree being waited for is looked at besides each SIGCHLD. The last member of
# an orphaned tree to exit is always a child of clawsup, so SIGCHLD normally says when it
# is gone; this only covers clawsup not being a subreaper.
_POLL = 0.25
# Rounds of signal-then-look-again: each round catches what was forked during the last.
_ROUNDS = 10
# Errors that mean "no cgroup for us here": fall back to the registry, quietly.
_NO_CGROUP = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
              errno.EBUSY, errno.EOPNOTSUPP, errno.EINVAL)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


def _alive(pid: int) -> bool:
    stat = procinfo.read_stat(pid)
    return stat is not None and stat.state not in "ZX"


# -- cgroup v2 ----------------------------------------------------------------------------


def find_own_cgroup() -> Path | None:
    """The directory of clawsup's own cgroup v2, or None where there is none to see.

    The mount point comes from /proc/self/mountinfo (``/sys/fs/cgroup`` on a pure-v2
    host, ``/sys/fs/cgroup/unified`` on a hybrid one), the path within it from the
    ``0::`` line of /proc/self/cgroup, relative to the root of the mount.
    """
    try:
        cgroup_lines = Path("/proc/self/cgroup").read_text().splitlines()
        mount_lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in cgroup_lines if line.startswith("0::")), None)
    if own is None:
        return None
    for line in mount_lines:
        before, sep, after = line.partition(" - ")
        if not sep or after.split()[0] != "cgroup2":
            continue
        fields = before.split()
        root, mount_point = fields[3], fields[4]
        if root == "/":
            return Path(mount_point + own.rstrip("/")) if own != "/" else Path(mount_point)
        if own == root or own.startswith(root + "/"):
            return Path(mount_point + own[len(root):])
    return None


def _write(path: Path, text: str) -> None:
    # One write(2) per value: cgroup interface files take exactly one per call.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _dir_name(program: str) -> str:
    """A program name as a directory that cannot be mistaken for an interface file."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", program) and not program.startswith(
        ("cgroup", "clawsup")
    ):
        return program
    return "x-" + program.encode().hex()


class _Cgroups:
    """One cgroup v2 per program under a directory of clawsup's own."""

    mode = "cgroup"

    def __init__(self, home: Path, base: Path, can_kill: bool) -> None:
        self.home = home  # clawsup's own cgroup, where it lives between spawns
        self.base = base
        self._can_kill = can_kill  # cgroup.kill: Linux >= 5.14

    @classmethod
    def create(cls) -> _Cgroups | str:
        """The cgroups, or why clawsup may not have them here."""
        home = find_own_cgroup()
        if home is None:
            return "no cgroup v2 mounted"
        base = home / f"clawsup-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            base.mkdir()
        except OSError as error:
            return f"cannot create {base}: {error.strerror}"
        # Moving clawsup in and out is what every spawn will do: try it once now, so a
        # cgroup we may create but not move into is found before a program depends on it.
        # Then remove it again: it is made at the first spawn, so a clawsup that never
        # spawns (a component failed to start) leaves nothing behind.
        can_kill = (base / "cgroup.kill").exists()  # not in a root cgroup: ask a new one
        try:
            _write(base / "cgroup.procs", "0")
            _write(home / "cgroup.procs", "0")
        except OSError as error:
            with contextlib.suppress(OSError):
                _write(home / "cgroup.procs", "0")
            return f"cannot move a process into {base}: {error.strerror}"
        finally:
            with contextlib.suppress(OSError):
                base.rmdir()
        return cls(home, base, can_kill)

    def _dir(self, program: str) -> Path:
        return self.base / _dir_name(program)

    @contextlib.contextmanager
    def placed(self, program: str) -> Iterator[None]:
        """While inside, a process clawsup forks starts in ``program``'s cgroup.

        Python 3.11's Popen cannot clone into a cgroup (CLONE_INTO_CGROUP), and moving
        the child from a preexec_fn is unsafe with pyzmq's threads running. So the loop
        thread moves clawsup itself (``0`` in cgroup.procs: the writing process, also
        inside a PID namespace) into the program's cgroup, forks, and moves back: the
        child is born a member, before it can run a line of its own. Only the loop
        thread forks, so nothing else is born there meanwhile.
        """
        directory = self._dir(program)
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / "cgroup.procs", "0")
        try:
            yield
        finally:
            _write(self.home / "cgroup.procs", "0")

    def members(self, program: str) -> list[int]:
        # Zombies are not listed: a process leaves its cgroup when it exits.
        try:
            return [int(word) for word in (self._dir(program) / "cgroup.procs").read_bytes().split()]
        except FileNotFoundError:
            return []

    def send(self, program: str, signum: int) -> int:
        if signum == signal.SIGKILL and self._can_kill:
            count = len(self.members(program))
            try:
                _write(self._dir(program) / "cgroup.kill", "1")
            except FileNotFoundError:
                return 0
            return count
        # A pid read from cgroup.procs could exit and be reused before the kill; pids are
        # handed out in turn over pid_max, so that would take a full wrap in between.
        sent: set[int] = set()
        for _ in range(_ROUNDS):
            new = [pid for pid in self.members(program) if pid not in sent]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            sent.update(new)
        return len(sent)

    def seen(self, program: str, pids: Iterable[int]) -> None:
        return  # the kernel keeps the membership

    def released(self, program: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                self._dir(program).rmdir()
            except OSError as error:
                if error.errno != errno.EBUSY:
                    raise
                log.warning("cannot remove the cgroup of %s: it still has processes", program)

    def close(self) -> None:
        if not self.base.exists():
            return
        for child in self.base.iterdir():
            if child.is_dir():
                if self._can_kill and (child / "cgroup.procs").read_bytes().strip():
                    _write(child / "cgroup.kill", "1")
                _rmdir_when_empty(child)
        _rmdir_when_empty(self.base)


def _rmdir_when_empty(path: Path, timeout: float = 2.0) -> None:
    # Killed members leave their cgroup a moment after the signal, not at once.
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s", path, error.strerror)
                return
        time.sleep(0.01)


# -- the registry --------------------------------------------------------------------------


@dataclass
class _Registry:
    """pid -> program from walks of /proc, for where there is no cgroup (module doc)."""

    mode = "registry"
    # (pid, start time) -> program: the start time tells a reused pid from ours.
    owners: dict[tuple[int, int], str] = field(default_factory=dict)
    # Process groups and sessions known to be a program's: a member's pgid or sid number
    # stays allocated while any process uses it, so it cannot name someone else's group.
    groups: dict[str, set[int]] = field(default_factory=dict)

    @contextlib.contextmanager
    def placed(self, program: str) -> Iterator[None]:
        yield

    def started(self, program: str, pid: int) -> None:
        # A new run starts once the last run's tree is gone: forget that one (in cgroup
        # mode nothing else would, and a crash loop would grow this for good).
        self.owners = {key: owner for key, owner in self.owners.items() if owner != program}
        self.groups[program] = {pid}  # process_group=0 at spawn: its pgid is its pid
        self.seen(program, [pid])

    def seen(self, program: str, pids: Iterable[int]) -> None:
        # clawsup's own group and session are every program's (and every probe's): they
        # say nothing about who owns a process.
        ours = {os.getpgid(0), os.getsid(0)}
        for pid in pids:
            stat = procinfo.read_stat(pid)
            if stat is None or stat.state in "ZX":
                continue
            self.owners[(pid, stat.starttime)] = program
            self.groups.setdefault(program, set()).update({stat.pgid, stat.sid} - ours)

    def members(self, program: str) -> list[int]:
        """Walk the program's tree again from what is known of it; record what is new."""
        roots: list[int] = []
        for (pid, start), owner in list(self.owners.items()):
            stat = procinfo.read_stat(pid)
            if stat is None or stat.starttime != start or stat.state in "ZX":
                del self.owners[(pid, start)]
            elif owner == program:
                roots.append(pid)
        # Re-parented to clawsup and never seen: ours if it kept a group or session of
        # a known member (a double fork without setsid keeps the program's group), or
        # the environment it was started with.
        groups = self.groups.get(program, set())
        known = {pid for pid, _ in self.owners}
        for pid in procinfo.children(os.getpid()):
            stat = procinfo.read_stat(pid)
            if pid in known or stat is None:
                continue
            if stat.pgid in groups or stat.sid in groups or _marked(pid) == program:
                roots.append(pid)
        found: list[int] = []
        seen: set[int] = set()
        for root in roots:
            if root in seen:
                continue
            for pid in [root, *procinfo.descendants(root)]:
                if pid not in seen:
                    seen.add(pid)
                    found.append(pid)
        self.seen(program, found)
        return [pid for pid in found if _alive(pid)]

    def send(self, program: str, signum: int) -> int:
        sent: set[tuple[int, int]] = set()
        for _ in range(_ROUNDS):
            live = set(self.members(program))
            new = [(pid, start) for (pid, start), owner in self.owners.items()
                   if owner == program and pid in live and (pid, start) not in sent]
            if not new:
                break
            for pid, start in new:
                _send_checked(pid, start, signum)
            sent.update(new)
        return len(sent)

    def released(self, program: str) -> None:
        if not any(owner == program for owner in self.owners.values()):
            self.groups.pop(program, None)

    def close(self) -> None:
        self.owners.clear()
        self.groups.clear()


def _marked(pid: int) -> str | None:
    """The program named by ``PROGRAM_ENV`` in the environment ``pid`` was exec'ed with."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    prefix = PROGRAM_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def _send_checked(pid: int, start: int, signum: int) -> None:
    """Signal ``pid`` only if it is still the process that started at ``start``.

    The pidfd pins one process: checked after opening it, the start time cannot change
    under us before the signal, as it could between a read of /proc and kill(2).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as error:
        if error.errno != errno.ENOSYS:
            raise
        # Linux < 5.3: no pidfds. Check, then kill: the pid would have to be reused in
        # the microseconds between the two.
        stat = procinfo.read_stat(pid)
        if stat is not None and stat.starttime == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return
    try:
        stat = procinfo.read_stat(pid)
        if stat is None or stat.starttime != start:
            return
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        return
    except PermissionError as error:
        log.error("cannot signal pid %d: %s", pid, error)
    finally:
        os.close(pidfd)


# -- the whole-tree rules -------------------------------------------------------------------


class _Backend(Protocol):
    mode: str

    def placed(self, program: str) -> contextlib.AbstractContextManager[None]: ...
    def seen(self, program: str, pids: Iterable[int]) -> None: ...
    def members(self, program: str) -> list[int]: ...
    def send(self, program: str, signum: int) -> int: ...
    def released(self, program: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Ending:
    """A program whose own process exited, until the rest of its tree has."""

    done: Callable[[], None]
    timers: list[TimerHandle]


class Trees:
    """Every program's process tree: placing, listing, signalling, waiting for its end."""

    def __init__(self, call_later: CallLater) -> None:
        self._call_later = call_later
        self._registry = _Registry()
        self._backend: _Backend = self._registry
        self._ending: dict[str, _Ending] = {}

    @property
    def mode(self) -> str:
        return self._backend.mode

    def open(self, mode: CgroupMode) -> None:
        """Choose cgroups where clawsup may create them, else the registry; say which."""
        if mode == "off":
            log.info("process trees: tracked through /proc (cgroups = \"off\")")
            return
        cgroups = _Cgroups.create()
        if isinstance(cgroups, str):
            log.info("process trees: tracked through /proc (%s)", cgroups)
            return
        self._backend = cgroups
        log.info("process trees: one cgroup per program under %s", cgroups.base)

    @contextlib.contextmanager
    def placed(self, program: str) -> Iterator[None]:
        """Around a spawn: the new process starts as a member of ``program``'s tree."""
        try:
            placing = self._backend.placed(program)
            placing.__enter__()
        except OSError as error:
            self._fall_back(f"cannot place {program} in its cgroup: {error.strerror}")
            yield
            return
        try:
            yield
        finally:
            try:
                placing.__exit__(None, None, None)
            except OSError as error:
                # clawsup is now inside a program's cgroup: it must never kill that one.
                self._fall_back(f"cannot move clawsup back to its own cgroup: {error.strerror}")

    def _fall_back(self, why: str) -> None:
        if self._backend is not self._registry:
            log.error("process trees: %s; tracking them through /proc from now on", why)
            self._backend = self._registry

    def started(self, program: str, pid: int) -> None:
        # The registry learns every spawn even in cgroup mode: it is the fallback.
        self._registry.started(program, pid)

    def seen(self, program: str, pids: Iterable[int]) -> None:
        """A walk of the program's tree (the hang sampler's) found these processes."""
        self._backend.seen(program, pids)

    def members(self, program: str) -> list[int]:
        """Every live process of the program's tree now."""
        return self._backend.members(program)

    def snapshot(self, program: str) -> TreeSnapshot:
        """What the sampler thread (usage.py) needs to find the members: the program's
        cgroup directory, or a copy of the registry's members; safe from that thread, as
        it changes nothing."""
        backend = self._backend
        if isinstance(backend, _Cgroups):
            return TreeSnapshot(members=(), cgroup=str(backend._dir(program)))
        owners = self._registry.owners.copy()  # one C call: atomic under the GIL
        return TreeSnapshot(members=tuple(key for key, owner in owners.items()
                                          if owner == program), cgroup=None)

    def signal(self, program: str, signum: int) -> int:
        """Send ``signum`` to every member; how many got it."""
        try:
            return self._backend.send(program, signum)
        except OSError as error:
            log.error("cannot signal the processes of %s: %s", program, error)
            return 0

    # -- a program whose own process exited ---------------------------------------------

    def ended(self, program: str, stop_signal: int, stop_timeout: float, *,
              signalled: bool, done: Callable[[], None]) -> list[int]:
        """``program``'s own process exited: call ``done`` once its whole tree has.

        ``signalled``: the tree was already sent the stop signal (a stop or restart in
        progress). Returns the members left at this moment. ``done`` is called from
        ``settle`` (after each batch of reaped statuses), never from here.
        """
        left = self.members(program)
        timers: list[TimerHandle] = []
        if left:
            if not signalled:
                log.info("%s exited; sending %s to the %d process(es) left of its tree",
                         program, signal.Signals(stop_signal).name, len(left))
                self.signal(program, stop_signal)
            timers = [
                self._call_later(stop_timeout, lambda: self._kill_left(program, stop_timeout)),
                self._call_later(stop_timeout + KILL_TIMEOUT, lambda: self._give_up(program)),
                self._call_later(_POLL, lambda: self._poll(program)),
            ]
        self._ending[program] = _Ending(done=done, timers=timers)
        return left

    def settle(self) -> None:
        """Finish every program whose tree is gone now (called after reaping)."""
        for program in [p for p in self._ending if not self.members(p)]:
            self._finish(program)

    def _poll(self, program: str) -> None:
        ending = self._ending.get(program)
        if ending is None:
            return
        if not self.members(program):
            self._finish(program)
            return
        ending.timers.append(self._call_later(_POLL, lambda: self._poll(program)))

    def _kill_left(self, program: str, stop_timeout: float) -> None:
        if program in self._ending:
            count = self.signal(program, signal.SIGKILL)
            if count:
                log.warning("%d process(es) of %s did not stop within %gs, sent SIGKILL",
                            count, program, stop_timeout)

    def _give_up(self, program: str) -> None:
        if program in self._ending:
            left = self.members(program)
            log.warning("%d process(es) of %s still present %gs after SIGKILL (stuck in the "
                        "kernel): not waiting for them any longer: %s", len(left), program,
                        KILL_TIMEOUT, left)
            self._finish(program)

    def _finish(self, program: str) -> None:
        ending = self._ending.pop(program)
        for timer in ending.timers:
            timer.cancel()
        try:
            self._backend.released(program)
        except OSError as error:
            log.warning("cannot remove the cgroup of %s: %s", program, error.strerror)
        ending.done()

    # -- shutdown -------------------------------------------------------------------------

    async def close(self, timeout: float) -> None:
        """Leave nothing behind: end every descendant of clawsup still alive (stop
        signal, SIGKILL after ``timeout``), then remove the cgroups.

        The programs are stopped by now; what is left was never attributed (registry
        mode) or belongs to no program (an exec probe's orphan).
        """
        left = [pid for pid in procinfo.descendants(os.getpid()) if _alive(pid)]
        if left:
            log.warning("ending %d process(es) left under clawsup: %s", len(left), left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_alive(pid) for pid in left):
                await asyncio.sleep(0.05)
            for pid in procinfo.descendants(os.getpid()):
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        try:
            self._backend.close()
        except OSError as error:
            log.warning("cannot remove clawsup's cgroups: %s", error.strerror)
