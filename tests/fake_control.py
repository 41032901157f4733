"""A real ControlServer on a real asyncio loop, answering from a fake supervisor.

The fake keeps just enough state to make the control tests meaningful: one program,
``gateway``, whose restart takes ``restart_seconds`` before it answers (as the real
supervisor answers a restart only once the program is RUNNING again).

``python -m tests.fake_control RUN_DIR`` serves in the foreground (for tests that need
the server in another process) and prints ``ready <pid>`` once it is listening.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import zoneinfo
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from clawsup import __version__
from clawsup.protocol import (
    BAD_VALUE,
    UNKNOWN_PROGRAM,
    DoneReply,
    Event,
    Health,
    HealthReply,
    Incident,
    Incidents,
    IncidentsReply,
    LastExit,
    ProgramReply,
    ProgramStatus,
    Reload,
    Reply,
    Request,
    Restart,
    SetModel,
    SetTimezone,
    SettingReply,
    Shutdown,
    Signal,
    Start,
    Status,
    StatusReply,
    Stop,
    Version,
    VersionReply,
    error_reply,
)
from clawsup.supervisor.control import ControlServer

T = TypeVar("T")

MAIN = "gateway"
# `signal BOOM` makes the fake handler raise, to test the `internal` path.
BOOM = "BOOM"


class FakeSupervisor:
    """The control handler: a fake gateway with a state, a pid and a restart count."""

    def __init__(self, restart_seconds: float = 0.5) -> None:
        self.restart_seconds = restart_seconds
        self.state = "RUNNING"
        self.pid: int | None = 4242
        self.restarts = 0
        self.started_at = time.time()
        self.model = "anthropic/claude-opus-4-5"
        self.timezone = "UTC"
        self.healthy = True
        self.last_exit: LastExit | None = None
        self.signals: list[str] = []
        self.requests: list[Request] = []
        self.shutdown_requested = False
        self.incidents = [
            Incident(ts=1_700_000_000.0, kind="hung", program=MAIN, message="D state 12s"),
            Incident(ts=1_700_000_100.0, kind="hung", program=MAIN, message="D state 11s"),
            Incident(ts=1_700_090_000.0, kind="crash_loop", program=MAIN, message="5 in 60s"),
        ]

    def answer_now(self, request: Request) -> Reply | None:
        """The quick handler: status and version without a task, like the real one."""
        match request:
            case Status():
                self.requests.append(request)
                return self.status()
            case Version():
                self.requests.append(request)
                return VersionReply(version=__version__)
            case _:
                return None

    async def __call__(self, request: Request) -> Reply:
        self.requests.append(request)
        match request:
            case Status():
                return self.status()
            case Health():
                reasons = [] if self.healthy else ["gateway liveness probe failing"]
                return HealthReply(healthy=self.healthy, reasons=reasons)
            case Version():
                return VersionReply(version=__version__)
            case Restart(program=program, wait=wait):
                if program not in (None, MAIN):
                    return error_reply(UNKNOWN_PROGRAM, f"no program named {program!r}")
                return await self._restart(wait)
            case Start(program=program) | Stop(program=program) if program not in (None, MAIN):
                return error_reply(UNKNOWN_PROGRAM, f"no program named {program!r}")
            case Start():
                self.state, self.pid = "RUNNING", 4243
                return ProgramReply(program=MAIN, state=self.state, pid=self.pid)
            case Stop():
                self.state, self.pid = "STOPPED", None
                self.last_exit = LastExit(signal="SIGTERM", reason="stopped by request")
                return ProgramReply(program=MAIN, state=self.state)
            case Signal(signal=name):
                if name == BOOM:
                    raise RuntimeError("the fake handler exploded")
                self.signals.append(name)
                return ProgramReply(program=MAIN, state=self.state, pid=self.pid)
            case SetModel(model=model):
                if "/" not in model:
                    return error_reply(BAD_VALUE, f"model {model!r} is not PROVIDER/NAME")
                old, self.model = self.model, model
                return SettingReply(key="model", old=old, new=model, applied="reload")
            case SetTimezone(timezone=zone):
                try:
                    zoneinfo.ZoneInfo(zone)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    return error_reply(BAD_VALUE, f"unknown time zone {zone!r}")
                old, self.timezone = self.timezone, zone
                return SettingReply(key="timezone", old=old, new=zone, applied="reload")
            case Incidents(limit=limit):
                counts: dict[str, dict[str, int]] = {}
                for incident in self.incidents:
                    day = time.strftime("%Y-%m-%d", time.gmtime(incident.ts))
                    counts.setdefault(day, {}).setdefault(incident.kind, 0)
                    counts[day][incident.kind] += 1
                return IncidentsReply(counts=counts, latest=self.incidents[-limit:])
            case Reload():
                return DoneReply(message="config reloaded")
            case Shutdown():
                self.shutdown_requested = True
                return DoneReply(message="shutting down")
        raise AssertionError(f"unhandled request {request!r}")

    async def _restart(self, wait: bool) -> ProgramReply:
        self.state = "STOPPING"
        if not wait:
            asyncio.get_running_loop().call_later(self.restart_seconds, self._running_again)
            return ProgramReply(program=MAIN, state=self.state, pid=self.pid)
        await asyncio.sleep(self.restart_seconds)  # the fake gateway's stop + start time
        self._running_again()
        return ProgramReply(program=MAIN, state=self.state, pid=self.pid)

    def _running_again(self) -> None:
        self.state, self.restarts = "RUNNING", self.restarts + 1
        self.pid = 4242 + self.restarts
        self.last_exit = LastExit(signal="SIGTERM", reason="restart requested")
        self.started_at = time.time()

    def status(self) -> StatusReply:
        running = self.state == "RUNNING"
        program = ProgramStatus(
            name=MAIN,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            uptime=time.time() - self.started_at if running else None,
            last_exit=self.last_exit,
            main=True,
        )
        return StatusReply(
            programs=[program],
            supervisor_pid=os.getpid(),
            supervisor_uptime=1.0,
            version=__version__,
            model=self.model,
            timezone=self.timezone,
        )


class ServerThread:
    """A ControlServer served by an asyncio loop in a background thread."""

    def __init__(self, run_dir: Path, handler: FakeSupervisor | None = None, **options: Any) -> None:
        self.handler = handler or FakeSupervisor()
        options.setdefault("max_request_size", 64 * 1024)
        options.setdefault("quick", self.handler.answer_now)
        self.server = ControlServer(run_dir, self.handler, **options)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        try:
            self.run(self.server.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(self.server.close())
        self._stop_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.server.publish, event)

    @property
    def endpoint(self) -> str:
        return self.server.control_endpoint

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _serve_forever(run_dir: Path) -> None:
    server = ControlServer(run_dir, FakeSupervisor(), max_request_size=64 * 1024)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    asyncio.run(_serve_forever(Path(sys.argv[1])))
