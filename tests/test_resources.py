"""Resource limits and readings (DESIGN.md §8 "Resources").

The judgement (resources.py) with made-up samples on a fake timeline; the readings
(usage.py) against psutil on real process trees; and real clawsups restarting real
programs that allocate or spin past their limits, showing the readings in status,
``status --json``, the table and the metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from clawsup.client import Client
from clawsup.protocol import ProgramStatus
from clawsup.supervisor import procinfo
from clawsup.supervisor.config import ConfigError, load_config
from clawsup.supervisor.resources import (
    NOT_OVER,
    RSS_SAMPLES,
    Judgement,
    Limits,
    Usage,
    Verdict,
    judge,
)
from clawsup.supervisor.sampler import TREE_SCAN_EVERY, USAGE_EVERY, Sampler
from clawsup.supervisor.tree import Trees
from clawsup.supervisor.usage import MAX_KEPT, TreeUsage
from clawsup.units import parse_size
from tests.test_sampler import LoopThread
from tests.util import REPO, Clawsup, python_program, wait_until, write_config

MiB = 1 << 20
SAMPLE = 0.02  # the sampler's interval where a Sampler is driven directly

# -- the judgement ------------------------------------------------------------------------


def _feed(limits: Limits, samples: list[Usage], *, running: bool = True,
          judgement: Judgement = NOT_OVER) -> list[Verdict]:
    verdicts = []
    for usage in samples:
        judgement, verdict = judge(judgement, usage, limits, running=running)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def _cpu(percents: list[float], every: float = 5.0, pid: int = 10) -> list[Usage]:
    """Samples ``every`` seconds apart, the first one without a CPU reading."""
    samples = [Usage(pid=pid, at=0.0, rss=MiB)]
    for n, percent in enumerate(percents, start=1):
        samples.append(Usage(pid=pid, at=n * every, rss=MiB, cpu_percent=percent,
                             since=(n - 1) * every))
    return samples


def test_cpu_over_max_cpu_for_the_whole_window_restarts() -> None:
    limits = Limits(max_cpu=150.0, window=60.0)
    # Over from t=0 (the start of the first interval over): the verdict comes at t=60.
    verdicts = _feed(limits, _cpu([180.0] * 11))
    assert verdicts == []
    [verdict] = _feed(limits, _cpu([180.0] * 12))
    assert (verdict.resource, verdict.value, verdict.limit, verdict.seconds) == (
        "cpu", 180.0, 150.0, 60.0)


def test_cpu_under_max_cpu_never_restarts() -> None:
    assert _feed(Limits(max_cpu=150.0, window=10.0), _cpu([149.9] * 100)) == []


def test_one_sample_under_max_cpu_starts_the_window_again() -> None:
    limits = Limits(max_cpu=150.0, window=30.0)
    dip = [200.0] * 5 + [100.0] + [200.0] * 5  # 25 s over, a dip, 25 s over
    assert _feed(limits, _cpu(dip)) == []
    assert len(_feed(limits, _cpu([*dip, 200.0]))) == 1  # now 30 s over since the dip


def test_one_rss_spike_is_not_a_restart() -> None:
    limits = Limits(max_rss=100 * MiB)
    spiky = [Usage(pid=10, at=n, rss=(300 if n % 2 else 50) * MiB) for n in range(20)]
    assert _feed(limits, spiky) == []


def test_rss_over_max_rss_in_samples_in_a_row_restarts() -> None:
    limits = Limits(max_rss=100 * MiB)
    samples = [Usage(pid=10, at=float(n), rss=120 * MiB) for n in range(RSS_SAMPLES)]
    [verdict] = _feed(limits, samples)
    assert (verdict.resource, verdict.value, verdict.samples, verdict.seconds) == (
        "rss", 120 * MiB, RSS_SAMPLES, RSS_SAMPLES - 1.0)
    assert "max_rss 100MB" in verdict.message("gw")


def test_nothing_is_judged_unless_running() -> None:
    limits = Limits(max_rss=MiB, max_cpu=1.0, window=1.0)
    hungry = [Usage(pid=10, at=float(n), rss=9 * MiB, cpu_percent=400.0, since=n - 1.0)
              for n in range(10)]
    assert _feed(limits, hungry, running=False) == []


def test_a_new_run_is_judged_from_scratch() -> None:
    limits = Limits(max_rss=100 * MiB)
    judgement, verdict = judge(NOT_OVER, Usage(pid=10, at=0.0, rss=200 * MiB), limits,
                               running=True)
    assert verdict is None
    # The next sample over is of another process (a restart in between): one in a row.
    _, verdict = judge(judgement, Usage(pid=11, at=1.0, rss=200 * MiB), limits, running=True)
    assert verdict is None


def test_no_limits_never_restart() -> None:
    hungry = [Usage(pid=10, at=float(n), rss=1 << 40, cpu_percent=1e4, since=n - 1.0)
              for n in range(100)]
    assert _feed(Limits(), hungry) == []


# -- the config ---------------------------------------------------------------------------


def _load(tmp_path: Path, resources: str) -> None:
    config = tmp_path / "clawsup.toml"
    config.write_text('[programs.gw]\ncommand = ["true"]\nmain = true\n'
                      f"[programs.gw.resources]\n{resources}\n")
    load_config(config)


def test_resources_config_takes_sizes_percents_and_durations(tmp_path: Path) -> None:
    config = tmp_path / "clawsup.toml"
    config.write_text('[programs.gw]\ncommand = ["true"]\nmain = true\n'
                      '[programs.gw.resources]\nmax_rss = "1.5GiB"\nmax_cpu = 150\n'
                      'window = "2m"\n')
    limits = load_config(config).programs["gw"].resources.limits
    assert limits == Limits(max_rss=int(1.5 * (1 << 30)), max_cpu=150.0, window=120.0)
    # Left out: nothing limited, a window of 60 s.
    config.write_text('[programs.gw]\ncommand = ["true"]\nmain = true\n')
    assert load_config(config).programs["gw"].resources.limits == Limits(window=60.0)


@pytest.mark.parametrize(("resources", "expected"), [
    ('max_rss = "lots"', "programs.gw.resources.max_rss: expected a size"),
    ("max_rss = -1", "programs.gw.resources.max_rss: a size cannot be negative"),
    ("max_rss = 0", "programs.gw.resources: max_rss must be above 0"),
    ("max_cpu = -5", "programs.gw.resources: max_cpu must be a percentage"),
    ("max_cpu = 0", "programs.gw.resources: max_cpu must be a percentage"),
    ("max_cpu = nan", "programs.gw.resources: max_cpu must be a percentage"),
    ("max_cpu = inf", "programs.gw.resources: max_cpu must be a percentage"),
    ('max_cpu = "150%"', "programs.gw.resources.max_cpu: expected float"),
    ("max_cpu = true", "programs.gw.resources.max_cpu: expected float"),
    ('window = "soon"', "programs.gw.resources.window: expected a duration"),
    ('window = "0s"', "programs.gw.resources: window must be a duration above 0"),
    ("max_memory = 5", "programs.gw.resources.max_memory: unknown key"),
])
def test_bad_resource_limits_are_config_errors_with_file_and_key(
        tmp_path: Path, resources: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, resources)
    assert str(raised.value).startswith(str(tmp_path / "clawsup.toml") + ": ")
    assert expected in str(raised.value)


# -- the readings ----------------------------------------------------------------------------

# A parent that starts a child holding ``mb`` MiB, then both sleep.
PARENT_OF_A_HOG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import sys, time\\nheld = b'x' * ({mb} << 20)\\nprint('held', flush=True)\\n"
    "while True: time.sleep(1)"], stdout=sys.stdout)
while True: time.sleep(1)
"""


