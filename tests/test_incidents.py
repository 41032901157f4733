"""The incident log: real files, rotation, corrupt lines, and a full disk."""

from __future__ import annotations

import calendar
import json
import logging
from pathlib import Path

import pytest

from clawsup.protocol import Event
from clawsup.supervisor.incidents import IncidentLog, is_incident
from clawsup.supervisor.kinds import ExitCause, Exited, as_data

DAY1 = calendar.timegm((2026, 1, 10, 12, 0, 0))
DAY2 = calendar.timegm((2026, 1, 11, 8, 30, 0))


def event(kind: str, ts: float = DAY1, **data: object) -> Event:
    return Event(ts=ts, kind=kind, program="gateway", message=f"{kind} happened", data=data)


def test_recovery_events_are_appended_as_json_lines(tmp_path: Path) -> None:
    log = IncidentLog(tmp_path / "state" / "incidents.jsonl")
    log.observe(event("hung", state="D", seconds=10.0))
    log.observe(event("started"))  # routine: not an incident
    log.observe(event("message_timeout", ts=DAY1 + 1))
    lines = (tmp_path / "state" / "incidents.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "ts": DAY1,
            "kind": "hung",
            "program": "gateway",
            "message": "hung happened",
            "data": {"state": "D", "seconds": 10.0},
        },
        {
            "ts": DAY1 + 1,
            "kind": "message_timeout",
            "program": "gateway",
            "message": "message_timeout happened",
            "data": {},
        },
    ]
    assert (tmp_path / "state" / "incidents.jsonl").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "kind",
    [
        "hung",
        "fatal",
        "crash_loop",
        "zombie_leak",
        "liveness_failed",
        "message_timeout",
        "orphan_lock",
        "session_archived",
        "breaker_open",
        "unkillable",
    ],
)
def test_recovery_kinds_are_incidents(kind: str) -> None:
    assert is_incident(event(kind))


@pytest.mark.parametrize(
    "kind",
    ["started", "restarted", "backoff", "state", "reaped", "archive_purged", "model_changed",
     "breaker_closed", "breaker_half_open"],
)
def test_routine_kinds_are_not_incidents(kind: str) -> None:
    assert not is_incident(event(kind))


def _exit(cause: ExitCause, reason: str, *, restart: bool = True, ts: float = DAY1) -> Event:
    payload = Exited(pid=42, code=None, signal="SIGTERM", reason=reason, restart=restart,
                     cause=cause)
    return event("exited", ts=ts, **as_data(payload))


def test_an_exit_is_an_incident_only_when_the_program_crashed() -> None:
    assert is_incident(_exit(ExitCause.CRASHED, "crashed"))
    assert not is_incident(_exit(ExitCause.STOPPED, "stopped", restart=False))
    assert not is_incident(event("exited"))
    # Restarts an operator asked for are not recoveries, whatever their text says.
    for asked in ("requested", "restart_flag", "ops_request", "requested: crashed"):
        assert not is_incident(_exit(ExitCause.STOPPED, asked))


def test_rotates_at_max_bytes_and_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    log = IncidentLog(path, max_bytes=400, keep=2)
    for i in range(40):
        log.observe(event("hung", ts=DAY1 + i))
    assert path.exists()
    assert (tmp_path / "incidents.jsonl.1").exists()
    assert (tmp_path / "incidents.jsonl.2").exists()
    assert not (tmp_path / "incidents.jsonl.3").exists()
    for name in ("incidents.jsonl", "incidents.jsonl.1", "incidents.jsonl.2"):
        assert (tmp_path / name).stat().st_size <= 400
    # What is kept is the newest, in order, across the rotated files.
    kept = [incident.ts for incident in log.read()]
    assert kept == sorted(kept)
    assert kept[-1] == DAY1 + 39
    assert len(kept) < 40


def test_keep_zero_starts_over_without_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    log = IncidentLog(path, max_bytes=300, keep=0)
    for i in range(10):
        log.observe(event("hung", ts=DAY1 + i))
    assert [p.name for p in tmp_path.iterdir()] == ["incidents.jsonl"]
    assert log.read()[-1].ts == DAY1 + 9


