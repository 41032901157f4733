"""The program state machine, driven with a fake clock and fake effects.

No processes, no sleeps: ``FakeEffects`` hands out fake pids, records signals, events and
timers, and ``FakeEffects.advance`` moves the fake clock forward firing due timers in
order, the way the event loop would.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup.supervisor.config import Backoff, CrashLoop, Liveness, ProgramConfig
from clawsup.supervisor.kinds import Payload, RestartReason, as_data
from clawsup.supervisor.program import (
    KILL_TIMEOUT,
    TRANSITIONS,
    Program,
    SpawnError,
    State,
    Trigger,
)
from clawsup.units import Duration

S, T = State, Trigger

START_SECONDS = 1.0
STOP_TIMEOUT = 10.0
RESET_AFTER = 60.0
COOLDOWN = 300.0
FIRST_PID = 1000


def exit_status(code: int) -> int:
    """A waitpid status for a process that called exit(code)."""
    return (code & 0xFF) << 8


def signal_status(signum: int) -> int:
    """A waitpid status for a process killed by ``signum``."""
    return int(signum)


CRASH = exit_status(1)
CLEAN_EXIT = exit_status(0)
KILLED = signal_status(signal.SIGKILL)


# -- fakes ---------------------------------------------------------------------------------


@dataclass
class FakeClock:
    now: float = 1000.0
    wall_offset: float = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_offset + self.now


@dataclass
class FakeTimer:
    due: float
    seq: int
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def live(self) -> bool:
        return not (self.cancelled or self.fired)


@dataclass
class FakeEffects:
    """The Effects protocol, recorded. ``spawn_error`` makes every spawn fail."""

    clock: FakeClock
    random_value: float = 0.5  # 2 * 0.5 - 1 == 0: no jitter
    spawn_error: str | None = None
    next_pid: int = FIRST_PID
    spawns: list[int] = field(default_factory=list)
    spawn_attempts: int = 0
    kills: list[tuple[int | None, int]] = field(default_factory=list)
    timers: list[FakeTimer] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    transitions: list[tuple[State, State]] = field(default_factory=list)

    # Effects
    def spawn(self, program: Program) -> int:
        self.spawn_attempts += 1
        if self.spawn_error is not None:
            raise SpawnError(self.spawn_error)
        pid = self.next_pid
        self.next_pid += 1
        self.spawns.append(pid)
        return pid

    def kill(self, program: Program, signum: int) -> None:
        self.kills.append((program.pid, int(signum)))

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(due=self.clock.now + delay, seq=len(self.timers), callback=callback)
        self.timers.append(timer)
        return timer

    def publish(self, program: Program, payload: Payload, message: str) -> None:
        self.events.append((payload.kind, message, as_data(payload)))

    def transitioned(self, program: Program, old: State, new: State) -> None:
        self.transitions.append((old, new))

    def random(self) -> float:
        return self.random_value

    # the test's side of the loop
    def live_timers(self) -> list[FakeTimer]:
        return [t for t in self.timers if t.live]

    def pending(self) -> FakeTimer:
        """The one timer the machine is waiting on (the latest live one)."""
        live = self.live_timers()
        assert live, "no timer pending"
        return max(live, key=lambda t: t.seq)

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer that falls due, in order."""
        target = self.clock.now + seconds
        while True:
            due = [t for t in self.live_timers() if t.due <= target]
            if not due:
                break
            timer = min(due, key=lambda t: (t.due, t.seq))
            self.clock.now = max(self.clock.now, timer.due)
            timer.fired = True
            timer.callback()
        self.clock.now = target

    def fire_pending(self) -> FakeTimer:
        """Advance exactly to the pending timer's due time (firing it)."""
        timer = self.pending()
        self.advance(timer.due - self.clock.now)
        return timer

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, _, data in self.events if k == kind]


def make_config(
    *,
    autorestart: str = "always",
    exit_codes: list[int] | None = None,
    start_seconds: float = START_SECONDS,
    stop_signal: str = "SIGTERM",
    stop_timeout: float = STOP_TIMEOUT,
    initial: float = 1.0,
    factor: float = 2.0,
    maximum: float = 8.0,
    reset_after: float = RESET_AFTER,
    jitter: float = 0.1,
    max_restarts: int = 5,
    window: float = 60.0,
    cooldown: float = COOLDOWN,
    start_timeout: float | None = None,
) -> ProgramConfig:
    """``start_timeout`` given: a liveness probe decides when it is RUNNING."""
    return ProgramConfig(
        command=["clawdbot", "gateway"],
        main=True,
        autorestart=autorestart,  # type: ignore[arg-type]
        exit_codes=[0] if exit_codes is None else exit_codes,
        start_seconds=Duration(start_seconds),
        stop_signal=stop_signal,
        stop_timeout=Duration(stop_timeout),
        backoff=Backoff(
            initial=Duration(initial),
            factor=factor,
            max=Duration(maximum),
            reset_after=Duration(reset_after),
            jitter=jitter,
        ),
        crash_loop=CrashLoop(max_restarts=max_restarts, window=Duration(window), cooldown=Duration(cooldown)),
        liveness=None if start_timeout is None else Liveness(
            http="http://127.0.0.1:18789/", start_timeout=Duration(start_timeout)
        ),
    )


