"""The event catalogue: one payload struct per kind, and the wire they make.

Every kind's payload goes out as an event's ``data`` (JSON, as every sink encodes it) and
comes back as the same payload; the keys clients read (docs/protocol.md) are the wire's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from clawsup.protocol import Event, EventKind, encode
from clawsup.supervisor import kinds
from clawsup.supervisor.config import AlertsConfig
from clawsup.supervisor.kinds import ExitCause, RestartReason
from clawsup.units import Duration

_BREAKER = {"model": "anthropic/claude-opus-4-5", "old": "anthropic/claude-opus-4-5",
            "to": "openai/gpt-5.2", "failures": 3, "cooldown": 300.0, "open_until": 12.5,
            "cause": "crash"}

# One payload of every kind, as its producer builds it.
SAMPLES: dict[EventKind, kinds.Payload] = {sample.kind: sample for sample in (
    kinds.StateChanged(old="STARTING", to="RUNNING", trigger="start_seconds_elapsed",
                       reason="up"),
    kinds.Exited(pid=42, code=None, signal="SIGKILL", reason="hung (state: D for 10.0s)",
                 restart=True, cause=ExitCause.STOPPED),
    kinds.Backoff(delay=0.5, reason=RestartReason.SPAWN_FAILED, quick_failures=2,
                  detail="cannot start gateway: no such file"),
    kinds.Restarted(pid=43, reason=RestartReason.REQUESTED, detail="new plugin"),
    kinds.CrashLoop(cooldown=300.0, reason=RestartReason.CRASHED),
    kinds.Fatal(),
    kinds.Unkillable(pid=None),
    kinds.Hung(state="D", seconds=10.0, pid=42),
    kinds.ThreadHung(tid=44, thread="libuv-worker", seconds=12.0, pid=42, restart=True),
    kinds.ZombieLeak(zombies=60),
    kinds.ResourceLimit(resource="rss", value=2.0 * (1 << 30), limit=1.5 * (1 << 30),
                        seconds=5.0, samples=2, pid=4242),
    kinds.LivenessFailed(detail="connection refused"),
    kinds.Reaped(count=3),
    kinds.Log(seq=7, ts=1.5, stream="stderr", pid=42, lines=["one", "two"]),
    kinds.OrphanLock(path="/s/a.jsonl.lock", pid=9, reason="dead", age=100.0,
                     session_id="a"),
    kinds.SessionArchived(path="/s/b.jsonl", archive="/s/b.jsonl.1", size=1 << 20,
                          session_id=None),
    kinds.ArchivePurged(path="/s/b.jsonl.1", archived_at=1.0, age=86400.0),
    kinds.MessageTimeout(path="/s/c.jsonl.lock", pid=42, session_id="c", held_for=900.0),
    kinds.BreakerOpen(state="open", **_BREAKER),
    kinds.BreakerHalfOpen(state="half_open", **_BREAKER),
    kinds.BreakerClosed(state="closed", **_BREAKER),
    kinds.ModelChanged(old=None, new="openai/gpt-5.2", source="clawsupctl", applied="reload"),
    kinds.TimezoneChanged(old="UTC", new="Asia/Tokyo", source="clawsupctl", applied="pending"),
    kinds.OverrideDropped(key="model", value="openai/gpt-5.2", found="x-ai/grok-4",
                          replaced=None, reason="edited since"),
    kinds.RestartRequested(reason=RestartReason.RESTART_FLAG, detail="from the flag"),
    kinds.RestartScheduled(reason=RestartReason.REQUESTED_WHEN_IDLE, detail="chat", pid=42,
                           max_wait=600.0, deadline=2.0, locks=["/s/d.jsonl.lock"]),
    kinds.IdleRestart(reason=RestartReason.REQUESTED_WHEN_IDLE, detail="chat", pid=42,
                      waited=3.0, max_wait=600.0, at_max_wait=False, locks=[]),
    kinds.RestartCancelled(reason=RestartReason.REQUESTED_WHEN_IDLE, detail="chat",
                           cause="pid 42 is gone"),
    kinds.Reloaded(changes=["alerts: update (quiet_period)"]),
    kinds.ReloadFailed(),
)}

_decode_event = msgspec.json.Decoder(Event)


def test_there_is_one_payload_per_kind_and_a_sample_of_each() -> None:
    assert set(kinds.CATALOGUE) == set(EventKind)
    assert set(SAMPLES) == set(EventKind)
    assert len(set(kinds.CATALOGUE.values())) == len(EventKind)
    for kind, payload in kinds.CATALOGUE.items():
        assert payload.kind is kind
        assert payload.__doc__, f"{kind} says what it means"


@pytest.mark.parametrize("kind", list(EventKind))
def test_the_payload_of_every_kind_round_trips_through_the_wire(kind: EventKind) -> None:
    sample = SAMPLES[kind]
    event = Event(ts=1.0, kind=sample.kind, program="gateway", message="m",
                  data=kinds.as_data(sample))
    received = _decode_event.decode(encode(event))
    assert received == event
    assert kinds.payload_of(received) == sample


def test_the_wire_keys_are_the_documented_ones() -> None:
    state = kinds.as_data(SAMPLES[EventKind.STATE])
    assert list(state) == ["from", "to", "trigger", "reason"]
    breaker = kinds.as_data(SAMPLES[EventKind.BREAKER_OPEN])
    assert {"model", "from", "to", "state", "failures", "cooldown", "open_until", "cause"} == set(
        breaker)
    restarted = json.loads(encode(Event(ts=1.0, kind="restarted",
                                        data=kinds.as_data(SAMPLES[EventKind.RESTARTED]))))
    assert restarted["data"] == {"pid": 43, "reason": "requested", "detail": "new plugin"}


def test_a_duration_from_the_config_goes_out_as_a_plain_number() -> None:
    data = kinds.as_data(kinds.CrashLoop(cooldown=Duration(300.0), reason=RestartReason.HUNG))
    assert type(data["cooldown"]) is float
    assert data == {"cooldown": 300.0, "reason": "hung", "detail": ""}


@pytest.mark.parametrize("data", [
    {"pid": 1, "reason": "new plugin"},  # free text where the enum goes
    {"pid": "1", "reason": "requested"},  # wrong type
    {"reason": "requested"},  # a field missing
])
def test_data_that_is_not_its_kinds_payload_reads_as_none(data: dict[str, object]) -> None:
    assert kinds.payload_of(Event(ts=1.0, kind="restarted", data=data)) is None


def test_an_unknown_kind_reads_as_none() -> None:
    assert kinds.payload_of(Event(ts=1.0, kind="started", data={})) is None


def test_the_default_alert_kinds_are_those_the_catalogue_marks() -> None:
    assert set(AlertsConfig().events) == {
        "hung", "thread_hung", "fatal", "crash_loop", "message_timeout", "breaker_open",
        "zombie_leak", "resource_limit"}


def test_a_reason_reads_with_its_free_text_beside_it() -> None:
    assert kinds.describe_reason(RestartReason.REQUESTED, "hung") == "requested: hung"
    assert kinds.describe_reason(RestartReason.LIVENESS) == "liveness"


_DISAGREEING = '''
from clawsup.supervisor import kinds
from clawsup.supervisor.daemon import Supervisor


def produce(supervisor: Supervisor) -> None:
    supervisor.emit(kinds.Hung(state="D", seconds=1.0, pid="42"), "gateway", "hung")


def consume(payload: kinds.Payload) -> None:
    match payload:
        case kinds.Restarted():
            print(payload.why)
'''


def test_mypy_sees_a_producer_and_a_consumer_that_disagree_with_the_payload(
        tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    source = tmp_path / "disagreeing.py"
    source.write_text(_DISAGREEING)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(source)],
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, checked.stdout + checked.stderr
    assert 'Argument "pid" to "Hung" has incompatible type "str"' in errors[0]
    assert '"Restarted" has no attribute "why"' in errors[1]
