"""systemd's notify protocol: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1 as datagrams.

When clawsup runs under systemd (``Type=notify``, possibly ``WatchdogSec=``) instead of as
a container's PID 1, systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with a watchdog, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. Without
``NOTIFY_SOCKET`` every call here is a no-op, so the loop can call them unconditionally.

Sends never block: the socket is non-blocking and a notification that cannot be sent
(systemd gone, queue full) is dropped with a warning. Keeping the watchdog fed is the
loop's job; a dropped ``WATCHDOG=1`` is retried by the next one.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract '@' name; ignored", value)
    return None


class Notifier:
    """The notify socket of the service manager, or nothing when there is none.

    ``unset_environment`` removes the three variables from ``environ`` (os.environ by
    default) once read, so that the supervised programs do not inherit them and talk to
    systemd in clawsup's name.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        raw_socket = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw_socket) if raw_socket else None
        self._watchdog_interval = _watchdog_interval(
            env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        )
        if unset_environment:
            for name in _ENVIRONMENT:
                env.pop(name, None)
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

        None when no watchdog is asked for, or when ``WATCHDOG_PID`` names another
        process (the watchdog is not ours to feed).
        """
        return self._watchdog_interval if self.enabled else None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when it was sent."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(payload, self._address)
        except OSError as error:
            # ENOENT/ECONNREFUSED: systemd is gone or not listening; EAGAIN: its queue is
            # full. Either way the supervisor carries on; say so once, not every second.
            if error.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                level = logging.DEBUG if self._warned else logging.WARNING
            else:
                level = logging.WARNING
            log.log(level, "cannot notify systemd (%s): %s", fields[0], error)
            self._warned = True
            return False
        self._warned = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The main program is up: systemd may now start units ordered after us."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_field(status))

    def status(self, text: str) -> bool:
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        """Feed the watchdog; only when ``watchdog_interval()`` is not None."""
        if self.watchdog_interval() is None:
            return False
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", _status_field(status))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status_field(text: str) -> str:
    # A newline would start a new KEY=VALUE field.
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_interval(usec: str | None, pid: str | None) -> float | None:
    if not usec:
        return None
    try:
        microseconds = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; watchdog off", usec)
        return None
    if microseconds <= 0:
        return None
    if pid:
        try:
            owner = int(pid)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a PID; watchdog off", pid)
            return None
        if owner != os.getpid():
            return None
    # Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is not fatal.
    return microseconds / 2_000_000