@dataclass
class Harness:
    program: Program
    effects: FakeEffects
    clock: FakeClock

    @property
    def state(self) -> State:
        return self.program.state

    def run_until_running(self) -> None:
        self.program.start()
        if self.program.config.liveness is not None:
            self.program.ready()
        else:
            self.effects.advance(self.program.config.start_seconds)
        assert self.state is S.RUNNING

    def delay_of_pending(self) -> float:
        return self.effects.pending().due - self.clock.now


def harness(config: ProgramConfig | None = None, random_value: float = 0.5) -> Harness:
    clock = FakeClock()
    effects = FakeEffects(clock, random_value=random_value)
    program = Program("gateway", config or make_config(), effects, clock)
    return Harness(program, effects, clock)


# -- every (state, trigger) pair -----------------------------------------------------------

TIMER_TRIGGERS = frozenset(
    {
        T.START_SECONDS_ELAPSED,
        T.START_TIMEOUT,
        T.BACKOFF_ELAPSED,
        T.STOP_TIMEOUT,
        T.KILL_TIMEOUT,
        T.COOLDOWN_ELAPSED,
    }
)
START_TIMEOUT = 30.0
# The two ways a program becomes RUNNING: start_seconds elapsed, or (with a liveness probe)
# its first passing probe. Each walk has the timers its way uses.
WALKS = ("start_seconds", "probe")


def pending_in(state: State, walk: str) -> Trigger | None:
    """The timer a state is waiting on when the walk drives it there."""
    if state is S.STARTING:
        return T.START_TIMEOUT if walk == "probe" else T.START_SECONDS_ELAPSED
    return {S.BACKOFF: T.BACKOFF_ELAPSED, S.FATAL: T.COOLDOWN_ELAPSED}.get(state)


def walk_config(walk: str = "start_seconds") -> ProgramConfig:
    # on-failure makes EXITED reachable with a clean exit; max_restarts=1 makes FATAL
    # reachable with two quick crashes.
    return make_config(autorestart="on-failure", max_restarts=1,
                       start_timeout=START_TIMEOUT if walk == "probe" else None)


def collect_stale_callbacks(h: Harness) -> dict[Trigger, Callable[[], None]]:
    """Tour every timer of the walk once, keeping each callback; all stale afterwards."""
    p, fx = h.program, h.effects
    probe = p.config.liveness is not None
    stale: dict[Trigger, Callable[[], None]] = {}

    p.start()
    stale[T.START_TIMEOUT if probe else T.START_SECONDS_ELAPSED] = fx.pending().callback
    if probe:
        p.ready()
    else:
        fx.advance(START_SECONDS)
    fx.advance(1.0)
    p.exited(CRASH)
    assert h.state is S.BACKOFF
    stale[T.BACKOFF_ELAPSED] = fx.pending().callback
    p.stop()

    h.run_until_running()
    p.stop()
    stale[T.STOP_TIMEOUT] = fx.pending().callback
    fx.advance(STOP_TIMEOUT)
    stale[T.KILL_TIMEOUT] = fx.pending().callback
    p.exited(KILLED)
    assert h.state is S.STOPPED

    p.start()
    p.exited(CRASH)
    fx.fire_pending()
    p.exited(CRASH)
    assert h.state is S.FATAL
    stale[T.COOLDOWN_ELAPSED] = fx.pending().callback
    p.stop()

    assert h.state is S.STOPPED
    assert not fx.live_timers()
    never = T.START_SECONDS_ELAPSED if probe else T.START_TIMEOUT
    assert set(stale) == TIMER_TRIGGERS - {never}
    return stale


def drive_to(h: Harness, state: State, pending: Trigger | None = None) -> None:
    """Put the program in ``state`` through real triggers from STOPPED."""
    p, fx = h.program, h.effects
    assert h.state is S.STOPPED
    if state is S.STOPPED:
        pass
    elif state is S.STARTING:
        p.start()
    elif state is S.RUNNING:
        h.run_until_running()
    elif state is S.BACKOFF:
        p.start()
        p.exited(CRASH)
    elif state is S.STOPPING:
        h.run_until_running()
        p.stop()
        if pending is T.KILL_TIMEOUT:
            fx.advance(STOP_TIMEOUT)
    elif state is S.EXITED:
        h.run_until_running()
        p.exited(CLEAN_EXIT)
    elif state is S.FATAL:
        p.start()
        p.exited(CRASH)
        fx.fire_pending()
        p.exited(CRASH)
    assert h.state is state


def fire(h: Harness, trigger: Trigger) -> None:
    p = h.program
    if trigger is T.START:
        p.start()
    elif trigger is T.STOP:
        p.stop()
    elif trigger is T.RESTART:
        p.restart()
    elif trigger is T.HUNG:
        p.hang_detected("state: D for 10.0s")
    elif trigger is T.EXITED:
        p.exited(CRASH)
    elif trigger is T.SPAWN_FAILED:
        p.spawn_failed("no such file")
    elif trigger is T.READY:
        p.ready()
    else:
        h.effects.fire_pending()


def snapshot(h: Harness) -> tuple[Any, ...]:
    fx = h.effects
    return (h.state, len(fx.spawns), len(fx.kills), len(fx.transitions), len(fx.events))


def _pair_param(state: State, trigger: Trigger, walk: str) -> Any:
    return pytest.param(state, trigger, walk, id=f"{walk}-{state.name}-{trigger.name}")


ALL_PAIRS = [
    _pair_param(state, trigger, walk) for walk in WALKS for state in State for trigger in Trigger
]


