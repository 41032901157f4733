"""Prometheus metrics, scraped over real HTTP from 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clawsup.protocol import BreakerStatus, Event, LastExit, ProgramStatus
from clawsup.supervisor import kinds
from clawsup.supervisor.config import MetricsConfig, parse_listen
from clawsup.supervisor.metrics import Metrics, MetricsError


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    served = Metrics(MetricsConfig(listen="127.0.0.1:0"), version="9.9.9")
    served.start()
    yield served
    served.close()


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{metrics.address}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def event(payload: kinds.Payload, program: str | None = "gateway") -> Event:
    return Event(ts=1.0, kind=payload.kind, program=program, message=payload.kind,
                 data=kinds.as_data(payload))


def test_counters_move_with_events(metrics: Metrics) -> None:
    assert metrics.port is not None
    assert metrics.port > 0
    before = scrape(metrics)
    assert value(before, "clawsup_restarts_total", program="gateway", reason="hung") is None
    assert value(before, "clawsup_zombies_reaped_total") == 0.0

    hung, timeout = kinds.RestartReason.HUNG, kinds.RestartReason.MESSAGE_TIMEOUT
    for sink_event in [
        event(kinds.Restarted(pid=2, reason=hung)),
        event(kinds.Restarted(pid=3, reason=hung)),
        event(kinds.Restarted(pid=4, reason=timeout)),
        event(kinds.Hung(state="D", seconds=10.0, pid=1)),
        event(kinds.Reaped(count=7), program=None),
        event(kinds.Reaped(count=2), program=None),
        event(kinds.OrphanLock(path="/x.jsonl.lock", pid=9, reason="dead", age=1.0,
                               session_id=None)),
        event(kinds.SessionArchived(path="/s.jsonl", archive="/a", size=1, session_id=None)),
        *[event(kinds.ArchivePurged(path=f"/a{n}", archived_at=0.0, age=1.0))
          for n in range(3)],
        event(kinds.MessageTimeout(path="/l", pid=1, session_id="s", held_for=1.0)),
        event(kinds.ZombieLeak(zombies=60)),
        event(kinds.LivenessFailed(detail="refused")),
        event(kinds.CrashLoop(cooldown=60.0, reason=kinds.RestartReason.CRASHED)),
        event(kinds.Unkillable(pid=1)),
        event(kinds.Exited(pid=1, code=3, signal=None, reason="crashed", restart=True,
                           cause=kinds.ExitCause.CRASHED)),
    ]:
        metrics.observe(sink_event)

    after = scrape(metrics)
    assert value(after, "clawsup_restarts_total", program="gateway", reason="hung") == 2.0
    assert value(after, "clawsup_restarts_total", program="gateway",
                 reason="message_timeout") == 1.0
    assert value(after, "clawsup_hangs_total", program="gateway") == 1.0
    assert value(after, "clawsup_zombies_reaped_total") == 9.0
    assert value(after, "clawsup_orphan_locks_removed_total") == 1.0
    assert value(after, "clawsup_sessions_archived_total") == 1.0
    assert value(after, "clawsup_archives_purged_total") == 3.0
    assert value(after, "clawsup_message_timeouts_total", program="gateway") == 1.0
    assert value(after, "clawsup_zombie_leaks_total", program="gateway") == 1.0
    assert value(after, "clawsup_liveness_failures_total", program="gateway") == 1.0
    assert value(after, "clawsup_crash_loops_total", program="gateway") == 1.0
    assert value(after, "clawsup_unkillable_total", program="gateway") == 1.0
    assert value(after, "clawsup_exits_total", program="gateway", reason="crashed") == 1.0
    assert value(after, "clawsup_events_total", kind="restarted") == 3.0
    assert value(after, "clawsup_events_total", kind="reaped") == 2.0


def test_supervisor_info_and_start_time(metrics: Metrics) -> None:
    samples = scrape(metrics)
    info = [labels for (name, labels) in samples if name == "clawsup_info"]
    assert len(info) == 1
    assert ("version", "9.9.9") in info[0]
    start = value(samples, "clawsup_start_time_seconds")
    assert start is not None
    assert start > 1.7e9


def test_program_state_is_one_hot_with_uptime(metrics: Metrics) -> None:
    running = ProgramStatus(name="gateway", state="RUNNING", pid=42, restarts=2, uptime=12.5,
                            last_exit=None, main=True)
    helper = ProgramStatus(name="helper", state="BACKOFF", pid=None, restarts=0, uptime=None,
                           last_exit=LastExit(code=1, reason="crashed"), hung=False)
    metrics.update_programs([running, helper])
    samples = scrape(metrics)
    assert value(samples, "clawsup_program_state", program="gateway", state="RUNNING") == 1.0
    assert value(samples, "clawsup_program_state", program="gateway", state="FATAL") == 0.0
    assert value(samples, "clawsup_program_state", program="helper", state="BACKOFF") == 1.0
    assert value(samples, "clawsup_program_uptime_seconds", program="gateway") == 12.5
    assert value(samples, "clawsup_program_uptime_seconds", program="helper") == 0.0
    assert value(samples, "clawsup_program_restarts", program="gateway") == 2.0

    hung = ProgramStatus(name="gateway", state="STOPPING", pid=42, restarts=2, uptime=30.0,
                         last_exit=None, main=True, hung=True)
    metrics.update_programs([hung])  # helper removed by a reload
    samples = scrape(metrics)
    assert value(samples, "clawsup_program_state", program="gateway", state="RUNNING") == 0.0
    assert value(samples, "clawsup_program_state", program="gateway", state="STOPPING") == 1.0
    assert value(samples, "clawsup_program_hung", program="gateway") == 1.0
    assert value(samples, "clawsup_program_state", program="helper", state="BACKOFF") is None
    assert value(samples, "clawsup_program_uptime_seconds", program="helper") is None


def test_breaker_state_per_model(metrics: Metrics) -> None:
    model = "anthropic/claude-opus-4-5"
    metrics.update_breaker(BreakerStatus(state="closed", model=model, active_model=model))
    samples = scrape(metrics)
    assert value(samples, "clawsup_breaker_state", model=model, state="closed") == 1.0

    change = {"model": model, "old": model, "to": "openai/gpt-5.2", "failures": 3,
              "cooldown": 60.0, "open_until": None}
    metrics.observe(event(kinds.BreakerOpen(state="open", **change)))
    samples = scrape(metrics)
    assert value(samples, "clawsup_breaker_state", model=model, state="open") == 1.0
    assert value(samples, "clawsup_breaker_state", model=model, state="closed") == 0.0
    assert value(samples, "clawsup_breaker_opens_total", model=model) == 1.0

    metrics.observe(event(kinds.BreakerHalfOpen(state="half_open", **change)))
    assert value(scrape(metrics), "clawsup_breaker_state", model=model, state="half_open") == 1.0

    # The operator picks another model: the old one's series go away.
    other = "google/gemini-3-pro"
    metrics.update_breaker(BreakerStatus(state="closed", model=other, active_model=other))
    samples = scrape(metrics)
    assert value(samples, "clawsup_breaker_state", model=other, state="closed") == 1.0
    assert value(samples, "clawsup_breaker_state", model=model, state="half_open") is None


def test_ipv6_loopback_listen() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    served = Metrics(MetricsConfig(listen="[::1]:0"))
    try:
        served.start()
    except MetricsError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    try:
        assert served.address.startswith("[::1]:")
        served.observe(event(kinds.Hung(state="D", seconds=10.0, pid=1)))
        assert value(scrape(served), "clawsup_hangs_total", program="gateway") == 1.0
    finally:
        served.close()


def test_a_taken_port_is_a_clear_error(metrics: Metrics) -> None:
    clash = Metrics(MetricsConfig(listen=f"127.0.0.1:{metrics.port}"))
    with pytest.raises(MetricsError, match=r"cannot serve metrics on 127\.0\.0\.1"):
        clash.start()


def test_close_stops_serving() -> None:
    served = Metrics(MetricsConfig(listen="127.0.0.1:0"))
    served.start()
    port = served.port
    served.close()
    assert served.port is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port or 0), timeout=2).close()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
        (" 0.0.0.0:80 ", ("0.0.0.0", 80)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["9464", "127.0.0.1", "127.0.0.1:http", ":9464", "::1:9464", "[::1]9464",
               "127.0.0.1:70000", "[::1]:"],
)
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
