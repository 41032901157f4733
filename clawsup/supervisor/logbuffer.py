"""What each program printed: a bounded buffer in memory, and optionally rotated files.

The output relay (relay.py) hands every complete line here after writing it to the
container log. Per program, ``ProgramOutput`` keeps the newest lines in a ``LogBuffer``
whose bound is in bytes of memory, not lines: each line is charged what it takes in
Python (its str, and ``LINE_OVERHEAD`` for the record around it), so neither a program
printing long lines nor one printing empty ones can make it hold more than
``[programs.NAME.logs] buffer`` says. Each
line keeps its stream, the time it was read and the pid that printed it, so a restart
shows as a change of pid. The buffer lives as long as the program's name, across its
restarts.

``RotatingFile`` writes the lines to ``[programs.NAME.logs] file`` from a thread of its
own: a slow or full disk must never hold up the loop that supervises. The loop only puts
bytes on a bounded queue; when that is full (the disk cannot keep up) lines are dropped
from the file, never from the buffer or the container log. Rotation is by rename, as
supervisord's ``stdout_logfile_maxbytes``/``backups``: ``FILE`` -> ``FILE.1`` ... ->
``FILE.BACKUPS``, the oldest deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections import deque
from typing import Literal, NamedTuple

from clawsup.supervisor.config import Logs, expand_path

log = logging.getLogger("clawsup")

Stream = Literal["stdout", "stderr"]

# What a kept line costs beyond its str: the Line tuple (80 bytes), its seq (32) and the
# deque slot (8); ts is shared by the lines of one read, small pids are cached. With
# sys.getsizeof of the str, tracemalloc finds the charge within 5% of what is allocated.
LINE_OVERHEAD = 120
# Chunks waiting for the file writer thread: past this the disk is not keeping up.
FILE_QUEUE_CHUNKS = 1024


class Line(NamedTuple):
    """One kept line. ``seq`` numbers every line the program has printed since clawsup
    started, so a follower can tell a gap (lines it missed) from a repeat."""

    seq: int
    ts: float
    stream: Stream
    pid: int
    text: str


def line_cost(text: str) -> int:
    """What keeping a line costs the buffer: the memory of its str, and the overhead."""
    return sys.getsizeof(text) + LINE_OVERHEAD


class Added(NamedTuple):
    """Lines just read from one stream of one process: ``texts`` are numbered from
    ``first_seq`` on. Kept as one record, not a ``Line`` each: it is what a ``log``
    event carries."""

    first_seq: int
    ts: float
    stream: Stream
    pid: int
    texts: list[str]


class LogBuffer:
    """The newest lines of one program, at most ``limit`` bytes (``line_cost`` each)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._lines: deque[Line] = deque()
        self._next_seq = 1

    def add(self, ts: float, stream: Stream, pid: int, raw: list[bytes]) -> Added:
        """Keep the lines ``raw`` (oldest first; invalid UTF-8 replaced), dropping the
        oldest kept lines to stay within the limit. Every line is numbered, even one
        larger than the whole limit, which is not kept."""
        texts = [line.decode("utf-8", "replace") for line in raw]
        first = self._next_seq
        self._next_seq += len(raw)
        for offset, text in enumerate(texts):
            cost = line_cost(text)
            if cost <= self.limit:
                self._lines.append(Line(first + offset, ts, stream, pid, text))
                self.size += cost
        self._trim()
        return Added(first, ts, stream, pid, texts)

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._trim()

    def _trim(self) -> None:
        while self.size > self.limit:
            self.size -= line_cost(self._lines.popleft().text)

    def tail(self, count: int, after: int | None = None) -> list[Line]:
        """The last ``count`` lines, oldest first; with ``after``, only those whose seq
        is above it."""
        if count <= 0:
            return []
        picked: list[Line] = []
        for line in reversed(self._lines):
            if len(picked) >= count or (after is not None and line.seq <= after):
                break
            picked.append(line)
        picked.reverse()
        return picked

    def __len__(self) -> int:
        return len(self._lines)


def rotate(path: str, backups: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.BACKUPS``; the oldest is removed. With no
    backups, ``path`` is removed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}.{backups}" if backups else path)
    for number in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}.{number}", f"{path}.{number + 1}")
    if backups:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, f"{path}.1")


