"""``clawsup run | check | demo | install-skill``: the supervisor's own command line."""

from __future__ import annotations

import sys

import click

from clawsup import __version__, entrypoint


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
    # The usual command lines never get here: entrypoint.main runs them without click.
    entrypoint.run(paths)


@main.command()
@click.option("-c", "--config", "paths", multiple=True, metavar="FILE",
              help="Config file to validate (default $CLAWSUP_CONFIG, then "
                   "/etc/clawsup/clawsup.toml).")
def check(paths: tuple[str, ...]) -> None:
    """Validate a config; print what is wrong with file and key."""
    files, config = entrypoint.load(paths)
    names = ", ".join(
        f"{name} (main)" if program.main else name for name, program in config.programs.items()
    )
    click.echo(f"{', '.join(files)}: ok; programs: {names}")
    from clawsup.supervisor.message_timeout import resolve

    in_force = resolve(config.janitor, config.gateway_config)
    click.echo(in_force.describe())
    if in_force.problem is not None:
        click.echo(f"clawsup: warning: {in_force.problem}", err=True)


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


@main.command(name="install-skill")
@click.argument("directory", required=False, metavar="[DIR]",
                type=click.Path(file_okay=False, writable=True))
def install_skill(directory: str | None) -> None:
    """Install the clawsup skill for the Clawdbot gateway into DIR/clawsup.

    DIR is a skills directory the gateway loads, by default ~/.clawdbot/skills (the
    managed skills of the user the gateway runs as). The skill lets the agent answer
    status, health and incident questions, set the model and time zone, and restart its
    gateway when idle, all through clawsupctl, which must be on the gateway's PATH.
    An existing DIR/clawsup is replaced (it is this skill, perhaps an older version).
    """
    from clawsup.skill import SkillInstallError, install

    try:
        installed = install(directory)
    except SkillInstallError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"installed the clawsup skill in {installed}")


if __name__ == "__main__":
    main()