@pytest.mark.parametrize(("state", "trigger", "walk"), ALL_PAIRS)
def test_every_state_trigger_pair_follows_the_table(
    state: State, trigger: Trigger, walk: str
) -> None:
    h = harness(walk_config(walk))
    stale = collect_stale_callbacks(h)
    # STOPPING waits on STOP_TIMEOUT after a stop, on KILL_TIMEOUT once SIGKILL was sent.
    pending_here = pending_in(state, walk)
    if state is S.STOPPING:
        pending_here = T.KILL_TIMEOUT if trigger is T.KILL_TIMEOUT else T.STOP_TIMEOUT
    drive_to(h, state, pending_here)

    if trigger in TIMER_TRIGGERS:
        # A callback from an earlier timer carries an old token: ignored in every state,
        # even where the trigger itself would be legal.
        if trigger in stale:
            before = snapshot(h)
            stale[trigger]()
            assert snapshot(h) == before, "a stale timer callback changed something"
        if trigger is not pending_here:
            return  # nothing else can deliver this trigger in this state

    before = snapshot(h)
    events_before = len(h.effects.events)
    fire(h, trigger)

    allowed = TRANSITIONS.get((state, trigger))
    if allowed is None:
        assert snapshot(h)[:4] == before[:4], f"{state.name} + {trigger.name} should be ignored"
        return
    assert h.state in allowed
    moves = [d for k, _, d in h.effects.events[events_before:] if k == "state"]
    if moves:
        assert moves[0]["from"] == state.value
        assert moves[0]["trigger"] == trigger.value


def test_table_mentions_only_real_states_and_triggers() -> None:
    for (state, trigger), targets in TRANSITIONS.items():
        assert isinstance(state, State)
        assert isinstance(trigger, Trigger)
        assert targets
        assert all(isinstance(t, State) for t in targets)
    # Nothing leaves STOPPED except an operator start/restart.
    assert {t for (s, t) in TRANSITIONS if s is S.STOPPED} == {T.START, T.RESTART}


# -- autorestart ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [CLEAN_EXIT, CRASH, signal_status(signal.SIGSEGV)])
def test_autorestart_always_restarts_on_any_exit(status: int) -> None:
    h = harness(make_config(autorestart="always"))
    h.run_until_running()
    h.effects.advance(RESET_AFTER)
    h.program.exited(status)
    assert h.state is S.STARTING
    assert len(h.effects.spawns) == 2
    assert h.program.restarts == 1


@pytest.mark.parametrize("code", [0, 3])
def test_autorestart_on_failure_expected_exit_code_leaves_it_exited(code: int) -> None:
    h = harness(make_config(autorestart="on-failure", exit_codes=[0, 3]))
    h.run_until_running()
    h.program.exited(exit_status(code))
    assert h.state is S.EXITED
    assert len(h.effects.spawns) == 1
    last = h.program.last_exit
    assert last is not None
    assert last.code == code
    assert last.reason == "exited"
    h.effects.advance(10 * COOLDOWN)
    assert h.state is S.EXITED
    assert len(h.effects.spawns) == 1


@pytest.mark.parametrize("status", [exit_status(1), signal_status(signal.SIGKILL)])
def test_autorestart_on_failure_restarts_unexpected_exit(status: int) -> None:
    h = harness(make_config(autorestart="on-failure", exit_codes=[0, 3]))
    h.run_until_running()
    h.program.exited(status)
    assert h.state is S.BACKOFF
    last = h.program.last_exit
    assert last is not None
    assert last.reason == "crashed"
    h.effects.fire_pending()
    assert h.state is S.STARTING
    assert len(h.effects.spawns) == 2


def test_autorestart_never_leaves_a_crash_exited() -> None:
    h = harness(make_config(autorestart="never"))
    h.run_until_running()
    h.program.exited(CRASH)
    assert h.state is S.EXITED
    assert not h.effects.live_timers()
    h.effects.advance(10 * COOLDOWN)
    assert len(h.effects.spawns) == 1
    assert h.program.restarts == 0


# -- start_seconds -------------------------------------------------------------------------


def test_dying_before_start_seconds_is_a_quick_failure() -> None:
    # reset_after shorter than the run: still not healthy, since it never got RUNNING.
    h = harness(make_config(start_seconds=5.0, reset_after=0.5, initial=2.0))
    h.program.start()
    h.effects.advance(1.0)
    assert h.state is S.STARTING
    h.program.exited(CRASH)
    assert h.state is S.BACKOFF
    assert h.delay_of_pending() == pytest.approx(2.0)
    assert h.effects.kinds("backoff")[-1]["quick_failures"] == 1


def test_surviving_start_seconds_is_running() -> None:
    h = harness(make_config(start_seconds=5.0))
    h.program.start()
    h.effects.advance(4.999)
    assert h.state is S.STARTING
    h.effects.advance(0.001)
    assert h.state is S.RUNNING
    assert h.effects.transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]


def test_start_seconds_zero_is_running_immediately() -> None:
    h = harness(make_config(start_seconds=0.0))
    h.program.start()
    assert h.state is S.RUNNING
    assert h.effects.transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]
    assert not h.effects.live_timers()


# -- ready means serving (a liveness probe decides RUNNING) -----------------------------------


def probed(**kwargs: Any) -> Harness:
    return harness(make_config(start_timeout=START_TIMEOUT, **kwargs))


def test_with_a_probe_start_seconds_do_not_make_it_running() -> None:
    h = probed(start_seconds=1.0)
    h.program.start()
    h.effects.advance(START_TIMEOUT - 0.001)
    assert h.state is S.STARTING
    h.program.ready("HTTP 200")
    assert h.state is S.RUNNING
    assert h.effects.kinds("state")[-1]["trigger"] == T.READY.value
    assert not h.effects.live_timers(), "the start timeout is cancelled once it serves"


