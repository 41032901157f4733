"""The ``clawsup`` command: ``run`` without loading click, everything else through it.

``clawsup run`` is the container's PID 1 for its whole life, and click, with what it
imports (inspect, ast, difflib, uuid, gettext...), would cost it about 2.4 MiB of RSS that
it never uses again once two options are parsed. So the command lines an ENTRYPOINT uses,
``clawsup run`` with ``-c FILE`` / ``--config FILE`` / ``--config=FILE`` / ``-cFILE``
repeated or not, are recognised here, strictly. Anything else (help, ``check``,
``demo``, a typo, an option it does not know) goes to the click CLI in cli.py, which owns
every message and error; a test holds the two parsers to the same reading.
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


def parse_run(argv: list[str]) -> tuple[str, ...] | None:
    """The config paths of a plain ``run`` command line, or None to leave it to click."""
    if not argv or argv[0] != "run":
        return None
    paths: list[str] = []
    rest = iter(argv[1:])
    for arg in rest:
        if arg in ("-c", "--config"):
            value = next(rest, None)
        elif arg.startswith("--config="):
            value = arg.removeprefix("--config=")
        elif arg.startswith("-c") and not arg.startswith("--"):
            value = arg[2:]
        else:
            return None
        # An empty value or one that looks like an option: click decides what it means.
        if not value or value.startswith("-"):
            return None
        paths.append(value)
    return tuple(paths)


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
        print(f"clawsup: {error}", file=sys.stderr)
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


def main() -> None:
    paths = parse_run(sys.argv[1:])
    if paths is not None:
        run(paths)
        return
    from clawsup.cli import main as click_main

    click_main()
