"""What the janitor must never touch, and what it must survive (issue 4, item 5)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.janitor import Janitor, archive_name, lstat_transcripts
from tests.test_janitor import Testbed, janitor_messages, removed, write_lock

MiB = 1 << 20
DAY = 86400.0


@pytest.fixture
def testbed(clawdbot_home: Path) -> Iterator[Testbed]:
    bed = Testbed(clawdbot_home)
    yield bed
    bed.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the configured session directories."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def fingerprint(path: Path) -> tuple[int, int, int, bytes]:
    info = path.stat()
    with open(path, "rb") as handle:
        head = handle.read(64)
    return info.st_ino, info.st_size, info.st_mtime_ns, head


def sweep_a_lot(testbed: Testbed, max_session_size: int = 10 << 20) -> None:
    """Sweeps long after everything went stale: quick ones, then a full pass."""
    janitor = testbed.janitor(max_session_size=max_session_size)
    janitor.sweep()
    testbed.clock.advance(30 * DAY)
    janitor.on_readable()
    janitor.sweep()
    testbed.clock.advance(3600)  # past full_pass_every
    assert janitor.sweep().full_pass


def test_symlinked_session_to_a_big_file_outside_is_left_alone(testbed: Testbed, outside: Path) -> None:
    target = outside / "huge.jsonl"
    with open(target, "wb") as handle:
        handle.truncate(50 * MiB)
    before = fingerprint(target)
    link = testbed.sessions / "link0001.jsonl"
    link.symlink_to(target)
    sweep_a_lot(testbed, max_session_size=10 * MiB)
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert fingerprint(target) == before
    assert list(outside.iterdir()) == [target]
    assert list(testbed.sessions.glob("link0001.jsonl.*")) == []


def test_symlinked_lock_is_left_alone(testbed: Testbed, outside: Path) -> None:
    target = write_lock(outside, "victim.jsonl.lock", testbed.dead_pid(), time.time() - 10 * DAY)
    os.utime(target, (time.time() - 10 * DAY,) * 2)
    before = fingerprint(target)
    link = testbed.sessions / "link0002.jsonl.lock"
    link.symlink_to(target)
    sweep_a_lot(testbed)
    assert link.is_symlink()
    assert fingerprint(target) == before


@pytest.mark.timeout(30)
def test_fifos_named_like_locks_sessions_and_archives_are_left_alone(testbed: Testbed) -> None:
    names = ["fifo0001.jsonl.lock", "fifo0002.jsonl", archive_name("fifo0003.jsonl", 0.0)]
    for name in names:
        os.mkfifo(testbed.sessions / name)
    sweep_a_lot(testbed)  # and no hang: nothing opens a FIFO
    for name in names:
        assert (testbed.sessions / name).is_fifo()


def test_directories_named_like_locks_sessions_and_archives_are_left_alone(testbed: Testbed) -> None:
    names = ["dir00001.jsonl.lock", "dir00002.jsonl", archive_name("dir00003.jsonl", 0.0)]
    for name in names:
        (testbed.sessions / name).mkdir()
        (testbed.sessions / name / "inside").write_text("keep\n")
    sweep_a_lot(testbed)
    for name in names:
        assert (testbed.sessions / name / "inside").read_text() == "keep\n"


def test_a_symlink_named_like_an_expired_archive_is_never_purged(testbed: Testbed, outside: Path) -> None:
    target = outside / "keep.jsonl.old"
    target.write_text("not ours\n")
    link = testbed.sessions / archive_name("link0003.jsonl", time.time() - 30 * DAY)
    link.symlink_to(target)
    sweep_a_lot(testbed)
    assert link.is_symlink()
    assert target.read_text() == "not ours\n"


def test_what_changed_between_listing_and_lstat_is_judged_by_the_lstat(
    testbed: Testbed, outside: Path
) -> None:
    """A cold pass lists the names first and lstats them after: a transcript deleted, or
    replaced by a symlink, FIFO or directory, in between is simply not indexed."""
    big = outside / "big.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(20 * MiB)
    names = [f"race{n:04d}.jsonl" for n in range(7)]
    for name in names:
        (testbed.sessions / name).write_text('{"type":"session"}\n')
    with open(testbed.sessions / names[6], "r+b") as handle:
        handle.truncate(11 * MiB)
    fd = os.open(testbed.sessions, os.O_RDONLY | os.O_DIRECTORY)
    try:
        listed = [name for name in os.listdir(fd) if name.startswith("race")]
        for name in names[:4]:
            (testbed.sessions / name).unlink()
        (testbed.sessions / names[1]).symlink_to(big)
        os.mkfifo(testbed.sessions / names[2])
        (testbed.sessions / names[3]).mkdir()
        sessions, oversized = lstat_transcripts(fd, listed, 10 * MiB)
    finally:
        os.close(fd)
    assert sessions == set(names[4:])
    assert oversized == {names[6]}


def test_a_session_directory_symlinked_outside_is_skipped_and_logged_once(
    testbed: Testbed, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    elsewhere = outside / "sessions"
    elsewhere.mkdir()
    lock = write_lock(elsewhere, "away0001.jsonl.lock", testbed.dead_pid(), time.time() - 10 * DAY)
    big = elsewhere / "away0002.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(20 * MiB)
    (testbed.home / "agents" / "evil").mkdir()
    (testbed.home / "agents" / "evil" / "sessions").symlink_to(elsewhere)
    (testbed.home / "agents" / "evil2").symlink_to(outside)  # a symlinked agent, same thing
    janitor = testbed.janitor(max_session_size=10 * MiB, full_pass_every=60)
    for _ in range(3):
        testbed.clock.advance(61 * DAY)
        assert janitor.sweep().full_pass
    assert lock.exists()
    assert big.exists()
    assert janitor.directories == [testbed.sessions]
    skipped = [m for m in janitor_messages(caplog) if m.startswith("Skipping session directory")]
    assert sorted(skipped) == [
        f"Skipping session directory {testbed.home}/agents/evil/sessions: it resolves to "
        f"{elsewhere}, outside {testbed.home}/agents",
        f"Skipping session directory {testbed.home}/agents/evil2/sessions: it resolves to "
        f"{elsewhere}, outside {testbed.home}/agents",
    ]


def test_a_symlinked_agent_inside_the_root_is_swept_once(testbed: Testbed) -> None:
    (testbed.home / "agents" / "alias").symlink_to(testbed.home / "agents" / "main")
    lock = write_lock(testbed.sessions, "once0001.jsonl.lock", testbed.dead_pid(), testbed.clock.now)
    janitor = testbed.janitor()
    janitor.sweep()
    assert len(janitor.directories) == 1
    testbed.clock.advance(301)
    report = janitor.sweep()
    assert [orphan.path.name for orphan in report.removed_locks].count("once0001.jsonl.lock") == 1
    assert not lock.exists()


def test_a_vanished_session_directory_is_logged_once_and_the_rest_still_swept(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    doomed = testbed.home / "agents" / "temp" / "sessions"
    doomed.mkdir(parents=True)
    write_lock(doomed, "gone0001.jsonl.lock", testbed.dead_pid(), testbed.clock.now)
    janitor = testbed.janitor(full_pass_every=60)
    janitor.sweep()
    assert doomed in janitor.directories
    shutil.rmtree(testbed.home / "agents" / "temp")
    janitor.on_readable()
    first = janitor.sweep()  # inotify said the directory went: a full pass at once
    assert first.full_pass
    assert first.errors == (f"Session directory vanished: {doomed}",)
    for _ in range(3):
        testbed.clock.advance(61)
        assert janitor.sweep().errors == ()
    lock = write_lock(testbed.sessions, "stay0001.jsonl.lock", testbed.dead_pid(), testbed.clock.now)
    testbed.clock.advance(301)
    janitor.on_readable()
    assert "stay0001.jsonl.lock" in removed(janitor.sweep())
    assert not lock.exists()
    vanished = [m for m in janitor_messages(caplog) if m.startswith("Session directory vanished")]
    assert vanished == [f"Session directory vanished: {doomed}"]


def test_a_session_directory_replaced_by_a_file_is_logged_once(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    odd = testbed.home / "agents" / "odd"
    odd.mkdir()
    (odd / "sessions").write_text("not a directory\n")
    janitor = testbed.janitor(full_pass_every=60)
    errors: list[str] = []
    for _ in range(4):
        errors.extend(janitor.sweep().errors)
        testbed.clock.advance(61)
    expected = f"Cannot open session directory {odd}/sessions: Not a directory"
    assert errors == [expected]
    assert janitor_messages(caplog).count(expected) == 1
    assert janitor.directories == [testbed.sessions]


def test_a_missing_literal_session_directory_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    missing = tmp_path / "nowhere" / "sessions"
    now = [time.time()]
    with Janitor(JanitorConfig(sessions=[str(missing)]), lambda: now[0]) as janitor:
        errors: list[str] = []
        for _ in range(3):
            errors.extend(janitor.sweep().errors)
            now[0] += 3600
        assert errors == [f"Session directory missing: {missing}"]
        missing.mkdir(parents=True)
        janitor.sweep()
        assert janitor.directories == [missing]


# -- permissions: a real unprivileged process --------------------------------------------


def _sweeps_as_nobody(
    pattern: str, now: float, sweeps: int, between: Callable[[int], None] | None = None
) -> list[dict[str, list[Any]]]:
    """Sweep in a forked child that dropped to nobody (root reads everything), reporting
    what each sweep removed, archived and logged as errors. ``between(n)`` runs in the
    child, as nobody, after sweep ``n`` (from 1)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
            clock = [now]
            results = []
            with Janitor(JanitorConfig(sessions=[pattern]), lambda: clock[0]) as janitor:
                for _ in range(sweeps):
                    report = janitor.sweep({})
                    results.append(
                        {
                            "removed": [[lock.path.name, lock.reason.value] for lock in report.removed_locks],
                            "archived": [archived.path.name for archived in report.archived],
                            "errors": list(report.errors),
                        }
                    )
                    if between is not None:
                        between(len(results))
                    clock[0] += 3600
            os.write(writer, json.dumps(results).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(output)  # type: ignore[no-any-return]


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """A temp dir nobody can reach (pytest's own tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="clawsup-janitor-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _sessions_nobody_reaches(base: Path, agent: str) -> Path:
    """``base/agents/<agent>/sessions``, every directory above it open to nobody."""
    sessions = base / "agents" / agent / "sessions"
    sessions.mkdir(parents=True)
    for path in (base, base / "agents", base / "agents" / agent):
        path.chmod(0o755)
    return sessions


def test_unreadable_lock_judged_by_age_and_unreadable_directory_logged_once(
    world_readable_tmp: Path,
) -> None:
    base = world_readable_tmp / "home"
    readable = _sessions_nobody_reaches(base, "a")
    sealed = _sessions_nobody_reaches(base, "b")
    lock = readable / "priv0001.jsonl.lock"
    lock.write_text(json.dumps({"pid": 1, "createdAt": "2001-01-01T00:00:00Z"}))
    lock.chmod(0o600 if os.geteuid() == 0 else 0o000)  # root's, or nobody's to read
    old = time.time() - 3600
    os.utime(lock, (old, old))
    if os.geteuid() == 0:
        os.chown(readable, 65534, 65534)  # nobody may unlink in it, but not read the lock
    sealed.chmod(0o000)
    try:
        sweeps = _sweeps_as_nobody(str(base / "agents" / "*" / "sessions"), time.time(), 3)
    finally:
        sealed.chmod(0o755)
    # Content unreadable, file an hour old (> lock_max_age): removed on age alone.
    assert sweeps[0]["removed"] == [["priv0001.jsonl.lock", "unreadable"]]
    assert not lock.exists()
    denied = f"Cannot open session directory {sealed}: Permission denied"
    assert [sweep["errors"] for sweep in sweeps] == [[denied], [], []]


def test_a_watched_directory_that_loses_its_search_permission_is_logged_once_not_a_crash(
    world_readable_tmp: Path,
) -> None:
    base = world_readable_tmp / "home"
    sessions = _sessions_nobody_reaches(base, "a")
    if os.geteuid() == 0:
        os.chown(sessions, 65534, 65534)  # nobody's own, so nobody can chmod it
    big = sessions / "big00001.jsonl"

    def between(done: int) -> None:
        if done == 1:  # watched and indexed: now a new, oversized transcript...
            with open(big, "wb") as handle:
                handle.truncate(11 * MiB)
            sessions.chmod(0o444)  # ...in a directory that can be listed, not searched
        elif done == 3:
            sessions.chmod(0o755)

    sweeps = _sweeps_as_nobody(str(base / "agents" / "*" / "sessions"), time.time(), 4, between)
    denied = f"Cannot read session directory {sessions}: Permission denied"
    assert [sweep["errors"] for sweep in sweeps] == [[], [denied], [], []]
    # Searchable again: rescanned cold, and the transcript it could not stat is archived.
    assert [sweep["archived"] for sweep in sweeps] == [[], [], [], ["big00001.jsonl"]]


def test_a_directory_renamed_within_the_pattern_is_followed_under_its_new_name(
    testbed: Testbed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawsup.janitor")
    before = testbed.home / "agents" / "ops" / "sessions"
    before.mkdir(parents=True)
    janitor = testbed.janitor(full_pass_every=60, lock_max_age=300)
    janitor.sweep()
    (testbed.home / "agents" / "ops").rename(testbed.home / "agents" / "ops2")
    after = testbed.home / "agents" / "ops2" / "sessions"
    lock = write_lock(after, "move0001.jsonl.lock", testbed.dead_pid(), testbed.clock.now - 3600)
    janitor.on_readable()
    testbed.clock.advance(61)
    report = janitor.sweep()
    assert report.errors == ()  # the same directory: nothing vanished
    assert removed(report)["move0001.jsonl.lock"].path == lock
    assert after in janitor.directories
    assert before not in janitor.directories
