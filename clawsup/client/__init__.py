"""The clawsup control client: typed calls over the ZeroMQ control socket.

Imports only the wire types (``clawsup.protocol``), never the supervisor, so it is cheap
to load and usable from any process that can reach the socket::

    from clawsup.client import Client

    with Client() as clawsup:           # $CLAWSUP_SOCKET or ipc:///run/clawsup/control.sock
        for program in clawsup.status().programs:
            print(program.name, program.state)
        clawsup.restart("gateway")      # returns once the gateway is RUNNING again

Errors are ``ClawsupError``: ``Unreachable`` (nothing answers at the endpoint; its
subclass ``Timeout`` when something is there but did not answer in time) and
``CommandFailed`` (the supervisor answered ``{"ok": false, ...}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clawsup import __version__

if TYPE_CHECKING:
    from clawsup.client._client import (
        DEFAULT_ENDPOINT,
        BadReply,
        ClawsupError,
        Client,
        CommandFailed,
        Timeout,
        Unreachable,
        default_endpoint,
        events_endpoint_for,
        normalize_endpoint,
    )

__all__ = [
    "DEFAULT_ENDPOINT",
    "BadReply",
    "ClawsupError",
    "Client",
    "CommandFailed",
    "Timeout",
    "Unreachable",
    "__version__",
    "default_endpoint",
    "events_endpoint_for",
    "normalize_endpoint",
]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that importing clawsup.client.ctl (shell completion,
    # --help) does not pay for pyzmq and msgspec.
    if name in __all__:
        from clawsup.client import _client

        return getattr(_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
