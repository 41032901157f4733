"""The client's exceptions, in a module of their own: both the typed ``Client`` and the
fast path of ``clawsupctl`` (which loads neither pyzmq nor msgspec) raise them."""

from __future__ import annotations


class ClawsupError(Exception):
    """Anything that kept a control call from getting a successful answer."""


class Unreachable(ClawsupError):
    """Nothing answers at the endpoint: clawsup is not running, or we may not connect."""

    def __init__(self, endpoint: str, reason: str = "is it running?") -> None:
        super().__init__(f"cannot reach clawsup at {endpoint} ({reason})")
        self.endpoint = endpoint
        self.reason = reason


class Timeout(Unreachable):
    """Something listens at the endpoint but sent no reply within the timeout.

    A command that is not idempotent may still have been carried out.
    """

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(endpoint, f"no answer within {timeout:g}s")
        self.timeout = timeout


class CommandFailed(ClawsupError):
    """The supervisor refused or failed the command: ``{"ok": false, "error": ...}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class BadReply(ClawsupError):
    """The reply was not what the protocol promises (a different server, or a bug)."""
