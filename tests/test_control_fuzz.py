"""Hypothesis throws random bytes, random JSON and ill-typed requests at a real server.

Whatever comes in, the answer is one frame of JSON with "ok", a failure carries one of
the documented codes, and the server keeps answering ``status`` correctly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawsup.protocol import BAD_REQUEST, COMMANDS, UNKNOWN_COMMAND
from tests.fake_control import ServerThread
from tests.util import wait_until

# Only the codes the server itself gives, plus those the fake handler gives for a
# well-formed request with a bad value.
HANDLER_CODES = {"bad_value", "unknown_program"}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("fuzz") / "run") as running:
        yield running


@pytest.fixture(scope="module")
def req(server: ServerThread) -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    yield sock
    sock.close()
    ctx.term()


def _ask(sock: zmq.Socket[bytes], frame: bytes) -> dict[str, Any]:
    sock.send(frame)
    assert sock.poll(5000), f"no reply to {frame[:80]!r}"
    [reply_frame] = sock.recv_multipart()
    reply = json.loads(reply_frame)
    assert isinstance(reply, dict)
    assert isinstance(reply["ok"], bool)
    return reply


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(frame=st.binary(max_size=2048))
def test_random_bytes(req: zmq.Socket[bytes], frame: bytes) -> None:
    reply = _ask(req, frame)
    if not reply["ok"]:
        assert reply["error"]["code"] in {BAD_REQUEST, UNKNOWN_COMMAND}


@FUZZ
@given(value=json_values)
def test_random_json(req: zmq.Socket[bytes], value: object) -> None:
    reply = _ask(req, json.dumps(value).encode())
    if isinstance(value, dict) and value.get("cmd") in COMMANDS:
        return  # hypothesis wrote a real request; the other tests cover those
    assert reply["ok"] is False
    assert reply["error"]["code"] in {BAD_REQUEST, UNKNOWN_COMMAND}


@FUZZ
@given(
    cmd=st.text(max_size=30).filter(lambda c: c not in COMMANDS),
    args=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_unknown_commands(req: zmq.Socket[bytes], cmd: str, args: dict[str, object]) -> None:
    reply = _ask(req, json.dumps({**args, "cmd": cmd}).encode())
    assert reply["error"]["code"] == UNKNOWN_COMMAND


# Every field a command takes, with values of the right type.
ARGUMENTS: dict[str, dict[str, Any]] = {
    "status": {},
    "start": {"program": "gateway", "wait": False},
    "stop": {"program": "gateway", "wait": False},
    "restart": {"program": "gateway", "wait": False, "reason": "fuzz"},
    "signal": {"signal": "HUP", "program": "gateway"},
    "set_model": {"model": "anthropic/claude-opus-4-5"},
    "set_timezone": {"timezone": "UTC"},
    "health": {},
    "reload": {},
    "shutdown": {},
    "version": {},
    "incidents": {"since": 60.0, "limit": 5},
}


def _wrong_type_for(value: Any) -> st.SearchStrategy[Any]:
    """Values msgspec must refuse where ``value``'s type is expected."""
    if isinstance(value, bool):
        return st.integers() | st.text() | st.lists(st.booleans(), min_size=1)
    if isinstance(value, str):
        return (
            st.integers()
            | st.booleans()
            | st.lists(st.text(), max_size=2)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
        )
    if isinstance(value, float):
        return (
            st.text() | st.booleans() | st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=2)
        )
    return st.text() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def ill_typed_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    cmd = draw(st.sampled_from([c for c, fields in ARGUMENTS.items() if fields]))
    fields = dict(ARGUMENTS[cmd])
    field = draw(st.sampled_from(sorted(fields)))
    fields[field] = draw(_wrong_type_for(fields[field]))
    return cmd, field, fields


@FUZZ
@given(request=ill_typed_requests())
def test_wrong_types(req: zmq.Socket[bytes], request: tuple[str, str, dict[str, Any]]) -> None:
    cmd, field, fields = request
    reply = _ask(req, json.dumps({"cmd": cmd, **fields}).encode())
    assert reply["ok"] is False
    assert reply["error"]["code"] == BAD_REQUEST
    assert f"$.{field}" in reply["error"]["message"] or cmd in reply["error"]["message"]


@FUZZ
@given(cmd=st.sampled_from(sorted(ARGUMENTS)), extra=st.text(min_size=1, max_size=10))
def test_unknown_fields(req: zmq.Socket[bytes], cmd: str, extra: str) -> None:
    if extra in ARGUMENTS[cmd] or extra == "cmd":
        return
    reply = _ask(req, json.dumps({"cmd": cmd, extra: 1}).encode())
    assert reply["error"]["code"] == BAD_REQUEST
    assert "unknown field" in reply["error"]["message"]


@FUZZ
@given(cmd=st.sampled_from(sorted(ARGUMENTS)), use_all=st.booleans())
def test_well_typed_requests_reach_the_handler(req: zmq.Socket[bytes], cmd: str, use_all: bool) -> None:
    fields = ARGUMENTS[cmd] if use_all else {}
    if cmd in ("signal", "set_model", "set_timezone"):
        fields = ARGUMENTS[cmd]  # required arguments
    reply = _ask(req, json.dumps({"cmd": cmd, **fields}).encode())
    assert reply["ok"] is True or reply["error"]["code"] in HANDLER_CODES


def test_still_serving_after_the_fuzz(req: zmq.Socket[bytes], server: ServerThread) -> None:
    reply = _ask(req, b'{"cmd": "status"}')
    assert reply["ok"] is True
    assert reply["programs"][0]["name"] == "gateway"
    # The task that answered is dropped from the set a moment after its reply went out.
    wait_until(lambda: server.server.in_flight == 0, what="no request left in flight")
