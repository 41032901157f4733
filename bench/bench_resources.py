"""Resources benchmark: idle CPU and RSS of clawsup with logs and resource limits on, beside
supervisord in the same run, and what one reading of a program tree's usage costs.

    python bench/bench_resources.py [--seconds 60] [--before /work/main]

1. Idle. Two real clawsups and a real supervisord 4.3 (``pip install -e '.[bench]'``),
   each supervising the same program tree: a sleeping parent and a sleeping child holding
   40 MiB. Both clawsups keep the output (the default 1 MB buffer, and a rotated file);
   one has ``[programs.tree.resources]`` limits far above what the tree uses, so it reads
   the tree's RSS and CPU every 5 s and judges nothing, the other none, so it reads them
   every 30 s (nobody looks at status); supervisord writes the output to its log files.
   With ``--before REPO``, a fourth: clawsup from that checkout (the config without
   limits), to show what the readings add. All run at once over the same ``--seconds``,
   so machine load hits them alike. CPU from schedstat (ns) and from utime + stime
   (ticks); RSS and PSS at the end.
2. One reading, in this process, against the clawsup of part 1: ``TreeUsage.read`` in
   cgroup mode (members also from ``cgroup.procs``) and in registry mode (members from
   the walk), both reading each member's ``/proc/PID/stat`` for RSS and CPU; each file
   alone, ``cpu.stat`` included (the cgroup's CPU figure, which usage.py does not read:
   see why there); psutil reading the same two figures for the same processes; and what
   ``import psutil`` adds to a fresh interpreter's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c",
                  "import time\\nheld = b'x' * (40 << 20)\\nwhile True: time.sleep(3600)"])
while True: time.sleep(3600)
"""


def _wait_for(ready: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("not ready in time")
        time.sleep(0.05)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_ticks(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12])


def schedstat_ns(pid: int) -> int:
    # Every thread's: the sampler is a thread of its own.
    return sum(int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
               for tid in os.listdir(f"/proc/{pid}/task"))


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text()
               .splitlines() if line.startswith("Pss:"))
    return rss, pss


class Supervisor:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                     start_new_session=True)

    def tree(self) -> list[int]:
        """The program's processes (the supervisor's descendants)."""
        found, queue = [], [self.proc.pid]
        while queue:
            pid = queue.pop()
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                queue.extend(int(c) for c in children)
                found.extend(int(c) for c in children)
        return found

    def stop(self) -> None:
        tree = self.tree() if self.proc.poll() is None else []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def clawsup_config(base: Path, resources: bool) -> Path:
    base.mkdir(parents=True)
    config = base / "clawsup.toml"
    limits = textwrap.dedent("""
        [programs.tree.resources]
        max_rss = "4GB"
        max_cpu = 400
        window = "60s"
        """) if resources else ""
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
        [programs.tree]
        main = true
        command = {json.dumps([sys.executable, "-c", TREE])}
        [programs.tree.logs]
        buffer = "1MB"
        file = "{base}/tree.log"
        """) + (limits if resources else ""))
    return config


def supervisord_config(base: Path) -> Path:
    base.mkdir(parents=True)
    (base / "tree.py").write_text(TREE)
    conf = base / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [supervisord]
        logfile={base}/supervisord.log
        pidfile={base}/supervisord.pid
        childlogdir={base}
        nodaemon=true
        [program:tree]
        command={sys.executable} {base}/tree.py
        stdout_logfile={base}/tree.out
        stderr_logfile={base}/tree.err
        """))
    return conf


