"""Alerts against a real HTTP server on 127.0.0.1 playing the Telegram Bot API / a webhook.

The alerter runs on a real asyncio loop; waits on what the server saw go through
``wait_until`` in a worker thread, so the loop under test stays free meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from clawsup.protocol import Event
from clawsup.supervisor.alerts import Alerter, format_alert, retry_after_header
from clawsup.supervisor.config import (
    AlertsConfig,
    ConfigError,
    TelegramConfig,
    WebhookConfig,
    parse_config,
)
from clawsup.units import Duration
from tests.util import wait_until

TOKEN = "123456:TEST-token"
TOKEN_ENV = "CLAWSUP_TEST_TELEGRAM_TOKEN"
CHAT = "-100987654"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class FakeBotAPI:
    """A real HTTP server; each request answers with the next scripted behaviour.

    Behaviours: ``"ok"`` (the default), ``"hang"`` (never answers), ``("429", seconds)``
    (Telegram's flood control), ``("status", code, headers)`` and ``"chunked"``.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.received: list[Received] = []
        self.script: deque[Any] = deque()
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                api.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.monotonic())
                )
                behaviour: Any = api.script.popleft() if api.script else "ok"
                if behaviour == "hang":
                    api.release.wait(30)
                    return
                if behaviour == "chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for part in (b'{"ok":', b'true,"result":{}}'):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if behaviour == "ok":
                    self.answer(200, {"ok": True, "result": {"message_id": len(api.received)}})
                elif behaviour[0] == "429":
                    self.answer(429, {
                        "ok": False,
                        "error_code": 429,
                        "description": f"Too Many Requests: retry after {behaviour[1]}",
                        "parameters": {"retry_after": behaviour[1]},
                    })
                else:
                    _, code, headers = behaviour
                    self.answer(code, {"ok": False, "error_code": code,
                                       "description": "scripted failure"}, headers)

            def answer(self, code: int, body: dict[str, Any],
                       headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        wait_until(lambda: len(self.received) >= count, timeout=timeout,
                   what=f"{count} requests at the fake Bot API")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeBotAPI]:
    server = FakeBotAPI()
    yield server
    server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alerts_config(
    api: FakeBotAPI,
    *,
    events: list[str] | None = None,
    telegram: bool = True,
    webhook: bool = False,
    timeout: float = 5.0,
    retries: int = 3,
    queue_size: int = 100,
    quiet_period: float = 600.0,
) -> AlertsConfig:
    return AlertsConfig(
        events=events or ["hung", "fatal", "crash_loop", "message_timeout", "breaker_open"],
        quiet_period=Duration(quiet_period),
        queue_size=queue_size,
        retries=retries,
        telegram=TelegramConfig(chat_id=CHAT, token_env=TOKEN_ENV, api_base=api.url,
                                timeout=Duration(timeout)) if telegram else None,
        webhook=WebhookConfig(url=f"{api.url}/hook?source=clawsup",
                              timeout=Duration(timeout)) if webhook else None,
    )


def make_alerter(config: AlertsConfig, **kwargs: Any) -> Alerter:
    kwargs.setdefault("environ", {TOKEN_ENV: TOKEN})
    kwargs.setdefault("hostname", "testhost")
    kwargs.setdefault("retry_base", 0.05)
    return Alerter(config, **kwargs)


def hung(program: str = "gateway", ts: float = 1_768_046_400.0) -> Event:
    return Event(ts=ts, kind="hung", program=program,
                 message=f"{program} is hung (state: D for 10.0s), restarting",
                 data={"state": "D", "seconds": 10.0})


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def in_thread(wait: Callable[[], object]) -> None:
    await asyncio.to_thread(wait)


def deliver(alerter: Alerter, *events: Event, sent: int = 0, failed: int = 0) -> Alerter:
    """Start ``alerter`` on a fresh loop, submit ``events``, wait for the counts, close."""

    async def scenario() -> None:
        await alerter.start()
        for event in events:
            alerter.submit(event)
        await in_thread(lambda: wait_until(
            lambda: alerter.stats.sent >= sent and alerter.stats.failed >= failed,
            what=f"{sent} alerts sent and {failed} failed",
        ))
        await alerter.close()

    run(scenario)
    return alerter


def test_telegram_message_reaches_the_bot_api(api: FakeBotAPI) -> None:
    deliver(make_alerter(alerts_config(api)), hung(), sent=1)
    [request] = api.received
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body["chat_id"] == CHAT
    assert request.body["text"].splitlines()[0] == (
        "clawsup@testhost: gateway is hung (state: D for 10.0s), restarting"
    )
    assert request.body["text"].splitlines()[1] == "at 2026-01-10 12:00:00 UTC"


def test_webhook_gets_the_event_as_json(api: FakeBotAPI) -> None:
    deliver(make_alerter(alerts_config(api, telegram=False, webhook=True)), hung(), sent=1)
    [request] = api.received
    assert request.path == "/hook?source=clawsup"
    body = request.body
    assert body["kind"] == "hung"
    assert body["program"] == "gateway"
    assert body["ts"] == 1_768_046_400.0
    assert body["data"] == {"state": "D", "seconds": 10.0}
    assert body["host"] == "testhost"
    assert body["suppressed"] == 0
    assert body["text"].startswith("clawsup@testhost: gateway is hung")


