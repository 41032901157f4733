"""RSS of a real clawsup across a crash loop: what each restart leaves behind.

    python bench/bench_restart_memory.py                      # ~1 minute
    python bench/bench_restart_memory.py --warm-up 1500 --restarts 5000 --json out.json

A ``clawsup run`` (its own process, cgroups off, the janitor and control socket as
shipped) supervises ``true``, restarted 1 ms after each exit with a crash-loop budget it
never reaches. VmRSS of the clawsup process is read from /proc after ``--warm-up``
restarts (the bounded memories fill up: restart times, exited pids) and again after
``--restarts`` more; the restart count comes from ``clawsupctl status`` (the control
socket). The target is the issue's: 5,000 restarts after warm-up cost under 256 KiB.

RSS moves in pages and with the allocator's arenas: the tracemalloc-measured test
(tests/test_memory.py) is the precise one; this is the whole process as the kernel sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clawsup.client import Client  # noqa: E402

TARGET_KIB = 256

CONFIG = """
[supervisor]
run_dir = "{d}/run"
state_dir = "{d}/state"
cgroups = "off"
log_level = "error"

[janitor]
sessions = ["{d}/home/agents/*/sessions"]
restart_flag = "{d}/home/restart.flag"
ops_requests = "{d}/home/ops-requests"

[gateway_config]
path = "{d}/home/clawdbot.json"

[programs.gw]
command = ["true"]
main = true
start_seconds = "0s"
backoff = {{ initial = "1ms", factor = 1.0, max = "1ms", reset_after = "1h", jitter = 0.0 }}
crash_loop = {{ max_restarts = 1000000000, window = "1s", cooldown = "1s" }}
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def restarts(client: Client) -> int:
    return client.status().programs[0].restarts


def wait_restarts(client: Client, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (done := restarts(client)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} restarts of {count} within {timeout:g}s")
        time.sleep(0.2)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--warm-up", type=int, default=1500)
    parser.add_argument("--restarts", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "clawsup.toml"
        config.write_text(CONFIG.format(d=tmp))
        log = open(Path(tmp) / "clawsup.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "clawsup", "run", "-c", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            socket = Path(tmp) / "run" / "control.sock"
            deadline = time.monotonic() + 20
            while not socket.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("clawsup did not open its control socket")
                time.sleep(0.05)
            with Client(f"ipc://{socket}", timeout=20) as client:
                start = wait_restarts(client, args.warm_up, 300)
                before, began = rss_kib(proc.pid), time.monotonic()
                end = wait_restarts(client, start + args.restarts, 600)
                after, took = rss_kib(proc.pid), time.monotonic() - began
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()
    grown = after - before
    result = {"warm_up": start, "restarts": end - start, "seconds": round(took, 1),
              "rss_before_kib": before, "rss_after_kib": after, "grown_kib": grown,
              "bytes_per_restart": round(grown * 1024 / (end - start), 1)}
    print(f"after {start} restarts: VmRSS {before} KiB; after {end - start} more "
          f"({took:.0f}s): {after} KiB; grown {grown} KiB "
          f"({result['bytes_per_restart']} B per restart)")
    ok = grown < TARGET_KIB
    print(f"{'PASS' if ok else 'FAIL'}: {args.restarts} restarts after warm-up cost "
          f"{grown} KiB (target < {TARGET_KIB} KiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
