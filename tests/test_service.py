"""The whole supervisor: control socket, janitor, settings and observability together,
driving the demo gateway through real sockets, signals and files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import json5
import pytest

from clawsup.client import Client, CommandFailed
from tests.util import Clawsup, copy_home, wait_until, write_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """clawsup supervising the demo gateway in a temp home."""

    def __init__(self, tmp_path: Path, extra: str = "", supervisor: str = "",
                 env: dict[str, str] | None = None, janitor: str = "",
                 tail: str = "", gateway_config: str = "") -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        if not self.home.exists():
            copy_home(self.home)
        self.control = self.home / ".demo-control"
        self.port = _free_port()
        command = [sys.executable, "-m", "clawsup.demo.gateway", "--home", str(self.home),
                   "--port", str(self.port), "--shutdown-grace", "1"]
        body = f"""
[programs.gateway]
command = {json.dumps(command)}
main = true
start_seconds = "200ms"
stop_timeout = "3s"
backoff = {{ initial = "100ms", factor = 2.0, max = "1s", reset_after = "2s" }}
{extra}
{tail}
"""
        self.config = write_config(tmp_path, body, supervisor=supervisor)
        self.config.write_text(self.config.read_text().replace(
            "[janitor]\n", f'[janitor]\ninterval = "200ms"\nlock_max_age = "2s"\n{janitor}\n', 1
        ).replace("[gateway_config]\n", f"[gateway_config]\n{gateway_config}\n", 1))
        self.clawsup = Clawsup(self.config, tmp_path / f"clawsup-{time.monotonic_ns()}.log",
                               env=env)
        self.client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=20)
        wait_until(self._running, 20, what="gateway RUNNING")

    def _running(self) -> bool:
        if not (self.tmp / "run" / "control.sock").exists():
            return False
        try:
            status = self.client.status()
        except Exception:
            return False
        program = status.programs[0]
        # RUNNING comes after start_seconds; the demo gateway's own "ready" file (its pid)
        # says it is listening and watching its control directory.
        ready = self.control / "ready"
        return (program.state == "RUNNING" and ready.exists()
                and ready.read_text().strip() == str(program.pid))

    def gateway(self) -> tuple[str, int | None]:
        program = self.client.status().programs[0]
        return program.state, program.pid

    def command(self, text: str) -> None:
        name = f"{time.monotonic_ns()}.cmd"
        (self.control / f".{name}").write_text(text)
        os.rename(self.control / f".{name}", self.control / name)

    def sessions(self) -> Path:
        return self.home / "agents" / "main" / "sessions"

    def stop(self) -> None:
        self.clawsup.stop()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    instances: list[Demo] = []

    def start(**kwargs: object) -> Demo:
        instance = Demo(tmp_path, **kwargs)  # type: ignore[arg-type]
        instances.append(instance)
        return instance

    yield start  # type: ignore[misc]
    for instance in instances:
        instance.stop()


# -- control plane ----------------------------------------------------------------------


def test_restart_replies_when_running_again_while_status_is_answered(demo) -> None:
    d = demo()
    _, old_pid = d.gateway()
    d.command("message-slow 2 s1")  # the graceful stop waits for this message
    wait_until((d.sessions() / "s1.jsonl.lock").exists, 10)
    result: dict[str, object] = {}

    def restart() -> None:
        result["reply"] = Client(d.client.endpoint, timeout=30).restart()

    thread = threading.Thread(target=restart)
    thread.start()
    # While the restart is in flight, other clients are answered at once.
    states = set()
    while thread.is_alive():
        states.add(Client(d.client.endpoint, timeout=2).status().programs[0].state)
    thread.join()
    reply = result["reply"]
    assert reply.state == "RUNNING"  # type: ignore[attr-defined]
    assert reply.pid != old_pid  # type: ignore[attr-defined]
    assert "STOPPING" in states


def test_unknown_program_and_bad_signal_are_errors(demo) -> None:
    d = demo()
    with pytest.raises(CommandFailed) as error:
        d.client.restart("nope")
    assert error.value.code == "unknown_program"
    with pytest.raises(CommandFailed) as error:
        d.client.signal("SIGNOPE")
    assert error.value.code == "bad_value"
    assert d.gateway()[0] == "RUNNING"


def test_set_model_keeps_other_keys_persists_and_is_reapplied(demo, tmp_path: Path) -> None:
    d = demo()
    config_file = d.home / "clawdbot.json"
    reply = d.client.set_model("openai/gpt-5.2")
    assert (reply.old, reply.new) == ("anthropic/claude-opus-4-5", "openai/gpt-5.2")
    doc = json5.loads(config_file.read_text())
    assert doc["agents"]["defaults"]["model"] == {
        "primary": "openai/gpt-5.2", "fallbacks": ["openai/gpt-5.2"]}
    assert doc["channels"]["telegram"]["dmPolicy"] == "pairing"
    assert doc["gateway"]["reload"]["debounceMs"] == 300
    assert "// IANA zone" in config_file.read_text(), "the operator's comments stay"
    # The gateway applied it live (its own file watcher).
    d.clawsup.wait_log("config reloaded: model=openai/gpt-5.2")
    # A bad value changes nothing.
    before = config_file.read_bytes()
    for bad in ("", "no-slash", "a b/c", "x" * 10_000):
        with pytest.raises(CommandFailed) as error:
            d.client.set_model(bad)
        assert error.value.code == "bad_value"
    with pytest.raises(CommandFailed):
        d.client.set_timezone("Mars/Base")
    assert config_file.read_bytes() == before
    # The choice survives clawsup itself and a reset config: stop clawsup, put the
    # original file back (a new container), start again.
    d.client.shutdown()
    assert d.clawsup.wait() == 0
    config_file.write_text(config_file.read_text().replace(
        "openai/gpt-5.2\"", "anthropic/claude-opus-4-5\"", 1))
    d2 = demo()
    assert json5.loads(config_file.read_text())["agents"]["defaults"]["model"]["primary"] == \
        "openai/gpt-5.2"
    assert d2.client.status().model == "openai/gpt-5.2"


def _primary(config_file: Path) -> str:
    return str(json5.loads(config_file.read_text())["agents"]["defaults"]["model"]["primary"])


def _remembered(tmp_path: Path) -> dict[str, object]:
    return dict(json.loads((tmp_path / "state" / "overrides.json").read_text()))


def test_set_model_is_reapplied_over_an_unchanged_file(demo, tmp_path: Path) -> None:
    d = demo()
    d.client.set_model("openai/gpt-5.2")
    d.client.shutdown()
    assert d.clawsup.wait() == 0
    d2 = demo()
    assert d2.client.status().model == "openai/gpt-5.2"
    assert _remembered(tmp_path)["model"] == {
        "value": "openai/gpt-5.2", "replaced": "anthropic/claude-opus-4-5", "written": None}
    assert "override_dropped" not in d2.clawsup.log()


def test_a_hand_edit_after_set_model_survives_a_clawsup_restart(demo, tmp_path: Path) -> None:
    d = demo()
    config_file = d.home / "clawdbot.json"
    d.client.set_model("openai/gpt-5.2")
    d.client.shutdown()
    assert d.clawsup.wait() == 0
    # The operator edits the file by hand (comments and all) while clawsup is down.
    config_file.write_text(config_file.read_text().replace("openai/gpt-5.2\"", "x-ai/grok-4\"", 1))
    d2 = demo()
    assert _primary(config_file) == "x-ai/grok-4"
    assert d2.client.status().model == "x-ai/grok-4"
    assert _remembered(tmp_path)["model"] is None, "the stale override is forgotten"
    assert "not re-applying agents.defaults.model.primary = 'openai/gpt-5.2'" in d2.clawsup.log()
    # And it stays forgotten: another restart does not bring it back either.
    d2.client.shutdown()
    assert d2.clawsup.wait() == 0
    demo()
    assert _primary(config_file) == "x-ai/grok-4"


def test_clawdbot_config_set_after_set_timezone_survives_a_clawsup_restart(
    demo, tmp_path: Path
) -> None:
    d = demo()
    config_file = d.home / "clawdbot.json"
    d.client.set_timezone("Asia/Tokyo")
    d.client.shutdown()
    assert d.clawsup.wait() == 0
    # `clawdbot config set agents.defaults.userTimezone Europe/Berlin` rewrites the file
    # as plain JSON: no comments, quoted keys.
    doc = json5.loads(config_file.read_text())
    doc["agents"]["defaults"]["userTimezone"] = "Europe/Berlin"
    config_file.write_text(json.dumps(doc, indent=2) + "\n")
    d2 = demo()
    assert json5.loads(config_file.read_text())["agents"]["defaults"]["userTimezone"] == \
        "Europe/Berlin"
    assert d2.client.status().timezone == "Europe/Berlin"
    assert _remembered(tmp_path)["timezone"] is None
    # The gateway does not get the forgotten zone as TZ either.
    _, pid = d2.gateway()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"TZ=Asia/Tokyo" not in environ


def test_the_operators_model_is_reapplied_over_the_breakers_fallback(
    demo, tmp_path: Path
) -> None:
    breaker = '[breaker]\nfallbacks = ["openai/gpt-4o"]\nfailures = 1\nwindow = "1m"\n' \
              'cooldown = "1h"\n'
    d = demo(tail=breaker)
    config_file = d.home / "clawdbot.json"
    d.client.set_model("openai/gpt-5.2")
    d.command("crash 1")
    wait_until(lambda: _primary(config_file) == "openai/gpt-4o", 20, what="the fallback")
    d.client.shutdown()
    d.clawsup.wait()  # its status is the crash's, if the gateway had not restarted yet
    # The fallback in the file is clawsup's own doing, not an edit to respect.
    demo(tail=breaker)
    assert _primary(config_file) == "openai/gpt-5.2"
    assert _remembered(tmp_path)["model"] == {
        "value": "openai/gpt-5.2", "replaced": "anthropic/claude-opus-4-5",
        "written": "openai/gpt-4o"}


def test_set_timezone_is_reapplied_over_an_unchanged_file(demo, tmp_path: Path) -> None:
    d = demo()
    d.client.set_timezone("Asia/Tokyo")
    d.client.shutdown()
    assert d.clawsup.wait() == 0
    d2 = demo()
    assert d2.client.status().timezone == "Asia/Tokyo"
    _, pid = d2.gateway()
    assert b"TZ=Asia/Tokyo" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_set_timezone_sets_tz_for_future_starts(demo) -> None:
    d = demo()
    reply = d.client.set_timezone("Asia/Tokyo")
    assert reply.new == "Asia/Tokyo"
    d.client.restart()
    # The demo gateway logs with TZ: +09:00 is Tokyo.
    d.clawsup.wait_log("+09:00 [gateway] listening")


def test_restart_flag_and_ops_requests(demo) -> None:
    d = demo()
    _, pid = d.gateway()
    (d.home / "restart.flag").write_text("new skill installed")
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 15)
    assert not (d.home / "restart.flag").exists()
    assert "restart flag: new skill installed" in d.clawsup.log()
    inbox = d.home / "ops-requests"
    inbox.mkdir()
    (inbox / ".req-1.json.tmp").write_text('{"action": "set_timezone", "timezone": "UTC"}')
    os.rename(inbox / ".req-1.json.tmp", inbox / "req-1.json")
    (inbox / "req-2.json").write_text("{not json")
    wait_until((inbox / "done" / "req-1.json.result.json").exists, 15)
    wait_until((inbox / "failed" / "req-2.json.result.json").exists, 15)
    done = json.loads((inbox / "done" / "req-1.json.result.json").read_text())
    assert done["ok"] is True
    assert done["result"]["new"] == "UTC"
    failed = json.loads((inbox / "failed" / "req-2.json.result.json").read_text())
    assert failed["ok"] is False


def test_health_follows_the_main_program(demo) -> None:
    d = demo()
    ctl = [sys.executable, "-m", "clawsup.client.ctl", "--socket", d.client.endpoint]
    assert d.client.health().healthy
    assert subprocess.run([*ctl, "health"], timeout=30).returncode == 0
    d.client.stop()
    health = d.client.health()
    assert not health.healthy
    assert "gateway is STOPPED" in health.reasons
    assert subprocess.run([*ctl, "health"], timeout=30).returncode == 1


# -- janitor ----------------------------------------------------------------------------


def test_locks_of_a_killed_gateway_are_gone_before_it_is_respawned(demo) -> None:
    d = demo()
    _, pid = d.gateway()
    assert pid is not None
    d.command("hold-lock s1")
    lock = d.sessions() / "s1.jsonl.lock"
    wait_until(lock.exists, 10)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 15)
    log = d.clawsup.log()
    removed = log.index(f"Removing orphan lock: {lock} (PID {pid} was our gateway")
    respawned = log.index("spawned pid", log.index(f"(pid {pid}) exited"))
    assert removed < respawned, "the lock must be gone before the new gateway starts"
    # The new gateway can use the session at once: no "session file locked".
    d.command("message s1")
    wait_until(lambda: "message #1 in s1" in d.clawsup.log() or "answered" in d.clawsup.log(), 15)
    assert "session file locked" not in d.clawsup.log()


def test_stuck_message_restarts_the_gateway_and_clears_its_lock(demo) -> None:
    d = demo(janitor='message_timeout = "1s"')
    _, pid = d.gateway()
    d.command("hold-lock stuck")
    lock = d.sessions() / "stuck.jsonl.lock"
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 20)
    wait_until(lambda: not lock.exists(), 10)
    assert "message_timeout" in d.clawsup.log()
    incidents = d.client.incidents()
    kinds = {incident.kind for incident in incidents.latest}
    assert "message_timeout" in kinds


def test_stale_lock_from_before_the_container_restart_is_removed_before_start(demo) -> None:
    # The fixture holds a lock of PID 37 from hours ago: dead, or reused by a younger
    # process; either way it is gone before the gateway starts.
    d = demo()
    log = d.clawsup.log()
    lock = d.sessions() / "c0ffee00-1111-4222-8333-444455556666.jsonl.lock"
    assert not lock.exists()
    assert log.index(f"Removing orphan lock: {lock}") < log.index("spawned pid")


# -- observability ----------------------------------------------------------------------


def test_metrics_are_scraped_and_counters_move(demo) -> None:
    port = _free_port()
    d = demo(tail=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    text = wait_until(lambda: _try(scrape), 15)
    assert 'clawsup_program_state{program="gateway",state="RUNNING"} 1.0' in text
    # A client's free text is never a label: only the bounded reason is.
    d.client.restart(reason="hung")
    text = wait_until(lambda: (t := _try(scrape)) and 'reason="requested"' in t and t, 15,
                      what="restart counted")
    assert 'clawsup_restarts_total{program="gateway",reason="requested"} 1.0' in text
    assert 'reason="hung"' not in text


def _try(function):  # type: ignore[no-untyped-def]
    try:
        return function()
    except OSError:
        return None


def test_sd_notify_ready_when_not_pid1(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(30)
    d = Demo(tmp_path, env={"NOTIFY_SOCKET": path})
    try:
        messages = []
        while not any(b"READY=1" in m for m in messages):
            messages.append(receiver.recv(4096))
        assert any(b"READY=1" in m for m in messages)
        # The gateway does not inherit NOTIFY_SOCKET.
        _, pid = d.gateway()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"NOTIFY_SOCKET" not in environ
    finally:
        d.stop()
        receiver.close()


def test_telegram_alert_reaches_a_bot_api_server_when_the_gateway_crashes(demo) -> None:
    import http.server

    received: list[dict[str, object]] = []

    class BotApi(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, **json.loads(body)})
            reply = b'{"ok": true, "result": {}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BotApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        d = demo(
            env={"CLAWSUP_TELEGRAM_TOKEN": "123:secret"},
            tail=f"""
