"""Hang, zombie-leak and liveness thresholds: pure functions of samples and time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clawsup.supervisor.hang import (
    NOT_IN_D,
    DState,
    Liveness,
    d_state_seconds,
    is_hung,
    is_zombie_leak,
    liveness_failed,
    record_probe,
    track_d_state,
)

D_STATE_AFTER = 10.0


def feed(samples: list[tuple[str | None, int | None, float]]) -> DState:
    record = NOT_IN_D
    for state, switches, now in samples:
        record = track_d_state(record, state, switches, now)
    return record


# -- D state ---------------------------------------------------------------------------------


def test_continuous_d_with_frozen_switch_count_is_hung() -> None:
    record = feed([("D", 42, float(t)) for t in range(11)])
    assert record.since == 0.0
    assert d_state_seconds(record, 10.0) == 10.0
    assert is_hung(record, 10.0, D_STATE_AFTER)


def test_continuous_d_shorter_than_threshold_is_not_hung() -> None:
    record = feed([("D", 42, float(t)) for t in range(10)])
    assert not is_hung(record, 9.999, D_STATE_AFTER)


def test_d_samples_whose_switch_count_moves_are_never_hung() -> None:
    """Many short disk waits: D at every sample, but it switched context in between."""
    samples = [("D", 100 + t, float(t)) for t in range(0, 600)]
    record = NOT_IN_D
    for state, switches, now in samples:
        record = track_d_state(record, state, switches, now)
        assert not is_hung(record, now, D_STATE_AFTER)
        assert record.since == now  # the clock starts again at each sample


def test_switch_count_moving_restarts_the_clock() -> None:
    record = feed([("D", 5, 0.0), ("D", 5, 8.0), ("D", 6, 9.0), ("D", 6, 18.0)])
    assert record.since == 9.0
    assert not is_hung(record, 18.0, D_STATE_AFTER)
    assert is_hung(track_d_state(record, "D", 6, 19.0), 19.0, D_STATE_AFTER)


def test_one_sample_out_of_d_resets() -> None:
    record = feed([("D", 5, 0.0), ("D", 5, 9.0), ("S", 5, 9.5)])
    assert record == NOT_IN_D
    assert not is_hung(record, 100.0, D_STATE_AFTER)
    record = feed([("D", 5, 0.0), ("D", 5, 9.0), ("R", None, 9.5), ("D", 5, 10.0), ("D", 5, 19.0)])
    assert record.since == 10.0
    assert not is_hung(record, 19.0, D_STATE_AFTER)


def test_a_vanished_process_resets() -> None:
    record = feed([("D", 5, 0.0), ("D", 5, 9.0), (None, None, 9.5)])
    assert record == NOT_IN_D


def test_unknown_switch_count_never_accumulates() -> None:
    # Without a switch count there is no proof it made no progress: never call it hung.
    record = feed([("D", None, float(t)) for t in range(30)])
    assert not is_hung(record, 29.0, D_STATE_AFTER)


def test_not_in_d_is_never_hung() -> None:
    assert d_state_seconds(NOT_IN_D, 1e9) == 0.0
    assert not is_hung(NOT_IN_D, 1e9, D_STATE_AFTER)


samples = st.lists(
    st.tuples(
        st.sampled_from(["D", "S", "R", "Z", None]),
        st.integers(0, 3) | st.none(),
        st.floats(min_value=0.0, max_value=5.0),
    ),
    max_size=60,
)


@given(samples=samples)
def test_hung_only_after_uninterrupted_frozen_d_for_the_threshold(
    samples: list[tuple[str | None, int | None, float]],
) -> None:
    """Checked against a direct reading of the rule over the whole sample history."""
    record = NOT_IN_D
    now = 0.0
    history: list[tuple[str | None, int | None, float]] = []
    for state, switches, step in samples:
        now += step
        history.append((state, switches, now))
        record = track_d_state(record, state, switches, now)
        # The longest suffix of samples all in D with one known, unchanged switch count.
        since = None
        last = history[-1]
        if last[0] == "D" and last[1] is not None:
            since = last[2]
            for earlier in reversed(history[:-1]):
                if earlier[0] != "D" or earlier[1] != last[1]:
                    break
                since = earlier[2]
        expected_hung = since is not None and now - since >= D_STATE_AFTER
        assert is_hung(record, now, D_STATE_AFTER) == expected_hung


# -- zombies ---------------------------------------------------------------------------------


def test_zombies_over_the_limit_are_a_leak() -> None:
    assert is_zombie_leak(51, 50)
    assert not is_zombie_leak(50, 50)
    assert not is_zombie_leak(0, 50)


def test_zombie_limit_zero_disables_the_check() -> None:
    assert not is_zombie_leak(10_000, 0)


# -- liveness --------------------------------------------------------------------------------


def test_liveness_fails_after_consecutive_failures() -> None:
    record = Liveness()
    assert record.last_ok is None
    for _ in range(2):
        record = record_probe(record, ok=False)
        assert not liveness_failed(record, 3)
    record = record_probe(record, ok=False)
    assert liveness_failed(record, 3)
    assert record.last_ok is False


def test_one_passing_probe_resets_the_count() -> None:
    record = Liveness()
    for ok in (False, False, True, False, False):
        record = record_probe(record, ok=ok)
    assert record.consecutive_failures == 2
    assert not liveness_failed(record, 3)
    assert record_probe(record, ok=True) == Liveness(consecutive_failures=0, last_ok=True)


@given(results=st.lists(st.booleans(), max_size=50), failures=st.integers(1, 5))
def test_liveness_failed_means_the_last_n_probes_failed(results: list[bool], failures: int) -> None:
    record = Liveness()
    for ok in results:
        record = record_probe(record, ok=ok)
    tail = results[-failures:]
    assert liveness_failed(record, failures) == (len(tail) == failures and not any(tail))
