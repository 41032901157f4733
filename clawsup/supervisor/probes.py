"""Liveness probes. A blocked Node event loop still accepts TCP connections (the kernel's
backlog answers the handshake), so only an HTTP *response* proves the loop runs; the TCP
probe is offered for programs that have no HTTP at all."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


async def http_probe(url: str, timeout: float) -> tuple[bool, str]:
    """Any HTTP response (whatever its status) within ``timeout`` passes."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                "User-Agent: clawsup-liveness\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        return False, f"no HTTP response from {url} within {timeout:g}s"
    except OSError as error:
        return False, f"cannot connect to {url}: {error.strerror or error}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not status_line.startswith(b"HTTP/"):
        return False, f"not an HTTP response from {url}: {status_line[:40]!r}"
    return True, status_line.decode("latin-1").strip()


async def tcp_probe(address: str, timeout: float) -> tuple[bool, str]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, int(port))
    except TimeoutError:
        return False, f"no TCP connection to {address} within {timeout:g}s"
    except OSError as error:
        return False, f"cannot connect to {address}: {error.strerror or error}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "connected"
