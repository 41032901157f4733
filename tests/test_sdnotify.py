"""systemd notify datagrams, received on a real AF_UNIX SOCK_DGRAM socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.supervisor.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_sends_ready_status_watchdog_stopping_to_a_path_socket(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    try:
        assert notifier.enabled
        assert notifier.ready("gateway RUNNING")
        assert fields(sock) == ["READY=1", "STATUS=gateway RUNNING"]
        assert notifier.status("gateway is hung\nrestarting")
        assert fields(sock) == ["STATUS=gateway is hung restarting"]
        assert notifier.watchdog()
        assert fields(sock) == ["WATCHDOG=1"]
        assert notifier.stopping()
        assert fields(sock) == ["STOPPING=1"]
    finally:
        notifier.close()


def test_abstract_socket_name(tmp_path: Path) -> None:
    name = f"clawsup-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5.0)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.ready()
        assert fields(sock) == ["READY=1"]
    finally:
        notifier.close()
        sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).watchdog_interval() == 15.0


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = Notifier(env)
    assert notifier.watchdog_interval() is None
    assert not notifier.watchdog()


@pytest.mark.parametrize("usec", ["", "0", "soon", "-5"])
def test_bad_or_missing_watchdog_usec_means_no_watchdog(usec: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval() is None


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_relative_notify_socket_is_ignored() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "notify.sock"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_vanished_systemd_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert notifier.enabled
        assert not notifier.ready()
        assert not notifier.watchdog()  # no watchdog asked for
        assert not notifier.stopping()
    finally:
        notifier.close()


def test_unset_environment_hides_the_socket_from_children(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1", "HOME": "/"}
    notifier = Notifier(env, unset_environment=True)
    try:
        assert env == {"HOME": "/"}
        assert notifier.ready()
        assert fields(sock) == ["READY=1"]
    finally:
        notifier.close()
