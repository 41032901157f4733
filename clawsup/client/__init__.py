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

from clawsup import __version__

# typing.TYPE_CHECKING without importing typing: `clawsupctl status` loads this package,
# and typing would be 4-6 ms of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from clawsup.client._client import Client, events_endpoint_for
    from clawsup.client._endpoint import DEFAULT_ENDPOINT, default_endpoint, normalize_endpoint
    from clawsup.client._errors import (
        BadReply,
        ClawsupError,
        CommandFailed,
        Timeout,
        Unreachable,
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


# Where each public name lives: the light modules, or _client (pyzmq, msgspec).
_MODULES = {
    "Client": "_client",
    "events_endpoint_for": "_client",
    "DEFAULT_ENDPOINT": "_endpoint",
    "default_endpoint": "_endpoint",
    "normalize_endpoint": "_endpoint",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that importing clawsup.client.ctl (shell completion,
    # --help) does not pay for pyzmq and msgspec.
    if name in __all__:
        import importlib

        module = importlib.import_module(f"clawsup.client.{_MODULES.get(name, '_errors')}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
