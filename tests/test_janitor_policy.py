"""The janitor's decisions as pure functions: an index built by hand, /proc as a dict.

No file is touched: test_janitor*.py run the same rules against real directories.
"""

from __future__ import annotations

from pathlib import Path

from clawsup.supervisor.janitor.index import LockEntry, SessionDir
from clawsup.supervisor.janitor.policy import (
    MAX_PARENT_HOPS,
    HoldingKey,
    LockJudgement,
    Removal,
    full_pass_due,
    judge_locks,
    program_of,
    quiet_until,
    to_archive,
    to_purge,
)
from clawsup.supervisor.janitor.report import StuckMessage
from clawsup.supervisor.locks import LockContent, OrphanReason, OwnerProcess

NOW = 1_800_000_000.0
LOCK_MAX_AGE = 300.0
MESSAGE_TIMEOUT = 600.0
SESSIONS = Path("/home/a/.clawdbot/agents/main/sessions")


def directory(**locks: LockContent) -> SessionDir:
    found = SessionDir(path=SESSIONS, fd=-1, key=(1, 2), wd=1, rescan=False)
    for n, (name, content) in enumerate(locks.items()):
        found.locks[name + ".jsonl.lock"] = LockEntry(ino=n + 10, mtime_ns=int((NOW - 5) * 1e9), size=40,
                                                     content=content)
    return found


def process(pid: int, ppid: int = 1, born: float = NOW - 3600) -> OwnerProcess:
    return OwnerProcess(pid=pid, ppid=ppid, starttime=0, create_time=born)


def judge(
    session_dir: SessionDir,
    alive: dict[int, OwnerProcess],
    *,
    now: float = NOW,
    owners: dict[int, str] | None = None,
    exited: dict[int, tuple[str, float]] | None = None,
    reported: dict[HoldingKey, float] | None = None,
    report_stuck: bool = True,
) -> LockJudgement:
    return judge_locks(
        [session_dir],
        now=now,
        owner_of=alive.get,
        owners=owners or {},
        exited=exited or {},
        lock_max_age=LOCK_MAX_AGE,
        message_timeout=MESSAGE_TIMEOUT,
        stuck_reported=reported or {},
        report_stuck=report_stuck,
    )


def test_a_lock_of_our_exited_program_is_removed_at_once_and_names_the_program():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - 2))
    judgement = judge(session_dir, {}, exited={40: ("gateway", NOW - 1)})
    [removal] = judgement.actions
    assert isinstance(removal, Removal)
    assert removal.name == "s1.jsonl.lock"
    assert removal.entry is session_dir.locks["s1.jsonl.lock"]  # the very file judged
    assert removal.orphan.reason is OrphanReason.EXITED
    assert removal.orphan.program == "gateway"
    assert judgement.held == []


def test_a_young_lock_of_a_dead_stranger_is_kept_until_lock_max_age():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - 10))
    assert judge(session_dir, {}).actions == []
    [removal] = judge(session_dir, {}, now=NOW - 10 + LOCK_MAX_AGE + 1).actions
    assert isinstance(removal, Removal)
    assert removal.orphan.reason is OrphanReason.DEAD
    assert removal.orphan.program is None


def test_a_lock_whose_pid_now_names_a_younger_process_is_reused():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - 100))
    [removal] = judge(session_dir, {40: process(40, born=NOW - 50)}).actions
    assert isinstance(removal, Removal)
    assert removal.orphan.reason is OrphanReason.REUSED


def test_an_unreadable_lock_is_judged_by_its_age_alone():
    session_dir = directory(s1=LockContent())
    assert judge(session_dir, {}).actions == []  # mtime 5 s ago: maybe being written
    [removal] = judge(session_dir, {}, now=NOW + LOCK_MAX_AGE).actions
    assert isinstance(removal, Removal)
    assert removal.orphan.reason is OrphanReason.UNREADABLE
    assert removal.orphan.pid is None


def test_a_held_lock_is_reported_stuck_once_per_message_timeout():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - MESSAGE_TIMEOUT - 1))
    alive = {40: process(40)}
    first = judge(session_dir, alive)
    [stuck] = first.actions
    assert isinstance(stuck, StuckMessage)
    assert (stuck.pid, stuck.session_id) == (40, "s1")
    assert [held.pid for held in first.held] == [40]
    again = judge(session_dir, alive, now=NOW + 60, reported=first.stuck_reported)
    assert again.actions == []  # not every sweep
    assert again.stuck_reported == first.stuck_reported
    later = judge(session_dir, alive, now=NOW + MESSAGE_TIMEOUT, reported=first.stuck_reported)
    assert [type(action) for action in later.actions] == [StuckMessage]


