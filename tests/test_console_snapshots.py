"""Snapshot tests of the console screens, fed by the deterministic fake cluster."""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot

from ddg_testkit.fake_source import FakeFleet, FakeSource, healthy_cluster, troubled_cluster
from ddg_tui.app import ConsoleApp
from ddg_tui.source import FixedClock

SIZE = (120, 34)


def make_app(source: FakeSource) -> ConsoleApp:
    return ConsoleApp(source=source, fleet=FakeFleet(sorted(source.members)),
                      clock=FixedClock(), mode="demo: 3 nodes started here")


def settled(app: ConsoleApp) -> Callable[[Pilot[int]], object]:
    async def run_before(pilot: Pilot[int]) -> None:
        await app.wait_for_membership()
        for _ in range(200):
            if len(app.model.latest) == len(app.model.members):
                break
            await pilot.pause(0.01)
        app.render_now()
        await pilot.pause()
    return run_before


def test_main_screen(snap_compare) -> None:
    """A healthy 3-node cluster: n1 is the goose."""
    app = make_app(healthy_cluster())
    assert snap_compare(app, terminal_size=SIZE, run_before=settled(app))


def test_help_screen(snap_compare) -> None:
    app = make_app(healthy_cluster())
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZE,
                        run_before=settled(app))


def test_confirm_remove_dialog(snap_compare) -> None:
    app = make_app(healthy_cluster())
    assert snap_compare(app, press=["down", "r"], terminal_size=SIZE, run_before=settled(app))


def test_troubled_cluster(snap_compare) -> None:
    """Two geese, a node down, an isolated node and a candidate: the loud banners."""
    app = make_app(troubled_cluster())
    assert snap_compare(app, terminal_size=SIZE, run_before=settled(app))