[alerts]
events = ["exited", "crash_loop"]
quiet_period = "1m"
[alerts.telegram]
chat_id = "4242"
api_base = "http://127.0.0.1:{server.server_port}"
""",
        )
        d.command("crash 3")
        wait_until(lambda: received, 20, what="a sendMessage call")
        call = received[0]
        assert call["path"] == "/bot123:secret/sendMessage"
        assert call["chat_id"] == "4242"
        assert "exit 3" in str(call["text"])
        assert d.gateway()[0] in ("RUNNING", "STARTING", "BACKOFF")
    finally:
        server.shutdown()


def test_bad_input_and_1000_clients_against_the_real_supervisor(demo) -> None:
    """Garbage, wrong types, unknown commands, oversized and multi-part frames, and 1,000
    concurrent clients: every well-formed request is answered, status stays right and
    the gateway keeps running, untouched."""
    import zmq

    d = demo()
    _, pid = d.gateway()
    context = zmq.Context()
    try:
        bad = [b"", b"\xff\xfe", b"not json", b"[]", b'{"cmd": 5}', b'{"cmd": "reboot"}',
               b'{"cmd": "restart", "program": ["x"]}', b'{"cmd": "signal"}',
               b'{"cmd": "set_model", "model": 42}', b"[" * 100_000]
        for frame in bad:
            sock = context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(d.client.endpoint)
            sock.send(frame)
            reply = json.loads(sock.recv())
            assert reply["ok"] is False, frame[:40]
            assert reply["error"]["code"] in ("bad_request", "unknown_command", "bad_value")
            sock.close()
        # Larger than max_request_size (1 MiB): "too_large", and nothing else happens.
        big = context.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        big.setsockopt(zmq.RCVTIMEO, 10000)
        big.connect(d.client.endpoint)
        big.send(b'{"cmd": "set_model", "model": "' + b"x" * (2 << 20) + b'"}')
        assert json.loads(big.recv())["error"]["code"] == "too_large"
        big.close()
        # 1,000 clients at once, all DEALERs of one process.
        clients = []
        for _ in range(1000):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(d.client.endpoint)
            clients.append(sock)
        for sock in clients:
            sock.send_multipart([b"", b'{"cmd": "status"}'])
        poller = zmq.Poller()
        for sock in clients:
            poller.register(sock, zmq.POLLIN)
        answered = 0
        deadline = time.monotonic() + 60
        pending = set(clients)
        while pending and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                _, frame = sock.recv_multipart()
                reply = json.loads(frame)
                assert reply["ok"] is True
                assert reply["programs"][0]["pid"] == pid
                answered += 1
                pending.discard(sock)
                poller.unregister(sock)
        assert answered == 1000
        for sock in clients:
            sock.close()
    finally:
        context.destroy(linger=0)
    assert d.gateway() == ("RUNNING", pid)
    assert d.client.status().programs[0].restarts == 0


def test_model_breaker_switches_to_the_fallback_and_back(demo) -> None:
    d = demo(tail="""
