"""The supervisor's wiring, held in this process: ``main.build`` with a spawn that records
what it starts and a clock that stamps events, run on an event loop here.

Real processes, real signals, the real control socket, metrics server and webhook; only
the wall clock of events is fixed, so each sink can be checked for the very event the
supervisor emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clawsup.protocol import ProgramReply, Signal
from clawsup.supervisor import kinds
from clawsup.supervisor.config import ProgramConfig, load_config
from clawsup.supervisor.daemon import Supervisor, SystemClock
from clawsup.supervisor.libc import PR_SET_CHILD_SUBREAPER
from clawsup.supervisor.main import build
from clawsup.supervisor.program import Program, State
from clawsup.supervisor.spawn import Spawned, spawn
from tests.test_every_event import Subscriber, Webhook
from tests.test_reload import GW
from tests.test_service import _free_port
from tests.test_supervisor import unstartable
from tests.util import copy_home, python_program, write_config

# What the fake clock says the wall-clock time is: every event carries it.
FROZEN_WALL_CLOCK = 1_700_000_000.0

# Takes a second to stop: its SIGTERM handler lingers, as a gateway draining would.
SLOW_TO_STOP = textwrap.dedent("""
    import signal, sys, time
    def linger(*_):
        time.sleep(1.0)
        sys.exit(0)
    signal.signal(signal.SIGTERM, linger)
    while True:
        time.sleep(60)