def test_missing_token_disables_telegram_with_one_clear_error(
    api: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    alerter = make_alerter(alerts_config(api, webhook=True), environ={})
    with caplog.at_level(logging.ERROR, logger="clawsup.supervisor.alerts"):
        deliver(alerter, hung(), hung("helper"), sent=2)
    assert alerter.destinations == ["webhook"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"alerts: Telegram disabled: the bot token variable {TOKEN_ENV} is not set"
    ]
    assert all(r.path.startswith("/hook") for r in api.received)


def test_a_hanging_api_times_out_is_retried_and_never_blocks_the_loop(
    api: FakeBotAPI,
) -> None:
    api.script.extend(["hang", "hang", "ok"])
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api, timeout=0.3, retries=2))
        await alerter.start()
        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        alerter.submit(hung())
        assert time.monotonic() - started < 0.05  # submit only queues
        await in_thread(lambda: wait_until(lambda: alerter.stats.sent == 1))
        ticking.cancel()
        assert alerter.stats.failed == 0
        await alerter.close()

    run(scenario)
    assert len(api.received) == 3
    # Two timeouts of 0.3 s each before the answer...
    assert api.received[2].at - api.received[0].at >= 0.6
    # ... during which the loop kept running: no gap between ticks anywhere near that.
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) > 30
    assert max(gaps) < 0.25


def test_telegram_429_retry_after_is_honoured(api: FakeBotAPI) -> None:
    api.script.extend([("429", 1), "ok"])
    # retry_base is 50 ms: a retry after a second can only be the server's wish.
    deliver(make_alerter(alerts_config(api)), hung(), sent=1)
    assert len(api.received) == 2
    assert api.received[1].at - api.received[0].at >= 0.95
    assert api.received[0].body == api.received[1].body


def test_webhook_retry_after_header_is_honoured(api: FakeBotAPI) -> None:
    api.script.extend([("status", 503, {"Retry-After": "1"}), "ok"])
    deliver(make_alerter(alerts_config(api, telegram=False, webhook=True)), hung(), sent=1)
    assert len(api.received) == 2
    assert api.received[1].at - api.received[0].at >= 0.95


def test_server_errors_are_retried_then_given_up(api: FakeBotAPI) -> None:
    api.script.extend([("status", 502, {})] * 3)
    alerter = deliver(make_alerter(alerts_config(api, retries=2)), hung(), failed=1)
    assert alerter.stats.sent == 0
    assert len(api.received) == 3
    # Exponential: 50 ms, then 100 ms.
    first, second, third = (r.at for r in api.received)
    assert second - first >= 0.05
    assert third - second >= 0.1


def test_a_refused_request_is_not_retried(api: FakeBotAPI) -> None:
    api.script.append(("status", 400, {}))
    deliver(make_alerter(alerts_config(api)), hung(), hung("helper"), sent=1, failed=1)
    assert [r.body["text"].split(" ")[1] for r in api.received] == ["gateway", "helper"]


def test_a_chunked_answer_is_read(api: FakeBotAPI) -> None:
    api.script.append("chunked")
    deliver(make_alerter(alerts_config(api)), hung(), sent=1)
    assert len(api.received) == 1


def test_same_kind_and_program_within_quiet_period_is_suppressed(api: FakeBotAPI) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api, quiet_period=600.0), clock=clock)
        await alerter.start()
        alerter.submit(hung())  # sent
        clock.now += 10
        alerter.submit(hung())  # suppressed
        clock.now += 10
        alerter.submit(hung())  # suppressed
        alerter.submit(hung("helper"))  # another program: sent
        alerter.submit(Event(ts=1.0, kind="fatal", program="gateway", message="gateway is FATAL"))
        clock.now += 600  # 620 s after the first
        alerter.submit(hung())  # sent, telling of the two suppressed
        alerter.submit(hung())  # a new quiet period: suppressed
        await in_thread(lambda: wait_until(lambda: alerter.stats.sent == 4))
        assert alerter.stats.suppressed == 3
        await alerter.close()

    run(scenario)
    texts = [r.body["text"] for r in api.received]
    assert len(texts) == 4
    assert "suppressed" not in texts[0]
    assert texts[1].startswith("clawsup@testhost: helper is hung")
    assert texts[2].startswith("clawsup@testhost: gateway is FATAL")
    assert texts[3].splitlines()[1] == (
        "(2 similar alerts suppressed since the last one; quiet period 10m)"
    )


def test_only_configured_event_kinds_are_sent(api: FakeBotAPI) -> None:
    deliver(
        make_alerter(alerts_config(api, events=["fatal"])),
        hung(),
        Event(ts=1.0, kind="started", program="gateway"),
        Event(ts=1.0, kind="fatal", program="gateway", message="FATAL"),
        sent=1,
    )
    assert len(api.received) == 1
    assert "FATAL" in api.received[0].body["text"]


