"""``clawsup demo``: clawsup recovering the demo gateway from each way the real one breaks.

No config file is needed. The demo writes its own config (``DEMO_CONFIG``: the shipped
defaults with every timing shrunk so that each recovery shows within seconds) and a small
gateway home into a temporary directory, starts ``python -m clawsup run`` on it as a real
supervisor process, and then breaks the bundled demo gateway one way after another, through
its control files, and watches clawsup put things right through the control socket
(``clawsup.client.Client``), the session files and clawsup's own log.

Each scenario prints what broke (``BREAK:``), the log lines that show what clawsup did
(``CLAWSUP:``), what was checked afterwards, and how long recovery took from the moment the
fault was injected, or why it did not recover within the scenario's deadline. A summary
table ends the run. Nothing here imports the supervisor: the demo drives clawsup from
outside, as an operator or a skill would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import json5

from clawsup.client import ClawsupError, Client
from clawsup.protocol import ProgramStatus
from clawsup.units import format_size

T = TypeVar("T")

MAIN_SESSION = "708fd147-3c2e-4b8a-9d51-2f4e6a1b0c93"
GROUP_SESSION = "c0ffee00-1111-4222-8333-444455556666"
FIRST_MODEL = "anthropic/claude-opus-4-5"
NEW_MODEL = "anthropic/claude-sonnet-4-5"
POLL = 0.02
STARTUP_DEADLINE = 20.0
SETTLE_DEADLINE = 15.0
SHUTDOWN_DEADLINE = 15.0

# The shipped defaults (etc/clawsup.toml) with every timing shrunk. The ordering matters
# in one place: a gateway in D state also stops answering HTTP, and here, as with the
# shipped defaults (10 s against 30 s x 3), the hang check must see it before the liveness
# probe gives up on it, or the restart would be a slow graceful one instead of a SIGKILL.
DEMO_CONFIG = """\
# clawsup demo: the shipped defaults with timings shrunk to show each recovery in seconds.

[supervisor]
run_dir = {run_dir}
state_dir = {state_dir}
exit_on_fatal = true
log_level = "info"

[programs.gateway]
command = {command}
main = true
environment = {{ CLAWDBOT_NO_RESPAWN = "1" }}
autorestart = "always"
start_seconds = "300ms"
stop_signal = "SIGTERM"
stop_timeout = "3s"
backoff = {{ initial = "200ms", factor = 2.0, max = "5s", reset_after = "2s", jitter = 0.1 }}
# The demo restarts the gateway on purpose about once a scenario: not a crash loop.
crash_loop = {{ max_restarts = 20, window = "60s", cooldown = "1m" }}

[programs.gateway.hang]
d_state_after = "2s"
sample_interval = "200ms"
zombie_children_max = 20

[programs.gateway.liveness]
http = {probe_url}
period = "1s"
timeout = "1s"
failures = 2

[janitor]
sessions = [{sessions}]
interval = "500ms"
max_session_size = "1MB"
lock_max_age = "3s"
message_timeout = "4s"
archive_retention = "7d"
restart_flag = {restart_flag}
ops_requests = {ops_requests}

