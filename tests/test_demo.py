"""``clawsup demo``: the embedded demo really supervises the demo gateway and recovers it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clawsup.demo.scenarios import SCENARIOS

ALL = [scenario.name for scenario in SCENARIOS]
ROW = re.compile(r"^(?P<name>[a-z-]+)\s+\|.*\|\s*(?P<recovery>[\d.]+s|-)\s+\|\s*(?P<ok>yes|NO)$")


def clawsup_demo(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawsup", "demo", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def summary_rows(stdout: str) -> dict[str, str]:
    """scenario -> "yes"/"NO", from the summary table."""
    return {m["name"]: m["ok"] for line in stdout.splitlines() if (m := ROW.match(line))}


def demo_dir(stdout: str) -> Path:
    match = re.search(r"^clawsup demo in (\S+):", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def test_full_demo_recovers_from_every_scenario_within_a_minute() -> None:
    started = time.monotonic()
    result = clawsup_demo(timeout=60)
    elapsed = time.monotonic() - started
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert summary_rows(result.stdout) == dict.fromkeys(ALL, "yes"), report
    assert result.stdout.count("RECOVERED in ") == len(ALL), report
    assert "NOT RECOVERED" not in result.stdout, report
    assert f"{len(ALL)}/{len(ALL)} recovered" in result.stdout, report
    assert re.search(r"gateway is hung \(state: D for 2\.\ds\), restarting", result.stdout), report
    assert elapsed < 60, f"took {elapsed:.1f}s"
    assert not demo_dir(result.stdout).exists(), "the temp dir is removed without --keep"


def test_chosen_scenarios_play_alone_and_keep_leaves_the_directory() -> None:
    result = clawsup_demo("--scenario", "orphan-lock,gateway-death", "--keep", timeout=40)
    report = result.stdout + result.stderr
    root = demo_dir(result.stdout)
    try:
        assert result.returncode == 0, report
        assert summary_rows(result.stdout) == {"orphan-lock": "yes", "gateway-death": "yes"}, report
        assert "BREAK: " in result.stdout
        assert "CLAWSUP: " in result.stdout
        assert re.search(r"^scenario\s+\| broke\s+\| clawsup did", result.stdout, re.MULTILINE)
        assert (root / "clawsup.log").is_file()
        assert (root / "clawsup.toml").is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_unknown_scenario_is_a_usage_error() -> None:
    result = clawsup_demo("--scenario", "nope", timeout=20)
    assert result.returncode == 2
    assert "unknown scenario 'nope'" in result.stderr
    assert "orphan-lock" in result.stderr  # it says what the choices are
    assert "clawsup demo in" not in result.stdout  # nothing was started


def test_list_names_every_scenario() -> None:
    result = clawsup_demo("--list", timeout=20)
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ALL
