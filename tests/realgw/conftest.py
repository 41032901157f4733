"""Fixtures of the real-gateway suite (marker ``realgw``); see harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realgw.fake_model import FakeModelServer
from tests.realgw.harness import GatewayInstall, RealRun, install_gateway


@pytest.fixture(scope="session")
def gateway_install() -> GatewayInstall:
    """The pinned release, installed (or reused) by tools/install-gateway; skips without npm."""
    return install_gateway()


RunFactory = Callable[..., RealRun]


def _runs(tmp: Path, install: GatewayInstall) -> Iterator[RunFactory]:
    started: list[tuple[RealRun, FakeModelServer]] = []

    def make(name: str = "run", **kwargs: Any) -> RealRun:
        model = FakeModelServer().start()
        directory = tmp / name
        directory.mkdir()
        run = RealRun(directory, install, model, **kwargs)
        started.append((run, model))
        return run

    try:
        yield make
    finally:
        for run, model in reversed(started):
            try:
                run.stop()
            finally:
                model.stop()


@pytest.fixture
def real_runs(tmp_path: Path, gateway_install: GatewayInstall) -> Iterator[RunFactory]:
    """Make RealRuns (each with its own fake model server); all stopped after the test."""
    yield from _runs(tmp_path, gateway_install)


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory: pytest.TempPathFactory,
                gateway_install: GatewayInstall) -> Iterator[RunFactory]:
    """As real_runs, shared by a module's tests: one gateway start serves many tests."""
    yield from _runs(tmp_path_factory.mktemp("realgw"), gateway_install)


def serving_module_run(module_runs: RunFactory, name: str, override: str,
                       prepare: Callable[[RealRun], object] | None = None) -> RealRun:
    """The one gateway a test module shares: started under ``override``, serving.

    ``prepare`` runs before clawsup starts (e.g. to install a skill in its home)."""
    run = module_runs(name, override=override)
    if prepare is not None:
        prepare(run)
    run.start()
    run.serving(what="the first start")
    return run