[breaker]
fallbacks = ["openai/gpt-5.2"]
failures = 2
window = "1m"
cooldown = "2s"
""", extra='crash_loop = { max_restarts = 20, window = "60s", cooldown = "60s" }\n')
    config_file = d.home / "clawdbot.json"

    def model() -> str:
        return str(json5.loads(config_file.read_text())["agents"]["defaults"]["model"]["primary"])

    assert model() == "anthropic/claude-opus-4-5"
    for _ in range(2):
        _, pid = d.gateway()
        d.command("crash 1")
        wait_until(lambda p=pid: d.gateway()[1] not in (None, p) and d.gateway()[0] == "RUNNING",
                   20)
    # Two crashes attributed to the primary within the window: switched to the fallback.
    wait_until(lambda: model() == "openai/gpt-5.2", 10, what="switch to the fallback")
    status = d.client.status()
    assert status.breaker is not None
    assert status.breaker.state == "open"
    assert not d.client.health().healthy
    # After the cooldown the primary is tried again (half-open).
    wait_until(lambda: model() == "anthropic/claude-opus-4-5", 15, what="primary tried again")
    assert d.client.status().breaker.state in ("half_open", "closed")  # type: ignore[union-attr]
    kinds = [i.kind for i in d.client.incidents().latest]
    assert "breaker_open" in kinds


TRACER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_O_TRACEEXIT = 0x4206, 0x40
# Seized with TRACEEXIT, the tracee stops at its exit, SIGKILL included, and stays there
# until this tracer lets go (here: exits).
if libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), None, ctypes.c_void_p(PTRACE_O_TRACEEXIT)):
    sys.exit('seize failed: errno %d' % ctypes.get_errno())
print('seized', flush=True)
time.sleep(600)
"""


