"""The suite's folders mirror the code's layers (tests/election/ tests ddg/election/, ...), and
each test carries its folder's name as a marker: `pytest -m election`, `-m "not console"`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ddg_testkit import LocalCluster

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., LocalCluster]]:
    """Factory for LocalClusters (real redis-server, real ddg-node processes), all closed after
    the test, so no process outlives it. Closed last-made first: a cluster that borrows another
    one's Redis takes its nodes out of it before that Redis stops."""
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        c = LocalCluster(**kwargs)
        c.start_redis()
        made.append(c)
        return c

    yield make
    for c in reversed(made):
        c.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder (the markers are declared in pyproject.toml)."""
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(autouse=True)
def _quick_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                             ) -> None:
    """Under `./dev test --quick` (DDG_QUICK=1), a test that starts a process fails: it must be
    marked integration, or the edit loop's minute grows unseen."""
    if os.environ.get("DDG_QUICK") != "1":
        return
    nodeid = request.node.nodeid

    def refuse(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{nodeid} starts a process ({args[0] if args else kwargs}): "
                             "mark it @pytest.mark.integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say which external programs this run uses (ddg_testkit.tools: each may be overridden),
    with -q too: a failure on another machine starts with what differs there."""
    from ddg_testkit.tools import report
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        for line in report():
            terminal.write_line(f"tools: {line}")
