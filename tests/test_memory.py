"""PID 1 gives back the memory start-up freed (glibc keeps it mapped otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.util import REPO, write_config

PROBE = r"""
import sys
from clawsup.supervisor.daemon import release_free_memory

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))

# 40 MiB in 2 KiB blocks (malloc, not pymalloc), then a small block on top that pins the
# heap's end, so glibc cannot give the rest back by itself when it is freed.
blocks = [bytearray(2048) for _ in range(20_000)]
pin = bytearray(2048)
del blocks
before = rss_kib()
released = release_free_memory()
after = rss_kib()
print(released, before, after)
"""


def test_release_free_memory_returns_freed_heap_pages():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    released, before, after = done.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 20 * 1024  # most of the 40 MiB comes back


# A supervisor in a process of its own (it becomes a subreaper and takes SIGCHLD: not
# something the test runner should), its program exiting at once, restarted after 1 ms
# for ever. The Python heap is measured by tracemalloc from after the warm-up (the
# restart-time window and the exited-pid memory fill up: both are bounded) to after
# RESTARTS more restarts.
RESTARTS = 5000
WARM_UP = 1100
RESTART_STORM = r"""
import asyncio, gc, logging, sys, tracemalloc
from clawsup.supervisor.config import load_config
from clawsup.supervisor.main import build

warm_up, restarts = int(sys.argv[2]), int(sys.argv[3])
logging.basicConfig(level=logging.ERROR)

async def main():
    supervisor = build(load_config(sys.argv[1]), [sys.argv[1]])
    run = asyncio.create_task(supervisor.run())
    while "gw" not in supervisor.programs:
        await asyncio.sleep(0.01)
    gw = supervisor.programs["gw"]
    while gw.restarts < warm_up:
        await asyncio.sleep(0.05)
    gc.collect()
    tracemalloc.start(1)
    before, start = tracemalloc.get_traced_memory()[0], gw.restarts
    while gw.restarts < start + restarts:
        await asyncio.sleep(0.05)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    supervisor.request_shutdown()
    print(gw.restarts - start, grown, await run)

asyncio.run(main())
"""


def test_5000_restarts_after_warm_up_grow_the_heap_by_less_than_256_kib(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, """
[programs.gw]
command = ["true"]
main = true
start_seconds = "0s"
backoff = { initial = "1ms", factor = 1.0, max = "1ms", reset_after = "1h", jitter = 0.0 }
crash_loop = { max_restarts = 1000000000, window = "1s", cooldown = "1s" }
""", supervisor='cgroups = "off"')
    done = subprocess.run(
        [sys.executable, "-c", RESTART_STORM, str(config), str(WARM_UP), str(RESTARTS)],
        capture_output=True, text=True, timeout=120, check=True, cwd=REPO,
    )
    restarted, grown, _status = (int(word) for word in done.stdout.split())
    assert restarted >= RESTARTS
    assert grown < 256 * 1024, f"{grown} bytes of heap kept over {restarted} restarts"
