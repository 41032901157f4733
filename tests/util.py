"""Helpers shared by the tests: deadline waits, never bare sleeps."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal as _signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

FIXTURE_HOME = Path(__file__).parent / "fixtures" / "clawdbot-home"


class WaitTimeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def copy_home(dest: Path) -> Path:
    """A writable copy of the gateway-home fixture (config, sessions, a stale lock)."""
    shutil.copytree(FIXTURE_HOME, dest, copy_function=shutil.copyfile)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o700 if name in dirs else 0o600)
    return dest


def zombies_under(pid: int) -> list[int]:
    """PIDs of zombie children of ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


REPO = Path(__file__).resolve().parent.parent


class Clawsup:
    """A real ``clawsup run`` process with its log captured to a file."""

    def __init__(self, config: Path, log: Path, *, pid1: bool = False,
                 env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        argv = [sys.executable, "-m", "clawsup", "run", "-c", str(config)]
        if pid1:
            # PID 1 of a fresh PID namespace, with its own /proc, as in a container.
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            preexec_fn=preexec, start_new_session=True,
        )

    @property
    def supervisor_pid(self) -> int:
        """The clawsup process itself (inside unshare, the child of the unshare process)."""
        if self.proc.args[0] != "unshare":  # type: ignore[index]
            return self.proc.pid

        def find() -> int | None:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
                    kids = handle.read().split()
            except FileNotFoundError:
                return None
            return int(kids[0]) if kids else None

        return wait_until(find, 10, what="clawsup inside unshare")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        wait_until(lambda: self.log().count(text) >= count, timeout,
                   what=f"{text!r} x{count} in the log:\n{self.log()[-3000:]}")
        return self.log()

    def signal(self, signum: int) -> None:
        os.kill(self.supervisor_pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stop clawsup gracefully; failing that, kill it and every process under it.

        Killing clawsup's own process group is not enough: each program leads a group
        of its own, and would be orphaned.
        """
        if self.proc.poll() is None:
            try:
                tree = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor_pid, _signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, _signal.SIGKILL)
                self.proc.wait(10)
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        self._log.close()


def write_config(directory: Path, body: str, *, name: str = "clawsup.toml",
                 supervisor: str = "") -> Path:
    """A config with run/state dirs and janitor paths inside ``directory``."""
    path = directory / name
    header = f"""
[supervisor]
run_dir = "{directory}/run"
state_dir = "{directory}/state"
{supervisor}

[janitor]
sessions = ["{directory}/home/agents/*/sessions"]
restart_flag = "{directory}/home/restart.flag"
ops_requests = "{directory}/home/ops-requests"

[gateway_config]
path = "{directory}/home/clawdbot.json"
"""
    path.write_text(header + body)
    return path


def image_stand_in(directory: Path) -> Path:
    """A config override for checking the shipped config outside the image: the
    gateway's directory (/app there) and its ``node`` stand in from ``directory``; the
    image's own build runs ``clawsup check`` on the real ones."""
    app = directory / "app"
    app.mkdir(exist_ok=True)
    node = directory / "bin" / "node"
    node.parent.mkdir(exist_ok=True)
    node.write_text("#!/bin/sh\n")
    node.chmod(0o755)
    override = directory / "image-stand-in.toml"
    override.write_text(
        f'[programs.gateway]\ndirectory = "{app}"\n'
        f'environment = {{ PATH = "{node.parent}:/usr/bin:/bin" }}\n'
    )
    return override


def python_program(code: str) -> str:
    """A TOML command array running ``code`` with this interpreter."""
    return json.dumps([sys.executable, "-c", code])


def incidents(directory: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The events the incident log of a ``write_config(directory, ...)`` clawsup holds
    (of ``kind`` only, when given): what to assert on rather than the log's wording."""
    path = directory / "state" / "incidents.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in lines]
    return [event for event in found if kind is None or event["kind"] == kind]


def wait_incident(directory: Path, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The first incident of ``kind``, once the incident log has one."""
    return wait_until(lambda: incidents(directory, kind), timeout, what=f"a {kind} incident")[0]