def test_a_process_still_present_after_sigkill_is_unkillable_not_stopped(demo) -> None:
    d = demo()
    _, pid = d.gateway()
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(pid)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert tracer.stdout is not None
        assert tracer.stdout.readline().strip() == "seized"
        # SIGTERM is held by the tracer, SIGKILL after stop_timeout leaves it at its exit.
        with pytest.raises(CommandFailed) as error:
            Client(d.client.endpoint, timeout=60).stop()
        assert error.value.code == "failed"
        assert "still present after SIGKILL" in error.value.message
        program = d.client.status().programs[0]
        assert (program.state, program.unkillable, program.pid) == ("STOPPING", True, pid)
        health = d.client.health()
        assert not health.healthy
        assert "gateway is unkillable" in health.reasons
        assert "is still present 5s after SIGKILL" in d.clawsup.log()
    finally:
        tracer.kill()
        tracer.wait()
    # Once it can exit, it is reaped and only then reported stopped.
    wait_until(lambda: d.client.status().programs[0].state == "STOPPED", 15)
    program = d.client.status().programs[0]
    assert not program.unkillable
    assert program.last_exit is not None
    assert program.last_exit.signal == "SIGKILL"
    assert "finally exited after being unkillable" in program.last_exit.reason


def test_reload_applies_new_janitor_settings_and_refuses_a_broken_config(demo) -> None:
    d = demo()
    _, pid = d.gateway()
    d.command("hold-lock stuck")
    lock = d.sessions() / "stuck.jsonl.lock"
    wait_until(lock.exists, 10)
    original = d.config.read_text()
    # A broken config is refused with the reason; the old one keeps running.
    d.config.write_text(original + "\n[janitor.bogus]\n")
    with pytest.raises(CommandFailed) as error:
        d.client.reload()
    assert "keeping the old one" in error.value.message
    assert d.gateway() == ("RUNNING", pid)
    # A valid reload that shortens message_timeout: the new janitor finds the stuck message.
    d.config.write_text(original.replace(
        'interval = "200ms"', 'interval = "200ms"\nmessage_timeout = "1s"', 1))
    d.client.reload()
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 20)
    wait_until(lambda: not lock.exists(), 10)
    assert "message_timeout" in {i.kind for i in d.client.incidents().latest}


