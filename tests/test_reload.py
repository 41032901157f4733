"""Reload as a plan: what changed per section, what is done, what needs a clawsup
restart; applied live (programs, janitor, alerts, metrics), shown without applying by a
dry run, and the remove-then-add-again race closed by keying on the Program object."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import json5
import msgspec
import pytest

from clawsup.client import Client, CommandFailed
from clawsup.protocol import (
    DoneReply,
    Reload,
    ReloadChange,
    ReloadReply,
    decode_request,
    encode,
)
from clawsup.supervisor.config import Config, load_config
from clawsup.supervisor.reload import plan_reload
from tests.test_every_event import Webhook
from tests.test_service import Demo, _free_port
from tests.util import Clawsup, python_program, wait_until, write_config

GW = """
[programs.gw]
command = ["sleep", "600"]
main = true
start_seconds = "100ms"
stop_timeout = "2s"
"""


def _load(tmp_path: Path, text: str, name: str) -> Config:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def _plan(tmp_path: Path, old: str, new: str) -> dict[str, ReloadChange]:
    plan = plan_reload(_load(tmp_path, GW + old, "old.toml"), _load(tmp_path, GW + new, "new.toml"))
    return {f"{c.section} {c.action}": c for c in plan.changes}


# -- the plan, a pure function of two configs ---------------------------------------------


def test_an_unchanged_config_plans_nothing(tmp_path: Path) -> None:
    assert _plan(tmp_path, "[metrics]\n", "[metrics]\n") == {}


def test_programs_added_removed_restarted_and_updated_live(tmp_path: Path) -> None:
    old = """
[programs.a]
command = ["sleep", "1"]
[programs.b]
command = ["sleep", "1"]
[programs.c]
command = ["sleep", "1"]
"""
    new = """
[programs.b]
command = ["sleep", "2"]
[programs.c]
command = ["sleep", "1"]
stop_timeout = "3s"
backoff = { initial = "1s" }
[programs.d]
command = ["sleep", "1"]
autostart = false
"""
    changes = _plan(tmp_path, old, new)
    assert set(changes) == {"programs.a remove", "programs.b restart", "programs.c update",
                            "programs.d add"}
    assert changes["programs.b restart"].keys == ["command"]
    assert changes["programs.c update"].keys == ["stop_timeout", "backoff"]
    assert "no restart" in changes["programs.c update"].detail
    assert "not started" in changes["programs.d add"].detail


def test_hang_and_liveness_changes_are_watched_anew_without_a_restart(tmp_path: Path) -> None:
    changes = _plan(tmp_path, "", """
