"""The session janitor's lock rules (issue 4, items 1-3) on real files and real processes.

Time is the only fake: a clock the test moves. Owners are real processes, spawned,
killed, left as zombies or reaped; the fixture's PID-37 lock is judged in a fresh PID
namespace, where -- as in the container -- PID 37 is dead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.janitor import Janitor, OrphanLock, SweepReport
from clawsup.supervisor.kinds import as_data
from clawsup.supervisor.locks import OrphanReason
from clawsup.units import Duration, Size
from tests.util import wait_until

SESSIONS = Path("agents/main/sessions")
FIXTURE_LOCK = "c0ffee00-1111-4222-8333-444455556666.jsonl.lock"
FIXTURE_CREATED_AT = "2026-11-27T21:40:00.020Z"
SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def iso(at: float) -> str:
    """A createdAt as the gateway writes it (JavaScript's toISOString)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_lock(directory: Path, name: str, pid: int, created_at: float | None = None, **extra: Any) -> Path:
    payload: dict[str, Any] = {"pid": pid}
    if created_at is not None:
        payload["createdAt"] = iso(created_at)
    payload.update(extra)
    path = directory / name
    path.write_text(json.dumps(payload, indent=2))
    return path


def janitor_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "clawsup.janitor"]


def removed(report: SweepReport) -> dict[str, OrphanLock]:
    return {lock.path.name: lock for lock in report.removed_locks}


class Testbed:
    """A gateway home, a fake clock, the janitors made over them and the processes
    spawned as lock owners; everything is closed, killed and reaped at the end."""

    __test__ = False

    def __init__(self, home: Path) -> None:
        self.home = home
        self.sessions = home / SESSIONS
        self.clock = FakeClock(time.time())
        self._janitors: list[Janitor] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def janitor(self, *, use_inotify: bool = True, **overrides: float) -> Janitor:
        settings: dict[str, Any] = {
            key: Size(int(value)) if key == "max_session_size" else Duration(value)
            for key, value in overrides.items()
        }
        config = JanitorConfig(sessions=[str(self.home / "agents" / "*" / "sessions")], **settings)
        janitor = Janitor(config, self.clock, use_inotify=use_inotify)
        self._janitors.append(janitor)
        return janitor

    def spawn(self, argv: list[str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv or SLEEP, start_new_session=True, **kwargs)
        self._processes.append(process)
        return process

    def dead_pid(self) -> int:
        process = subprocess.Popen(["true"])
        process.wait()
        return process.pid

    def close(self) -> None:
        for janitor in self._janitors:
            janitor.close()
        for process in self._processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def testbed(clawdbot_home: Path) -> Iterator[Testbed]:
    bed = Testbed(clawdbot_home)
    yield bed
    bed.close()


# -- the fixture's stale lock, in a PID namespace where PID 37 is dead ------------------

_IN_NAMESPACE = """
import json, logging, sys
from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.janitor import Janitor
from clawsup.units import Duration

logging.basicConfig(level=logging.INFO, format="%(name)s|%(message)s", stream=sys.stderr)
home, created = sys.argv[1], float(sys.argv[2])
now = [created]
config = JanitorConfig(sessions=[home + "/agents/*/sessions"], lock_max_age=Duration(300))
with Janitor(config, lambda: now[0]) as janitor:
    for offset in sys.argv[3:]:
        now[0] = created + float(offset)
        report = janitor.sweep({})
        print(json.dumps([[l.path.name, l.pid, l.reason.value, l.age] for l in report.removed_locks]))
"""


def _pid_namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _pid_namespaces_available(), reason="needs unshare(CLONE_NEWPID)")
def test_fixture_lock_of_dead_pid_37_removed_after_lock_max_age_not_before(
    clawdbot_home: Path,
) -> None:
    created = datetime.fromisoformat(FIXTURE_CREATED_AT).timestamp()
    result = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            _IN_NAMESPACE,
            str(clawdbot_home),
            repr(created),
            "0",
            "299",
            "301",
            "302",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sweeps = [json.loads(line) for line in result.stdout.splitlines()]
    assert sweeps[:2] == [[], []]  # just written, and 299 s old: kept
    assert sweeps[2] == [[FIXTURE_LOCK, 37, "dead", pytest.approx(301.0)]]
    assert sweeps[3] == []
    lock = clawdbot_home / SESSIONS / FIXTURE_LOCK
    assert not lock.exists()
    assert (
        f"clawsup.janitor|Removing orphan lock: {lock} (PID 37 is dead, age: 301s)"
        in result.stderr.splitlines()
    )
    # Everything else in the home is still there.
    assert (clawdbot_home / SESSIONS / "c0ffee00-1111-4222-8333-444455556666.jsonl").exists()
    assert (clawdbot_home / SESSIONS / "sessions.json").exists()


