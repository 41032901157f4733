"""``clawsup run`` starts without click, and reads its command line exactly as click would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup import cli
from clawsup.entrypoint import parse_run
from tests.util import python_program, write_config

# Words a run command line is made of, including ones the fast path must leave to click.
WORDS = ["-c", "--config", "--config=a.toml", "-cb.toml", "a.toml", "b.toml", "--help",
         "-v", "--", "", "-", "check", "run", "--conf", "--config=", "-c=x", "--cfg"]


def click_reading(argv: list[str]) -> tuple[str, ...] | None:
    """The config paths click parses from ``clawsup run ...``; None if it refuses."""
    command = cli.main.get_command(click.Context(cli.main), "run")
    assert command is not None
    try:
        context = command.make_context("run", list(argv[1:]))
    except (click.UsageError, click.exceptions.Exit):
        return None
    return tuple(context.params["paths"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=6))
def test_the_fast_path_reads_run_lines_as_click_does(words: list[str]):
    argv = ["run", *words]
    fast = parse_run(argv)
    if fast is not None:
        assert fast == click_reading(argv)


def test_the_entrypoint_forms_take_the_fast_path():
    assert parse_run(["run"]) == ()
    assert parse_run(["run", "-c", "/etc/clawsup/clawsup.toml"]) == ("/etc/clawsup/clawsup.toml",)
    assert parse_run(["run", "--config", "a", "-cb", "--config=c"]) == ("a", "b", "c")


def test_everything_else_is_left_to_click():
    for argv in (["check", "-c", "a"], ["run", "--help"], ["run", "-c"], ["run", "a.toml"],
                 ["run", "-c", "--help"], ["demo"], ["--version"], []):
        assert parse_run(argv) is None, argv


def test_clawsup_run_never_loads_click(tmp_path: Path):
    config = write_config(tmp_path, f"""
[programs.once]
command = {python_program("pass")}
main = true
autorestart = "never"
""")
    # The supervisor exits with its main program's status 0; atexit then reports.
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('click loaded:', 'click' in sys.modules))\n"
             f"sys.argv = ['clawsup', 'run', '-c', {str(config)!r}]\n"
             "from clawsup.entrypoint import main\n"
             "main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "click loaded: False" in done.stdout


def test_a_bad_run_line_gets_clicks_error():
    done = subprocess.run([sys.executable, "-m", "clawsup", "run", "--bogus"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "No such option '--bogus'" in done.stderr


def test_an_unusable_config_on_the_fast_path_exits_2_naming_the_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nnot_a_key = 1\n")
    done = subprocess.run([sys.executable, "-m", "clawsup", "run", "-c", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert str(bad) in done.stderr
    assert "not_a_key" in done.stderr
