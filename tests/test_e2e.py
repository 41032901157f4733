"""End to end: the shipped ``etc/clawsup.toml`` as PID 1 of a fresh PID namespace.

The shipped config is used as it ships; a second ``-c`` file, written by the test, points
it at the demo gateway, a free port and temporary directories and shortens the timings
(see ``OVERRIDE``); every other key comes from the shipped file. clawsup then runs as
``unshare --pid --fork --mount-proc python -m clawsup run -c etc/clawsup.toml -c
override.toml``, as in a container, and every recovery is driven from outside, as an
operator or a skill would: ``clawsupctl`` as a subprocess, the gateway's control files,
the old watchdog's restart flag and ops-requests inbox, lock and session files.

Throughout the run two invariants are checked:

- no zombies: a thread samples clawsup's zombie children every ~50 ms; a zombie is reaped
  microseconds after its exit, so only one still there >= 100 ms later is a bug;
- no session line lost: every complete line ever seen in a session file, and every
  numbered line the test appended itself, is at the end in the session files or their
  ``.old`` archives.

It ends with SIGTERM to PID 1: clawsup stops the gateway (which exits 0 on SIGTERM), exits
0 itself, and leaves no process of its namespace behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import json5
import psutil
import pytest

from clawsup.units import parse_duration
from tests.util import REPO, Clawsup, copy_home, wait_until, zombies_under

SHIPPED = REPO / "etc" / "clawsup.toml"
MAIN_SESSION = "708fd147-3c2e-4b8a-9d51-2f4e6a1b0c93"
BIN = Path(sys.executable).parent
CLAWSUPCTL = [str(BIN / "clawsupctl")] if (BIN / "clawsupctl").exists() else [
    sys.executable, "-m", "clawsup.client.ctl"]
# Zombie sampling: a zombie lives microseconds between its exit and the reaper; only one
# still present this long after it was first seen is a reaping bug.
SAMPLE_EVERY = 0.05
PERSISTENT_AFTER = 0.1

# The shipped values the scenarios depend on, read from the file rather than assumed.
_SHIPPED_GATEWAY = tomllib.loads(SHIPPED.read_text())["programs"]["gateway"]
ZOMBIE_MAX = int(_SHIPPED_GATEWAY["hang"]["zombie_children_max"])
LIVENESS_FAILURES = int(_SHIPPED_GATEWAY["liveness"]["failures"])
STOP_TIMEOUT = float(parse_duration(_SHIPPED_GATEWAY["stop_timeout"]))

# Only what must differ from the shipped file: where things are, and timings short enough
# for a test. Everything else (backoff, crash_loop, start_seconds, stop_timeout,
# liveness failures, zombie_children_max, environment, exit_on_fatal...) is shipped. The
# probe timeout is shortened with the period: with the shipped 5s, a wedge would take
# failures x 5s to be seen, and the whole run would pass a minute.
OVERRIDE = """\
# Test override on top of the shipped etc/clawsup.toml (tests/test_e2e.py).
[supervisor]
run_dir = {run_dir}
state_dir = {state_dir}

[programs.gateway]
command = {command}
directory = {directory}

[programs.gateway.hang]
d_state_after = "2s"
sample_interval = "200ms"

[programs.gateway.liveness]
http = {probe_url}
period = "500ms"
timeout = "1s"

[janitor]
sessions = [{sessions}]
restart_flag = {restart_flag}
ops_requests = {ops_requests}
interval = "250ms"
lock_max_age = "3s"
message_timeout = "3s"
max_session_size = "1MB"

