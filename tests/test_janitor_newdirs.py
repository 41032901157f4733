"""Session directories that appear after the janitor started (a fresh home: the gateway
makes ~/.clawdbot/agents/main/sessions at its first turn, with one ``mkdir -p``).

The janitor watches the directories such a directory may appear in -- agents/, each
agents/<id>/, or while they are missing their nearest existing ancestor -- so a new one
is pinned and swept at the next sweep, not at the next full pass. Every test sets
``full_pass_every`` to an hour and moves the clock by seconds: only the new watching can
find what it checks. Real files, real inotify; the last tests run a real clawsup.
"""

from __future__ import annotations

import os
import select
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.janitor import Janitor, SweepReport
from tests.test_idle import IDLE_MOST, WINDOW, loop_wakeups
from tests.test_janitor import Testbed, removed, write_lock
from tests.util import Clawsup, wait_until, write_config

MiB = 1 << 20
HOUR = 3600
LOCK_MAX_AGE = 30
SESSION = "5e551011-0000-4000-8000-000000000000.jsonl"
LOCK = SESSION + ".lock"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh ~/.clawdbot: not even the directory exists yet, only the user's home."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home" / ".clawdbot"


@pytest.fixture
def testbed(home: Path) -> Iterator[Testbed]:
    bed = Testbed(home)
    yield bed
    bed.close()


def janitor_of(testbed: Testbed) -> Janitor:
    janitor = testbed.janitor(full_pass_every=HOUR, lock_max_age=LOCK_MAX_AGE, max_session_size=MiB)
    assert janitor.sweep().full_pass  # the first one: nothing to sweep yet
    assert janitor.directories == []
    return janitor


def first_turn(testbed: Testbed, sessions: Path) -> tuple[Path, Path]:
    """What a gateway killed in its first turn leaves: its lock (dead pid, createdAt an
    hour ago) on a transcript over max_session_size."""
    transcript = sessions / SESSION
    with open(transcript, "wb") as handle:
        handle.write(b'{"type":"session"}\n')
        handle.truncate(2 * MiB)
    lock = write_lock(sessions, LOCK, testbed.dead_pid(), testbed.clock.now - HOUR)
    return lock, transcript


def woken(janitor: Janitor) -> bool:
    """Whether the janitor's descriptor is readable: the event loop would wake."""
    fd = janitor.fileno()
    assert fd is not None
    return bool(select.select([fd], [], [], 0)[0])


def next_sweep(testbed: Testbed, janitor: Janitor) -> SweepReport:
    testbed.clock.advance(5)
    report = janitor.sweep()
    assert not report.full_pass
    return report


def test_a_sessions_directory_made_with_mkdir_p_in_a_fresh_home_is_swept_at_the_next_sweep(
    testbed: Testbed,
) -> None:
    janitor = janitor_of(testbed)
    # Waiting for ~/.clawdbot on the user's home is a watch, not a poll.
    assert janitor.quiet_until() == pytest.approx(testbed.clock.now + HOUR)
    # The whole chain in one go: when the janitor looks, .clawdbot, agents, main and
    # sessions were all made before any of their watches existed; the walk lists each
    # level after watching it.
    testbed.sessions.mkdir(parents=True)
    lock, transcript = first_turn(testbed, testbed.sessions)
    assert woken(janitor)
    report = next_sweep(testbed, janitor)
    assert janitor.directories == [testbed.sessions]
    assert LOCK in removed(report)
    assert not lock.exists()
    assert [(archived.path, archived.size) for archived in report.archived] == [(transcript, 2 * MiB)]
    assert not transcript.exists()
    assert report.archived[0].archive.exists()


