"""A supervised program's state machine: the one place a program's state changes.

Every change goes through ``Program._transition``, which checks it against ``TRANSITIONS``
(the legal moves for each (state, trigger) pair), timestamps it and reports it. Each
trigger is its own method that looks at the current state first; a timer that fires late
(after the state moved on) carries a stale token and is ignored on purpose.

The machine does no I/O. Spawning, signalling, timers and publishing are done through the
``Effects`` the event loop passes in, and time comes from a ``Clock``: tests drive every
(state, trigger) pair with fakes for both.
"""

from __future__ import annotations

import enum
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from clawsup.protocol import LastExit, LivenessState, ProgramStatus
from clawsup.supervisor.backoff import (
    backoff_delay,
    is_crash_loop,
    next_quick_failures,
    with_jitter,
)
from clawsup.supervisor.config import ProgramConfig
from clawsup.supervisor.kinds import (
    Backoff,
    CrashLoop,
    ExitCause,
    Exited,
    Payload,
    Restarted,
    RestartReason,
    StateChanged,
    Unkillable,
    describe_reason,
)

# After SIGKILL a process normally vanishes at once; one still present after this long is
# stuck in the kernel (D state on a dead NFS mount, a FUSE server that never answers...).
KILL_TIMEOUT = 5.0


class State(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class Trigger(enum.Enum):
    START = "start"  # operator or autostart
    STOP = "stop"  # operator or shutdown
    RESTART = "restart"  # operator, or a recovery (liveness, zombie leak, stuck message)
    HUNG = "hung"  # D state for d_state_after: SIGKILL now, then start again
    EXITED = "exited"  # the reaper got the main process' status
    SPAWN_FAILED = "spawn_failed"  # exec failed: no such command, permission...
    START_SECONDS_ELAPSED = "start_seconds_elapsed"
    BACKOFF_ELAPSED = "backoff_elapsed"
    STOP_TIMEOUT = "stop_timeout"  # stop signal sent stop_timeout ago and still alive
    KILL_TIMEOUT = "kill_timeout"  # SIGKILL sent KILL_TIMEOUT ago and still alive
    COOLDOWN_ELAPSED = "cooldown_elapsed"  # crash-loop FATAL is over: one trial start
    READY = "ready"  # its liveness probe passed for the first time since the spawn
    START_TIMEOUT = "start_timeout"  # no probe passed within liveness.start_timeout


S, T = State, Trigger

# The legal moves: (state, trigger) -> the states that trigger may lead to. A pair that is
# not here is ignored (the program stays where it is). Several targets where the outcome
# depends on the exit status, autorestart or the crash-loop budget.
TRANSITIONS: dict[tuple[State, Trigger], frozenset[State]] = {
    (S.STOPPED, T.START): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.EXITED, T.START): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.FATAL, T.START): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.BACKOFF, T.START): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.STOPPED, T.RESTART): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.EXITED, T.RESTART): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.FATAL, T.RESTART): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.BACKOFF, T.RESTART): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.STARTING, T.RESTART): frozenset({S.STOPPING}),
    (S.RUNNING, T.RESTART): frozenset({S.STOPPING}),
    (S.STOPPING, T.RESTART): frozenset({S.STOPPING}),
    (S.STARTING, T.STOP): frozenset({S.STOPPING}),
    (S.RUNNING, T.STOP): frozenset({S.STOPPING}),
    (S.STOPPING, T.STOP): frozenset({S.STOPPING}),
    (S.BACKOFF, T.STOP): frozenset({S.STOPPED}),
    (S.FATAL, T.STOP): frozenset({S.STOPPED}),
    (S.EXITED, T.STOP): frozenset({S.STOPPED}),
    (S.STARTING, T.HUNG): frozenset({S.STOPPING}),
    (S.RUNNING, T.HUNG): frozenset({S.STOPPING}),
    (S.STARTING, T.START_SECONDS_ELAPSED): frozenset({S.RUNNING}),
    (S.STARTING, T.READY): frozenset({S.RUNNING}),
    (S.STARTING, T.START_TIMEOUT): frozenset({S.STOPPING}),
    (S.STARTING, T.EXITED): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.RUNNING, T.EXITED): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.STOPPING, T.EXITED): frozenset(
        {S.STOPPED, S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}
    ),
    (S.STARTING, T.SPAWN_FAILED): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
    (S.BACKOFF, T.BACKOFF_ELAPSED): frozenset(
        {S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}
    ),
    (S.STOPPING, T.STOP_TIMEOUT): frozenset({S.STOPPING}),
    (S.STOPPING, T.KILL_TIMEOUT): frozenset({S.STOPPING}),
    (S.FATAL, T.COOLDOWN_ELAPSED): frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.FATAL, S.EXITED}),
}


