"""Program output kept by clawsup: `clawsupctl logs [-n] [-f] [NAME]` (issue 12 item 1).

Real programs printing on real pipes, a real clawsup, clawsupctl as a whole process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from clawsup.client import Client, CommandFailed
from clawsup.protocol import LogLine
from clawsup.supervisor.logbuffer import LogBuffer, line_cost, rotate
from clawsup.supervisor.relay import MAX_LINE
from tests.util import REPO, Clawsup, python_program, wait_until, write_config

CTL = [sys.executable, "-m", "clawsup.client.ctl"]
FAST = """
start_seconds = "100ms"
stop_timeout = "2s"
backoff = { initial = "100ms", factor = 1.0, max = "100ms", reset_after = "3s", jitter = 0.0 }
"""
SLEEP = "import time\nwhile True: time.sleep(1)\n"

Start = Callable[..., tuple[Clawsup, Client]]


def program(name: str, code: str, extra: str = "", main: bool = False) -> str:
    return textwrap.dedent(f"""
        [programs.{name}]
        command = {python_program(textwrap.dedent(code))}
        main = {"true" if main else "false"}
        """) + FAST + textwrap.dedent(extra)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[tuple[Clawsup, Client]] = []

    def run(body: str) -> tuple[Clawsup, Client]:
        config = write_config(tmp_path, program("gw", SLEEP, main=True) + body)
        clawsup = Clawsup(config, tmp_path / "clawsup.log")
        client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=10)
        started.append((clawsup, client))
        wait_until(lambda: os.path.exists(tmp_path / "run" / "control.sock"), 20,
                   what="the control socket")
        return clawsup, client

    yield run
    for clawsup, client in started:
        client.close()
        clawsup.stop()


def ctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, "--socket", f"ipc://{tmp_path}/run/control.sock", *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO, check=False)


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


# Prints on both streams in turn; the first run then crashes, the second stays up.
TWO_RUNS = """
import os, sys, time
marker = {marker!r}
first = not os.path.exists(marker)
run = "first" if first else "second"
for i in range(3):
    print(f"{{run}} out {{i}}", flush=True)
    time.sleep(0.05)
    print(f"{{run}} err {{i}}", file=sys.stderr, flush=True)
    time.sleep(0.05)
if first:
    open(marker, "w").close()
    sys.exit(1)
