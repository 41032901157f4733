"""Janitor.quiet_until: when time alone cannot bring the janitor work (real files)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.janitor import Janitor, archive_name
from clawsup.units import Duration

FULL_PASS_EVERY = 60.0
RETENTION = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    directory = tmp_path / "agents" / "main" / "sessions"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def janitor(tmp_path: Path, sessions: Path, clock: Clock) -> Iterator[Janitor]:
    config = JanitorConfig(sessions=[str(tmp_path / "agents" / "*" / "sessions")],
                           full_pass_every=Duration(FULL_PASS_EVERY),
                           archive_retention=Duration(RETENTION))
    with Janitor(config, clock) as made:
        yield made


def test_an_empty_directory_is_quiet_until_the_next_full_pass(janitor: Janitor, clock: Clock):
    janitor.sweep()
    assert janitor.quiet_until() == pytest.approx(clock.now + FULL_PASS_EVERY)


def test_a_held_lock_keeps_the_janitor_on_the_clock(
    janitor: Janitor, sessions: Path, clock: Clock
):
    (sessions / "a.jsonl").write_text("{}\n")
    created = datetime.fromtimestamp(clock.now, UTC).isoformat(timespec="milliseconds")
    (sessions / "a.jsonl.lock").write_text(
        json.dumps({"pid": os.getpid(), "createdAt": created.replace("+00:00", "Z")}))
    janitor.sweep()
    assert janitor.quiet_until() is None  # its owner may die with no file event
    os.unlink(sessions / "a.jsonl.lock")
    janitor.on_readable()
    assert janitor.quiet_until() is None  # inotify reported it; the sweep has not looked
    janitor.sweep()
    assert janitor.quiet_until() is not None


def test_an_archive_brings_its_purge_time(janitor: Janitor, sessions: Path, clock: Clock):
    archived_at = clock.now - RETENTION + 10
    (sessions / archive_name("a.jsonl", archived_at)).write_text("{}\n")
    janitor.sweep()
    quiet_until = janitor.quiet_until()
    assert quiet_until is not None
    assert quiet_until == pytest.approx(archived_at + RETENTION, abs=1.0)


def test_without_inotify_every_interval_counts(tmp_path: Path, sessions: Path, clock: Clock):
    config = JanitorConfig(sessions=[str(tmp_path / "agents" / "*" / "sessions")])
    with Janitor(config, clock, use_inotify=False) as polling:
        polling.sweep()
        assert polling.quiet_until() is None
