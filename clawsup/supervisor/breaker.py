"""The model circuit breaker: a pure state machine driven by the loop, with the clock passed in.

A model that keeps failing (stuck messages, gateway crashes while it is in use) is taken
out of service for a while and the gateway is switched to the next model of the fallback
list. The breaker does no I/O: each method returns a ``Decision`` that the loop turns
into an event and, where ``switch_to`` is set, into a model change made through the same
path as ``set_model``.

States::

    closed ---(failures within window)---> open           switch to fallbacks[0]
    open   ---(the fallback fails as well)--> open         switch to the next fallback
    open   ---(cooldown elapsed: tick)-----> half_open     switch back to the primary
    half_open ---(one failure)-------------> open          cooldown doubled, up to max_cooldown
    half_open ---(success)-----------------> closed        cooldown back to its base

*Success in half-open* is the primary going a whole probe period without a failure,
noticed by ``tick``. The probe period defaults to the breaker's
``window``: a model that ran a full window without failing could not have tripped the
breaker during it. A single failure in half-open reopens: the primary is on probation.

Failures are counted per active model only. A failure reported for a model that is no
longer active (a timeout of a message sent to the primary, noticed after the switch) is
stale and ignored. When the last fallback fails too, the breaker stays on it: there is
nothing better to switch to, and the half-open probe of the primary still comes on time.

Without fallbacks (or without a known primary model) the breaker never opens: the config
says it is off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from clawsup.protocol import BreakerStatus
from clawsup.supervisor.config import BreakerConfig
from clawsup.supervisor.kinds import BreakerChange, BreakerClosed, BreakerHalfOpen, BreakerOpen
from clawsup.units import format_duration


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_WIRE_STATE: dict[BreakerState, Literal["closed", "open", "half_open"]] = {
    BreakerState.CLOSED: "closed",
    BreakerState.OPEN: "open",
    BreakerState.HALF_OPEN: "half_open",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the loop must do after a breaker call.

    ``payload`` is the event to publish (``BreakerOpen``, ``BreakerHalfOpen``,
    ``BreakerClosed``) with ``message``; ``switch_to`` is the model to put in the gateway's
    config, or None when the active model stays as it is.
    """

    payload: BreakerChange
    switch_to: str | None
    message: str


