from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ddg_testkit import LocalCluster


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



def pytest_sessionstart(session: pytest.Session) -> None:
    """Say which external programs this run uses (ddg_testkit.tools: each may be overridden),
    with -q too: a failure on another machine starts with what differs there."""
    from ddg_testkit.tools import report
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        for line in report():
            terminal.write_line(f"tools: {line}")
