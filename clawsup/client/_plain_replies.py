"""The status, health and logs replies read with the stdlib json module, for the fast path of
``clawsupctl`` (msgspec alone would cost it a quarter of its start-up).

Each reader returns the reply as ``msgspec.to_builtins`` gives the typed reply of
clawsup.protocol (every field, defaults filled in, floats as floats), or None for
anything it is not sure of: an error reply, a wrong type, a value msgspec would refuse.
The caller then decodes the frame with the typed decoder, which gives the click CLI's
answer or its exact error, so the two paths never disagree (tests/test_fast_ctl.py holds
these field lists to the structs).
"""

from __future__ import annotations

import json
import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Check = Callable[[Any], Any]


class _Unsure(Exception):
    """A value the typed decoder might read otherwise: leave the frame to it."""


_REQUIRED = object()
_INT64 = (-(1 << 63), 1 << 64)  # msgspec's range for int: int64, or uint64 if positive


def _int(value: Any) -> int:
    if type(value) is int and _INT64[0] <= value < _INT64[1]:
        return value
    raise _Unsure


def _float(value: Any) -> float:
    if type(value) is float and math.isfinite(value):
        return value
    return float(_int(value))  # msgspec takes an integer where a float is due


def _str(value: Any) -> str:
    if type(value) is str:
        return value
    raise _Unsure


def _bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _Unsure


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _literal(*allowed: object) -> Check:
    def check(value: Any) -> Any:
        # By type as well as value: 1 == True, and a Literal[True] field refuses 1.
        if any(type(value) is type(a) and value == a for a in allowed):
            return value
        raise _Unsure

    return check


def _list(check: Check) -> Check:
    def checked(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _Unsure
        return [check(item) for item in value]

    return checked


def _struct(fields: dict[str, tuple[Check, Any]]) -> Check:
    """An object with these fields (check, default); unknown keys are ignored, as the
    reply structs ignore them."""

    def checked(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Unsure
        out = {}
        for name, (check, default) in fields.items():
            if name in value:
                out[name] = check(value[name])
            elif default is _REQUIRED:
                raise _Unsure
            else:
                out[name] = default() if callable(default) else default
        return out

    return checked


# The fields of clawsup.protocol's reply structs, in their order, with their defaults.
LAST_EXIT = {
    "code": (_optional(_int), None),
    "signal": (_optional(_str), None),
    "reason": (_str, ""),
    "at": (_float, 0.0),
}
BREAKER_STATUS = {
    "state": (_literal("closed", "open", "half_open"), _REQUIRED),
    "model": (_optional(_str), None),
    "active_model": (_optional(_str), None),
    "failures": (_int, 0),
    "open_until": (_optional(_float), None),
}
PROGRAM_STATUS = {
    "name": (_str, _REQUIRED),
    "state": (_str, _REQUIRED),
    "pid": (_optional(_int), _REQUIRED),
    "restarts": (_int, _REQUIRED),
    "uptime": (_optional(_float), _REQUIRED),
    "last_exit": (_optional(_struct(LAST_EXIT)), _REQUIRED),
    "main": (_bool, False),
    "hung": (_bool, False),
    "unkillable": (_bool, False),
    "liveness": (_literal("unknown", "passing", "failing", "off"), "off"),
    "next_start_in": (_optional(_float), None),
    "description": (_str, ""),
    "stuck_thread": (_str, ""),
    "processes": (_int, 0),
    "rss": (_optional(_int), None),
    "cpu_percent": (_optional(_float), None),
}
STATUS_REPLY = {
    "ok": (_literal(True), _REQUIRED),  # the struct defaults it, but the client demands it
    "programs": (_list(_struct(PROGRAM_STATUS)), _REQUIRED),
    "supervisor_pid": (_int, _REQUIRED),
    "supervisor_uptime": (_float, _REQUIRED),
    "version": (_str, _REQUIRED),
    "model": (_optional(_str), None),
    "timezone": (_optional(_str), None),
    "breaker": (_optional(_struct(BREAKER_STATUS)), None),
}
HEALTH_REPLY = {
    "ok": (_literal(True), _REQUIRED),  # the struct defaults it, but the client demands it
    "healthy": (_bool, _REQUIRED),
    "reasons": (_list(_str), list),
}

LOG_LINE = {
    "seq": (_int, _REQUIRED),
    "ts": (_float, _REQUIRED),
    "stream": (_literal("stdout", "stderr"), _REQUIRED),
    "pid": (_int, _REQUIRED),
    "text": (_str, _REQUIRED),
}
LOGS_REPLY = {
    "ok": (_literal(True), _REQUIRED),  # the struct defaults it, but the client demands it
    "program": (_str, _REQUIRED),
    "lines": (_list(_struct(LOG_LINE)), _REQUIRED),
}

_read_status = _struct(STATUS_REPLY)
_read_health = _struct(HEALTH_REPLY)
_read_logs = _struct(LOGS_REPLY)


def read_status(frame: bytes) -> dict[str, Any] | None:
    return _read(frame, _read_status)


def read_health(frame: bytes) -> dict[str, Any] | None:
    return _read(frame, _read_health)


def read_logs(frame: bytes) -> dict[str, Any] | None:
    return _read(frame, _read_logs)


def _read(frame: bytes, check: Check) -> dict[str, Any] | None:
    # \ud800-\udfff escapes may stand for lone surrogates, which json accepts and msgspec
    # refuses; clawsup writes non-ASCII text as raw UTF-8, so only a stranger sends them.
    if b"\\ud" in frame or b"\\uD" in frame:
        return None
    try:
        # Decoded here, not by json.loads(bytes), which would also take UTF-16 and -32.
        reply = json.loads(frame.decode())
    except ValueError:  # not UTF-8 (UnicodeDecodeError), not JSON (JSONDecodeError)
        return None
    # The client reads "ok" and "error" of any reply first: ok must be true and any
    # error null for the reply to be a success.
    if type(reply) is not dict or reply.get("error") is not None:
        return None
    try:
        result: dict[str, Any] = check(reply)
    except _Unsure:
        return None
    return result
