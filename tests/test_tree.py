"""A program is its whole tree (DESIGN.md §8), against real processes.

The fixture program starts what the gateway's exec tool and daemons start: a child in a
session of its own (Node's ``detached: true``), a double-forked daemon and a
``setsid -f`` process (both re-parented to clawsup at once), and a plain child in its
process group. Each child notes its pid, and the SIGTERM it gets, in a directory.

Every behaviour runs in both ways clawsup keeps a tree: a cgroup v2 per program
(``cgroups = "auto"`` on this machine) and the /proc registry (``cgroups = "off"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clawsup.client import Client
from tests.util import REPO, Clawsup, wait_until, write_config

KID = """
import os, signal, sys, time
role, notes = sys.argv[1], sys.argv[2]
stubborn = len(sys.argv) > 3
def on_term(*_):
    open(f"{notes}/term-{role}-{os.getpid()}", "w").close()
    if not stubborn:
        os._exit(0)
signal.signal(signal.SIGTERM, on_term)
open(f"{notes}/pid-{role}-{os.getpid()}", "w").close()
while True:
    time.sleep(1)
"""

# The program: four kinds of children, then on its first run it waits, exits or hangs as
# told (later runs wait).
PROGRAM = """
import os, subprocess, sys, time
kid, notes, then = sys.argv[1], sys.argv[2], sys.argv[3]
stubborn = sys.argv[4:]
run = [sys.executable, kid]
# The exec tool's way: a session and process group of its own.
subprocess.Popen([*run, "detached", notes, *stubborn], start_new_session=True)
# A daemon: fork, setsid, fork again; the middle one exits, the daemon is re-parented.
middle = os.fork()
if middle == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [*run, "daemon", notes, *stubborn])
    os._exit(0)
os.waitpid(middle, 0)
# setsid -f forks and exits at once: the same, from the shell.
subprocess.run(["setsid", "-f", *run, "setsid", notes, *stubborn], check=True)
# And a plain child, in the program's own process group.
subprocess.Popen([*run, "plain", notes, *stubborn])
first = not os.path.exists(notes + "/second")
while len([n for n in os.listdir(notes) if n.startswith("pid-")]) < (4 if first else 8):
    time.sleep(0.01)
print("ready", os.getpid(), flush=True)
open(notes + "/second", "a").close()
if not first:
    then = "wait"
if then == "exit":
    raise SystemExit(3)
if then == "hang":
    import ctypes, signal
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # clone(CLONE_VFORK | SIGCHLD) without CLONE_VM: the parent sleeps in D until the
    # child exits, which it never does.
    if libc.syscall(56, 0x4000 | signal.SIGCHLD, 0, 0, 0, 0) == 0:
        time.sleep(1000)
        os._exit(0)
while True:
    time.sleep(1)
