"""One inotify instance shared by several watchers (real directories, real events)."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from clawsup.supervisor import inotify
from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.filewatch import FileWatch
from clawsup.supervisor.inotify import Dispatcher, InotifyEvent, Watcher, open_watcher
from clawsup.supervisor.janitor import Janitor
from tests.test_janitor import write_lock


class Inbox:
    """What one watcher was handed."""

    def __init__(self) -> None:
        self.events: list[InotifyEvent] = []

    def __call__(self, events: Sequence[InotifyEvent]) -> None:
        self.events.extend(events)

    def names(self, mask: int) -> list[str]:
        return [event.name for event in self.events if event.mask & mask]


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    shared = Dispatcher()
    yield shared
    shared.close()


def readable(fd: int) -> bool:
    return select.select([fd], [], [], 5)[0] == [fd]


def test_each_watcher_sees_only_the_events_of_its_own_watches(dispatcher: Dispatcher, tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got_a, got_b = Inbox(), Inbox()
    dispatcher.watcher(got_a).add_watch(str(tmp_path / "a"))
    dispatcher.watcher(got_b).add_watch(str(tmp_path / "b"))
    (tmp_path / "a" / "one").write_text("x")
    (tmp_path / "b" / "two").write_text("x")
    assert readable(dispatcher.fileno())
    dispatcher.dispatch()
    assert set(got_a.names(inotify.IN_CREATE)) == {"one"}
    assert set(got_b.names(inotify.IN_CREATE)) == {"two"}


def test_watchers_of_one_directory_share_its_watch_and_get_only_what_their_mask_asked(
    dispatcher: Dispatcher, tmp_path: Path
):
    creates, writes = Inbox(), Inbox()
    create, close_write = inotify.IN_CREATE, inotify.IN_CLOSE_WRITE
    wd_creates = dispatcher.watcher(creates).add_watch(str(tmp_path), create | inotify.IN_ONLYDIR)
    wd_writes = dispatcher.watcher(writes).add_watch(str(tmp_path), close_write | inotify.IN_ONLYDIR)
    assert wd_creates == wd_writes  # the kernel's one watch per inode
    (tmp_path / "file").write_text("x")
    dispatcher.dispatch()
    assert [event.mask & (create | close_write) for event in creates.events] == [create]
    assert [event.mask & (create | close_write) for event in writes.events] == [close_write]


def test_a_shared_watch_outlives_the_watcher_that_lets_go_first(dispatcher: Dispatcher, tmp_path: Path):
    first, second = Inbox(), Inbox()
    leaving = dispatcher.watcher(first)
    wd = leaving.add_watch(str(tmp_path))
    dispatcher.watcher(second).add_watch(str(tmp_path))
    leaving.remove_watch(wd)
    (tmp_path / "after").write_text("x")
    dispatcher.dispatch()
    assert first.events == []
    assert "after" in second.names(inotify.IN_CREATE)
    assert not [event for event in second.events if event.mask & inotify.IN_IGNORED]  # still watched


def test_a_deleted_directory_ends_its_watch_for_every_watcher(dispatcher: Dispatcher, tmp_path: Path):
    gone = tmp_path / "gone"
    gone.mkdir()
    inboxes = [Inbox(), Inbox()]
    watchers = [dispatcher.watcher(inbox) for inbox in inboxes]
    for watcher in watchers:
        watcher.add_watch(str(gone))
    gone.rmdir()
    dispatcher.dispatch()
    for inbox, watcher in zip(inboxes, watchers, strict=True):
        assert [event.mask & inotify.IN_IGNORED for event in inbox.events][-1] == inotify.IN_IGNORED
        assert watcher.wds == set()


def test_removing_a_watch_the_kernel_already_dropped_is_fine(dispatcher: Dispatcher, tmp_path: Path):
    gone = tmp_path / "gone"
    gone.mkdir()
    watcher = dispatcher.watcher(Inbox())
    wd = watcher.add_watch(str(gone))
    gone.rmdir()
    dispatcher.dispatch()
    watcher.remove_watch(wd)  # EINVAL from the kernel: not an error
    assert watcher.wds == set()


def test_a_watch_that_cannot_be_added_raises_and_leaves_nothing_behind(
    dispatcher: Dispatcher, tmp_path: Path
):
    watcher = dispatcher.watcher(Inbox())
    with pytest.raises(FileNotFoundError):
        watcher.add_watch(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        watcher.add_watch(str(tmp_path / "file"), inotify.DIRECTORY_CHANGES)
    assert watcher.wds == set()


def test_closing_a_watcher_of_a_shared_dispatcher_leaves_the_others_working(
    dispatcher: Dispatcher, tmp_path: Path
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    closed_inbox, open_inbox = Inbox(), Inbox()
    closing = dispatcher.watcher(closed_inbox)
    closing.add_watch(str(tmp_path / "a"))
    dispatcher.watcher(open_inbox).add_watch(str(tmp_path / "b"))
    closing.close()
    (tmp_path / "a" / "x").write_text("x")
    (tmp_path / "b" / "y").write_text("x")
    dispatcher.dispatch()
    assert closed_inbox.names(inotify.IN_CREATE) == []
    assert "y" in open_inbox.names(inotify.IN_CREATE)


def test_a_watcher_of_its_own_closes_its_dispatcher(tmp_path: Path):
    watcher: Watcher = open_watcher(Inbox())
    fd = watcher.fileno()
    watcher.add_watch(str(tmp_path))
    watcher.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_queue_overflow_goes_to_every_watcher(dispatcher: Dispatcher, tmp_path: Path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to overflow in a test")
    (tmp_path / "busy").mkdir()
    (tmp_path / "quiet").mkdir()
    busy, quiet = Inbox(), Inbox()
    dispatcher.watcher(busy).add_watch(str(tmp_path / "busy"))
    dispatcher.watcher(quiet).add_watch(str(tmp_path / "quiet"))
    a, b = tmp_path / "busy" / "a", tmp_path / "busy" / "b"
    a.write_text("")
    b.write_text("")
    for n in range(limit // 2 + 100):  # alternating: the kernel cannot merge them
        os.utime(a, (n, n))
        os.utime(b, (n, n))
    dispatcher.dispatch()
    assert [event for event in quiet.events if event.mask & inotify.IN_Q_OVERFLOW]
    assert [event for event in busy.events if event.mask & inotify.IN_Q_OVERFLOW]


def test_a_janitor_and_a_filewatch_share_one_dispatcher(dispatcher: Dispatcher, tmp_path: Path):
    sessions = tmp_path / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True)
    inbox = tmp_path / "ops-requests"
    inbox.mkdir()
    janitor = Janitor(JanitorConfig(sessions=[str(tmp_path / "agents" / "*" / "sessions")]),
                      watches=dispatcher)
    files = FileWatch(tmp_path / "restart.flag", inbox, watches=dispatcher)
    try:
        assert janitor.fileno() == files.fileno() == dispatcher.fileno()
        janitor.sweep()
        dead = os.fork()
        if dead == 0:
            os._exit(0)
        os.waitpid(dead, 0)
        lock = write_lock(sessions, "s1.jsonl.lock", dead, 0.0)
        (tmp_path / "restart.flag").write_text("why")
        assert readable(dispatcher.fileno())
        janitor.on_readable()  # drains for both: FileWatch keeps what it was handed
        assert files.on_readable()
        report = janitor.sweep()
        assert not report.full_pass  # the lock came through inotify, not a full pass
        assert [orphan.path for orphan in report.removed_locks] == [lock]
    finally:
        janitor.close()
        files.close()
