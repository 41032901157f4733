"""Every event kind the supervisor can emit reaches every sink (DESIGN.md §8).

Each kind is raised by its real producer in a real clawsup (real children, real D
states, a real tracer, real lock files and a real config file), never by a hand-built
event, and is then looked for in the incident log (when it is an incident), on a real
ZeroMQ SUB socket and at a webhook alert sink served here. The crash_loop event, whose
Duration once made it unencodable, is the case that proved the need.

The kinds are found in the source too: a kind added to the code that this test does not
raise (or that kinds.py does not list) fails it.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zmq

from clawsup.client import Client, CommandFailed
from clawsup.protocol import Event, encode
from clawsup.supervisor import kinds
from clawsup.supervisor.config import Liveness
from clawsup.supervisor.janitor import archive_name
from clawsup.supervisor.kinds import CATALOGUE, EVENT_KINDS, INCIDENT_KINDS
from clawsup.units import Duration, Size
from tests.test_resources import ALLOCATES
from tests.test_service import TRACER
from tests.test_thread_hang import worker_in_d
from tests.util import (
    Clawsup,
    WaitTimeout,
    copy_home,
    python_program,
    wait_until,
    write_config,
)

# Every kind, and what raises it below.
RAISED = {
    "state": "every program's start",
    "exited": "crasher exits 3 (a crash: also an incident)",
    "backoff": "crasher waits before its next start",
    "restarted": "crasher started again",
    "crash_loop": "crasher crashes max_restarts times within the window",
    "fatal": "crasher gives up (FATAL)",
    "unkillable": "traced is held at its exit by a ptrace tracer after SIGKILL",
    "hung": "hanger's main thread sleeps in D (vfork)",
    "thread_hung": "worker's second thread sleeps in D (vfork)",
    "zombie_leak": "leaker leaves 8 zombie children",
    "liveness_failed": "probed's exec probe fails once its file is removed",
    "resource_limit": "hog holds 96 MiB, over its max_rss of 48 MiB",
    "reaped": "orphaner's grandchild is re-parented to clawsup and exits",
    "log": "crasher prints a line before it exits",
    "orphan_lock": "stuck's transcript lock outlives stuck",
    "session_archived": "an oversized transcript is written",
    "archive_purged": "an archive past archive_retention is written",
    "message_timeout": "stuck holds a transcript lock past message_timeout",
    "breaker_open": "the message timeout is a failure of the main program's model",
    "breaker_half_open": "the breaker's cooldown elapses",
    "breaker_closed": "the primary goes the breaker's window without failing",
    "model_changed": "set_model on the control socket (and the breaker's switches)",
    "timezone_changed": "set_timezone on the control socket",
    "override_dropped": "a remembered model over a file edited since",
    "restart_requested": "restart.flag is written",
    "restart_scheduled": "restart when idle of gw while a transcript lock names gw's pid",
    "restart_cancelled": "an explicit restart of gw while that restart is pending",
    "idle_restart": "restart when idle of gw with no lock held",
    "reloaded": "reload on the control socket",
    "reload_failed": "reload of a broken config",
}
# What cannot reach a sink, and why.
NOT_PUBLISHED = {
    # Overrides are applied while clawsup starts, before the gateway does: the PUB socket
    # is bound an instant before, and a SUB socket's subscription cannot have arrived.
    # The alert sink (and the log) get it; encodability is the same for every sink.
    "override_dropped": "emitted during start-up, before any subscriber can have joined",
}

SUPERVISOR_SOURCE = Path(kinds.__file__).parent


PAYLOADS = {payload.__name__: kind for kind, payload in CATALOGUE.items()}


def _payload_names(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """The payload classes a module imports (local name -> class name), and the names it
    imports the kinds module itself under."""
    imported: dict[str, str] = {}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "clawsup.supervisor.kinds":
            imported.update({alias.asname or alias.name: alias.name for alias in node.names
                             if alias.name in PAYLOADS})
        elif isinstance(node, ast.ImportFrom) and node.module == "clawsup.supervisor":
            modules.update(alias.asname or alias.name for alias in node.names
                           if alias.name == "kinds")
    return imported, modules


def _payload_class(node: ast.expr, imported: dict[str, str], modules: set[str]) -> str | None:
    if isinstance(node, ast.Name):
        return imported.get(node.id)
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in modules and node.attr in PAYLOADS):
        return node.attr
    return None


def _payload_argument(call: ast.Call) -> ast.expr | None:
    """The payload argument of ``emit(payload, ...)`` or ``publish(program, payload, ...)``."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(
        call.func, "id", None)
    if name == "emit" and call.args:
        return call.args[0]
    if name == "publish" and len(call.args) >= 2:
        return call.args[1]
    return None


