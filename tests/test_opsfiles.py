from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup.supervisor.opsfiles import (
    FLAG_READ_LIMIT,
    MAX_REQUEST_SIZE,
    FlagError,
    OpsInbox,
    PendingRequest,
    RequestError,
    RestartFlag,
    RestartRequest,
    SetModelRequest,
    SetTimezoneRequest,
    finish,
    parse_request,
    pending_requests,
    take_restart_flag,
)
from tests.util import wait_until

LONG_AGO = 1_700_000_000.0  # file times the tests set, so nothing is "still settling"


@contextlib.contextmanager
def frozen_directory(directory: Path) -> Iterator[None]:
    """No entry in ``directory`` can be created, renamed or removed, even by root."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make a directory immutable as root")
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i refused: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def write_request(inbox: Path, name: str, content: bytes | str | dict[str, object]) -> Path:
    path = inbox / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


@pytest.fixture
def inbox(clawdbot_home: Path) -> Path:
    directory = clawdbot_home / "ops-requests"
    directory.mkdir()
    return directory


@pytest.fixture
def flag(clawdbot_home: Path) -> Path:
    return clawdbot_home / "restart.flag"


# --- the restart flag -----------------------------------------------------------------


def test_no_flag_no_restart(flag: Path):
    assert take_restart_flag(flag) is None


def test_empty_flag_is_taken_with_an_empty_reason(flag: Path):
    flag.touch()
    assert take_restart_flag(flag) == ""
    assert not flag.exists()
    assert take_restart_flag(flag) is None


def test_flag_content_is_the_reason(flag: Path):
    flag.write_text("new skill installed\n")
    assert take_restart_flag(flag) == "new skill installed"
    assert not flag.exists()


def test_flag_reason_is_one_printable_line(flag: Path):
    flag.write_bytes(b"line one\nline\x1b[31m two\xff")
    assert take_restart_flag(flag) == "line one line [31m two\ufffd"


def test_huge_flag_is_read_only_up_to_the_limit(flag: Path):
    flag.write_bytes(b"x" * (1 << 20))
    reason = take_restart_flag(flag)
    assert reason == "x" * FLAG_READ_LIMIT + "..."
    assert not flag.exists()


def test_symlink_flag_is_removed_never_followed(flag: Path, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("api-key-123")
    flag.symlink_to(secret)

    assert take_restart_flag(flag) == ""

    assert not os.path.lexists(flag)
    assert secret.read_text() == "api-key-123"


def test_dangling_symlink_flag_is_removed(flag: Path, tmp_path: Path):
    flag.symlink_to(tmp_path / "nothing")
    assert take_restart_flag(flag) == ""
    assert not os.path.lexists(flag)


@pytest.mark.timeout(10)
def test_fifo_flag_does_not_hang(flag: Path):
    os.mkfifo(flag)
    assert take_restart_flag(flag) == ""
    assert not os.path.lexists(flag)


def test_directory_flag_is_an_error_and_left_alone(flag: Path):
    flag.mkdir()
    with pytest.raises(FlagError, match="is a directory"):
        take_restart_flag(flag)
    assert flag.is_dir()


def test_flag_that_cannot_be_removed_restarts_nothing_and_is_reported_once(flag: Path):
    flag.write_text("please")
    watcher = RestartFlag(flag)
    with frozen_directory(flag.parent):
        with pytest.raises(FlagError, match="not restarting"):
            watcher.take()
        assert watcher.take() is None  # same stuck flag: quiet, no restart
        assert watcher.take() is None
    assert flag.read_text() == "please"
    # Once the directory can be written again the flag is taken at the next sweep...
    assert watcher.take() == "please"
    assert watcher.take() is None


def test_stuck_flag_that_changes_is_reported_again(flag: Path):
    flag.write_text("first")
    watcher = RestartFlag(flag)
    with frozen_directory(flag.parent):
        with pytest.raises(FlagError):
            watcher.take()
        os.utime(flag, (LONG_AGO, LONG_AGO))
        with pytest.raises(FlagError):
            watcher.take()


# --- parsing requests -----------------------------------------------------------------


def test_requests_parse_to_typed_structs():
    assert parse_request(b'{"action": "restart"}') == RestartRequest()
    assert parse_request(
        b'{"action": "restart", "program": "gateway", "reason": "update"}'
    ) == RestartRequest(program="gateway", reason="update")
    assert parse_request(b'{"action": "set_model", "model": "openai/gpt-5.2"}') == SetModelRequest(
        model="openai/gpt-5.2"
    )
    assert parse_request(
        '\ufeff{"action": "set_timezone", "timezone": "Asia/Tokyo", "id": 7}'.encode()
    ) == SetTimezoneRequest(timezone="Asia/Tokyo")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"restart", "malformed"),
        (b"[]", "Expected object"),
        (b"{}", "missing required field action"),
        (b'{"action": "reboot"}', "unknown action 'reboot'"),
        (b'{"action": "set_model"}', "missing required field model"),
        (b'{"action": "set_model", "model": 5}', "Expected str, got int"),
        (b'{"action": "restart", "program": ["a"]}', "Expected str | null"),
        (b'{"action": "set_timezone", "timezone": "\xff"}', "not UTF-8"),
        (b" " * (MAX_REQUEST_SIZE + 1), "larger than"),
    ],
)
def test_bad_requests_say_what_is_wrong(content: bytes, message: str):
    with pytest.raises(RequestError, match=message):
        parse_request(content)


def test_deep_nesting_is_a_clean_error():
    with pytest.raises(RequestError):
        parse_request(b'{"action": "restart", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
request_like = st.fixed_dictionaries(
    {"action": st.sampled_from(["restart", "set_model", "set_timezone", "", "RESTART"])},
    optional={
        "program": json_values,
        "reason": json_values,
        "model": json_values,
        "timezone": json_values,
    },
)


def parses_or_says_why(data: bytes) -> None:
    outcome: object
    try:
        outcome = parse_request(data)
    except RequestError as error:
        outcome = error
    if isinstance(outcome, RequestError):
        assert str(outcome)
    else:
        assert isinstance(outcome, RestartRequest | SetModelRequest | SetTimezoneRequest)


@given(st.binary(max_size=512))
def test_random_bytes_parse_or_give_a_clean_error(data: bytes):
    parses_or_says_why(data)


@given(json_values)
def test_random_json_parses_or_gives_a_clean_error(value: object):
    parses_or_says_why(json.dumps(value).encode())


@given(request_like)
def test_random_request_like_objects_parse_or_give_a_clean_error(value: dict[str, object]):
    parses_or_says_why(json.dumps(value).encode())


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=256))
def test_random_request_files_are_each_parsed_or_rejected(data: bytes):
    with tempfile.TemporaryDirectory() as directory:
        write_request(Path(directory), "req-1.json", data)
        [pending] = pending_requests(directory)
        assert (pending.request is None) != (pending.error is None)


# --- the inbox ------------------------------------------------------------------------


def test_requests_come_in_name_order(inbox: Path):
    write_request(inbox, "req-2.json", {"action": "set_model", "model": "openai/gpt-5.2"})
    write_request(inbox, "req-10.json", {"action": "restart", "reason": "ten"})
    write_request(inbox, "req-1.json", {"action": "set_timezone", "timezone": "Asia/Tokyo"})

    found = pending_requests(inbox)

    assert [p.name for p in found] == ["req-1.json", "req-10.json", "req-2.json"]
    assert [p.request for p in found] == [
        SetTimezoneRequest(timezone="Asia/Tokyo"),
        RestartRequest(reason="ten"),
        SetModelRequest(model="openai/gpt-5.2"),
    ]


@pytest.mark.timeout(10)
def test_only_settled_regular_json_files_directly_inside_are_read(inbox: Path, tmp_path: Path):
    restart = {"action": "restart"}
    write_request(inbox, ".req-1.json.tmp", restart)
    write_request(inbox, ".hidden.json", restart)
    write_request(inbox, "notes.txt", restart)
    target = write_request(tmp_path, "elsewhere.json", restart)
    (inbox / "link.json").symlink_to(target)
    (inbox / "dir.json").mkdir()
    os.mkfifo(inbox / "fifo.json")
    (inbox / "done").mkdir()
    write_request(inbox / "done", "old.json", restart)
    write_request(inbox, "req-ok.json", restart)

    assert [p.name for p in pending_requests(inbox)] == ["req-ok.json"]
    assert (inbox / "link.json").is_symlink()


def test_a_file_still_being_written_waits_for_the_next_sweep(inbox: Path):
    path = write_request(inbox, "req-1.json", '{"action": "rest')
    os.utime(path, (LONG_AGO, LONG_AGO))

    assert pending_requests(inbox, now=LONG_AGO + 0.1) == []
    path.write_text('{"action": "restart"}')  # the writer finishes
    os.utime(path, (LONG_AGO, LONG_AGO))
    [pending] = pending_requests(inbox, now=LONG_AGO + 1.0)
    assert pending.request == RestartRequest()


def test_a_file_dated_in_the_future_is_not_held_back(inbox: Path):
    write_request(inbox, "req-1.json", {"action": "restart"})
    assert len(pending_requests(inbox, now=LONG_AGO - 3600)) == 1


def test_missing_inbox_has_no_requests(tmp_path: Path):
    assert pending_requests(tmp_path / "ops-requests") == []
    assert OpsInbox(tmp_path / "ops-requests").take() == []


def _age_directory(directory: Path, seconds: float) -> int:
    """Set the directory's mtime ``seconds`` into the past; return it (ns)."""
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(directory, ns=(then, then))
    return then