[gateway_config]
path = {gateway_config}
"""


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(),
                                reason="needs unshare --pid --fork --mount-proc (root)")


class Pid1Clawsup(Clawsup):
    """tests.util.Clawsup with pid1=True, but with several ``-c`` files."""

    def __init__(self, configs: list[Path], log: Path) -> None:
        # Clawsup.__init__ takes one config; this builds the same process with two.
        argv = ["unshare", "--pid", "--fork", "--mount-proc",
                sys.executable, "-m", "clawsup", "run"]
        for config in configs:
            argv += ["-c", str(config)]
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)


class ZombieSampler(threading.Thread):
    """Samples ``zombies_under(pid)``; records zombies that persist >= PERSISTENT_AFTER."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="zombie-sampler", daemon=True)
        self.pid = pid
        self.done = threading.Event()
        self.samples = 0
        self.transient = 0  # zombies seen once and gone by the next sample: reaped in time
        self.persistent: dict[int, str] = {}

    def run(self) -> None:
        first_seen: dict[int, float] = {}
        previous: set[int] = set()
        while not self.done.wait(SAMPLE_EVERY):
            now = time.monotonic()
            current = set(zombies_under(self.pid))
            self.samples += 1
            self.transient += len(previous - current)
            for zombie in current:
                since = first_seen.setdefault(zombie, now)
                if now - since >= PERSISTENT_AFTER and zombie not in self.persistent:
                    self.persistent[zombie] = f"pid {zombie} ({_comm(zombie)}) a zombie for " \
                                              f">= {now - since:.2f}s"
            first_seen = {z: t for z, t in first_seen.items() if z in current}
            previous = current

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def _state(pid: int) -> str | None:
    """The state letter in /proc/<pid>/stat, None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class Ledger:
    """No session line lost: what was seen and written must be there at the end."""

    def __init__(self, sessions: Path) -> None:
        self.sessions = sessions
        self.seen: dict[bytes, str] = {}  # digest -> where it was first seen
        self.written: list[bytes] = []

    def files(self) -> list[Path]:
        return sorted(path for path in self.sessions.iterdir()
                      if path.name.endswith((".jsonl", ".old")) and path.is_file())

    def lines(self) -> dict[bytes, str]:
        found: dict[bytes, str] = {}
        for path in self.files():
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # archived between listing and reading
                continue
            for line in data[: data.rfind(b"\n") + 1].splitlines():  # complete lines only
                found.setdefault(hashlib.sha256(line).digest(), f"{path.name}: {line[:100]!r}")
        return found

    def observe(self) -> None:
        for digest, where in self.lines().items():
            self.seen.setdefault(digest, where)

    def append(self, path: Path) -> None:
        """A numbered line appended by the test itself (O_APPEND, one write)."""
        number = len(self.written) + 1
        entry = {"type": "message", "id": f"e2e-{number:04d}", "parentId": None,
                 "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "message": {"role": "user",
                             "content": [{"type": "text", "text": f"e2e line {number}"}]}}
        line = json.dumps(entry, separators=(",", ":")).encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        self.written.append(line)

    def lost(self) -> list[str]:
        final = self.lines()
        lost = [f"written by the test: {line[:100]!r}" for line in self.written
                if hashlib.sha256(line).digest() not in final]
        lost += [f"seen as {where}" for digest, where in self.seen.items() if digest not in final]
        return lost


class E2E:
    """clawsup (shipped config + override) as PID 1, with the demo gateway in a temp home."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = copy_home(tmp / "home")
        self.sessions = self.home / "agents" / "main" / "sessions"
        self.control = self.home / ".demo-control"
        self.port = _free_port()
        self.endpoint = f"ipc://{tmp}/run/control.sock"
        command = [sys.executable, "-m", "clawsup.demo.gateway", "--home", str(self.home),
                   "--port", str(self.port), "--shutdown-grace", "1"]
        self.override = tmp / "override.toml"
        self.override.write_text(OVERRIDE.format(
            run_dir=_toml(str(tmp / "run")),
            state_dir=_toml(str(tmp / "state")),
            command=json.dumps(command),
            directory=_toml(str(tmp)),
            probe_url=_toml(f"http://127.0.0.1:{self.port}/"),
            sessions=_toml(str(self.home / "agents" / "*" / "sessions")),
            restart_flag=_toml(str(self.home / "restart.flag")),
            ops_requests=_toml(str(self.home / "ops-requests")),
            gateway_config=_toml(str(self.home / "clawdbot.json")),
        ))
        self.ledger = Ledger(self.sessions)
        self.timings: dict[str, float] = {}
        self.clawsup = Pid1Clawsup([SHIPPED, self.override], tmp / "clawsup.log")
        try:
            self.supervisor_pid = self.clawsup.supervisor_pid
            self.namespace = os.readlink(f"/proc/{self.supervisor_pid}/ns/pid")
        except BaseException:
            self.clawsup.stop()
            raise
        self.zombies = ZombieSampler(self.supervisor_pid)
        self.zombies.start()

    # -- clawsupctl ---------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLAWSUPCTL, "--socket", self.endpoint, *args],
                              capture_output=True, text=True, timeout=timeout)

    def ctl_ok(self, *args: str) -> str:
        done = self.ctl(*args)
        assert done.returncode == 0, f"clawsupctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def status(self) -> dict[str, Any] | None:
        done = self.ctl("status", "--json", timeout=10)
        if done.returncode != 0:
            return None
        reply = json.loads(done.stdout)
        assert reply["ok"] is True
        return next(p for p in reply["programs"] if p["name"] == "gateway")

    def gateway_http(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    def running(self, other_than: int | None = None, timeout: float = 15,
                what: str = "gateway RUNNING") -> dict[str, Any]:
        """The gateway's status once RUNNING (with a pid other than ``other_than``) and
        answering HTTP as that pid (inside the namespace)."""

        def ready() -> dict[str, Any] | None:
            program = self.status()
            if program is None or program["state"] != "RUNNING" or program["pid"] == other_than:
                return None
            answer = self.gateway_http()
            return program if answer is not None and answer["pid"] == program["pid"] else None

        return wait_until(ready, timeout, interval=0.05, what=f"{what}\n{self.tail()}")

    # -- the gateway's control files and the log ---------------------------------------------

    def command(self, text: str) -> None:
        name = f"{time.monotonic_ns()}.cmd"
        (self.control / f".{name}").write_text(text)
        os.rename(self.control / f".{name}", self.control / name)

    def log(self) -> str:
        return self.clawsup.log()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def message(self, session: str | None = None) -> None:
        """One message through the gateway; returns once it was answered."""
        before = self.log().count(": answered")
        self.command(f"message {session}" if session else "message")
        wait_until(lambda: self.log().count(": answered") > before, 12, interval=0.05,
                   what=f"an answer to 'message {session}'\n{self.tail()}")

    def host_pid(self, nspid: int) -> int:
        """The host pid of the gateway that is ``nspid`` inside the namespace."""

        def find() -> int | None:
            for child in psutil.Process(self.supervisor_pid).children():
                with contextlib.suppress(OSError, StopIteration):
                    status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
                    line = next(line for line in status if line.startswith("NSpid:"))
                    if int(line.split()[-1]) == nspid:
                        return child.pid
            return None

        return wait_until(find, 5, interval=0.02, what=f"the host pid of gateway {nspid}")

    def lock(self, session: str) -> Path:
        return self.sessions / f"{session}.jsonl.lock"

    def checkpoint(self, step: str, started: float) -> None:
        """A step is done: traffic in both sessions, lines recorded, time noted."""
        if not self.lock(MAIN_SESSION).exists():
            self.ledger.append(self.sessions / f"{MAIN_SESSION}.jsonl")
        self.ledger.append(self.sessions / "e2e-direct.jsonl")
        self.ledger.observe()
        self.timings[step] = time.monotonic() - started

    def stop(self) -> None:
        self.zombies.stop()
        self.clawsup.stop()

    def leftovers(self) -> list[str]:
        """Processes still in clawsup's PID namespace."""
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == self.namespace:
                    left.append(f"pid {entry} ({_comm(int(entry))})")
        return left


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[E2E]:
    run = E2E(tmp_path)
    try:
        yield run
    finally:
        run.stop()


def _step(name: str) -> float:
    print(f"-- {name}", flush=True)
    return time.monotonic()


def test_shipped_config_as_pid1_recovers_from_everything(e2e: E2E) -> None:
    began = time.monotonic()
    log_at = 0

    def new_log() -> str:
        return e2e.log()[log_at:]

    def mark() -> None:
        nonlocal log_at
        log_at = len(e2e.log())

    # -- up: RUNNING as PID 1's child, healthy, the fixture's stale lock gone before start
    t = _step("startup")
    gateway = e2e.running(timeout=20, what="the first gateway RUNNING")
    status_lines = Path(f"/proc/{e2e.supervisor_pid}/status").read_text().splitlines()
    nspid = next(line for line in status_lines if line.startswith("NSpid:")).split()[1:]
    assert nspid[-1] == "1", f"clawsup is not PID 1 in its namespace: NSpid {nspid}"
    assert gateway["restarts"] == 0
    assert e2e.ctl("health").returncode == 0
    log = e2e.log()
    stale = e2e.sessions / "c0ffee00-1111-4222-8333-444455556666.jsonl.lock"
    assert not stale.exists()
    assert log.index(f"Removing orphan lock: {stale}") < log.index("spawned pid")
    e2e.message()
    e2e.message("e2e-chat")
    e2e.checkpoint("startup", t)

    # -- set-model: config file rewritten, the gateway reloads it live, no restart
    t = _step("set-model")
    new_model = "anthropic/claude-sonnet-4-5"
    out = e2e.ctl_ok("set-model", new_model)
    assert f"-> {new_model}" in out
    config = json5.loads((e2e.home / "clawdbot.json").read_text())
    assert config["agents"]["defaults"]["model"] == {"primary": new_model,
                                                    "fallbacks": ["openai/gpt-5.2"]}
    assert config["channels"]["telegram"]["dmPolicy"] == "pairing"  # the rest is kept
    wait_until(lambda: (e2e.gateway_http() or {}).get("model") == new_model, 5,
               what="the gateway reloading the model")
    wait_until(lambda: f"config reloaded: model={new_model}" in e2e.log(), 5,
               what="the gateway's reload in the log")
    e2e.checkpoint("set-model", t)

    # -- set-timezone: likewise
    t = _step("set-timezone")
    out = e2e.ctl_ok("set-timezone", "Asia/Tokyo")
    assert "America/Sao_Paulo -> Asia/Tokyo" in out
    config = json5.loads((e2e.home / "clawdbot.json").read_text())
    assert config["agents"]["defaults"]["userTimezone"] == "Asia/Tokyo"
    wait_until(lambda: (e2e.gateway_http() or {}).get("timezone") == "Asia/Tokyo", 5,
               what="the gateway reloading the timezone")
    assert e2e.status()["pid"] == gateway["pid"], "a live reload needs no restart"  # type: ignore[index]
    e2e.checkpoint("set-timezone", t)

    # -- an orphan lock of a dead PID, older than lock_max_age: removed, gateway untouched
    t = _step("orphan lock")
    orphan = e2e.lock("e2e-orphan")
    created = datetime.now(UTC) - timedelta(seconds=60)
    orphan.write_text(json.dumps({"pid": 999_999_999, "createdAt":
                                  created.isoformat(timespec="milliseconds")[:-6] + "Z"}))
    os.utime(orphan, (created.timestamp(), created.timestamp()))
    wait_until(lambda: not orphan.exists(), 5, what="removal of the orphan lock")
    assert f"Removing orphan lock: {orphan} (PID 999999999 is dead" in e2e.log()
    assert e2e.status()["pid"] == gateway["pid"]  # type: ignore[index]
    e2e.checkpoint("orphan lock", t)

    # -- clawsupctl restart: answers once RUNNING again, with a new pid
    t = _step("restart")
    out = e2e.ctl_ok("restart")
    assert "gateway: RUNNING" in out
    restarted = e2e.running(other_than=gateway["pid"], what="RUNNING after clawsupctl restart")
    assert f"(pid {restarted['pid']})" in out
    assert restarted["last_exit"]["code"] == 0  # a graceful stop: the gateway exits 0
    # set-timezone also set TZ for the gateway's next starts: it now logs in +09:00.
    wait_until(lambda: "+09:00 [gateway] listening" in e2e.log(), 5, what="TZ=Asia/Tokyo")
    gateway = restarted
    e2e.message()
    e2e.checkpoint("restart", t)

    # -- restart.flag (the old watchdog's way): graceful restart, flag removed
    t = _step("restart.flag")
    flag = e2e.home / "restart.flag"
    flag.write_text("e2e: new skill installed\n")
    gateway = e2e.running(other_than=gateway["pid"], what="RUNNING after restart.flag")
    assert not flag.exists()
    assert "restart flag: e2e: new skill installed" in e2e.log()
    e2e.checkpoint("restart.flag", t)

    # -- an ops-requests file: run, moved to done/ with its result
    t = _step("ops request")
    inbox = e2e.home / "ops-requests"
    inbox.mkdir(exist_ok=True)
    (inbox / ".req-e2e.json.tmp").write_text(
        json.dumps({"action": "restart", "reason": "e2e ops request"}))
    os.rename(inbox / ".req-e2e.json.tmp", inbox / "req-e2e.json")
    result = inbox / "done" / "req-e2e.json.result.json"
    wait_until(result.exists, 15, what=f"{result}\n{e2e.tail()}")
    assert json.loads(result.read_text())["ok"] is True
    gateway = e2e.running(other_than=gateway["pid"], what="RUNNING after the ops request")
    assert not (inbox / "req-e2e.json").exists()
    e2e.message()
    e2e.checkpoint("ops request", t)

    # -- a session grows over max_session_size (1MB): archived to .old once unlocked
    t = _step("oversized session")
    transcript = e2e.sessions / f"{MAIN_SESSION}.jsonl"
    e2e.ledger.observe()
    e2e.command("grow-session 1.2")
    archive = wait_until(lambda: next(iter(e2e.sessions.glob(f"{transcript.name}.*.old")), None),
                         15, interval=0.05, what=f"an archive of {transcript.name}\n{e2e.tail()}")
    assert archive.stat().st_size > 2**20
    assert f"Archiving large session: {transcript}" in e2e.log()
    e2e.ledger.observe()
    e2e.message()  # the next message starts a fresh transcript
    assert transcript.stat().st_size < 2**20
    assert e2e.status()["pid"] == gateway["pid"]  # type: ignore[index]
    e2e.checkpoint("oversized session", t)

    # -- the gateway crashes mid-message: its lock is cleared before it is respawned
    t = _step("crash")
    lock = e2e.lock("e2e-crash")
    e2e.command("message-slow 30 e2e-crash")
    wait_until(lock.exists, 5, what="the slow message's lock")
    e2e.ledger.observe()
    mark()
    e2e.command("crash")
    crashed = e2e.running(other_than=gateway["pid"], what="RUNNING after the crash")
    assert crashed["last_exit"]["code"] == 1
    assert crashed["last_exit"]["reason"] == "crashed"
    assert not lock.exists()
    log = new_log()
    removed = log.index(f"Removing orphan lock: {lock} (PID {gateway['pid']} was our gateway")
    assert removed < log.index("spawned pid"), "the lock must be gone before the respawn"
    e2e.message("e2e-crash")  # the new gateway can use that session at once
    assert "session file locked" not in e2e.log()
    gateway = crashed
    e2e.checkpoint("crash", t)

    # -- a short D state (1s, like slow disk I/O) is no hang: no kill
    t = _step("short D state")
    mark()
    host = e2e.host_pid(gateway["pid"])
    e2e.command("dstate 1")
    wait_until(lambda: _state(host) == "D", 5, interval=0.02, what="the gateway in D state")
    wait_until(lambda: (e2e.gateway_http() or {}).get("pid") == gateway["pid"], 5, interval=0.05,
               what="the gateway out of its short D state")
    assert e2e.status()["pid"] == gateway["pid"], "a 1s D state must not be killed"  # type: ignore[index]
    assert "is hung" not in new_log()
    e2e.checkpoint("short D state", t)

    # -- D state held for d_state_after (2s) = hung: SIGKILL, respawn
    t = _step("D state")
    mark()
    e2e.command("dstate")
    wait_until(lambda: _state(host) == "D", 5, interval=0.02, what="the gateway in D state")
    hung = e2e.running(other_than=gateway["pid"], timeout=15, what="RUNNING after the D state")
    assert hung["last_exit"]["signal"] == "SIGKILL"
    assert hung["last_exit"]["reason"].startswith("hung")
    assert "gateway is hung (state: D for" in new_log()
    assert _state(host) is None
    gateway = hung
    e2e.checkpoint("D state", t)

    # -- zombie leak: more than zombie_children_max (shipped: 50) under the gateway: restart
    t = _step("zombie leak")
    mark()
    host = e2e.host_pid(gateway["pid"])
    e2e.command(f"zombies {ZOMBIE_MAX + 10}")

    def zombie_children() -> list[int] | None:
        found = [pid for pid in _children(host) if _state(pid) == "Z"]
        return found if len(found) >= ZOMBIE_MAX + 10 else None

    leak = wait_until(zombie_children, 5, interval=0.02, what="the zombies under the gateway")
    leaked = e2e.running(other_than=gateway["pid"], timeout=15, what="RUNNING after the leak")
    assert f"gateway leaks zombies ({ZOMBIE_MAX + 10} > {ZOMBIE_MAX})" in new_log()
    assert leaked["last_exit"]["code"] == 0
    # Orphaned when their parent exited, they came to PID 1 (clawsup), which reaped them.
    wait_until(lambda: not [p for p in leak if _state(p) == "Z"], 5,
               what="the leaked zombies reaped")
    gateway = leaked
    e2e.checkpoint("zombie leak", t)

    # -- stuck message: a lock held past message_timeout (3s): restart, lock gone
    t = _step("stuck message")
    mark()
    lock = e2e.lock("e2e-stuck")
    e2e.command("hold-lock e2e-stuck")
    wait_until(lock.exists, 5, what="the stuck message's lock")
    e2e.ledger.observe()
    stuck = e2e.running(other_than=gateway["pid"], timeout=15,
                        what="RUNNING after the stuck message")
    wait_until(lambda: not lock.exists(), 5, what="removal of the stuck message's lock")
    assert f"Stuck message: {lock}" in new_log()
    assert stuck["last_exit"]["reason"] == "message_timeout"
    e2e.message("e2e-stuck")
    gateway = stuck
    e2e.checkpoint("stuck message", t)

    # -- wedged event loop: TCP still connects, no HTTP answer: liveness fails 3 times,
    #    SIGTERM is never handled, SIGKILL after the shipped stop_timeout (10s), respawn.
    t = _step("wedge")
    mark()
    e2e.command("wedge")
    stopping = wait_until(lambda: (e2e.status() or {}).get("state") == "STOPPING", 15,
                          interval=0.05, what=f"STOPPING after the wedge\n{e2e.tail()}")
    assert stopping
    # Still wedged (SIGTERM not handled): the kernel accepts TCP, no HTTP answer comes.
    with socket.create_connection(("127.0.0.1", e2e.port), timeout=1):
        pass
    assert e2e.gateway_http() is None
    assert e2e.ctl("health").returncode == 1, "a gateway being restarted is not healthy"
    wedged = e2e.running(other_than=gateway["pid"], timeout=STOP_TIMEOUT + 10,
                         what="RUNNING after the wedge")
    log = new_log()
    assert f"gateway failed {LIVENESS_FAILURES} liveness probes" in log
    assert f"did not stop within {STOP_TIMEOUT:g}s, sent SIGKILL" in log
    assert wedged["last_exit"]["signal"] == "SIGKILL"
    gateway = wedged
    e2e.checkpoint("wedge", t)

    # -- healthy again; settings survived 8 restarts; the incidents list every recovery
    t = _step("health and incidents")
    assert e2e.ctl("health").returncode == 0
    assert gateway["restarts"] == 8, gateway
    answer = e2e.gateway_http() or {}
    assert (answer.get("model"), answer.get("timezone")) == (new_model, "Asia/Tokyo")
    incidents = json.loads(e2e.ctl_ok("incidents", "--json", "--limit", "100"))
    kinds = [incident["kind"] for incident in incidents["latest"]]
    for kind in ("orphan_lock", "session_archived", "hung", "zombie_leak", "message_timeout",
                 "liveness_failed"):
        assert kind in kinds, f"no {kind} incident in {kinds}"
    exits = {i["data"].get("reason") for i in incidents["latest"] if i["kind"] == "exited"}
    assert "crashed" in exits, f"the crash is not an incident: {exits}"
    timeouts = [i for i in incidents["latest"] if i["kind"] == "message_timeout"]
    assert timeouts[0]["data"]["held_for"] >= 3.0, "restarted before message_timeout"
    assert "orphan_lock" in e2e.ctl_ok("incidents")  # the human-readable table too
    e2e.checkpoint("health and incidents", t)

    # -- no session line lost
    t = _step("session lines")
    lost = e2e.ledger.lost()
    assert not lost, f"{len(lost)} session lines lost:\n" + "\n".join(lost[:20])
    assert len(e2e.ledger.written) >= 20
    e2e.timings["session lines"] = time.monotonic() - t

    # -- SIGTERM to PID 1: the gateway exits 0, so does clawsup; nothing left behind
    t = _step("SIGTERM")
    e2e.clawsup.signal(signal.SIGTERM)
    assert e2e.clawsup.wait(20) == 0, e2e.tail()
    assert f"gateway (pid {gateway['pid']}) exited: exit 0 (shutdown)" in e2e.log()
    e2e.zombies.stop()
    assert not e2e.leftovers(), f"left in the namespace: {e2e.leftovers()}"
    e2e.timings["SIGTERM"] = time.monotonic() - t

    # -- no zombie lingered under clawsup at any point
    assert e2e.zombies.samples > 100
    assert not e2e.zombies.persistent, \
        "zombies not reaped in time:\n" + "\n".join(e2e.zombies.persistent.values())
    total = time.monotonic() - began
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in e2e.timings.items()))
    print(f"total {total:.1f}s; {e2e.zombies.samples} zombie samples, "
          f"{e2e.zombies.transient} short-lived zombies; {len(e2e.ledger.written)} lines "
          f"written, {len(e2e.ledger.seen)} lines seen")


def test_operator_restarts_are_not_incidents(e2e: E2E) -> None:
    gateway = e2e.running(timeout=20, what="the first gateway RUNNING")
    e2e.ctl_ok("restart")
    gateway = e2e.running(other_than=gateway["pid"], what="RUNNING after clawsupctl restart")
    (e2e.home / "restart.flag").write_text("e2e\n")
    e2e.running(other_than=gateway["pid"], what="RUNNING after restart.flag")
    incidents = json.loads(e2e.ctl_ok("incidents", "--json"))
    exits = [i["message"] for i in incidents["latest"] if i["kind"] == "exited"]
    assert not exits, f"operator-asked restarts listed as incidents: {exits}"
