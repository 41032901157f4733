"""Whole-tree stop time: a program with 50 detached descendants, clawsup vs supervisord 4.3.

    python bench/bench_tree.py                   # 5 runs per supervisor, ~1 minute
    python bench/bench_tree.py --runs 10 --descendants 50 --json out.json

The program starts ``--descendants`` processes the way the gateway's exec tool and
daemons do, none of them in its process group: a third as children in a session of their
own (``setsid``, Node's ``detached: true``), a third double-forked (fork, setsid, fork;
the middle one exits, the daemon is re-parented to the supervisor), a third through
``setsid -f``. Each is a ``sleep`` with an argument unique to the run, so they are found
by their command line whoever their parent is.

Each supervisor is asked to stop the program through its own API, in this process:
clawsup's ``Client.stop`` (once per mode: a cgroup per program, and ``cgroups = "off"``,
the /proc registry), supervisord's XML-RPC ``stopProcess(name, wait=True)`` with
``stopasgroup = true`` and ``killasgroup = true``. Measured from the request: the reply,
and the moment no process of the tree is left (polled from /proc every millisecond, for
at most ``--grace`` seconds after the reply). Survivors are what is still alive then;
supervisord cannot reach processes outside the program's process group, so all of its
descendants survive. The bench kills them afterwards (by pid and start time).

Needs supervisor==4.3.0 in this interpreter's environment (``pip install -e '.[bench]'``)
or ``--supervisord-cmd``; run as root for the cgroup mode.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clawsup.client import Client  # noqa: E402

SLEEP = shutil.which("sleep") or "/bin/sleep"

# The program: N descendants outside its process group, then it waits for its stop signal.
PROGRAM = r"""
import os, subprocess, sys, time
sleep, token, count, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
argv = [sleep, token]
for i in range(count):
    if i % 3 == 0:
        subprocess.Popen(argv, start_new_session=True)  # the exec tool's detached: true
    elif i % 3 == 1:
        middle = os.fork()  # a daemon: fork, setsid, fork, the middle one exits
        if middle == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sleep, argv)
            os._exit(0)
        os.waitpid(middle, 0)
    else:
        subprocess.run(["setsid", "-f", *argv], check=True)
open(ready, "w").close()
while True:
    time.sleep(1)
"""


class BenchError(Exception):
    pass


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def _stat_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def tree_of(token: str) -> dict[int, int]:
    """pid -> start time of every live ``sleep TOKEN`` (the descendants, not the program)."""
    needle = f"{SLEEP}\0{token}\0".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if cmdline == needle:
            start = _stat_start(int(entry))
            if start is not None:
                found[int(entry)] = start
    return found


def kill_left(token: str) -> None:
    for pid, start in tree_of(token).items():
        if _stat_start(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Supervisor:
    """One supervisor running the program ``tree`` in a directory of its own."""

    def __init__(self, kind: str, directory: Path, command: list[str], args: argparse.Namespace):
        self.kind = kind
        self.directory = directory
        directory.mkdir(parents=True)
        if kind.startswith("clawsup"):
            mode = "off" if kind.endswith("registry") else "auto"
            config = directory / "clawsup.toml"
            config.write_text(f"""
[supervisor]
run_dir = "{directory}/run"
state_dir = "{directory}/state"
cgroups = "{mode}"

[janitor]
sessions = ["{directory}/home/agents/*/sessions"]
restart_flag = "{directory}/home/restart.flag"
ops_requests = "{directory}/home/ops-requests"

[gateway_config]
path = "{directory}/home/clawdbot.json"

[programs.keeper]
command = ["{SLEEP}", "100000"]
main = true

[programs.tree]
command = {json.dumps(command)}
autostart = false
start_seconds = "0s"
stop_timeout = "10s"
""")
            argv = [*shlex.split(args.clawsup_cmd), "run", "-c", str(config)]
        else:
            config = directory / "supervisord.conf"
            config.write_text(f"""
[unix_http_server]
file = {directory}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisord]
nodaemon = true
logfile = {directory}/supervisord.log
pidfile = {directory}/supervisord.pid
childlogdir = {directory}