class ModelBreaker:
    """One breaker for the gateway's primary model and its fallback chain."""

    def __init__(
        self, config: BreakerConfig, primary: str | None, *, probe: float | None = None
    ) -> None:
        self._config = config
        self._probe = config.window if probe is None else probe
        self._state = BreakerState.CLOSED
        self._primary = primary
        self._chain = self._build_chain(primary)
        self._index = 0  # position of the active model in the chain
        self._failures: deque[float] = deque()
        self._cooldown: float = config.cooldown
        self._open_until: float | None = None
        self._probe_until: float | None = None

    def _build_chain(self, primary: str | None) -> tuple[str, ...]:
        if primary is None:
            return ()
        fallbacks = [m for m in dict.fromkeys(self._config.fallbacks) if m != primary]
        return (primary, *fallbacks)

    # -- queries ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False without fallbacks or without a primary model: the breaker never opens."""
        return len(self._chain) > 1

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def primary(self) -> str | None:
        return self._primary

    @property
    def active_model(self) -> str | None:
        return self._chain[self._index] if self._chain else None

    def status(self, now: float | None = None) -> BreakerStatus:
        """The wire form; with ``now``, failures older than the window are not counted."""
        if now is not None:
            self._forget_old_failures(now)
        return BreakerStatus(
            state=_WIRE_STATE[self._state],
            model=self._primary,
            active_model=self.active_model,
            failures=len(self._failures),
            open_until=self._open_until if self._state is BreakerState.OPEN else None,
        )

    # -- events ----------------------------------------------------------------------------

    def record_failure(self, model: str | None, now: float) -> Decision | None:
        """A message timeout or a gateway crash while ``model`` was in use."""
        if model is None or model != self.active_model:
            return None  # stale: a failure of a model we already switched away from
        self._failures.append(now)
        self._forget_old_failures(now)
        if not self.enabled:
            return None
        if self._state is BreakerState.HALF_OPEN:
            return self._reopen(now)
        if len(self._failures) < self._config.failures:
            return None
        if self._state is BreakerState.CLOSED:
            return self._open(now)
        return self._next_fallback()

    def tick(self, now: float) -> Decision | None:
        """Timers: the cooldown of an open breaker, the probe period of a half-open one.

        Late ticks are fine: each looks at the current state and the deadline only.
        """
        self._forget_old_failures(now)
        if (
            self._state is BreakerState.OPEN
            and self._open_until is not None
            and now >= self._open_until
        ):
            return self._half_open(now)
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probe_until is not None
            and now >= self._probe_until
        ):
            return self._close(f"no failure for {format_duration(self._probe)}")
        return None

    def set_primary(self, model: str | None, now: float) -> None:
        """The operator chose a model (set_model, or an edit the breaker did not ask for).

        Their choice is the new primary and the breaker starts over, closed. The loop must
        not call this for the switches the breaker itself asked for.
        """
        self._primary = model
        self._chain = self._build_chain(model)
        self._index = 0
        self._failures.clear()
        self._state = BreakerState.CLOSED
        self._cooldown = self._config.cooldown
        self._open_until = None
        self._probe_until = None

    # -- transitions -----------------------------------------------------------------------

    def _forget_old_failures(self, now: float) -> None:
        while self._failures and now - self._failures[0] >= self._config.window:
            self._failures.popleft()

    def _change(self, change: type[BreakerChange], previous: str | None,
              failures: int) -> BreakerChange:
        return change(model=self._primary, old=previous, to=self.active_model,
                      state=self._state.value, failures=failures,
                      cooldown=float(self._cooldown), open_until=self._open_until)

    def _open(self, now: float) -> Decision:
        failures = len(self._failures)
        self._state = BreakerState.OPEN
        self._index = 1
        self._failures.clear()
        self._open_until = now + self._cooldown
        fallback = self.active_model
        return Decision(
            switch_to=fallback,
            message=(
                f"model {self._primary} failed {failures} times within "
                f"{format_duration(self._config.window)}; switching to {fallback} "
                f"for {format_duration(self._cooldown)}"
            ),
            payload=self._change(BreakerOpen, self._primary, failures),
        )

    def _next_fallback(self) -> Decision | None:
        if self._index + 1 >= len(self._chain):
            return None  # the last fallback: nothing better to switch to
        failures = len(self._failures)
        failing = self.active_model
        self._index += 1
        self._failures.clear()
        return Decision(
            switch_to=self.active_model,
            message=(
                f"fallback model {failing} failed {failures} times within "
                f"{format_duration(self._config.window)} as well; "
                f"switching to {self.active_model}"
            ),
            payload=self._change(BreakerOpen, failing, failures),
        )

    def _half_open(self, now: float) -> Decision:
        previous = self.active_model
        self._state = BreakerState.HALF_OPEN
        self._index = 0
        self._failures.clear()
        self._open_until = None
        self._probe_until = now + self._probe
        return Decision(
            switch_to=self._primary,
            message=(
                f"trying model {self._primary} again after "
                f"{format_duration(self._cooldown)} on {previous}"
            ),
            payload=self._change(BreakerHalfOpen, previous, 0),
        )

    def _reopen(self, now: float) -> Decision:
        cap = max(self._config.max_cooldown, self._config.cooldown)
        self._cooldown = min(self._cooldown * 2.0, cap)
        self._state = BreakerState.OPEN
        self._index = 1
        self._failures.clear()
        self._probe_until = None
        self._open_until = now + self._cooldown
        return Decision(
            switch_to=self.active_model,
            message=(
                f"model {self._primary} failed again on probation; switching to "
                f"{self.active_model} for {format_duration(self._cooldown)}"
            ),
            payload=self._change(BreakerOpen, self._primary, 1),
        )

    def _close(self, why: str) -> Decision:
        self._state = BreakerState.CLOSED
        self._failures.clear()
        self._cooldown = self._config.cooldown
        self._open_until = None
        self._probe_until = None
        return Decision(
            switch_to=None,
            message=f"model {self._primary} is healthy again ({why}); breaker closed",
            payload=self._change(BreakerClosed, self._primary, 0),
        )
