from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import copy_home


@pytest.fixture
def clawdbot_home(tmp_path: Path) -> Path:
    """A writable gateway home (~/.clawdbot layout) in a temp dir."""
    return copy_home(tmp_path / "clawdbot-home")