def bench_idle(workdir: Path, seconds: float, before: Path | None) -> list[Supervisor]:
    clawsup = [sys.executable, "-m", "clawsup", "run", "-c"]
    sups = [Supervisor("clawsup limits", [*clawsup, str(clawsup_config(workdir / "a", True))]),
            Supervisor("clawsup no limit", [*clawsup, str(clawsup_config(workdir / "b", False))]),
            Supervisor("supervisord", [str(BIN / "supervisord"), "-c",
                                       str(supervisord_config(workdir / "supervisord"))])]
    if before is not None:
        # That checkout's clawsup first on the path: this venv's is this worktree's.
        sups.append(Supervisor("clawsup before", [
            *clawsup, str(clawsup_config(workdir / "before", False))],
            env={"PYTHONPATH": str(before)}, cwd=before))
    for sup in sups:
        _wait_for(lambda sup=sup: len(sup.tree()) >= 2)  # type: ignore[misc]
    time.sleep(5)  # start-up (imports, config, the first spawn) is not idle time
    start = {sup.name: (schedstat_ns(sup.proc.pid), cpu_ticks(sup.proc.pid)) for sup in sups}
    time.sleep(seconds)
    print(f"   {'':18} {'CPU ms':>8} {'(ticks)':>8} {'RSS MiB':>8} {'PSS MiB':>8}")
    figures = {}
    for sup in sups:
        ns, ticks = start[sup.name]
        cpu_ms = (schedstat_ns(sup.proc.pid) - ns) / 1e6
        tick_ms = (cpu_ticks(sup.proc.pid) - ticks) * 1000 / CLK_TCK
        rss, pss = memory_kib(sup.proc.pid)
        figures[sup.name] = (cpu_ms, rss, pss)
        print(f"   {sup.name:18} {cpu_ms:8.1f} {tick_ms:8.0f} {rss / 1024:8.1f} {pss / 1024:8.1f}")
    for against in ("supervisord", "clawsup before"):
        if against not in figures:
            continue
        theirs = figures[against]
        for name in ("clawsup limits", "clawsup no limit"):
            ours = figures[name]
            print(f"   {name} / {against}: CPU {ours[0] / theirs[0]:.2f}x, "
                  f"RSS {ours[1] / theirs[1]:.2f}x, PSS {ours[2] / theirs[2]:.2f}x")
    return sups


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def bench_reading(clawsup: Supervisor, runs: int) -> None:
    from clawsup.supervisor import procinfo
    from clawsup.supervisor.tree import find_own_cgroup
    from clawsup.supervisor.usage import TreeSnapshot, TreeUsage

    tree = clawsup.tree()
    main, rest = tree[0], tree[1:]
    home = find_own_cgroup()
    cgroup = next(iter(home.glob(f"clawsup-{clawsup.proc.pid}-*/tree")), None) if home else None
    cases: dict[str, Callable[[], object]] = {}
    registry = TreeUsage(procinfo.StatReader(main),
                         lambda: TreeSnapshot(members=(), cgroup=None))
    cases["registry mode (/proc stat of each)"] = lambda: registry.read(rest, time.monotonic())
    if cgroup is not None:
        procs = cgroup / "cgroup.procs"

        def snapshot() -> TreeSnapshot:
            return TreeSnapshot(members=(), cgroup=str(cgroup))

        in_cgroup = TreeUsage(procinfo.StatReader(main), snapshot)
        cases["cgroup mode (+ cgroup.procs)"] = lambda: in_cgroup.read(
            rest, time.monotonic())
        cases["  cpu.stat alone"] = lambda: _read(cgroup / "cpu.stat")
        cases["  cgroup.procs alone"] = lambda: _read(procs)
    else:
        print("   (clawsup runs in registry mode here: no cgroup mode to time)")
    cases["  one /proc/PID/stat alone"] = lambda: _read(Path(f"/proc/{main}/stat"))
    import psutil

    processes = [psutil.Process(pid) for pid in tree]

    def with_psutil() -> object:
        total_rss, total_cpu = 0, 0.0
        for process in processes:
            with process.oneshot():
                total_rss += process.memory_info().rss
                times = process.cpu_times()
                total_cpu += times.user + times.system
        return total_rss, total_cpu

    cases["psutil, the same two figures"] = with_psutil
    print(f"   a tree of {len(tree)} processes, best of 5 x {runs} reads")
    for name, read in cases.items():
        best = min(timeit.repeat(read, number=runs, repeat=5)) / runs
        print(f"   {name:40} {best * 1e6:7.1f} us")
    code = ("import os\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
            "before = rss()\nimport psutil\nprint((rss() - before) / 2**20)")
    added = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)
    print(f"   import psutil adds {added:.1f} MiB of RSS to a fresh interpreter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--before", type=Path, default=None,
                        help="also run the clawsup of this checkout, without the readings")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-resources-") as tmp:
        print(f"\n1. idle over {args.seconds:g} s, one program tree each (parent + child "
              "holding 40 MiB)")
        sups = bench_idle(Path(tmp), args.seconds, args.before)
        try:
            print("\n2. one reading of the tree's RSS and CPU, in this process")
            bench_reading(sups[0], args.runs)
        finally:
            for sup in sups:
                sup.stop()


if __name__ == "__main__":
    main()
