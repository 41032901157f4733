"""What ``clawsup run`` and ``clawsup check`` do once cli.py has read the command line:
load the config files (exit 2 if unusable), then run the supervisor until it stops.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawsup.supervisor.config import Config

# Exit status for an unusable config, or a gateway that cannot start as configured
# (firstrun.py): nothing was started.
EXIT_CONFIG = 2


def load(paths: tuple[str, ...]) -> tuple[list[str], Config]:
    """The config files named (or the default one) as one Config; exit 2 if unusable."""
    from clawsup.supervisor.config import (
        ConfigError,
        default_config_path,
        deprecations,
        load_config,
    )

    files = list(paths) or [default_config_path()]
    try:
        config = load_config(*files)
    except ConfigError as error:
        for problem in error.problems:
            print(f"clawsup: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    for warning in deprecations(config):
        print(f"clawsup: warning: {', '.join(files)}: {warning}", file=sys.stderr)
    return files, config


def run(paths: tuple[str, ...]) -> None:
    """Run the supervisor in the foreground until it stops; exit with its status."""
    files, config = load(paths)
    logging.basicConfig(
        level=getattr(logging, config.supervisor.log_level.upper(), logging.INFO),
        format="%(asctime)s clawsup %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    if not _needs_ssl_module(config):
        # asyncio imports ssl, which maps OpenSSL (about 4.5 MiB of RSS), for TLS that a
        # supervisor without alerts or metrics never uses. A None entry makes asyncio's own
        # "try: import ssl" take its no-TLS path; PID 1 lives long, the memory counts.
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from clawsup.supervisor.firstrun import FirstRunError, prepare

    try:
        # Once, before any program starts: a first gateway config, and a gateway that
        # would refuse to start for want of a token reported as one line, not a crash loop.
        prepare(config)
    except FirstRunError as error:
        print(f"clawsup: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    from clawsup.supervisor.main import run_service

    sys.exit(run_service(config, files))


def _needs_ssl_module(config: Config) -> bool:
    """Whether anything configured imports ssl: https alerts, and prometheus_client
    (whose exposition module imports it at import time)."""
    return config.alerts is not None or config.metrics is not None
