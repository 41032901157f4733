"""Alerts to Telegram and to a JSON webhook, sent without ever holding up supervision.

The loop adds ``Alerter.submit`` to its event sinks. ``submit`` only filters, de-duplicates
and queues; one background task per destination does the HTTP with asyncio streams, so a
Telegram API that hangs or rate-limits delays alerts, never a restart.

- Only the kinds in ``[alerts] events`` are sent.
- The same (kind, program) within ``quiet_period`` of the last one sent is suppressed and
  counted; the next one sent after the quiet period says how many were suppressed.
- Each destination has a queue of ``queue_size``; when full, the oldest alert is dropped
  (and counted): the newest news matters most.
- A failed request is retried up to ``retries`` times with exponential backoff, or after
  the delay the server asks for (Telegram's ``parameters.retry_after`` on 429, the
  ``Retry-After`` header for the webhook). Other 4xx answers are not retried: the request
  itself is wrong (bad token, unknown chat).
- The bot token never appears in a log line: it is part of the Bot API URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from clawsup import __version__
from clawsup.protocol import Event
from clawsup.supervisor.config import AlertsConfig
from clawsup.units import format_duration

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 << 10
MAX_RETRY_AFTER = 3600.0
TELEGRAM_MAX_TEXT = 4096
DEFAULT_CLOSE_TIMEOUT = 5.0


class HTTPProtocolError(Exception):
    """The server's answer is not HTTP we can read."""


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