def _psutil_tree_rss(pid: int) -> tuple[int, int]:
    """(the process' own RSS, its whole tree's) as psutil reads them."""
    parent = psutil.Process(pid)
    own = parent.memory_info().rss
    return own, own + sum(child.memory_info().rss for child in parent.children(recursive=True))


@pytest.fixture
def parent_of_a_hog() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_HOG.format(mb=40)],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    yield process
    for child in psutil.Process(process.pid).children(recursive=True):
        child.kill()
    process.kill()
    process.wait()


def _reader(trees: Trees, pid: int) -> TreeUsage:
    return TreeUsage(procinfo.StatReader(pid), lambda: trees.snapshot("gw"))


def test_tree_rss_is_psutils_sum_over_the_tree(parent_of_a_hog: subprocess.Popen[str]) -> None:
    pid = parent_of_a_hog.pid
    trees = Trees(lambda delay, callback: None)  # type: ignore[arg-type, return-value]
    trees.started("gw", pid)  # registry mode: what the walk and the registry know
    usage = _reader(trees, pid).read(procinfo.descendants(pid), time.monotonic())
    assert usage is not None
    own, total = _psutil_tree_rss(pid)
    assert own + 40 * MiB < total
    assert usage.rss == pytest.approx(total, rel=0.02)
    assert usage.cpu_percent is None  # the first reading has nothing to compare with


