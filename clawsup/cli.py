"""``clawsup run | check | demo``: the supervisor's own command line."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from clawsup import __version__

if TYPE_CHECKING:
    from clawsup.supervisor.config import Config

# Exit status for an unusable config: nothing was started.
EXIT_CONFIG = 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s clawsup %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


def _load(paths: tuple[str, ...]) -> tuple[list[str], Config]:
    """The config files named (or the default one) as one Config; exit 2 if unusable."""
    from clawsup.supervisor.config import ConfigError, default_config_path, load_config

    files = list(paths) or [default_config_path()]
    try:
        return files, load_config(*files)
    except ConfigError as error:
        click.echo(f"clawsup: {error}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(__version__, prog_name="clawsup")
def main() -> None:
    """A PID-1 process supervisor for the Clawdbot gateway."""


@main.command()
@click.option("-c", "--config", "paths", multiple=True, metavar="FILE",
              help="Config file (default $CLAWSUP_CONFIG, then /etc/clawsup/clawsup.toml). "
                   "Given twice, the second overrides keys of the first.")
def run(paths: tuple[str, ...]) -> None:
    """Run the supervisor in the foreground (the container's ENTRYPOINT)."""
    files, config = _load(paths)
    _setup_logging(config.supervisor.log_level)
    if not _needs_ssl_module(config):
        # asyncio imports ssl, which maps OpenSSL (about 4.5 MiB of RSS), for TLS that a
        # supervisor without alerts or metrics never uses. A None entry makes asyncio's own
        # "try: import ssl" take its no-TLS path; PID 1 lives long, the memory counts.
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from clawsup.supervisor.service import run_service

    sys.exit(run_service(config, files))


def _needs_ssl_module(config: Config) -> bool:
    """Whether anything configured imports ssl: https alerts, and prometheus_client
    (whose exposition module imports it at import time)."""
    return config.alerts is not None or config.metrics is not None


@main.command()
@click.option("-c", "--config", "paths", multiple=True, metavar="FILE",
              help="Config file to validate (default $CLAWSUP_CONFIG, then "
                   "/etc/clawsup/clawsup.toml).")
def check(paths: tuple[str, ...]) -> None:
    """Validate a config; print what is wrong with file and key."""
    files, config = _load(paths)
    names = ", ".join(
        f"{name} (main)" if program.main else name for name, program in config.programs.items()
    )
    click.echo(f"{', '.join(files)}: ok; programs: {names}")


@main.command()
@click.option("-s", "--scenario", "names", multiple=True, metavar="NAME[,NAME...]",
              help="Play only these scenarios; repeat the option or separate names with commas.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--keep", is_flag=True,
              help="Keep the temporary directory (config, clawsup.log, gateway home).")
@click.option("-v", "--verbose", is_flag=True, help="Stream clawsup's own log to stderr.")
def demo(names: tuple[str, ...], list_only: bool, keep: bool, verbose: bool) -> None:
    """Watch clawsup recover the demo gateway; no config needed.

    Each scenario breaks the gateway, prints what clawsup did and how long recovery
    took; a summary table follows. Exits 0 when every scenario recovered, 1 otherwise.
    """
    from clawsup.demo.scenarios import (
        UnknownScenario,
        describe_scenarios,
        run_demo,
        select_scenarios,
    )

    if list_only:
        click.echo(describe_scenarios())
        return
    try:
        scenarios = select_scenarios(names)
    except UnknownScenario as error:
        raise click.BadParameter(str(error), param_hint="'--scenario'") from None
    sys.exit(run_demo(scenarios, keep=keep, verbose=verbose))


if __name__ == "__main__":
    main()
