"""``clawsup check`` and ``clawsup run`` report every problem of a config at once (§8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clawsup.client import Client, CommandFailed
from clawsup.supervisor.config import ConfigError, load_config
from tests.util import Clawsup, python_program, wait_until, write_config

GOOD = '[programs.gw]\ncommand = ["true"]\nmain = true\n'
SLEEP = "import time; time.sleep(600)"


def clawsup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsup", *args],
                          capture_output=True, text=True, timeout=60)


def problems_of(config: Path) -> list[str]:
    """The problem lines ``clawsup check`` prints (exit 2 asserted)."""
    result = clawsup("check", "-c", str(config))
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    prefix = f"clawsup: {config}: "
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('command = ["no-such-program-for-clawsup"]\n',
         "programs.gw.command: 'no-such-program-for-clawsup' is not an executable found on PATH"),
        ('command = ["./not-here"]\n', "programs.gw.command: './not-here' is not an executable file"),
        ('directory = "/nonexistent/clawsup-dir"\n',
         "programs.gw.directory: directory /nonexistent/clawsup-dir does not exist"),
        ('user = "no-such-user-for-clawsup"\n',
         "programs.gw.user: no user named 'no-such-user-for-clawsup' on this system"),
        ('stop_signal = "SIGNOPE"\n',
         "programs.gw.stop_signal: expected a signal name like 'SIGTERM', got 'SIGNOPE'"),
        ('autorestart = "sometimes"\n',
         "programs.gw.autorestart: invalid enum value 'sometimes'; "
         "allowed: always, on-failure, never"),
        ('forward_signals = ["SIGUSR2", "SIGHUP"]\n',
         "programs.gw.forward_signals[1]: clawsup passes on only SIGUSR1, SIGUSR2 and SIGWINCH"),
        ('exit_codes = [0, "one"]\n', "programs.gw.exit_codes[1]: expected int, got str"),
        ("[programs.gw.logs]\nfile = \"$CLAWSUP_TEST_UNSET/gw.log\"\n",
         "programs.gw.logs.file: $CLAWSUP_TEST_UNSET not set in clawsup's environment"),
    ],
)
def test_each_problem_is_named_with_its_key(tmp_path: Path, extra: str, expected: str) -> None:
    config = tmp_path / "c.toml"
    # A later key of the same table wins in TOML only once: replace the command instead.
    body = GOOD.replace('command = ["true"]\n', "") if extra.startswith("command") else GOOD
    config.write_text(body + extra)
    (problem,) = problems_of(config)
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[supervisor]\nstate_dir = "${CLAWSUP_TEST_UNSET}/state"\n', "supervisor.state_dir"),
        ('[janitor]\nsessions = ["/ok", "$CLAWSUP_TEST_UNSET/s"]\n', "janitor.sessions[1]"),
        ('[janitor]\nrestart_flag = "$CLAWSUP_TEST_UNSET/f"\n', "janitor.restart_flag"),
        ('[gateway_config]\npath = "$CLAWSUP_TEST_UNSET/c.json"\n', "gateway_config.path"),
    ],
)
def test_an_undefined_variable_in_a_path_is_a_problem(
    tmp_path: Path, section: str, expected: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(GOOD + section)
    (problem,) = problems_of(config)
    assert problem.startswith(f"{expected}: $CLAWSUP_TEST_UNSET not set"), problem


def test_a_defined_variable_in_a_path_is_fine(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(GOOD + '[supervisor]\nstate_dir = "$HOME/state"\nrun_dir = "${HOME}/run"\n')
    assert load_config(config).supervisor.state_dir == "$HOME/state"


def test_enum_problems_list_the_allowed_values(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(GOOD + '[supervisor]\nlog_level = "loud"\ncgroups = "maybe"\n'
                      '[gateway_config]\napply = "later"\n')
    assert problems_of(config) == [
        "supervisor.log_level: invalid enum value 'loud'; allowed: debug, info, warning, error",
        "supervisor.cgroups: invalid enum value 'maybe'; allowed: auto, off",
        "gateway_config.apply: invalid enum value 'later'; allowed: reload, restart",
    ]


SEVERAL = """\
bogus = 1
[supervisor]
log_level = "loud"
[programs.gw]
command = ["no-such-program-for-clawsup"]
main = true
directory = "/nonexistent/clawsup-dir"
user = "no-such-user-for-clawsup"
stop_signal = "SIGNOPE"
stop_timeout = "soon"
[programs.gw.backoff]
factor = 0.5
[programs.side]
command = ["touch", "{marker}"]
[janitor]
max_session_size = "big"
sessions = ["$CLAWSUP_TEST_UNSET/sessions"]
"""


def several(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "started"
    config = tmp_path / "several.toml"
    config.write_text(SEVERAL.format(marker=marker))
    return config, marker


EVERY_PROBLEM_OF_SEVERAL = [
    "bogus: unknown key",
    "programs.gw.command: 'no-such-program-for-clawsup' is not an executable found on PATH",
    "programs.gw.directory: directory /nonexistent/clawsup-dir does not exist",
    "programs.gw.user: no user named 'no-such-user-for-clawsup' on this system",
    "programs.gw.stop_signal: expected a signal name like 'SIGTERM', got 'SIGNOPE'",
    "programs.gw.stop_timeout: expected a duration",
    "programs.gw.backoff: backoff factor must be >= 1.0, got 0.5",
    "supervisor.log_level: invalid enum value 'loud'",
    "janitor.max_session_size: expected a size",
    "janitor.sessions[0]: $CLAWSUP_TEST_UNSET not set",
]


def test_check_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    config, _ = several(tmp_path)
    problems = problems_of(config)
    assert len(problems) == len(EVERY_PROBLEM_OF_SEVERAL), problems
    for expected in EVERY_PROBLEM_OF_SEVERAL:
        assert sum(p.startswith(expected) for p in problems) == 1, (expected, problems)


def test_run_refuses_the_same_problems_before_starting_anything(tmp_path: Path) -> None:
    config, marker = several(tmp_path)
    result = clawsup("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr == clawsup("check", "-c", str(config)).stderr
    assert not marker.exists(), "nothing may be started from a bad config"


def test_a_rule_relating_keys_is_checked_once_they_are_well_formed(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[programs.a]\ncommand = ["true"]\n[programs.b]\ncommand = ["true"]\n')
    assert problems_of(config) == ["exactly one program must have main = true, got 0"]


def test_a_value_refused_by_a_check_hides_no_rule_relating_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[programs.a]\ncommand = ["true"]\ndirectory = "/nonexistent/clawsup-dir"\n'
                      '[programs.b]\ncommand = ["true"]\nstop_signal = "SIGNOPE"\n')
    assert problems_of(config) == [
        "programs.a.directory: directory /nonexistent/clawsup-dir does not exist",
        "programs.b.stop_signal: expected a signal name like 'SIGTERM', got 'SIGNOPE'",
        "exactly one program must have main = true, got 0",
    ]


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(GOOD + "[programs.side]\nmain = false\n")
    assert problems_of(config) == ["programs.side.command: missing (required)"]


def script(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_command_is_looked_up_on_the_programs_own_path(tmp_path: Path) -> None:
    bin_dir = script(tmp_path / "bin" / "only-here").parent
    config = tmp_path / "c.toml"
    config.write_text(f'[programs.gw]\ncommand = ["only-here"]\nmain = true\n'
                      f'environment = {{ PATH = "{bin_dir}" }}\n')
    assert load_config(config).programs["gw"].command == ["only-here"]


def test_relative_command_is_looked_up_from_the_programs_directory(tmp_path: Path) -> None:
    script(tmp_path / "run.sh")
    config = tmp_path / "c.toml"
    config.write_text(f'[programs.gw]\ncommand = ["./run.sh"]\nmain = true\n'
                      f'directory = "{tmp_path}"\n')
    assert load_config(config).programs["gw"].directory == str(tmp_path)


def test_a_file_that_is_not_executable_is_not_a_command(tmp_path: Path) -> None:
    plain = script(tmp_path / "plain", 0o644)
    config = tmp_path / "c.toml"
    config.write_text(f'[programs.gw]\ncommand = ["{plain}"]\nmain = true\n')
    assert problems_of(config) == [f"programs.gw.command: '{plain}' is not an executable file"]


def test_reading_a_config_for_another_machine_skips_the_hosts_rules(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[programs.gw]\ncommand = ["no-such-program-for-clawsup"]\nmain = true\n'
                      'directory = "/nonexistent/clawsup-dir"\n'
                      'user = "no-such-user-for-clawsup"\n')
    assert load_config(config, on_this_host=False).main_program == "gw"
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert len(raised.value.problems) == 3


def test_reload_refuses_a_config_with_problems_and_keeps_the_old_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"[programs.gw]\ncommand = {python_program(SLEEP)}\n"
                                    "main = true\n")
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    try:
        wait_until((tmp_path / "run" / "control.sock").exists, 20)
        client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=20)
        pid = wait_until(lambda: next((p.pid for p in client.status().programs
                                      if p.state == "RUNNING"), None), 20, what="gw RUNNING")
        good = config.read_text()
        config.write_text(good + 'directory = "/nonexistent/clawsup-dir"\nuser = "nobody-x"\n')
        with pytest.raises(CommandFailed) as refused:
            client.reload()
        assert "programs.gw.directory: directory /nonexistent/clawsup-dir does not exist" in (
            refused.value.message)
        assert "programs.gw.user: no user named 'nobody-x'" in refused.value.message
        (program,) = client.status().programs
        assert (program.state, program.pid) == ("RUNNING", pid), "the old config is kept"
    finally:
        clawsup.stop()