async def post_json(url: str, body: bytes) -> HTTPResponse:
    """POST ``body`` as JSON with HTTP/1.1 over asyncio streams (TLS for https://).

    No timeout here: the caller wraps the call in ``asyncio.wait_for``, which also covers
    a server that accepts and never answers.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got scheme {parts.scheme!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=context, server_hostname=parts.hostname if secure else None
    )
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        head = (
            f"POST {target} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"User-Agent: clawsup/{__version__}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)
        await writer.drain()
        return await _read_response(reader)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
        raise HTTPProtocolError(f"unreadable HTTP response: {error}") from error
    finally:
        writer.close()
        # The answer is in (or abandoned): a reset while closing changes nothing, and a
        # TLS peer that never acknowledges the close must not hold the sender for long.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _read_response(reader: asyncio.StreamReader) -> HTTPResponse:
    status_line = await reader.readline()
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/"):
        raise HTTPProtocolError(f"not an HTTP status line: {status_line[:80]!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise HTTPProtocolError("connection closed inside the headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
        if len(headers) > 100:
            raise HTTPProtocolError("too many response headers")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        body = await reader.readexactly(min(length, MAX_RESPONSE_BYTES))
    else:
        body = await reader.read(MAX_RESPONSE_BYTES)
    return HTTPResponse(status=status, headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while len(body) < MAX_RESPONSE_BYTES:
        size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        room = MAX_RESPONSE_BYTES - len(body)
        body += await reader.readexactly(min(size, room))
        if size > room:
            break  # enough to judge the answer by; the connection is closed anyway
        await reader.readline()  # the CRLF after each chunk
    return bytes(body)


def retry_after_header(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds: ``"120"`` or an HTTP date; None when absent or bad."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# -- outcomes of one attempt -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Delivered:
    pass


@dataclass(frozen=True, slots=True)
class _Retry:
    why: str
    after: float | None = None  # what the server asked for; None: our own backoff


@dataclass(frozen=True, slots=True)
class _Rejected:
    why: str


_Outcome = _Delivered | _Retry | _Rejected


class _TelegramReply(msgspec.Struct):
    ok: bool = False
    description: str = ""
    parameters: dict[str, Any] = {}


def judge_telegram(response: HTTPResponse) -> _Outcome:
    try:
        reply = msgspec.json.decode(response.body, type=_TelegramReply)
    except (msgspec.DecodeError, msgspec.ValidationError):
        reply = _TelegramReply()
    if 200 <= response.status < 300 and reply.ok:
        return _Delivered()
    why = f"HTTP {response.status}" + (f": {reply.description}" if reply.description else "")
    if response.status == 429:
        after = reply.parameters.get("retry_after")
        if isinstance(after, int | float) and not isinstance(after, bool):
            return _Retry(why, float(after))
        return _Retry(why, retry_after_header(response.headers.get("retry-after"), time.time()))
    if response.status >= 500 or response.status == 408:
        return _Retry(why)
    return _Rejected(why)


def judge_webhook(response: HTTPResponse) -> _Outcome:
    if 200 <= response.status < 300:
        return _Delivered()
    why = f"HTTP {response.status}"
    if response.status in (429, 503):
        return _Retry(why, retry_after_header(response.headers.get("retry-after"), time.time()))
    if response.status >= 500 or response.status == 408:
        return _Retry(why)
    return _Rejected(why)


# -- alerts and destinations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    event: Event
    text: str
    suppressed: int


@dataclass(slots=True)
class AlertStats:
    """Counts per delivery: an alert for two destinations counts twice in sent/dropped."""

    sent: int = 0
    failed: int = 0  # given up after retries, or rejected
    dropped: int = 0  # pushed out of a full queue, or left undelivered at shutdown
    suppressed: int = 0  # de-duplicated within the quiet period


def format_alert(event: Event, host: str, suppressed: int, quiet_period: float) -> str:
    """``clawsup@host: gateway is hung (state: D for 10.0s), restarting``."""
    what = event.message or event.kind.replace("_", " ")
    if event.program and event.program not in what:
        what = f"{event.program}: {what}"
    lines = [f"clawsup@{host}: {what}"]
    if suppressed:
        lines.append(
            f"({suppressed} similar alert{'s' if suppressed > 1 else ''} suppressed since "
            f"the last one; quiet period {format_duration(quiet_period)})"
        )
    lines.append(time.strftime("at %Y-%m-%d %H:%M:%S UTC", time.gmtime(event.ts)))
    return "\n".join(lines)


_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _QuietWindow:
    """De-duplication of one (kind, program): when one was last sent, how many since."""

    last_sent: float
    suppressed: int = 0


@dataclass(eq=False)
class _Destination:
    """One place alerts go, with its own queue and sender task."""

    name: str
    timeout: float
    judge: Callable[[HTTPResponse], _Outcome]
    payload: Callable[[Alert], bytes]
    url: str | None = None  # Telegram's comes from the environment at start
    queue: deque[Alert] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sending: Alert | None = None


class Alerter:
    def __init__(
        self,
        config: AlertsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
        hostname: str | None = None,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.config = config
        self.stats = AlertStats()
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._host = hostname or socket.gethostname()
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._kinds = frozenset(config.events)
        self._quiet: dict[tuple[str, str | None], _QuietWindow] = {}
        self._destinations: list[_Destination] = []
        self._started = False
        self._closing = False
        if config.telegram is not None:
            chat_id = config.telegram.chat_id
            self._destinations.append(
                _Destination(
                    name="telegram",
                    timeout=config.telegram.timeout,
                    judge=judge_telegram,
                    payload=lambda alert: _encoder.encode(
                        {"chat_id": chat_id, "text": alert.text[:TELEGRAM_MAX_TEXT]}
                    ),
                )
            )
        if config.webhook is not None:
            self._destinations.append(
                _Destination(
                    name="webhook",
                    timeout=config.webhook.timeout,
                    judge=judge_webhook,
                    payload=self._webhook_payload,
                    url=config.webhook.url,
                )
            )

    @property
    def destinations(self) -> list[str]:
        return [d.name for d in self._destinations]

    def _webhook_payload(self, alert: Alert) -> bytes:
        event = alert.event
        return _encoder.encode(
            {
                "ts": event.ts,
                "kind": event.kind,
                "program": event.program,
                "message": event.message,
                "data": event.data,
                "host": self._host,
                "text": alert.text,
                "suppressed": alert.suppressed,
            }
        )

    async def start(self) -> None:
        """Read the bot token and start one sender task per destination."""
        if self._started:
            return
        self._started = True
        telegram = self.config.telegram
        for destination in list(self._destinations):
            if destination.name == "telegram" and telegram is not None:
                token = self._environ.get(telegram.token_env, "").strip()
                if not token:
                    log.error(
                        "alerts: Telegram disabled: the bot token variable %s is not set",
                        telegram.token_env,
                    )
                    self._destinations.remove(destination)
                    continue
                destination.url = f"{telegram.api_base.rstrip('/')}/bot{token}/sendMessage"
            # The config only admits http:// and https:// URLs (WebhookConfig, api_base).
            assert destination.url is not None
            destination.task = asyncio.create_task(
                self._send_loop(destination), name=f"clawsup-alerts-{destination.name}"
            )
            destination.task.add_done_callback(self._sender_ended)

    def submit(self, event: Event) -> None:
        """Event sink: filter, de-duplicate and queue; never blocks, never waits."""
        if self._closing or event.kind not in self._kinds or not self._destinations:
            return
        now = self._clock()
        key = (event.kind, event.program)
        quiet = self._quiet.get(key)
        if quiet is not None and now - quiet.last_sent < self.config.quiet_period:
            quiet.suppressed += 1
            self.stats.suppressed += 1
            return
        suppressed = quiet.suppressed if quiet is not None else 0
        self._quiet[key] = _QuietWindow(last_sent=now)
        alert = Alert(
            event=event,
            text=format_alert(event, self._host, suppressed, self.config.quiet_period),
            suppressed=suppressed,
        )
        for destination in self._destinations:
            if len(destination.queue) >= self.config.queue_size:
                dropped = destination.queue.popleft()
                self.stats.dropped += 1
                log.warning(
                    "alerts: %s queue full, dropped the oldest alert (%s)",
                    destination.name,
                    dropped.event.kind,
                )
            destination.queue.append(alert)
            destination.idle.clear()
            destination.wake.set()

    async def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Stop taking alerts, give the queued ones ``timeout`` seconds, then stop."""
        self._closing = True
        running = [d for d in self._destinations if d.task is not None and not d.task.done()]
        with contextlib.suppress(TimeoutError):  # what is left is counted below
            await asyncio.wait_for(
                asyncio.gather(*(d.idle.wait() for d in running)), timeout=timeout
            )
        for destination in running:
            assert destination.task is not None
            destination.task.cancel()
        await asyncio.gather(*(d.task for d in running if d.task), return_exceptions=True)
        left = sum(len(d.queue) + (d.sending is not None) for d in self._destinations)
        if left:
            self.stats.dropped += left
            log.warning("alerts: %d alerts not delivered before shutdown", left)
        for destination in self._destinations:
            destination.queue.clear()
            destination.sending = None

    # -- the sender task -----------------------------------------------------------------------

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("alerts: %s stopped by a bug", task.get_name(), exc_info=task.exception())

    async def _send_loop(self, destination: _Destination) -> None:
        while True:
            if not destination.queue:
                destination.idle.set()
                destination.wake.clear()
                await destination.wake.wait()
                continue
            destination.sending = destination.queue.popleft()
            await self._deliver(destination, destination.sending)
            destination.sending = None

    async def _deliver(self, destination: _Destination, alert: Alert) -> None:
        assert destination.url is not None
        try:
            body = destination.payload(alert)
        except (msgspec.EncodeError, TypeError) as error:
            log.error("alerts: cannot encode the %s alert: %s", alert.event.kind, error)
            self.stats.failed += 1
            return
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            outcome = await self._attempt(destination, destination.url, body)
            if isinstance(outcome, _Delivered):
                self.stats.sent += 1
                return
            if isinstance(outcome, _Rejected):
                log.error(
                    "alerts: %s refused the %s alert (%s); not retrying",
                    destination.name,
                    alert.event.kind,
                    outcome.why,
                )
                self.stats.failed += 1
                return
            if attempt + 1 == attempts:
                break
            delay = self._retry_delay(attempt, outcome.after)
            log.warning(
                "alerts: %s attempt %d/%d failed (%s); retrying in %.1fs",
                destination.name,
                attempt + 1,
                attempts,
                outcome.why,
                delay,
            )
            await asyncio.sleep(delay)
        log.error(
            "alerts: giving up on the %s alert to %s after %d attempts",
            alert.event.kind,
            destination.name,
            attempts,
        )
        self.stats.failed += 1

    async def _attempt(self, destination: _Destination, url: str, body: bytes) -> _Outcome:
        try:
            response = await asyncio.wait_for(post_json(url, body), destination.timeout)
        except TimeoutError:
            return _Retry(f"no answer within {format_duration(destination.timeout)}")
        except (OSError, HTTPProtocolError) as error:
            # Connection refused, DNS failure, TLS failure, reset: all worth another try.
            return _Retry(f"{type(error).__name__}: {error}")
        except ValueError as error:
            return _Rejected(str(error))  # a bad URL will not get better
        return destination.judge(response)

    def _retry_delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return min(max(asked, 0.0), MAX_RETRY_AFTER)
        return min(self._retry_base * 2.0**attempt, self._retry_max)
