"""``clawsup run | check | demo | install-skill``: the supervisor's own command line.

Parsed once, here, with argparse: ``clawsup run`` is the container's PID 1 for its whole
life, and argparse costs it little (click, with what it imports, was 2.4 MiB of RSS it
never used again). The supervisor is imported only by the command that runs it.
"""

from __future__ import annotations

import sys

from clawsup import __version__
from clawsup._argv import Parser, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn


def run(args: argparse.Namespace) -> int:
    from clawsup.entrypoint import run as run_supervisor

    run_supervisor(tuple(args.paths))
    return 0


def check(args: argparse.Namespace) -> int:
    from clawsup.entrypoint import load
    from clawsup.supervisor.message_timeout import resolve

    files, config = load(tuple(args.paths))
    names = ", ".join(
        f"{name} (main)" if program.main else name for name, program in config.programs.items()
    )
    print(f"{', '.join(files)}: ok; programs: {names}")
    in_force = resolve(config.janitor, config.gateway_config)
    print(in_force.describe())
    if in_force.problem is not None:
        print(f"clawsup: warning: {in_force.problem}", file=sys.stderr)
    return 0


def demo(args: argparse.Namespace) -> int:
    from clawsup.demo.scenarios import (
        UnknownScenario,
        describe_scenarios,
        run_demo,
        select_scenarios,
    )

    if args.list_only:
        print(describe_scenarios())
        return 0
    try:
        scenarios = select_scenarios(tuple(args.names))
    except UnknownScenario as error:
        raise UsageError(f"clawsup demo: --scenario: {error}") from None
    return run_demo(scenarios, keep=args.keep, verbose=args.verbose)


def install_skill(args: argparse.Namespace) -> int:
    from clawsup.skill import SkillInstallError, install

    try:
        installed = install(args.directory)
    except SkillInstallError as error:
        print(f"clawsup: {error}", file=sys.stderr)
        return 1
    print(f"installed the clawsup skill in {installed}")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="clawsup",
                    description="A PID-1 process supervisor for the Clawdbot gateway.")
    parser.add_argument("--version", action="version", version=f"clawsup, version {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     prog="clawsup")

    def command(name: str, action: object, text: str) -> Parser:
        sub: Parser = commands.add_parser(name, help=text.partition("\n\n")[0], description=text)
        sub.set_defaults(action=action)
        return sub

    sub = command("run", run, "Run the supervisor in the foreground (the container's "
                  "ENTRYPOINT).")
    sub.add_argument("-c", "--config", dest="paths", action="append", default=[],
                     metavar="FILE", help="Config file (default $CLAWSUP_CONFIG, then "
                     "/etc/clawsup/clawsup.toml). Given twice, the second overrides keys "
                     "of the first.")
    sub = command("check", check, "Validate a config; print what is wrong with file and key.")
    sub.add_argument("-c", "--config", dest="paths", action="append", default=[],
                     metavar="FILE", help="Config file to validate (default $CLAWSUP_CONFIG, "
                     "then /etc/clawsup/clawsup.toml).")
    sub = command("demo", demo, "Watch clawsup recover the demo gateway; no config needed.\n\n"
                  "Each scenario breaks the gateway, prints what clawsup did and how long "
                  "recovery took; a summary table follows. Exits 0 when every scenario "
                  "recovered, 1 otherwise.")
    sub.add_argument("-s", "--scenario", dest="names", action="append", default=[],
                     metavar="NAME[,NAME...]", help="Play only these scenarios; repeat the "
                     "option or separate names with commas.")
    sub.add_argument("--list", dest="list_only", action="store_true",
                     help="List the scenarios and exit.")
    sub.add_argument("--keep", action="store_true",
                     help="Keep the temporary directory (config, clawsup.log, gateway home).")
    sub.add_argument("-v", "--verbose", action="store_true",
                     help="Stream clawsup's own log to stderr.")
    sub = command("install-skill", install_skill,
                  "Install the clawsup skill for the Clawdbot gateway into DIR/clawsup.\n\n"
                  "DIR is a skills directory the gateway loads, by default ~/.clawdbot/skills "
                  "(the managed skills of the user the gateway runs as). The skill lets the "
                  "agent answer status, health and incident questions, set the model and "
                  "time zone, and restart its gateway when idle, all through clawsupctl, "
                  "which must be on the gateway's PATH. An existing DIR/clawsup is replaced "
                  "(it is this skill, perhaps an older version).")
    sub.add_argument("directory", nargs="?", metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        code = args.action(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