def emitted_kinds() -> set[str]:
    """Every event kind the supervisor's source builds: each payload class called (or
    handed to a call that builds it, as the breaker's ``_change(BreakerOpen, ...)``)
    outside kinds.py, isinstance() aside. An emit() or publish() given a bare string is
    the old form this scan would miss, and fails it."""
    found: set[str] = set()
    stringly: list[str] = []
    for path in sorted(SUPERVISOR_SOURCE.rglob("*.py")):
        if path.name == "kinds.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        imported, modules = _payload_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(_payload_argument(node), ast.Constant):
                stringly.append(f"{path.name}:{node.lineno}")
            if isinstance(node.func, ast.Name) and node.func.id == "isinstance":
                continue
            for candidate in (node.func, *node.args):
                name = _payload_class(candidate, imported, modules)
                if name is not None:
                    found.add(PAYLOADS[name])
    assert not stringly, f"events emitted by a bare kind string: {stringly}"
    return found


def test_every_kind_in_the_source_is_catalogued_and_raised_by_this_test() -> None:
    found = emitted_kinds()
    assert len(found) > 20, "the scan finds the kinds"
    assert found == set(EVENT_KINDS), "kinds.py lists exactly the kinds the code emits"
    assert found == set(RAISED), "add a producer for each new kind to RAISED and the run"


def test_event_data_is_plain_json_whatever_a_producer_put_in_it() -> None:
    event = Event(ts=1.0, kind="crash_loop", data={
        "cooldown": Duration(300.0), "size": Size(1024), "path": Path("/x"), 7: object()})
    assert type(event.data["cooldown"]) is float
    assert type(event.data["size"]) is int
    assert event.data["path"] == "/x"
    assert str(event.data["7"]).startswith("<object")
    assert json.loads(encode(event))["data"]["cooldown"] == 300.0


# -- the sinks ---------------------------------------------------------------------------------


