"""``clawsup demo``: the embedded demo really supervises the demo gateway and recovers it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from clawsup.demo.scenarios import SCENARIOS
from tests.util import wait_until

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


def _gateway_pid(output: Path) -> int | None:
    match = re.search(r"gateway RUNNING as pid (\d+)", output.read_text())
    return int(match.group(1)) if match else None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_demo_stopped_by_a_signal_leaves_no_supervisor_or_gateway(
    tmp_path: Path, signum: signal.Signals
) -> None:
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "clawsup", "demo"], stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        gateway_pid = wait_until(lambda: _gateway_pid(output), 30, what="the demo's gateway")
        # Everything the demo started, clawsup (in a session of its own) and below it.
        tree = psutil.Process(demo.pid).children(recursive=True)
        assert gateway_pid in {process.pid for process in tree}, tree
        demo.send_signal(signum)
        assert demo.wait(30) == 128 + signum, output.read_text()
        wait_until(lambda: not any(_alive(process) for process in tree), 10,
                   what=f"the demo's processes gone: {[p for p in tree if _alive(p)]}")
        assert f"stopped by {signum.name}" in output.read_text()
        assert not demo_dir(output.read_text()).exists(), "the temp dir is removed"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_prints_one_size_for_the_archived_session() -> None:
    result = clawsup_demo("--scenario", "oversized-session", timeout=40)
    assert result.returncode == 0, result.stdout + result.stderr
    about_the_file = [line for line in result.stdout.splitlines()
                      if "Archiving large session" in line or "grew to" in line
                      or "grown to" in line]
    assert len(about_the_file) == 3, result.stdout
    sizes = {re.search(r"(?:grew to|grown to|\() ?(\d[\d.]*[KMG]?B)\b", line).group(1)  # type: ignore[union-attr]
             for line in about_the_file}
    assert len(sizes) == 1, about_the_file
    assert "bytes" not in result.stdout
