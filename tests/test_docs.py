"""The README and docs/ tell the truth: every documented command parses, every event kind
and every request is documented, and a reply says a thing once (issue 12, item 6)."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from clawsup import cli as clawsup_cli
from clawsup._argv import Parser, UsageError
from clawsup.client import ctl
from clawsup.protocol import EventKind, Request
from tests.util import REPO, Clawsup, python_program, write_config

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROTOCOL = REPO / "docs" / "protocol.md"
CLIS: dict[str, Callable[[], Parser]] = {"clawsup": clawsup_cli.build_parser,
                                         "clawsupctl": ctl.build_parser}

# What the documents write as placeholders, and a value of that kind for the parser (a
# new one that needs a number fails to parse until it is given one here).
PLACEHOLDERS = {
    "NAME": "gateway", "NAME...": "gateway", "DIR": "/tmp/clawsup-docs-test", "SECONDS": "5", "LINES": "5",
    "N": "3", "KIND": "state", "DURATION": "10m", "TEXT": "why", "SIGNAL": "HUP",
    "ENDPOINT": "ipc:///tmp/clawsup-docs-test.sock", "MODEL": "anthropic/claude-opus-4-5",
    "ZONE": "Europe/Berlin", "FILE": "clawsup.toml",
}
_SEPARATOR = re.compile(r"\s(?:\|\||&&|\||;)\s|\$\(")
_PROGRAM = re.compile(r"^(?:\S*/bin/)?(clawsupctl|clawsup)$")


# -- extracting the commands -----------------------------------------------------------


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, program, argv) for every clawsup / clawsupctl command line a document
    shows, its synopsis notation expanded: ``[X]`` included, ``a|b`` and ``[a | b]``
    one command each, ``x, y`` (the README's list of subcommands) one each."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        lines = [line for block in code_blocks(text) for line in _joined(block)]
        lines += re.findall(r"`((?:clawsupctl|clawsup) [^`]*)`", text)
        for line in lines:
            for program, words in _commands_in(line):
                for argv in _expanded(words):
                    found.append((f"{document.name}: {line.strip()}", program, argv))
    return found


def _joined(block: str) -> list[str]:
    """The block's lines, a synopsis's indented continuation lines each read as a
    command of the line above (``clawsupctl [OPTIONS] COMMAND`` then ``  status ...``)."""
    lines: list[str] = []
    head = ""
    for line in block.splitlines():
        if head and line.startswith("  ") and not line.lstrip().startswith("-"):
            lines += [f"{head} {part}" for part in re.split(r"\s{2,}", line.strip())]
            continue
        head = ""
        if re.match(r"^(clawsupctl|clawsup) .*COMMAND$", line.strip()):
            head = line.strip().removesuffix("COMMAND").strip()
            continue
        lines.append(line)
    return lines


def _segments(line: str) -> list[str]:
    """The line cut at shell separators, but not at a synopsis's ``[a | b]``."""
    segments, start = [], 0
    for match in _SEPARATOR.finditer(line):
        if line.count("[", 0, match.start()) == line.count("]", 0, match.start()):
            segments.append(line[start:match.start()])
            start = match.end()
    return [*segments, line[start:]]


def _commands_in(line: str) -> Iterator[tuple[str, list[str]]]:
    for segment in _segments(line):
        try:
            words = shlex.split(segment, comments=True)
        except ValueError:  # a quote opened in one segment and closed in another
            continue
        starts = [i for i, word in enumerate(words) if _PROGRAM.match(word)]
        if not starts or words[:1] == ["eval"]:
            continue
        program = _PROGRAM.match(words[starts[0]]).group(1)  # type: ignore[union-attr]
        rest = " ".join(words[starts[0] + 1:]).rstrip(")")
        for part in rest.split(", "):
            yield program, part.split()


def _expanded(words: list[str]) -> list[list[str]]:
    """``[--no-wait | --when-idle [--max-wait DURATION]] NAME`` -> one argv per choice,
    placeholders replaced; ``a|b`` likewise."""
    text = " ".join(words).replace("[", " [ ").replace("]", " ] ").replace(" | ", " || ")
    variants = _choices(text.split())
    return [[PLACEHOLDERS.get(word, word) for word in variant if word != "..."]
            for variant in variants]