class Webhook:
    """An alert sink: every JSON body POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> set[str]:
        return {alert["kind"] for alert in list(self.received)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Subscriber:
    """A real SUB socket on clawsup's event endpoint, read by a thread."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.setsockopt(zmq.RECONNECT_IVL, 20)
        # Connected before clawsup binds: ZeroMQ keeps trying until it is there.
        self._socket.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if self._socket.poll(50):
                self.events.append(json.loads(self._socket.recv()))

    def kinds(self) -> set[str]:
        return {event["kind"] for event in list(self.events)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close(linger=0)
        self._context.term()


# -- the producers ------------------------------------------------------------------------------


def _program(name: str, code: str, extra: str = "", autostart: bool = False) -> str:
    return f"""
[programs.{name}]
command = {python_program(textwrap.dedent(code))}
autostart = {"true" if autostart else "false"}
start_seconds = "100ms"
stop_timeout = "2s"
backoff = {{ initial = "100ms", factor = 1.0, max = "100ms", reset_after = "3s", jitter = 0.0 }}
{extra}
"""


SLEEPER = "import time\nwhile True: time.sleep(1)\n"
FAST_HANG = 'hang = { d_state_after = "1s", sample_interval = "100ms" }'

MAIN_THREAD_IN_D = """
import ctypes, os, signal, time
marker = {marker!r}
if os.path.exists(marker):
    while True: time.sleep(1)
open(marker, 'w').close()
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# clone(CLONE_VFORK | SIGCHLD) without CLONE_VM: this (main) thread sleeps in D.
if libc.syscall(56, 0x4000 | signal.SIGCHLD, 0, 0, 0, 0) == 0:
    time.sleep(60)
    os._exit(0)
while True: time.sleep(1)
"""

ZOMBIES = """
import os, time
marker = {marker!r}
if not os.path.exists(marker):
    open(marker, 'w').close()
    for _ in range(8):
        if os.fork() == 0:
            os._exit(0)
while True: time.sleep(1)
"""

ORPHANS = """
import os, time
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.3)  # by then its parent is gone: it is re-parented to clawsup
        os._exit(0)
    os._exit(0)
os.wait()
while True: time.sleep(1)
"""

# Holds a transcript lock as the gateway does during a turn, the first time only.
HOLDS_A_LOCK = """
import json, os, time
from datetime import UTC, datetime
marker = {marker!r}
if not os.path.exists(marker):
    open(marker, 'w').close()
    with open({lock!r}, 'x') as lock:
        json.dump({{"pid": os.getpid(),
                   "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}}, lock)
while True: time.sleep(1)
"""


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    sink = Webhook()
    yield sink
    sink.close()


def _config(tmp_path: Path, webhook: Webhook) -> Path:
    home = copy_home(tmp_path / "home")
    sessions = home / "agents" / "main" / "sessions"
    # A liveness probe that starts polling at once (initial_delay where the config has it).
    delay = 'initial_delay = "0s"\n' if "initial_delay" in Liveness.__struct_fields__ else ""
    marker = str(tmp_path / "marker")
    body = (
        _program("gw", SLEEPER, "main = true", autostart=True)
        + _program("crasher", "import sys; print('crashing'); sys.exit(3)",
                   'crash_loop = { max_restarts = 2, window = "30s", cooldown = "1h" }')
        + _program("hanger", MAIN_THREAD_IN_D.format(marker=marker + "-hanger"),
                   "[programs.hanger.hang]\nd_state_after = \"1s\"\nsample_interval = \"100ms\"\n")
        + _program("worker", worker_in_d(60, marker=marker + "-worker"),
                   "[programs.worker.hang]\nd_state_after = \"1s\"\nsample_interval = \"100ms\"\n")
        + _program("leaker", ZOMBIES.format(marker=marker + "-leaker"),
                   "[programs.leaker.hang]\nsample_interval = \"100ms\"\nzombie_children_max = 5\n")
        + _program("probed", SLEEPER,
                   f"[programs.probed.liveness]\nexec = [\"test\", \"-e\", \"{tmp_path}/alive\"]\n"
                   f"period = \"200ms\"\nfailures = 1\ntimeout = \"2s\"\n{delay}")
        + _program("hog", ALLOCATES.format(marker=marker + "-hog"),
                   "[programs.hog.hang]\nsample_interval = \"100ms\"\n"
                   "[programs.hog.resources]\nmax_rss = \"48MB\"\n")
        + _program("traced", SLEEPER).replace('stop_timeout = "2s"', 'stop_timeout = "1s"')
        + _program("orphaner", ORPHANS)
        + _program("stuck", HOLDS_A_LOCK.format(
            marker=marker + "-stuck", lock=str(sessions / "0badc0de-0000-4000-8000-000000000001.jsonl.lock")))
        + f"""
[breaker]
fallbacks = ["openai/gpt-4o"]
failures = 1
window = "2s"
cooldown = "1s"

# Every kind. A long quiet period: the first event of each (kind, program) is sent at
# once whatever the period, and the many repeats (state...) are not sent at all.
[alerts]
events = {json.dumps(sorted(EVENT_KINDS))}
quiet_period = "1h"
queue_size = 1000
[alerts.webhook]
url = "{webhook.url}"
"""
    )
    config = write_config(tmp_path, body)
    config.write_text(config.read_text().replace(
        "[janitor]\n", '[janitor]\ninterval = "200ms"\nlock_max_age = "1s"\n'
        'message_timeout = "1s"\nmax_session_size = "64KB"\narchive_retention = "1h"\n', 1))
    # set_model remembered over a file someone edited since: the file's model is not the
    # one it replaced.
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.json").write_text(json.dumps({
        "model": {"value": "openai/gpt-5.2", "replaced": "x-ai/grok-4"},
        "timezone": None, "updated_at": None}))
    return config