[gateway_config]
path = {gateway_config}
model_key = "agents.defaults.model.primary"
timezone_key = "agents.defaults.userTimezone"
apply = "reload"
"""

GATEWAY_CONFIG = """\
// Clawdbot gateway config (JSON5). The gateway applies agents.* changes live.
{{
  gateway: {{
    port: {port},
    bind: "loopback",
    reload: {{ mode: "hybrid", debounceMs: 300 }},
  }},
  agents: {{
    defaults: {{
      model: {{
        primary: "anthropic/claude-opus-4-5",
        fallbacks: ["openai/gpt-5.2"],
      }},
      userTimezone: "America/Sao_Paulo", // IANA zone
      timeoutSeconds: 600,
    }},
  }},
  channels: {{
    telegram: {{ enabled: true, dmPolicy: "pairing" }},
  }},
}}
"""

SESSION_INDEX = {
    "agent:main:main": {
        "sessionId": MAIN_SESSION,
        "updatedAt": 1764297600000,
        "sessionFile": f"{MAIN_SESSION}.jsonl",
        "chatType": "direct",
    },
    "agent:main:telegram:group:-1001234567890": {
        "sessionId": GROUP_SESSION,
        "updatedAt": 1764290000000,
        "sessionFile": f"{GROUP_SESSION}.jsonl",
        "chatType": "group",
    },
}


def _transcript(session_id: str, exchanges: Sequence[tuple[str, str]]) -> str:
    """A transcript as the gateway writes it: a session header, then message lines."""
    entries: list[dict[str, Any]] = [
        {"type": "session", "version": 3, "id": session_id,
         "timestamp": "2026-11-27T23:58:01.114Z", "cwd": "/home/node/clawd"}
    ]
    parent: str | None = None
    for number, (question, answer) in enumerate(exchanges):
        for role, text in (("user", question), ("assistant", answer)):
            entry_id = f"m{len(entries)}"
            message: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": text}]}
            if role == "assistant":
                message.update(provider="anthropic", model="claude-opus-4-5", stopReason="stop")
            entries.append({"type": "message", "id": entry_id, "parentId": parent,
                            "timestamp": f"2026-11-28T00:{number:02d}:00.000Z", "message": message})
            parent = entry_id
    return "".join(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for entry in entries)


MAIN_TRANSCRIPT = _transcript(MAIN_SESSION, [
    ("bom dia! o que tenho na agenda hoje?", "Bom dia! Hoje você tem duas reuniões..."),
    ("e amanhã?", "Amanhã está livre até as 15h."),
    ("marca dentista às 10h", "Marcado: dentista amanhã às 10h."),
])
GROUP_TRANSCRIPT = _transcript(GROUP_SESSION, [("alguém viu o deploy?", "O deploy das 18h passou.")])


def unused_pid() -> int:
    """A PID no process can have: PIDs stay below the kernel's pid_max."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels
    return max(999_999, pid_max)


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_dead_lock(lock: Path, age: float) -> int:
    """A transcript lock left by a gateway that died ``age`` seconds ago; returns its PID."""
    pid = unused_pid()
    created = datetime.now(UTC) - timedelta(seconds=age)
    lock.write_text(json.dumps({"pid": pid, "createdAt": utc_iso(created)}, indent=2) + "\n")
    stamp = created.timestamp()
    os.utime(lock, (stamp, stamp))
    return pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string (TOML accepts every escape JSON writes).
    return json.dumps(value)


# --- watching for recovery ------------------------------------------------------------


class NotRecovered(Exception):
    """A scenario's recovery was not seen: what was missing."""


def count_lines(path: Path) -> int:
    """JSONL lines in a transcript; NotRecovered if unreadable or one is torn."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise NotRecovered(f"cannot read {path.name}: {error}") from None
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError as error:
            raise NotRecovered(f"{path.name} line {number} is not JSON: {error}") from None
    return len(lines)


class Fault:
    """One injected fault: when it was injected and how long recovery may take."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.started = time.monotonic()

    def inject(self) -> None:
        """The clock starts now (preparing the scenario does not count)."""
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, predicate: Callable[[], T | None], what: str) -> T:
        """Poll until ``predicate`` gives something truthy; NotRecovered past the deadline."""
        while True:
            result = predicate()
            if result:
                return result
            if self.elapsed() > self.deadline:
                raise NotRecovered(f"no {what} within {self.deadline:g}s")
            time.sleep(POLL)


@dataclass
class Recovery:
    """What a scenario saw once things were right again."""

    seconds: float
    notes: list[str] = field(default_factory=list)


