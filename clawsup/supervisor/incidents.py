"""The incident log: one JSON line per recovery, in ``state_dir/incidents.jsonl``.

What counts as an incident is something that went wrong and that clawsup acted on, not
routine work: the kinds marked ``incident`` in kinds.py (``hung``, ``crash_loop``...),
and ``exited`` when the program crashed (not a stop asked for). Not counted:
restarted/backoff/state (the consequences, already told by the incident that caused
them), manual restarts, reaping, archive purges, model and timezone changes, and the
breaker's half-open and closed steps.

The file is rotated at ``max_bytes``: ``incidents.jsonl`` -> ``.1`` -> ... -> ``.keep``.
Writes are single small appends done on the loop: cheaper than handing them to a thread.
A full disk or a read-only state dir must not stop supervision: the error is logged once
and incidents are dropped until a write succeeds again.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter, defaultdict, deque
from pathlib import Path

import msgspec

from clawsup.protocol import Event, EventKind, Incident, IncidentsReply
from clawsup.supervisor.kinds import INCIDENT_KINDS, ExitCause, Exited, Payload, payload_of

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_KEEP = 5

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Incident)


def is_incident(event: Event, payload: Payload | None = None) -> bool:
    """A recovery worth counting. An exit is one only when the program crashed: exits
    that clawsup caused (a hang, a liveness failure... ) have their own incident, and
    those an operator asked for (restart, restart.flag, ops requests) are none."""
    if event.kind != EventKind.EXITED:
        return event.kind in INCIDENT_KINDS
    if payload is None:
        payload = payload_of(event)
    if isinstance(payload, Exited):
        return payload.cause is ExitCause.CRASHED
    return event.kind in INCIDENT_KINDS


def _day(ts: float) -> str:
    # UTC: a container's local zone is UTC more often than not, and a day that shifts with
    # the TZ variable would make counts from two clients disagree.
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class IncidentLog:
    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._failing = False
        self._checked_tail = False
        self.dropped = 0  # incidents lost to write errors

    def rotated_paths(self) -> list[Path]:
        """The log files, oldest first: ``.keep`` ... ``.1``, then the live file."""
        rotated = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.keep, 0, -1)]
        return [*rotated, self.path]

    # -- writing ---------------------------------------------------------------------------

    def observe(self, event: Event, payload: Payload | None = None) -> None:
        """Event sink: append the event when it is an incident. Never raises OSError.
        ``payload``: the event's, when the caller has it (else read back when needed)."""
        if not is_incident(event, payload):
            return
        line = _encoder.encode(
            Incident(
                ts=event.ts,
                kind=event.kind,
                program=event.program,
                message=event.message,
                data=event.data,
            )
        )
        try:
            self._append(line + b"\n")
        except OSError as error:
            self.dropped += 1
            if not self._failing:
                log.error(
                    "cannot write the incident log %s: %s; incidents are dropped until "
                    "it is writable again",
                    self.path,
                    error,
                )
            self._failing = True
            return
        if self._failing:
            log.warning(
                "incident log %s is writable again (%d incidents were lost)",
                self.path,
                self.dropped,
            )
            self._failing = False

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > 0 and size + len(line) > self.max_bytes:
            self._rotate()
            size = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if size > 0 and not self._checked_tail and not self._ends_with_newline():
                # A supervisor killed mid-write left half a line; do not glue ours to it.
                line = b"\n" + line
            self._checked_tail = True
            os.write(fd, line)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _rotate(self) -> None:
        paths = self.rotated_paths()  # oldest first; paths[0] is dropped when keep > 0
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        paths[0].unlink(missing_ok=True)
        for older, newer in itertools.pairwise(paths):
            try:
                os.rename(newer, older)
            except FileNotFoundError:
                continue
        self._checked_tail = True  # a fresh file has no torn tail

    # -- reading ---------------------------------------------------------------------------

    def read(self, since: float | None = None) -> list[Incident]:
        """Every readable incident with ``ts >= since``, oldest first; corrupt lines skipped."""
        found: list[Incident] = []
        for path in self.rotated_paths():
            try:
                with open(path, "rb") as handle:
                    lines = handle.read().splitlines()
            except FileNotFoundError:
                continue
            except OSError as error:
                log.warning("cannot read incident log %s: %s", path, error)
                continue
            for line in lines:
                if not line.strip():
                    continue
                try:
                    incident = _decoder.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if since is None or incident.ts >= since:
                    found.append(incident)
        return found

    def summary(self, since_seconds: float | None, now: float, limit: int) -> IncidentsReply:
        """Counts per UTC day and kind, and the last ``limit`` incidents (oldest first).

        ``since_seconds`` looks back from ``now`` (wall-clock); None means everything kept.
        """
        since = None if since_seconds is None else now - since_seconds
        incidents = self.read(since)
        per_day: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for incident in incidents:
            per_day[_day(incident.ts)][incident.kind] += 1
        latest = deque(incidents, maxlen=max(limit, 0))
        return IncidentsReply(
            counts={day: dict(kinds) for day, kinds in sorted(per_day.items())},
            latest=list(latest),
        )