def test_every_event_kind_reaches_the_incident_log_the_event_socket_and_alerts(
    tmp_path: Path, webhook: Webhook
) -> None:
    config = _config(tmp_path, webhook)
    sessions = tmp_path / "home" / "agents" / "main" / "sessions"
    (tmp_path / "alive").touch()
    subscriber = Subscriber(f"ipc://{tmp_path}/run/events.sock")
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    tracer: subprocess.Popen[str] | None = None
    try:
        client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=20)
        wait_until(lambda: os.path.exists(tmp_path / "run" / "control.sock"), 20)
        # The subscription has arrived once an event comes through.
        wait_until(lambda: client.reload() and "reloaded" in subscriber.kinds(), 20,
                   interval=0.05, what="the SUB socket's first event")

        # Programs: each raises its kinds (RAISED says which).
        for name in ("crasher", "hanger", "worker", "leaker", "hog", "probed", "traced",
                     "orphaner", "stuck"):
            client.start(name, wait=False)
        wait_until(lambda: _running(client, "probed"), 20, what="probed RUNNING")
        (tmp_path / "alive").unlink()
        traced_pid = wait_until(lambda: _running(client, "traced"), 20, what="traced RUNNING")
        tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(traced_pid)],
                                  stdout=subprocess.PIPE, text=True)
        assert tracer.stdout is not None
        assert tracer.stdout.readline().strip() == "seized"
        client.stop("traced", wait=False)

        # Operators' doors.
        client.set_model("openai/gpt-5.2")
        client.set_timezone("Asia/Tokyo")
        (tmp_path / "home" / "restart.flag").write_text("every event test\n")
        original = config.read_text()
        config.write_text(original + "\n[janitor.bogus]\n")
        with pytest.raises(CommandFailed):
            client.reload()
        config.write_text(original)

        # The janitor's findings.
        (sessions / "5e551011-0000-4000-8000-000000000002.jsonl").write_bytes(
            b'{"type":"message"}\n' * 8000)
        (sessions / archive_name("01d5e551-0000-4000-8000-000000000003.jsonl",
                                 time.time() - 86400)).write_text("{}\n")

        expected_published = set(RAISED) - set(NOT_PUBLISHED)
        wait_until(lambda: "unkillable" in subscriber.kinds(), 30, what="unkillable")
        tracer.kill()
        tracer.wait()
        _wait_for_kinds("published", subscriber.kinds, expected_published - IDLE_KINDS, 40)

        # Restart when idle, last: a lock naming gw's pid is a stuck message after
        # message_timeout (1 s here), which would count against the breaker above.
        gw_pid = wait_until(lambda: _running(client, "gw"), 20, what="gw RUNNING")
        _hold_lock(sessions / "1d1e0000-0000-4000-8000-000000000004.jsonl.lock", gw_pid)
        client.restart_when_idle("gw", reason="every event test")
        client.restart("gw")
        wait_until(lambda: _running(client, "gw") not in (None, gw_pid), 20)
        client.restart_when_idle("gw", reason="every event test, idle")
        _wait_for_kinds("published", subscriber.kinds, expected_published, 40)
        _wait_for_kinds("alerted", webhook.kinds, set(RAISED), 20)

        incidents = client.incidents(limit=1000).latest
        logged = {incident.kind for incident in incidents}
        assert INCIDENT_KINDS & set(RAISED) <= logged, "every incident is in the log"
        assert any(i.kind == "exited" and i.data["reason"] == "crashed" for i in incidents)

        # The crash loop, in each sink, with its cooldown as a plain number.
        published = next(e for e in subscriber.events if e["kind"] == "crash_loop")
        alerted = next(a for a in webhook.received if a["kind"] == "crash_loop")
        in_log = next(i for i in incidents if i.kind == "crash_loop")
        for data in (published["data"], alerted["data"], in_log.data):
            assert data["cooldown"] == 3600.0
        # The one kind that cannot be published reached the other sinks.
        dropped = next(a for a in webhook.received if a["kind"] == "override_dropped")
        assert (dropped["data"]["value"], dropped["data"]["found"]) == (
            "openai/gpt-5.2", "anthropic/claude-opus-4-5")
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        subscriber.close()
        clawsup.stop()


IDLE_KINDS = {"restart_scheduled", "restart_cancelled", "idle_restart"}


def _hold_lock(path: Path, pid: int) -> None:
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    path.write_text(json.dumps({"pid": pid, "createdAt": created}))


def _running(client: Client, name: str) -> int | None:
    program = next(p for p in client.status().programs if p.name == name)
    return program.pid if program.state == "RUNNING" else None


def _wait_for_kinds(where: str, seen: Callable[[], set[str]], expected: set[str],
                    timeout: float) -> None:
    try:
        wait_until(lambda: expected <= seen(), timeout)
    except WaitTimeout:
        raise AssertionError(f"kinds not {where}: {sorted(expected - seen())}") from None
