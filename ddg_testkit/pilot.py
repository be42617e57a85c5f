"""Driving the console in a test (Textual's Pilot): wait for a condition between the app's
frames, wait for the first answers, read the event log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from ddg_testkit.wait import wait_until_async
from ddg_tui.app import ConsoleApp
from ddg_tui.widgets.table import NodeTable


async def until(pilot: Pilot[Any], cond: Callable[[], object], what: str,
                within: float = 5.0) -> None:
    """Until COND holds, the app running between two checks; TimeoutError naming WHAT."""
    await wait_until_async(cond, timeout=within, what=what, pause=pilot.pause)


async def settled(app: ConsoleApp, pilot: Pilot[Any]) -> NodeTable:
    """Once the registry was read and every member answered once, rendered."""
    await app.wait_for_membership()
    await until(pilot, lambda: len(app.model.latest) == len(app.model.members),
                "every node's first answer")
    app.render_now()
    await pilot.pause()
    return app.query_one(NodeTable)


def texts(app: ConsoleApp) -> list[str]:
    """The event log's lines, oldest first."""
    return [e.text for e in app.model.events]