"""

ROLES = ("detached", "daemon", "setsid", "plain")
KEEPER = ("import signal, sys, time\n"
          "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
          "time.sleep(1000)")


class Tree:
    """clawsup running the fixture program ``gw`` (and a quiet main ``keeper``)."""

    def __init__(self, tmp_path: Path, mode: str, then: str = "wait", *,
                 stubborn: bool = False, extra: str = "", pid1: bool = False,
                 gw_main: bool = False) -> None:
        self.notes = tmp_path / "notes"
        self.notes.mkdir(parents=True)
        kid = tmp_path / "kid.py"
        kid.write_text(KID)
        script = tmp_path / "program.py"
        script.write_text(PROGRAM)
        command = [sys.executable, str(script), str(kid), str(self.notes), then,
                   *(["stubborn"] if stubborn else [])]
        keeper = "" if gw_main else textwrap.dedent(f"""
            [programs.keeper]
            command = {json.dumps([sys.executable, "-c", KEEPER])}
            main = true
            start_seconds = "0s"
            """)
        body = keeper + textwrap.dedent(f"""
            [programs.gw]
            command = {json.dumps(command)}
            main = {"true" if gw_main else "false"}
            start_seconds = "100ms"
            stop_timeout = "1s"
            backoff = {{ initial = "100ms", factor = 2.0, max = "1s", reset_after = "3s" }}
            """) + extra
        config = write_config(tmp_path, body, supervisor=f'cgroups = "{mode}"')
        self.pid1 = pid1
        self.clawsup = Clawsup(config, tmp_path / "clawsup.log", pid1=pid1)
        self.endpoint = f"ipc://{tmp_path}/run/control.sock"
        self.client = Client(self.endpoint, timeout=20)

    def notes_of(self, kind: str) -> dict[str, list[int]]:
        """role -> pids, from the ``pid-`` or ``term-`` notes."""
        found: dict[str, list[int]] = {}
        for name in os.listdir(self.notes):
            if name.startswith(kind + "-"):
                _, role, pid = name.split("-")
                found.setdefault(role, []).append(int(pid))
        return found

    def kids(self, runs: int = 1) -> dict[str, list[int]]:
        """Wait for every child of ``runs`` runs; role -> pids."""
        def all_there() -> dict[str, list[int]] | None:
            found = self.notes_of("pid")
            ok = set(found) == set(ROLES) and all(len(p) == runs for p in found.values())
            return found if ok else None
        return wait_until(all_there, 20, what=f"the children of {runs} run(s)")

    def status(self) -> dict[str, object]:
        reply = self.client.status()
        program = next(p for p in reply.programs if p.name == "gw")
        return {"state": program.state, "pid": program.pid, "processes": program.processes}

    def stop(self) -> None:
        self.client.close()
        self.clawsup.stop()
        if not self.pid1:  # a PID namespace takes its processes with it
            kill_kids(self.notes)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Callable[..., Tree]]:
    made: list[Tree] = []

    def make(mode: str, then: str = "wait", **kwargs: object) -> Tree:
        made.append(Tree(tmp_path / f"t{len(made)}", mode, then, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for instance in made:
        instance.stop()


def kill_kids(notes: Path) -> None:
    """Whatever a failing test left running: the children noted in ``notes`` (checked by
    their command line, which names ``notes``, so a reused pid is left alone)."""
    for name in os.listdir(notes):
        if not name.startswith("pid-"):
            continue
        pid = int(name.split("-")[2])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                mine = str(notes).encode() in handle.read()
        except OSError:
            continue
        if mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def flat(kids: dict[str, list[int]]) -> list[int]:
    return [pid for pids in kids.values() for pid in pids]


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as handle:
        return next(line[3:].strip() for line in handle if line.startswith("0::"))


MODES = pytest.mark.parametrize("mode", ["auto", "off"])


# -- membership -----------------------------------------------------------------------------


@MODES
def test_status_counts_every_process_of_the_tree(tree, mode: str) -> None:
    t = tree(mode)
    kids = t.kids()
    # The program itself and its four children, detached and re-parented ones included.
    wait_until(lambda: t.status()["processes"] == 5, 10,
               what=f"5 processes in status, got {t.status()}")
    assert all(alive(pid) for pid in flat(kids))
    assert t.client.status().programs[0].processes == 1  # keeper: just itself
    printed = subprocess.run(
        [sys.executable, "-m", "clawsup.client.ctl", "--socket", t.endpoint, "status", "--json"],
        capture_output=True, text=True, timeout=30, cwd=REPO, check=True,
    ).stdout
    assert {p["name"]: p["processes"] for p in json.loads(printed)["programs"]} == {
        "keeper": 1, "gw": 5}


def test_with_cgroups_each_program_has_a_cgroup_of_its_own(tree) -> None:
    t = tree("auto")
    kids = t.kids()
    groups = {cgroup_of(pid) for pid in flat(kids)}
    assert len(groups) == 1, groups
    (group,) = groups
    assert group.rsplit("/", 2)[-2].startswith("clawsup-")
    assert group.endswith("/gw")
    assert cgroup_of(t.clawsup.supervisor_pid) != group  # clawsup went back to its own
    t.clawsup.signal(signal.SIGTERM)
    t.clawsup.wait()
    mount = Path("/sys/fs/cgroup/unified")
    if not mount.exists():
        mount = Path("/sys/fs/cgroup")
    assert not (mount / group.lstrip("/")).exists()
    assert not (mount / group.lstrip("/")).parent.exists(), "removed at shutdown"


# -- ending it --------------------------------------------------------------------------------


@MODES
def test_stop_ends_the_whole_tree_with_the_stop_signal(tree, mode: str) -> None:
    t = tree(mode)
    kids = t.kids()
    reply = t.client.stop("gw")
    assert reply.state == "STOPPED"
    # The reply comes once the whole tree is gone, not just the program's own process.
    assert all_gone(flat(kids)), [p for p in flat(kids) if alive(p)]
    assert t.notes_of("term") == kids, "each got SIGTERM, none had to be killed"
    assert t.status()["processes"] == 0


@MODES
def test_restart_ends_the_old_tree_before_the_new_one_starts(tree, mode: str) -> None:
    t = tree(mode)
    first = t.kids()
    t.client.restart("gw")
    assert all_gone(flat(first))
    assert t.notes_of("term") == first
    second = t.kids(runs=2)
    new = [pid for pid in flat(second) if pid not in flat(first)]
    assert len(new) == 4
    assert all(alive(pid) for pid in new)
    wait_until(lambda: t.status()["processes"] == 5, 10, what="the new tree counted")


@MODES
def test_a_child_ignoring_sigterm_is_killed_after_stop_timeout(tree, mode: str) -> None:
    t = tree(mode, stubborn=True)
    kids = t.kids()
    reply = t.client.stop("gw")
    assert reply.state == "STOPPED"
    assert all_gone(flat(kids))
    # They got the stop signal first, ignored it, and SIGKILL ended them.
    assert t.notes_of("term") == kids
    assert "did not stop within 1s, sent SIGKILL" in t.clawsup.log()


@MODES
def test_exit_of_the_program_ends_what_is_left_of_its_tree(tree, mode: str) -> None:
    t = tree(mode, "exit", extra='autorestart = "never"\n')
    kids = t.kids()
    wait_until(lambda: t.status()["state"] == "EXITED", 10, what="gw EXITED")
    # EXITED is reported once the tree is gone: the leftovers got the stop signal.
    assert all_gone(flat(kids))
    assert t.notes_of("term") == kids


@MODES
def test_exit_ends_stubborn_leftovers_with_sigkill_after_stop_timeout(tree, mode: str) -> None:
    t = tree(mode, "exit", stubborn=True, extra='autorestart = "never"\n')
    kids = t.kids()
    wait_until(lambda: t.status()["state"] == "EXITED", 15, what="gw EXITED")
    assert all_gone(flat(kids))
    assert t.notes_of("term") == kids
    assert "of gw did not stop within 1s, sent SIGKILL" in t.clawsup.log()


@MODES
def test_a_crash_respawns_only_after_the_old_tree_is_gone(tree, mode: str) -> None:
    t = tree(mode, "exit")
    first = t.kids()
    second = t.kids(runs=2)
    # Every child of the first run ended before the second run's were born.
    assert all_gone(flat(first))
    assert t.notes_of("term").keys() >= set(ROLES)
    assert set(flat(first)) <= set(flat(t.notes_of("term")))
    assert len(second) == 4


@MODES
def test_hang_kill_ends_the_whole_tree_with_sigkill(tree, mode: str) -> None:
    hang = '[programs.gw.hang]\nd_state_after = "1s"\nsample_interval = "100ms"\n'
    t = tree(mode, "hang", extra=hang)
    first = t.kids()
    t.kids(runs=2)  # killed and started again
    assert all_gone(flat(first))
    assert t.notes_of("term") == {}, "a hang goes straight to SIGKILL, for the whole tree"


@MODES
def test_shutdown_as_subreaper_leaves_no_process_behind(tree, mode: str) -> None:
    t = tree(mode)
    kids = t.kids()
    t.clawsup.signal(signal.SIGTERM)
    assert t.clawsup.wait(30) == 0
    assert all_gone(flat(kids))
    assert t.notes_of("term") == kids


@MODES
def test_shutdown_as_pid1_ends_the_tree_gracefully(tree, mode: str) -> None:
    # In a PID namespace the kernel would SIGKILL what is left when PID 1 exits; the
    # SIGTERM notes show clawsup ended each of them itself, gracefully.
    t = tree(mode, pid1=True)
    kids = t.kids()  # pids inside the namespace
    t.clawsup.signal(signal.SIGTERM)
    assert t.clawsup.wait(30) == 0
    assert t.notes_of("term") == kids


def test_registry_never_signals_a_reused_pid(tmp_path: Path) -> None:
    from clawsup.supervisor.tree import _Registry

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
    try:
        registry = _Registry()
        registry.started("gw", process.pid)
        ((pid, start),) = registry.owners
        # The same pid with another start time: a different process that got the number.
        registry.owners = {(pid, start + 1): "gw"}
        assert registry.send("gw", signal.SIGKILL) == 0
        assert process.poll() is None
        registry.owners = {(pid, start): "gw"}
        assert registry.send("gw", signal.SIGKILL) == 1
        assert process.wait(10) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()


# -- clawsupctl signal ------------------------------------------------------------------------


NOTES_USR1 = """
import os, signal, subprocess, sys, time
notes = sys.argv[1]
signal.signal(signal.SIGUSR1, lambda *_: open(f"{notes}/usr1-{os.getpid()}", "w").close())
if sys.argv[2:] == ["leader"]:
    # A child that stays in the program's process group, as a non-detached one does.
    subprocess.Popen([sys.executable, __file__, notes])
    print("ready", flush=True)
