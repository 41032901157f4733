"""clawsup with the shipped ``etc/clawsup.toml`` running the real ``clawdbot`` gateway.

The gateway is the pinned npm release installed by ``tools/install-gateway`` into a cache
outside the repository. Each run gets a home of its own (``$HOME/.clawdbot/clawdbot.json``
pointing the gateway's model provider at a :class:`FakeModelServer`), and clawsup is
started as ``clawsup run -c etc/clawsup.toml -c override.toml``: the override says only
what a test box needs (temporary run/state dirs, the gateway's directory, node 22 first
on PATH, the warm compile cache), plus whatever timing a test group needs, spelled out in
that group.

The shipped command listens on port 18789; there is one gateway at a time on a box.
``TMPDIR`` points into the cache so the gateway's jiti compile cache stays warm between
tests and runs (a cold start costs 29-55 s and 40 s of CPU, a warm one 5-9 s). The
gateway's single-instance lock lives there too, keyed by the config path, which differs
per run.

Every process a run starts carries its ``HOME`` in its environment (clawsup, the gateway,
the exec tool's detached children, the agent CLI): that is how :meth:`RealRun.leftovers`
finds what is left and how cleanup ends only what this run started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from tests.realgw.fake_model import FakeModelServer
from tests.util import REPO, wait_until

SHIPPED = REPO / "etc" / "clawsup.toml"
INSTALLER = REPO / "tools" / "install-gateway"
GATEWAY_PORT = 18789  # the shipped command's --port
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}/"
TOKEN = "realgw-test-token"
REQUIRE_ENV = "CLAWSUP_REQUIRE_REAL_GATEWAY"
BIN = Path(sys.executable).parent
CLAWSUPCTL = [str(BIN / "clawsupctl")] if (BIN / "clawsupctl").exists() else [
    sys.executable, "-m", "clawsup.client.ctl"]
# A cold gateway (empty compile cache) takes up to 55 s on a quiet box; give it room on
# a busy one.
SERVING_TIMEOUT = 150.0
MODELS = [
    {"id": "model-a", "name": "A", "contextWindow": 128000, "maxTokens": 4096},
    {"id": "model-b", "name": "B", "contextWindow": 128000, "maxTokens": 4096},
]


@dataclass(frozen=True)
class GatewayInstall:
    app: Path  # .../app/node_modules/clawdbot: the shipped command's working directory
    node: Path  # a node >= 22.12

    @property
    def tmpdir(self) -> Path:
        """A persistent TMPDIR: the gateway's jiti compile cache lives in it."""
        return self.node.parent.parent.parent / "tmp"

    def path_env(self) -> str:
        """PATH with this node first, so the shipped command's ``node`` is it."""
        return f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def install_gateway() -> GatewayInstall:
    """Run ``tools/install-gateway`` (which reuses its cache); skip when it cannot install.

    With ``CLAWSUP_REQUIRE_REAL_GATEWAY=1`` (as ``.ci/run`` sets) a failed install fails
    the suite instead of skipping it.
    """
    outputs = []
    for argv in ([str(INSTALLER)], [str(INSTALLER), "--print-node"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            message = f"the real gateway is not installed and tools/install-gateway failed: {why}"
            if os.environ.get(REQUIRE_ENV) == "1":
                pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
            pytest.skip(message)
        outputs.append(Path(done.stdout.strip().splitlines()[-1]))
    install = GatewayInstall(app=outputs[0], node=outputs[1])
    install.tmpdir.mkdir(exist_ok=True)
    return install


def gateway_config(model: FakeModelServer, *, mode: bool = True, token: bool = True,
                   **defaults: Any) -> dict[str, Any]:
    """The gateway's clawdbot.json: local mode, a token, the fake provider as default."""
    gateway: dict[str, Any] = {}
    if mode:
        gateway["mode"] = "local"
    if token:
        gateway["auth"] = {"token": TOKEN}
    return {
        "gateway": gateway,
        "models": {"providers": {"fake": {
            "baseUrl": model.base_url, "apiKey": "x", "api": "openai-completions",
            "models": MODELS,
        }}},
        "agents": {"defaults": {"model": {"primary": "fake/model-a"}, **defaults}},
    }


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_answers(url: str = GATEWAY_URL, timeout: float = 2.0) -> bool:
    """Any HTTP response proves the gateway's event loop runs (a TCP accept does not)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            answer.read(1)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def can_unshare() -> bool:
    """Can this box run a process as PID 1 of a new PID namespace (root, unshare)?"""
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _link_clawsupctl(path: Path) -> None:
    """``clawsupctl`` at ``path``: this venv's console script, or a shell wrapper."""
    if len(CLAWSUPCTL) == 1:
        path.symlink_to(CLAWSUPCTL[0])
        return
    path.write_text(f'#!/bin/sh\nexec {" ".join(map(shlex.quote, CLAWSUPCTL))} "$@"\n')
    path.chmod(0o755)


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


class EventRecorder(threading.Thread):
    """Every event clawsup publishes on ``events.sock``, from before it binds."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="events", daemon=True)
        self.events: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.setsockopt(zmq.LINGER, 0)
        # zmq retries an ipc connect until the file is there: nothing published after
        # clawsup binds is missed once the subscription reached it.
        self._socket.connect(endpoint)

    def run(self) -> None:
        while not self._done.is_set():
            if self._socket.poll(100):
                self.events.append(json.loads(self._socket.recv()))

    def kinds(self) -> list[str]:
        return [event["kind"] for event in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["kind"] == kind]

    def stop(self) -> None:
        """Also for a recorder never started (the run failed before it could start):
        left open, its context is terminated by the garbage collector in whatever test
        runs then, and zmq_ctx_term blocks that test for good."""
        self._done.set()
        if self.is_alive():
            self.join(5)
        if not self._context.closed:
            self._socket.close(linger=0)
            self._context.term()


class RealRun:
    """One clawsup (shipped config + override) supervising the real gateway."""

    def __init__(self, tmp: Path, install: GatewayInstall, model: FakeModelServer, *,
                 config: dict[str, Any] | None = None, override: str = "",
                 pid1: bool = False) -> None:
        self.tmp = tmp
        self.install = install
        self.model = model
        self.pid1 = pid1
        self.home = tmp / "home"
        self.clawdbot = self.home / ".clawdbot"
        self.clawdbot.mkdir(parents=True)
        self.config_path = self.clawdbot / "clawdbot.json"
        self.write_gateway_config(config if config is not None else gateway_config(model))
        # Not made here: as in a brand-new home, the gateway makes it (agents/ and all) at
        # its first turn, and clawsup's janitor, which watches the directories it may
        # appear in, sweeps it from its next sweep on (not its next full pass).
        self.sessions = self.clawdbot / "agents" / "main" / "sessions"
        # clawsupctl on the gateway's PATH, alone, as the image puts it in /usr/local/bin:
        # the agent's exec tool runs it (the clawsup skill).
        self.bin = tmp / "bin"
        self.bin.mkdir()
        _link_clawsupctl(self.bin / "clawsupctl")
        self.run_dir = tmp / "run"
        self.state_dir = tmp / "state"
        self.endpoint = f"ipc://{self.run_dir}/control.sock"
        self.override = tmp / "override.toml"
        self.override.write_text(self._override(override))
        self.env = {
            **os.environ,
            # As a container's ENV would: `~` in the shipped [janitor] and
            # [gateway_config] paths is this home.
            "HOME": str(self.home),
            "PATH": self.path_env(),
            "TMPDIR": str(install.tmpdir),
            "NO_COLOR": "1",
        }
        self.env.pop("CLAWDBOT_CONFIG_PATH", None)
        self.env.pop("CLAWDBOT_GATEWAY_TOKEN", None)
        self.env.pop("CLAWSUP_SOCKET", None)
        self.log_path = tmp / "clawsup.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.events = EventRecorder(f"ipc://{self.run_dir}/events.sock")
        self._agents: list[subprocess.Popen[str]] = []

    def _override(self, extra: str) -> str:
        install = self.install
        return f"""\
# Test override on top of the shipped etc/clawsup.toml (tests/realgw): only what a test
# box needs; every other key is as shipped.
[supervisor]
run_dir = {_toml(str(self.run_dir))}
state_dir = {_toml(str(self.state_dir))}

[programs.gateway]
directory = {_toml(str(install.app))}

[programs.gateway.environment]
HOME = {_toml(str(self.home))}
PATH = {_toml(self.path_env())}
TMPDIR = {_toml(str(install.tmpdir))}
NO_COLOR = "1"
{extra}"""

    def path_env(self) -> str:
        return f"{self.bin}{os.pathsep}{self.install.path_env()}"

    def write_gateway_config(self, config: dict[str, Any]) -> None:
        # JSON5, as the gateway reads it: a comment is fine.
        self.config_path.write_text("// written by tests/realgw\n" + json.dumps(config, indent=2))

    # -- clawsup ------------------------------------------------------------------------

    def start(self) -> RealRun:
        if port_in_use(GATEWAY_PORT):
            pytest.fail(f"port {GATEWAY_PORT} is taken by another process; the real-gateway "
                        "suite runs the shipped command, which listens there", pytrace=False)
        argv = [sys.executable, "-m", "clawsup", "run", "-c", str(SHIPPED), "-c", str(self.override)]
        if self.pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        self.events.start()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True, cwd=self.tmp)
        return self

    @property
    def supervisor_pid(self) -> int:
        assert self.proc is not None
        if not self.pid1:
            return self.proc.pid

        def find() -> int | None:
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                return int(kids.split()[0]) if kids.split() else None
            return None

        return wait_until(find, 10, what="clawsup inside unshare")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLAWSUPCTL, "--socket", self.endpoint, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def ctl_ok(self, *args: str) -> str:
        done = self.ctl(*args)
        assert done.returncode == 0, (
            f"clawsupctl {' '.join(args)}: {done.stdout}{done.stderr}\n{self.tail()}")
        return done.stdout

    def status(self) -> dict[str, Any] | None:
        done = self.ctl("status", "--json", timeout=15)
        if done.returncode != 0:
            return None
        reply = json.loads(done.stdout)
        return next(p for p in reply["programs"] if p["name"] == "gateway")

    def health(self) -> int:
        return self.ctl("health", timeout=15).returncode

    def host_pid(self, pid: int) -> int | None:
        """The gateway's pid as this test sees it (inside unshare, from its NSpid)."""
        if not self.pid1:
            return pid
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.supervisor_pid).children():
                with contextlib.suppress(OSError, StopIteration):
                    status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
                    line = next(line for line in status if line.startswith("NSpid:"))
                    if int(line.split()[-1]) == pid:
                        return child.pid
        return None

    def listens(self, host_pid: int) -> bool:
        try:
            connections = psutil.Process(host_pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == GATEWAY_PORT
                   for c in connections)

    def serving(self, other_than: int | None = None, timeout: float = SERVING_TIMEOUT,
                what: str = "the gateway serving") -> dict[str, Any]:
        """The gateway's status once it serves: RUNNING in clawsup's status (with a pid
        other than ``other_than``), that very process listening on the port, and an HTTP
        answer from it. Holds whether RUNNING means "spawned" or "probe passed"."""

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"clawsup exited with {self.proc.returncode}:\n{self.tail()}")
            program = self.status()
            if program is None or program["state"] != "RUNNING" or program["pid"] in (
                    None, other_than):
                return None
            host_pid = self.host_pid(program["pid"])
            if host_pid is None or not self.listens(host_pid) or not http_answers():
                return None
            return program

        return wait_until(ready, timeout, interval=0.1, what=f"{what}\n{self.tail()}")

    # -- agent turns ----------------------------------------------------------------------

    def _agent_argv(self, session: str, message: str) -> list[str]:
        return [str(self.install.node), "dist/index.js", "agent", "--session-id", session,
                "--message", message, "--json"]

    def turn(self, session: str, message: str, timeout: float = 90) -> dict[str, Any]:
        """One real agent turn through the gateway (``clawdbot agent --json``).

        The CLI falls back to an embedded agent when the gateway fails; that would not be
        a turn through the gateway, so it fails the test.
        """
        done = subprocess.run(self._agent_argv(session, message), cwd=self.install.app,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        assert "falling back to embedded" not in done.stderr, (
            f"the turn did not go through the gateway:\n{done.stderr[-2000:]}")
        assert done.returncode == 0, f"agent turn failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        reply = json.loads(done.stdout[done.stdout.index("{"):])
        assert reply.get("status") == "ok", reply
        return reply

    def turn_in_background(self, session: str, message: str) -> subprocess.Popen[str]:
        """A turn whose CLI runs on; for a model that never answers."""
        agent = subprocess.Popen(self._agent_argv(session, message), cwd=self.install.app,
                                 env=self.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self._agents.append(agent)
        return agent

    def lock(self, session: str) -> Path:
        return self.sessions / f"{session}.jsonl.lock"

    # -- processes ------------------------------------------------------------------------

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this run (its HOME in their environment) but clawsup itself
        and the unshare wrapper."""
        marker = f"HOME={self.home}".encode() + b"\0"
        ours = {self.proc.pid, self.supervisor_pid} if self.proc and self.proc.poll() is None \
            else set()
        found = []
        for process in psutil.process_iter(["pid", "status"]):
            if process.pid in ours or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            environ = _environ(process.pid)
            if environ.startswith(marker) or b"\0" + marker in environ:
                found.append(process)
        return found

    def stop(self) -> None:
        """Stop clawsup gracefully, then end whatever of this run is left, by pid."""
        for agent in self._agents:
            if agent.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(10)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor_pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for process in self.leftovers():
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.events.stop()
        # Nothing of this run may hold the port for the next one.
        wait_until(lambda: not port_in_use(GATEWAY_PORT), 30,
                   what=f"port {GATEWAY_PORT} free after the run")