def _choices(tokens: list[str]) -> list[list[str]]:
    """Every reading of a token list: a group ``[ a || b ]`` as each of its alternatives
    (and never left out: leaving out needs no test), a word ``x|y`` as each word."""
    readings: list[list[list[str]]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "[":
            depth, end = 1, index + 1
            while depth:
                depth += {"[": 1, "]": -1}.get(tokens[end], 0)
                end += 1
            inner = tokens[index + 1:end - 1]
            alternatives, current, level = [], [], 0
            for word in inner:
                level += {"[": 1, "]": -1}.get(word, 0)
                if word == "||" and level == 0:
                    alternatives.append(current)
                    current = []
                else:
                    current.append(word)
            alternatives.append(current)
            readings.append([c for alt in alternatives for c in _choices(alt)])
            index = end
        else:
            readings.append([[word] for word in token.split("|")] if "|" in token[1:-1]
                            else [[token]])
            index += 1
    longest = max((len(options) for options in readings), default=1)
    # Each choice once, the others at their first: enough to try every option shown.
    return [
        list(itertools.chain.from_iterable(options[min(n, len(options) - 1)]
                                           for options in readings))
        for n in range(longest)
    ]


def parse(program: str, argv: list[str]) -> None:
    """Parse ``argv`` as the CLI does, without running it (UsageError if it refuses).
    Prose names an option without its value (`clawsupctl events --kind`): then that
    option must exist."""
    parser = CLIS[program]()
    try:
        parser.parse_args(list(argv))
    except UsageError as error:
        if not (argv[-1].startswith("-") and "expected one argument" in str(error)):
            raise
        commands = next(action for action in parser._actions
                        if isinstance(action, argparse._SubParsersAction))
        command = commands.choices.get(argv[0], parser)
        options = {o for action in command._actions for o in action.option_strings}
        assert argv[-1] in options, f"{argv[-1]} is no option of {program} {argv[0]}"


COMMANDS = documented_commands()


def test_the_documents_show_commands_of_both_programs() -> None:
    """The extraction finds what is there: a broken pattern must not pass by finding none."""
    shown = {(program, argv[0]) for _, program, argv in COMMANDS if argv}
    assert {("clawsup", "check"), ("clawsup", "demo"), ("clawsupctl", "restart"),
            ("clawsupctl", "logs"), ("clawsupctl", "keygen"), ("clawsupctl", "signal"),
            ("clawsupctl", "version")} <= shown, shown


@pytest.mark.parametrize(("where", "program", "argv"), COMMANDS,
                         ids=[" ".join([p, *a]) for _, p, a in COMMANDS])
def test_every_documented_command_parses(where: str, program: str, argv: list[str]) -> None:
    try:
        parse(program, argv)
    except SystemExit as done:  # --help, --version
        if done.code not in (None, 0):
            pytest.fail(f"{where}: exit {done.code}")
    except UsageError as error:
        pytest.fail(f"{where}: `{program} {' '.join(argv)}`: {error}")


def test_parse_refuses_what_the_cli_refuses() -> None:
    """The check above can fail: an unknown option or subcommand does not parse."""
    for argv in (["restart", "--no-such-option"], ["no-such-command"], ["logs", "-n", "x"]):
        with pytest.raises(UsageError):
            parse("clawsupctl", argv)


# -- the protocol document -------------------------------------------------------------


def test_protocol_md_has_a_row_for_every_event_kind_and_no_other() -> None:
    text = PROTOCOL.read_text()
    section = text[text.index("## Events"):text.index("## Security")]
    rows = re.findall(r"^\| `([a-z_]+)` \|.*\|$", section, re.M)
    assert sorted(rows) == sorted(kind.value for kind in EventKind)
    assert len(rows) == len(set(rows))


def test_protocol_md_shows_every_request() -> None:
    text = PROTOCOL.read_text()
    tags = {msgspec.inspect.type_info(kind).tag for kind in Request.__args__}  # type: ignore[attr-defined]
    assert len(tags) == 13
    shown = set(re.findall(r'"cmd": "([a-z_]+)"', "\n".join(code_blocks(text))))
    assert tags <= shown, sorted(tags - shown)
    for tag in tags:
        assert re.search(rf"^###.*\b{tag}\b", text, re.M), f"no section for {tag}"


# -- what the documented commands print, against a real supervisor ---------------------

CTL = [sys.executable, "-m", "clawsup.client.ctl"]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[str]]:
    """A real clawsup with one program; the clawsupctl argv that reaches it."""
    config = write_config(tmp_path, f"""
[programs.gw]
command = {python_program("import time; print('up', flush=True); time.sleep(600)")}
main = true
start_seconds = "100ms"
stop_timeout = "2s"
""")
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    try:
        clawsup.wait_log("gw | up")
        yield [*CTL, "--socket", f"ipc://{tmp_path}/run/control.sock"]
    finally:
        clawsup.stop()


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_replies_say_a_thing_once(supervised: list[str]) -> None:
    stopped = run([*supervised, "stop", "gw"])
    assert stopped.stdout == "gw: STOPPED\n", stopped
    started = run([*supervised, "start", "gw"])
    assert re.fullmatch(r"gw: RUNNING \(pid \d+\)\n", started.stdout), started
    restarted = run([*supervised, "restart", "gw"])
    assert re.fullmatch(r"gw: RUNNING \(pid \d+\)\n", restarted.stdout), restarted
    assert restarted.stdout != started.stdout, "a new pid"
    # A message that adds something is still printed.
    signalled = run([*supervised, "signal", "WINCH", "gw"])
    assert signalled.stdout.startswith("gw: RUNNING (pid ")
    assert "sent SIGWINCH" in signalled.stdout


# Read-only, quick commands from the documents, run for real.
CHEAP = {"status", "health", "incidents", "logs", "version"}


def test_the_documented_read_only_commands_run_against_a_supervisor(
    supervised: list[str],
) -> None:
    tried = set()
    for where, program, argv in COMMANDS:
        if program != "clawsupctl" or not argv or argv[0] not in CHEAP or "-f" in argv:
            continue
        # The documents' program is the shipped config's gateway; here it is gw.
        result = run([*supervised, *("gw" if word == PLACEHOLDERS["NAME"] else word
                                     for word in argv)])
        assert result.returncode == 0, (where, result)
        tried.add(argv[0])
    assert tried == CHEAP
