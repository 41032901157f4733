"""Sizes and durations as clawsup writes and prints them."""

from __future__ import annotations

import pytest

from clawsup.units import format_size, parse_size

MiB = 1 << 20


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1KB"),
        (1536, "1.5KB"),
        (2 * MiB, "2MB"),
        (2 * MiB + 1, "2.1MB"),
        (10 * MiB, "10MB"),
        (10 * MiB + 1, "11MB"),
        (12 * MiB, "12MB"),
        (3 << 30, "3GB"),
    ],
)
def test_format_size_rounds_up_and_never_shows_a_size_below_itself(size: int, shown: str) -> None:
    assert format_size(size) == shown
    assert parse_size(shown) >= size
