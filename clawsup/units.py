"""Durations ("500ms", "5s", "10m", "7d") and sizes ("10MB") as the config writes them.

Shared by the supervisor (config) and the client (``clawsupctl incidents --since 7d``), so
it imports nothing from either.

Sizes are binary, as the old watchdog's ``find -size +10M`` counted them: 10MB is
10 x 2**20 bytes, and ``MiB`` is accepted as the same unit.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
}
# One or more "<number><unit>" parts: "1m30s" is 90 seconds.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


class Duration(float):
    """Seconds, parsed from a string like ``"500ms"`` or ``"1m30s"``."""

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


class Size(int):
    """Bytes, parsed from a string like ``"10MB"`` (binary units)."""

    def __repr__(self) -> str:
        return f"Size({format_size(self)!r})"


def parse_duration(text: str | float) -> Duration:
    """Parse ``"500ms"``, ``"5s"``, ``"10m"``, ``"2h"``, ``"7d"``, ``"1m30s"``.

    A bare number is taken as seconds. Raises ValueError naming what was expected.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '5s', got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"a duration cannot be negative, got {text!r}")
        return Duration(text)
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError("expected a duration like '500ms', '5s', '10m' or '7d', got ''")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(
            f"expected a duration like '500ms', '5s', '10m' or '7d', got {text!r}"
        )
    return Duration(total)


def parse_size(text: str | int) -> Size:
    """Parse ``"10MB"`` (= 10 x 2**20), ``"512KB"``, ``"1GiB"``; a bare number is bytes."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size like '10MB', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {text!r}")
        return Size(text)
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like '10MB' or '512KB', got {text!r}")
    return Size(int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]))


def format_duration(seconds: float) -> str:
    """Short human form: ``0.5`` -> ``"500ms"``, ``90`` -> ``"1m30s"``, ``86400`` -> ``"1d"``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    parts = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts[:2])


def format_size(size: int) -> str:
    """``12 * 2**20`` -> ``"12MB"``: binary units, rounded up as ``find -size`` counts, so
    a size is never shown below what it is (a file just over a 10MB limit reads "11MB").
    Tenths below 10 of a unit: ``2 * 2**20 + 1`` -> ``"2.1MB"``. The one format for a
    size that clawsup and its demo print."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            tenths = -(-size * 10 // factor)
            if tenths >= 100 or tenths % 10 == 0:
                return f"{-(-size // factor)}{unit}"
            return f"{tenths // 10}.{tenths % 10}{unit}"
    return f"{size}B"