[programs.gw.hang]
zombie_children_max = 5
[programs.gw.liveness]
tcp = "127.0.0.1:1"
""")
    assert list(changes) == ["programs.gw update"]
    assert changes["programs.gw update"].keys == ["hang", "liveness"]
    # A spawn key beside them: one restart line naming every key.
    changes = _plan(tmp_path, "", 'environment = { A = "1" }\n[programs.gw.hang]\nenabled = false\n')
    assert list(changes) == ["programs.gw restart"]
    assert changes["programs.gw restart"].keys == ["environment", "hang"]


def test_supervisor_keys_bound_at_start_need_a_restart_and_keep_their_value(
    tmp_path: Path
) -> None:
    old = _load(tmp_path, GW + '[supervisor]\nrun_dir = "/run/a"\nlog_level = "info"\n', "o.toml")
    new = _load(tmp_path, GW + '[supervisor]\nrun_dir = "/run/b"\nlog_level = "debug"\n'
                'cgroups = "off"\nexit_on_fatal = false\n', "n.toml")
    plan = plan_reload(old, new)
    assert [(c.section, c.action, c.keys) for c in plan.changes] == [
        ("supervisor", "update", ["exit_on_fatal", "log_level"]),
        ("supervisor", "needs_restart", ["run_dir", "cgroups"]),
    ]
    # What runs from now on: the new live values, the old bound ones.
    assert plan.config.supervisor.run_dir == "/run/a"
    assert plan.config.supervisor.cgroups == "auto"
    assert plan.config.supervisor.log_level == "debug"
    assert plan.config.supervisor.exit_on_fatal is False
    # Asked again, the restart is still owed; nothing else is.
    again = plan_reload(plan.config, new)
    assert [(c.action, c.keys) for c in again.changes] == [("needs_restart", ["run_dir", "cgroups"])]


def test_janitor_is_reopened_and_gateway_config_updated(tmp_path: Path) -> None:
    changes = _plan(tmp_path, "", '[janitor]\ninterval = "1s"\n[gateway_config]\napply = "restart"\n')
    assert changes["janitor reopen"].keys == ["interval"]
    assert changes["gateway_config update"].keys == ["apply"]
    assert len(changes) == 2


def test_breaker_alerts_and_metrics_started_rebuilt_restarted_and_stopped(
    tmp_path: Path
) -> None:
    alerts = '[alerts.webhook]\nurl = "http://127.0.0.1:1/{}"\n'
    breaker = '[breaker]\nfallbacks = ["m2"]\nfailures = {}\n'
    metrics = '[metrics]\nlisten = "127.0.0.1:{}"\n'
    started = _plan(tmp_path, "", alerts.format("a") + breaker.format(2) + metrics.format(1))
    assert set(started) == {"alerts start", "breaker start", "metrics start"}
    changed = _plan(tmp_path, alerts.format("a") + breaker.format(2) + metrics.format(1),
                    alerts.format("b") + breaker.format(3) + metrics.format(2))
    assert set(changed) == {"alerts rebuild", "breaker rebuild", "metrics restart"}
    assert changed["alerts rebuild"].keys == ["webhook"]
    assert changed["breaker rebuild"].keys == ["failures"]
    assert "starts over" in changed["breaker rebuild"].detail
    assert "127.0.0.1:2" in changed["metrics restart"].detail
    stopped = _plan(tmp_path, alerts.format("a") + breaker.format(2) + metrics.format(1), "")
    assert set(stopped) == {"alerts stop", "breaker stop", "metrics stop"}
    # [breaker] left alone while others change: the breaker is not in the plan (kept).
    kept = _plan(tmp_path, breaker.format(2), breaker.format(2) + metrics.format(1))
    assert set(kept) == {"metrics start"}


def test_alerts_or_metrics_need_a_restart_where_clawsup_runs_without_tls(
    tmp_path: Path
) -> None:
    old = _load(tmp_path, GW, "o.toml")
    new = _load(tmp_path, GW + '[metrics]\n[janitor]\ninterval = "1s"\n', "n.toml")
    assert [(c.section, c.action) for c in plan_reload(old, new).changes] == [
        ("janitor", "reopen"), ("metrics", "start")]
    plan = plan_reload(old, new, tls=False)
    assert [(c.section, c.action) for c in plan.changes] == [
        ("janitor", "reopen"), ("metrics", "needs_restart")]
    assert plan.config.metrics is None
    assert plan.config.janitor.interval == 1.0


def test_a_change_reads_as_one_line() -> None:
    assert ReloadChange(section="programs.gw", action="restart", keys=["command"],
                        detail="restarted if it runs").describe() == \
        "programs.gw: restart (command): restarted if it runs"
    assert ReloadChange(section="supervisor", action="needs_restart", keys=["run_dir"]
                        ).describe() == "supervisor: needs a clawsup restart (run_dir)"
    assert ReloadChange(section="metrics", action="restart", error="port taken").describe() \
        == "metrics: restart FAILED: port taken"


def test_the_plan_on_the_wire_is_read_by_old_and_new_clients_alike() -> None:
    # An old client sends a bare reload and reads the reply as a DoneReply.
    assert msgspec.json.encode(Reload()) == b'{"cmd":"reload"}'
    assert decode_request(b'{"cmd":"reload","dry_run":true}') == Reload(dry_run=True)
    reply = ReloadReply(message="config reloaded: 1 change(s)", changes=[
        ReloadChange(section="metrics", action="restart", keys=["listen"])])
    old = msgspec.json.decode(encode(reply), type=DoneReply)
    assert old.message == "config reloaded: 1 change(s)"
    # A new client reads an old supervisor's reply as a plan without changes.
    new = msgspec.json.decode(encode(DoneReply(message="config reloaded")), type=ReloadReply)
    assert (new.message, new.changes, new.dry_run) == ("config reloaded", [], False)


# -- a real clawsup ------------------------------------------------------------------------


@pytest.fixture
def clawsup_at(tmp_path: Path) -> Iterator[object]:
    started: list[Clawsup] = []

    def start(body: str) -> tuple[Clawsup, Client, Path]:
        config = write_config(tmp_path, body)
        instance = Clawsup(config, tmp_path / f"clawsup{len(started)}.log")
        started.append(instance)
        client = Client(f"ipc://{tmp_path}/run/control.sock", timeout=20)
        wait_until((tmp_path / "run" / "control.sock").exists, 20)
        return instance, client, config

    yield start
    for instance in started:
        instance.stop()


def _pids(client: Client) -> dict[str, int | None]:
    return {p.name: p.pid for p in client.status().programs}


def _running(client: Client, name: str) -> int | None:
    program = next((p for p in client.status().programs if p.name == name), None)
    return program.pid if program is not None and program.state == "RUNNING" else None


SIDE = """
[programs.side]
command = ["sleep", "600"]
start_seconds = "100ms"
stop_timeout = "2s"
"""


def test_dry_run_shows_the_plan_and_changes_nothing(clawsup_at) -> None:
    _, client, config = clawsup_at(GW + SIDE)
    side = wait_until(lambda: _running(client, "side"), 20)
    gw = _running(client, "gw")
    original = config.read_text()
    config.write_text(original.replace(GW + SIDE, GW.replace('"600"', '"601"')
                                       + '[metrics]\nlisten = "127.0.0.1:0"\n'))
    reply = client.reload(dry_run=True)
    assert reply.dry_run
    # Started with neither [alerts] nor [metrics], clawsup runs without TLS (entrypoint.py).
    assert [(c.section, c.action) for c in reply.changes] == [
        ("programs.side", "remove"), ("programs.gw", "restart"), ("metrics", "needs_restart")]
    # Nothing happened: the same processes, and a second dry run plans the same.
    assert _pids(client) == {"gw": gw, "side": side}
    assert client.reload(dry_run=True).changes == reply.changes
    applied = client.reload()
    assert not applied.dry_run
    assert applied.changes == reply.changes
    wait_until(lambda: set(_pids(client)) == {"gw"}, 20, what="side forgotten")
    wait_until(lambda: _running(client, "gw") not in (None, gw), 20, what="gw restarted")


def test_an_invalid_config_on_reload_changes_nothing_and_says_why(clawsup_at) -> None:
    _, client, config = clawsup_at(GW)
    pid = wait_until(lambda: _running(client, "gw"), 20)
    config.write_text(config.read_text().replace('"600"', '"601"') + "\n[janitor.bogus]\n")
    for dry_run in (True, False):
        with pytest.raises(CommandFailed) as error:
            client.reload(dry_run=dry_run)
        assert "keeping the old one" in error.value.message
        assert "janitor.bogus" in error.value.message
    assert _running(client, "gw") == pid
    config.write_text(config.read_text().replace("\n[janitor.bogus]\n", ""))
    assert [c.section for c in client.reload().changes] == ["programs.gw"]
    wait_until(lambda: _running(client, "gw") not in (None, pid), 20, what="gw restarted")


def test_clawsupctl_reload_prints_one_line_per_change(clawsup_at, tmp_path: Path) -> None:
    _, client, config = clawsup_at(GW)
    wait_until(lambda: _running(client, "gw"), 20)
    config.write_text(config.read_text().replace('state_dir = ', 'cgroups = "off"\nstate_dir = ')
                      + SIDE)
    ctl = [sys.executable, "-m", "clawsup.client.ctl", "--socket",
           f"ipc://{tmp_path}/run/control.sock", "reload"]
    dry = subprocess.run([*ctl, "--dry-run"], capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "dry run, nothing applied: 2 change(s)",
        "  programs.side: add: started",
        "  supervisor: needs a clawsup restart (cgroups): the running clawsup keeps the old "
        "value",
    ]
    assert set(_pids(client)) == {"gw"}
    done = subprocess.run(ctl, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "config reloaded: 2 change(s)"
    assert done.stdout.splitlines()[1:] == dry.stdout.splitlines()[1:]
    wait_until(lambda: _running(client, "side"), 20, what="side added and RUNNING")


def test_sighup_applies_the_plan_and_logs_each_change(clawsup_at) -> None:
    clawsup, client, config = clawsup_at(GW + SIDE)
    wait_until(lambda: _running(client, "side"), 20)
    config.write_text(config.read_text().replace(
        "[programs.side]\n", '[programs.side]\nenvironment = { CHANGED = "1" }\n'))
    side = _running(client, "side")
    clawsup.signal(signal.SIGHUP)
    clawsup.wait_log("reload: programs.side: restart (environment)")
    wait_until(lambda: _running(client, "side") not in (None, side), 20, what="side restarted")


IGNORES_TERM = python_program(
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', os.getpid(), flush=True); time.sleep(600)")


def test_a_program_removed_and_added_again_while_stopping_runs_after_the_old_one_exits(
    clawsup_at, tmp_path: Path
) -> None:
    x = f"""