else:
    open(f"{notes}/ready-{os.getpid()}", "w").close()
while True:
    time.sleep(1)
"""


def test_signal_reaches_the_program_process_group(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    script = tmp_path / "usr1.py"
    script.write_text(NOTES_USR1)
    body = textwrap.dedent(f"""
        [programs.gw]
        command = {json.dumps([sys.executable, str(script), str(notes), "leader"])}
        main = true
        start_seconds = "0s"
        stop_timeout = "1s"
        """)
    clawsup = Clawsup(write_config(tmp_path, body), tmp_path / "clawsup.log")
    try:
        clawsup.wait_log("gw | ready")
        ready = wait_until(lambda: [n for n in os.listdir(notes) if n.startswith("ready-")], 10)
        child = int(ready[0].split("-")[1])
        result = subprocess.run(
            [sys.executable, "-m", "clawsup.client.ctl", "--socket",
             f"ipc://{tmp_path}/run/control.sock", "signal", "USR1", "gw"],
            capture_output=True, text=True, timeout=30, cwd=REPO, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "process group" in result.stdout
        with Client(f"ipc://{tmp_path}/run/control.sock") as client:
            leader = client.status().programs[0].pid
        assert leader is not None
        wait_until(lambda: {f"usr1-{leader}", f"usr1-{child}"} <= set(os.listdir(notes)), 10,
                   what="USR1 at the leader and the child in its group")
    finally:
        clawsup.stop()


def _cgroup2_mount() -> str:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            before, _, after = line.partition(" - ")
            if after.split()[0] == "cgroup2":
                return before.split()[4]
    pytest.skip("no cgroup2 mounted")


def _read_only_cgroups(mount: str) -> Callable[[], None]:
    """A preexec_fn: a mount namespace of its own where ``mount`` is read-only, as in a
    default Docker container (a bind remount: the host's mount is not touched)."""
    import ctypes

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        clone_newns, ms_rdonly, ms_remount, ms_bind, ms_rec, ms_private = (
            0x20000, 1, 32, 4096, 16384, 1 << 18)
        if libc.unshare(clone_newns) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        if libc.mount(None, mount.encode(), None, ms_remount | ms_bind | ms_rdonly, None) != 0:
            raise OSError(ctypes.get_errno(), "remount read-only")

    return preexec


def test_without_a_writable_cgroup2_the_tree_is_kept_through_proc(tmp_path: Path) -> None:
    mount = _cgroup2_mount()
    notes = tmp_path / "notes"
    notes.mkdir()
    (tmp_path / "kid.py").write_text(KID)
    (tmp_path / "program.py").write_text(PROGRAM)
    command = [sys.executable, str(tmp_path / "program.py"), str(tmp_path / "kid.py"),
               str(notes), "wait"]
    body = textwrap.dedent(f"""
        [programs.gw]
        command = {json.dumps(command)}
        main = true
        start_seconds = "0s"
        stop_timeout = "1s"
        """)
    config = write_config(tmp_path, body, supervisor='cgroups = "auto"')
    clawsup = Clawsup(config, tmp_path / "clawsup.log", preexec=_read_only_cgroups(mount))
    try:
        text = clawsup.wait_log("gw | ready")
        # Not an error: the fallback is said once, at info.
        assert "process trees: tracked through /proc (cannot create" in text
        assert "Read-only file system" in text
        assert " ERROR " not in text

        def started() -> list[int]:
            found = [int(n.split("-")[2]) for n in os.listdir(notes) if n.startswith("pid-")]
            return found if len(found) == 4 else []

        pids = wait_until(started, 20, what="the four children")
        assert all("clawsup-" not in cgroup_of(pid) for pid in pids)
        clawsup.signal(signal.SIGTERM)
        assert clawsup.wait(30) == 128 + signal.SIGTERM  # gw, the main program, got it
        assert all_gone(pids)
        assert len([n for n in os.listdir(notes) if n.startswith("term-")]) == 4
    finally:
        clawsup.stop()
        kill_kids(notes)


def test_shutdown_ends_a_process_no_walk_could_attribute(tmp_path: Path) -> None:
    # Registry mode, the one case it cannot attribute: an empty environment and a session
    # of its own, re-parented before any walk saw it. Shutdown still ends it, gracefully.
    notes = tmp_path / "notes"
    notes.mkdir()
    (tmp_path / "kid.py").write_text(KID)
    script = (f"env -i setsid -f {sys.executable} {tmp_path / 'kid.py'} stray {notes}; "
              "exec sleep 1000")
    body = textwrap.dedent(f"""
        [programs.gw]
        command = {json.dumps(["sh", "-c", script])}
        main = true
        start_seconds = "0s"
        stop_timeout = "1s"
        """)
    clawsup = Clawsup(write_config(tmp_path, body, supervisor='cgroups = "off"'),
                      tmp_path / "clawsup.log")
    try:
        stray = wait_until(lambda: [int(n.split("-")[2]) for n in os.listdir(notes)
                                    if n.startswith("pid-")], 20, what="the stray child")
        clawsup.signal(signal.SIGTERM)
        assert clawsup.wait(30) == 128 + signal.SIGTERM
        assert all_gone(stray)
        assert [n for n in os.listdir(notes) if n.startswith("term-")] == [f"term-stray-{stray[0]}"]
    finally:
        clawsup.stop()
        kill_kids(notes)