def test_a_stuck_message_is_not_reported_at_a_program_exit():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - MESSAGE_TIMEOUT - 1))
    judgement = judge(session_dir, {40: process(40)}, report_stuck=False)
    assert judgement.actions == []
    assert judgement.stuck_reported == {}
    assert len(judgement.held) == 1


def test_a_stuck_report_is_forgotten_once_its_lock_is_gone():
    session_dir = directory(s1=LockContent(pid=40, created_at=NOW - MESSAGE_TIMEOUT - 1))
    reported = judge(session_dir, {40: process(40)}).stuck_reported
    assert reported
    assert judge(directory(), {}, reported=reported).stuck_reported == {}


def test_a_held_lock_names_our_program_through_the_owners_ancestors():
    session_dir = directory(s1=LockContent(pid=42, created_at=NOW - 10))
    alive = {42: process(42, ppid=41), 41: process(41, ppid=40), 40: process(40)}
    [held] = judge(session_dir, alive, owners={40: "gateway"}).held
    assert held.program == "gateway"


def test_the_ancestor_walk_stops_at_init_at_a_dead_parent_and_after_its_hop_limit():
    looped = {pid: process(pid, ppid=pid + 1) for pid in range(100, 100 + MAX_PARENT_HOPS + 5)}
    assert program_of(100, {100 + MAX_PARENT_HOPS + 1: "gateway"}, looped.get) is None
    assert program_of(100, {100 + MAX_PARENT_HOPS - 1: "gateway"}, looped.get) == "gateway"
    assert program_of(7, {1: "init"}, {7: process(7, ppid=1)}.get) is None
    assert program_of(7, {9: "gateway"}, {}.get) is None


def test_an_oversized_transcript_waits_for_its_lock_to_go():
    session_dir = directory(big=LockContent(pid=40, created_at=NOW))
    session_dir.oversized |= {"big.jsonl", "free.jsonl"}
    assert to_archive(session_dir) == ["free.jsonl"]
    session_dir.locks.clear()
    assert to_archive(session_dir) == ["big.jsonl", "free.jsonl"]


def test_an_archive_is_purged_only_once_its_retention_has_passed():
    session_dir = directory()
    session_dir.archives = {"a.jsonl.old": (5, NOW - 100.0), "b.jsonl.old": (6, NOW - 101.0)}
    assert to_purge(session_dir, NOW, retention=100.0) == [("b.jsonl.old", 6, NOW - 101.0)]


def test_a_wall_clock_that_went_back_forces_a_full_pass():
    assert not full_pass_due(NOW, NOW + 10, NOW - 50, untrusted=False)
    assert full_pass_due(NOW, NOW + 10, NOW + 5, untrusted=False)
    assert full_pass_due(NOW, NOW + 10, NOW - 50, untrusted=True)
    assert full_pass_due(NOW, None, 0.0, untrusted=False)


def test_quiet_until_is_the_next_full_pass_or_the_first_archive_to_expire():
    session_dir = directory()
    assert quiet_until([session_dir], NOW + 60, retention=3600) == NOW + 60
    session_dir.archives = {"a.jsonl.old": (5, NOW - 3590.0)}
    assert quiet_until([session_dir], NOW + 60, retention=3600) == NOW + 10
    assert quiet_until([session_dir], None, retention=3600) is None


def test_nothing_is_quiet_while_a_lock_a_dirty_name_or_an_unwatched_directory_waits():
    for change in ("lock", "dirty", "unwatched", "rescan", "oversized"):
        session_dir = directory(s1=LockContent(pid=40)) if change == "lock" else directory()
        if change == "dirty":
            session_dir.dirty.add("x.jsonl")
        elif change == "unwatched":
            session_dir.wd = None
        elif change == "rescan":
            session_dir.rescan = True
        elif change == "oversized":
            session_dir.oversized.add("big.jsonl")
        assert quiet_until([session_dir], NOW + 60, retention=3600) is None, change
