"""Programs' output: read from their pipes, written to the container log line by line
with a ``name | `` prefix, kept in the per-program buffers (logbuffer.py) and published
as ``log`` events, what `clawsupctl logs -f` follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from clawsup.supervisor import kinds
from clawsup.supervisor.logbuffer import Outputs, Stream

if TYPE_CHECKING:
    from clawsup.supervisor.daemon import Supervisor

log = logging.getLogger("clawsup")

# Lines longer than this are cut; a program printing megabytes without a newline must
# not make the supervisor buffer them.
MAX_LINE = 64 * 1024


class Relay:
    """Every output pipe of every program's current process."""

    def __init__(self, supervisor: Supervisor, outputs: Outputs) -> None:
        self.supervisor = supervisor
        self.outputs = outputs
        # Output pipe -> (program, container log fd, pid that writes it, partial line).
        self._relays: dict[int, tuple[str, int, int, bytearray]] = {}

    def relay_output(self, name: str, fd: int, target: int, pid: int) -> None:
        self._relays[fd] = (name, target, pid, bytearray())
        asyncio.get_running_loop().add_reader(fd, self._read_output, fd)

    def _read_output(self, fd: int) -> None:
        name, target, pid, pending = self._relays[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as error:
            log.debug("output of %s: %s", name, error)
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(fd)
            del self._relays[fd]
            os.close(fd)
            if pending:
                self._write_lines(name, target, pid, bytes(pending) + b"\n")
            return
        pending.extend(chunk)
        cut = pending.rfind(b"\n")
        if cut >= 0:
            self._write_lines(name, target, pid, bytes(pending[: cut + 1]))
            del pending[: cut + 1]
        if len(pending) > MAX_LINE:
            self._write_lines(name, target, pid, bytes(pending) + b"\n")
            pending.clear()

    def _write_lines(self, name: str, target: int, pid: int, data: bytes) -> None:
        prefix = name.encode() + b" | "
        lines = data.splitlines()
        out = b"".join(prefix + line + b"\n" for line in lines)
        # A full container log pipe: drop rather than stall supervision (the buffer
        # below still keeps the lines).
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(target, out)
        self._keep_lines(name, "stdout" if target == 1 else "stderr", pid, lines)

    def _keep_lines(self, name: str, stream: Stream, pid: int, lines: list[bytes]) -> None:
        """Into the program's buffer (and file), and out as one ``log`` event per read:
        what `clawsupctl logs -f` follows. One event per chunk, not per line, and only
        when there is output: an idle gateway costs nothing here."""
        added = self.outputs.add(name, self.supervisor.clock.time(), stream, pid, lines)
        if added is not None:
            self.supervisor.emit(
                kinds.Log(seq=added.first_seq, ts=added.ts, stream=stream, pid=pid,
                          lines=added.texts),
                name, f"{len(added.texts)} line(s) of {name}'s {stream}", logged=True)
