"""The ``clawsupctl`` command: ``status``, ``health`` and ``logs`` without click, pyzmq or
msgspec, everything else through the click CLI in ctl.py.

Container HEALTHCHECKs and Kubernetes probes run ``clawsupctl health`` every few seconds
for the container's whole life (Dockerfile, deploy/kubernetes/), and scripts and skills
poll ``clawsupctl status``. Importing click, pyzmq and msgspec is most of what such a
call costs (0.67-0.73x of a whole ``supervisorctl status`` on its own); a probe that
starts in half the time halves that recurring CPU cost. So the command lines they use,
``status [--json]`` and ``health`` with ``--socket ENDPOINT`` / ``--timeout SECONDS``
(or ``$CLAWSUP_SOCKET``) before them, on an ``ipc://`` endpoint, are recognised here,
strictly, and served over a plain Unix socket by the ZMTP client in zmtp.py, the reply
read with the stdlib json module. Anything else (help, other commands, CURVE keys, a TCP
endpoint, an option it does not know, shell completion) goes to the click CLI, which
owns every message and error; a test holds the two parsers to the same reading, and the
two paths to the same output, errors and exit status. ``logs [-n LINES] [NAME]`` (no
``-f``, no ``--json``) is served here too: it is what an operator or a skill runs to see
what the gateway printed, and `supervisorctl tail` is what it is measured against.
"""

from __future__ import annotations

import json
import os
import sys

from clawsup.client import zmtp
from clawsup.client._endpoint import (
    DEFAULT_ENDPOINT,
    DEFAULT_TIMEOUT,
    ipc_path,
    normalize_endpoint,
    unreachable_reason,
)
from clawsup.client._errors import ClawsupError, Timeout, Unreachable
from clawsup.client._plain_replies import read_health, read_logs, read_status
from clawsup.status_text import format_status, health_line

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

STATUS, HEALTH, LOGS = "status", "health", "logs"
# What clawsup.protocol.encode(Status()) and encode(Health()) write (a test checks).
REQUESTS = {STATUS: b'{"cmd":"status"}', HEALTH: b'{"cmd":"health"}'}
# As the click CLI's Client: status and logs are retried once on a fresh connection
# after a timeout (they are idempotent); health is asked once, so it answers within
# --timeout.
ATTEMPTS = {STATUS: 2, HEALTH: 1, LOGS: 2}
DEFAULT_LOG_LINES = 20  # as ctl.logs's -n
# Environment that changes what click does with any command line: shell completion, and
# CURVE keys, with which the Client uses CURVE even over ipc.
CLICK_ONLY_ENV = ("_CLAWSUPCTL_COMPLETE", "CLAWSUP_CURVE_SERVER_KEY", "CLAWSUP_CURVE_CLIENT_KEY")