class RotatingFile:
    """Append to ``path`` from a thread, rotating past ``max_size`` (0: never)."""

    def __init__(self, path: str, max_size: int, backups: int) -> None:
        self.path = path
        self.max_size = max_size
        self.backups = backups
        self._queue: queue.Queue[bytes | None] = queue.Queue(FILE_QUEUE_CHUNKS)
        self._thread: threading.Thread | None = None
        self._dropping = False  # the loop's side: lines dropped since the queue was full
        self._failing = False  # the writer's side: the last write failed
        self._fd: int | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the file; never blocks. Call from the loop only."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"log {self.path}",
                                            daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            if not self._dropping:
                log.warning("%s cannot keep up with the output: lines are left out of it "
                            "(the container log and `clawsupctl logs` still get them)",
                            self.path)
                self._dropping = True
            return
        self._dropping = False

    def close(self, *, wait: bool, timeout: float = 5.0) -> None:
        """Stop the thread once it has written what is queued; with ``wait``, wait for
        that up to ``timeout`` (a stuck disk must not hold up clawsup's exit)."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, block=wait, timeout=timeout)
        except queue.Full:
            log.warning("%s: output still queued for it is lost", self.path)
            return
        if wait:
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._append(data)
            except OSError as error:
                if not self._failing:
                    # Once, not per line: a full disk would otherwise flood the log.
                    log.error("cannot write program output to %s: %s (logged once; "
                              "retried with each line)", self.path, error.strerror or error)
                    self._failing = True
                self._close_fd()
                continue
            if self._failing:
                log.info("writing program output to %s again", self.path)
                self._failing = False
        self._close_fd()

    def _append(self, data: bytes) -> None:
        """Write ``data`` (whole lines), rotating first wherever the next lines would
        take the file past max_size; a line longer than max_size gets a file of its own."""
        while data:
            if self._fd is None:
                self._open()
            room = self.max_size - self._size if self.max_size else len(data)
            if room >= len(data):
                piece, data = data, b""
            else:
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1
                if cut == 0 and self._size:
                    self._rotate()
                    continue
                cut = cut or data.find(b"\n") + 1 or len(data)
                piece, data = data[:cut], data[cut:]
            self._write(piece)

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self._close_fd()
        rotate(self.path, self.backups)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ProgramOutput:
    """One program's output: its buffer and, if configured, its file."""

    def __init__(self, buffer: int, file: RotatingFile | None) -> None:
        self.buffer = LogBuffer(buffer)
        self.file = file

    def add(self, ts: float, stream: Stream, pid: int, raw: list[bytes]) -> Added:
        if self.file is not None:
            self.file.write(b"".join(line + b"\n" for line in raw))
        return self.buffer.add(ts, stream, pid, raw)


class Outputs:
    """Every program's ``ProgramOutput``, by name, as the config says."""

    def __init__(self) -> None:
        self._programs: dict[str, ProgramOutput] = {}

    def configure(self, name: str, config: Logs) -> None:
        """Create the program's output, or apply a changed config to it: the kept lines
        stay (resized), a changed file is closed and the new one opened on first write."""
        output = self._programs.get(name)
        if output is None:
            self._programs[name] = ProgramOutput(config.buffer, _file(config))
            return
        output.buffer.resize(config.buffer)
        old = output.file
        if old is None or config.file is None or (old.path, old.max_size, old.backups) != (
                str(expand_path(config.file)), config.max_size, config.backups):
            if old is not None:
                old.close(wait=False)
            output.file = _file(config)

    def get(self, name: str) -> ProgramOutput | None:
        return self._programs.get(name)

    def add(self, name: str, ts: float, stream: Stream, pid: int,
            raw: list[bytes]) -> Added | None:
        output = self._programs.get(name)
        return None if output is None or not raw else output.add(ts, stream, pid, raw)

    def forget(self, name: str) -> None:
        output = self._programs.pop(name, None)
        if output is not None and output.file is not None:
            output.file.close(wait=False)

    def close(self, timeout: float) -> None:
        """Write out what the files have queued (at most ``timeout`` each)."""
        for output in self._programs.values():
            if output.file is not None:
                output.file.close(wait=True, timeout=timeout)


def _file(config: Logs) -> RotatingFile | None:
    if config.file is None:
        return None
    return RotatingFile(str(expand_path(config.file)), config.max_size, config.backups)
