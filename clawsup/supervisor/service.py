"""Wiring: the Supervisor plus the components around it (janitor, control socket...)."""

from __future__ import annotations

import asyncio

from clawsup.supervisor.config import Config
from clawsup.supervisor.daemon import Supervisor


async def _serve(config: Config, config_paths: list[str]) -> int:
    supervisor = Supervisor(config, config_paths)
    return await supervisor.run()


def run_service(config: Config, config_paths: list[str]) -> int:
    return asyncio.run(_serve(config, config_paths))
