"""The message_timeout in force: the gateway's own turn timeout plus a margin, unless set.

The gateway ends a turn itself after agents.defaults.timeoutSeconds (600 s when absent);
clawsup must act only after that, so the two never race (issue 10 item 7).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.config import GatewayConfigFile, JanitorConfig
from clawsup.supervisor.janitor import Janitor
from clawsup.supervisor.message_timeout import (
    GATEWAY_TURN_TIMEOUT,
    MARGIN,
    MessageTimeoutWatch,
    resolve,
)
from clawsup.units import Duration
from tests.util import Clawsup, python_program, write_config

DEFAULT = GATEWAY_TURN_TIMEOUT + MARGIN


def gateway_config(tmp_path: Path, text: str | None) -> GatewayConfigFile:
    path = tmp_path / "clawdbot.json"
    if text is not None:
        # As the gateway and `clawdbot config set` write it: a temp file renamed over.
        temp = tmp_path / "clawdbot.json.tmp"
        temp.write_text(text)
        os.replace(temp, path)
    return GatewayConfigFile(path=str(path))


def with_turn_timeout(value: object) -> str:
    return json.dumps({"gateway": {"mode": "local"},
                       "agents": {"defaults": {"timeoutSeconds": value}}})


# -- which value, from where ----------------------------------------------------------------


def test_absent_key_is_the_gateway_default_plus_the_margin(tmp_path: Path) -> None:
    in_force = resolve(JanitorConfig(), gateway_config(tmp_path, '{"gateway": {}}'))
    assert in_force.seconds == DEFAULT == 660.0
    assert in_force.problem is None
    assert "gateway default turn timeout 600s + 60s margin" in in_force.source


def test_absent_gateway_config_is_the_default(tmp_path: Path) -> None:
    in_force = resolve(JanitorConfig(), gateway_config(tmp_path, None))
    assert in_force.seconds == DEFAULT
    assert in_force.problem is None
    assert "does not exist" in in_force.source


def test_set_key_is_that_plus_the_margin(tmp_path: Path) -> None:
    in_force = resolve(JanitorConfig(), gateway_config(tmp_path, with_turn_timeout(30)))
    assert in_force.seconds == 90.0
    assert in_force.describe() == (
        "message_timeout: 90s (gateway agents.defaults.timeoutSeconds 30s + 60s margin)"
    )


def test_the_key_is_read_from_json5_too(tmp_path: Path) -> None:
    text = "// hand-written\n{agents: {defaults: {timeoutSeconds: 120,},},}\n"
    assert resolve(JanitorConfig(), gateway_config(tmp_path, text)).seconds == 180.0


def test_fractional_seconds_are_read_as_the_gateway_does(tmp_path: Path) -> None:
    # The gateway floors the value and never goes below one second.
    assert resolve(JanitorConfig(), gateway_config(tmp_path, with_turn_timeout(30.9))).seconds == 90
    assert resolve(JanitorConfig(), gateway_config(tmp_path, with_turn_timeout(0.2))).seconds == 61


def test_an_explicit_janitor_value_wins(tmp_path: Path) -> None:
    janitor = JanitorConfig(message_timeout=Duration(45.0))
    in_force = resolve(janitor, gateway_config(tmp_path, with_turn_timeout(30)))
    assert in_force.seconds == 45.0
    assert in_force.source == "[janitor] message_timeout"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{agents: {defaults: ", "is not valid JSON5"),
        (with_turn_timeout("ten minutes"), "is 'ten minutes', not a number of seconds"),
        (with_turn_timeout(True), "is True, not a number of seconds"),
        ("[1, 2]", "must hold an object"),
    ],
)
def test_an_unusable_gateway_config_is_the_default_with_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    in_force = resolve(JanitorConfig(), gateway_config(tmp_path, text))
    assert in_force.seconds == DEFAULT
    assert in_force.problem is not None
    assert problem in in_force.problem
    assert str(tmp_path / "clawdbot.json") in in_force.problem


def test_an_unreadable_gateway_config_is_the_default(tmp_path: Path) -> None:
    gateway = gateway_config(tmp_path, with_turn_timeout(30))
    (tmp_path / "clawdbot.json").unlink()
    (tmp_path / "clawdbot.json").mkdir()  # not a file: cannot be read
    in_force = resolve(JanitorConfig(), gateway)
    assert in_force.seconds == DEFAULT
    assert in_force.problem is not None


# -- read again when the gateway config changes ---------------------------------------------


def test_the_watch_reads_again_only_when_the_file_changed(tmp_path: Path) -> None:
    watch = MessageTimeoutWatch()
    gateway = gateway_config(tmp_path, with_turn_timeout(30))
    first = watch.refresh(JanitorConfig(), gateway)
    assert first is not None
    assert first.seconds == 90
    assert watch.refresh(JanitorConfig(), gateway) is None
    gateway_config(tmp_path, with_turn_timeout(300))
    changed = watch.refresh(JanitorConfig(), gateway)
    assert changed is not None
    assert changed.seconds == 360
    assert watch.current == changed
    # A rewrite with the same value is no change.
    gateway_config(tmp_path, with_turn_timeout(300))
    assert watch.refresh(JanitorConfig(), gateway) is None


def test_a_janitor_without_an_explicit_value_uses_the_default() -> None:
    janitor = Janitor(JanitorConfig(sessions=[]), use_inotify=False)
    try:
        assert janitor.message_timeout == DEFAULT
    finally:
        janitor.close()


# -- what clawsup check and clawsup run say --------------------------------------------------


def _config(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir(exist_ok=True)
    body = (f"[programs.gw]\ncommand = {python_program('import time; time.sleep(600)')}\n"
            "main = true\n")
    return write_config(tmp_path, body)


def test_check_names_the_value_in_force_and_where_it_came_from(tmp_path: Path) -> None:
    config = _config(tmp_path)
    gateway_config(tmp_path / "home", with_turn_timeout(30))
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert ("message_timeout: 90s (gateway agents.defaults.timeoutSeconds 30s + 60s margin)"
            in result.stdout)


def test_check_names_an_explicit_value(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("[janitor]\n",
                                                 '[janitor]\nmessage_timeout = "15m"\n'))
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "message_timeout: 900s ([janitor] message_timeout)" in result.stdout


@pytest.fixture
def clawsup_run(tmp_path: Path) -> Iterator[Clawsup]:
    config = _config(tmp_path)
    gateway_config(tmp_path / "home", "{agents: oops")
    instance = Clawsup(config, tmp_path / "clawsup.log")
    yield instance
    instance.stop()


def test_run_logs_the_value_and_reads_it_again_on_reload(
    tmp_path: Path, clawsup_run: Clawsup
) -> None:
    # Malformed at start: the default, with a warning that says why.
    log = clawsup_run.wait_log("message_timeout: 660s")
    line = next(line for line in log.splitlines() if "message_timeout: 660s" in line)
    assert "WARNING" in line
    assert "is not valid JSON5" in line
    assert str(tmp_path / "home" / "clawdbot.json") in line
    # The gateway's config is fixed; a reload reads it again.
    gateway_config(tmp_path / "home", with_turn_timeout(600))
    clawsup_run.signal(signal.SIGHUP)
    clawsup_run.wait_log(
        "message_timeout: 660s (gateway agents.defaults.timeoutSeconds 600s + 60s margin)"
    )


def test_run_reads_it_again_when_the_gateway_config_changes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    # Read again before every sweep: at idle (no lock to judge) a full pass is the only
    # sweep, so it is made frequent here.
    config.write_text(config.read_text().replace(
        "[janitor]\n", '[janitor]\ninterval = "200ms"\nfull_pass_every = "1s"\n'))
    gateway_config(tmp_path / "home", with_turn_timeout(600))
    clawsup = Clawsup(config, tmp_path / "clawsup.log")
    try:
        clawsup.wait_log("message_timeout: 660s (gateway agents.defaults.timeoutSeconds 600s")
        gateway_config(tmp_path / "home", with_turn_timeout(30))
        clawsup.wait_log("message_timeout: 90s (gateway agents.defaults.timeoutSeconds 30s")
    finally:
        clawsup.stop()