def test_each_level_of_the_chain_made_a_sweep_apart_is_followed_down(testbed: Testbed) -> None:
    janitor = janitor_of(testbed)
    full_pass_at = testbed.clock.now + HOUR
    chain = [testbed.home, testbed.home / "agents", testbed.home / "agents" / "main", testbed.sessions]
    for directory in chain:
        directory.mkdir()
        assert woken(janitor), directory
        next_sweep(testbed, janitor)
        # Nothing to sweep on the way down: the loop goes back to sleep.
        assert janitor.quiet_until() == pytest.approx(full_pass_at)
    assert janitor.directories == [testbed.sessions]
    lock, _ = first_turn(testbed, testbed.sessions)
    assert LOCK in removed(next_sweep(testbed, janitor))
    assert not lock.exists()


def test_a_second_agent_directory_made_later_is_swept_too(testbed: Testbed) -> None:
    janitor = janitor_of(testbed)
    testbed.sessions.mkdir(parents=True)
    next_sweep(testbed, janitor)
    work = testbed.home / "agents" / "work" / "sessions"
    work.mkdir(parents=True)
    lock, transcript = first_turn(testbed, work)
    assert woken(janitor)
    report = next_sweep(testbed, janitor)
    assert sorted(janitor.directories) == sorted([testbed.sessions, work])
    assert LOCK in removed(report)
    assert not lock.exists()
    assert [archived.path for archived in report.archived] == [transcript]


@pytest.mark.parametrize("content", [False, True], ids=["empty", "with-transcripts"])
def test_a_removed_sessions_directory_is_dropped_and_its_re_creation_swept(
    testbed: Testbed, content: bool
) -> None:
    testbed.sessions.mkdir(parents=True)
    if content:
        (testbed.sessions / "old.jsonl").write_text("{}\n")
    janitor = testbed.janitor(full_pass_every=HOUR, lock_max_age=LOCK_MAX_AGE, max_session_size=MiB)
    janitor.sweep()
    assert janitor.directories == [testbed.sessions]
    # Empty, there is no event on its own watch (our descriptor keeps the inode): the
    # kernel reports its deletion on the parent, which is watched.
    shutil.rmtree(testbed.sessions)
    assert woken(janitor)
    testbed.clock.advance(5)
    janitor.sweep()
    assert janitor.directories == []
    assert janitor.quiet_until() is not None  # waiting on agents/main, not polling
    testbed.sessions.mkdir()
    lock, transcript = first_turn(testbed, testbed.sessions)
    assert woken(janitor)
    report = next_sweep(testbed, janitor)
    assert janitor.directories == [testbed.sessions]
    assert LOCK in removed(report)
    assert not lock.exists()
    assert [archived.path for archived in report.archived] == [transcript]


def test_a_sessions_directory_moved_away_and_made_again_is_swept(testbed: Testbed) -> None:
    testbed.sessions.mkdir(parents=True)
    janitor = testbed.janitor(full_pass_every=HOUR, lock_max_age=LOCK_MAX_AGE, max_session_size=MiB)
    janitor.sweep()
    testbed.sessions.rename(testbed.sessions.with_name("sessions.bak"))
    testbed.sessions.mkdir()
    lock, _ = first_turn(testbed, testbed.sessions)
    testbed.clock.advance(5)
    report = janitor.sweep()
    assert janitor.directories == [testbed.sessions]
    assert LOCK in removed(report)
    assert not lock.exists()


def test_a_symlinked_agent_or_sessions_directory_made_later_is_never_followed(
    testbed: Testbed, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "sessions").mkdir(parents=True)
    lock, transcript = first_turn(testbed, outside / "sessions")
    before = (lock.read_bytes(), transcript.stat().st_size, transcript.stat().st_ino)
    janitor = janitor_of(testbed)
    agents = testbed.home / "agents"
    agents.mkdir(parents=True)
    (agents / "evil").symlink_to(outside)  # agents/evil/sessions: outside
    (agents / "main").mkdir()
    (agents / "main" / "sessions").symlink_to(outside / "sessions")
    for _ in range(3):
        next_sweep(testbed, janitor)
    testbed.clock.advance(HOUR)
    assert janitor.sweep().full_pass
    assert janitor.directories == []
    assert (lock.read_bytes(), transcript.stat().st_size, transcript.stat().st_ino) == before
    assert sorted(path.name for path in (outside / "sessions").iterdir()) == sorted([LOCK, SESSION])
    # Nor is anything outside watched through the links.
    janitor.on_readable()
    (outside / "newagent").mkdir()
    (outside / "sessions" / "new.jsonl").write_text("{}\n")
    assert not woken(janitor)