""")

X = f"""
[programs.x]
command = {python_program(SLOW_TO_STOP)}
start_seconds = "100ms"
stop_timeout = "5s"
[programs.x.hang]
sample_interval = "100ms"
"""


class FrozenClock(SystemClock):
    """Monotonic time as it is (the loop's timers run on it); wall time frozen."""

    def time(self) -> float:
        return FROZEN_WALL_CLOCK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class SpawnLog:
    """A spawn that starts the real process and writes down, for each start, the program,
    its pid and which earlier processes of that program were still alive then."""

    starts: list[tuple[str, int, list[int]]] = field(default_factory=list)

    def __call__(self, name: str, config: ProgramConfig, environment: dict[str, str]) -> Spawned:
        earlier = [pid for started, pid, _ in self.starts if started == name and _alive(pid)]
        spawned = spawn(name, config, environment)
        self.starts.append((name, spawned.pid, earlier))
        return spawned

    def pids(self, name: str) -> list[int]:
        return [pid for started, pid, _ in self.starts if started == name]


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Await ``predicate`` (checked every 10 ms) up to ``timeout``; the loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def settled(supervisor: Supervisor, predicate: Callable[[], bool],
                  timeout: float = 10.0) -> None:
    """Await ``predicate`` over program states, woken by each transition."""
    assert await supervisor.wait_for(predicate, timeout), "timed out waiting for a state"


@contextlib.asynccontextmanager
async def supervised(config: Path, spawned: SpawnLog | None = None) -> AsyncIterator[Supervisor]:
    """The real wiring run on this loop until the block ends, then shut down."""
    supervisor = build(load_config(config), [str(config)], clock=FrozenClock(),
                       spawn_process=spawned or SpawnLog())
    run = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        # Step 6 of run(): the service is up and the main program is being started.
        await until(lambda: run.done() or any(
            p.config.main and p.state is not State.STOPPED for p in supervisor.programs.values()),
            what="the programs started")
        assert not run.done(), run.result()
        yield supervisor
    finally:
        supervisor.request_shutdown()
        await asyncio.wait_for(run, 30)


@pytest.fixture(autouse=True)
def _not_a_subreaper_afterwards() -> Iterator[None]:
    """``run`` makes this test process a subreaper; later tests must not inherit that."""
    yield
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reload_with(supervisor: Supervisor, config: Path, body: str) -> list[str]:
    write_config(config.parent, body)
    return [f"{c.section} {c.action}" for c in supervisor.reload().changes]


def _running(program: Program) -> bool:
    return program.state is State.RUNNING


# -- reload ------------------------------------------------------------------------------


def test_a_program_added_by_reload_starts_and_one_removed_stops_and_is_forgotten(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        config = write_config(tmp_path, GW)
        async with supervised(config) as supervisor:
            assert _reload_with(supervisor, config, GW + X) == ["programs.x add"]
            x = supervisor.programs["x"]
            await settled(supervisor, lambda: _running(x))
            pid = x.pid
            assert pid is not None
            assert [s.name for s in supervisor.statuses()] == ["gw", "x"]

            assert _reload_with(supervisor, config, GW) == ["programs.x remove"]
            assert x.state is State.STOPPING  # listed until it has exited
            await settled(supervisor, lambda: x.state is State.STOPPED)
            await until(lambda: "x" not in supervisor.programs, what="x forgotten")
            assert not _alive(pid)
            assert [s.name for s in supervisor.statuses()] == ["gw"]

    asyncio.run(scenario())


def test_a_program_re_added_while_its_namesake_stops_is_its_own_and_starts_after_it(
    tmp_path: Path,
) -> None:
    """The name-keyed bug: reload A removes x (stopping), reload B adds x again; when the
    old x exited, the new x's watch was paused and the new x forgotten."""
    spawned = SpawnLog()

    async def scenario() -> None:
        config = write_config(tmp_path, GW + X)
        async with supervised(config, spawned) as supervisor:
            old = supervisor.programs["x"]
            await settled(supervisor, lambda: _running(old))
            old_pid = old.pid
            assert old_pid is not None

            assert _reload_with(supervisor, config, GW) == ["programs.x remove"]
            assert old.state is State.STOPPING
            assert _reload_with(supervisor, config, GW + X) == ["programs.x add"]
            new = supervisor.programs["x"]
            assert new is not old
            assert new.state is State.STOPPED  # waits: its tree would be the old one's

            await settled(supervisor, lambda: _running(new), timeout=15)
            # Started only once the old process was gone, never beside it.
            assert spawned.pids("x") == [old_pid, new.pid]
            assert spawned.starts[-1][2] == []
            assert not _alive(old_pid)
            # The old one's exit left the new one alone: still listed, still watched.
            assert supervisor.programs["x"] is new
            [x_status] = [s for s in supervisor.statuses() if s.name == "x"]
            assert (x_status.state, x_status.pid) == ("RUNNING", new.pid)
            watch = supervisor.watches._watches[new]
            assert watch.sampler is not None
            assert watch.sampler._pid == new.pid
            # And its samples are judged: the tree walk under the new pid arrives.
            await until(lambda: watch.tree_of == new.pid, what="a sample of the new x")
            assert old not in supervisor.watches._watches
            new_pid = new.pid
        # Shutdown stopped it: a forgotten program would have been left running.
        assert new_pid is not None
        assert not _alive(new_pid)

    asyncio.run(scenario())


# -- the breaker across a reload --------------------------------------------------------------

BREAKER = """
[breaker]
fallbacks = ["openai/gpt-5.2"]
failures = 2
window = "1m"
cooldown = "1h"
"""


def test_the_breaker_keeps_its_state_across_a_reload_unless_breaker_changed(
    tmp_path: Path,
) -> None:
    copy_home(tmp_path / "home")

    async def scenario() -> None:
        config = write_config(tmp_path, GW + BREAKER)
        async with supervised(config) as supervisor:
            controller = supervisor.service.controller
            assert controller is not None
            assert controller.breaker is not None
            primary = controller.breaker.primary
            for _ in range(2):
                controller.record_model_failure("crash")
            opened = controller.breaker.status()
            assert (opened.state, opened.active_model) == ("open", "openai/gpt-5.2")

            # [breaker] untouched (a program added): the same breaker, still open.
            assert _reload_with(supervisor, config, GW + X + BREAKER) == ["programs.x add"]
            kept = controller.breaker.status()
            assert kept == opened
            assert controller.breaker.primary == primary

            # [breaker] changed: built again, closed, on the operator's primary.
            assert _reload_with(supervisor, config, GW + X + BREAKER.replace(
                "failures = 2", "failures = 3")) == ["breaker rebuild"]
            rebuilt = controller.breaker.status()
            assert (rebuilt.state, rebuilt.model, rebuilt.failures) == ("closed", primary, 0)

    asyncio.run(scenario())


# -- the signal target --------------------------------------------------------------------------

# Each process writes a file named after its pid when it gets SIGUSR1.
NOTE_USR1 = textwrap.dedent("""
    import os, signal, sys, time
    out = sys.argv[1]
    def note(*_):
        open(os.path.join(out, f"usr1-{os.getpid()}"), "w").close()
    signal.signal(signal.SIGUSR1, note)
""")
# The leader starts two children: one in its process group, one in a session of its own.
FAMILY = NOTE_USR1 + textwrap.dedent("""
    import subprocess
    for detached in (False, True):
        subprocess.Popen([sys.executable, "-c", CHILD, out], start_new_session=detached)
    while True:
        time.sleep(60)
""")
CHILD = NOTE_USR1 + "while True:\n    time.sleep(60)\n"


def _catches_usr1(pid: int) -> bool:
    caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))


