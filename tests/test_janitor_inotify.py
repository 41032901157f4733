"""Steady-state cost: inotify says what changed, the sweep looks at nothing else
(issue 4, item 6). Verified with the janitor's work counters, not with timings."""

from __future__ import annotations

import dataclasses
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.janitor import Janitor, JanitorStats
from tests.test_janitor import Testbed, removed, write_lock

SESSIONS = 300
LOCKS = 3


@pytest.fixture
def testbed(clawdbot_home: Path) -> Iterator[Testbed]:
    bed = Testbed(clawdbot_home)
    for path in bed.sessions.iterdir():  # start from a known population
        path.unlink()
    for n in range(SESSIONS):
        (bed.sessions / f"{n:08x}-0000-4000-8000-000000000000.jsonl").write_text('{"type":"session"}\n')
    for n in range(LOCKS):
        # Held by a live owner that started before them: this test process.
        write_lock(bed.sessions, f"{n:08x}-0000-4000-8000-000000000000.jsonl.lock", os.getpid(), time.time())
    yield bed
    bed.close()


def work(janitor: Janitor, before: JanitorStats) -> dict[str, int]:
    """What the janitor did since ``before``, counter by counter."""
    after = janitor.stats
    return {
        name: getattr(after, name) - getattr(before, name)
        for name in ("entries_scanned", "stat_calls", "lock_reads", "owner_probes", "full_passes")
    }


def session(testbed: Testbed, n: int) -> Path:
    return testbed.sessions / f"{n:08x}-0000-4000-8000-000000000000.jsonl"


def test_a_quick_sweep_examines_only_the_files_inotify_reported(testbed: Testbed) -> None:
    janitor = testbed.janitor(full_pass_every=60)
    first = janitor.stats
    assert janitor.sweep().full_pass
    assert work(janitor, first)["stat_calls"] == SESSIONS + LOCKS
    assert work(janitor, first)["entries_scanned"] == SESSIONS + LOCKS

    quiet = janitor.stats
    testbed.clock.advance(5)
    assert not janitor.sweep().full_pass
    # Nothing changed: no listing, no stat; the locks re-judged from the index, their one
    # owner probed once.
    assert work(janitor, quiet) == {
        "entries_scanned": 0,
        "stat_calls": 0,
        "lock_reads": 0,
        "owner_probes": 1,
        "full_passes": 0,
    }

    appended = janitor.stats
    with open(session(testbed, 7), "a") as handle:
        handle.write('{"type":"message"}\n')
    janitor.on_readable()
    testbed.clock.advance(5)
    janitor.sweep()
    assert work(janitor, appended)["stat_calls"] == 1
    assert work(janitor, appended)["entries_scanned"] == 0

    relocked = janitor.stats
    write_lock(testbed.sessions, "00000001-0000-4000-8000-000000000000.jsonl.lock", os.getpid(), time.time())
    (testbed.sessions / "notes.txt").write_text("not a session: never stat'ed\n")
    (testbed.sessions / "ffffffff-0000-4000-8000-000000000000.jsonl").write_text("{}\n")
    janitor.on_readable()
    testbed.clock.advance(5)
    janitor.sweep()
    assert work(janitor, relocked)["stat_calls"] == 2  # the rewritten lock, the new session
    assert work(janitor, relocked)["lock_reads"] == 1


def test_the_periodic_full_pass_lists_everything_but_stats_only_what_may_have_changed(
    testbed: Testbed,
) -> None:
    janitor = testbed.janitor(full_pass_every=60)
    janitor.sweep()
    with open(session(testbed, 9), "a") as handle:
        handle.write('{"type":"message"}\n')
    janitor.on_readable()
    testbed.clock.advance(61)
    before = janitor.stats
    assert janitor.sweep().full_pass
    done = work(janitor, before)
    assert done["entries_scanned"] == SESSIONS + LOCKS
    # Unchanged inodes that inotify did not report keep their indexed size; locks are
    # always re-read from disk (few), and the one session that was written to.
    assert done["stat_calls"] == LOCKS + 1


def test_without_inotify_every_sweep_is_a_cold_full_pass(testbed: Testbed) -> None:
    janitor = testbed.janitor(use_inotify=False)
    assert janitor.fileno() is None
    for _ in range(3):
        before = janitor.stats
        testbed.clock.advance(5)
        assert janitor.sweep().full_pass
        assert work(janitor, before)["stat_calls"] == SESSIONS + LOCKS


def test_an_inotify_queue_overflow_forces_a_cold_rescan(testbed: Testbed) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow in a test")
    janitor = testbed.janitor(full_pass_every=3600, max_session_size=1 << 20)
    janitor.sweep()
    a, b = session(testbed, 1), session(testbed, 2)
    for n in range(limit // 2 + 100):  # alternating: the kernel cannot merge them
        os.utime(a, (n, n))
        os.utime(b, (n, n))
    with open(session(testbed, 3), "wb") as handle:  # lost in the overflow
        handle.truncate(2 << 20)
    janitor.on_readable()
    assert janitor.stats.overflows == 1
    before = janitor.stats
    testbed.clock.advance(5)
    report = janitor.sweep()
    assert report.full_pass
    assert work(janitor, before)["stat_calls"] >= SESSIONS + LOCKS  # cold: trusts nothing
    assert [archived.path for archived in report.archived] == [session(testbed, 3)]


def test_fileno_turns_readable_on_a_change_and_on_readable_drains_it(testbed: Testbed) -> None:
    janitor = testbed.janitor()
    janitor.sweep()
    fd = janitor.fileno()
    assert fd is not None
    assert select.select([fd], [], [], 0) == ([], [], [])
    with open(session(testbed, 4), "a") as handle:
        handle.write("{}\n")
    assert select.select([fd], [], [], 5)[0] == [fd]
    janitor.on_readable()
    assert select.select([fd], [], [], 0) == ([], [], [])
    assert janitor.stats.inotify_events >= 1


def test_a_new_agent_directory_is_found_at_the_next_sweep_not_the_next_full_pass(testbed: Testbed) -> None:
    # The new directory's creation is an inotify event on agents/ (tests/test_janitor_newdirs.py
    # has the rest: mkdir -p of the whole chain, removal, symlinks, a real clawsup).
    janitor = testbed.janitor(full_pass_every=3600, lock_max_age=300)
    janitor.sweep()
    fresh = testbed.home / "agents" / "work" / "sessions"
    fresh.mkdir(parents=True)
    lock = write_lock(fresh, "work0001.jsonl.lock", testbed.dead_pid(), testbed.clock.now - 3600)
    testbed.clock.advance(5)
    report = janitor.sweep()
    assert not report.full_pass
    assert "work0001.jsonl.lock" in removed(report)
    assert not lock.exists()
    assert fresh in janitor.directories


def test_stats_are_a_snapshot(testbed: Testbed) -> None:
    janitor = testbed.janitor()
    snapshot = janitor.stats
    janitor.sweep()
    assert snapshot == JanitorStats()
    assert dataclasses.asdict(janitor.stats)["full_passes"] == 1