def test_a_large_tree_is_read_whole_without_keeping_a_descriptor_each() -> None:
    children = MAX_KEPT + 36
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        for _ in range({children}):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        print("forked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "forked"
        trees = Trees(lambda delay, callback: None)  # type: ignore[arg-type, return-value]
        trees.started("gw", parent.pid)
        reader = _reader(trees, parent.pid)
        descriptors = len(os.listdir("/proc/self/fd"))
        usage = reader.read(procinfo.descendants(parent.pid), time.monotonic())
        assert usage is not None
        # Besides the program's own stat, which its StatReader (the sampler's) keeps.
        assert len(os.listdir("/proc/self/fd")) - descriptors == MAX_KEPT + 1
        # All of them: the 36 past MAX_KEPT would be a third of it. (Forked children
        # still fault pages in as they settle: the two reads are moments apart.)
        assert usage.rss == pytest.approx(_psutil_tree_rss(parent.pid)[1], rel=0.1)
        reader.close()
        assert len(os.listdir("/proc/self/fd")) == descriptors + 1
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_tree_cpu_counts_a_child_that_spins() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        while True: time.sleep(1)
        """)], start_new_session=True)
    try:
        trees = Trees(lambda delay, callback: None)  # type: ignore[arg-type, return-value]
        trees.started("gw", spinner.pid)
        reader = _reader(trees, spinner.pid)
        wait_until(lambda: procinfo.descendants(spinner.pid), what="the spinning child")
        reader.read(procinfo.descendants(spinner.pid), time.monotonic())
        time.sleep(1.0)  # the interval the CPU reading is an average over
        usage = reader.read(procinfo.descendants(spinner.pid), time.monotonic())
        assert usage is not None
        assert usage.cpu_percent is not None
        # One core's worth at most; on a busy 2-core machine, well above nothing.
        assert 20.0 < usage.cpu_percent < 110.0
    finally:
        for child in psutil.Process(spinner.pid).children(recursive=True):
            child.kill()
        spinner.kill()
        spinner.wait()


def test_tree_cpu_counts_short_lived_children_through_their_parent() -> None:
    # Children that each spin 50 ms and exit: a reading a second apart sees one at most.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys
        spin = "import time\\nend = time.process_time() + 0.05\\nwhile time.process_time() < end: pass"
        while True: subprocess.run([sys.executable, "-S", "-c", spin])
        """)], start_new_session=True)
    try:
        trees = Trees(lambda delay, callback: None)  # type: ignore[arg-type, return-value]
        trees.started("gw", parent.pid)
        reader = _reader(trees, parent.pid)
        wait_until(lambda: procinfo.descendants(parent.pid), what="the first child")

        def tree_seconds() -> float:
            # psutil's view: the parent's own time and its reaped children's, plus the
            # live child's.
            process = psutil.Process(parent.pid)
            total = sum(process.cpu_times()[:4])
            for child in process.children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += sum(child.cpu_times()[:2])
            return total

        reader.read(procinfo.descendants(parent.pid), time.monotonic())
        before, began = tree_seconds(), time.monotonic()
        time.sleep(2.0)
        usage = reader.read(procinfo.descendants(parent.pid), time.monotonic())
        expected = 100 * (tree_seconds() - before) / (time.monotonic() - began)
        assert usage is not None
        assert usage.cpu_percent is not None
        assert expected > 20  # the children did run
        assert usage.cpu_percent == pytest.approx(expected, abs=15)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