def test_clawsupctl_signal_reaches_the_programs_process_group_and_only_that(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = f"CHILD = {CHILD!r}\n" + FAMILY
    config = write_config(tmp_path, f"""
[programs.gw]
command = {json.dumps([sys.executable, "-c", code, str(out)])}
main = true
start_seconds = "100ms"
stop_timeout = "2s"
""")

    async def scenario() -> None:
        async with supervised(config) as supervisor:
            gw = supervisor.programs["gw"]
            await settled(supervisor, lambda: _running(gw))
            await until(lambda: len(supervisor.reaper.processes(gw)) == 3
                        and all(map(_catches_usr1, supervisor.reaper.processes(gw))),
                        what="the leader and both children, each with its handler")
            family = supervisor.reaper.processes(gw)
            leader = gw.pid
            assert leader is not None
            same_group = [pid for pid in family if os.getpgid(pid) == leader]
            detached = [pid for pid in family if os.getpgid(pid) != leader]
            assert len(same_group) == 2
            assert len(detached) == 1

            controller = supervisor.service.controller
            assert controller is not None
            reply = await controller.handle(Signal(signal="USR1", program="gw"))
            assert isinstance(reply, ProgramReply), reply
            await until(lambda: {p.name for p in out.iterdir()}
                        == {f"usr1-{pid}" for pid in same_group}, what="USR1 noted by the group")
            assert not (out / f"usr1-{detached[0]}").exists()

    asyncio.run(scenario())


# -- every event through every sink -------------------------------------------------------------


def test_an_event_reaches_every_sink(tmp_path: Path) -> None:
    webhook = Webhook()
    port = _free_port()
    config = write_config(tmp_path, GW + f"""
[programs.broken]
command = ["{unstartable(tmp_path)}"]
autostart = false
backoff = {{ initial = "10ms", factor = 1.0, max = "10ms", reset_after = "3s", jitter = 0.0 }}
crash_loop = {{ max_restarts = 1, window = "30s", cooldown = "1h" }}

[metrics]
listen = "127.0.0.1:{port}"

[alerts]
events = ["fatal"]
[alerts.webhook]
url = "{webhook.url}"
""")
    subscriber = Subscriber(f"ipc://{tmp_path}/run/events.sock")

    async def scenario() -> None:
        async with supervised(config) as supervisor:
            await until(lambda: _subscribed(supervisor, subscriber), what="subscribed")
            broken = supervisor.programs["broken"]
            broken.start("started by the test")
            await settled(supervisor, lambda: broken.state is State.FATAL)
            service = supervisor.service

            def fatal(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [e for e in events if e["kind"] == "fatal" and e["program"] == "broken"]

            # The control socket's event stream.
            await until(lambda: fatal(subscriber.events) != [], what="the published event")
            [published] = fatal(subscriber.events)
            assert published["ts"] == FROZEN_WALL_CLOCK
            # The webhook (alerts).
            await until(lambda: fatal(webhook.received) != [], what="the alert")
            assert fatal(webhook.received)[0]["ts"] == FROZEN_WALL_CLOCK
            # The incident log.
            incidents = tmp_path / "state" / "incidents.jsonl"
            logged = [json.loads(line) for line in incidents.read_text().splitlines()]
            assert [e["ts"] for e in fatal(logged)] == [FROZEN_WALL_CLOCK]
            # Metrics.
            assert service.metrics is not None
            assert service.metrics.registry.get_sample_value(
                "clawsup_events_total", {"kind": "fatal"}) == 1.0

    try:
        asyncio.run(scenario())
    finally:
        subscriber.close()
        webhook.close()


def _subscribed(supervisor: Supervisor, subscriber: Subscriber) -> bool:
    """A SUB socket misses what is published before its subscription arrives: publish
    a routine event until the subscriber has one."""
    supervisor.emit(kinds.Log(seq=0, ts=0.0, stream="stdout", pid=0, lines=[]), "gw", "probe",
                    logged=True)
    return any(event["kind"] == "log" for event in list(subscriber.events))