def test_an_empty_inbox_is_not_listed_again_until_it_changes(inbox: Path):
    ops = OpsInbox(inbox)
    old = _age_directory(inbox, 60)
    assert ops.take() == []  # listed: empty, and quiet for a while
    # A request that leaves the directory's mtime as it was (the kernel's coarse clock
    # can do that for a file created just after a listing) is not seen...
    write_request(inbox, "req-1.json", {"action": "restart"})
    os.utime(inbox, ns=(old, old))
    assert ops.take() == []
    # ...but any change of the mtime is, at once.
    os.utime(inbox, ns=(old + 1, old + 1))
    assert [p.name for p in ops.take()] == ["req-1.json"]


def test_a_recently_changed_inbox_is_always_listed(inbox: Path):
    # The race the shortcut must not lose: the directory changed just before the
    # listing, and a request arrives within the same tick of the kernel's clock.
    ops = OpsInbox(inbox)
    recent = _age_directory(inbox, 0.5)
    assert ops.take() == []
    write_request(inbox, "req-1.json", {"action": "restart"})
    os.utime(inbox, ns=(recent, recent))
    assert [p.name for p in ops.take()] == ["req-1.json"]


def test_an_inbox_with_requests_in_flight_is_listed(inbox: Path):
    write_request(inbox, "req-1.json", {"action": "restart"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()
    old = _age_directory(inbox, 60)
    assert ops.take() == []  # in flight: not handed out twice
    ops.finish(pending, True, {"restarted": "gateway"})
    write_request(inbox, "req-2.json", {"action": "restart"})
    os.utime(inbox, ns=(old, old))
    # The first listing after the finish must happen: the shortcut needs an empty
    # listing of its own first.
    assert [p.name for p in ops.take()] == ["req-2.json"]


def test_malformed_request_goes_to_failed_at_once_with_its_error(inbox: Path):
    write_request(inbox, "req-1.json", b"{not json")
    write_request(inbox, "req-2.json", {"action": "restart"})

    ready = OpsInbox(inbox).take()

    assert [p.name for p in ready] == ["req-2.json"]
    failed = inbox / "failed"
    assert stat.S_IMODE(failed.stat().st_mode) == 0o700
    assert (failed / "req-1.json").read_bytes() == b"{not json"
    result = json.loads((failed / "req-1.json.result.json").read_text())
    assert result["ok"] is False
    assert result["request"] == "req-1.json"
    assert result["error"]["code"] == "bad_request"
    assert "malformed" in result["error"]["message"]
    assert "finished_at" in result
    assert not (inbox / "req-1.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe{}",
        b'{"action": "reboot"}',
        b'{"action": "set_model", "model": null}',
        b'{"action": "restart", "reason": "' + b"x" * MAX_REQUEST_SIZE + b'"}',
    ],
)
def test_each_kind_of_malformed_request_is_rejected_once(inbox: Path, content: bytes):
    write_request(inbox, "req-1.json", content)
    ops = OpsInbox(inbox)
    assert ops.take() == []
    assert (inbox / "failed" / "req-1.json").read_bytes() == content
    assert ops.take() == []
    assert sorted(os.listdir(inbox / "failed")) == ["req-1.json", "req-1.json.result.json"]


def test_finished_request_goes_to_done_with_its_result(inbox: Path):
    write_request(inbox, "req-1.json", {"action": "set_model", "model": "openai/gpt-5.2"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()
    at = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)

    moved = finish(pending, True, {"key": "agents.defaults.model.primary", "new": "x"}, now=at)

    assert moved == inbox / "done" / "req-1.json"
    assert json.loads(Path(f"{moved}.result.json").read_text()) == {
        "request": "req-1.json",
        "ok": True,
        "result": {"key": "agents.defaults.model.primary", "new": "x"},
        "finished_at": "2025-01-31T12:00:00Z",
    }
    assert pending_requests(inbox) == []


def test_done_is_never_overwritten(inbox: Path):
    done = inbox / "done"
    done.mkdir()
    (done / "req-1.json").write_text("the first one")
    ops = OpsInbox(inbox)
    for reason in ("second", "third"):
        write_request(inbox, "req-1.json", {"action": "restart", "reason": reason})
        [pending] = ops.take()
        ops.finish(pending, True, {"restarted": "gateway"})

    assert (done / "req-1.json").read_text() == "the first one"
    assert json.loads((done / "req-1.1.json").read_text())["reason"] == "second"
    assert json.loads((done / "req-1.2.json").read_text())["reason"] == "third"
    assert (done / "req-1.2.json.result.json").exists()


def test_failed_request_result_carries_the_error(inbox: Path):
    write_request(inbox, "req-1.json", {"action": "set_model", "model": "nope"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()
    error = {"code": "bad_value", "message": "bad model name 'nope'"}

    moved = ops.finish(pending, False, error)

    assert moved == inbox / "failed" / "req-1.json"
    assert json.loads(Path(f"{moved}.result.json").read_text())["error"] == error


def test_a_request_is_not_handed_out_again_before_it_is_finished(inbox: Path):
    write_request(inbox, "req-1.json", {"action": "restart"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()
    assert ops.take() == []  # a slow restart is still running
    ops.finish(pending, True, {})
    write_request(inbox, "req-1.json", {"action": "restart"})  # the name used again
    assert [p.name for p in ops.take()] == ["req-1.json"]


def test_a_request_that_cannot_be_moved_runs_once(inbox: Path, caplog: pytest.LogCaptureFixture):
    write_request(inbox, "req-1.json", {"action": "restart"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()
    with frozen_directory(inbox):
        with caplog.at_level(logging.ERROR, logger="clawsup.supervisor.opsfiles"):
            assert ops.finish(pending, True, {}) is None
        assert "will not run again" in caplog.text
        assert ops.take() == []
        assert ops.take() == []
    assert (inbox / "req-1.json").exists()
    assert ops.take() == []  # same file, still not run again


def test_a_symlinked_done_directory_is_not_followed(inbox: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inbox / "done").symlink_to(elsewhere)
    write_request(inbox, "req-1.json", {"action": "restart"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()

    assert ops.finish(pending, True, {}) is None

    assert os.listdir(elsewhere) == []
    assert ops.take() == []


def test_pending_request_names_its_file(inbox: Path):
    path = write_request(inbox, "req-1.json", {"action": "restart"})
    [pending] = pending_requests(inbox)
    assert isinstance(pending, PendingRequest)
    assert (pending.path, pending.name) == (path, "req-1.json")


def test_a_fresh_request_is_picked_up_once_settled(inbox: Path):
    (inbox / "req-1.json").write_text('{"action": "restart"}')
    ops = OpsInbox(inbox, settle=0.2)
    started = time.monotonic()
    [pending] = wait_for_one(ops)
    assert pending.request == RestartRequest()
    assert time.monotonic() - started < 10


def wait_for_one(ops: OpsInbox) -> list[PendingRequest]:
    found: list[PendingRequest] = []

    def some() -> bool:
        found.extend(ops.take())
        return bool(found)

    wait_until(some, timeout=10, what="the request to settle")
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates files for another user")
def test_results_belong_to_the_owner_of_the_inbox(inbox: Path):
    os.chown(inbox, 4321, 4322)
    write_request(inbox, "req-1.json", {"action": "restart"})
    ops = OpsInbox(inbox)
    [pending] = ops.take()

    moved = ops.finish(pending, True, {})

    assert moved is not None
    for path in (moved.parent, Path(f"{moved}.result.json")):
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)


def test_an_inbox_that_is_not_a_directory_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    not_a_directory = tmp_path / "ops-requests"
    not_a_directory.write_text("oops")
    ops = OpsInbox(not_a_directory)
    with caplog.at_level(logging.ERROR, logger="clawsup.supervisor.opsfiles"):
        assert ops.take() == []
        assert ops.take() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot list ops requests in {not_a_directory}: Not a directory"
    ]