# -- a real clawsup ---------------------------------------------------------------------------

FAST = """
start_seconds = "100ms"
stop_timeout = "2s"
backoff = { initial = "100ms", factor = 1.0, max = "100ms", reset_after = "3s", jitter = 0.0 }
[programs.gw.hang]
sample_interval = "100ms"
"""

# Holds 96 MiB the first time only: restarted, it stays small (test_every_event uses it).
ALLOCATES = """
import os, time
marker = {marker!r}
if not os.path.exists(marker):
    open(marker, "w").close()
    held = b"x" * (96 << 20)
while True: time.sleep(1)
"""

SPINS = "while True: pass\n"


@pytest.fixture
def run_clawsup(tmp_path: Path) -> Iterator[Callable[..., tuple[Clawsup, Client]]]:
    started: list[Clawsup] = []

    def start(code: str, extra: str = "", supervisor: str = "") -> tuple[Clawsup, Client]:
        body = (f"[programs.gw]\ncommand = {python_program(textwrap.dedent(code))}\n"
                f"main = true\n{FAST}{extra}")
        config = write_config(tmp_path, body, supervisor=supervisor)
        clawsup = Clawsup(config, tmp_path / "clawsup.log")
        started.append(clawsup)
        wait_until((tmp_path / "run" / "control.sock").exists, 20)
        return clawsup, Client(f"ipc://{tmp_path}/run/control.sock", timeout=20)

    yield start
    for clawsup in started:
        clawsup.stop()


def _gw(client: Client) -> ProgramStatus:
    return client.status().programs[0]


def _incidents(client: Client, kind: str) -> list[dict[str, object]]:
    return [i.data for i in client.incidents(limit=100).latest if i.kind == kind]


def test_a_program_past_max_rss_is_restarted_with_a_resource_limit_event(
        run_clawsup: Callable[..., tuple[Clawsup, Client]], tmp_path: Path) -> None:
    _, client = run_clawsup(ALLOCATES.format(marker=str(tmp_path / "allocated")),
                            '[programs.gw.resources]\nmax_rss = "64MB"\n')
    first = wait_until(lambda: _gw(client).pid, 20)
    [event] = wait_until(lambda: _incidents(client, "resource_limit"), 20,
                         what="a resource_limit incident")
    assert (event["resource"], event["limit"], event["pid"]) == ("rss", 64 * MiB, first)
    assert isinstance(event["value"], float | int)
    assert event["value"] > 64 * MiB
    # Restarted gracefully (its stop signal, not SIGKILL), counted as a restart.
    again = wait_until(lambda: _gw(client).state == "RUNNING" and _gw(client).pid != first
                       and _gw(client), 20)
    assert again.last_exit is not None
    assert again.last_exit.signal == "SIGTERM"
    assert again.last_exit.reason == "resource_limit"
    assert again.restarts == 1


def test_a_busy_loop_past_max_cpu_for_the_window_is_restarted(
        run_clawsup: Callable[..., tuple[Clawsup, Client]], tmp_path: Path) -> None:
    _, client = run_clawsup(SPINS, '[programs.gw.resources]\nmax_cpu = 10\nwindow = "1s"\n'
                            '[metrics]\nlisten = "127.0.0.1:0"\n')
    first = wait_until(lambda: _gw(client).pid, 20)
    [event, *_] = wait_until(lambda: _incidents(client, "resource_limit"), 20,
                             what="a resource_limit incident")
    assert (event["resource"], event["limit"], event["pid"]) == ("cpu", 10.0, first)
    assert isinstance(event["seconds"], float)
    assert event["seconds"] >= 1.0
    wait_until(lambda: _gw(client).restarts >= 1, 20)
    # Counted by program and resource (it spins again after the restart: maybe more).
    port = wait_until(lambda: _metrics_port(tmp_path / "clawsup.log"), 10)
    counted = wait_until(lambda: _metric(port, 'clawsup_resource_limits_total{program="gw",'
                                               'resource="cpu"}'), 10)
    assert counted >= 1.0


