"""Where the control socket is, and why an ipc socket file cannot be connected to.

Light on purpose (os only; socket when asked): the fast path of ``clawsupctl`` uses it
without pyzmq.
"""

from __future__ import annotations

import os

DEFAULT_ENDPOINT = "ipc:///run/clawsup/control.sock"
DEFAULT_TIMEOUT = 5.0
IPC = "ipc://"


def normalize_endpoint(endpoint: str) -> str:
    """``/run/clawsup/control.sock`` -> ``ipc:///run/clawsup/control.sock``."""
    if "://" in endpoint:
        return endpoint
    return f"{IPC}{os.path.abspath(endpoint)}"


def default_endpoint() -> str:
    return normalize_endpoint(os.environ.get("CLAWSUP_SOCKET") or DEFAULT_ENDPOINT)


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len(IPC) :] if endpoint.startswith(IPC) else None


def unreachable_reason(error: OSError, path: str) -> str:
    """Why connecting a Unix socket to ``path`` failed, in the words of ``Unreachable``."""
    if isinstance(error, FileNotFoundError):
        return "is it running?"
    if isinstance(error, PermissionError):
        return f"permission denied on {path}"
    if isinstance(error, ConnectionRefusedError):
        return "is it running? the socket file is left from a dead supervisor"
    return f"{error.strerror}"


def why_unreachable(path: str) -> str | None:
    """Why an ipc socket file cannot be connected to, or None if something accepts.

    Asked only after a call failed, so the happy path never makes this extra connection
    (nor imports the socket module).
    """
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        return unreachable_reason(exc, path)
    finally:
        probe.close()
    return None
