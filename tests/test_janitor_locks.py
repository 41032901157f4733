"""The janitor's pure decisions (lock verdicts, stuck reports, archive names) with a fake
clock, and the two small system helpers they rest on (owner probe, no-replace rename)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from clawsup.supervisor import procinfo
from clawsup.supervisor.janitor import archive_name, archived_at_from_name, rename_noreplace
from clawsup.supervisor.locks import (
    INDEX_LOCK_STALE_AFTER,
    START_TIME_SLACK,
    LockContent,
    LockKind,
    OrphanReason,
    OwnerProcess,
    classify_lock,
    lock_kind,
    parse_lock,
    parse_timestamp,
    probe_owner,
    stuck_report_due,
)
from tests.util import wait_until

CREATED = 1_800_000_000.0  # a lock's createdAt in these tests
MAX_AGE = 300.0


def owner(create_time: float, starttime: int = 1234) -> OwnerProcess:
    return OwnerProcess(pid=37, ppid=1, starttime=starttime, create_time=create_time)


def verdict(
    content: LockContent,
    live: OwnerProcess | None,
    now: float,
    exited: frozenset[int] = frozenset(),
    kind: LockKind = LockKind.TRANSCRIPT,
    mtime: float = CREATED,
) -> tuple[OrphanReason | None, float]:
    result = classify_lock(content, mtime, live, now=now, exited_pids=exited, lock_max_age=MAX_AGE, kind=kind)
    return result.orphan, result.age


LOCK_37 = LockContent(pid=37, created_at=CREATED)


# -- parsing -----------------------------------------------------------------------------


def test_parse_lock_reads_the_gateway_format() -> None:
    raw = json.dumps({"pid": 37, "createdAt": "2026-11-27T21:40:00.020Z"}, indent=2).encode()
    content = parse_lock(raw)
    assert content.pid == 37
    assert content.created_at == pytest.approx(parse_timestamp("2026-11-27T21:40:00.020+00:00") or 0.0)
    assert content.starttime is None


def test_parse_lock_reads_starttime_and_the_index_lock_started_at() -> None:
    content = parse_lock(b'{"pid": 5, "createdAt": "2026-01-01T00:00:00Z", "starttime": 991}')
    assert (content.pid, content.starttime) == (5, 991)
    index = parse_lock(b'{"pid": 6, "startedAt": 1764297600000}')
    assert index.pid == 6
    assert index.created_at == 1764297600.0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json at all",
        b"\x00\xff\xfe\x80binary",
        b'{"pid": "x"}',
        b'{"pid": true}',
        b'{"pid": -4}',
        b'{"pid": 0}',
        b'{"pid": 3.5}',
        b"[37]",
        b"37",
        b'{"pid": 37' + b" " * 5000 + b"}",  # far bigger than any real lock
    ],
)
def test_garbage_lock_content_names_no_pid(raw: bytes) -> None:
    assert parse_lock(raw).pid is None


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("1970-01-01T00:01:00Z") == 60.0
    assert parse_timestamp("1970-01-01T01:01:00+01:00") == 60.0
    assert parse_timestamp("1970-01-01T00:01:00") == 60.0  # naive: UTC, as toISOString
    assert parse_timestamp(1764297600000) == 1764297600.0  # Date.now() milliseconds
    assert parse_timestamp(1764297600) == 1764297600.0  # seconds
    bad_values: list[object] = ["yesterday", "", None, True, -5, [], float("nan")]
    for bad in bad_values:
        assert parse_timestamp(bad) is None


def test_lock_kind_by_name() -> None:
    assert lock_kind("c0ffee00.jsonl.lock") is LockKind.TRANSCRIPT
    assert lock_kind("sessions.json.lock") is LockKind.INDEX
    for other in (".jsonl.lock", "test.lock", "c0ffee00.jsonl", "gateway.lock"):
        assert lock_kind(other) is None


# -- verdicts ----------------------------------------------------------------------------


def test_dead_owner_lock_kept_until_lock_max_age_then_orphaned() -> None:
    assert verdict(LOCK_37, None, now=CREATED + MAX_AGE) == (None, MAX_AGE)
    assert verdict(LOCK_37, None, now=CREATED + MAX_AGE + 20) == (OrphanReason.DEAD, MAX_AGE + 20)


def test_exited_program_lock_orphaned_at_once() -> None:
    assert verdict(LOCK_37, None, now=CREATED + 1, exited=frozenset({37}))[0] is OrphanReason.EXITED


def test_exited_pid_now_reused_by_a_newer_process_still_counts_as_exited() -> None:
    reused = owner(create_time=CREATED + 50)
    orphan, _ = verdict(LOCK_37, reused, now=CREATED + 60, exited=frozenset({37}))
    assert orphan is OrphanReason.EXITED


def test_exited_pid_reused_by_a_process_that_made_the_lock_is_kept() -> None:
    # Our child exited; its pid went to a new process, which then took this lock itself.
    assert verdict(LOCK_37, owner(CREATED - 5), now=CREATED + 5, exited=frozenset({37}))[0] is None


def test_owner_born_after_the_lock_is_a_reused_pid() -> None:
    assert verdict(LOCK_37, owner(CREATED + 3600), now=CREATED + 3601)[0] is OrphanReason.REUSED


def test_owner_born_before_the_lock_holds_it_whatever_its_age() -> None:
    assert verdict(LOCK_37, owner(CREATED - 10), now=CREATED + 100 * MAX_AGE)[0] is None


def test_start_time_slack_tolerates_an_honest_owner_a_little_younger() -> None:
    just_inside = owner(CREATED + START_TIME_SLACK - 0.05)
    just_outside = owner(CREATED + START_TIME_SLACK + 0.05)
    assert verdict(LOCK_37, just_inside, now=CREATED + 10)[0] is None
    assert verdict(LOCK_37, just_outside, now=CREATED + 10)[0] is OrphanReason.REUSED


def test_starttime_in_the_lock_is_compared_exactly() -> None:
    content = LockContent(pid=37, created_at=CREATED, starttime=500)
    # Same start tick: the owner, even if wall-clock arithmetic says "born later".
    assert verdict(content, owner(CREATED + 3600, starttime=500), now=CREATED + 5)[0] is None
    assert verdict(content, owner(CREATED - 3600, starttime=501), now=CREATED + 5)[0] is OrphanReason.REUSED


def test_missing_created_at_falls_back_to_mtime() -> None:
    content = LockContent(pid=37)
    mtime = CREATED - 100
    assert verdict(content, None, now=mtime + MAX_AGE + 1, mtime=mtime)[0] is OrphanReason.DEAD
    assert verdict(content, owner(mtime + 30), now=mtime + 40, mtime=mtime)[0] is OrphanReason.REUSED
    assert verdict(content, owner(mtime - 30), now=mtime + 40, mtime=mtime)[0] is None


def test_created_at_in_the_future_falls_back_to_mtime() -> None:
    content = LockContent(pid=37, created_at=CREATED + 10 * 365 * 86400)
    assert verdict(content, None, now=CREATED + MAX_AGE + 1) == (OrphanReason.DEAD, MAX_AGE + 1)


def test_unreadable_lock_judged_by_age_alone() -> None:
    assert verdict(LockContent(), None, now=CREATED + MAX_AGE - 1)[0] is None
    assert verdict(LockContent(), None, now=CREATED + MAX_AGE + 1)[0] is OrphanReason.UNREADABLE


def test_index_lock_of_a_dead_owner_goes_after_the_gateways_own_30s() -> None:
    index = LockContent(pid=37, created_at=CREATED)
    assert verdict(index, None, now=CREATED + INDEX_LOCK_STALE_AFTER - 1, kind=LockKind.INDEX)[0] is None
    assert verdict(index, None, now=CREATED + INDEX_LOCK_STALE_AFTER + 1, kind=LockKind.INDEX)[0] is (
        OrphanReason.DEAD
    )


def test_stuck_report_once_then_again_after_another_timeout() -> None:
    timeout = 600.0
    assert not stuck_report_due(timeout, timeout, None, now=0.0)
    assert stuck_report_due(timeout + 1, timeout, None, now=1000.0)
    assert not stuck_report_due(timeout + 6, timeout, 1000.0, now=1005.0)
    assert not stuck_report_due(timeout + 500, timeout, 1000.0, now=1599.0)
    assert stuck_report_due(timeout + 601, timeout, 1000.0, now=1600.0)


# -- archive names -----------------------------------------------------------------------


def test_archive_name_records_the_archive_time_in_utc() -> None:
    at = 1_764_297_600.0  # 2025-11-28T02:40:00Z
    name = archive_name("c0ffee00.jsonl", at)
    assert name == "c0ffee00.jsonl.20251128T024000Z.old"
    assert archived_at_from_name(name) == at
    assert archive_name("c0ffee00.jsonl", at, 2) == "c0ffee00.jsonl.20251128T024000Z.2.old"
    assert archived_at_from_name("c0ffee00.jsonl.20251128T024000Z.2.old") == at


@pytest.mark.parametrize(
    "name",
    ["c0ffee00.jsonl.old", "c0ffee00.jsonl.20251399T024000Z.old", "notes.old", "c0ffee00.jsonl"],
)
def test_names_without_an_archive_time(name: str) -> None:
    assert archived_at_from_name(name) is None


# -- system helpers ----------------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_boot_time_is_psutils(child: subprocess.Popen[bytes]) -> None:
    # The janitor reads btime itself so that PID 1 does not load psutil for one number.
    assert procinfo.boot_time() == psutil.boot_time()


def test_probe_owner_agrees_with_psutil(child: subprocess.Popen[bytes]) -> None:
    probed = probe_owner(child.pid, procinfo.boot_time())
    assert probed is not None
    assert probed.ppid == os.getpid()
    assert probed.create_time == pytest.approx(psutil.Process(child.pid).create_time(), abs=1e-6)
    with open(f"/proc/{child.pid}/stat", "rb") as handle:
        raw = handle.read()
    assert probed.starttime == int(raw[raw.rfind(b")") + 2 :].split()[19])


def test_probe_owner_sees_zombies_and_dead_pids_as_gone(child: subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
    assert probe_owner(child.pid, psutil.boot_time()) is None
    child.wait()
    assert probe_owner(child.pid, psutil.boot_time()) is None


def test_rename_noreplace_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("new\n")
    (tmp_path / "a.jsonl.old").write_text("earlier\n")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_noreplace(fd, "a.jsonl", "a.jsonl.old")
        assert (tmp_path / "a.jsonl.old").read_text() == "earlier\n"
        inode = (tmp_path / "a.jsonl").stat().st_ino
        rename_noreplace(fd, "a.jsonl", "a.jsonl.2.old")
    finally:
        os.close(fd)
    assert not (tmp_path / "a.jsonl").exists()
    assert (tmp_path / "a.jsonl.2.old").stat().st_ino == inode