def test_events_stream_from_the_real_supervisor(demo) -> None:
    d = demo()
    seen: list[str] = []

    def follow() -> None:
        with Client(d.client.endpoint, timeout=20) as client:
            for event in client.events(kinds=["restarted"], timeout=20):
                seen.append(f"{event.kind} {event.program} {event.data.get('reason')}")
                return

    thread = threading.Thread(target=follow)
    thread.start()
    # A SUB socket joins asynchronously: keep restarting until the follower hears one.
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        d.client.restart()
    thread.join(5)
    assert seen
    assert seen[0] == "restarted gateway requested"


def test_start_stop_signal_and_set_model_with_apply_restart(demo) -> None:
    d = demo(gateway_config='apply = "restart"\n'
             'allowed_models = ["openai/gpt-5.2", "anthropic/claude-opus-4-5"]')
    _, pid = d.gateway()
    # Not in allowed_models: refused, nothing restarted.
    with pytest.raises(CommandFailed) as error:
        d.client.set_model("openrouter/some-model")
    assert error.value.code == "bad_value"
    assert d.gateway() == ("RUNNING", pid)
    # Allowed: written, then applied by a restart.
    reply = d.client.set_model("openai/gpt-5.2")
    assert reply.applied == "restart"
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 20)
    # signal: SIGTERM to the gateway itself; it exits 0 and autorestart brings it back.
    _, pid = d.gateway()
    d.client.signal("TERM")
    wait_until(lambda: d.gateway()[1] not in (None, pid) and d.gateway()[0] == "RUNNING", 20)
    # stop, then start.
    assert d.client.stop().state == "STOPPED"
    with pytest.raises(CommandFailed) as error:
        d.client.stop()
    assert error.value.code == "invalid_state"
    started = d.client.start()
    assert started.state == "RUNNING"
    assert d.client.health().healthy


