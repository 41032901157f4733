"""Where the control socket is, whether an endpoint can be one, and why an ipc socket file
cannot be connected to.

Light on purpose (os and stat; socket when asked): ``clawsupctl status`` and ``health``
load it on every call.
"""

from __future__ import annotations

import os
import stat

DEFAULT_ENDPOINT = "ipc:///run/clawsup/control.sock"
DEFAULT_TIMEOUT = 5.0
IPC = "ipc://"
TCP = "tcp://"


class BadEndpoint(ValueError):
    """An endpoint that cannot be a control socket, whatever listens there."""


def normalize_endpoint(endpoint: str) -> str:
    """``/run/clawsup/control.sock`` -> ``ipc:///run/clawsup/control.sock``."""
    if "://" in endpoint:
        return endpoint
    return f"{IPC}{os.path.abspath(endpoint)}"


def default_endpoint() -> str:
    return normalize_endpoint(os.environ.get("CLAWSUP_SOCKET") or DEFAULT_ENDPOINT)


def ipc_path(endpoint: str) -> str | None:
    return endpoint[len(IPC) :] if endpoint.startswith(IPC) else None


def check_endpoint(endpoint: str) -> None:
    """Raise BadEndpoint unless ``endpoint`` is ``ipc://PATH`` or ``tcp://HOST:PORT``: the
    two kinds clawsup binds (an ``http://`` URL would otherwise reach libzmq's own error)."""
    scheme, _, rest = endpoint.partition("://")
    if endpoint.startswith(IPC):
        if not rest:
            raise BadEndpoint(f"{endpoint!r} names no socket file")
        return
    if endpoint.startswith(TCP):
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadEndpoint(f"{endpoint!r} is not tcp://HOST:PORT")
        return
    raise BadEndpoint(
        f"{scheme}:// is not a control socket: use ipc://PATH, a path, or tcp://HOST:PORT"
    )


def unreachable_reason(error: OSError, path: str) -> str:
    """Why connecting a Unix socket to ``path`` failed, in the words of ``Unreachable``."""
    if isinstance(error, FileNotFoundError):
        return "is it running?"
    if isinstance(error, PermissionError):
        return f"permission denied on {path}"
    if isinstance(error, ConnectionRefusedError):
        return "is it running? the socket file is left from a dead supervisor"
    return f"{error.strerror}"


def why_not_a_socket(path: str) -> str | None:
    """Why ``path`` cannot be connected to without trying (missing, or not a socket file:
    a regular file or a directory refuses a connection as a dead socket would), or None."""
    if path.startswith("@"):
        return None  # Linux's abstract namespace: no file to look at
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is it running?"
    except OSError as error:
        return unreachable_reason(error, path)
    if stat.S_ISSOCK(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"{path} is a directory, not a socket"
    if stat.S_ISREG(mode):
        return f"{path} is a regular file, not a socket"
    return f"{path} is not a socket"


def why_unreachable(path: str) -> str | None:
    """Why an ipc socket file cannot be connected to, or None if something accepts.

    Asked only after a call failed, so the happy path never makes this extra connection
    (nor imports the socket module).
    """
    import socket

    reason = why_not_a_socket(path)
    if reason is not None:
        return reason
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        return unreachable_reason(exc, path)
    finally:
        probe.close()
    return None


def why_tcp_unreachable(endpoint: str) -> str | None:
    """Why nothing accepts a TCP connection at ``tcp://HOST:PORT``, or None if something
    does (or the endpoint is not TCP)."""
    import socket

    if not endpoint.startswith(TCP):
        return None
    host, _, port = endpoint[len(TCP) :].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except (OSError, ValueError) as error:
        return str(error.strerror if isinstance(error, OSError) and error.strerror else error)
    return None