class ClawsupLog:
    """clawsup's own log (its gateway's output included), read by byte offset."""

    LINE = re.compile(r"^\S+ clawsup (?:INFO|DEBUG) (.*)$|^\S+ clawsup (\w+ .*)$")
    GATEWAY = re.compile(r"^(\S+) \| \S+ (.*)$")

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, since: int = 0) -> tuple[list[str], int]:
        """The complete lines after byte offset ``since``, and the offset after them."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(since)
                data = handle.read()
        except FileNotFoundError:
            return [], since
        complete = data[: data.rfind(b"\n") + 1]
        return complete.decode("utf-8", errors="replace").splitlines(), since + len(complete)

    def lines(self, since: int = 0) -> list[str]:
        return self.read(since)[0]

    def find(self, text: str, since: int = 0) -> str | None:
        return next((line for line in self.lines(since) if text in line), None)

    def shown(self, line: str) -> str:
        """A log line without its timestamp, and paths relative to the demo directory."""
        line = line.replace(f"{self.root}/", "")
        if (own := self.LINE.match(line)) is not None:
            return own.group(1) or own.group(2)
        if (output := self.GATEWAY.match(line)) is not None:
            return f"{output.group(1)}: {output.group(2)}"
        return line


class LogStream(threading.Thread):
    """``--verbose``: copies clawsup's log to stderr as it grows."""

    def __init__(self, log: ClawsupLog, out: TextIO) -> None:
        super().__init__(name="clawsup-log", daemon=True)
        self.log = log
        self.out = out
        self.done = threading.Event()
        self.offset = 0

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.copy()
        self.copy()

    def copy(self) -> None:
        lines, self.offset = self.log.read(self.offset)
        for line in lines:
            print(f"    | {line}", file=self.out, flush=True)

    def stop(self) -> None:
        self.done.set()
        self.join(2.0)


# --- the supervised demo --------------------------------------------------------------


class DemoFailed(Exception):
    """clawsup or its gateway could not be brought up at all."""


