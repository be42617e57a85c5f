"""SVG screenshots of ddg-console on a REAL demo cluster (embedded Redis + 3 ddg-node processes).

    .venv/bin/python -m scripts.screenshots [OUT_DIR]     (default: screenshots/)

from the repository root: it uses the test kit (ddg_testkit), which is not installed.

Writes console-healthy.svg, console-failover.svg (just after killing the goose) and
console-help.svg. Everything it starts is stopped again, whatever happens.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from ddg_testkit import wait_until_async
from ddg_tui.app import ConsoleApp
from ddg_tui.demo import Demo, DemoConfig
from ddg_tui.poller import LiveSource
from ddg_tui.widgets.table import NodeTable

SIZE = (120, 34)


async def until(pilot: Pilot[int], cond: Callable[[], object], within: float,
                what: str) -> None:
    try:
        await wait_until_async(cond, timeout=within, what=what, pause=pilot.pause)
    except TimeoutError as exc:
        raise SystemExit(f"screenshots: {exc}") from None


async def shoot(out: Path) -> list[Path]:
    demo = Demo(DemoConfig(nodes=3, cluster="demo"))
    written: list[Path] = []
    try:
        url = demo.launch()
        app = ConsoleApp(source=LiveSource(redis_url=url, cluster="demo", timeout=0.4),
                         fleet=demo, mode="demo: 3 nodes started here")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(app.model.members) == 3, 10, "3 members")
            await until(pilot, lambda: app.model.live_goose() is not None, 10, "a goose")
            await pilot.pause(1.5)  # a few polls, so heartbeat ages and leases are live
            app.render_now()
            await pilot.pause()

            def save(name: str) -> None:
                path = out / name
                path.write_text(app.export_screenshot(title="ddg-console"), encoding="utf-8")
                written.append(path)

            save("console-healthy.svg")
            old = app.model.live_goose()
            await pilot.press("g", "k")
            await until(pilot, lambda: app.model.live_goose() not in (None, old), 10,
                        "a new goose")
            await pilot.pause(0.6)
            app.query_one(NodeTable).select(old or "n1")
            app.render_now()
            await pilot.pause()
            save("console-failover.svg")
            await pilot.press("question_mark")
            await pilot.pause(0.3)
            save("console-help.svg")
            await pilot.press("escape", "q")
    finally:
        demo.close()
    return written


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent \
        / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(shoot(out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
