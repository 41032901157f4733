"""Restart to serving again on the real gateway: clawsup against the gateway alone.

    python bench/bench_realgw.py [--rounds 5] [--json out.json] [--keep]

Needs the pinned release (``tools/install-gateway``, run first; reused from its cache)
and port 18789 free. Each round times two restarts of the same warm gateway (same home,
config, command, environment and compile cache), one after the other:

- **clawsup**: the gateway runs under ``clawsup run -c etc/clawsup.toml -c override``
  (the override of tests/realgw); the clock starts when ``restart`` (``wait=False``) is
  sent on the control socket.
- **alone**: the same command started directly by this script (its own process group,
  output to a file); the clock starts when SIGTERM is sent to its group, the script reaps
  it and spawns the command again at once.

Both are split into the same phases, observed the same way: **signal** (until the old
gateway's SIGTERM handler ran, from its own log line's timestamp), **shutdown** (until it
exited: a pidfd), **respawn** (until a new ``node`` was exec'd under the supervisor: clawsup
or this script; polled each 1 ms), **start** (until the new one listens on the port and
answers HTTP; polled each 5 ms). Shutdown and start are the gateway's own work, seconds
that swing with the load of the box; what clawsup adds is in signal (the request over the
control socket) and respawn (reaping, clearing the exited gateway's locks, spawning).
clawsup's share = median(signal + respawn) under clawsup - the same for the script
alone; target < 100 ms. The difference of the total medians is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clawsup.client import Client  # noqa: E402
from tests.realgw.fake_model import FakeModelServer  # noqa: E402
from tests.realgw.harness import (  # noqa: E402
    GATEWAY_PORT,
    INSTALLER,
    GatewayInstall,
    RealRun,
    http_answers,
    port_in_use,
)

POLL = 0.005
TARGET_MS = 100.0
SHIPPED_COMMAND = ["node", "dist/index.js", "gateway", "--bind", "lan", "--port", str(GATEWAY_PORT)]
# The gateway's own line when its SIGTERM handler runs, with its wall-clock timestamp.
SIGTERM_LINE = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z \[gateway\] signal SIGTERM received")
PHASES = ("signal", "shutdown", "respawn", "start", "total")


def install() -> GatewayInstall:
    app = subprocess.run([str(INSTALLER)], capture_output=True, text=True, check=True)
    node = subprocess.run([str(INSTALLER), "--print-node"], capture_output=True, text=True,
                          check=True)
    found = GatewayInstall(app=Path(app.stdout.split()[-1]), node=Path(node.stdout.split()[-1]))
    found.tmpdir.mkdir(exist_ok=True)
    return found


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def is_node(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "node"
    except OSError:
        return False


def sigterm_seen(log: Path, offset: int, deadline: float) -> float:
    """Wall-clock time at which the gateway logged that its SIGTERM handler ran."""
    while True:
        with open(log, "rb") as handle:
            handle.seek(offset)
            found = SIGTERM_LINE.search(handle.read())
        if found:
            stamp = datetime.strptime(found.group(1).decode(), "%Y-%m-%dT%H:%M:%S.%f")
            return stamp.replace(tzinfo=UTC).timestamp()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SIGTERM line in {log}")
        time.sleep(POLL)


def time_restart(begin: float, begin_wall: float, old: int, pidfd: int, parent: int,
                 log: Path, log_offset: int,
                 respawn: Callable[[], None] | None = None) -> dict[str, float]:
    """The phases of one restart, from ``begin`` (the request) to the new gateway serving.

    signal: until the old gateway's SIGTERM handler ran (its own log timestamp);
    shutdown: then until it exited (a pidfd turns readable at exit);
    respawn: then until a new node process was exec'd under ``parent``;
    start: then until it listens and answers HTTP.
    """
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if not poller.poll(60_000):
        raise TimeoutError("the old gateway did not exit")
    exited = time.monotonic()
    if respawn is not None:
        respawn()  # the script's own reap and spawn, as clawsup's happen in clawsup
    while True:
        new = [pid for pid in children(parent) if pid != old and is_node(pid)]
        if new:
            execd = time.monotonic()
            break
        if time.monotonic() > exited + 60:
            raise TimeoutError("no new gateway")
        time.sleep(0.001)
    while not (listener_pid_serving()):
        if time.monotonic() > execd + 180:
            raise TimeoutError("the new gateway does not serve")
        time.sleep(POLL)
    serving = time.monotonic()
    handled = sigterm_seen(log, log_offset, serving + 10) - begin_wall
    return {"signal": handled, "shutdown": exited - begin - handled,
            "respawn": execd - exited, "start": serving - execd, "total": serving - begin}


def listener_pid_serving() -> bool:
    return bool(listener_inodes(GATEWAY_PORT)) and http_answers(timeout=1)


def listener_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (state 0A in /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def wait_serving(deadline: float) -> None:
    while not listener_pid_serving():
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway does not serve")
        time.sleep(POLL)


class Alone:
    """The shipped command run directly, as clawsup's override would run it."""

    def __init__(self, run: RealRun) -> None:
        self.run = run
        self.env = {**run.env, "CLAWDBOT_NO_RESPAWN": "1"}
        self.log_path = run.tmp / "alone.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.proc = subprocess.Popen(SHIPPED_COMMAND, cwd=self.run.install.app, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, process_group=0)

    def terminate(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)

    def restart(self) -> dict[str, float]:
        """SIGTERM to the group, reap, spawn again at once: what clawsup does, by hand."""
        assert self.proc is not None
        old = self.proc.pid
        pidfd = os.pidfd_open(old)
        offset = self.log_path.stat().st_size
        try:
            begin, begin_wall = time.monotonic(), time.time()
            os.killpg(old, signal.SIGTERM)
            return time_restart(begin, begin_wall, old, pidfd, os.getpid(), self.log_path,
                                offset, respawn=self._reap_and_spawn)
        finally:
            os.close(pidfd)

    def _reap_and_spawn(self) -> None:
        assert self.proc is not None
        self.proc.wait(30)
        self.spawn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self.log.close()