[program:tree]
command = {shlex.join(command)}
autostart = false
autorestart = false
startsecs = 0
stopwaitsecs = 10
stopasgroup = true
killasgroup = true
stdout_logfile = {directory}/tree.out
redirect_stderr = true
""")
            argv = [*shlex.split(args.supervisord_cmd), "-c", str(config)]
        self._log = open(directory / "output.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.client: Client | None = None
        try:
            if kind.startswith("clawsup"):
                self.client = Client(f"ipc://{directory}/run/control.sock", timeout=30)
                wait_until((directory / "run" / "control.sock").exists, 20,
                           f"{kind}'s control socket")
            else:
                wait_until(self._rpc_up, 20, "supervisord's socket")
        except BaseException:
            self.close()  # never leave a supervisor running behind a failed start
            raise

    def _rpc_up(self) -> bool:
        from supervisor.xmlrpc import SupervisorTransport

        # A fresh transport each try: one whose request failed cannot send another.
        transport = SupervisorTransport(None, None, f"unix://{self.directory}/supervisor.sock")
        self.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"  # type: ignore[no-any-return]
        except (OSError, http.client.HTTPException):
            return False

    def start(self) -> None:
        if self.client is not None:
            self.client.start("tree")
        else:
            self.rpc.supervisor.startProcess("tree", True)

    def stop(self) -> None:
        if self.client is not None:
            reply = self.client.stop("tree")
            if reply.state != "STOPPED":
                raise BenchError(f"{self.kind}: tree is {reply.state} after stop")
        else:
            self.rpc.supervisor.stopProcess("tree", True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def supervisor(kind: str, directory: Path, command: list[str],
               args: argparse.Namespace) -> Iterator[Supervisor]:
    running = Supervisor(kind, directory, command, args)
    try:
        yield running
    finally:
        running.close()


def one_run(sup: Supervisor, token: str, ready: Path, descendants: int,
            grace: float) -> dict[str, Any]:
    ready.unlink(missing_ok=True)
    sup.start()
    wait_until(ready.exists, 30, "the program to start its descendants")

    def all_started() -> dict[int, int] | None:
        found = tree_of(token)
        return found if len(found) == descendants else None

    before = wait_until(all_started, 30, f"{descendants} descendants")
    began = time.perf_counter()
    sup.stop()
    replied = time.perf_counter() - began
    deadline = time.perf_counter() + grace
    gone_at = None
    while time.perf_counter() < deadline:
        left = {pid for pid, start in tree_of(token).items() if before.get(pid) == start}
        if not left:
            gone_at = time.perf_counter() - began
            break
        time.sleep(0.001)
    survivors = len({pid for pid, start in tree_of(token).items() if before.get(pid) == start})
    kill_left(token)
    wait_until(lambda: not tree_of(token), 10, "survivors killed by the bench")
    return {"reply_ms": replied * 1000, "all_gone_ms": None if gone_at is None else gone_at * 1000,
            "survivors": survivors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--descendants", type=int, default=50)
    parser.add_argument("--grace", type=float, default=2.0,
                        help="seconds after the stop reply to wait for the tree to be gone")
    parser.add_argument("--clawsup-cmd", default=f"{sys.executable} -m clawsup")
    default_supervisord = str(Path(sys.executable).with_name("supervisord"))
    if not Path(default_supervisord).exists():
        default_supervisord = shutil.which("supervisord") or "supervisord"
    parser.add_argument("--supervisord-cmd", default=default_supervisord)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="clawsup-bench-tree-"))
    script = workdir / "program.py"
    script.write_text(PROGRAM)
    results: dict[str, list[dict[str, Any]]] = {}
    kinds = ["clawsup-cgroup", "clawsup-registry", "supervisord"]
    sups: dict[str, Supervisor] = {}
    tokens: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            for kind in kinds:
                token = str(700000 + len(tokens) * 1000 + os.getpid() % 1000)
                tokens.append(token)
                ready = workdir / f"{kind}.ready"
                command = [sys.executable, str(script), SLEEP, token, str(args.descendants),
                           str(ready)]
                sups[kind] = stack.enter_context(
                    supervisor(kind, workdir / kind, command, args))
                results[kind] = []
            # Interleaved, so load from elsewhere falls on every side alike.
            for _ in range(args.runs):
                for kind, token in zip(kinds, tokens, strict=True):
                    run = one_run(sups[kind], token, workdir / f"{kind}.ready",
                                  args.descendants, args.grace)
                    results[kind].append(run)
                    gone = run["all_gone_ms"]
                    gone_text = "never" if gone is None else f"{gone:.1f} ms"
                    print(f"{kind:17} reply {run['reply_ms']:8.1f} ms  all gone {gone_text:>10}"
                          f"  survivors {run['survivors']}", flush=True)
    finally:
        for token in tokens:
            kill_left(token)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nwhole-tree stop, {args.descendants} detached descendants, median of {args.runs} "
          f"(load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus):")
    base = statistics.median(r["reply_ms"] for r in results["supervisord"])
    print(f"{'':17} {'reply ms':>9} {'x supervisord':>14} {'all gone ms':>12} {'survivors':>10}")
    for kind in kinds:
        runs = results[kind]
        reply = statistics.median(r["reply_ms"] for r in runs)
        gone = [r["all_gone_ms"] for r in runs if r["all_gone_ms"] is not None]
        gone_text = f"{statistics.median(gone):.1f}" if len(gone) == len(runs) else "never"
        survivors = statistics.median(r["survivors"] for r in runs)
        print(f"{kind:17} {reply:9.1f} {reply / base:14.2f} {gone_text:>12} {survivors:10g}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