def test_a_busy_loop_under_max_cpu_is_not_restarted(
        run_clawsup: Callable[..., tuple[Clawsup, Client]]) -> None:
    # One core at most, under a limit of one and a half, over many windows.
    _, client = run_clawsup(SPINS, '[programs.gw.resources]\nmax_cpu = 150\nwindow = "500ms"\n')
    first = wait_until(lambda: _gw(client).cpu_percent and _gw(client), 20,
                       what="a CPU reading")
    # Eight windows of readings (one each 500 ms) in one run of the program.
    status = wait_until(lambda: (_gw(client).uptime or 0) > 4.0 and _gw(client), 20)
    assert (status.pid, status.restarts, status.state) == (first.pid, 0, "RUNNING")
    assert status.cpu_percent is not None
    assert status.cpu_percent > 10  # it did spin, under the limit
    assert _incidents(client, "resource_limit") == []


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_status_json_table_and_metrics_show_the_whole_trees_rss_and_cpu(
        run_clawsup: Callable[..., tuple[Clawsup, Client]], tmp_path: Path,
        cgroups: str) -> None:
    _, client = run_clawsup(PARENT_OF_A_HOG.format(mb=40), '[metrics]\nlisten = "127.0.0.1:0"\n',
                            supervisor=f'cgroups = "{cgroups}"')
    status = wait_until(lambda: _gw(client).cpu_percent is not None and _gw(client), 20,
                        what="an RSS and CPU reading")
    assert status.pid is not None
    assert status.rss is not None
    own, total = _psutil_tree_rss(status.pid)
    assert own < status.rss  # the child's 40 MiB are counted
    assert status.rss == pytest.approx(total, rel=0.1)

    socket = f"ipc://{tmp_path}/run/control.sock"
    # The console script users run: the fast path reads the reply without msgspec.
    ctl = [str(Path(sys.executable).parent / "clawsupctl"), "--socket", socket]
    printed = json.loads(subprocess.run([*ctl, "status", "--json"], capture_output=True,
                                        text=True, check=True, cwd=REPO).stdout)
    gw = printed["programs"][0]
    assert gw["rss"] > own
    assert isinstance(gw["cpu_percent"], float)
    header, row = subprocess.run([*ctl, "status"], capture_output=True, text=True, check=True,
                                 cwd=REPO).stdout.splitlines()[:2]
    rss_cell = row[header.index("RSS"):].split()[0]
    assert parse_size(rss_cell) > 40 * MiB  # in the one size format, whatever it is
    assert row[header.index("CPU"):].split()[0].endswith("%")

    port = wait_until(lambda: _metrics_port(tmp_path / "clawsup.log"), 10)

    def gauges() -> dict[str, float]:
        found = {name: _metric(port, name + '{program="gw"}')
                 for name in ("clawsup_program_rss_bytes", "clawsup_program_cpu_percent")}
        return {name: value for name, value in found.items() if value is not None}

    shown = wait_until(lambda: len(gauges()) == 2 and gauges(), 10, what="the gauges")
    assert shown["clawsup_program_rss_bytes"] > own

    # Stopped: no reading anywhere.
    client.stop("gw")
    stopped = _gw(client)
    assert (stopped.rss, stopped.cpu_percent) == (None, None)
    wait_until(lambda: gauges() == {}, 10, what="the gauges gone")


# The child leaves: a session of its own, re-parented to clawsup once its parent exits.
PARENT_OF_A_DETACHED_HOG = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        held = b"x" * (40 << 20)
        while True: time.sleep(1)
    os._exit(0)
