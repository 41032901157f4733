"""What the files in a session directory are called: transcripts, locks, archives.

A transcript is ``<id>.jsonl``, its lock ``<id>.jsonl.lock`` (locks.py knows the lock
kinds), an archive ``<id>.jsonl.<UTC yyyymmddTHHMMSSZ>.old`` (``.<n>.old`` when that name
was taken) or the old watchdog's ``<id>.jsonl.old``. The archive time is in the name
because the archive keeps the transcript's mtime (its last write).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Literal

from clawsup.supervisor.locks import lock_kind

SESSION_SUFFIX = ".jsonl"
ARCHIVE_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# <id>.jsonl.<stamp>.old, <id>.jsonl.<stamp>.<n>.old, or the old watchdog's <id>.jsonl.old.
_ARCHIVE_NAME = re.compile(r"(?P<session>.+\.jsonl)(?:\.(?P<stamp>\d{8}T\d{6}Z)(?:\.\d+)?)?\.old")
# What a cold scan lstats besides transcripts; entry_kind has the last word.
LOCK_OR_ARCHIVE_SUFFIXES = (".lock", ".old")

EntryKind = Literal["session", "lock", "archive"]


def entry_kind(name: str) -> EntryKind | None:
    """Which index an entry belongs in: session, lock, archive, or None (never stat'ed)."""
    if name.endswith(SESSION_SUFFIX):
        return "session"
    if name.endswith(".lock"):
        return "lock" if lock_kind(name) is not None else None
    if name.endswith(".old") and _ARCHIVE_NAME.fullmatch(name):
        return "archive"
    return None


def session_id(name: str, suffix: str) -> str | None:
    return name[: -len(suffix)] if name.endswith(suffix) and name != suffix else None


def archive_name(session_name: str, archived_at: float, counter: int = 0) -> str:
    """``<id>.jsonl.<UTC stamp>.old``, with ``.<counter>`` before ``.old`` when counter > 0."""
    stamp = time.strftime(ARCHIVE_STAMP_FORMAT, time.gmtime(archived_at))
    return f"{session_name}.{stamp}.{counter}.old" if counter else f"{session_name}.{stamp}.old"


def archived_at_from_name(name: str) -> float | None:
    """The archive time a name records, None for a legacy or malformed name."""
    match = _ARCHIVE_NAME.fullmatch(name)
    stamp = match.group("stamp") if match is not None else None
    if stamp is None:
        return None
    # By hand, not strptime: a full pass may read thousands of these.
    try:
        return datetime(
            int(stamp[0:4]),
            int(stamp[4:6]),
            int(stamp[6:8]),
            int(stamp[9:11]),
            int(stamp[11:13]),
            int(stamp[13:15]),
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        return None