def clawsup_restart(run: RealRun, client: Client) -> dict[str, float]:
    old = run.serving()["pid"]
    pidfd = os.pidfd_open(old)
    offset = run.log_path.stat().st_size
    try:
        begin, begin_wall = time.monotonic(), time.time()
        client.restart(wait=False)
        return time_restart(begin, begin_wall, old, pidfd, run.supervisor_pid, run.log_path,
                            offset)
    finally:
        os.close(pidfd)


def summary(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(sample[key] for sample in samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the samples here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if port_in_use(GATEWAY_PORT):
        print(f"port {GATEWAY_PORT} is in use: stop whatever listens there first", file=sys.stderr)
        return 2
    gateway = install()
    tmp = Path(tempfile.mkdtemp(prefix="bench-realgw-"))
    model = FakeModelServer().start()
    run = RealRun(tmp, gateway, model)
    alone = Alone(run)
    results: dict[str, list[dict[str, float]]] = {"clawsup": [], "alone": []}
    try:
        run.start()
        run.serving(what="clawsup's first (warm-up) start")
        client = Client(run.endpoint, timeout=180)
        # One unmeasured restart each way first: compile cache, page cache, the CLI lock.
        clawsup_restart(run, client)
        for round_number in range(1, args.rounds + 1):
            run.serving()
            results["clawsup"].append(clawsup_restart(run, client))
            run.serving()
            client.stop()
            alone.spawn()
            wait_serving(time.monotonic() + 180)
            if round_number == 1:
                alone.restart()  # the warm-up of the direct run
            results["alone"].append(alone.restart())
            alone.terminate()
            client.start(wait=False)
            print(f"round {round_number}: " + "; ".join(
                f"{name} " + " ".join(f"{k} {v * 1000:.0f}" for k, v in samples[-1].items())
                for name, samples in results.items()), flush=True)
        client.close()
    finally:
        alone.stop()
        run.stop()
        model.stop()
    print()
    print(f"restart to serving again, warm, median of {args.rounds} "
          f"(load average {os.getloadavg()[0]:.1f}):")
    print(f"{'':>12}" + "".join(f"{phase + ' ms':>12}" for phase in PHASES))
    for name, samples in results.items():
        print(f"{name:>12}" + "".join(f"{summary(samples, phase):12.1f}" for phase in PHASES))
    # What clawsup does is in signal (the request reaching the gateway) and respawn (exit
    # to the new exec); shutdown and start are the gateway's own and differ only by noise.
    own = {name: [s["signal"] + s["respawn"] for s in samples]
           for name, samples in results.items()}
    share = (statistics.median(own["clawsup"]) - statistics.median(own["alone"])) * 1000
    total = summary(results["clawsup"], "total") - summary(results["alone"], "total")
    verdict = "PASS" if share < TARGET_MS else "FAIL"
    print(f"clawsup's share (signal + respawn, clawsup - alone): {share:+.1f} ms; "
          f"target < {TARGET_MS:.0f} ms: {verdict}")
    print(f"difference of the total medians (the gateway's start-up noise included): "
          f"{total:+.0f} ms")
    if args.json:
        payload: dict[str, Any] = {"samples": results, "share_ms": share}
        args.json.write_text(json.dumps(payload, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    return 0 if share < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