def test_with_a_probe_start_seconds_zero_is_still_starting() -> None:
    h = probed(start_seconds=0.0)
    h.program.start()
    assert h.state is S.STARTING


def test_no_probe_success_within_start_timeout_stops_it_gracefully_then_kills() -> None:
    h = probed()
    h.program.start()
    pid = h.program.pid
    h.effects.advance(START_TIMEOUT)
    assert h.state is S.STOPPING
    assert h.effects.kills == [(pid, signal.SIGTERM)]
    assert h.effects.kinds("state")[-1]["trigger"] == T.START_TIMEOUT.value
    h.effects.advance(STOP_TIMEOUT)
    assert h.effects.kills[-1] == (pid, signal.SIGKILL)
    h.program.exited(KILLED)
    assert h.state is S.BACKOFF
    assert h.program.last_exit is not None
    assert h.program.last_exit.reason.startswith("start_timeout")
    assert h.effects.kinds("exited")[-1]["restart"] is True


def test_a_failed_start_backs_off_like_a_quick_failure() -> None:
    # reset_after is shorter than the wait: still a quick failure, it never served.
    h = probed(initial=1.0, factor=2.0, reset_after=10.0, max_restarts=100)
    delays = []
    h.program.start()
    for _ in range(3):
        h.effects.advance(START_TIMEOUT)
        h.program.exited(exit_status(0))  # the gateway exits 0 on SIGTERM
        assert h.state is S.BACKOFF
        delays.append(h.delay_of_pending())
        h.effects.fire_pending()
        assert h.state is S.STARTING
    assert delays == pytest.approx([1.0, 2.0, 4.0])
    assert [b["quick_failures"] for b in h.effects.kinds("backoff")] == [1, 2, 3]


def test_failed_starts_count_toward_the_crash_loop_budget() -> None:
    h = probed(max_restarts=2, window=1000.0)
    h.program.start()
    for _ in range(2):
        h.effects.advance(START_TIMEOUT)
        h.program.exited(KILLED)
        assert h.state is S.BACKOFF
        h.effects.fire_pending()
    h.effects.advance(START_TIMEOUT)
    h.program.exited(KILLED)
    assert h.state is S.FATAL
    assert h.effects.kinds("crash_loop")[-1]["reason"] == "start_timeout"


def test_exit_while_waiting_for_the_probe_is_a_quick_failure_however_long() -> None:
    h = probed(reset_after=10.0, initial=2.0)
    h.program.start()
    h.effects.advance(20.0)
    h.program.exited(CRASH)
    assert h.state is S.BACKOFF
    assert h.delay_of_pending() == pytest.approx(2.0)


def test_a_failed_start_with_autorestart_never_leaves_it_exited() -> None:
    h = probed(autorestart="never")
    h.program.start()
    h.effects.advance(START_TIMEOUT)
    h.program.exited(exit_status(0))
    assert h.state is S.EXITED
    assert h.effects.kinds("exited")[-1]["restart"] is False
    assert len(h.effects.spawns) == 1


def test_stop_during_a_failed_start_stops_it_for_good() -> None:
    h = probed()
    h.program.start()
    h.effects.advance(START_TIMEOUT)
    h.program.stop()
    h.program.exited(exit_status(0))
    assert h.state is S.STOPPED
    assert len(h.effects.spawns) == 1


def test_a_trial_start_after_the_cooldown_must_serve_to_close_the_breaker() -> None:
    h = probed(max_restarts=1, window=1000.0)
    h.program.start()
    h.program.exited(CRASH)
    h.effects.fire_pending()
    h.program.exited(CRASH)
    assert h.state is S.FATAL
    h.effects.fire_pending()  # the cooldown: one trial start
    assert h.state is S.STARTING
    h.effects.advance(START_TIMEOUT)
    h.program.exited(KILLED)
    assert h.state is S.FATAL, "a trial start that never served is a failure"
    h.effects.fire_pending()
    h.program.ready()
    assert h.state is S.RUNNING


# -- backoff -------------------------------------------------------------------------------


def crash_quickly(h: Harness) -> float:
    """Run briefly, crash, and return the delay the machine chose before the next start."""
    h.effects.advance(2.0)
    h.program.exited(CRASH)
    assert h.state is S.BACKOFF
    delay = h.delay_of_pending()
    assert h.effects.kinds("backoff")[-1]["delay"] == pytest.approx(delay)
    return delay


@pytest.mark.parametrize(
    ("random_value", "expected"),
    [
        (0.5, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]),  # no jitter
        (0.75, [1.05, 2.1, 4.2, 8.0, 8.0, 8.0]),  # +5%, never past max
        (0.0, [0.9, 1.8, 3.6, 7.2, 7.2, 7.2]),  # -10%
    ],
)
def test_successive_quick_failures_back_off_exponentially_to_max(
    random_value: float, expected: list[float]
) -> None:
    h = harness(
        make_config(initial=1.0, factor=2.0, maximum=8.0, jitter=0.1, max_restarts=100),
        random_value=random_value,
    )
    h.run_until_running()
    delays = []
    for _ in expected:
        delays.append(crash_quickly(h))
        h.effects.fire_pending()
        assert h.state is S.STARTING
        h.effects.advance(START_SECONDS)
    assert delays == pytest.approx(expected)


