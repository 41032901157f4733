"""The session janitor against the old watchdog's shell pass, at 1k / 10k / 100k entries.

Not a test: run it and read the table.

    python bench/bench_janitor.py                   # 1000, 10000 and 100000 entries
    python bench/bench_janitor.py --sizes 1000,10000 --repeat 5

Per size it builds one sessions directory on local disk: 1% transcript locks (held by
this live process, mtime ten minutes back so the shell's ``-mmin +5`` finds them), 1%
stamped archives, the rest small transcripts, none over the size limit -- so both sides
find the same nothing to do, and repeated passes see the same tree. Then it times,
each the best of ``--repeat`` runs (other load on the machine only ever adds time) with a
warm page cache; the shell passes and the cold pass take turns, one run of each per
round, so that load from elsewhere falls on both sides of their ratio:

- shell: the watchdog's pass, ``find DIR -name '*.lock' -mmin +5`` then
  ``find DIR -name '*.jsonl' -size +10M``, in one ``sh -c``;
- shell+kill: the same, reading each old lock's pid (sed) and ``kill -0`` on it;
- cold full pass: a new Janitor's first sweep (glob, inotify watch, list, one lstat per
  transcript, lock and archive, lock contents read, owners probed);
- warm full pass: the periodic full pass of a janitor running all along: list the
  directory, stat only what inotify reported and the locks;
- steady: one interval's sweep after ``--touch`` transcripts were appended to (the
  gateway's writing, not timed): drain inotify, stat what changed, re-judge the locks;
- amortized: steady with the warm full pass spread over ``full_pass_every / interval``
  intervals (12 with the defaults), what the janitor costs per interval in the long run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from clawsup.supervisor.config import JanitorConfig
from clawsup.supervisor.janitor import Janitor, archive_name

SHELL_PASS = "find {d} -name '*.lock' -mmin +5; find {d} -name '*.jsonl' -size +10M"
SHELL_KILL_PASS = (
    "for f in $(find {d} -name '*.lock' -mmin +5); do "
    'pid=$(sed -n \'s/.*"pid": *\\([0-9]*\\).*/\\1/p\' "$f"); kill -0 "$pid" 2>/dev/null; '
    "done; find {d} -name '*.jsonl' -size +10M"
)
LINE = b'{"type":"message","id":"m1","message":{"role":"user","content":"bom dia"}}\n'


def build(sessions: Path, entries: int) -> list[Path]:
    """Create the tree; returns the transcripts."""
    sessions.mkdir(parents=True)
    locks = max(1, entries // 100)
    archives = max(1, entries // 100)
    now = time.time()
    created = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    lock_body = json.dumps({"pid": os.getpid(), "createdAt": created}, indent=2).encode()
    old = now - 600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    transcripts = []
    for n in range(entries - locks - archives):
        path = sessions / f"{n:08x}-3c2e-4b8a-9d51-2f4e6a1b0c93.jsonl"
        fd = os.open(path, flags, 0o600)
        os.write(fd, b'{"type":"session","version":3}\n' + LINE)
        os.close(fd)
        transcripts.append(path)
    for n in range(locks):
        path = sessions / f"{n:08x}-3c2e-4b8a-9d51-2f4e6a1b0c93.jsonl.lock"
        fd = os.open(path, flags, 0o600)
        os.write(fd, lock_body)
        os.close(fd)
        os.utime(path, (old, old))
    for n in range(archives):
        name = archive_name(f"{n:08x}-aaaa-4b8a-9d51-2f4e6a1b0c93.jsonl", now - 3600)
        fd = os.open(sessions / name, flags, 0o600)
        os.write(fd, LINE)
        os.close(fd)
    return transcripts


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def best_of_interleaved(repeat: int, actions: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each action's best time over ``repeat`` rounds, one run of each per round: a burst
    of load from elsewhere lands on both sides of a comparison, not on one."""
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(repeat):
        for name, action in actions.items():
            best[name] = min(best[name], action())
    return best


def shell(script: str) -> float:
    return timed(lambda: subprocess.run(["sh", "-c", script], check=True, stdout=subprocess.DEVNULL))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def measure(base: Path, entries: int, repeat: int, touch: int) -> dict[str, float]:
    home = base / f"home-{entries}"
    sessions = home / "agents" / "main" / "sessions"
    transcripts = build(sessions, entries)
    config = JanitorConfig(sessions=[str(home / "agents" / "*" / "sessions")])
    per_full = config.full_pass_every / config.interval
    result: dict[str, float] = {}

    shell(SHELL_PASS.format(d=sessions))  # warm the page cache for everybody

    def cold() -> float:
        with Janitor(config, Clock()) as janitor:
            return timed(lambda: janitor.sweep({}))

    result.update(
        best_of_interleaved(
            repeat,
            {
                "shell": lambda: shell(SHELL_PASS.format(d=sessions)),
                "shell+kill": lambda: shell(SHELL_KILL_PASS.format(d=sessions)),
                "cold full": cold,
            },
        )
    )

    clock = Clock()
    with Janitor(config, clock) as janitor:
        janitor.sweep({})
        warm = []
        for _ in range(repeat):
            clock.now += config.full_pass_every
            warm.append(timed(lambda: janitor.sweep({})))
        result["warm full"] = min(warm)
        steady = []
        stride = max(1, len(transcripts) // max(1, touch))
        for interval in range(max(repeat, 20)):
            for path in transcripts[interval % stride :: stride][:touch]:
                with open(path, "ab") as handle:  # the gateway writing: not timed
                    handle.write(LINE)
            clock.now += config.interval

            def one_interval() -> None:
                janitor.on_readable()
                janitor.sweep({})

            steady.append(timed(one_interval))
        result["steady"] = min(steady)
    result["amortized"] = (result["steady"] * (per_full - 1) + result["warm full"]) / per_full
    result["created"] = len(list(os.scandir(sessions)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="entries per run, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (the best counts)")
    parser.add_argument("--touch", type=int, default=10, help="transcripts written per interval")
    parser.add_argument("--dir", type=Path, default=None, help="where to build (local disk); a temp dir")
    parser.add_argument("--keep", action="store_true", help="leave the trees behind")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="bench-janitor-", dir=args.dir))
    try:
        rows = []
        for entries in sizes:
            print(f"building and measuring {entries} entries in {base} ...", file=sys.stderr, flush=True)
            rows.append((entries, measure(base, entries, args.repeat, args.touch)))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    columns = ["shell", "shell+kill", "cold full", "warm full", "steady", "amortized"]
    print(
        f"{'entries':>8} " + " ".join(f"{name:>11}" for name in columns) + f"   (ms, best of {args.repeat})"
    )
    for entries, result in rows:
        print(f"{entries:>8} " + " ".join(f"{result[name] * 1000:>11.2f}" for name in columns))
    print()
    print("ratios to the shell pass (janitor / shell; target: full <= 0.5, steady <= 0.1)")
    print(f"{'entries':>8} " + " ".join(f"{name:>11}" for name in columns[2:]) + "   vs")
    for entries, result in rows:
        for against in ("shell", "shell+kill"):
            ratios = " ".join(f"{result[name] / result[against]:>11.3f}" for name in columns[2:])
            print(f"{entries:>8} {ratios}   {against}")


if __name__ == "__main__":
    main()