class SpawnError(Exception):
    """The program could not be started at all (exec failed); the message says why."""


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Effects(Protocol):
    """What the machine asks the event loop to do; the loop's implementation does I/O."""

    def spawn(self, program: Program) -> int:
        """Start the program's command in a new process group; return its PID."""
        ...

    def kill(self, program: Program, signum: int) -> None:
        """Send ``signum`` to every process of the program's tree (tree.py)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...

    def publish(self, program: Program, payload: Payload, message: str) -> None: ...

    def transitioned(self, program: Program, old: State, new: State) -> None: ...

    def random(self) -> float:
        """A number in [0, 1), for jitter."""
        ...


@dataclass
class _Run:
    """The current process of a program."""

    pid: int
    started: float  # monotonic
    started_wall: float


def describe_status(status: int) -> tuple[int | None, str | None]:
    """A waitpid status as (exit code, signal name)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return None, name
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


# eq=False: a Program is equal only to itself, and hashable, so that what the loop keeps
# per program (its watch, watch.py) is keyed on the object: a reload may remove a name
# and add it again while the old program is still stopping.
@dataclass(eq=False)
class Program:
    """One ``[programs.NAME]``: its config, its state and the process it runs."""

    name: str
    config: ProgramConfig
    effects: Effects
    clock: Clock
    state: State = State.STOPPED
    restarts: int = 0
    last_exit: LastExit | None = None
    unkillable: bool = False
    hung: bool = False
    extra_environment: dict[str, str] = field(default_factory=dict)
    _run: _Run | None = None
    _quick_failures: int = 0
    _restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    _timer: TimerHandle | None = None
    _timer_token: int = 0
    _pending: Trigger | None = None  # what the current timer will fire
    _next_start_at: float | None = None
    # Why we are stopping it (so its exit is attributed), and whether to start it again.
    _stop_reason: str = ""
    _restart_reason: RestartReason | None = None
    _restart_detail: str = ""  # a client's free text, or what failed
    _crash_loop_trial: bool = False
    _start_reason: str = "start"  # text, for the state event
    # Why the next spawn restarts it (the restarted event): never a client's text.
    _restarted_for: RestartReason = RestartReason.REQUESTED
    _restarted_detail: str = ""

    # -- what the loop and the control socket read ----------------------------------------

    @property
    def pid(self) -> int | None:
        return self._run.pid if self._run else None

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    @property
    def is_main(self) -> bool:
        return self.config.main

    def uptime(self) -> float | None:
        if self._run is None or self.state not in (State.RUNNING, State.STARTING):
            return None
        return self.clock.monotonic() - self._run.started

    def status(self, liveness: LivenessState = "off") -> ProgramStatus:
        next_in = None
        if self._next_start_at is not None and self.state in (State.BACKOFF, State.FATAL):
            next_in = max(0.0, self._next_start_at - self.clock.monotonic())
        return ProgramStatus(
            name=self.name,
            state=self.state.value,
            pid=self.pid,
            restarts=self.restarts,
            uptime=self.uptime(),
            last_exit=self.last_exit,
            main=self.is_main,
            hung=self.hung,
            unkillable=self.unkillable,
            liveness=liveness,
            next_start_in=next_in,
            description=self._describe(),
        )

    def _describe(self) -> str:
        if self.unkillable:
            return "still present after SIGKILL (stuck in the kernel)"
        if self.state is State.FATAL:
            return "crash loop: waiting for cooldown" if self._next_start_at else "gave up"
        if self.state is State.BACKOFF and self._next_start_at is not None:
            return f"restarting in {max(0.0, self._next_start_at - self.clock.monotonic()):.1f}s"
        return ""

    # -- triggers ----------------------------------------------------------------------------

    def start(self, reason: str = "start") -> None:
        if (self.state, T.START) not in TRANSITIONS:
            return
        # An operator's start is a fresh start: forget the crash history.
        self._quick_failures = 0
        self._restart_times.clear()
        self._crash_loop_trial = False
        self._start_reason = reason
        self._spawn(T.START)

    def stop(self, reason: str = "stopped") -> None:
        if (self.state, T.STOP) not in TRANSITIONS:
            return
        self._restart_reason = None
        if self.state in (State.BACKOFF, State.FATAL, State.EXITED):
            self._cancel_timer()
            self._next_start_at = None
            self._transition(State.STOPPED, T.STOP, reason)
            return
        if self.state is State.STOPPING:
            return  # already on its way down; the restart (if any) is now cancelled
        self._stop_reason = reason
        self._send_stop_signal(T.STOP, reason)

    def restart(self, reason: RestartReason = RestartReason.REQUESTED, detail: str = "") -> None:
        """Stop it and start it again. ``detail`` is free text (a client's, say) carried
        beside the reason: only ``reason`` decides what the restart counts as."""
        if (self.state, T.RESTART) not in TRANSITIONS:
            return
        text = describe_reason(reason, detail)
        if self.state in (State.STARTING, State.RUNNING):
            self._restart_reason, self._restart_detail = reason, detail
            self._stop_reason = text
            self._send_stop_signal(T.RESTART, f"restarting: {text}")
        elif self.state is State.STOPPING:
            self._restart_reason, self._restart_detail = reason, detail
            self._transition(State.STOPPING, T.RESTART, f"will start again: {text}")
        else:
            self._quick_failures = 0
            self._restart_times.clear()
            self._restarting_for(reason, detail)
            self._spawn(T.RESTART)

    def _restarting_for(self, reason: RestartReason, detail: str = "") -> None:
        self._start_reason = describe_reason(reason, detail)
        self._restarted_for, self._restarted_detail = reason, detail

    def hurry(self) -> None:
        """Stopping and the operator will not wait (a second stop signal): do now what
        the stop timeout would do, SIGKILL the group."""
        if self.state is State.STOPPING and self._pending is T.STOP_TIMEOUT:
            self._kill_group(T.STOP_TIMEOUT, "hurried by a second stop signal, sent SIGKILL")

    def hang_detected(self, description: str) -> None:
        """D state held for ``d_state_after``: the process cannot run its SIGTERM handler,
        so go straight to SIGKILL of the group, then start again."""
        if (self.state, T.HUNG) not in TRANSITIONS:
            return
        self.hung = True
        self._restart_reason, self._restart_detail = RestartReason.HUNG, ""
        self._stop_reason = f"hung ({description})"
        self.effects.kill(self, signal.SIGKILL)
        self._transition(State.STOPPING, T.HUNG, f"hung ({description}), sent SIGKILL")
        self._set_timer(KILL_TIMEOUT, T.KILL_TIMEOUT)

    def exited(self, status: int) -> None:
        """The reaper got our process' wait status."""
        if self._run is None or (self.state, T.EXITED) not in TRANSITIONS:
            return
        self._handle_exit(status, self._run)

    def _publish_exit(self, pid: int, restart: bool, cause: ExitCause) -> None:
        """The "exited" event, before whatever the exit leads to (a respawn...)."""
        last = self.last_exit
        assert last is not None
        self.effects.publish(
            self, Exited(pid=pid, code=last.code, signal=last.signal, reason=last.reason,
                         restart=restart, cause=cause),
            f"{self.name} (pid {pid}) exited: {last.describe()}",
        )

    def _handle_exit(self, status: int, run: _Run) -> None:
        now = self.clock.monotonic()
        run_seconds = now - run.started
        code, signame = describe_status(status)
        self._cancel_timer()
        self._run = None
        was_unkillable, self.unkillable = self.unkillable, False
        self.hung = False
        if self.state is State.STOPPING:
            reason = self._stop_reason or "stopped"
            if was_unkillable:
                reason += "; finally exited after being unkillable"
            self.last_exit = LastExit(code=code, signal=signame, reason=reason, at=self.clock.time())
            # A failed start stays down where a crash would (autorestart = "never").
            stays_down = (self._restart_reason is RestartReason.START_TIMEOUT
                          and self.config.autorestart == "never")
            self._publish_exit(run.pid, restart=self._restart_reason is not None and not stays_down,
                               cause=ExitCause.STOPPED)
            if self._restart_reason is None:
                self._transition(State.STOPPED, T.EXITED, f"stopped ({self.last_exit.describe()})")
                return
            restart_reason, self._restart_reason = self._restart_reason, None
            self._restarting_for(restart_reason, self._restart_detail)
            if stays_down:
                self._transition(State.EXITED, T.EXITED, f"{reason}; autorestart is never")
            elif restart_reason is RestartReason.HUNG:
                # A hang is a failure: it counts toward the crash-loop budget.
                self._quick_failures = next_quick_failures(
                    self._quick_failures, run_seconds, self.config.backoff.reset_after
                )
                self._after_failure(T.EXITED, run_seconds, RestartReason.HUNG)  # counts it
            elif restart_reason is RestartReason.START_TIMEOUT:
                # It never served: a quick failure however long the wait was.
                self._quick_failures += 1
                self._after_failure(T.EXITED, run_seconds, RestartReason.START_TIMEOUT)
            else:
                self.restarts += 1
                self._spawn(T.EXITED)
            return

        expected = code is not None and code in self.config.exit_codes
        cause = ExitCause.EXITED if expected else ExitCause.CRASHED
        self.last_exit = LastExit(code=code, signal=signame, reason=cause.value, at=self.clock.time())
        policy = self.config.autorestart
        stays_down = policy == "never" or (policy == "on-failure" and expected)
        self._publish_exit(run.pid, restart=not stays_down, cause=cause)
        if stays_down:
            self._transition(State.EXITED, T.EXITED, self.last_exit.describe())
            return
        if self.state is State.STARTING:
            # Died before start_seconds or before its probe first passed: never a healthy
            # run, whatever reset_after says (a cold gateway is STARTING for up to a minute).
            self._quick_failures += 1
        else:
            self._quick_failures = next_quick_failures(
                self._quick_failures, run_seconds, self.config.backoff.reset_after
            )
        self._after_failure(T.EXITED, run_seconds,
                            RestartReason.EXITED if expected else RestartReason.CRASHED)

    def ready(self, detail: str = "liveness probe passed") -> None:
        """Its liveness probe passed for the first time since the spawn: it serves."""
        if self._run is None or (self.state, T.READY) not in TRANSITIONS:
            return
        self._cancel_timer()
        self._running(T.READY, f"serving: {detail}")

    def spawn_failed(self, error: str) -> None:
        """exec failed: there is no process. Only meaningful while STARTING without one."""
        if self._run is not None or (self.state, T.SPAWN_FAILED) not in TRANSITIONS:
            return
        self.last_exit = LastExit(code=None, signal=None, reason=f"spawn failed: {error}",
                                  at=self.clock.time())
        self._quick_failures = max(self._quick_failures + 1, 1)
        if self.config.autorestart == "never":
            self._transition(State.EXITED, T.SPAWN_FAILED, self.last_exit.reason)
            return
        self._after_failure(T.SPAWN_FAILED, 0.0, RestartReason.SPAWN_FAILED, error)

    def _on_timer(self, token: int, trigger: Trigger) -> None:
        if token != self._timer_token or (self.state, trigger) not in TRANSITIONS:
            return  # a timer that fired after the state moved on
        self._timer = None
        self._pending = None
        if trigger is T.START_SECONDS_ELAPSED:
            self._running(trigger)
        elif trigger is T.BACKOFF_ELAPSED:
            self._next_start_at = None
            self._spawn(trigger)
        elif trigger is T.COOLDOWN_ELAPSED:
            self._next_start_at = None
            self._crash_loop_trial = True
            self._restart_times.clear()
            self._spawn(trigger)
        elif trigger is T.START_TIMEOUT:
            # Stopped as any stop is (stop signal, SIGKILL after stop_timeout); its exit
            # then counts as a failed start (_handle_exit).
            why = (f"start_timeout: not serving {self.config.liveness.start_timeout:g}s after "
                   "the spawn (no liveness probe passed)" if self.config.liveness is not None
                   else "start_timeout")
            self._restart_reason, self._restart_detail = RestartReason.START_TIMEOUT, ""
            self._stop_reason = why
            self._send_stop_signal(trigger, why)
        elif trigger is T.STOP_TIMEOUT:
            self._kill_group(
                trigger, f"did not stop within {self.config.stop_timeout:g}s, sent SIGKILL"
            )
        elif trigger is T.KILL_TIMEOUT:
            self.unkillable = True
            self._transition(State.STOPPING, trigger, "still present after SIGKILL (unkillable)")
            self.effects.publish(
                self, Unkillable(pid=self.pid),
                f"{self.name} is still present {KILL_TIMEOUT:g}s after SIGKILL "
                "(stuck in the kernel); it is not stopped",
            )

    # -- the steps -----------------------------------------------------------------------------

    def _kill_group(self, trigger: Trigger, reason: str) -> None:
        self.effects.kill(self, signal.SIGKILL)
        self._transition(State.STOPPING, trigger, reason)
        self._set_timer(KILL_TIMEOUT, T.KILL_TIMEOUT)

    def _after_failure(self, trigger: Trigger, run_seconds: float, reason: RestartReason,
                       detail: str = "") -> None:
        now = self.clock.monotonic()
        crash_loop = self.config.crash_loop
        if self._crash_loop_trial or is_crash_loop(
            self._restart_times, now, crash_loop.max_restarts, crash_loop.window
        ):
            self._crash_loop_trial = False
            self._next_start_at = now + crash_loop.cooldown
            self._transition(
                State.FATAL, trigger,
                f"crash loop: {crash_loop.max_restarts} restarts within "
                f"{crash_loop.window:g}s, next try in {crash_loop.cooldown:g}s",
            )
            self.effects.publish(
                self, CrashLoop(cooldown=crash_loop.cooldown, reason=reason, detail=detail),
                f"{self.name} is in a crash loop, giving up for {crash_loop.cooldown:g}s",
            )
            self._set_timer(crash_loop.cooldown, T.COOLDOWN_ELAPSED)
            return
        self._restart_times.append(now)
        self.restarts += 1
        backoff = self.config.backoff
        delay = with_jitter(
            backoff_delay(self._quick_failures, backoff.initial, backoff.factor, backoff.max),
            backoff.jitter, self.effects.random(), backoff.max,
        )
        self._restarting_for(reason, detail)
        if delay <= 0.0:
            self._spawn(trigger)
            return
        self._next_start_at = now + delay
        self._transition(State.BACKOFF, trigger,
                         f"{self._start_reason}, restarting in {delay:.3f}s")
        self.effects.publish(
            self, Backoff(delay=delay, reason=reason, quick_failures=self._quick_failures,
                          detail=detail),
            f"{self.name} restarts in {delay:.3f}s",
        )
        self._set_timer(delay, T.BACKOFF_ELAPSED)

    def _spawn(self, trigger: Trigger) -> None:
        try:
            pid = self.effects.spawn(self)
        except SpawnError as error:
            # Enter STARTING so the failure is a normal (STARTING, SPAWN_FAILED) move.
            self._transition(State.STARTING, trigger, "spawning")
            self.spawn_failed(str(error))
            return
        self._run = _Run(pid=pid, started=self.clock.monotonic(), started_wall=self.clock.time())
        self.unkillable = False
        self.hung = False
        if self.last_exit is not None and trigger is not T.START:
            self.effects.publish(
                self, Restarted(pid=pid, reason=self._restarted_for, detail=self._restarted_detail),
                f"{self.name} restarted as pid {pid} ({self._start_reason})",
            )
        self._transition(State.STARTING, trigger, f"spawned pid {pid} ({self._start_reason})")
        liveness = self.config.liveness
        if liveness is not None:
            # Ready means serving: RUNNING comes with the first passing probe (ready());
            # start_seconds plays no part.
            self._set_timer(liveness.start_timeout, T.START_TIMEOUT)
        elif self.config.start_seconds <= 0:
            self._running(T.START_SECONDS_ELAPSED)
        else:
            self._set_timer(self.config.start_seconds, T.START_SECONDS_ELAPSED)

    def _running(self, trigger: Trigger, reason: str = "up") -> None:
        if self._crash_loop_trial:
            # The trial start after a crash-loop cooldown survived: the breaker closes.
            self._crash_loop_trial = False
            self._restart_times.clear()
            self._quick_failures = 0
        self._transition(State.RUNNING, trigger, reason)

    def _send_stop_signal(self, trigger: Trigger, reason: str) -> None:
        self._cancel_timer()
        self.effects.kill(self, self.config.stop_signal_number)
        self._transition(State.STOPPING, trigger, reason)
        self._set_timer(self.config.stop_timeout, T.STOP_TIMEOUT)

    def _set_timer(self, delay: float, trigger: Trigger) -> None:
        self._cancel_timer()
        self._timer_token += 1
        self._pending = trigger
        token = self._timer_token
        self._timer = self.effects.call_later(delay, lambda: self._on_timer(token, trigger))

    def _cancel_timer(self) -> None:
        self._timer_token += 1
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _transition(self, new: State, trigger: Trigger, reason: str) -> None:
        old = self.state
        allowed = TRANSITIONS.get((old, trigger))
        if allowed is None or new not in allowed:
            raise AssertionError(f"illegal transition {old.value} -> {new.value} on {trigger.value}")
        self.state = new
        change = f"still {new.value}" if old is new else f"{old.value} -> {new.value}"
        self.effects.publish(
            self, StateChanged(old=old.value, to=new.value, trigger=trigger.value, reason=reason),
            f"{self.name}: {change} ({reason})",
        )
        self.effects.transitioned(self, old, new)