def test_a_second_clawsup_on_the_same_run_dir_refuses_and_starts_nothing(demo) -> None:
    d = demo()
    _, pid = d.gateway()
    second = subprocess.run(
        [sys.executable, "-m", "clawsup", "run", "-c", str(d.config)],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1
    assert f"another clawsup is running (pid {d.clawsup.proc.pid})" in second.stderr
    assert "spawned" not in second.stderr, "no program may start"
    assert d.gateway() == ("RUNNING", pid)
    assert d.client.status().programs[0].restarts == 0


def test_a_stuck_message_opens_the_breaker_shown_by_clawsupctl_and_metrics(demo) -> None:
    port = _free_port()
    d = demo(janitor='message_timeout = "1s"', tail=f"""
[breaker]
fallbacks = ["openai/gpt-5.2"]
failures = 1
window = "1m"
cooldown = "1m"
[metrics]
listen = "127.0.0.1:{port}"
""")
    config_file = d.home / "clawdbot.json"
    d.command("hold-lock stuck")
    # The stuck message is attributed to the model in use: the breaker opens at once.
    wait_until(lambda: "openai/gpt-5.2" in json5.loads(config_file.read_text())
               ["agents"]["defaults"]["model"]["primary"], 20, what="switch to the fallback")
    ctl = subprocess.run([sys.executable, "-m", "clawsup.client.ctl", "--socket",
                          d.client.endpoint, "status"], capture_output=True, text=True, timeout=30)
    assert "breaker: open (using openai/gpt-5.2)" in ctl.stdout

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    wait_until(lambda: 'clawsup_breaker_state{model="anthropic/claude-opus-4-5",state="open"} 1.0'
               in (_try(scrape) or ""), 15, what="the breaker state in metrics")
    event = next(i for i in d.client.incidents().latest if i.kind == "breaker_open")
    assert event.data["cause"] == "message_timeout"