os.wait()
while True: time.sleep(1)
"""


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_a_member_that_left_the_process_tree_is_still_counted(
        run_clawsup: Callable[..., tuple[Clawsup, Client]], cgroups: str) -> None:
    _, client = run_clawsup(PARENT_OF_A_DETACHED_HOG, supervisor=f'cgroups = "{cgroups}"')
    pid = wait_until(lambda: _gw(client).processes == 2 and _gw(client).pid, 20,
                     what="the program and its detached child")
    # The child is not below it any more, once the parent has reaped the intermediate
    # (for an instant a zombie of it is still its child, and counted among the two).
    wait_until(lambda: psutil.Process(pid).children() == [], 10, what="the intermediate reaped")
    own = psutil.Process(pid).memory_info().rss
    wait_until(lambda: (_gw(client).rss or 0) > own + 40 * MiB, 20,
               what="the detached child's 40 MiB counted")


def _metric(port: int, series: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith(series + " ")), None)


def _metrics_port(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if "metrics on http://" in line:
            return int(line.rsplit(":", 1)[1].split("/")[0])
    return None


def test_resources_are_read_with_hang_detection_off(
        run_clawsup: Callable[..., tuple[Clawsup, Client]]) -> None:
    _, client = run_clawsup(SPINS, "enabled = false\n[programs.gw.resources]\nmax_cpu = 10\n"
                            'window = "1s"\n')
    [event] = wait_until(lambda: _incidents(client, "resource_limit"), 20,
                         what="a resource_limit incident")
    assert event["resource"] == "cpu"


def test_limits_set_by_a_reload_apply_to_the_running_program(
        run_clawsup: Callable[..., tuple[Clawsup, Client]], tmp_path: Path) -> None:
    _, client = run_clawsup(SPINS)
    first = wait_until(lambda: _gw(client).cpu_percent and _gw(client).pid, 20,
                       what="a CPU reading")
    config = tmp_path / "clawsup.toml"
    config.write_text(config.read_text()
                      + '[programs.gw.resources]\nmax_cpu = 10\nwindow = "1s"\n')
    [change] = client.reload().changes
    assert (change.section, change.action, change.keys) == ("programs.gw", "update",
                                                            ["resources"])
    [event] = wait_until(lambda: _incidents(client, "resource_limit"), 20,
                         what="a resource_limit incident")
    assert (event["resource"], event["pid"]) == ("cpu", first)


def test_the_tree_is_read_at_every_walk_only_while_someone_looks() -> None:
    loop = LoopThread()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    trees = Trees(lambda delay, callback: None)  # type: ignore[arg-type, return-value]
    trees.started("gw", sleeper.pid)
    sampler = Sampler("gw", SAMPLE, loop.deliver, loop.loop, time.monotonic,
                      tree=lambda: trees.snapshot("gw"))
    try:
        sampler.watch(sleeper.pid)

        def readings(seconds: float, look: bool) -> int:
            seen: set[float] = set()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                usage = sampler.usage_of(sleeper.pid) if look else sampler.usage
                if usage is not None:
                    seen.add(usage.at)
                time.sleep(SAMPLE / 4)
            return len(seen)

        walk = SAMPLE * TREE_SCAN_EVERY
        # Unlooked at: every USAGE_EVERY-th walk. Looked at: every walk.
        alone = readings(6 * walk * USAGE_EVERY, look=False)
        assert 4 <= alone <= 8
        assert readings(6 * walk * USAGE_EVERY, look=True) >= 4 * USAGE_EVERY
        # Nothing over a limit: no reading for the loop to judge.
        assert [seen.usage for seen in loop.seen if seen.usage is not None] == []
    finally:
        sampler.close()
        loop.close()
        sleeper.kill()
        sleeper.wait()


def test_nothing_is_read_with_hang_detection_off_and_no_limit(
        run_clawsup: Callable[..., tuple[Clawsup, Client]]) -> None:
    _, client = run_clawsup("import time\nwhile True: time.sleep(1)\n", "enabled = false\n")
    # Up for ten sampling intervals, had there been a sampler.
    status = wait_until(lambda: (_gw(client).uptime or 0) > 1.0 and _gw(client), 20)
    assert (status.state, status.rss, status.cpu_percent) == ("RUNNING", None, None)
