"""inotify watches on the restart flag's directory and the ops inbox (real files)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.filewatch import FileWatch


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "ops-requests").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture
def watch(home: Path) -> Iterator[FileWatch]:
    files = FileWatch(home / "restart.flag", home / "ops-requests")
    yield files
    files.close()


def test_only_the_flag_counts_in_its_directory(watch: FileWatch, home: Path):
    assert watch.complete
    assert not watch.on_readable()
    (home / "clawdbot.json").write_text("{}")  # the gateway's own files: not news
    assert not watch.on_readable()
    (home / "restart.flag").write_text("why")
    assert watch.on_readable()
    os.unlink(home / "restart.flag")
    assert not watch.on_readable()  # a flag going away needs nothing


def test_anything_arriving_in_the_inbox_counts(watch: FileWatch, home: Path):
    (home / "ops-requests" / ".r.json.tmp").write_text("{}")
    assert watch.on_readable()
    os.rename(home / "ops-requests" / ".r.json.tmp", home / "ops-requests" / "r.json")
    assert watch.on_readable()


def test_a_removed_inbox_is_waited_for_and_watched_again_once_back(
    watch: FileWatch, home: Path
):
    shutil.rmtree(home / "ops-requests")
    assert watch.on_readable()
    assert watch.complete  # its creation in home/ is an event
    (home / "ops-requests").mkdir()
    assert watch.on_readable()
    (home / "ops-requests" / "r.json").write_text("{}")
    assert watch.on_readable()


def test_an_inbox_renamed_away_is_no_longer_watched(watch: FileWatch, home: Path):
    os.rename(home / "ops-requests", home / "elsewhere")
    assert watch.on_readable()
    (home / "elsewhere" / "r.json").write_text("{}")  # not the inbox any more
    assert not watch.on_readable()
    os.rename(home / "elsewhere", home / "ops-requests")  # back: looked at, watched
    assert watch.on_readable()
    (home / "ops-requests" / "r2.json").write_text("{}")
    assert watch.on_readable()


def test_flag_and_inbox_in_one_directory(home: Path):
    files = FileWatch(home / "restart.flag", home)
    try:
        assert files.complete
        (home / "r.json").write_text("{}")
        assert files.on_readable()
    finally:
        files.close()


def test_a_directory_created_later_is_waited_for_in_its_nearest_ancestor(tmp_path: Path):
    files = FileWatch(tmp_path / "a" / "b" / "restart.flag", tmp_path / "a" / "ops")
    try:
        assert files.complete
        (tmp_path / "unrelated").mkdir()
        assert not files.on_readable()
        (tmp_path / "a").mkdir()
        assert files.on_readable()  # one step closer: now waited for in a/
        (tmp_path / "a" / "b").mkdir()
        (tmp_path / "a" / "ops").mkdir()
        assert files.on_readable()
        (tmp_path / "a" / "b" / "restart.flag").touch()
        assert files.on_readable()
        (tmp_path / "a" / "b" / "other").touch()
        (tmp_path / "a" / "c").mkdir()
        assert not files.on_readable()  # the ancestor watch on a/ is gone
    finally:
        files.close()


def test_nothing_configured_is_nothing_to_watch():
    files = FileWatch(None, None)
    assert files.complete
    assert files.fileno() is None
    assert not files.on_readable()
    files.close()