while True: time.sleep(1)
"""


def test_logs_has_stdout_and_stderr_in_order_across_a_restart(
        start: Start, tmp_path: Path) -> None:
    clawsup, client = start(program("talker", TWO_RUNS.format(marker=str(tmp_path / "ran"))))
    wait_until(lambda: "second err 2" in texts(client.logs("talker", 100).lines), 20,
               what="the second run's last line")
    lines = client.logs("talker", 100).lines
    expected = [f"{run} {stream} {i}" for run in ("first", "second") for i in range(3)
                for stream in ("out", "err")]
    assert texts(lines) == expected
    assert [line.stream for line in lines] == ["stdout", "stderr"] * 6
    first_pid, second_pid = lines[0].pid, lines[6].pid
    assert first_pid != second_pid, "the restart shows as a new pid"
    assert {line.pid for line in lines[:6]} == {first_pid}
    assert {line.pid for line in lines[6:]} == {second_pid}
    assert [line.seq for line in lines] == sorted(line.seq for line in lines)
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(lines))
    # The container log still gets every line, as before.
    assert "talker | first out 0" in clawsup.log()
    assert "talker | second err 2" in clawsup.log()


def test_logs_n_gives_the_last_lines_and_0_gives_none(start: Start, tmp_path: Path) -> None:
    _, client = start(program("counter", "for i in range(50): print(f'line {i}')\n" + SLEEP))
    wait_until(lambda: "line 49" in texts(client.logs("counter", 1).lines), 20)
    result = ctl(tmp_path, "logs", "-n", "3", "counter")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "line 47\nline 48\nline 49\n", "")
    assert ctl(tmp_path, "logs", "--lines=0", "counter").stdout == ""
    default = ctl(tmp_path, "logs", "counter").stdout.splitlines()
    assert default == [f"line {i}" for i in range(30, 50)], "20 lines by default"


def test_logs_without_a_name_shows_the_main_program(tmp_path: Path) -> None:
    config = write_config(tmp_path, program(
        "gw", "print('main program here', flush=True)\n" + SLEEP, main=True))
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    try:
        clawsup.wait_log("gw | main program here", 20)
        assert ctl(tmp_path, "logs").stdout == "main program here\n"
    finally:
        clawsup.stop()


def test_logs_json_gives_every_field_of_each_line(start: Start, tmp_path: Path) -> None:
    _, client = start(program("one", "import sys; print('to stderr', file=sys.stderr)\n" + SLEEP))
    wait_until(lambda: client.logs("one").lines, 20)
    result = ctl(tmp_path, "logs", "--json", "one")
    record = json.loads(result.stdout)
    assert set(record) == {"seq", "ts", "stream", "pid", "text"}
    assert (record["stream"], record["text"]) == ("stderr", "to stderr")
    assert record["pid"] == client.status().programs[1].pid


def test_the_buffer_keeps_only_the_newest_lines_within_its_bound(
        start: Start, tmp_path: Path) -> None:
    bound = 8192
    _, client = start(program(
        "chatty", "for i in range(2000): print(f'{i:05d} ' + 'x' * 94)\n" + SLEEP,
        extra=f"[programs.chatty.logs]\nbuffer = {bound}\n"))
    wait_until(lambda: texts(client.logs("chatty", 1).lines) == ["01999 " + "x" * 94], 20)
    kept = client.logs("chatty", 100_000).lines
    assert sum(line_cost(line.text) for line in kept) <= bound
    assert len(kept) == bound // line_cost("x" * 100), "as many as fit, no fewer"
    assert [int(line.text[:5]) for line in kept] == list(range(2000 - len(kept), 2000))


def test_a_line_longer_than_max_line_is_cut_and_kept(start: Start, tmp_path: Path) -> None:
    size = 3 * MAX_LINE + 1000
    _, client = start(program(
        "blob", f"import sys; sys.stdout.write('x' * {size}); sys.stdout.flush()\n" + SLEEP))

    def all_read() -> bool:
        return sum(len(t) for t in texts(client.logs("blob", 100).lines)) == size

    wait_until(all_read, 20, what="the whole unterminated line")
    lines = client.logs("blob", 100).lines
    assert len(lines) >= 2, "cut into pieces"
    assert all(len(line.text) <= 2 * MAX_LINE for line in lines)
    assert set("".join(texts(lines))) == {"x"}


def test_the_last_partial_line_is_kept_when_the_program_exits(
        start: Start, tmp_path: Path) -> None:
    _, client = start(program(
        "partial", "import sys; sys.stdout.write('no newline at the end')\n",
        extra='autorestart = "never"\n'))
    wait_until(lambda: texts(client.logs("partial").lines) == ["no newline at the end"], 20)


def test_logs_of_an_unknown_program_is_one_line_and_exit_1(
        start: Start, tmp_path: Path) -> None:
    start("")
    result = ctl(tmp_path, "logs", "nosuch")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "clawsupctl: no program named 'nosuch' (known: gw) (unknown_program)\n"


@pytest.mark.parametrize("value", ["-1", "ten", "1.5"])
def test_logs_n_must_be_a_non_negative_integer(
        start: Start, tmp_path: Path, value: str) -> None:
    start("")
    result = ctl(tmp_path, "logs", "-n", value)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument -n/--lines" in result.stderr


def test_the_wire_refuses_a_negative_line_count(start: Start) -> None:
    _, client = start("")
    with pytest.raises(CommandFailed) as error:
        client.logs("gw", -1)
    assert error.value.code == "bad_value"


def _follower(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    process = subprocess.Popen(
        [*CTL, "--socket", f"ipc://{tmp_path}/run/control.sock", "logs", "-f", *args],
        stdout=open(out, "wb"), stderr=open(err, "wb"), cwd=REPO)  # noqa: SIM115
    return process, out, err


TICKS = """
import time
i = 0
while True:
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
"""


def test_logs_f_prints_new_lines_and_ends_with_0_when_clawsup_shuts_down(
        start: Start, tmp_path: Path) -> None:
    clawsup, client = start(program("ticker", TICKS))
    wait_until(lambda: len(client.logs("ticker", 5).lines) >= 5, 20)
    follower, out, err = _follower(tmp_path, "-n", "2", "ticker")
    try:
        wait_until(lambda: len(out.read_text().splitlines()) >= 12, 20,
                   what="the tail and ten new lines")
        ticks = [int(line.split()[1]) for line in out.read_text().splitlines()]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "no gap, no repeat"
        client.shutdown()
        assert follower.wait(20) == 0
        assert err.read_text() == ""
        clawsup.wait(20)  # it has gone (its status is the main program's)
    finally:
        follower.kill()
        follower.wait()


def test_logs_f_ends_with_0_on_ctrl_c(start: Start, tmp_path: Path) -> None:
    _, client = start(program("ticker", TICKS))
    wait_until(lambda: client.logs("ticker").lines, 20)
    follower, out, err = _follower(tmp_path, "ticker")
    try:
        wait_until(lambda: out.read_text().count("\n") >= 3, 20)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
        assert err.read_text() == ""
    finally:
        follower.kill()
        follower.wait()


def test_logs_f_ends_with_0_when_clawsup_is_killed(start: Start, tmp_path: Path) -> None:
    clawsup, client = start(program("ticker", TICKS))
    wait_until(lambda: client.logs("ticker").lines, 20)
    follower, out, err = _follower(tmp_path, "ticker")
    # Its programs outlive a SIGKILLed clawsup (it is not PID 1 here): ours to end.
    programs = psutil.Process(clawsup.supervisor_pid).children()
    try:
        wait_until(lambda: out.read_text().count("\n") >= 3, 20)
        clawsup.signal(signal.SIGKILL)
        assert follower.wait(20) == 0
        assert err.read_text() == ""
    finally:
        follower.kill()
        follower.wait()
        for process in programs:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_output_goes_to_a_file_rotated_at_max_size_keeping_backups(
        start: Start, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "rot.log"
    line = "{:04d} " + "y" * 45  # 50 bytes and a newline
    _, client = start(program(
        "rot", f"for i in range(200): print({line!r}.format(i), flush=True)\n" + SLEEP,
        extra=f'[programs.rot.logs]\nfile = "{path}"\nmax_size = "1KB"\nbackups = 2\n'))
    wait_until(lambda: path.exists() and path.read_text().endswith(line.format(199) + "\n"),
               20, what="the last line in the file")
    assert not Path(f"{path}.3").exists(), "only two backups"
    files = [Path(f"{path}.2"), Path(f"{path}.1"), path]
    assert all(f.stat().st_size <= 1024 for f in files)
    assert Path(f"{path}.2").stat().st_size == 1020, "rotated at max_size: 20 whole lines"
    written = "".join(f.read_text() for f in files).splitlines()
    assert written == [line.format(i) for i in range(200 - len(written), 200)]
    assert len(client.logs("rot", 1000).lines) == 200, "the buffer keeps its own"


def test_a_file_that_cannot_be_written_is_logged_once_and_supervision_goes_on(
        start: Start, tmp_path: Path) -> None:
    clawsup, client = start(program(
        "full", TICKS, extra='[programs.full.logs]\nfile = "/dev/full"\n'))
    wait_until(lambda: len(client.logs("full", 30).lines) >= 30, 20)
    assert clawsup.log().count("cannot write program output to /dev/full") == 1
    assert client.status().programs[1].state == "RUNNING"
    assert "full | tick 29" in clawsup.log()


# -- the buffer and rotation on their own ------------------------------------------------------


def test_tail_after_gives_only_newer_lines() -> None:
    buffer = LogBuffer(1 << 20)
    buffer.add(1.0, "stdout", 7, [b"a", b"b", b"c", b"d"])
    assert [line.text for line in buffer.tail(10, after=2)] == ["c", "d"]
    assert [line.text for line in buffer.tail(1, after=2)] == ["d"]
    assert buffer.tail(0) == []


def test_a_line_larger_than_the_whole_buffer_is_not_kept() -> None:
    buffer = LogBuffer(400)
    buffer.add(1.0, "stdout", 7, [b"small"])
    added = buffer.add(1.0, "stdout", 7, [b"z" * 500, b"next"])
    assert (added.first_seq, len(added.texts)) == (2, 2), "still numbered and published"
    assert [line.seq for line in buffer.tail(10)] == [1, 3]
    assert [line.text for line in buffer.tail(10)] == ["small", "next"]
    assert buffer.size <= 400


def test_the_charge_is_the_memory_a_kept_line_takes() -> None:
    raw = [f"{i:08d} ".encode() + b"x" * 71 for i in range(1000)]
    buffer = LogBuffer(1 << 30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            buffer.add(float(i), "stdout", 1234, raw)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 < buffer.size / allocated < 1.1, (buffer.size, allocated)


def test_invalid_utf8_is_replaced_not_refused() -> None:
    buffer = LogBuffer(1000)
    buffer.add(1.0, "stdout", 7, [b"caf\xe9 \xff"])
    assert [line.text for line in buffer.tail(1)] == ["caf\ufffd \ufffd"]


def test_resize_drops_the_oldest_lines() -> None:
    buffer = LogBuffer(10_000)
    buffer.add(1.0, "stderr", 7, [str(i).encode() for i in range(50)])
    buffer.resize(3 * line_cost("47"))
    assert [line.text for line in buffer.tail(100)] == ["47", "48", "49"]


def test_rotate_shifts_backups_and_drops_the_oldest(tmp_path: Path) -> None:
    path = str(tmp_path / "out.log")
    for name, text in ((path, "new"), (f"{path}.1", "mid"), (f"{path}.2", "old")):
        Path(name).write_text(text)
    rotate(path, 2)
    assert not os.path.exists(path)
    assert Path(f"{path}.1").read_text() == "new"
    assert Path(f"{path}.2").read_text() == "mid"
    assert not os.path.exists(f"{path}.3")


def test_rotate_without_backups_starts_the_file_over(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("gone")
    rotate(str(path), 0)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_events_leaves_out_program_output_unless_asked_for_it(
        start: Start, tmp_path: Path) -> None:
    _, client = start(program("ticker", TICKS))
    wait_until(lambda: client.logs("ticker").lines, 20)
    asked = ctl(tmp_path, "events", "--kind", "log", "--count", "1")
    event = json.loads(asked.stdout)
    assert (event["kind"], event["program"], event["data"]["stream"]) == (
        "log", "ticker", "stdout")
    assert event["data"]["lines"][0].startswith("tick ")
    every = subprocess.Popen(
        [*CTL, "--socket", f"ipc://{tmp_path}/run/control.sock", "events", "--count", "3"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_until(lambda: client.restart("ticker", wait=True) and every.poll() is not None,
                   30, what="three events from a restart")
        assert every.stdout is not None
        kinds = [json.loads(line)["kind"] for line in every.stdout.read().splitlines()]
        assert len(kinds) == 3
        assert "log" not in kinds
    finally:
        every.kill()
        every.wait()


def test_a_reload_applies_a_new_buffer_size_keeping_the_newest_lines(
        start: Start, tmp_path: Path) -> None:
    _, client = start(program("counter", "for i in range(50): print(f'line {i}')\n" + SLEEP))
    wait_until(lambda: "line 49" in texts(client.logs("counter", 1).lines), 20)
    config = tmp_path / "clawsup.toml"
    config.write_text(config.read_text() + "[programs.counter.logs]\n"
                      f"buffer = {3 * line_cost('line 49')}\n")
    client.reload()
    assert texts(client.logs("counter", 100).lines) == ["line 47", "line 48", "line 49"]
