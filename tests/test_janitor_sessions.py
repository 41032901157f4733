"""Oversized transcripts archived, old archives purged (issue 4, item 4)."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.janitor import archive_name
from clawsup.supervisor.kinds import as_data
from tests.test_janitor import Testbed, janitor_messages, removed, write_lock

MiB = 1 << 20
BIG = "b16b16b1-0000-4000-8000-000000000001.jsonl"


@pytest.fixture
def testbed(clawdbot_home: Path) -> Iterator[Testbed]:
    bed = Testbed(clawdbot_home)
    yield bed
    bed.close()


def sparse(path: Path, size: int) -> Path:
    """A transcript of ``size`` bytes that costs no disk: the janitor only reads sizes."""
    with open(path, "wb") as handle:
        handle.write(b'{"type":"session","version":3}\n')
        handle.truncate(size)
    return path


def archives_of(directory: Path, session: str) -> list[Path]:
    return sorted(directory.glob(f"{session}.*.old"))


def test_oversized_session_archived_in_place_with_the_watchdogs_log_line(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    session = sparse(testbed.sessions / BIG, 12 * MiB)
    inode = session.stat().st_ino
    report = testbed.janitor(max_session_size=10 * MiB).sweep()
    (archived,) = report.archived
    assert not session.exists()
    assert archived.path == session
    assert archived.archive == testbed.sessions / archive_name(BIG, testbed.clock.now)
    assert re.fullmatch(re.escape(BIG) + r"\.\d{8}T\d{6}Z\.old", archived.archive.name)
    assert archived.archive.stat().st_ino == inode  # renamed, not copied
    assert archived.archive.stat().st_size == 12 * MiB
    assert f"Archiving large session: {session} (12MB)" in janitor_messages(caplog)
    assert as_data(archived.payload()) == {
        "path": str(session),
        "archive": str(archived.archive),
        "size": 12 * MiB,
        "session_id": BIG.removesuffix(".jsonl"),
    }


def test_sizes_are_binary_and_the_limit_is_strict(testbed: Testbed) -> None:
    at_limit = sparse(testbed.sessions / "a0000000.jsonl", 10 * MiB)
    just_over = sparse(testbed.sessions / "a0000001.jsonl", 10 * MiB + 1)
    (archived,) = testbed.janitor(max_session_size=10 * MiB).sweep().archived
    assert archived.path == just_over
    assert archived.message.endswith("(11MB)")  # rounded up, as find -size counts
    assert at_limit.exists()


def test_archive_never_overwrites_an_earlier_archive(testbed: Testbed) -> None:
    earlier = testbed.sessions / archive_name(BIG, testbed.clock.now)
    earlier.write_text("earlier archive\n")
    second = testbed.sessions / archive_name(BIG, testbed.clock.now, 1)
    second.write_text("second archive\n")
    sparse(testbed.sessions / BIG, 11 * MiB)
    janitor = testbed.janitor(max_session_size=10 * MiB)
    (archived,) = janitor.sweep().archived
    assert archived.archive == testbed.sessions / archive_name(BIG, testbed.clock.now, 2)
    assert earlier.read_text() == "earlier archive\n"
    assert second.read_text() == "second archive\n"
    # Same second, same session, once more: yet another name.
    sparse(testbed.sessions / BIG, 11 * MiB)
    janitor.on_readable()
    (again,) = janitor.sweep().archived
    assert again.archive == testbed.sessions / archive_name(BIG, testbed.clock.now, 3)
    assert len(archives_of(testbed.sessions, BIG)) == 4


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_held_session_archived_on_the_sweep_after_its_lock_goes(testbed: Testbed, use_inotify: bool) -> None:
    session = sparse(testbed.sessions / BIG, 12 * MiB)
    # Held by a live owner that started before the lock: this test process.
    lock = write_lock(testbed.sessions, BIG + ".lock", os.getpid(), time.time())
    janitor = testbed.janitor(use_inotify=use_inotify, max_session_size=10 * MiB)
    for _ in range(3):
        testbed.clock.advance(5)
        assert janitor.sweep().archived == ()
    assert session.exists()
    lock.unlink()  # the run ended
    janitor.on_readable()
    testbed.clock.advance(5)
    (archived,) = janitor.sweep().archived
    assert archived.path == session
    assert not session.exists()


def test_program_exited_archives_the_oversized_session_its_child_held(testbed: Testbed) -> None:
    gateway = testbed.spawn()
    session = sparse(testbed.sessions / BIG, 12 * MiB)
    lock = write_lock(testbed.sessions, BIG + ".lock", gateway.pid, time.time())
    janitor = testbed.janitor(max_session_size=10 * MiB)
    assert janitor.sweep({gateway.pid: "gateway"}).archived == ()
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait()
    report = janitor.program_exited("gateway", [gateway.pid])
    assert BIG + ".lock" in removed(report)
    assert [a.path for a in report.archived] == [session]
    assert not lock.exists()
    assert not session.exists()


def test_a_session_that_shrank_below_the_limit_is_not_archived(testbed: Testbed) -> None:
    session = sparse(testbed.sessions / BIG, 12 * MiB)
    lock = write_lock(testbed.sessions, BIG + ".lock", os.getpid(), time.time())
    janitor = testbed.janitor(max_session_size=10 * MiB)
    janitor.sweep()
    os.truncate(session, 1000)  # compacted by the gateway while held
    lock.unlink()
    janitor.on_readable()
    assert janitor.sweep().archived == ()
    assert session.stat().st_size == 1000


# -- retention ---------------------------------------------------------------------------


def test_archives_purged_by_archive_time_not_by_mtime(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    day = 86400.0
    session = sparse(testbed.sessions / BIG, 12 * MiB)
    ancient = time.time() - 90 * day  # the transcript's last write, long ago
    os.utime(session, (ancient, ancient))
    janitor = testbed.janitor(max_session_size=10 * MiB, archive_retention=7 * day)
    archived_at = testbed.clock.now
    (archived,) = janitor.sweep().archived
    assert archived.archive.stat().st_mtime == pytest.approx(ancient)  # mtime kept
    testbed.clock.now = archived_at + 6 * day
    assert janitor.sweep().purged == ()
    assert archived.archive.exists()
    testbed.clock.now = archived_at + 7 * day + 60
    (purged,) = janitor.sweep().purged
    assert purged.path == archived.archive
    assert purged.archived_at == int(archived_at)  # the name keeps whole seconds
    assert not archived.archive.exists()
    assert f"Purging old session archive: {archived.archive} (archived 7d1m ago)" in (
        janitor_messages(caplog)
    )


def test_an_archive_named_long_ago_is_purged_even_if_written_recently(testbed: Testbed) -> None:
    day = 86400.0
    stale = testbed.sessions / archive_name("feed0001.jsonl", testbed.clock.now - 8 * day)
    stale.write_text("archived eight days ago, touched today\n")
    fresh = testbed.sessions / archive_name("feed0002.jsonl", testbed.clock.now - 1 * day)
    fresh.write_text("archived yesterday\n")
    legacy = testbed.sessions / "feed0003.jsonl.old"  # the old watchdog's name
    legacy.write_text("renamed just now: its ctime says so\n")
    old_mtime = time.time() - 30 * day
    os.utime(legacy, (old_mtime, old_mtime))
    purged = testbed.janitor(archive_retention=7 * day).sweep().purged
    assert [p.path for p in purged] == [stale]
    assert fresh.exists()
    assert legacy.exists()


# -- no line lost to a concurrent writer --------------------------------------------------

_WRITERS = textwrap.dedent("""
    import os, sys, threading
    path, lines = sys.argv[1], int(sys.argv[2])
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT

    def reopening():  # as fs.appendFile: open, write one line, close
        for i in range(lines):
            fd = os.open(path, flags, 0o600)
            os.write(fd, b'{"type":"message","writer":"reopen","n":%d}\\n' % i)
            os.close(fd)

    def holding():  # one descriptor kept across the rename: writes land in the archive
        fd = os.open(path, flags, 0o600)
        for i in range(lines):
            os.write(fd, b'{"type":"message","writer":"hold","n":%d}\\n' % i)
        os.close(fd)

    threads = [threading.Thread(target=reopening), threading.Thread(target=holding)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
""")


def test_a_concurrent_appender_loses_no_line_while_the_session_is_archived(
    testbed: Testbed,
) -> None:
    lines = 30000
    session = testbed.sessions / BIG
    session.write_bytes(b'{"type":"session","version":3}\n' + b"x" * 5000 + b"\n")
    janitor = testbed.janitor(max_session_size=4096)
    writer = testbed.spawn([sys.executable, "-c", _WRITERS, str(session), str(lines)])
    archived = 0
    while writer.poll() is None:  # the sweeps are the work we wait on, not a sleep
        janitor.on_readable()
        testbed.clock.advance(1)  # a new second: a new archive name each time
        archived += len(janitor.sweep().archived)
    assert writer.returncode == 0
    assert archived >= 2, "the writers finished before the janitor could archive twice"
    seen: dict[str, list[int]] = {"reopen": [], "hold": []}
    for path in [*archives_of(testbed.sessions, BIG), session]:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            match = re.fullmatch(rb'\{"type":"message","writer":"(\w+)","n":(\d+)\}', line)
            if match is not None:
                seen[match[1].decode()].append(int(match[2]))
    assert sorted(seen["reopen"]) == list(range(lines))
    assert sorted(seen["hold"]) == list(range(lines))
