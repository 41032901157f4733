"""The ``message_timeout`` in force: how long a live gateway may hold a transcript lock
before clawsup calls the message stuck and restarts the gateway.

The gateway ends a turn itself after ``agents.defaults.timeoutSeconds`` (600 s when the
key is absent) and then releases the lock. clawsup's timeout is the net under that, for
a gateway that can no longer end its own turns: it must act only once the gateway had its
chance, or the two race and clawsup restarts a gateway (cutting every other conversation
short) that was about to give up on the turn by itself. So unless ``[janitor]
message_timeout`` is set, it is the gateway's turn timeout plus ``MARGIN``, read from the
gateway's config and read again whenever that file changes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from clawsup.supervisor import settings
from clawsup.supervisor.config import GatewayConfigFile, JanitorConfig, expand_path

TURN_TIMEOUT_KEY = "agents.defaults.timeoutSeconds"
# The gateway's own default turn timeout (dist/agents/timeout.js).
GATEWAY_TURN_TIMEOUT = 600.0
# Past the gateway's turn timeout before clawsup acts: the gateway aborts the run, writes
# the end of the transcript and removes its lock in that time, even loaded (a turn that
# timed out is often one stuck on a slow tool or provider).
MARGIN = 60.0


@dataclass(frozen=True)
class MessageTimeout:
    seconds: float
    source: str  # where the value came from, for the log and ``clawsup check``
    problem: str | None = None  # why the gateway's value could not be used

    def describe(self) -> str:
        return f"message_timeout: {self.seconds:g}s ({self.source})"


def _gateway_default(reason: str, problem: str | None = None) -> MessageTimeout:
    return MessageTimeout(
        GATEWAY_TURN_TIMEOUT + MARGIN,
        f"gateway default turn timeout {GATEWAY_TURN_TIMEOUT:g}s + {MARGIN:g}s margin: "
        f"{reason}",
        problem,
    )


def resolve(janitor: JanitorConfig, gateway: GatewayConfigFile) -> MessageTimeout:
    """The explicit ``[janitor] message_timeout``, else the gateway's turn timeout + MARGIN."""
    if janitor.message_timeout is not None:
        return MessageTimeout(float(janitor.message_timeout), "[janitor] message_timeout")
    path = expand_path(gateway.path)
    try:
        doc = settings.read_gateway_config(path)
    except settings.SettingError as error:
        return _gateway_default(f"cannot read {TURN_TIMEOUT_KEY}", str(error))
    value = settings.get_key(doc, TURN_TIMEOUT_KEY)
    if value is None:
        where = f"no {TURN_TIMEOUT_KEY} in {path}" if path.exists() else f"{path} does not exist"
        return _gateway_default(where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problem = f"{path}: {TURN_TIMEOUT_KEY} is {value!r}, not a number of seconds"
        return _gateway_default(f"{TURN_TIMEOUT_KEY} unusable", problem)
    # As the gateway reads it: whole seconds, at least one.
    turn = float(max(math.floor(value), 1))
    return MessageTimeout(
        turn + MARGIN, f"gateway {TURN_TIMEOUT_KEY} {turn:g}s + {MARGIN:g}s margin"
    )


class MessageTimeoutWatch:
    """The value in force, read again only when our config or the gateway's file changed."""

    def __init__(self) -> None:
        self.current: MessageTimeout | None = None
        self._seen: object = None

    def refresh(self, janitor: JanitorConfig, gateway: GatewayConfigFile) -> MessageTimeout | None:
        """The new value when it changed (the first call always), else None."""
        seen = (janitor.message_timeout, gateway.path,
                None if janitor.message_timeout is not None else _identity(gateway.path))
        if seen == self._seen and self.current is not None:
            return None
        self._seen = seen
        new = resolve(janitor, gateway)
        if new == self.current:
            return None
        self.current = new
        return new


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the file is rewritten (the gateway and ``clawdbot config set``
    write a temp file and rename it: a new inode; an editor may write in place)."""
    try:
        info = os.stat(expand_path(path))
    except OSError:
        return None
    return info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size