[programs.x]
command = {IGNORES_TERM}
start_seconds = "100ms"
stop_timeout = "2s"
"""
    clawsup, client, config = clawsup_at(GW + x)
    old = wait_until(lambda: _running(client, "x"), 20, what="x RUNNING")
    with_x = config.read_text()
    config.write_text(with_x.replace(x, ""))
    assert [(c.section, c.action) for c in client.reload().changes] == [("programs.x", "remove")]
    assert next(p for p in client.status().programs if p.name == "x").state == "STOPPING"
    config.write_text(with_x)
    assert [(c.section, c.action) for c in client.reload().changes] == [("programs.x", "add")]
    # The old x ignores SIGTERM: SIGKILL after its 2 s; only then does the new x start.
    assert [p.name for p in client.status().programs].count("x") == 1
    new = wait_until(lambda: _running(client, "x") not in (None, old) and _running(client, "x"),
                     20, what="the new x RUNNING")
    assert not Path(f"/proc/{old}").exists()
    # It is watched (hang sampling counts its tree) and listed, and shutdown stops it.
    wait_until(lambda: next(p for p in client.status().programs if p.name == "x").processes
               >= 1, 10)
    assert clawsup.log().count(f"x | up {new}") == 1
    clawsup.signal(signal.SIGTERM)
    clawsup.wait(30)
    assert not Path(f"/proc/{new}").exists(), "the new x outlived clawsup"


def test_the_breaker_stays_open_on_its_fallback_across_a_reload(tmp_path: Path) -> None:
    demo = Demo(tmp_path, extra='crash_loop = { max_restarts = 20, window = "60s", '
                'cooldown = "60s" }\n', tail="""