class Demo:
    """A temporary directory with clawsup running the demo gateway in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.sessions = self.home / "agents" / "main" / "sessions"
        self.control = root / "gateway-control"
        self.config_path = root / "clawsup.toml"
        self.log = ClawsupLog(root / "clawsup.log", root)
        self.port = free_port()
        self.endpoint = f"ipc://{root}/run/control.sock"
        self.client = Client(self.endpoint, timeout=2.0)
        self.process: subprocess.Popen[bytes] | None = None
        self.gateway_pids: set[int] = set()
        self._commands = 0

    # -- setting up --

    def write_files(self) -> None:
        self.sessions.mkdir(parents=True)
        self.control.mkdir()
        (self.home / "clawdbot.json").write_text(GATEWAY_CONFIG.format(port=self.port))
        (self.sessions / "sessions.json").write_text(json.dumps(SESSION_INDEX, indent=2) + "\n")
        (self.sessions / f"{MAIN_SESSION}.jsonl").write_text(MAIN_TRANSCRIPT, encoding="utf-8")
        (self.sessions / f"{GROUP_SESSION}.jsonl").write_text(GROUP_TRANSCRIPT, encoding="utf-8")
        # Left by the gateway of the previous container, killed mid-message an hour ago.
        write_dead_lock(self.sessions / f"{GROUP_SESSION}.jsonl.lock", age=3600)
        command = [sys.executable, "-m", "clawsup.demo.gateway", "--home", str(self.home),
                   "--port", str(self.port), "--control", str(self.control)]
        self.config_path.write_text(DEMO_CONFIG.format(
            run_dir=_toml(str(self.root / "run")),
            state_dir=_toml(str(self.root / "state")),
            command=json.dumps(command),
            probe_url=_toml(f"http://127.0.0.1:{self.port}/"),
            sessions=_toml(str(self.home / "agents" / "*" / "sessions")),
            restart_flag=_toml(str(self.home / "restart.flag")),
            ops_requests=_toml(str(self.home / "ops-requests")),
            gateway_config=_toml(str(self.home / "clawdbot.json")),
        ))

    def start(self) -> ProgramStatus:
        """Start clawsup; return the gateway's status once it is RUNNING and listening."""
        self.write_files()
        with (self.root / "clawsup.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "clawsup", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        fault = Fault(STARTUP_DEADLINE)
        try:
            fault.wait(self._answers, "answer on the control socket")
            return self.settle(fault)
        except NotRecovered as error:
            raise DemoFailed(f"clawsup did not come up: {error}") from None

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = "\n".join(self.log.lines()[-15:])
            raise DemoFailed(f"clawsup exited with status {self.process.returncode}:\n{tail}")
        try:
            self.client.version()
        except ClawsupError:
            return False
        return True

    def close(self) -> int | None:
        """Shut clawsup down through the control socket; its exit status, None if killed."""
        process = self.process
        if process is None:
            return None
        status: int | None = None
        # A client of its own: a stop signal may have cut the demo's request in half,
        # and a request socket then refuses to send until it has its answer.
        self.client.close()
        try:
            if process.poll() is None:
                with Client(self.endpoint, timeout=2.0) as client:
                    client.shutdown()
            status = process.wait(SHUTDOWN_DEADLINE)
        except (ClawsupError, subprocess.TimeoutExpired):
            status = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left in its group
            process.wait()
            if status is None:
                self.kill_gateways()
        return status

    def kill_gateways(self) -> None:
        """After clawsup died or was killed: its gateways live in process groups of their own."""
        for pid in self.gateway_pids:
            if _is_gateway(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    # -- looking --

    def gateway(self) -> ProgramStatus:
        program = next(p for p in self.client.status().programs if p.main)
        if program.pid is not None:
            self.gateway_pids.add(program.pid)
        return program

    def gateway_http(self) -> dict[str, Any] | None:
        """The gateway's own status (GET /), None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1.0) as reply:
                answer: dict[str, Any] = json.loads(reply.read())
                return answer
        except (OSError, ValueError):
            return None

    def serving(self) -> ProgramStatus | None:
        """The gateway's status if it is RUNNING and has written its ready file."""
        program = self.gateway()
        if program.state != "RUNNING" or program.pid is None:
            return None
        try:
            ready = int((self.control / "ready").read_text())
        except (OSError, ValueError):
            return None
        return program if ready == program.pid else None

    def settle(self, fault: Fault | None = None) -> ProgramStatus:
        """Wait for a RUNNING, listening gateway before the next scenario."""
        return (fault or Fault(SETTLE_DEADLINE)).wait(self.serving, "RUNNING, listening gateway")

    def respawned(self, before: ProgramStatus) -> Callable[[], ProgramStatus | None]:
        """A predicate: a new gateway (not ``before``) is RUNNING and listening."""

        def check() -> ProgramStatus | None:
            program = self.serving()
            return program if program is not None and program.pid != before.pid else None

        return check

    # -- breaking --

    def command(self, text: str) -> None:
        """One demo-gateway command, as a control file written whole and renamed in."""
        self._commands += 1
        name = f"{self._commands:04d}-{text.split(maxsplit=1)[0]}"
        temporary = self.control / f".{name}.tmp"
        temporary.write_text(text + "\n")
        os.replace(temporary, self.control / f"{name}.cmd")

    def lock(self, session_id: str) -> Path:
        return self.sessions / f"{session_id}.jsonl.lock"


def _is_gateway(pid: int) -> bool:
    try:
        return b"clawdbot-gateway" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- the scenarios --------------------------------------------------------------------


def play_orphan_lock(demo: Demo, fault: Fault) -> Recovery:
    notes = [_startup_sweep(demo)]
    before = demo.gateway()
    lock = demo.lock(GROUP_SESSION)
    fault.inject()
    pid = write_dead_lock(lock, age=60)
    fault.wait(lambda: not lock.exists(), f"removal of {lock.name}")
    seconds = fault.elapsed()
    notes.append(f"lock of dead PID {pid} (60s old > lock_max_age 3s) removed")
    answered = _message_goes_through(demo, fault, GROUP_SESSION)
    notes.append(f"a message to that session went through: {answered}")
    if demo.gateway().pid != before.pid:
        raise NotRecovered("the gateway was restarted, but a lone orphan lock needs no restart")
    notes.append(f"gateway untouched: still pid {before.pid}")
    return Recovery(seconds, notes)


def _startup_sweep(demo: Demo) -> str:
    lines = demo.log.lines()
    removed = next((n for n, line in enumerate(lines) if "Removing orphan lock" in line), None)
    spawned = next((n for n, line in enumerate(lines) if "spawned pid" in line), None)
    if removed is None or spawned is None:
        raise NotRecovered("the startup sweep did not remove the stale lock left in the gateway home")
    if removed > spawned:
        raise NotRecovered("the stale lock was removed only after the gateway was started")
    return f"at startup, before the gateway was spawned: {demo.log.shown(lines[removed])}"


def _message_goes_through(demo: Demo, fault: Fault, session_id: str | None = None) -> str:
    """Send one message and wait for its answer; its log line, shortened."""
    mark = demo.log.mark()
    demo.command(f"message {session_id}" if session_id else "message")
    line = fault.wait(lambda: demo.log.find(": answered", mark), "answer to a new message")
    return demo.log.shown(line).split("] ", 1)[-1]


def play_oversized_session(demo: Demo, fault: Fault) -> Recovery:
    transcript = demo.sessions / f"{MAIN_SESSION}.jsonl"
    lines_before = count_lines(transcript)
    archives_before = set(demo.sessions.glob(f"{transcript.name}*.old"))
    messages_before = _gateway_messages(demo)
    fault.inject()
    demo.command("grow-session 2")

    def archived() -> Path | None:
        return next(iter(set(demo.sessions.glob(f"{transcript.name}*.old")) - archives_before), None)

    archive = fault.wait(archived, f"archive of {transcript.name}")
    seconds = fault.elapsed()
    grown = _gateway_messages(demo) - messages_before
    size = format_size(archive.stat().st_size)
    notes = [f"{transcript.name} grew to {size} (> max_session_size 1MB), archived as {archive.name}"]
    kept = count_lines(archive)
    if kept != lines_before + grown:
        raise NotRecovered(f"lines lost: the archive holds {kept}, expected "
                           f"{lines_before} + {grown} grown = {lines_before + grown}")
    notes.append(f"no line lost: archive holds {kept} = {lines_before} before + {grown} images")
    _message_goes_through(demo, fault)
    fresh = count_lines(transcript)
    notes.append(f"the next message started a fresh {transcript.name} ({fresh} lines); "
                 f"{kept} + {fresh} lines in all")
    return Recovery(seconds, notes)


def _gateway_messages(demo: Demo) -> int:
    status = demo.gateway_http()
    if status is None:
        raise NotRecovered("the gateway does not answer HTTP")
    return int(status["messages"])


def _respawn_after(demo: Demo, fault: Fault, command: str, evidence: str, detector: str) -> Recovery:
    """Give the gateway ``command``; a new gateway must be serving, restarted by ``detector``."""
    before = demo.gateway()
    mark = demo.log.mark()
    fault.inject()
    demo.command(command)
    after = fault.wait(demo.respawned(before), "new gateway RUNNING")
    seconds = fault.elapsed()
    if demo.log.find(evidence, mark) is None:
        raise NotRecovered(f"the gateway was restarted, but not by {detector}")
    return Recovery(seconds, [_restart_note(before, after)])


def play_d_state(demo: Demo, fault: Fault) -> Recovery:
    return _respawn_after(demo, fault, "dstate", "is hung (", "the D-state check")


def play_gateway_death(demo: Demo, fault: Fault) -> Recovery:
    before = demo.gateway()
    lock = demo.lock(MAIN_SESSION)
    demo.command("message-slow 30")
    fault.wait(lock.exists, "lock taken by a slow message")
    mark = demo.log.mark()
    fault.inject()
    demo.command("crash")
    after = fault.wait(demo.respawned(before), "new gateway RUNNING")
    seconds = fault.elapsed()
    lines = demo.log.lines(mark)
    cleared = next((n for n, line in enumerate(lines) if "Removing orphan lock" in line), None)
    spawned = next((n for n, line in enumerate(lines) if "spawned pid" in line), None)
    if cleared is None or lock.exists():
        raise NotRecovered(f"{lock.name} left behind by the dead gateway was not cleared")
    if spawned is None or cleared > spawned:
        raise NotRecovered(f"{lock.name} was cleared only after the new gateway started")
    answered = _message_goes_through(demo, fault)
    return Recovery(seconds, [
        _restart_note(before, after),
        f"the dead gateway's lock was cleared before the new one started; {answered}",
    ])


def play_wedged_loop(demo: Demo, fault: Fault) -> Recovery:
    return _respawn_after(demo, fault, "wedge", "liveness probes", "the liveness probe")


def play_stuck_message(demo: Demo, fault: Fault) -> Recovery:
    before = demo.gateway()
    lock = demo.lock(MAIN_SESSION)
    fault.inject()
    demo.command("hold-lock")
    fault.wait(lock.exists, "lock taken by the stuck message")
    after = fault.wait(demo.respawned(before), "new gateway RUNNING")
    fault.wait(lambda: not lock.exists(), f"removal of {lock.name}")
    seconds = fault.elapsed()
    answered = _message_goes_through(demo, fault)
    return Recovery(seconds, [_restart_note(before, after), f"lock gone; {answered}"])


def play_zombie_leak(demo: Demo, fault: Fault) -> Recovery:
    return _respawn_after(demo, fault, "zombies 30", "leaks zombies", "the zombie count")


def play_restart_flag(demo: Demo, fault: Fault) -> Recovery:
    before = demo.gateway()
    flag = demo.home / "restart.flag"
    fault.inject()
    flag.write_text("demo: restart requested by a skill\n")
    after = fault.wait(demo.respawned(before), "new gateway RUNNING")
    if flag.exists():
        raise NotRecovered("the gateway restarted but the flag is still there")
    return Recovery(fault.elapsed(), [_restart_note(before, after), "restart.flag removed"])


def play_set_model(demo: Demo, fault: Fault) -> Recovery:
    before = demo.gateway()
    config = demo.home / "clawdbot.json"
    status = demo.gateway_http() or {}
    old = status.get("model")
    new = NEW_MODEL if old != NEW_MODEL else FIRST_MODEL
    fault.inject()
    demo.client.set_model(new)

    def gateway_model() -> bool:
        return (demo.gateway_http() or {}).get("model") == new

    fault.wait(gateway_model, f"gateway reporting model {new}")
    seconds = fault.elapsed()
    try:
        written = json5.loads(config.read_text(encoding="utf-8"))
        primary = written["agents"]["defaults"]["model"]["primary"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NotRecovered(f"cannot read the model from {config.name}: {error!r}") from None
    if primary != new:
        raise NotRecovered(f"{config.name} says model {primary!r}, not {new!r}")
    notes = [f"{config.name}: agents.defaults.model.primary {old} -> {primary}",
             f"the gateway reloaded it live: GET / reports model {new}"]
    if demo.gateway().pid != before.pid:
        raise NotRecovered("the gateway was restarted; it should have reloaded its config live")
    notes.append(f"no restart: still pid {before.pid}")
    return Recovery(seconds, notes)


def _restart_note(before: ProgramStatus, after: ProgramStatus) -> str:
    exit_text = after.last_exit.describe() if after.last_exit else "unknown"
    return (f"pid {before.pid} -> {after.pid}, RUNNING; restarts {before.restarts} -> "
            f"{after.restarts}; last exit: {exit_text}")


@dataclass(frozen=True)
class Scenario:
    name: str
    broke: str                      # for the summary table
    story: str                      # the BREAK line
    did: str                        # what clawsup is expected to do, for the table
    deadline: float                 # seconds from the fault to recovery
    shows: tuple[str, ...]          # log lines with these show what clawsup did
    play: Callable[[Demo, Fault], Recovery]


# In the order they are played: the quick ones first, the ones that wait out a timeout last.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "orphan-lock", "dead PID's lock",
        "a session lock of a gateway that died 60s ago (PID no longer exists) appears",
        "removed the lock", 5.0, ("Removing orphan lock",), play_orphan_lock,
    ),
    Scenario(
        "set-model", "model change asked",
        "a skill asks clawsup over the control socket to switch the model",
        "wrote config, gateway reloaded", 5.0,
        ("agents.defaults.model.primary", "config reloaded"), play_set_model,
    ),
    Scenario(
        "oversized-session", "2MB session",
        "images swell the main session's transcript to 2MB (max_session_size 1MB)",
        "archived to .old", 8.0, ("Archiving large session", "grown to"),
        play_oversized_session,
    ),
    Scenario(
        "gateway-death", "crash mid-message",
        "the gateway crashes (exit 1) while a message holds a session lock",
        "cleared lock, respawned", 5.0,
        ("exited:", "Removing orphan lock", "restarted as", "STARTING -> RUNNING"),
        play_gateway_death,
    ),
    Scenario(
        "zombie-leak", "30 zombies",
        "the gateway forks 30 children and never waits for them (zombie_children_max 20)",
        "graceful restart", 5.0, ("leaks zombies", "exited:", "restarted as"), play_zombie_leak,
    ),
    Scenario(
        "restart-flag", "restart.flag",
        "something touches ~/.clawdbot/restart.flag, as for the old watchdog",
        "graceful restart", 5.0, ("restart flag", "RUNNING -> STOPPING", "restarted as"),
        play_restart_flag,
    ),
    Scenario(
        "d-state", "D state",
        "the gateway's main thread sticks in uninterruptible sleep (state D)",
        "SIGKILL, respawned", 8.0, ("is hung", "exited:", "restarted as"), play_d_state,
    ),
    Scenario(
        "wedged-loop", "wedged event loop",
        "the gateway's event loop blocks: TCP still connects, HTTP gets no answer",
        "probe failed, restarted", 15.0,
        ("liveness probe", "did not stop", "exited:", "restarted as"), play_wedged_loop,
    ),
    Scenario(
        "stuck-message", "message never ends",
        "a message takes its session lock and never answers (message_timeout 4s)",
        "restarted, cleared lock", 15.0,
        ("Stuck message", "restarting gateway", "did not stop", "Removing orphan lock", "restarted as"),
        play_stuck_message,
    ),
)


class UnknownScenario(ValueError):
    """A scenario name that the demo does not have."""


def select_scenarios(names: Iterable[str]) -> list[Scenario]:
    """Scenarios named (each item may be a comma list) in play order; all when none."""
    wanted = {name.strip() for item in names for name in item.split(",") if name.strip()}
    known = {scenario.name for scenario in SCENARIOS}
    unknown = sorted(wanted - known)
    if unknown:
        raise UnknownScenario(f"unknown scenario {', '.join(map(repr, unknown))}; "
                              f"choose from {', '.join(s.name for s in SCENARIOS)}")
    return [scenario for scenario in SCENARIOS if not wanted or scenario.name in wanted]


def describe_scenarios() -> str:
    width = max(len(scenario.name) for scenario in SCENARIOS)
    return "\n".join(f"{scenario.name:<{width}}  {scenario.story}" for scenario in SCENARIOS)


# --- playing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    seconds: float | None
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.seconds is not None


def say(text: str = "") -> None:
    print(text, flush=True)


def play(demo: Demo, scenario: Scenario) -> Result:
    say(f"== {scenario.name}")
    say(f"BREAK: {scenario.story}")
    mark = demo.log.mark()
    recovery: Recovery | None = None
    why = ""
    try:
        demo.settle()
        mark = demo.log.mark()  # what the settling logged belongs to the scenario before
        recovery = scenario.play(demo, Fault(scenario.deadline))
    except NotRecovered as error:
        why = str(error)
    except ClawsupError as error:
        why = f"clawsup did not answer: {error}"
    for line in demo.log.lines(mark):
        if any(text in line for text in scenario.shows):
            say(f"CLAWSUP: {demo.log.shown(line)}")
    if recovery is None:
        say(f"NOT RECOVERED: {why}\n")
        return Result(scenario, None, why)
    for note in recovery.notes:
        say(f"  checked: {note}")
    say(f"RECOVERED in {recovery.seconds:.2f}s\n")
    return Result(scenario, recovery.seconds)


def summary(results: Sequence[Result]) -> str:
    header = ("scenario", "broke", "clawsup did", "recovery", "ok")
    rows = [header] + [
        (r.scenario.name, r.scenario.broke, r.scenario.did,
         f"{r.seconds:.2f}s" if r.seconds is not None else "-", "yes" if r.ok else "NO")
        for r in results
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


# What ends the demo early: Ctrl-C, `kill`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """The demo was told to stop by a signal. A BaseException, as KeyboardInterrupt is:
    no ``except Exception`` on the way may swallow it before clawsup is shut down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals() -> None:
    """Make each stop signal unwind the demo, so its clean-up shuts clawsup and the gateway
    down: they run in a session of their own, where no terminal signal reaches them, and
    Python's default for SIGTERM and SIGHUP ends the demo without any clean-up."""

    def stop(signum: int, _frame: object) -> None:
        # One stop is enough: a second signal must not cut the clean-up short.
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise Stopped(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def run_demo(scenarios: Sequence[Scenario], *, keep: bool = False, verbose: bool = False) -> int:
    """Play ``scenarios`` against a fresh clawsup; 0 when every one recovered, else 1,
    128 + the signal's number when a stop signal ended it (clawsup shut down first)."""
    _stop_on_signals()
    try:
        return _play_all(scenarios, keep=keep, verbose=verbose)
    except Stopped as stopped:
        # After SIGHUP the terminal may be gone: the clean-up is what mattered.
        with contextlib.suppress(OSError):
            say(f"clawsup demo: stopped by {stopped}; clawsup and its gateway are shut down")
        return 128 + stopped.signum


def _play_all(scenarios: Sequence[Scenario], *, keep: bool, verbose: bool) -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="clawsup-demo-"))
    demo = Demo(root)
    stream = LogStream(demo.log, sys.stderr) if verbose else None
    results: list[Result] = []
    status: int | None = None
    try:
        if stream is not None:
            stream.start()
        say(f"clawsup demo in {root}: starting clawsup with the demo gateway on port {demo.port}")
        try:
            gateway = demo.start()
        except DemoFailed as error:
            say(f"clawsup demo: {error}")
            return 1
        say(f"gateway RUNNING as pid {gateway.pid}\n")
        results = [play(demo, scenario) for scenario in scenarios]
    finally:
        status = demo.close()
        if stream is not None:
            stream.stop()
        if keep:
            say(f"kept {root} (clawsup.toml, clawsup.log, home/)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say(summary(results))
    recovered = sum(result.ok for result in results)
    if status is None:
        ending = f"clawsup did not shut down within {SHUTDOWN_DEADLINE:g}s and was killed"
    else:
        ending = "clawsup shut down cleanly" if status == 0 else f"clawsup exited with status {status}"
    say(f"\n{recovered}/{len(results)} recovered in {time.monotonic() - started:.1f}s; {ending}")
    return 0 if recovered == len(results) and status == 0 else 1
