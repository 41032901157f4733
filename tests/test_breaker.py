"""The model circuit breaker, walked through every transition with a fake clock."""

from __future__ import annotations

import pytest

from clawsup.supervisor.breaker import BreakerState, Decision, ModelBreaker
from clawsup.supervisor.config import BreakerConfig
from clawsup.units import Duration

PRIMARY = "anthropic/claude-opus-4-5"
FALLBACK = "openai/gpt-5.2"
SECOND = "google/gemini-3-pro"


def config(
    fallbacks: list[str] | None = None,
    failures: int = 3,
    window: float = 600.0,
    cooldown: float = 300.0,
    max_cooldown: float = 3600.0,
) -> BreakerConfig:
    return BreakerConfig(
        fallbacks=[FALLBACK] if fallbacks is None else fallbacks,
        failures=failures,
        window=Duration(window),
        cooldown=Duration(cooldown),
        max_cooldown=Duration(max_cooldown),
    )


def trip(breaker: ModelBreaker, model: str, at: float, times: int = 3) -> Decision | None:
    decision = None
    for i in range(times):
        decision = breaker.record_failure(model, at + i)
    return decision


def test_failures_below_threshold_keep_it_closed() -> None:
    breaker = ModelBreaker(config(), PRIMARY)
    assert breaker.record_failure(PRIMARY, 0.0) is None
    assert breaker.record_failure(PRIMARY, 1.0) is None
    status = breaker.status()
    assert status.state == "closed"
    assert status.failures == 2
    assert status.model == PRIMARY
    assert status.active_model == PRIMARY
    assert status.open_until is None