[breaker]
fallbacks = ["openai/gpt-5.2"]
failures = 2
window = "1m"
cooldown = "1h"
""")
    try:
        config_file = demo.home / "clawdbot.json"

        def model() -> str:
            doc = json5.loads(config_file.read_text())
            return str(doc["agents"]["defaults"]["model"]["primary"])

        for _ in range(2):
            _, pid = demo.gateway()
            demo.command("crash 1")
            wait_until(lambda p=pid: demo.gateway()[1] not in (None, p)
                       and demo.gateway()[0] == "RUNNING", 20)
        wait_until(lambda: model() == "openai/gpt-5.2", 10, what="switch to the fallback")
        before = demo.client.status().breaker
        assert before is not None
        assert before.state == "open"
        # A reload that leaves [breaker] alone (the janitor changes).
        demo.config.write_text(demo.config.read_text().replace(
            'interval = "200ms"', 'interval = "300ms"', 1))
        assert [c.section for c in demo.client.reload().changes] == ["janitor"]
        after = demo.client.status().breaker
        assert after is not None
        assert (after.state, after.model, after.active_model) == (
            "open", "anthropic/claude-opus-4-5", "openai/gpt-5.2")
        assert after.open_until == before.open_until
    finally:
        demo.stop()


def test_alerts_go_to_the_new_webhook_after_a_reload(clawsup_at) -> None:
    first, second = Webhook(), Webhook()
    try:
        alerts = '[alerts]\nevents = ["reloaded"]\n[alerts.webhook]\nurl = "{}"\n'
        _, client, config = clawsup_at(GW + alerts.format(first.url))
        wait_until(lambda: _running(client, "gw"), 20)
        client.reload()  # no changes: the "reloaded" event reaches the first URL
        wait_until(lambda: first.kinds() == {"reloaded"}, 10, what="the first webhook")
        config.write_text(config.read_text().replace(first.url, second.url))
        changes = client.reload().changes
        assert [(c.section, c.action, c.keys) for c in changes] == [
            ("alerts", "rebuild", ["webhook"])]
        # The reload's own event already goes to the new URL, with its plan.
        wait_until(lambda: second.received, 10, what="the second webhook")
        alert = second.received[0]
        assert alert["kind"] == "reloaded"
        assert alert["data"]["changes"] == [changes[0].describe()]
        assert len(first.received) == 1
    finally:
        first.close()
        second.close()


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_metrics_move_to_a_new_port_on_reload_and_keep_their_counters(clawsup_at) -> None:
    old_port, new_port = _free_port(), _free_port()
    _, client, config = clawsup_at(GW + f'[metrics]\nlisten = "127.0.0.1:{old_port}"\n')
    wait_until(lambda: _running(client, "gw"), 20)
    client.reload()
    wait_until(lambda: 'clawsup_events_total{kind="reloaded"} 1.0' in (_scrape(old_port) or ""),
               10, what="the first reload counted")
    config.write_text(config.read_text().replace(str(old_port), str(new_port)))
    changes = client.reload().changes
    assert [(c.section, c.action, c.error) for c in changes] == [("metrics", "restart", "")]
    text = wait_until(lambda: _scrape(new_port), 10, what="metrics on the new port")
    assert 'clawsup_events_total{kind="reloaded"} 2.0' in text
    assert _scrape(old_port) is None


def test_metrics_stay_on_the_old_port_when_the_new_one_is_taken(clawsup_at) -> None:
    import socket

    old_port = _free_port()
    _, client, config = clawsup_at(GW + f'[metrics]\nlisten = "127.0.0.1:{old_port}"\n')
    wait_until(lambda: _running(client, "gw"), 20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        new_port = taken.getsockname()[1]
        config.write_text(config.read_text().replace(str(old_port), str(new_port)))
        (change,) = client.reload().changes
        assert (change.section, change.action) == ("metrics", "restart")
        assert f"127.0.0.1:{new_port}" in change.error
        assert f"still on 127.0.0.1:{old_port}" in change.error
    assert "clawsup_events_total" in (wait_until(lambda: _scrape(old_port), 10) or "")
