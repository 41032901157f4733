"""Logs benchmark: ``clawsupctl logs -n 1000`` as a whole process against
``supervisorctl tail``, and what keeping the output costs the supervisor.

    python bench/bench_logs.py [--runs 20] [--lines 5000]

1. A real clawsup and a real supervisord 4.3 (``pip install -e '.[bench]'``), each with one
   program that printed ``--lines`` lines of 80 characters and then sleeps. Timed in the
   same run, interleaved, so machine load hits both alike:
   ``clawsupctl logs -n 1000 talker`` and ``supervisorctl tail -81000 talker`` (supervisorctl
   counts bytes, not lines: 1000 lines of 81 bytes). Both outputs are checked to end with
   the program's last line. Ratios by min and median.
2. The supervisor's CPU for the output itself: a program printing 100,000 lines as fast as
   it can, the CPU time clawsup spends (utime + stime from /proc) from spawn to the last
   line in its buffer, per line; the same for supervisord writing its log file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TAIL_LINES = 1000
LINE = 80  # characters, plus the newline


def talker(lines: int, go: Path | None = None) -> str:
    """Prints ``lines`` lines (once ``go`` exists, if given), then sleeps."""
    wait = f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n" if go else ""
    return (f"import os, sys, time\n{wait}"
            f"for i in range({lines}): print(f'{{i:08d}} ' + 'x' * {LINE - 9})\n"
            "sys.stdout.flush()\nwhile True: time.sleep(1)\n")


def last_line(lines: int) -> str:
    return f"{lines - 1:08d} " + "x" * (LINE - 9)


def _wait_for(ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("not ready in time")
        time.sleep(0.05)


@contextmanager
def clawsup(workdir: Path, code: str) -> Iterator[tuple[list[str], int]]:
    base = workdir / "clawsup"
    base.mkdir()
    config = base / "clawsup.toml"
    config.write_text(textwrap.dedent(f"""
        [supervisor]
        run_dir = "{base}/run"
        state_dir = "{base}/state"
        [janitor]
        sessions = ["{base}/home/agents/*/sessions"]
        restart_flag = "{base}/home/restart.flag"
        ops_requests = "{base}/home/ops-requests"
        [gateway_config]
        path = "{base}/home/clawdbot.json"
        [programs.talker]
        main = true
        command = {json.dumps([sys.executable, "-c", code])}
        start_seconds = "100ms"
        """))
    proc = subprocess.Popen([sys.executable, "-m", "clawsup", "run", "-c", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctl = [str(BIN / "clawsupctl"), "--socket", f"ipc://{base}/run/control.sock"]
    try:
        _wait_for((base / "run" / "control.sock").exists)
        yield ctl, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@contextmanager
def supervisord(workdir: Path, code: str) -> Iterator[tuple[list[str], int]]:
    base = workdir / "supervisord"
    base.mkdir()
    conf = base / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [unix_http_server]
        file={base}/supervisor.sock
        [supervisord]
        logfile={base}/supervisord.log
        pidfile={base}/supervisord.pid
        childlogdir={base}
        nodaemon=true
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [supervisorctl]
        serverurl=unix://{base}/supervisor.sock
        [program:talker]
        command={sys.executable} -c "exec(open('{base}/talker.py').read())"
        stdout_logfile={base}/talker.log
        redirect_stderr=true
        """))
    (base / "talker.py").write_text(code)
    proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL)
    ctl = [str(BIN / "supervisorctl"), "-c", str(conf)]
    try:
        _wait_for(lambda: b"RUNNING" in subprocess.run([*ctl, "status"], capture_output=True,
                                                       check=False).stdout)
        yield ctl, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def byte_compile_clawsup(workdir: Path) -> None:
    code = ("import clawsup, compileall, os\n"
            "compileall.compile_dir(os.path.dirname(clawsup.__file__), quiet=1)")
    subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True)


def bench_tail(workdir: Path, lines: int, runs: int) -> None:
    code = talker(lines)
    last = last_line(lines)
    with clawsup(workdir, code) as (clawsupctl, _), supervisord(workdir, code) as (superctl, _):
        commands = {
            "clawsupctl logs -n 1000": [*clawsupctl, "logs", "-n", str(TAIL_LINES), "talker"],
            "supervisorctl tail -81000": [*superctl, "tail", f"-{TAIL_LINES * (LINE + 1)}",
                                          "talker"],
        }
        for name, command in commands.items():
            _wait_for(lambda command=command: subprocess.run(  # type: ignore[misc]
                command, capture_output=True, text=True, check=False).stdout.rstrip()
                .endswith(last))
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            print(f"   {name}: {len(out.splitlines())} lines, {len(out)} bytes")
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                began = time.perf_counter()
                subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
                samples[name].append(time.perf_counter() - began)
    print(f"   {'':30} {'min ms':>8} {'median ms':>10}")
    for name, taken in samples.items():
        print(f"   {name:30} {min(taken) * 1e3:8.1f} {statistics.median(taken) * 1e3:10.1f}")
    ours, theirs = samples.values()
    print(f"   clawsupctl / supervisorctl: {min(ours) / min(theirs):.2f}x (min), "
          f"{statistics.median(ours) / statistics.median(theirs):.2f}x (median)")


def bench_ingest(workdir: Path, lines: int) -> None:
    go = workdir / "go"
    code = talker(lines, go)
    last = last_line(lines)
    print(f"   {'':35} {'CPU s':>8} {'us/line':>8}")
    with clawsup(workdir / "ingest", code) as (clawsupctl, pid):
        time.sleep(2)  # start-up done
        before = cpu_seconds(pid)
        go.touch()
        _wait_for(lambda: subprocess.run([*clawsupctl, "logs", "-n", "1", "talker"],
                                         capture_output=True, text=True, check=False)
                  .stdout.strip() == last, 120)
        used = cpu_seconds(pid) - before
        print(f"   {'clawsup (container log, buffer, event)':35} {used:8.2f} "
              f"{used / lines * 1e6:8.1f}")
    go.unlink()
    with supervisord(workdir / "ingest", code) as (_, pid):
        time.sleep(2)
        before = cpu_seconds(pid)
        go.touch()
        log = workdir / "ingest" / "supervisord" / "talker.log"
        _wait_for(lambda: log.exists() and log.read_text().rstrip().endswith(last), 120)
        used = cpu_seconds(pid) - before
        print(f"   {'supervisord (log file)':35} {used:8.2f} {used / lines * 1e6:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--ingest-lines", type=int, default=100_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        workdir = Path(tmp)
        byte_compile_clawsup(workdir)
        print(f"\n1. the last {TAIL_LINES} of {args.lines} lines, whole process, "
              f"{args.runs} interleaved runs each")
        bench_tail(workdir, args.lines, args.runs)
        (workdir / "ingest").mkdir()
        print(f"\n2. supervisor CPU for {args.ingest_lines} lines printed at full speed")
        bench_ingest(workdir, args.ingest_lines)


if __name__ == "__main__":
    main()
