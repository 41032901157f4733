from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_control import FakeSupervisor, ServerThread
from tests.util import copy_home


@pytest.fixture
def clawdbot_home(tmp_path: Path) -> Path:
    """A writable gateway home (~/.clawdbot layout) in a temp dir."""
    return copy_home(tmp_path / "clawdbot-home")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Where a control server under test puts its sockets (created by the server)."""
    return tmp_path / "run"


@pytest.fixture
def server_handler() -> FakeSupervisor:
    """What answers the requests of ``server``; a module overrides it for other replies."""
    return FakeSupervisor()


@pytest.fixture
def server(run_dir: Path, server_handler: FakeSupervisor) -> Iterator[ServerThread]:
    """A real ControlServer on its own loop thread, answered by ``server_handler``."""
    with ServerThread(run_dir, server_handler) as running:
        yield running
