"""clawsupctl: talk to a running clawsup over its control socket.

    clawsupctl [--socket ENDPOINT] [--timeout DURATION] COMMAND

Exit codes: 0 success, 1 failure (unreachable supervisor, refused command, bad reply),
2 a usage error, 4 ``status`` of a name clawsup does not know (as supervisorctl), except
for ``health``, which exits only 0 (healthy) or 1 (anything else) because Docker's
HEALTHCHECK reserves 2.

One implementation per command: each is parsed here (argparse), sent by ``Target.call``
(clawsup/client/_call.py) and read field by field from its JSON reply. Docker and
Kubernetes probes run ``health`` every few seconds for the container's whole life and
scripts poll ``status``, so what every command loads is kept light: argparse, json and a
Unix socket. pyzmq and msgspec are loaded only where they are needed: ``tcp://`` with
CURVE, the event stream (``events``, ``logs -f``: pyzmq's SUB socket and the typed
``Client``), ``keygen``, and the commands that print a typed reply (``reload``,
``incidents``); tests/test_ctl.py checks what ``status``, ``health`` and ``pid`` load.

Shell completion, e.g. for bash, in ~/.bashrc::

    eval "$(_CLAWSUPCTL_COMPLETE=bash_source clawsupctl)"

(``zsh_source`` likewise, through zsh's bashcompinit.)
"""

from __future__ import annotations

import argparse
import os
import sys

from clawsup import __version__
from clawsup._argv import Parser, UsageError
from clawsup.client._call import Reply, Target
from clawsup.client._endpoint import (
    DEFAULT_ENDPOINT,
    DEFAULT_TIMEOUT,
    BadEndpoint,
    check_endpoint,
    normalize_endpoint,
)
from clawsup.client._errors import ClawsupError, CommandFailed, Timeout

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any, NoReturn

# Queries answer at once; start/stop/restart answer when the program got there: a
# stop_timeout, then a start that lasts until the gateway serves (up to its liveness
# start_timeout, 120 s shipped; a cold gateway takes up to 55 s), then the stop of a failed
# start. The supervisor answers within 180 s with the shipped config. Used when --timeout
# is not given.
QUERY_TIMEOUT = DEFAULT_TIMEOUT
WAIT_TIMEOUT = 300.0
MAX_TIMEOUT = 86400.0  # a day: past that a number is a typo (and overflows poll())
HEALTH = "health"
ALL = "all"
# Safe to send twice (clawsup.protocol.IDEMPOTENT_COMMANDS; a test holds them equal): a
# query is sent once more on a fresh connection after a timeout, other commands never.
QUERIES = frozenset({"status", "health", "version", "incidents", "logs"})
EXIT_FAILED, EXIT_USAGE, EXIT_NO_SUCH_PROGRAM = 1, 2, 4


class Options:
    """The global options, and the calls every command makes with them."""

    def __init__(self, args: argparse.Namespace) -> None:
        endpoint = args.endpoint or os.environ.get("CLAWSUP_SOCKET") or DEFAULT_ENDPOINT
        self.target = Target(normalize_endpoint(endpoint), args.curve_server_key,
                             args.curve_client_key)
        self.timeout: float | None = args.timeout
        if args.command != "keygen":
            self.check()

    def check(self) -> None:
        """BadEndpoint or UsageError for an endpoint that cannot be a control socket."""
        endpoint = self.target.endpoint
        check_endpoint(endpoint)
        if endpoint.startswith("tcp://") and not self.target.curve_server_key:
            raise UsageError(f"clawsupctl: --socket {endpoint}: clawsup listens on TCP only "
                             "with CURVE; give --curve-server-key")

    def call(self, request: dict[str, Any], *, waits: bool = False) -> Reply:
        default = WAIT_TIMEOUT if waits else QUERY_TIMEOUT
        timeout = default if self.timeout is None else self.timeout
        retries = 1 if request["cmd"] in QUERIES and request["cmd"] != HEALTH else 0
        # health is asked once: the answer must come within --timeout, as Docker expects.
        return self.target.call(request, timeout, retries)

    def client(self) -> Any:
        """The typed ``Client`` (pyzmq), for what streams: events, logs -f."""
        from clawsup.client._client import Client

        target = self.target
        return Client(target.endpoint, QUERY_TIMEOUT if self.timeout is None else self.timeout,
                      target.curve_server_key, target.curve_client_key)