def test_changes_beside_the_watched_chain_do_not_make_work(testbed: Testbed) -> None:
    janitor = janitor_of(testbed)
    testbed.home.mkdir()
    next_sweep(testbed, janitor)
    quiet = janitor.quiet_until()
    assert quiet is not None
    # The gateway writes its config and makes agents/main/agent (auth profiles) beside
    # the chain: events, but none that can bring a session directory.
    (testbed.home / "clawdbot.json").write_text("{}\n")
    (testbed.home / "agents" / "main" / "agent").mkdir(parents=True)
    janitor.on_readable()
    next_sweep(testbed, janitor)
    (testbed.home / "agents" / "main" / "agent" / "auth.json").write_text("{}\n")
    (testbed.home / "agents" / "main" / "notes").mkdir()
    janitor.on_readable()
    assert janitor.quiet_until() == quiet
    (testbed.home / "clawdbot.json").write_text('{"a": 1}\n')  # a write: not even an event
    assert not woken(janitor)


def test_without_inotify_a_new_directory_is_found_by_the_next_sweep_too(testbed: Testbed) -> None:
    janitor = testbed.janitor(use_inotify=False, lock_max_age=LOCK_MAX_AGE)
    janitor.sweep()
    testbed.sessions.mkdir(parents=True)
    lock, _ = first_turn(testbed, testbed.sessions)
    testbed.clock.advance(5)
    assert LOCK in removed(janitor.sweep())
    assert not lock.exists()


# -- a real clawsup ----------------------------------------------------------------------


@pytest.fixture
def clawsup(tmp_path: Path) -> Iterator[Clawsup]:
    (tmp_path / "home").mkdir()  # no agents/: a fresh gateway home
    config = write_config(tmp_path, """
[programs.gw]
command = ["sleep", "1000"]
main = true
start_seconds = "0s"
hang = { enabled = false }
""")
    config.write_text(config.read_text().replace(
        "[janitor]\n",
        '[janitor]\ninterval = "100ms"\nfull_pass_every = "1h"\nlock_max_age = "30s"\n'
        'max_session_size = "1MB"\n', 1))
    running = Clawsup(config, tmp_path / "clawsup.log")
    running.wait_log("gw: STARTING -> RUNNING")
    yield running
    running.stop()


def test_clawsup_sweeps_a_sessions_directory_the_gateway_makes_at_its_first_turn(
    clawsup: Clawsup, tmp_path: Path
) -> None:
    # Waiting for agents/ costs the idle loop nothing.
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST
    sessions = tmp_path / "home" / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True)
    transcript = sessions / SESSION
    with open(transcript, "wb") as handle:
        handle.truncate(2 * MiB)
    dead = Testbed(tmp_path / "home").dead_pid()
    lock = write_lock(sessions, LOCK, dead, time.time() - HOUR)
    wait_until(lambda: not lock.exists(), 5, what="the stale lock removed")
    wait_until(lambda: not transcript.exists(), 5, what="the oversized transcript archived")
    assert [path.name.startswith(SESSION + ".") for path in sessions.iterdir()] == [True]
    # A second agent, later.
    work = tmp_path / "home" / "agents" / "work" / "sessions"
    work.mkdir(parents=True)
    lock = write_lock(work, LOCK, dead, time.time() - HOUR)
    wait_until(lambda: not lock.exists(), 5, what="the second agent's stale lock removed")
    # All swept: back to sleep.
    time.sleep(0.5)
    assert loop_wakeups(clawsup.supervisor_pid, WINDOW) <= IDLE_MOST
    assert os.path.isdir(sessions)
