"""deploy/grafana/clawsup.json and deploy/prometheus/clawsup-rules.yml use only metrics
(and labels) that clawsup's /metrics really serves (issue 12, item 7)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from typing import Any

import pytest
import yaml

from clawsup.protocol import BreakerStatus, Event, EventKind, ProgramStatus
from clawsup.supervisor.config import MetricsConfig
from clawsup.supervisor.metrics import Metrics
from tests.util import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "clawsup.json"
RULES = REPO / "deploy" / "prometheus" / "clawsup-rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "clawsup-rules.test.yml"

# PENDING_FROM_RESOURCES_BRANCH: the resources branch adds these (RSS and CPU gauges, and
# the counter of restarts over a [programs.NAME.resources] limit, `_total` as exported).
# The dashboard and the rules already use them; until they are exported here they are
# left out of the check below and test_resource_metrics_are_exported is skipped.
# The lead removes this set when that branch is merged.
PENDING_FROM_RESOURCES_BRANCH = frozenset({
    "clawsup_program_rss_bytes",
    "clawsup_program_cpu_percent",
    "clawsup_resource_limits_total",
})

# Labels Prometheus adds to every scraped series.
SCRAPE_LABELS = frozenset({"instance", "job"})

# PromQL words that are not metric names.
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                       "bool", "and", "or", "unless", "offset", "inf", "nan"})


# -- what clawsup serves ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """Metric name -> its label names, scraped from a real metrics endpoint whose every
    series has been fed (one event of each kind, a program, a breaker)."""
    metrics = Metrics(MetricsConfig(listen="127.0.0.1:0"))
    metrics.start()
    try:
        for kind in EventKind:
            metrics.observe(Event(ts=time.time(), kind=kind.value, program="gw",
                                  message="", data={"reason": "crashed", "model": "m",
                                                    "state": "open", "count": 1}))
        metrics.update_programs([ProgramStatus(name="gw", state="RUNNING", pid=1,
                                               restarts=0, uptime=1.0, last_exit=None)])
        metrics.update_breaker(BreakerStatus(state="open", model="m"))
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    return exposition(text)


def exposition(text: str) -> dict[str, set[str]]:
    """Every metric name the text format declares (``# TYPE``), with the label names of
    its samples."""
    names: dict[str, set[str]] = {
        match.group(1): set() for match in re.finditer(r"^# TYPE (\S+) \S+$", text, re.M)
    }
    for match in re.finditer(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}", text, re.M):
        labels = set(re.findall(r'(\w+)="', match.group(2)))
        names.setdefault(match.group(1), set()).update(labels)
    return names


# -- what the files use ----------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [target["expr"] for panel in board["panels"]
               for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


def used_metrics(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression (or a Grafana ``label_values(...)``) reads,
    each with the label names it matches on or groups by."""
    # label_values(metric, label): the label is the metric's; the rest is a selector.
    values_of = re.fullmatch(r"\s*label_values\(\s*(.*),\s*(\w+)\s*\)\s*", expr)
    if values_of is not None:
        found = used_metrics(values_of.group(1))
        for labels in found.values():
            labels.add(values_of.group(2))
        return found
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges: [5m], [$__rate_interval]
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    grouped = {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text)
               for label in group.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, matchers, call = match.groups()
        if call or name in _KEYWORDS or re.fullmatch(r"\d\w*", name):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.setdefault(name, set()).update(labels | grouped)
    return found


def every_use() -> dict[str, dict[str, set[str]]]:
    """Where -> metric -> labels, over the dashboard and the rules."""
    uses: dict[str, dict[str, set[str]]] = {}
    for query in dashboard_queries():
        uses[f"dashboard: {query}"] = used_metrics(query)
    for rule in rules():
        uses[f"rule {rule['alert']}: {rule['expr']}"] = used_metrics(str(rule["expr"]))
    return uses


# -- the checks ------------------------------------------------------------------------


def test_the_extraction_finds_metrics_and_their_labels() -> None:
    assert used_metrics(
        'sum by (program, reason) (increase(clawsup_restarts_total{instance=~"$instance"}'
        "[$__rate_interval])) > 0"
    ) == {"clawsup_restarts_total": {"program", "reason", "instance"}}
    assert used_metrics("time() - clawsup_start_time_seconds") == {
        "clawsup_start_time_seconds": set()}
    assert used_metrics('label_values(clawsup_program_state{instance=~"$i"}, program)') == {
        "clawsup_program_state": {"instance", "program"}}
    assert used_metrics('absent(clawsup_info)') == {"clawsup_info": set()}


def test_dashboard_and_rules_cover_what_an_operator_watches() -> None:
    used = {name for metrics in every_use().values() for name in metrics}
    assert {"clawsup_program_state", "clawsup_restarts_total", "clawsup_events_total",
            "clawsup_crash_loops_total", "clawsup_program_hung", "clawsup_hangs_total",
            "clawsup_breaker_state", "clawsup_breaker_opens_total"} <= used
    assert used >= PENDING_FROM_RESOURCES_BRANCH


def test_every_metric_used_is_one_clawsup_exports(served: dict[str, set[str]]) -> None:
    problems = []
    for where, metrics in every_use().items():
        for name, labels in metrics.items():
            if name in PENDING_FROM_RESOURCES_BRANCH and name not in served:
                continue
            if name not in served:
                problems.append(f"{where}: {name} is not exported")
                continue
            unknown = labels - served[name] - SCRAPE_LABELS
            if unknown:
                problems.append(f"{where}: {name} has no label {sorted(unknown)}")
    assert not problems, "\n".join(problems)


def test_resource_metrics_are_exported(served: dict[str, set[str]]) -> None:
    missing = PENDING_FROM_RESOURCES_BRANCH - set(served)
    if missing:
        pytest.skip(f"not exported before the resources branch is merged: {sorted(missing)}")


def test_every_counter_is_used_with_its_total_suffix(served: dict[str, set[str]]) -> None:
    """prometheus_client serves a Counter named x as x_total: x alone matches nothing."""
    used = {name for metrics in every_use().values() for name in metrics}
    bare = {name.removesuffix("_total") for name in served if name.endswith("_total")}
    assert not used & bare


# -- the rules file --------------------------------------------------------------------


def test_rules_file_is_well_formed() -> None:
    """What promtool checks of the structure, with PyYAML, so it holds where promtool is
    not installed."""
    loaded = yaml.safe_load(RULES.read_text())
    assert set(loaded) == {"groups"}
    names = set()
    for group in loaded["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        assert group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
            assert rule["alert"] not in names, f"{rule['alert']} twice"
            names.add(rule["alert"])
            assert isinstance(rule["expr"], str)
            assert rule["expr"].strip()
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule
            assert rule["annotations"]["summary"], rule
    assert {"ClawsupCrashLoop", "ClawsupProgramHung", "ClawsupBreakerOpen"} <= names


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", str(RULES_TEST)],
                            capture_output=True, text=True, timeout=60, cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# -- the dashboard ---------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "clawsup"
    assert board["title"]
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(target["expr"].strip() for target in panel["targets"])
    variables = {variable["name"] for variable in board["templating"]["list"]}
    for query in dashboard_queries():
        assert set(re.findall(r"\$(\w+)", query)) <= variables | {"__rate_interval"}, query


def test_dashboard_shows_state_restarts_incidents_resources_and_breaker() -> None:
    titles = " | ".join(panel["title"] for panel in dashboard()["panels"])
    for wanted in ("Program state", "Restarts by reason", "Incidents", "Memory", "CPU",
                   "Breaker state"):
        assert wanted in titles, titles