class CommandLine:
    """A ``status``, ``health`` or ``logs`` line the fast path serves."""

    def __init__(self, command: str, endpoint: str, timeout: float | None, as_json: bool,
                 *, program: str | None = None, lines: int | None = None) -> None:
        self.command = command
        self.endpoint = endpoint
        self.timeout = timeout
        self.as_json = as_json
        self.program = program  # logs: NAME
        self.lines = lines  # logs: -n

    def request(self) -> bytes:
        if self.command != LOGS:
            return REQUESTS[self.command]
        # As clawsup.protocol.encode(Logs(...)) writes it (a test checks).
        return json.dumps({"cmd": LOGS, "program": self.program, "lines": self.lines,
                           "after": None}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8", "surrogatepass")


def parse(argv: list[str], environ: Mapping[str, str]) -> CommandLine | None:
    """The fast path's reading of ``clawsupctl ARGV``, or None to leave it to click."""
    if any(environ.get(name) for name in CLICK_ONLY_ENV):
        return None
    options: dict[str, str] = {}
    rest = iter(argv)
    for arg in rest:
        name, eq, value = arg.partition("=")
        if name not in ("--socket", "--timeout"):
            if arg not in (STATUS, HEALTH, LOGS):
                return None  # --help, --version, CURVE keys, another command, a typo
            break
        given = value if eq else next(rest, None)
        # An empty value or one that looks like an option: click decides what it means.
        if not given or given.startswith("-"):
            return None
        options[name] = given  # click keeps the last of a repeated option
    else:
        return None  # no command
    command = arg
    flags = list(rest)
    logs = _logs_arguments(flags) if command == LOGS else None
    if command == LOGS:
        if logs is None:
            return None
    elif any(flag != "--json" for flag in flags) or (command == HEALTH and flags):
        return None
    timeout = None
    if "--timeout" in options:
        timeout = _seconds(options["--timeout"])
        if timeout is None:
            return None
    # Where the Client would connect: --socket, else $CLAWSUP_SOCKET, else the default.
    endpoint = normalize_endpoint(
        options.get("--socket") or environ.get("CLAWSUP_SOCKET") or DEFAULT_ENDPOINT
    )
    path = ipc_path(endpoint)
    # tcp:// (CURVE) and Linux abstract sockets (ipc://@name) are pyzmq's business.
    if path is None or path.startswith("@"):
        return None
    if logs is not None:
        return CommandLine(command, endpoint, timeout, False, program=logs[0], lines=logs[1])
    return CommandLine(command, endpoint, timeout, bool(flags))


def _logs_arguments(args: list[str]) -> tuple[str | None, int] | None:
    """NAME and -n of ``logs`` given as ``-n N``, ``--lines N`` or ``--lines=N`` (plain
    digits) and at most one NAME, each once, in any order; None for anything else (-f,
    --json, a repeat, an odd spelling): click decides what it means."""
    name: str | None = None
    lines: int | None = None
    rest = iter(args)
    for arg in rest:
        option, eq, value = arg.partition("=")
        if arg == "-n" or option == "--lines":
            given = value if eq else next(rest, None)
            if lines is not None or given is None or not given.isascii() or not given.isdigit():
                return None
            lines = int(given)
        elif arg.startswith("-") or name is not None or not arg:
            return None
        else:
            name = arg
    return name, DEFAULT_LOG_LINES if lines is None else lines


def _seconds(text: str) -> float | None:
    """A plain decimal number of seconds above zero; None for anything click should judge
    (float() would also take "1e3", "inf", "1_000" and non-ASCII digits)."""
    digits = text.replace(".", "", 1)
    if not digits or any(c not in "0123456789" for c in digits):
        return None
    seconds = float(text)
    return seconds if seconds > 0 else None


def run(line: CommandLine) -> int:
    """Serve ``line`` as the click CLI would: same output, same errors, same exit."""
    try:
        frame = _ask(line)
        if line.command == LOGS:
            reply = read_logs(frame) or _typed(frame, LOGS)
            if reply["lines"]:
                # As ctl.logs: written as printed, a program's colours kept.
                sys.stdout.write("\n".join(item["text"] for item in reply["lines"]) + "\n")
                sys.stdout.flush()
            return 0
        if line.command == STATUS:
            reply = read_status(frame) or _typed(frame, STATUS)
            _echo(frame.decode() if line.as_json else format_status(reply))
            return 0
        reply = read_health(frame) or _typed(frame, HEALTH)
        _echo(health_line(reply["healthy"], reply["reasons"]))
        return 0 if reply["healthy"] else 1
    except BrokenPipeError:
        return 0  # `clawsupctl status | head -1`: the reader is done, so are we
    except KeyboardInterrupt:
        _echo("\nAborted!", err=True)  # click's words for a ^C, and its exit status
        return 1
    except Exception as exc:
        # As ctl.main: a ClawsupError is one line and exit 1; for health anything is,
        # since Docker reads 2 as reserved. Other errors are bugs, with their traceback.
        if not isinstance(exc, ClawsupError) and line.command != HEALTH:
            raise
        _echo(f"clawsupctl: {exc}", err=True)
        return 1


def _ask(line: CommandLine) -> bytes:
    path = ipc_path(line.endpoint)
    assert path is not None  # parse() takes ipc endpoints only
    # As the Client: a missing file fails at once, before any connection is tried.
    if not os.path.exists(path):
        raise Unreachable(line.endpoint)
    timeout = DEFAULT_TIMEOUT if line.timeout is None else line.timeout
    for _ in range(ATTEMPTS[line.command]):
        try:
            return zmtp.request(path, line.request(), timeout)
        except zmtp.TimedOut:
            continue
        except zmtp.ConnectFailed as exc:
            # What the Client reports after its wait (libzmq retries a refused connect
            # until the timeout): the same words, without the wait.
            raise Unreachable(line.endpoint, unreachable_reason(exc.error, path)) from exc
        except zmtp.ProtocolError as exc:
            # The one place the paths differ: libzmq hides a failed handshake and the
            # Client can only say "no answer" after its timeout; this says what is wrong.
            raise Unreachable(line.endpoint, f"the peer {exc}") from exc
    raise Timeout(line.endpoint, timeout)


def _typed(frame: bytes, command: str) -> dict[str, Any]:
    """A reply the plain reader was unsure of, read as the click CLI reads it: its
    error (CommandFailed, BadReply) or, if the typed decoder takes it, its data."""
    import msgspec

    from clawsup.client._client import Client
    from clawsup.protocol import HealthReply, LogsReply, StatusReply

    reply_type: type[StatusReply | HealthReply | LogsReply] = (
        StatusReply if command == STATUS else HealthReply if command == HEALTH else LogsReply)
    data: dict[str, Any] = msgspec.to_builtins(Client.decode_reply(frame, reply_type))
    return data


def _echo(text: str, err: bool = False) -> None:
    if "\x1b" in text:
        # click.echo strips ANSI escapes when the stream is not a terminal: let it.
        import click

        click.echo(text, err=err)
        return
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def main() -> None:
    argv = sys.argv[1:]
    line = parse(argv, os.environ)
    if line is None:
        from clawsup.client.ctl import main as click_main

        click_main(argv)
    sys.exit(run(line))
