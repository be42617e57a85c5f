"""The failover history: durations as a sparkline, and who was goose when."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Label, Static

from ..failovers import Failover, GooseSpan, summarize_failovers
from ..fmt import fmt_ms

BARS = " ▁▂▃▄▅▆▇█"
# The sparkline's scale reaches at least this far, so that one failover is a bar of its
# height, not a full block.
SPARK_FLOOR_MS = 500.0


def spark_rows(values: Sequence[float], width: int, height: int,
               floor: float = SPARK_FLOOR_MS) -> tuple[list[str], float]:
    """The last WIDTH values as bars HEIGHT rows tall (top row first), on a scale from 0 to
    the largest value (at least FLOOR); returns the rows and the scale's top."""
    shown = list(values)[-width:] if width > 0 else []
    top = max([floor, *shown])
    eighths = [round(v / top * height * 8) for v in shown]
    rows = []
    for row in range(height - 1, -1, -1):
        rows.append("".join(BARS[max(0, min(8, e - row * 8))] for e in eighths))
    return rows, top


class Sparkline(Widget):
    """Failover durations as bars, scaled from 0 (not from the smallest value)."""

    DEFAULT_CSS = """
    Sparkline { height: 3; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values: tuple[float, ...] = ()

    def show(self, values: Sequence[float]) -> None:
        values = tuple(values)
        if values != self.values:
            self.values = values
            self.refresh()

    def render(self) -> Text:
        width, height = self.content_region.width, self.content_region.height
        if not self.values:
            return Text("▁" * width, style="dim")
        rows, _top = spark_rows(self.values, width, height)
        return Text("\n".join(rows), style="#ffd200", no_wrap=True)


class HistoryPanel(Vertical):
    """Failover durations as a sparkline, and who was goose when."""

    def __init__(self, stamp: Callable[[float], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stamp = stamp
        self._shown: tuple[int, int] = (-1, -1)

    def compose(self) -> ComposeResult:
        yield Label("Failover times", classes="title")
        yield Sparkline(id="spark")
        yield Static("no failover yet", id="fo-summary")
        yield Label("Goose timeline", classes="title")
        yield Static("—", id="timeline")

    def show(self, failovers: Sequence[Failover], timeline: Sequence[GooseSpan]) -> None:
        key = (len(failovers), len(timeline))
        if key == self._shown:
            return
        self._shown = key
        timed = [f.duration_ms for f in failovers[-60:] if f.duration_ms is not None]
        self.query_one("#spark", Sparkline).show(timed)
        summary = Text(summarize_failovers(failovers).replace(" · ", "\n", 1))
        if timed:
            summary.append(f" · scale 0 to {fmt_ms(max([SPARK_FLOOR_MS, *timed]))}", style="dim")
        if failovers:
            last = failovers[-1]
            took = ("not timed" if last.duration_ms is None else
                    f"{fmt_ms(last.duration_ms)} ± {fmt_ms(last.uncertainty_ms)}")
            summary.append(f"\nlast: {last.old} → {last.new} {took}", style="bold")
        self.query_one("#fo-summary", Static).update(summary)
        lines = Text()
        for i, span in enumerate(timeline[-8:]):
            if i:
                lines.append("\n")
            lines.append(self._stamp(span.wall)[:8], style="dim")
            lines.append(f"  ★ {span.name}", style="bold #ffd200")
            lines.append(f"  term {span.term}")
        self.query_one("#timeline", Static).update(lines if timeline else Text("—"))
