"""clawsupctl: talk to a running clawsup over its control socket.

    clawsupctl [--socket ENDPOINT] [--timeout SECONDS] COMMAND

Exit codes: 0 success, 1 failure (unreachable supervisor, refused command, bad reply),
2 a usage error, except for ``health``, which exits only 0 (healthy) or 1 (anything
else) because Docker's HEALTHCHECK reserves 2.

This module imports only click at load time; the client (and pyzmq with it) is imported
by the commands that talk to the socket, so ``--help`` and shell completion stay fast, and
nothing that ``status`` does not need is imported at all (tests/test_ctl.py checks both).

Shell completion (click's own), e.g. for bash, in ~/.bashrc::

    eval "$(_CLAWSUPCTL_COMPLETE=bash_source clawsupctl)"

(``zsh_source`` and ``fish_source`` likewise.)
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from clawsup.client._endpoint import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from clawsup.client import Client
    from clawsup.protocol import IncidentsReply, LogLine, ProgramReply, SettingReply

# Queries answer at once; start/stop/restart answer when the program got there: a
# stop_timeout, then a start that lasts until the gateway serves (up to its liveness
# start_timeout, 120 s shipped; a cold gateway takes up to 55 s), then the stop of a failed
# start. The supervisor answers within 180 s with the shipped config. Used when --timeout
# is not given.
QUERY_TIMEOUT = DEFAULT_TIMEOUT
WAIT_TIMEOUT = 300.0
HEALTH = "health"


class _Options:
    """The group's options, handed to each command (a plain class: dataclasses costs 9ms)."""

    def __init__(
        self,
        endpoint: str | None,
        timeout: float | None,
        curve_server_key: str | None,
        curve_client_key: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve_server_key = curve_server_key
        self.curve_client_key = curve_client_key

    def client(self, *, waits: bool = False, retries: int = 1) -> Client:
        from clawsup.client import Client

        default = WAIT_TIMEOUT if waits else QUERY_TIMEOUT
        return Client(
            self.endpoint,
            timeout=self.timeout if self.timeout is not None else default,
            curve_server_key=self.curve_server_key,
            curve_client_keys=self.curve_client_key,
            retries=retries,
        )


_pass_options = click.make_pass_decorator(_Options)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog='Bash completion: eval "$(_CLAWSUPCTL_COMPLETE=bash_source clawsupctl)"',
)
@click.option(
    "--socket",
    "endpoint",
    metavar="ENDPOINT",
    envvar="CLAWSUP_SOCKET",
    help="Control socket: ipc://PATH, a plain path, or tcp://HOST:PORT (with CURVE keys). "
    "Default $CLAWSUP_SOCKET, then ipc:///run/clawsup/control.sock.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help=f"How long to wait for an answer (default {QUERY_TIMEOUT:g}s; "
    f"{WAIT_TIMEOUT:g}s for start/stop/restart, which answer when the program got there).",
)
@click.option(
    "--curve-server-key",
    metavar="KEY|FILE",
    envvar="CLAWSUP_CURVE_SERVER_KEY",
    help="For tcp://: the server's CURVE public key (z85) or its .key file.",
)
@click.option(
    "--curve-client-key",
    metavar="FILE",
    envvar="CLAWSUP_CURVE_CLIENT_KEY",
    help="For tcp://: this client's .key_secret file (its .key must be authorized).",
)
@click.version_option(
    package_name="clawsup", prog_name="clawsupctl", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(
    ctx: click.Context,
    endpoint: str | None,
    timeout: float | None,
    curve_server_key: str | None,
    curve_client_key: str | None,
) -> None:
    """Control a running clawsup supervisor."""
    ctx.obj = _Options(endpoint, timeout, curve_server_key, curve_client_key)


# -- status -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the status reply as the wire gives it."
)
@_pass_options
def status(options: _Options, as_json: bool) -> None:
    """Show every program: state, pid, uptime, restarts, last exit."""
    from clawsup.protocol import Status, StatusReply

    with options.client() as client:
        frame = client.request_raw(Status())
        reply = client.decode_reply(frame, StatusReply)
    if as_json:
        click.echo(frame.decode())
        return
    import msgspec

    from clawsup.status_text import format_status

    click.echo(format_status(msgspec.to_builtins(reply)))


# -- program commands -------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@_pass_options
def start(options: _Options, name: str | None) -> None:
    """Start NAME (default: the main program); answers once it is RUNNING (serving)."""
    with options.client(waits=True) as client, _still_starting(name):
        _echo_program(client.start(name))


@cli.command()
@click.argument("name", required=False)
@_pass_options
def stop(options: _Options, name: str | None) -> None:
    """Stop NAME (default: the main program); answers once it is gone."""
    with options.client(waits=True) as client:
        _echo_program(client.stop(name))


@cli.command()
@click.argument("name", required=False)
@click.option("--no-wait", is_flag=True, help="Answer at once instead of when RUNNING again.")
@click.option("--when-idle", is_flag=True,
              help="Restart once NAME holds no transcript lock (no message in flight), or "
              "at --max-wait; answers at once. Safe to ask for from inside a turn.")
@click.option("--max-wait", metavar="DURATION",
              help="With --when-idle: restart by then even with a lock held (default 10m, "
              "at most 1d), e.g. 90s, 10m.")
@click.option("--reason", metavar="TEXT",
              help="Why, in words: shown in the events and the incident log.")
@_pass_options
def restart(options: _Options, *, name: str | None, no_wait: bool, when_idle: bool,
            max_wait: str | None, reason: str | None) -> None:
    """Restart NAME (default: the main program); answers once it is RUNNING (serving)
    again, or at once with --no-wait or --when-idle."""
    if max_wait is not None and not when_idle:
        raise click.UsageError("--max-wait applies only with --when-idle")
    if when_idle:
        seconds = _max_wait(max_wait)
        with options.client() as client:
            reply = client.restart_when_idle(name, seconds, reason or "clawsupctl restart --when-idle")
        click.echo(f"{reply.program}: {reply.message}")
        return
    with options.client(waits=not no_wait) as client, _still_starting(name):
        _echo_program(client.restart(name, wait=not no_wait, reason=reason or "clawsupctl restart"))


def _max_wait(text: str | None) -> float | None:
    """--max-wait in seconds, checked here so that a typo is a usage error (exit 2)."""
    if text is None:
        return None
    from clawsup.units import parse_duration

    try:
        seconds = float(parse_duration(text))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-wait") from None
    if seconds > 86400:
        raise click.BadParameter(f"at most 1d, got {text!r}", param_hint="--max-wait")
    return seconds


@contextlib.contextmanager
def _still_starting(name: str | None) -> Iterator[None]:
    """No answer in time to a start: say what that most likely means, not just "cannot
    reach clawsup" (the command was received and goes on)."""
    from clawsup.client import Timeout

    try:
        yield
    except Timeout as error:
        raise click.ClickException(
            f"no answer from clawsup within {error.timeout:g}s: {name or 'the main program'} "
            "is probably still starting (see `clawsupctl status`; --timeout waits longer)"
        ) from None


@cli.command(name="signal")
@click.argument("sig", metavar="SIGNAL")
@click.argument("name", required=False)
@_pass_options
def signal_(options: _Options, sig: str, name: str | None) -> None:
    """Send SIGNAL (HUP, SIGHUP or a number) to NAME's process group."""
    with options.client() as client:
        _echo_program(client.signal(sig, name))


def _echo_program(reply: ProgramReply) -> None:
    pid = "" if reply.pid is None else f" (pid {reply.pid})"
    message = f": {reply.message}" if reply.message else ""
    click.echo(f"{reply.program}: {reply.state}{pid}{message}")


# -- settings ---------------------------------------------------------------------------


@cli.command(name="set-model")
@click.argument("model")
@_pass_options
def set_model(options: _Options, model: str) -> None:
    """Set the gateway's default model (e.g. anthropic/claude-opus-4-5)."""
    with options.client() as client:
        _echo_setting(client.set_model(model))


@cli.command(name="set-timezone")
@click.argument("zone")
@_pass_options
def set_timezone(options: _Options, zone: str) -> None:
    """Set the gateway's user time zone (an IANA name like Europe/Berlin)."""
    with options.client() as client:
        _echo_setting(client.set_timezone(zone))


def _echo_setting(reply: SettingReply) -> None:
    click.echo(f"{reply.key}: {reply.old} -> {reply.new} ({reply.applied})")


# -- health -----------------------------------------------------------------------------


@cli.command(name=HEALTH)
@_pass_options
def health(options: _Options) -> None:
    """Exit 0 if the main program is healthy, 1 otherwise (for Docker's HEALTHCHECK).

    Unreachable supervisor, no answer within --timeout, or any error: 1, never 2.
    """
    # One attempt: the answer must come within --timeout, as Docker's own timeout expects.
    from clawsup.status_text import health_line

    with options.client(retries=0) as client:
        reply = client.health()
    click.echo(health_line(reply.healthy, reply.reasons))
    if not reply.healthy:
        raise click.exceptions.Exit(1)


# -- events and incidents ---------------------------------------------------------------


@cli.command()
@click.option(
    "--kind", "kinds", multiple=True, metavar="KIND", help="Only events of KIND (repeatable)."
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@_pass_options
def events(options: _Options, kinds: tuple[str, ...], count: int | None) -> None:
    """Follow the event stream: one JSON object per line. Program output (``log``
    events) only with --kind log: `clawsupctl logs -f` is the way to read it."""
    seen = 0
    with options.client() as client:
        for frame, event in client.event_frames(kinds or None):
            if not kinds and event.kind == "log":
                continue
            click.echo(frame.decode())
            seen += 1
            if count is not None and seen >= count:
                return


@cli.command()
@click.option("-n", "--lines", "count", default=20, show_default=True,
              type=click.IntRange(min=0), metavar="LINES", help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True,
              help="Then print new lines as they come, until Ctrl-C or clawsup exits.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line: seq, ts, stream, pid, text.")
@click.argument("name", required=False)
@_pass_options
def logs(options: _Options, count: int, follow: bool, as_json: bool, name: str | None) -> None:
    """The last lines NAME (default: the main program) printed, stdout and stderr in
    order, across restarts."""
    with options.client() as client:
        if not follow:
            _echo_lines(client.logs(name, count).lines, as_json)
            return
        try:
            with contextlib.closing(client.follow_logs(name, count)) as lines:
                for line in lines:
                    _echo_lines([line], as_json)
        except KeyboardInterrupt:
            return  # Ctrl-C is how -f is meant to end: not an error


def _echo_lines(lines: Sequence[LogLine], as_json: bool) -> None:
    if not lines:
        return
    if as_json:
        import msgspec

        text = "\n".join(msgspec.json.encode(line).decode() for line in lines)
    else:
        text = "\n".join(line.text for line in lines)
    # Not click.echo: a program's own colours are kept, as supervisorctl tail keeps them.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@cli.command()
@click.option(
    "--since",
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="How far back, e.g. 24h, 7d.",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Latest incidents to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as the wire gives it.")
@_pass_options
def incidents(options: _Options, since: str, limit: int, as_json: bool) -> None:
    """Incidents (hangs, crash loops, ...): counts per kind per day, then the latest."""
    from clawsup.protocol import Incidents, IncidentsReply
    from clawsup.units import parse_duration

    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    with options.client() as client:
        frame = client.request_raw(Incidents(since=float(seconds), limit=limit))
        reply = client.decode_reply(frame, IncidentsReply)
    click.echo(frame.decode() if as_json else format_incidents(reply, since))


def format_incidents(reply: IncidentsReply, since: str) -> str:
    from clawsup.status_text import table

    if not reply.counts and not reply.latest:
        return f"no incidents in the last {since}"
    kinds = sorted({kind for per_day in reply.counts.values() for kind in per_day})
    rows = [["DAY", *(k.upper() for k in kinds)]]
    for day in sorted(reply.counts):
        rows.append([day, *(str(reply.counts[day].get(k, 0)) for k in kinds)])
    lines = table(rows) if kinds else []
    if reply.latest:
        lines += ["", "latest:"]
        latest = [
            [
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(incident.ts)),
                incident.kind,
                incident.program or "-",
                incident.message,
            ]
            for incident in reply.latest
        ]
        lines += ["  " + line for line in table(latest)]
    return "\n".join(lines)


# -- supervisor -------------------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what a reload would do; change nothing.")
@_pass_options
def reload(options: _Options, dry_run: bool) -> None:
    """Re-read the configuration: prints what changed and what was done, one line per
    change (what needs a clawsup restart too)."""
    with options.client() as client:
        reply = client.reload(dry_run=dry_run)
    click.echo(reply.message or "reloaded")
    for change in reply.changes:
        click.echo(f"  {change.describe()}")
    if any(change.error for change in reply.changes):
        raise click.exceptions.Exit(1)


@cli.command()
@_pass_options
def shutdown(options: _Options) -> None:
    """Stop every program and exit the supervisor (the container stops too)."""
    with options.client() as client:
        click.echo(client.shutdown().message or "shutting down")


@cli.command()
@_pass_options
def version(options: _Options) -> None:
    """Client and server versions."""
    from clawsup import __version__

    click.echo(f"clawsupctl {__version__}")
    with options.client() as client:
        reply = client.version()
    click.echo(f"clawsup {reply.version} (protocol {reply.protocol})")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default="clawsup", show_default=True, help="Key pair file name.")
def keygen(directory: str, name: str) -> None:
    """Write a CURVE key pair, NAME.key (public) and NAME.key_secret, into DIRECTORY.

    Server: curve_secret_key_file = the .key_secret. Client: give the server's .key with
    --curve-server-key, and put each client's .key in curve_authorized_keys_dir.
    """
    from pathlib import Path

    import zmq.auth

    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise click.ClickException(f"{path} exists; not overwriting a key")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    zmq.auth.create_certificates(folder, name)
    secret.chmod(0o600)
    click.echo(f"public key: {public}\nsecret key: {secret} (mode 0600; keep it private)")


# -- entry point ------------------------------------------------------------------------


def _is_health(argv: Sequence[str], error: click.ClickException) -> bool:
    ctx = getattr(error, "ctx", None)
    if ctx is not None and ctx.info_name == HEALTH:
        return True
    return HEALTH in argv


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args, prog_name="clawsupctl", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        # Docker reads 2 from a HEALTHCHECK as reserved: a misused `health` is unhealthy.
        code = 1 if _is_health(args, exc) else exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    except BrokenPipeError:
        code = 0  # `clawsupctl events | head`: the reader is done, so are we
    except Exception as exc:
        from clawsup.client import ClawsupError

        if not isinstance(exc, ClawsupError) and HEALTH not in args:
            raise
        click.echo(f"clawsupctl: {exc}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