# -- dead owners -------------------------------------------------------------------------


def test_dead_owner_lock_kept_until_lock_max_age(testbed: Testbed, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    pid = testbed.dead_pid()
    created = testbed.clock.now
    lock = write_lock(testbed.sessions, "dead0001.jsonl.lock", pid, created)
    janitor = testbed.janitor(lock_max_age=300)
    assert "dead0001.jsonl.lock" not in removed(janitor.sweep())
    testbed.clock.now = created + 299.5
    assert "dead0001.jsonl.lock" not in removed(janitor.sweep())
    assert lock.exists()
    testbed.clock.now = created + 320.2
    orphan = removed(janitor.sweep())["dead0001.jsonl.lock"]
    assert (orphan.pid, orphan.reason, orphan.program) == (pid, OrphanReason.DEAD, None)
    assert not lock.exists()
    assert f"Removing orphan lock: {lock} (PID {pid} is dead, age: 320s)" in janitor_messages(caplog)
    assert orphan.message == f"Removing orphan lock: {lock} (PID {pid} is dead, age: 320s)"
    assert as_data(orphan.payload()) == {
        "path": str(lock),
        "pid": pid,
        "reason": "dead",
        "age": pytest.approx(320.2, abs=0.01),
        "session_id": "dead0001",
    }


# -- our child exited --------------------------------------------------------------------


def test_program_exited_clears_the_dead_childs_locks_at_once(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    gateway = testbed.spawn()
    created = testbed.clock.now
    mine = write_lock(testbed.sessions, "run00001.jsonl.lock", gateway.pid, created)
    other_pid = testbed.dead_pid()
    others = write_lock(testbed.sessions, "run00002.jsonl.lock", other_pid, created)
    janitor = testbed.janitor()
    janitor.sweep({gateway.pid: "gateway"})
    assert mine.exists()
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait()
    testbed.clock.now = created + 7.4
    janitor.sweep()  # dead, but young: a plain sweep waits for lock_max_age
    assert mine.exists()
    report = janitor.program_exited("gateway", [gateway.pid])
    orphan = removed(report)["run00001.jsonl.lock"]
    assert (orphan.reason, orphan.program, orphan.pid) == (OrphanReason.EXITED, "gateway", gateway.pid)
    assert not mine.exists()
    assert others.exists()  # a dead pid that was not ours still waits for lock_max_age
    expected = f"Removing orphan lock: {mine} (PID {gateway.pid} was our gateway, exited, age: 7s)"
    assert expected in janitor_messages(caplog)


def test_program_exited_finds_a_lock_written_just_before_the_exit(testbed: Testbed) -> None:
    janitor = testbed.janitor()
    janitor.sweep()
    script = (
        "import json, os, sys; "
        "open(sys.argv[1], 'x').write(json.dumps({'pid': os.getpid()})); "
        "os.kill(os.getpid(), 9)"
    )
    lock = testbed.sessions / "late0001.jsonl.lock"
    child = testbed.spawn([sys.executable, "-c", script, str(lock)])
    child.wait()
    assert lock.exists()
    # No on_readable() in between: program_exited drains inotify itself.
    assert "late0001.jsonl.lock" in removed(janitor.program_exited("gateway", [child.pid]))
    assert not lock.exists()


def test_program_exited_clears_locks_of_an_unreaped_zombie(testbed: Testbed) -> None:
    child = subprocess.Popen(SLEEP)
    try:
        lock = write_lock(testbed.sessions, "zomb0001.jsonl.lock", child.pid, testbed.clock.now)
        janitor = testbed.janitor()
        janitor.sweep()
        child.kill()
        wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
        assert "zomb0001.jsonl.lock" in removed(janitor.program_exited("gateway", [child.pid]))
        assert not lock.exists()
    finally:
        child.kill()
        child.wait()


def test_program_exited_also_covers_agent_directories_new_since_the_last_pass(
    testbed: Testbed,
) -> None:
    janitor = testbed.janitor()
    janitor.sweep()
    pid = testbed.dead_pid()
    fresh = testbed.home / "agents" / "ops" / "sessions"
    fresh.mkdir(parents=True)
    lock = write_lock(fresh, "ops00001.jsonl.lock", pid, testbed.clock.now)
    assert "ops00001.jsonl.lock" in removed(janitor.program_exited("gateway", [pid]))
    assert not lock.exists()


# -- PID reuse ---------------------------------------------------------------------------


def test_lock_older_than_the_live_process_owning_its_pid_is_removed_at_once(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    process = testbed.spawn()
    started = psutil.Process(process.pid).create_time()
    lock = write_lock(testbed.sessions, "reus0001.jsonl.lock", process.pid, started - 10.0)
    testbed.clock.now = started - 10.0 + 42.3
    orphan = removed(testbed.janitor().sweep({process.pid: "gateway"}))["reus0001.jsonl.lock"]
    assert orphan.reason is OrphanReason.REUSED
    assert not lock.exists()
    assert f"Removing orphan lock: {lock} (PID {process.pid} was reused, age: 42s)" in (
        janitor_messages(caplog)
    )
    assert process.poll() is None  # the janitor signals nobody


def test_lock_created_after_its_owner_started_is_kept_however_old(testbed: Testbed) -> None:
    process = testbed.spawn()
    started = psutil.Process(process.pid).create_time()
    lock = write_lock(testbed.sessions, "held0001.jsonl.lock", process.pid, started + 0.5)
    janitor = testbed.janitor(lock_max_age=300)
    for offset in (1, 301, 3600, 86400):
        testbed.clock.now = started + offset
        assert "held0001.jsonl.lock" not in removed(janitor.sweep())
    assert lock.exists()


def test_lock_without_created_at_is_dated_by_its_mtime(testbed: Testbed) -> None:
    process = testbed.spawn()
    started = psutil.Process(process.pid).create_time()
    old = write_lock(testbed.sessions, "mtim0001.jsonl.lock", process.pid)
    os.utime(old, (started - 30, started - 30))
    young = write_lock(testbed.sessions, "mtim0002.jsonl.lock", process.pid)
    os.utime(young, (started + 2, started + 2))
    found = removed(testbed.janitor().sweep())
    assert found["mtim0001.jsonl.lock"].reason is OrphanReason.REUSED
    assert "mtim0002.jsonl.lock" not in found
    assert young.exists()


def test_starttime_in_the_lock_identifies_the_owner_exactly(testbed: Testbed) -> None:
    process = testbed.spawn()
    with open(f"/proc/{process.pid}/stat", "rb") as handle:
        raw = handle.read()
    ticks = int(raw[raw.rfind(b")") + 2 :].split()[19])
    long_ago = time.time() - 86400  # createdAt says "before the owner was born"...
    same = write_lock(testbed.sessions, "tick0001.jsonl.lock", process.pid, long_ago, starttime=ticks)
    other = write_lock(testbed.sessions, "tick0002.jsonl.lock", process.pid, time.time(), starttime=ticks + 1)
    found = removed(testbed.janitor().sweep())
    assert same.exists()  # ...but the start tick matches: it is the owner
    assert found["tick0002.jsonl.lock"].reason is OrphanReason.REUSED
    assert not other.exists()


# -- garbage -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\x00\x01\xfe\xff\x80binary", b'{"pid":"x"}', b'{"pid": true}', b"[37]"],
    ids=["empty", "text", "binary", "pid-string", "pid-bool", "list"],
)
def test_garbage_lock_judged_by_mtime_age_alone(
    testbed: Testbed, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    lock = testbed.sessions / "junk0001.jsonl.lock"
    lock.write_bytes(content)
    mtime = time.time() - 5
    os.utime(lock, (mtime, mtime))
    janitor = testbed.janitor(lock_max_age=300)
    testbed.clock.now = mtime + 299
    assert "junk0001.jsonl.lock" not in removed(janitor.sweep())
    testbed.clock.now = mtime + 333
    orphan = removed(janitor.sweep())["junk0001.jsonl.lock"]
    assert (orphan.reason, orphan.pid) == (OrphanReason.UNREADABLE, None)
    assert not lock.exists()
    assert f"Removing orphan lock: {lock} (unreadable lock, age: 333s)" in janitor_messages(caplog)


# -- the index lock ----------------------------------------------------------------------


def test_index_lock_of_a_dead_owner_goes_after_30s_even_with_a_longer_lock_max_age(
    testbed: Testbed,
) -> None:
    pid = testbed.dead_pid()
    lock = testbed.sessions / "sessions.json.lock"
    lock.write_text(json.dumps({"pid": pid, "startedAt": int(testbed.clock.now * 1000)}))
    janitor = testbed.janitor(lock_max_age=300)
    testbed.clock.advance(29)
    assert "sessions.json.lock" not in removed(janitor.sweep())
    testbed.clock.advance(2)
    assert removed(janitor.sweep())["sessions.json.lock"].reason is OrphanReason.DEAD
    assert not lock.exists()


def test_index_lock_held_long_by_a_live_owner_is_no_stuck_message(testbed: Testbed) -> None:
    process = testbed.spawn()
    lock = testbed.sessions / "sessions.json.lock"
    lock.write_text(json.dumps({"pid": process.pid, "startedAt": int(time.time() * 1000)}))
    janitor = testbed.janitor(message_timeout=600)
    testbed.clock.advance(3600)
    report = janitor.sweep({process.pid: "gateway"})
    assert report.stuck == ()
    assert "sessions.json.lock" not in removed(report)
    assert lock.exists()


# -- stuck messages ----------------------------------------------------------------------


def test_live_lock_over_message_timeout_reported_once_then_after_another_timeout(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    process = testbed.spawn()
    created = time.time()
    lock = write_lock(testbed.sessions, "slow0001.jsonl.lock", process.pid, created)
    janitor = testbed.janitor(message_timeout=600, interval=5)
    owners = {process.pid: "gateway"}
    testbed.clock.now = created + 599
    assert janitor.sweep(owners).stuck == ()
    testbed.clock.now = created + 612.5
    (stuck,) = janitor.sweep(owners).stuck
    assert (stuck.path, stuck.pid, stuck.session_id, stuck.program) == (
        lock,
        process.pid,
        "slow0001",
        "gateway",
    )
    assert stuck.held_for == pytest.approx(612.5, abs=0.01)
    assert stuck.payload().kind == "message_timeout"
    expected = f"Stuck message: {lock} (held by PID {process.pid} of gateway for 612s)"
    assert janitor_messages(caplog).count(expected) == 1
    for _ in range(10):  # the following sweeps, one interval apart: nothing new
        testbed.clock.advance(5)
        assert janitor.sweep(owners).stuck == ()
    testbed.clock.now = created + 612.5 + 600
    (again,) = janitor.sweep(owners).stuck
    assert again.held_for == pytest.approx(1212.5, abs=0.01)
    assert lock.exists()
    assert process.poll() is None


def test_a_new_lock_on_the_same_session_is_a_new_stuck_message(testbed: Testbed) -> None:
    process = testbed.spawn()
    created = time.time()
    write_lock(testbed.sessions, "slow0002.jsonl.lock", process.pid, created)
    janitor = testbed.janitor(message_timeout=600)
    testbed.clock.now = created + 700
    assert len(janitor.sweep().stuck) == 1
    write_lock(testbed.sessions, "slow0002.jsonl.lock", process.pid, created + 50)
    janitor.on_readable()
    testbed.clock.now = created + 700 + 5
    (stuck,) = janitor.sweep().stuck
    assert stuck.held_for == pytest.approx(655, abs=0.01)


def test_stuck_message_names_our_program_through_the_owners_ancestors(testbed: Testbed) -> None:
    # A launcher that re-spawns itself: the lock is its child's.
    launcher = testbed.spawn(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
    assert launcher.stdout is not None
    worker = int(launcher.stdout.readline())
    stranger = testbed.spawn()
    created = time.time()
    write_lock(testbed.sessions, "anc00001.jsonl.lock", worker, created)
    write_lock(testbed.sessions, "anc00002.jsonl.lock", stranger.pid, created)
    janitor = testbed.janitor(message_timeout=60)
    testbed.clock.now = created + 61
    stuck = {s.session_id: s for s in janitor.sweep({launcher.pid: "gateway"}).stuck}
    assert stuck["anc00001"].program == "gateway"
    assert stuck["anc00002"].program is None


def test_a_stuck_message_is_judged_by_the_message_timeout_in_force(testbed: Testbed) -> None:
    # No explicit [janitor] message_timeout: the service sets the value it worked out from
    # the gateway's turn timeout (message_timeout.py), e.g. 30 s + 60 s.
    process = testbed.spawn()
    created = time.time()
    write_lock(testbed.sessions, "turn0001.jsonl.lock", process.pid, created)
    janitor = testbed.janitor()
    janitor.message_timeout = 90.0
    owners = {process.pid: "gateway"}
    testbed.clock.now = created + 85
    assert janitor.sweep(owners).stuck == ()
    testbed.clock.now = created + 95
    (stuck,) = janitor.sweep(owners).stuck
    assert stuck.session_id == "turn0001"