def test_threshold_within_window_opens_and_switches_to_first_fallback() -> None:
    breaker = ModelBreaker(config(), PRIMARY)
    decision = trip(breaker, PRIMARY, 100.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_open"
    assert decision.switch_to == FALLBACK
    assert PRIMARY in decision.message
    assert FALLBACK in decision.message
    assert decision.payload.model == PRIMARY
    assert decision.payload.old == PRIMARY
    assert decision.payload.to == FALLBACK
    assert decision.payload.failures == 3
    status = breaker.status()
    assert status.state == "open"
    assert status.active_model == FALLBACK
    assert status.open_until == 102.0 + 300.0


def test_failures_outside_the_window_do_not_count() -> None:
    breaker = ModelBreaker(config(window=60.0), PRIMARY)
    assert breaker.record_failure(PRIMARY, 0.0) is None
    assert breaker.record_failure(PRIMARY, 30.0) is None
    # The first failure is 60 s old now: only two in the window.
    assert breaker.record_failure(PRIMARY, 60.0) is None
    assert breaker.state is BreakerState.CLOSED
    assert breaker.status(now=60.0).failures == 2
    assert breaker.status(now=200.0).failures == 0
    # Three inside one window trip it.
    assert breaker.record_failure(PRIMARY, 200.0) is None
    assert breaker.record_failure(PRIMARY, 210.0) is None
    decision = breaker.record_failure(PRIMARY, 259.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_open"


def test_cooldown_elapsed_goes_half_open_and_tries_the_primary() -> None:
    breaker = ModelBreaker(config(), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    assert breaker.tick(301.9) is None  # a tick before the deadline changes nothing
    decision = breaker.tick(302.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_half_open"
    assert decision.switch_to == PRIMARY
    assert decision.payload.old == FALLBACK
    status = breaker.status()
    assert status.state == "half_open"
    assert status.active_model == PRIMARY
    assert status.open_until is None
    # A late, repeated tick does not repeat the decision.
    assert breaker.tick(303.0) is None


def test_half_open_closes_after_a_probe_period_without_failure() -> None:
    breaker = ModelBreaker(config(window=600.0), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    breaker.tick(302.0)
    # The probe period defaults to the window.
    assert breaker.tick(901.0) is None
    decision = breaker.tick(902.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_closed"
    assert decision.switch_to is None  # the primary is already in use
    assert breaker.state is BreakerState.CLOSED
    assert breaker.tick(903.0) is None  # closed: a later tick is no news


def test_probe_period_can_be_set() -> None:
    breaker = ModelBreaker(config(), PRIMARY, probe=30.0)
    trip(breaker, PRIMARY, 0.0)
    breaker.tick(302.0)
    assert breaker.tick(331.0) is None
    decision = breaker.tick(332.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_closed"


def test_one_failure_in_half_open_reopens_with_doubled_cooldown() -> None:
    breaker = ModelBreaker(config(cooldown=300.0), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    breaker.tick(302.0)
    decision = breaker.record_failure(PRIMARY, 310.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_open"
    assert decision.switch_to == FALLBACK
    assert decision.payload.cooldown == 600.0
    status = breaker.status()
    assert status.state == "open"
    assert status.open_until == 310.0 + 600.0


def test_cooldown_doubling_stops_at_max_cooldown() -> None:
    breaker = ModelBreaker(config(cooldown=300.0, max_cooldown=1000.0), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    now = 2.0
    seen = []
    for _ in range(4):
        deadline = breaker.status().open_until
        assert deadline is not None
        now = deadline
        half = breaker.tick(now)
        assert half is not None
        assert half.payload.kind == "breaker_half_open"
        now += 1.0
        reopened = breaker.record_failure(PRIMARY, now)
        assert reopened is not None
        seen.append(reopened.payload.cooldown)
    assert seen == [600.0, 1000.0, 1000.0, 1000.0]


def test_closing_resets_the_cooldown_to_its_base() -> None:
    breaker = ModelBreaker(config(cooldown=300.0), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    breaker.tick(302.0)
    breaker.record_failure(PRIMARY, 303.0)  # reopened for 600 s
    assert breaker.tick(902.0) is None
    half = breaker.tick(903.0)
    assert half is not None
    assert half.payload.kind == "breaker_half_open"
    closed = breaker.tick(903.0 + 600.0)  # a probe period (the window) without a failure
    assert closed is not None
    assert closed.payload.kind == "breaker_closed"
    reopened = trip(breaker, PRIMARY, 2000.0)
    assert reopened is not None
    assert reopened.payload.cooldown == 300.0
    assert breaker.status().open_until == 2002.0 + 300.0


def test_a_failing_fallback_moves_on_to_the_next_one_and_stops_at_the_last() -> None:
    breaker = ModelBreaker(config(fallbacks=[FALLBACK, SECOND]), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    decision = trip(breaker, FALLBACK, 10.0)
    assert decision is not None
    assert decision.payload.kind == "breaker_open"
    assert decision.switch_to == SECOND
    assert decision.payload.old == FALLBACK
    status = breaker.status()
    assert status.active_model == SECOND
    # The cooldown of the primary still runs from when it was opened.
    assert status.open_until == 302.0
    # Nothing after the last fallback: stay on it.
    assert trip(breaker, SECOND, 20.0) is None
    assert breaker.active_model == SECOND
    half = breaker.tick(302.0)
    assert half is not None
    assert half.switch_to == PRIMARY


def test_stale_failures_of_a_model_no_longer_active_are_ignored() -> None:
    breaker = ModelBreaker(config(failures=1), PRIMARY)
    opened = breaker.record_failure(PRIMARY, 0.0)
    assert opened is not None
    assert opened.payload.kind == "breaker_open"
    # A message sent to the primary times out after the switch: not the fallback's fault.
    assert breaker.record_failure(PRIMARY, 1.0) is None
    assert breaker.active_model == FALLBACK
    assert breaker.status().failures == 0


def test_no_fallbacks_never_opens() -> None:
    breaker = ModelBreaker(config(fallbacks=[]), PRIMARY)
    assert not breaker.enabled
    for i in range(50):
        assert breaker.record_failure(PRIMARY, float(i)) is None
    assert breaker.tick(10_000.0) is None
    assert breaker.status().state == "closed"
    assert breaker.active_model == PRIMARY


def test_fallback_list_naming_only_the_primary_is_no_fallback() -> None:
    breaker = ModelBreaker(config(fallbacks=[PRIMARY]), PRIMARY)
    assert not breaker.enabled
    assert trip(breaker, PRIMARY, 0.0, times=10) is None


def test_unknown_primary_never_opens_until_one_is_set() -> None:
    breaker = ModelBreaker(config(), None)
    assert not breaker.enabled
    assert breaker.record_failure(None, 0.0) is None
    assert breaker.status().model is None
    breaker.set_primary(PRIMARY, 1.0)
    decision = trip(breaker, PRIMARY, 2.0)
    assert decision is not None
    assert decision.switch_to == FALLBACK


@pytest.mark.parametrize("stage", ["open", "half_open"])
def test_operator_set_model_while_tripped_resets_to_closed(stage: str) -> None:
    breaker = ModelBreaker(config(), PRIMARY)
    trip(breaker, PRIMARY, 0.0)
    if stage == "half_open":
        breaker.tick(302.0)
    assert breaker.state.value == stage
    breaker.set_primary(SECOND, 500.0)
    status = breaker.status()
    assert status.state == "closed"
    assert status.model == SECOND
    assert status.active_model == SECOND
    assert status.failures == 0
    assert status.open_until is None
    assert breaker.tick(10_000.0) is None
    # The new primary has the whole fallback list, including the old primary's fallback.
    decision = trip(breaker, SECOND, 600.0)
    assert decision is not None
    assert decision.switch_to == FALLBACK


def test_operator_choosing_a_fallback_as_primary_drops_it_from_the_chain() -> None:
    breaker = ModelBreaker(config(fallbacks=[FALLBACK, SECOND]), PRIMARY)
    breaker.set_primary(FALLBACK, 0.0)
    decision = trip(breaker, FALLBACK, 1.0)
    assert decision is not None
    assert decision.switch_to == SECOND
