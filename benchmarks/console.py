"""Console benchmark: what `ddg-console` costs while it watches real nodes, and how fast it
answers a key.

For each cluster size (default 5 and 25) it starts that many real ddg-node processes and an
embedded Redis (ddg_testkit.LocalCluster), waits for one goose, then runs the console in a
separate process that runs nothing else: ConsoleApp, headless (`App.run_test()`), polling the
nodes through ddg_tui.poller.LiveSource with the default settings (poll every 250 ms). That
process measures

- CPU: `time.process_time()` over consecutive windows (default 10 of 2 s), as % of one core;
- key latency: from a key press (posted as the terminal driver posts it) to the first screen
  update that shows its effect (the cursor on the next row; the detail screen open; ...).

Headless Textual computes each screen update but does not encode it for a terminal; the
benchmark's app encodes every update to ANSI as a real terminal driver would (and throws the
bytes away), so that cost is counted too. Not a test: it prints figures.

    .venv/bin/python -m benchmarks.console [--nodes 5 25] [--windows 10] [--presses 40]
    .venv/bin/python -m benchmarks.console --nodes 25 --profile /tmp/console.prof

from the repository root: it uses the test kit (ddg_testkit), which is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 120, 40


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(values: Sequence[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "no samples"
    f = f"{{:.{digits}f}}"
    return (f"median {f.format(statistics.median(values))}{unit}, "
            f"p95 {f.format(pct(values, 95))}{unit}, max {f.format(max(values))}{unit} "
            f"(n={len(values)})")


# ---- the console's process ----------------------------------------------------------------


def _bench_app_class() -> type[Any]:
    from rich.console import Console
    from textual._compositor import CompositorUpdate

    import ddg_tui.app
    from ddg_tui.app import ConsoleApp

    class BenchApp(ConsoleApp):
        """The console, encoding each screen update for a terminal and telling the benchmark
        when an update shows what it waits for."""

        CSS_PATH = str(Path(ddg_tui.app.__file__).with_name("console.tcss"))

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._term = Console(file=io.StringIO(), width=WIDTH, height=HEIGHT,
                                 force_terminal=True, color_system="truecolor",
                                 legacy_windows=False, safe_box=False)
            self.frames = 0
            self.bytes_out = 0
            self.probe: Callable[[], bool] | None = None
            self.seen: asyncio.Event = asyncio.Event()
            self.seen_at = 0.0

        def _display(self, screen: Any, renderable: Any) -> None:
            super()._display(screen, renderable)
            if isinstance(renderable, CompositorUpdate) and not self._batch_count:
                self.bytes_out += len(renderable.render_segments(self._term))
                self.frames += 1
                if self.probe is not None and self.probe():
                    self.seen_at = time.perf_counter()
                    self.probe = None
                    self.seen.set()

    return BenchApp


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    from textual import events

    from ddg_tui.app import ConsoleApp
    from ddg_tui.config import PollSettings
    from ddg_tui.poller import LiveSource
    from ddg_tui.widgets.table import NodeTable

    poll = PollSettings()
    source = LiveSource(redis_url=args.redis_url, cluster=args.cluster, timeout=poll.timeout)
    cls = _bench_app_class()
    extra: dict[str, Any] = {}
    if "tune_gc" in inspect.signature(cls.__init__).parameters or "tune_gc" in \
            inspect.signature(ConsoleApp.__init__).parameters:
        # as in a terminal (headless, the console leaves the garbage collector alone)
        extra["tune_gc"] = True
    app = cls(source=source, poll=poll, **extra)
    n = args.expect
    result: dict[str, Any] = {"nodes": n}
    async with app.run_test(size=(WIDTH, HEIGHT), notifications=True) as pilot:
        deadline = time.monotonic() + 30
        while not (len(app.model.members) == n
                   and sum(1 for o in app.model.latest.values() if o.reply.ok) == n
                   and app.model.live_goose() is not None):
            if time.monotonic() > deadline:
                raise SystemExit(f"the console did not see {n} answering nodes and a goose")
            await pilot.pause(0.1)
        await asyncio.sleep(args.warmup)

        # CPU, while only watching.
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        shares: list[float] = []
        frames0, bytes0 = app.frames, app.bytes_out
        t_start = time.perf_counter()
        for _ in range(args.windows):
            c0, w0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.window)
            shares.append(100 * (time.process_time() - c0) / (time.perf_counter() - w0))
        span = time.perf_counter() - t_start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        result["cpu"] = shares
        result["frames_per_s"] = (app.frames - frames0) / span
        result["kib_per_s"] = (app.bytes_out - bytes0) / span / 1024

        # Key latency: key press -> the first screen update that shows its effect.
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        table = app.query_one(NodeTable)
        assert app._driver is not None
        driver = app._driver

        async def press(key: str, probe: Callable[[], bool]) -> float:
            app.seen.clear()
            app.probe = probe
            t0 = time.perf_counter()
            event = events.Key(key, None)
            event.set_sender(app)
            driver.send_message(event)
            await asyncio.wait_for(app.seen.wait(), 5)
            return 1000 * (app.seen_at - t0)

        cursor: list[float] = []
        for i in range(args.presses):
            row = table.cursor_row
            key, target = ("down", row + 1) if row < table.row_count - 1 and (
                i % 2 == 0 or row == 0) else ("up", row - 1)
            cursor.append(await press(key, functools.partial(at_row, table, target)))
            await asyncio.sleep(args.gap)
        result["key_cursor_ms"] = cursor

        detail: list[float] = []
        screen_type = _detail_screen_type()
        if screen_type is not None:
            for _ in range(max(1, args.presses // 4)):
                detail.append(await press(
                    "enter", lambda: isinstance(app.screen, screen_type)))
                await asyncio.sleep(args.gap)
                await press("escape", lambda: not isinstance(app.screen, screen_type))
                await asyncio.sleep(args.gap)
        result["key_detail_ms"] = detail
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{args.profile}.keys")
    return result


def at_row(table: Any, row: int) -> bool:
    return bool(table.cursor_row == row)


def _detail_screen_type() -> type[Any] | None:
    try:
        from ddg_tui.screens import NodeDetailScreen
    except ImportError:
        return None
    return NodeDetailScreen


# ---- the driver ---------------------------------------------------------------------------


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from ddg_testkit import LocalCluster

    cluster = f"bench{n}"
    with LocalCluster(cluster=cluster, log_level="WARNING") as c:
        names = c.start(n)

        def settled() -> bool:
            sts = [st for st in c.statuses().values() if st is not None]
            return (len(sts) == n and all(len(st.members) == n for st in sts)
                    and sum(st.role == "goose" for st in sts) == 1)

        c.wait_for(settled, timeout=60, what=f"{n} nodes and one goose", interval=0.2)
        assert c.redis_url is not None
        cmd = [sys.executable, "-m", "benchmarks.console", "--child",
               "--redis-url", c.redis_url, "--cluster", cluster, "--expect", str(n),
               "--windows", str(args.windows), "--window", str(args.window),
               "--presses", str(args.presses), "--gap", str(args.gap),
               "--warmup", str(args.warmup)]
        if args.profile:
            cmd += ["--profile", f"{args.profile}.{n}"]
        nodes_cpu0 = {name: _cpu_seconds(c.pid(name)) for name in names}
        t0 = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                             cwd=Path(__file__).resolve().parent.parent)
        span = time.monotonic() - t0
        if out.returncode != 0:
            raise SystemExit(f"console process failed ({out.returncode}):\n{out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["nodes_cpu"] = sum(_cpu_seconds(c.pid(name)) - nodes_cpu0[name]
                                  for name in names) / span * 100
        return result


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    clk = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / clk


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=[5, 25],
                   help="cluster sizes to measure (default: 5 25)")
    p.add_argument("--windows", type=int, default=10, help="CPU windows (default %(default)s)")
    p.add_argument("--window", type=float, default=2.0, help="seconds per CPU window")
    p.add_argument("--presses", type=int, default=40, help="key presses to time")
    p.add_argument("--gap", type=float, default=0.15, help="seconds between key presses")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--profile", metavar="FILE",
                   help="cProfile the CPU windows into FILE.<nodes> and the key presses into "
                        "FILE.<nodes>.keys (pstats format)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(_child(args))), flush=True)
        return
    import textual
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, Textual {textual.__version__}, {platform.platform()}")
    print(f"console: {WIDTH}x{HEIGHT}, poll every 250 ms (default), headless + ANSI encoding")
    for n in args.nodes:
        r = run_size(n, args)
        print(f"{n} nodes:")
        print(f"  console CPU (% of one core, {args.windows} x {args.window:g} s): "
              f"{summary(r['cpu'], ' %')}")
        print(f"  screen updates: {r['frames_per_s']:.1f}/s, {r['kib_per_s']:.1f} KiB/s of "
              f"terminal output")
        print(f"  key latency, cursor down/up: {summary(r['key_cursor_ms'], ' ms')}")
        if r["key_detail_ms"]:
            print(f"  key latency, Enter (node detail): {summary(r['key_detail_ms'], ' ms')}")
        print(f"  (the {n} nodes meanwhile: {r['nodes_cpu']:.0f} % of one core in all)",
              flush=True)


if __name__ == "__main__":
    main()