def test_crash_after_a_healthy_run_restarts_immediately() -> None:
    """A crash after hours of service must not wait."""
    h = harness()
    h.run_until_running()
    h.effects.advance(3 * 3600.0)
    h.program.exited(signal_status(signal.SIGSEGV))
    assert h.state is S.STARTING
    assert h.effects.transitions[-1] == (S.RUNNING, S.STARTING)
    assert S.BACKOFF not in {new for _, new in h.effects.transitions}
    assert len(h.effects.spawns) == 2
    assert h.program.restarts == 1
    assert not h.effects.kinds("backoff")


def test_run_of_exactly_reset_after_counts_as_healthy() -> None:
    h = harness()
    h.run_until_running()
    h.effects.advance(RESET_AFTER - START_SECONDS)
    h.program.exited(CRASH)
    assert h.state is S.STARTING


def test_healthy_run_resets_the_backoff_sequence() -> None:
    h = harness(make_config(max_restarts=100))
    h.run_until_running()
    assert crash_quickly(h) == pytest.approx(1.0)
    h.effects.fire_pending()
    h.effects.advance(START_SECONDS)
    assert crash_quickly(h) == pytest.approx(2.0)
    h.effects.fire_pending()
    h.effects.advance(RESET_AFTER)
    h.program.exited(CRASH)
    assert h.state is S.STARTING  # immediate
    h.effects.advance(START_SECONDS)
    assert crash_quickly(h) == pytest.approx(1.0)  # and the sequence starts over


# -- crash loop ----------------------------------------------------------------------------


def crash_into_fatal(h: Harness) -> None:
    """Quick crashes until the crash-loop breaker trips."""
    max_restarts = h.program.config.crash_loop.max_restarts
    h.program.start()
    for _ in range(max_restarts):
        h.effects.advance(0.1)
        h.program.exited(CRASH)
        assert h.state is S.BACKOFF
        h.effects.fire_pending()
        assert h.state is S.STARTING
    h.effects.advance(0.1)
    h.program.exited(CRASH)


def test_max_restarts_within_window_is_fatal_with_cooldown() -> None:
    h = harness(make_config(max_restarts=3, window=60.0, cooldown=COOLDOWN))
    crash_into_fatal(h)
    assert h.state is S.FATAL
    assert h.program.restarts == 3
    assert len(h.effects.spawns) == 4
    crash_loop = h.effects.kinds("crash_loop")
    assert len(crash_loop) == 1
    assert crash_loop[0]["cooldown"] == COOLDOWN
    assert h.delay_of_pending() == pytest.approx(COOLDOWN)
    status = h.program.status()
    assert status.next_start_in == pytest.approx(COOLDOWN)
    assert "crash loop" in status.description
    h.effects.advance(COOLDOWN - 0.001)
    assert h.state is S.FATAL
    assert len(h.effects.spawns) == 4


def test_restarts_spread_beyond_the_window_are_not_a_crash_loop() -> None:
    h = harness(make_config(max_restarts=2, window=10.0, initial=1.0, maximum=1.0))
    h.run_until_running()
    for _ in range(5):
        h.effects.advance(20.0)  # each run ends more than a window after the last restart
        h.program.exited(CRASH)
        assert h.state is S.BACKOFF
        h.effects.fire_pending()
        h.effects.advance(START_SECONDS)
    assert not h.effects.kinds("crash_loop")


def test_after_cooldown_one_trial_start_that_survives_closes_the_breaker() -> None:
    h = harness(make_config(max_restarts=3))
    crash_into_fatal(h)
    spawned = len(h.effects.spawns)
    h.effects.advance(COOLDOWN)
    assert h.state is S.STARTING
    assert len(h.effects.spawns) == spawned + 1
    assert h.program.status().next_start_in is None
    h.effects.advance(START_SECONDS)
    assert h.state is S.RUNNING
    # Breaker closed: crashes back off normally again, from the first step.
    for expected in (1.0, 2.0, 4.0):
        assert crash_quickly(h) == pytest.approx(expected)
        h.effects.fire_pending()
        h.effects.advance(START_SECONDS)
    assert len(h.effects.kinds("crash_loop")) == 1


def test_after_cooldown_a_trial_that_dies_is_fatal_again() -> None:
    h = harness(make_config(max_restarts=3))
    crash_into_fatal(h)
    h.effects.advance(COOLDOWN)
    assert h.state is S.STARTING
    h.effects.advance(0.2)
    h.program.exited(CRASH)
    assert h.state is S.FATAL
    assert len(h.effects.kinds("crash_loop")) == 2
    assert h.delay_of_pending() == pytest.approx(COOLDOWN)
    # ... and tries once more after the next cooldown.
    spawned = len(h.effects.spawns)
    h.effects.advance(COOLDOWN)
    assert h.state is S.STARTING
    assert len(h.effects.spawns) == spawned + 1


def test_operator_start_from_fatal_forgets_the_crash_history() -> None:
    h = harness(make_config(max_restarts=3))
    crash_into_fatal(h)
    h.program.start()
    assert h.state is S.STARTING
    h.effects.advance(0.1)
    h.program.exited(CRASH)
    assert h.state is S.BACKOFF  # a fresh budget, not FATAL
    assert h.delay_of_pending() == pytest.approx(1.0)


# -- stop ----------------------------------------------------------------------------------