def test_summary_counts_per_day_and_kind_across_rotated_files(tmp_path: Path) -> None:
    log = IncidentLog(tmp_path / "incidents.jsonl", max_bytes=250, keep=10)
    log.observe(event("hung", ts=DAY1))
    log.observe(event("hung", ts=DAY1 + 60))
    log.observe(event("orphan_lock", ts=DAY1 + 120))
    log.observe(event("message_timeout", ts=DAY2))
    log.observe(_exit(ExitCause.CRASHED, "crashed", ts=DAY2 + 1))
    assert (tmp_path / "incidents.jsonl.1").exists()
    reply = log.summary(since_seconds=None, now=DAY2 + 10, limit=3)
    assert reply.counts == {
        "2026-01-10": {"hung": 2, "orphan_lock": 1},
        "2026-01-11": {"message_timeout": 1, "exited": 1},
    }
    assert [i.kind for i in reply.latest] == ["orphan_lock", "message_timeout", "exited"]
    assert reply.latest[-1].data == {"pid": 42, "code": None, "signal": "SIGTERM",
                                     "reason": "crashed", "restart": True, "cause": "crashed"}


def test_summary_since_looks_back_from_now(tmp_path: Path) -> None:
    log = IncidentLog(tmp_path / "incidents.jsonl")
    log.observe(event("hung", ts=DAY1))
    log.observe(event("fatal", ts=DAY2))
    reply = log.summary(since_seconds=3600.0, now=DAY2 + 60, limit=20)
    assert reply.counts == {"2026-01-11": {"fatal": 1}}
    assert [i.kind for i in reply.latest] == ["fatal"]


def test_summary_of_no_log_at_all_is_empty(tmp_path: Path) -> None:
    reply = IncidentLog(tmp_path / "missing" / "incidents.jsonl").summary(None, DAY1, 20)
    assert reply.counts == {}
    assert reply.latest == []


def test_corrupt_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    log = IncidentLog(path)
    log.observe(event("hung", ts=DAY1))
    with open(path, "ab") as handle:
        handle.write(b"not json at all\n")
        handle.write(b'{"kind": "hung"}\n')  # no ts
        handle.write(b"\xff\xfe\n")
        handle.write(b"\n")
    (tmp_path / "incidents.jsonl.1").write_bytes(b'{"ts": "yesterday", "kind": 5}\n')
    log.observe(event("fatal", ts=DAY1 + 1))
    assert [i.kind for i in log.read()] == ["hung", "fatal"]


def test_a_torn_last_line_does_not_swallow_the_next_incident(tmp_path: Path) -> None:
    path = tmp_path / "incidents.jsonl"
    IncidentLog(path).observe(event("hung", ts=DAY1))
    with open(path, "ab") as handle:
        handle.write(b'{"ts": 1768046400.0, "kind": "fa')  # killed mid-write
    # A new supervisor process opens the same log.
    log = IncidentLog(path)
    log.observe(event("crash_loop", ts=DAY1 + 5))
    assert [i.kind for i in log.read()] == ["hung", "crash_loop"]


def test_a_full_disk_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    # /dev/full answers every write with ENOSPC: a real full disk.
    log = IncidentLog(Path("/dev/full"))
    with caplog.at_level(logging.WARNING, logger="clawsup.supervisor.incidents"):
        for i in range(5):
            log.observe(event("hung", ts=DAY1 + i))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "No space left on device" in errors[0].getMessage()
    assert log.dropped == 5


def test_writes_resume_after_the_state_dir_becomes_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    log = IncidentLog(blocker / "incidents.jsonl")
    with caplog.at_level(logging.WARNING, logger="clawsup.supervisor.incidents"):
        log.observe(event("hung", ts=DAY1))
        log.observe(event("hung", ts=DAY1 + 1))
        blocker.unlink()
        log.observe(event("fatal", ts=DAY1 + 2))
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]
    assert "2 incidents were lost" in caplog.records[1].getMessage()
    assert [i.kind for i in log.read()] == ["fatal"]
