"""Bad input and faults with the real gateway: configs it refuses, a gateway that never
serves, and the container-style run as PID 1 of a PID namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.realgw.conftest import RunFactory
from tests.realgw.harness import RealRun, can_unshare, gateway_config, http_answers
from tests.util import wait_until

pytestmark = [pytest.mark.realgw, pytest.mark.timeout(600)]

# The shipped crash-loop budget is 5 restarts in 60 s: with a 4 s failing start that is
# half a minute per test. Two restarts prove the same.
SHORT_CRASH_LOOP = """
[programs.gateway.crash_loop]
max_restarts = 2
"""


def _incidents(run: RealRun) -> list[dict[str, object]]:
    path = run.state_dir / "incidents.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def no_mode(module_runs: RunFactory) -> RealRun:
    """A gateway config without gateway.mode, run until clawsup gives up (exit_on_fatal)."""
    run = module_runs("no-mode", override=SHORT_CRASH_LOOP)
    run.write_gateway_config(gateway_config(run.model, mode=False))
    run.start()
    assert run.proc is not None
    try:
        run.proc.wait(120)
    except Exception:
        raise AssertionError(f"clawsup did not give up on the crash loop:\n{run.tail()}") from None
    return run


def test_gateway_without_mode_shows_its_own_reason(no_mode: RealRun) -> None:
    log = no_mode.log()
    # The gateway's line, relayed by clawsup with the program's name in front.
    reasons = [line for line in log.splitlines()
               if line.startswith("gateway |") and "gateway.mode=local" in line]
    assert reasons, f"the gateway's reason is not in clawsup's log:\n{no_mode.tail()}"
    assert no_mode.proc is not None
    assert no_mode.proc.returncode != 0, "exit_on_fatal: clawsup exits non-zero"


def test_gateway_without_mode_raises_a_crash_loop_event(no_mode: RealRun) -> None:
    published = no_mode.events.of("crash_loop")
    logged = [i for i in _incidents(no_mode) if i.get("kind") == "crash_loop"]
    assert published or logged, (
        f"no crash_loop event published ({no_mode.events.kinds()}) nor in the incident "
        f"log ({_incidents(no_mode)}):\n{no_mode.tail()}")
    for event in published:
        assert event["program"] == "gateway"


def test_gateway_without_token_is_one_line_not_a_crash_loop(real_runs: RunFactory) -> None:
    # The gateway itself would refuse ("Refusing to bind gateway to lan without auth") on
    # every start until the crash-loop breaker gave up; clawsup checks the shipped
    # `--bind lan` command against the token sources first (firstrun.py) and says so once.
    run = real_runs("no-token")
    run.write_gateway_config(gateway_config(run.model, token=False))
    run.start()
    assert run.proc is not None
    try:
        run.proc.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"clawsup did not refuse the token-less lan bind:\n{run.tail()}") from None
    assert run.proc.returncode == 2
    log = run.log()
    assert [line for line in log.splitlines() if "CLAWDBOT_GATEWAY_TOKEN" in line], log
    assert not [line for line in log.splitlines() if line.startswith("gateway |")], (
        f"the gateway was started anyway:\n{log}")
    assert not http_answers()


def test_gateway_that_never_serves_is_a_failed_start(real_runs: RunFactory) -> None:
    # The gateway starts, but the probe asks a port nothing listens on: as far as clawsup
    # can tell, it never serves.
    start_timeout = 10.0
    run = real_runs("never-serves", override=f"""
[programs.gateway.liveness]
http = "http://127.0.0.1:18799/"
start_timeout = "{start_timeout:g}s"
""").start()
    states: list[str] = []

    def failed_start_counted() -> bool:
        assert run.proc is not None
        if run.proc.poll() is not None:
            raise AssertionError(f"clawsup exited:\n{run.tail()}")
        program = run.status()
        if program is None:
            return False
        states.append(program["state"])
        return int(program["restarts"]) >= 1

    wait_until(failed_start_counted, start_timeout + 90, interval=0.5,
               what=f"a failed start after start_timeout\n{run.tail()}")
    assert "RUNNING" not in states, f"RUNNING without a passing probe: {states}"
    assert "STARTING" in states
    assert run.health() == 1


@pytest.mark.skipif(not can_unshare(), reason="needs unshare --pid --fork --mount-proc (root)")
def test_container_style_run_as_pid1(real_runs: RunFactory) -> None:
    run = real_runs("pid1", pid1=True).start()
    first = run.serving(what="serving as PID 1")
    supervisor = run.supervisor_pid
    namespace = os.readlink(f"/proc/{supervisor}/ns/pid")
    nspid = next(line for line in Path(f"/proc/{supervisor}/status").read_text().splitlines()
                 if line.startswith("NSpid:"))
    assert nspid.split()[-1] == "1", nspid
    assert run.health() == 0

    gateway = run.host_pid(first["pid"])
    assert gateway is not None
    os.kill(gateway, signal.SIGKILL)
    run.serving(other_than=first["pid"], what="respawned after kill -9")
    assert run.health() == 0

    started = time.monotonic()
    os.kill(supervisor, signal.SIGTERM)
    assert run.proc is not None
    assert run.proc.wait(10) == 0
    assert time.monotonic() - started < 10

    def in_namespace() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    assert in_namespace() == []
    assert run.leftovers() == []
    assert not http_answers()