def test_stop_sends_the_configured_stop_signal_to_the_group_then_stops() -> None:
    h = harness(make_config(stop_signal="SIGINT"))
    h.run_until_running()
    pid = h.program.pid
    h.program.stop()
    assert h.state is S.STOPPING
    assert h.effects.kills == [(pid, signal.SIGINT)]
    h.effects.advance(1.0)
    h.program.exited(signal_status(signal.SIGINT))
    assert h.state is S.STOPPED
    assert h.program.pid is None
    h.effects.advance(10 * STOP_TIMEOUT)
    assert h.effects.kills == [(pid, signal.SIGINT)]  # the stop timer was cancelled
    last = h.program.last_exit
    assert last is not None
    assert last.signal == "SIGINT"
    assert last.reason == "stopped"


def test_stop_escalates_to_sigkill_and_reports_unkillable_never_stopped() -> None:
    h = harness()
    h.run_until_running()
    pid = h.program.pid
    h.program.stop()
    h.effects.advance(STOP_TIMEOUT - 0.001)
    assert h.effects.kills == [(pid, signal.SIGTERM)]
    h.effects.advance(0.001)
    assert h.effects.kills == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]
    assert h.state is S.STOPPING
    assert not h.program.unkillable
    h.effects.advance(KILL_TIMEOUT)
    assert h.program.unkillable
    assert h.state is S.STOPPING
    assert h.program.pid == pid
    status = h.program.status()
    assert status.unkillable
    assert status.state == "STOPPING"
    assert "SIGKILL" in status.description
    assert h.effects.kinds("unkillable") == [{"pid": pid}]
    h.effects.advance(3600.0)
    assert h.state is S.STOPPING  # however long it takes
    h.program.exited(KILLED)
    assert h.state is S.STOPPED
    assert not h.program.unkillable
    assert not h.program.status().unkillable
    last = h.program.last_exit
    assert last is not None
    assert last.signal == "SIGKILL"
    assert "unkillable" in last.reason


def test_stop_while_starting_cancels_the_start_seconds_timer() -> None:
    h = harness()
    h.program.start()
    h.program.stop()
    assert h.state is S.STOPPING
    h.effects.advance(START_SECONDS)
    assert h.state is S.STOPPING
    h.program.exited(signal_status(signal.SIGTERM))
    assert h.state is S.STOPPED


@pytest.mark.parametrize("state", [S.BACKOFF, S.FATAL, S.EXITED])
def test_stop_without_a_process_is_stopped_at_once_and_never_starts(state: State) -> None:
    h = harness(walk_config())
    drive_to(h, state)
    h.program.stop()
    assert h.state is S.STOPPED
    assert h.program.status().next_start_in is None
    spawned = len(h.effects.spawns)
    h.effects.advance(10 * COOLDOWN)
    assert len(h.effects.spawns) == spawned
    assert h.state is S.STOPPED


# -- restart -------------------------------------------------------------------------------


def test_restart_while_running_stops_then_starts_again() -> None:
    h = harness()
    h.run_until_running()
    old = h.program.pid
    h.program.restart(RestartReason.REQUESTED)
    assert h.state is S.STOPPING
    assert h.effects.kills == [(old, signal.SIGTERM)]
    h.program.exited(signal_status(signal.SIGTERM))
    assert h.state is S.STARTING
    assert h.program.restarts == 1
    assert h.program.pid not in (None, old)
    assert h.effects.transitions[-2:] == [(S.RUNNING, S.STOPPING), (S.STOPPING, S.STARTING)]


def test_restart_while_backoff_spawns_immediately() -> None:
    h = harness()
    h.run_until_running()
    crash_quickly(h)
    late = h.effects.pending()
    h.program.restart()
    assert h.state is S.STARTING
    assert len(h.effects.spawns) == 2
    late.callback()  # the backoff timer, had it not been cancelled
    h.effects.advance(100.0)
    assert len(h.effects.spawns) == 2
    assert h.state is S.RUNNING


def test_restart_while_stopping_starts_after_the_exit() -> None:
    h = harness()
    h.run_until_running()
    h.program.stop()
    h.program.restart()
    assert h.state is S.STOPPING
    assert len(h.effects.kills) == 1  # no second stop signal
    h.program.exited(signal_status(signal.SIGTERM))
    assert h.state is S.STARTING
    assert h.program.restarts == 1


def test_stop_during_stopping_for_restart_cancels_the_restart() -> None:
    h = harness()
    h.run_until_running()
    h.program.restart()
    h.program.stop()
    assert h.state is S.STOPPING
    h.program.exited(signal_status(signal.SIGTERM))
    assert h.state is S.STOPPED
    assert len(h.effects.spawns) == 1
    h.effects.advance(10 * COOLDOWN)
    assert len(h.effects.spawns) == 1


# -- hang ----------------------------------------------------------------------------------


def test_hang_kills_with_sigkill_straight_away_then_respawns() -> None:
    h = harness()
    h.run_until_running()
    h.effects.advance(RESET_AFTER)
    pid = h.program.pid
    h.program.hang_detected("state: D for 10.0s")
    assert h.effects.kills == [(pid, signal.SIGKILL)]  # never SIGTERM: it cannot run it
    assert h.state is S.STOPPING
    assert h.program.status().hung
    h.program.exited(KILLED)
    assert h.state is S.STARTING  # after a healthy run, at once
    assert h.program.pid not in (None, pid)
    assert not h.program.hung
    last = h.program.last_exit
    assert last is not None
    assert last.signal == "SIGKILL"
    assert "hung" in last.reason
    assert "state: D" in last.reason