def usage(args: argparse.Namespace, text: str) -> UsageError:
    """A usage error of the command ``args`` holds, to raise."""
    return UsageError(f"clawsupctl {args.command}: {text}")


def echo(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fail(text: str) -> None:
    sys.stderr.write(f"clawsupctl: {text}\n")


# -- status and pid ---------------------------------------------------------------------


def status(options: Options, args: argparse.Namespace) -> int:
    reply = options.call({"cmd": "status"})
    data = status_data(reply)
    names: list[str] = [] if ALL in args.names else args.names
    if names:
        known = [program["name"] for program in data["programs"]]
        unknown = [name for name in names if name not in known]
        if unknown:
            fail(f"no program named {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
            return EXIT_NO_SUCH_PROGRAM
        data["programs"] = [p for p in data["programs"] if p["name"] in names]
    if args.as_json and not names:
        echo(reply.frame.decode())
        return 0
    if args.as_json:
        import json

        echo(json.dumps({**reply.data, "programs": [
            program for program in reply.data["programs"] if program["name"] in names]},
            ensure_ascii=False, separators=(",", ":")))
        return 0
    from clawsup.status_text import format_status

    echo(format_status(data))
    return 0


def status_data(reply: Reply) -> dict[str, Any]:
    """What the status table reads, checked: a reply that lacks it is a BadReply."""
    programs = []
    for program in reply.objects("programs"):
        last_exit = program.object("last_exit")
        programs.append({
            "name": program.text("name"),
            "state": program.text("state"),
            "pid": program.integer("pid", None),
            "processes": program.integer("processes", 0),
            "uptime": program.number("uptime", None),
            "restarts": program.integer("restarts"),
            "main": program.flag("main", False),
            "hung": program.flag("hung", False),
            "unkillable": program.flag("unkillable", False),
            "stuck_thread": program.text("stuck_thread", ""),
            "liveness": program.text("liveness", "off"),
            "next_start_in": program.number("next_start_in", None),
            "last_exit": None if last_exit is None else {
                "code": last_exit.integer("code", None),
                "signal": last_exit.optional_text("signal"),
                "reason": last_exit.text("reason", ""),
            },
        })
    breaker_reply = reply.object("breaker")
    breaker = None if breaker_reply is None else {
        "state": breaker_reply.text("state"),
        "active_model": breaker_reply.optional_text("active_model"),
    }
    return {
        "programs": programs,
        "supervisor_pid": reply.integer("supervisor_pid"),
        "model": reply.optional_text("model"),
        "timezone": reply.optional_text("timezone"),
        "breaker": breaker,
    }


def pid(options: Options, args: argparse.Namespace) -> int:
    """As supervisorctl: no name, the supervisor's pid; NAME, its pid or 0 when it is not
    running; all, every program's, one a line."""
    data = status_data(options.call({"cmd": "status"}))
    if not args.names:
        echo(str(data["supervisor_pid"]))
        return 0
    pids = {program["name"]: program["pid"] or 0 for program in data["programs"]}
    code = 0
    for name in pids if ALL in args.names else args.names:
        if name in pids:
            echo(str(pids[name]))
        else:
            fail(f"no program named {name!r} (known: {', '.join(pids)})")
            code = EXIT_FAILED
    return code


# -- program commands -------------------------------------------------------------------


def each_program(options: Options, names: Sequence[str],
                 act: Callable[[str | None], None]) -> int:
    """``act`` on each program named (``all``: every program; none: the main one), one
    after the other; a refusal for one is said and the others still go."""
    targets: Iterable[str | None] = names or [None]
    if ALL in names:
        targets = [program["name"] for program in
                   status_data(options.call({"cmd": "status"}))["programs"]]
    code = 0
    for name in targets:
        try:
            act(name)
        except CommandFailed as refused:
            fail(str(refused))
            code = EXIT_FAILED
    return code


def start(options: Options, args: argparse.Namespace) -> int:
    def start_one(name: str | None) -> None:
        with StillStarting(name):
            echo_program(options.call(_request("start", program=name), waits=True))

    return each_program(options, args.names, start_one)


def stop(options: Options, args: argparse.Namespace) -> int:
    def stop_one(name: str | None) -> None:
        echo_program(options.call(_request("stop", program=name), waits=True))

    return each_program(options, args.names, stop_one)


def restart(options: Options, args: argparse.Namespace) -> int:
    if args.max_wait is not None and not args.when_idle:
        raise usage(args, "--max-wait applies only with --when-idle")
    if args.when_idle:
        max_wait = _max_wait(args)

        def schedule_one(name: str | None) -> None:
            reply = options.call(_request(
                "restart", program=name, when_idle=True, max_wait=max_wait,
                reason=args.reason or "clawsupctl restart --when-idle"))
            echo(f"{reply.text('program')}: {reply.text('message', '')}")

        return each_program(options, args.names, schedule_one)

    def restart_one(name: str | None) -> None:
        request = _request("restart", program=name, reason=args.reason or "clawsupctl restart")
        if args.no_wait:
            request["wait"] = False
        with StillStarting(name):
            echo_program(options.call(request, waits=not args.no_wait))

    return each_program(options, args.names, restart_one)


def _request(cmd: str, **arguments: Any) -> dict[str, Any]:
    """A request with the arguments given (None: left out, the supervisor's default)."""
    return {"cmd": cmd, **{key: value for key, value in arguments.items() if value is not None}}


def _max_wait(args: argparse.Namespace) -> float | None:
    """--max-wait in seconds, checked here so that a typo is a usage error (exit 2)."""
    text: str | None = args.max_wait
    if text is None:
        return None
    from clawsup.units import parse_duration

    try:
        seconds = float(parse_duration(text))
    except ValueError as exc:
        raise usage(args, f"--max-wait: {exc}") from None
    if seconds > 86400:
        raise usage(args, f"--max-wait: at most 1d, got {text!r}")
    return seconds


class StillStarting:
    """No answer in time to a start: say what that most likely means, not just "cannot
    reach clawsup" (the command was received and goes on)."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if isinstance(error, Timeout):
            raise ClawsupError(
                f"no answer from clawsup within {error.timeout:g}s: "
                f"{self.name or 'the main program'} is probably still starting "
                "(see `clawsupctl status`; --timeout waits longer)") from None


def signal_(options: Options, args: argparse.Namespace) -> int:
    echo_program(options.call(_request("signal", signal=_signal(args), program=args.name)))
    return 0


def _signal(args: argparse.Namespace) -> str:
    """SIGNAL as the wire takes it; a number that is no signal is a usage error, said
    here (the supervisor's word for it would be "expected a signal name")."""
    text: str = args.signal
    if not text.isdigit():
        return text
    import signal

    numbers = sorted({s.value for s in signal.Signals})
    if int(text) not in numbers:
        raise usage(args, f"SIGNAL: {text} is not a signal number clawsup takes; give a name like HUP or "
                    f"one of {_ranges(numbers)}")
    return text


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 34, 64] -> "1-3, 34, 64"."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][-1] + 1:
            spans[-1].append(number)
        else:
            spans.append([number])
    return ", ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in spans)


def echo_program(reply: Reply) -> None:
    pid = reply.integer("pid", None)
    message = reply.text("message", "")
    echo(f"{reply.text('program')}: {reply.text('state')}"
         f"{'' if pid is None else f' (pid {pid})'}{f': {message}' if message else ''}")


# -- settings ---------------------------------------------------------------------------


def set_model(options: Options, args: argparse.Namespace) -> int:
    echo_setting(options.call({"cmd": "set_model", "model": args.model}))
    return 0


def set_timezone(options: Options, args: argparse.Namespace) -> int:
    echo_setting(options.call({"cmd": "set_timezone", "timezone": args.zone}))
    return 0


def echo_setting(reply: Reply) -> None:
    echo(f"{reply.text('key')}: {reply.optional_text('old')} -> {reply.text('new')} "
         f"({reply.text('applied')})")


# -- health -----------------------------------------------------------------------------


def health(options: Options, args: argparse.Namespace) -> int:
    from clawsup.status_text import health_line

    reply = options.call({"cmd": HEALTH})
    healthy = reply.flag("healthy")
    echo(health_line(healthy, reply.texts("reasons")))
    return 0 if healthy else 1


# -- events, logs, incidents ------------------------------------------------------------


def events(options: Options, args: argparse.Namespace) -> int:
    from clawsup.protocol import EventKind

    kinds: list[str] = args.kinds
    unknown = [kind for kind in kinds if kind not in EventKind.__members__.values()]
    if unknown:
        raise usage(args, f"--kind: no event kind {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(kind.value for kind in EventKind)}")
    # A control socket that answers before a subscription that would wait silently: a
    # wrong endpoint is said at once.
    options.call({"cmd": "version"})
    seen = 0
    with options.client() as client:
        for frame, event in client.event_frames(kinds or None, until_gone=True):
            if not kinds and event.kind == EventKind.LOG:
                continue
            echo(frame.decode())
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


def logs(options: Options, args: argparse.Namespace) -> int:
    if not args.follow:
        reply = options.call(_request("logs", program=args.name, lines=args.count))
        echo_lines([{"seq": line.integer("seq"), "ts": line.number("ts"),
                     "stream": line.text("stream"), "pid": line.integer("pid"),
                     "text": line.text("text")} for line in reply.objects("lines")],
                   args.as_json)
        return 0
    import contextlib

    import msgspec

    options.call({"cmd": "version"})  # as for events: a wrong endpoint said at once
    with options.client() as client, contextlib.closing(
            client.follow_logs(args.name, args.count)) as lines:
        try:
            for line in lines:
                echo_lines([msgspec.structs.asdict(line)], args.as_json)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how -f is meant to end: not an error
    return 0


def echo_lines(lines: list[dict[str, Any]], as_json: bool) -> None:
    if not lines:
        return
    if as_json:
        import json

        text = "\n".join(json.dumps(line, ensure_ascii=False, separators=(",", ":"))
                         for line in lines)
    else:
        text = "\n".join(line["text"] for line in lines)
    # Written as printed: a program's own colours are kept, as supervisorctl tail keeps them.
    echo(text)


def incidents(options: Options, args: argparse.Namespace) -> int:
    from clawsup.units import parse_duration

    try:
        seconds = float(parse_duration(args.since))
    except ValueError as exc:
        raise usage(args, f"--since: {exc}") from None
    reply = options.call({"cmd": "incidents", "since": seconds, "limit": args.limit})
    if args.as_json:
        echo(reply.frame.decode())
        return 0
    from clawsup.protocol import IncidentsReply

    echo(format_incidents(typed(reply, IncidentsReply), args.since))
    return 0


def typed(reply: Reply, reply_type: type[Any]) -> Any:
    """The reply as its struct of clawsup.protocol, for the commands that print one."""
    import msgspec

    from clawsup.client._errors import BadReply

    try:
        return msgspec.convert(reply.data, reply_type)
    except msgspec.ValidationError as exc:
        raise BadReply(f"unexpected reply from clawsup ({exc}): {reply.frame!r:.200}") from None


def format_incidents(reply: Any, since: str) -> str:
    import time

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


def reload(options: Options, args: argparse.Namespace) -> int:
    from clawsup.protocol import ReloadReply

    request = _request("reload", dry_run=True if args.dry_run else None)
    reply = typed(options.call(request), ReloadReply)
    echo(reply.message or "reloaded")
    for change in reply.changes:
        echo(f"  {change.describe()}")
    return EXIT_FAILED if any(change.error for change in reply.changes) else 0


def shutdown(options: Options, args: argparse.Namespace) -> int:
    echo(options.call({"cmd": "shutdown"}).text("message", "") or "shutting down")
    return 0


def version(options: Options, args: argparse.Namespace) -> int:
    echo(f"clawsupctl {__version__}")
    reply = options.call({"cmd": "version"})
    echo(f"clawsup {reply.text('version')} (protocol {reply.integer('protocol', 1)})")
    return 0


def keygen(options: Options, args: argparse.Namespace) -> int:
    from pathlib import Path

    import zmq.auth

    folder = Path(args.directory)
    public, secret = folder / f"{args.name}.key", folder / f"{args.name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ClawsupError(f"{path} exists; not overwriting a key")
    if folder.exists() and not folder.is_dir():
        raise usage(args, f"DIRECTORY: {folder} is not a directory")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    zmq.auth.create_certificates(folder, args.name)
    secret.chmod(0o600)
    echo(f"public key: {public}\nsecret key: {secret} (mode 0600; keep it private)")
    return 0


# -- the command line -------------------------------------------------------------------


def timeout_option(text: str) -> float:
    """--timeout: seconds or a duration ("10s", "500ms", "2m"), as everywhere in clawsup."""
    from clawsup.units import parse_duration

    plain = text.isascii() and text.replace(".", "", 1).isdigit()  # float() takes "inf", "1e9"
    try:
        seconds = float(text) if plain else float(parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected more than 0 and at most 1d, got {text!r}")
    return seconds


def positive_count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return int(text)


def count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def build_parser() -> Parser:
    parser = Parser(prog="clawsupctl",
                     description="Control a running clawsup supervisor.",
                     epilog='Bash completion: eval "$(_CLAWSUPCTL_COMPLETE=bash_source '
                            'clawsupctl)"')
    parser.add_argument("--socket", dest="endpoint", metavar="ENDPOINT",
                        help="Control socket: ipc://PATH, a plain path, or tcp://HOST:PORT "
                        "(with CURVE keys). Default $CLAWSUP_SOCKET, then "
                        f"{DEFAULT_ENDPOINT}.")
    parser.add_argument("--timeout", type=timeout_option, metavar="DURATION",
                        help=f"How long to wait for an answer: seconds or 10s, 2m "
                        f"(default {QUERY_TIMEOUT:g}s; {WAIT_TIMEOUT:g}s for "
                        "start/stop/restart, which answer when the program got there).")
    parser.add_argument("--curve-server-key", metavar="KEY|FILE",
                        default=os.environ.get("CLAWSUP_CURVE_SERVER_KEY"),
                        help="For tcp://: the server's CURVE public key (z85) or its .key "
                        "file (default $CLAWSUP_CURVE_SERVER_KEY).")
    parser.add_argument("--curve-client-key", metavar="FILE",
                        default=os.environ.get("CLAWSUP_CURVE_CLIENT_KEY"),
                        help="For tcp://: this client's .key_secret file (its .key must be "
                        "authorized; default $CLAWSUP_CURVE_CLIENT_KEY).")
    parser.add_argument("--version", action="version", version=f"clawsupctl {__version__}")
    # prog given: argparse would otherwise build it with a HelpFormatter, and shutil (with
    # bz2 and lzma) with that, on every call.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     prog="clawsupctl")

    def command(name: str, run: Callable[[Options, argparse.Namespace], int],
                text: str) -> Parser:
        sub: Parser = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    names = "NAME"
    sub = command("status", status, "Show programs (all, or those NAMEd): state, pid, "
                  "uptime, restarts, last exit.")
    sub.add_argument("--json", dest="as_json", action="store_true",
                     help="Print the status reply as the wire gives it.")
    sub.add_argument("names", nargs="*", metavar=names)
    sub = command("pid", pid, "The supervisor's pid; with NAME, the program's (0 when it is "
                  "not running); all: every program's.")
    sub.add_argument("names", nargs="*", metavar=names)
    sub = command("start", start, "Start NAME... or all (default: the main program); "
                  "answers once it is RUNNING (serving).")
    sub.add_argument("names", nargs="*", metavar=names)
    sub = command("stop", stop, "Stop NAME... or all (default: the main program); answers "
                  "once it is gone.")
    sub.add_argument("names", nargs="*", metavar=names)
    sub = command("restart", restart, "Restart NAME... or all (default: the main program); "
                  "answers once it is RUNNING (serving) again, or at once with --no-wait or "
                  "--when-idle.")
    sub.add_argument("names", nargs="*", metavar=names)
    sub.add_argument("--no-wait", action="store_true",
                     help="Answer at once instead of when RUNNING again.")
    sub.add_argument("--when-idle", action="store_true",
                     help="Restart once NAME holds no transcript lock (no message in "
                     "flight), or at --max-wait; answers at once. Safe to ask for from "
                     "inside a turn.")
    sub.add_argument("--max-wait", metavar="DURATION",
                     help="With --when-idle: restart by then even with a lock held "
                     "(default 10m, at most 1d), e.g. 90s, 10m.")
    sub.add_argument("--reason", metavar="TEXT",
                     help="Why, in words: shown in the events and the incident log.")
    sub = command("signal", signal_, "Send SIGNAL (HUP, SIGHUP or a number) to NAME's "
                  "process group.")
    sub.add_argument("signal", metavar="SIGNAL")
    sub.add_argument("name", nargs="?", metavar=names)
    sub = command("set-model", set_model,
                  "Set the gateway's default model (e.g. anthropic/claude-opus-4-5).")
    sub.add_argument("model", metavar="MODEL")
    sub = command("set-timezone", set_timezone,
                  "Set the gateway's user time zone (an IANA name like Europe/Berlin).")
    sub.add_argument("zone", metavar="ZONE")
    command(HEALTH, health, "Exit 0 if the main program is healthy, 1 otherwise (for "
            "Docker's HEALTHCHECK): unreachable supervisor, no answer within --timeout, or "
            "any error is 1, never 2.")
    sub = command("events", events, "Follow the event stream, one JSON object a line, until "
                  "clawsup exits. Program output (log events) only with --kind log: "
                  "`clawsupctl logs -f` is the way to read it.")
    sub.add_argument("--kind", dest="kinds", action="append", default=[], metavar="KIND",
                     help="Only events of KIND (repeatable).")
    sub.add_argument("--count", type=positive_count, metavar="N",
                     help="Stop after this many events.")
    sub = command("logs", logs, "The last lines NAME (default: the main program) printed, "
                  "stdout and stderr in order, across restarts.")
    sub.add_argument("-n", "--lines", dest="count", type=count, default=20, metavar="LINES",
                     help="How many of the last lines (default 20).")
    sub.add_argument("-f", "--follow", action="store_true",
                     help="Then print new lines as they come, until Ctrl-C or clawsup exits.")
    sub.add_argument("--json", dest="as_json", action="store_true",
                     help="One JSON object a line: seq, ts, stream, pid, text.")
    sub.add_argument("name", nargs="?", metavar=names)
    sub = command("incidents", incidents, "Incidents (hangs, crash loops, ...): counts per "
                  "kind per day, then the latest.")
    sub.add_argument("--since", default="7d", metavar="DURATION",
                     help="How far back, e.g. 24h, 7d (default 7d).")
    sub.add_argument("--limit", type=count, default=20,
                     help="Latest incidents to list (default 20).")
    sub.add_argument("--json", dest="as_json", action="store_true",
                     help="Print the reply as the wire gives it.")
    sub = command("reload", reload, "Re-read the configuration: prints what changed and "
                  "what was done, one line per change (what needs a clawsup restart too).")
    sub.add_argument("--dry-run", action="store_true",
                     help="Show what a reload would do; change nothing.")
    command("shutdown", shutdown,
            "Stop every program and exit the supervisor (the container stops too).")
    command("version", version, "Client and server versions.")
    sub = command("keygen", keygen, "Write a CURVE key pair, NAME.key (public) and "
                  "NAME.key_secret, into DIRECTORY. Server: curve_secret_key_file = the "
                  ".key_secret. Client: give the server's .key with --curve-server-key, and "
                  "put each client's .key in curve_authorized_keys_dir.")
    sub.add_argument("directory", metavar="DIRECTORY")
    sub.add_argument("--name", default="clawsup", help="Key pair file name (default clawsup).")
    return parser


def completion_script(shell: str) -> str:
    """A bash completion of the commands and their options (zsh through bashcompinit)."""
    parser = build_parser()
    subparsers = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction))
    cases = "\n".join(
        f"        {name}) words='{' '.join(o for a in sub._actions for o in a.option_strings)}';;"
        for name, sub in subparsers.choices.items())
    top = " ".join([*subparsers.choices, *(o for a in parser._actions for o in a.option_strings)])
    prefix = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh_source" else ""
    return f"""{prefix}_clawsupctl_completion() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command="" words i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --socket|--timeout|--curve-server-key|--curve-client-key) ((i++));;
            -*) ;;
            *) command=${{COMP_WORDS[i]}}; break;;
        esac
    done
    case $command in
        "") words='{top}';;
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _clawsupctl_completion clawsupctl"""


def run(argv: Sequence[str]) -> int:
    """clawsupctl ARGV: its exit status, its output and errors written."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.run(Options(args), args)
        return code
    except UsageError as error:
        sys.stderr.write(f"{error}\n")
        return EXIT_FAILED if HEALTH in argv else EXIT_USAGE
    except BadEndpoint as error:
        fail(f"--socket: {error}")
        return EXIT_FAILED if HEALTH in argv else EXIT_USAGE
    except ClawsupError as error:
        fail(str(error))
        return EXIT_FAILED
    except BrokenPipeError:
        # `clawsupctl events | head`: the reader is done, so are we. Python would complain
        # again when it flushes stdout on the way out: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")
        return EXIT_FAILED
    except SystemExit as done:  # --help, --version
        return int(done.code or 0)
    except Exception as error:
        if HEALTH not in argv:
            raise  # a bug: its traceback
        fail(f"{type(error).__name__}: {error}")  # a probe says unhealthy, never crashes
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> NoReturn:
    shell = os.environ.get("_CLAWSUPCTL_COMPLETE")
    if shell in ("bash_source", "zsh_source"):
        print(completion_script(shell))
        sys.exit(0)
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
