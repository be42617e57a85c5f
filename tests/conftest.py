"""The suite's folders mirror the code's layers (tests/election/ tests ddg/election/, ...), and
each test carries its folder's name as a marker: `pytest -m election`, `-m "not console"`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ddg.local.embedded import PORTS_ENV, local_ports
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


# `./dev test --quick` (DDG_QUICK=1): only the tests that start no process. Selected here, not
# by -m, so that a -m of the caller (`./dev test --quick -m node`) narrows it.
QUICK = os.environ.get("DDG_QUICK") == "1"
NOT_QUICK = ("integration", "faults", "slow")
# DDG_ALONE, set by ./dev test when it runs workers: `skip` leaves out the tests marked alone
# (a bound on latency or availability under a load the test makes, which another worker's
# test beside it would add to), `only` runs just them, afterwards, in one process.
ALONE = os.environ.get("DDG_ALONE", "")


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist (DDG_TEST_WORKERS; --quick: a worker a core), each worker's nodes and Redis
    servers take ports from a slice of their own of the range (DDG_LOCAL_PORTS, or the
    default; the tests' processes inherit it): the workers cannot both pick a port that is
    free now, nor take one a killed node waits on. A range too small to share is left whole."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT")
    if worker is None or count is None:
        return
    lo, hi = local_ports()
    size = (hi - lo + 1) // int(count)
    if size < 200:
        return
    # A worker that crashed is replaced by gw<count>, gw<count+1>, ...: the slice of the one
    # it replaces.
    first = lo + int(worker.removeprefix("gw")) % int(count) * size
    os.environ[PORTS_ENV] = f"{first}-{first + size - 1}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder (the markers are declared in pyproject.toml); under
    --quick, leave out the tests that start processes or take seconds."""
    for item in items:
        if item.path.is_relative_to(TESTS) and item.path.parent != TESTS:
            item.add_marker(getattr(pytest.mark, item.path.relative_to(TESTS).parts[0]))
    # Modules with the long tests first (real faults, then processes), each module's tests
    # together and in order: worksteal gives the first half to one worker, which starts on
    # the long ones, and the run ends on short ones taken from its tail, not on one worker
    # with a 2-minute fault run while the other has nothing left.
    rank: dict[Path, int] = {}
    for item in items:
        mine = 0 if item.get_closest_marker("faults") else (
            1 if item.get_closest_marker("integration") else 2)
        rank[item.path] = min(rank.get(item.path, 2), mine)
    items.sort(key=lambda i: rank[i.path])
    left_out = [i for i in items
                if (QUICK and any(i.get_closest_marker(m) for m in NOT_QUICK))
                or (ALONE in ("skip", "only")
                    and bool(i.get_closest_marker("alone")) == (ALONE == "skip"))]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        gone = set(left_out)
        items[:] = [i for i in items if i not in gone]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under --quick, from here on starting a process fails (in a test, or a fixture of any
    scope): the test must be marked integration, or the edit loop's minute grows unseen.
    (Collection may: some modules ask at import whether a tool is installed.)"""
    if not QUICK:
        return

    def refuse(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"--quick: this starts a process ({args[0] if args else kwargs}): "
                             "mark the test @pytest.mark.integration")

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say which external programs this run uses (ddg_testkit.tools: each may be overridden),
    with -q too: a failure on another machine starts with what differs there. (Not under
    --quick: it runs none, and finding them starts processes.)"""
    if QUICK or ALONE == "only" or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (the run before said it; a worker's lines are not shown)
    from ddg_testkit.tools import report
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        for line in report():
            terminal.write_line(f"tools: {line}")
