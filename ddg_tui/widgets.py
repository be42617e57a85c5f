"""The console's widgets: header, banner, node table, event log, failover history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from .model import (
    CANDIDATE,
    DUCK,
    GOOSE,
    Event,
    Failover,
    GooseSpan,
    HeaderView,
    RowView,
    fmt_ms,
    fmt_uptime,
    natural_key,
    summarize_failovers,
)

# (key, label, fixed width or None for auto, right-justified)
COLUMNS: tuple[tuple[str, str, int | None, bool], ...] = (
    ("name", "name", None, False),
    ("address", "address", None, False),
    ("role", "role", 11, False),
    ("term", "term", 4, True),
    ("follows", "follows", None, False),
    ("hb", "hb age", 6, True),
    ("lease", "lease", 6, True),
    ("latency", "poll", 6, True),
    ("uptime", "uptime", 6, True),
    ("pid", "pid", 7, True),
    ("state", "state", None, False),
)

ROLE_CELLS: dict[str, tuple[str, str]] = {
    GOOSE: ("★ GOOSE", "bold black on #ffd200"),
    DUCK: ("duck", "#8fb3d9"),
    CANDIDATE: ("◌ candidate", "bold magenta"),
    "unreachable": ("✗ no answer", "bold red"),
    "killed": ("✗ killed", "bold red"),
    "stopped": ("■ stopped", "bold #ff8c00"),
    "exited": ("✗ exited", "bold red"),
    "pending": ("… pending", "dim"),
}

LEVEL_STYLE = {"info": "", "good": "green", "warning": "bold #ff8c00", "error": "bold red"}


def _address(addr: str) -> str:
    return addr.removeprefix("http://")


def row_cells(row: RowView) -> dict[str, Text]:
    """Rich cells for one row, keyed like COLUMNS."""
    label, style = ROLE_CELLS.get(row.role, (row.role, ""))
    stale = "dim italic" if row.stale else ""
    lat_style = "" if row.latency_ms is None or row.latency_ms < 100 else "#ff8c00"
    hb_style = "" if row.heartbeat_age_ms is None or row.heartbeat_age_ms < 300 else "#ff8c00"
    pid = "—" if row.pid is None else str(row.pid)
    name_style = "bold #ffd200" if row.role == GOOSE else "bold"
    return {
        "name": Text(row.name, style=name_style),
        "address": Text(_address(row.address), style="dim" if row.stale else ""),
        "role": Text(label, style=style),
        "term": Text("—" if row.term is None else str(row.term), style=stale, justify="right"),
        "follows": Text(row.follows or "—", style=stale),
        "hb": Text(fmt_ms(row.heartbeat_age_ms), style=hb_style, justify="right"),
        "lease": Text(fmt_ms(row.lease_remaining_ms), justify="right"),
        "latency": Text(fmt_ms(row.latency_ms), style=lat_style, justify="right"),
        "uptime": Text(fmt_uptime(row.uptime_s), justify="right"),
        "pid": Text(pid, style="" if row.pid_owned else "dim", justify="right"),
        "state": Text(row.state, style=LEVEL_STYLE.get(row.level, "")),
    }


class NodeTable(DataTable[Text]):
    """One row per registered member, keyed by name, updated in place."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._shown: dict[str, dict[str, Text]] = {}

    def on_mount(self) -> None:
        for key, label, width, right in COLUMNS:
            self.add_column(Text(label, justify="right" if right else "left"), key=key,
                            width=width)

    def selected(self) -> str | None:
        if self.row_count == 0 or not self.is_valid_row_index(self.cursor_row):
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def select(self, name: str) -> bool:
        if name not in self._shown:
            return False
        self.move_cursor(row=self.get_row_index(name))
        return True

    def sync(self, rows: Sequence[RowView]) -> None:
        """Make the table show ROWS: add, remove and update cells by key. Call in batch_update."""
        wanted = {r.name for r in rows}
        selected = self.selected()
        for name in [n for n in self._shown if n not in wanted]:
            self.remove_row(name)
            del self._shown[name]
        added = False
        for row in rows:
            cells = row_cells(row)
            shown = self._shown.get(row.name)
            if shown is None:
                self.add_row(*(cells[k] for k, *_ in COLUMNS), key=row.name)
                self._shown[row.name] = cells
                added = True
                continue
            for key, _label, width, _right in COLUMNS:
                if shown[key] != cells[key]:
                    self.update_cell(row.name, key, cells[key], update_width=width is None)
                    shown[key] = cells[key]
        if added:
            self.sort("name", key=lambda t: natural_key(t.plain))
            if selected is not None and selected in self._shown:
                self.select(selected)