def test_hang_still_present_after_sigkill_is_unkillable() -> None:
    h = harness()
    h.run_until_running()
    h.program.hang_detected("state: D for 10.0s")
    h.effects.advance(KILL_TIMEOUT)
    assert h.program.unkillable
    assert h.state is S.STOPPING
    h.program.exited(KILLED)
    assert not h.program.unkillable
    assert h.state in (S.STARTING, S.BACKOFF)


def test_hang_respawn_counts_toward_the_crash_loop() -> None:
    h = harness(make_config(max_restarts=1))
    h.run_until_running()
    h.program.hang_detected("state: D for 10.0s")
    h.program.exited(KILLED)
    assert h.state is S.BACKOFF  # a quick failure: it backs off
    h.effects.fire_pending()
    h.effects.advance(0.1)
    h.program.exited(CRASH)
    assert h.state is S.FATAL


def test_hang_respawn_counts_one_restart() -> None:
    h = harness()
    h.run_until_running()
    h.effects.advance(RESET_AFTER)
    h.program.hang_detected("state: D for 10.0s")
    h.program.exited(KILLED)
    assert len(h.effects.spawns) == 2
    assert h.program.restarts == 1


def test_a_requested_restart_whose_text_says_hung_does_not_count_toward_the_crash_loop() -> None:
    # As test_hang_respawn_counts_toward_the_crash_loop, but asked for by a client whose
    # free text spells an internal reason: it starts again at once, and never goes FATAL.
    h = harness(make_config(max_restarts=1))
    h.run_until_running()
    for _ in range(3):
        h.program.restart(RestartReason.REQUESTED, "hung")
        h.program.exited(KILLED)
        assert h.state is S.STARTING
        h.effects.advance(h.program.config.start_seconds)
    assert h.state is S.RUNNING
    assert not h.effects.kinds("backoff")
    assert not h.effects.kinds("crash_loop")
    restarted = h.effects.kinds("restarted")
    assert [(r["reason"], r["detail"]) for r in restarted] == [("requested", "hung")] * 3
    assert [e["cause"] for e in h.effects.kinds("exited")] == ["stopped"] * 3
    last = h.program.last_exit
    assert last is not None
    assert last.reason == "requested: hung"


def test_hang_is_ignored_when_there_is_no_process_to_kill() -> None:
    for state in (S.STOPPED, S.BACKOFF, S.EXITED, S.FATAL):
        h = harness(walk_config())
        drive_to(h, state)
        kills = list(h.effects.kills)
        h.program.hang_detected("state: D")
        assert h.state is state
        assert h.effects.kills == kills


# -- spawn failure -------------------------------------------------------------------------


def test_spawn_failure_backs_off_then_goes_fatal_without_raising() -> None:
    h = harness(make_config(max_restarts=3))
    h.effects.spawn_error = "cannot start gateway: clawdbot: no such file"
    h.program.start()
    assert h.state is S.BACKOFF
    last = h.program.last_exit
    assert last is not None
    assert last.reason == "spawn failed: cannot start gateway: clawdbot: no such file"
    assert last.code is None
    assert last.signal is None
    assert h.program.pid is None
    for _ in range(3):
        h.effects.fire_pending()
    assert h.state is S.FATAL
    assert h.effects.spawn_attempts == 4
    assert not h.effects.spawns
    assert h.effects.kinds("crash_loop")
    # The trial after the cooldown fails too: FATAL again, still no exception.
    assert h.delay_of_pending() == pytest.approx(COOLDOWN)
    h.effects.fire_pending()
    assert h.state is S.FATAL
    assert h.effects.spawn_attempts == 5
    # Once the command is fixed, the next trial starts it.
    h.effects.spawn_error = None
    h.effects.fire_pending()
    assert h.state is S.STARTING
    h.effects.advance(START_SECONDS)
    assert h.state is S.RUNNING


def test_spawn_failure_with_autorestart_never_is_exited() -> None:
    h = harness(make_config(autorestart="never"))
    h.effects.spawn_error = "permission denied"
    h.program.start()
    assert h.state is S.EXITED
    assert not h.effects.live_timers()
    last = h.program.last_exit
    assert last is not None
    assert last.reason.startswith("spawn failed: ")


def test_spawn_failure_on_respawn_after_restart_backs_off() -> None:
    h = harness()
    h.run_until_running()
    h.program.restart()
    h.effects.spawn_error = "no such file"
    h.program.exited(signal_status(signal.SIGTERM))
    assert h.state is S.BACKOFF
    assert h.program.pid is None


# -- late timers ---------------------------------------------------------------------------


@pytest.mark.parametrize("start_seconds", [START_SECONDS, 0.0])
def test_backoff_timer_captured_before_an_operator_start_is_ignored(
    start_seconds: float,
) -> None:
    h = harness(make_config(start_seconds=start_seconds))
    h.program.start()
    h.effects.advance(0.1)
    h.program.exited(CRASH)
    assert h.state is S.BACKOFF
    late = h.effects.pending().callback
    h.program.start()
    state, spawned = h.state, len(h.effects.spawns)
    late()
    assert h.state is state
    assert len(h.effects.spawns) == spawned


def test_start_seconds_timer_of_an_earlier_run_is_ignored() -> None:
    h = harness()
    h.program.start()
    late = h.effects.pending().callback
    h.program.exited(CRASH)
    h.effects.fire_pending()  # backoff elapsed: the second run is STARTING
    assert h.state is S.STARTING
    late()
    assert h.state is S.STARTING  # not promoted to RUNNING by the first run's timer