def test_full_queue_drops_the_oldest(api: FakeBotAPI) -> None:
    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api, queue_size=2))
        for name in ("p0", "p1", "p2", "p3", "p4"):
            alerter.submit(hung(name))  # queued before the sender runs
        assert alerter.stats.dropped == 3
        await alerter.start()
        await in_thread(lambda: wait_until(lambda: alerter.stats.sent == 2))
        await alerter.close()

    run(scenario)
    assert [r.body["text"].split(" ")[1] for r in api.received] == ["p3", "p4"]


def test_full_queue_behind_a_hanging_request_drops_the_oldest(api: FakeBotAPI) -> None:
    api.script.extend(["hang"])

    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api, queue_size=2, timeout=1.0, retries=1))
        await alerter.start()
        alerter.submit(hung("p0"))
        await in_thread(lambda: api.wait_for(1))  # p0 in flight, hanging
        for name in ("p1", "p2", "p3"):
            alerter.submit(hung(name))
        assert alerter.stats.dropped == 1
        await in_thread(lambda: wait_until(lambda: alerter.stats.sent == 3))
        await alerter.close()

    run(scenario)
    assert [r.body["text"].split(" ")[1] for r in api.received] == ["p0", "p0", "p2", "p3"]


def test_close_drains_what_is_queued(api: FakeBotAPI) -> None:
    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api))
        await alerter.start()
        for name in ("a", "b", "c"):
            alerter.submit(hung(name))
        await alerter.close(timeout=5.0)
        assert alerter.stats.sent == 3
        alerter.submit(hung("late"))  # after close: ignored
        assert alerter.stats.dropped == 0

    run(scenario)
    assert len(api.received) == 3


def test_close_gives_up_on_a_hanging_api_at_its_deadline(api: FakeBotAPI) -> None:
    api.script.append("hang")

    async def scenario() -> None:
        alerter = make_alerter(alerts_config(api, timeout=30.0))
        await alerter.start()
        alerter.submit(hung())
        alerter.submit(hung("helper"))
        await in_thread(lambda: api.wait_for(1))
        started = time.monotonic()
        await alerter.close(timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert alerter.stats.dropped == 2  # the one in flight and the one queued
        assert alerter.stats.sent == 0

    run(scenario)


def test_unreachable_api_is_retried_then_given_up() -> None:
    # A port nobody listens on: connection refused at once, every time.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = AlertsConfig(
        events=["hung"], retries=2,
        telegram=TelegramConfig(chat_id=CHAT, token_env=TOKEN_ENV,
                                api_base=f"http://127.0.0.1:{port}", timeout=Duration(2.0)),
    )

    deliver(make_alerter(config), hung(), failed=1)


def test_a_non_http_url_is_refused_by_the_config() -> None:
    for alerts in ('[alerts.webhook]\nurl = "ftp://127.0.0.1/hook"\n',
                   '[alerts.telegram]\nchat_id = "1"\napi_base = "file:///etc/passwd"\n'):
        raw = tomllib.loads('[programs.gw]\ncommand = ["true"]\nmain = true\n' + alerts)
        with pytest.raises(ConfigError, match=r"alerts\.(webhook|telegram): .*http:// or https://"):
            parse_config(raw, "clawsup.toml")


def test_format_alert_names_the_program_when_the_message_does_not() -> None:
    event = Event(ts=0.0, kind="liveness_failed", program="gateway", message="probe failed 3 times")
    text = format_alert(event, "box", 0, 600.0)
    assert text.splitlines()[0] == "clawsup@box: gateway: probe failed 3 times"
    bare = Event(ts=0.0, kind="crash_loop", program="gateway")
    assert format_alert(bare, "box", 1, 60.0).splitlines()[:2] == [
        "clawsup@box: gateway: crash loop",
        "(1 similar alert suppressed since the last one; quiet period 1m)",
    ]


def test_retry_after_header_forms() -> None:
    assert retry_after_header("5", 0.0) == 5.0
    assert retry_after_header(None, 0.0) is None
    assert retry_after_header("soon", 0.0) is None
    later = retry_after_header("Sat, 10 Jan 2026 12:00:30 GMT", 1_768_046_400.0)
    assert later == 30.0


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[FakeBotAPI, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=clawsup-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = FakeBotAPI(tls=context)
    yield server, cert
    server.close()


def test_https_verifies_the_server_with_the_default_context(
    tls_api: tuple[FakeBotAPI, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, cert = tls_api
    # The default context trusts what SSL_CERT_FILE names: here, our test certificate.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    deliver(make_alerter(alerts_config(api)), hung(), sent=1)
    [request] = api.received
    assert request.path == f"/bot{TOKEN}/sendMessage"


def test_https_refuses_an_untrusted_certificate(tls_api: tuple[FakeBotAPI, Path]) -> None:
    api, _ = tls_api
    deliver(make_alerter(alerts_config(api, retries=1)), hung(), failed=1)
    assert api.received == []  # the token never left the client