class ClusterHeader(Static):
    def show(self, h: HeaderView, *, mode: str, location: str, poll: str) -> None:
        t = Text()
        t.append(" DuckDuckGoose ", style="bold black on #ffd200")
        t.append(f"  cluster {h.cluster}", style="bold")
        t.append(f"  ·  {mode}", style="dim")
        t.append("  ·  Redis ")
        if h.redis_ok is None:
            t.append("● connecting", style="#ff8c00")
        elif h.redis_ok:
            t.append("● up", style="bold green")
        else:
            t.append("● DOWN", style="bold red")
        t.append(f" {location}", style="dim")
        if h.version is not None:
            t.append(f" v{h.version}", style="dim")
        if h.security == "hmac":
            t.append("  ·  signed", style="green")
        elif h.security is not None:
            t.append(f"  ·  {'UNSIGNED' if h.security == 'insecure-loopback' else 'MIXED'}",
                     style="#ff8c00")
        t.append("\n")
        t.append(f" members {h.members}", style="bold")
        t.append(f"  ·  quorum {h.quorum}  ·  answering {h.answering}/{h.members}  ·  goose ")
        if len(h.geese) >= 2:
            t.append(" / ".join(f"{n} (t{term})" for n, term in h.geese), style="bold red")
        elif h.goose is not None:
            t.append(f"★ {h.goose}", style="bold black on #ffd200")
            t.append(f"  ·  term {h.term}", style="bold")
        else:
            t.append("NONE", style="bold red")
            if h.max_term is not None:
                t.append(f"  ·  highest term seen {h.max_term}")
        t.append(f"  ·  {poll}", style="dim")
        self.update(t)


class Banner(Static):
    def show(self, text: str | None, level: str = "error") -> None:
        self.set_class(text is None, "-hidden")
        self.set_class(level == "warning", "-warning")
        if text is not None:
            self.update(Text(text, style="bold"))


class EventLog(RichLog):
    """Timestamped events, newest at the bottom."""

    def __init__(self, stamp: Callable[[float], str], **kwargs: Any) -> None:
        super().__init__(wrap=True, markup=False, max_lines=2000, auto_scroll=True, **kwargs)
        self._stamp = stamp
        self.last_seq = 0

    def add(self, events: Sequence[Event]) -> None:
        for e in events:
            if e.seq <= self.last_seq:
                continue
            self.last_seq = e.seq
            line = Text()
            line.append(self._stamp(e.wall), style="dim")
            line.append("  ")
            line.append(e.text, style=LEVEL_STYLE.get(e.severity, ""))
            self.write(line)


class HistoryPanel(Vertical):
    """Failover durations as a sparkline, and who was goose when."""

    def __init__(self, stamp: Callable[[float], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stamp = stamp
        self._shown: tuple[int, int] = (-1, -1)

    def compose(self) -> ComposeResult:
        yield Label("Failover times", classes="title")
        yield Sparkline([], id="spark")
        yield Static("no failover yet", id="fo-summary")
        yield Label("Goose timeline", classes="title")
        yield Static("—", id="timeline")

    def show(self, failovers: Sequence[Failover], timeline: Sequence[GooseSpan]) -> None:
        key = (len(failovers), len(timeline))
        if key == self._shown:
            return
        self._shown = key
        timed = [f.duration_ms for f in failovers[-40:] if f.duration_ms is not None]
        self.query_one("#spark", Sparkline).data = timed
        summary = Text(summarize_failovers(failovers).replace(" · ", "\n", 1))
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