def test_stop_timeout_of_an_earlier_stop_does_not_kill_the_next_run() -> None:
    h = harness()
    h.run_until_running()
    h.program.restart()
    late = h.effects.pending().callback
    h.program.exited(signal_status(signal.SIGTERM))
    h.effects.advance(START_SECONDS)
    assert h.state is S.RUNNING
    kills = list(h.effects.kills)
    late()
    assert h.effects.kills == kills


# -- status --------------------------------------------------------------------------------


def test_status_of_a_stopped_program() -> None:
    h = harness()
    status = h.program.status()
    assert status.name == "gateway"
    assert status.state == "STOPPED"
    assert status.pid is None
    assert status.uptime is None
    assert status.restarts == 0
    assert status.last_exit is None
    assert status.next_start_in is None
    assert status.main


def test_status_uptime_and_pid_while_running() -> None:
    h = harness()
    h.program.start()
    h.effects.advance(0.5)
    status = h.program.status()
    assert status.state == "STARTING"
    assert status.pid == FIRST_PID
    assert status.uptime == pytest.approx(0.5)
    h.effects.advance(41.5)
    status = h.program.status()
    assert status.state == "RUNNING"
    assert status.uptime == pytest.approx(42.0)


def test_status_last_exit_and_next_start_in_while_backoff() -> None:
    h = harness(make_config(initial=4.0, maximum=8.0))
    h.run_until_running()
    h.effects.advance(2.0)
    h.program.exited(exit_status(7))
    status = h.program.status()
    assert status.state == "BACKOFF"
    assert status.pid is None
    assert status.uptime is None
    assert status.restarts == 1
    assert status.last_exit is not None
    assert status.last_exit.code == 7
    assert status.last_exit.signal is None
    assert status.last_exit.reason == "crashed"
    assert status.last_exit.at == pytest.approx(h.clock.time())
    assert status.next_start_in == pytest.approx(4.0)
    assert status.description == "restarting in 4.0s"
    h.effects.advance(1.5)
    assert h.program.status().next_start_in == pytest.approx(2.5)
    h.effects.advance(2.5)
    assert h.program.status().next_start_in is None
    assert h.program.status().state == "STARTING"


def test_status_last_exit_names_the_signal() -> None:
    h = harness()
    h.run_until_running()
    h.program.exited(signal_status(signal.SIGSEGV))
    last = h.program.status().last_exit
    assert last is not None
    assert last.code is None
    assert last.signal == "SIGSEGV"
    assert last.describe() == "signal SIGSEGV (crashed)"


# -- any sequence of events ----------------------------------------------------------------

ACTIONS = st.one_of(
    st.tuples(st.sampled_from(["start", "stop", "restart", "hang", "spawn_ok", "spawn_fail"])),
    st.tuples(st.just("exit"), st.sampled_from([CLEAN_EXIT, CRASH, KILLED, signal_status(signal.SIGTERM)])),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 5.0, 10.0, 61.0, 301.0])),
)


@settings(max_examples=300, deadline=None)
@given(
    actions=st.lists(ACTIONS, max_size=40),
    autorestart=st.sampled_from(["always", "on-failure", "never"]),
    start_seconds=st.sampled_from([0.0, START_SECONDS]),
)
def test_any_sequence_keeps_one_process_and_consistent_state(
    actions: list[tuple[Any, ...]], autorestart: str, start_seconds: float
) -> None:
    h = harness(make_config(autorestart=autorestart, start_seconds=start_seconds, max_restarts=3))
    p, fx = h.program, h.effects
    exited: set[int] = set()
    restarts = 0
    for action in actions:
        kind = action[0]
        if kind == "start":
            p.start()
        elif kind == "stop":
            p.stop()
        elif kind == "restart":
            p.restart()
        elif kind == "hang":
            p.hang_detected("state: D")
        elif kind == "spawn_ok":
            fx.spawn_error = None
        elif kind == "spawn_fail":
            fx.spawn_error = "no such file"
        elif kind == "exit":
            if p.pid is not None:  # the reaper only reports our own child
                exited.add(p.pid)
                p.exited(action[1])
        else:
            fx.advance(action[1])

        live = set(fx.spawns) - exited
        assert live == ({p.pid} if p.pid is not None else set()), "never two gateways"
        has_process = p.state in (S.STARTING, S.RUNNING, S.STOPPING)
        assert (p.pid is not None) == has_process
        if p.unkillable or p.hung:
            assert p.state is S.STOPPING
        if p.state in (S.BACKOFF, S.FATAL):
            assert p.status().next_start_in is not None  # it will try again by itself
        if p.state is S.STARTING and start_seconds > 0:
            assert fx.live_timers()
        assert p.restarts >= restarts
        restarts = p.restarts


def test_hurry_kills_a_stopping_program_now_and_is_ignored_otherwise() -> None:
    h = harness()
    h.run_until_running()
    pid = h.program.pid
    h.program.hurry()  # RUNNING: nothing to hurry
    assert h.effects.kills == []
    h.program.stop()
    h.effects.advance(0.001)
    h.program.hurry()
    assert h.effects.kills == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]
    assert h.state is S.STOPPING
    # The stop timeout that was due is gone: no second SIGKILL when it would have fired.
    h.effects.advance(STOP_TIMEOUT)
    assert h.effects.kills == [(pid, signal.SIGTERM), (pid, signal.SIGKILL)]
    h.program.hurry()  # already killed: nothing more to do
    assert len(h.effects.kills) == 2
    h.program.exited(KILLED)
    assert h.state is S.STOPPED
