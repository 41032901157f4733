"""The composition root: the one place the supervisor's rooms are built and wired.

Each room is handed the others it calls, by name; nothing registers a callback for
later. Who reacts to what, in one sentence each:

- a process exits: the reaper (reaper.py) collects the status and, once its whole tree
  is gone, calls ``Supervisor.program_exited``, which tells the service (the janitor
  frees its locks), the watches (the sampler pauses) and the ``Program`` (which decides
  whether to restart it), in that order;
- an event is emitted: ``Supervisor.emit`` logs it and calls ``Service.deliver``, which
  hands it to the incident log, metrics, alerts, the service's own reactions (the model
  breaker, sd_notify) and the control socket's event stream;
- a reload: ``Supervisor.reload`` applies the plan to the programs and calls
  ``Service.reconfigure`` for the sections around them;
- a sample or a probe: the watches (watch.py) judge it and call the ``Program``.
"""

from __future__ import annotations

import asyncio

from clawsup.supervisor.config import Config
from clawsup.supervisor.daemon import Supervisor, SystemClock
from clawsup.supervisor.reaper import Reaper, SpawnProcess
from clawsup.supervisor.relay import Relay
from clawsup.supervisor.service import Service
from clawsup.supervisor.spawn import spawn
from clawsup.supervisor.tree import Trees
from clawsup.supervisor.watch import Watches


def build(config: Config, config_paths: list[str], *, clock: SystemClock | None = None,
          spawn_process: SpawnProcess = spawn) -> Supervisor:
    """The supervisor with every room in place; ``run()`` it on an event loop.
    ``clock`` and ``spawn_process`` are for tests."""
    supervisor = Supervisor(config, config_paths, clock)
    supervisor.reaper = Reaper(
        Trees(supervisor.call_later),
        program_exited=supervisor.program_exited,
        orphans_reaped=supervisor.orphans_reaped,
        spawn_process=spawn_process,
    )
    supervisor.watches = Watches(supervisor)
    supervisor.relay = Relay(supervisor, supervisor.outputs)
    supervisor.service = Service(supervisor)
    return supervisor


async def serve(config: Config, config_paths: list[str]) -> int:
    return await build(config, config_paths).run()


def run_service(config: Config, config_paths: list[str]) -> int:
    return asyncio.run(serve(config, config_paths))
