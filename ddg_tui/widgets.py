"""The console's widgets: header, banner, node table (table.py), event log, failover history and
the key bar. Each one is given what to show, compares it with what it shows, and repaints only
if it differs; each one lays itself out for its width, again on every resize."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Label, Static

from .events import Event
from .failovers import Failover, GooseSpan, summarize_failovers
from .fmt import fmt_ms
from .keys import Key
from .table import COLUMNS, LEVEL_STYLE, ROLE_CELLS, NodeTable, row_cells
from .views import HeaderView, Part, fit_parts, header_parts

__all__ = ["COLUMNS", "LEVEL_STYLE", "ROLE_CELLS", "Banner", "ClusterHeader", "EventLog",
           "HistoryPanel", "KeyBar", "NodeTable", "TextBox", "row_cells"]


def _text(parts: Sequence[Part], width: int, lead: str = "") -> Text:
    chosen, sep = fit_parts(parts, width, lead=lead)
    t = Text(lead, no_wrap=True, overflow="ellipsis")
    for i, segs in enumerate(chosen):
        if i:
            t.append(sep, style="dim")
        for text, style in segs:
            t.append(text, style=style)
    return t


class ClusterHeader(Widget):
    """Two lines: the cluster and where it is; members, quorum, goose and term. Parts of less
    weight are shortened, then dropped, to fit the width."""

    DEFAULT_CSS = """
    ClusterHeader { height: 2; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[Any, ...] | None = None

    def show(self, h: HeaderView, *, mode: str, mode_short: str, location: str, poll: str,
             poll_short: str) -> None:
        data = (h, mode, mode_short, location, poll, poll_short)
        if data != self._shown:
            self._shown = data
            self.refresh()

    def render(self) -> Text:
        if self._shown is None:
            return Text("")
        h, mode, mode_short, location, poll, poll_short = self._shown
        one, two = header_parts(h, mode=mode, mode_short=mode_short, location=location,
                                poll=poll, poll_short=poll_short)
        width = self.content_region.width
        t = _text(one, width)
        t.append("\n")
        t.append_text(_text(two, width, lead=" "))
        return t


class Banner(Widget):
    """The loud line under the header: no goose, two geese, no quorum, Redis trouble. Its
    height follows its text's wrapped lines; a change of its text alone repaints it only."""

    DEFAULT_CSS = """
    Banner { height: 1; }
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple[str | None, str] = (None, "")

    def show(self, text: str | None, level: str = "error") -> None:
        if (text, level) == self._shown:
            return
        self._shown = (text, level)
        self.set_class(text is None, "-hidden")
        self.set_class(level == "warning", "-warning")
        self._fit()
        self.refresh()

    @property
    def text(self) -> str | None:
        return self._shown[0]

    def _lines(self) -> int:
        text = self._shown[0]
        width = self.content_region.width
        if text is None or width <= 0:
            return 1
        return max(1, len(Text(text).wrap(self.app.console, width)))

    def _fit(self) -> None:
        lines = self._lines()
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def render(self) -> Text:
        return Text(self._shown[0] or "", style="bold")


class TextBox(Widget):
    """Text that is replaced often: repainted when it changes, laid out again only when its
    number of lines does (Static.update lays out the whole screen each time)."""

    DEFAULT_CSS = """
    TextBox { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = Text()

    def show(self, text: Text) -> None:
        if text == self.text:
            return
        self.text = text
        lines = len(text.plain.splitlines()) or 1
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines
        self.refresh()

    def render(self) -> Text:
        return self.text


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    text: Text


class EventLog(ScrollView, can_focus=True):
    """Timestamped events, newest at the bottom, wrapped to the width (again after a resize).

    NODE: only the events about that node. Holds the last MAX_LINES events."""

    # The scrollbar is always there, so that a new line never changes the layout: the log
    # only tells its scrollbar (a layout of the whole screen for each event costs 10-40 ms).
    DEFAULT_CSS = """
    EventLog { overflow-x: hidden; overflow-y: scroll; }
    """

    def __init__(self, stamp: Callable[[float], str], *, node: str | None = None,
                 max_events: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stamp = stamp
        self.node = node
        self.last_seq = 0
        self._entries: deque[_Entry] = deque(maxlen=max_events)
        self._lines: list[Strip] = []
        self._wrapped_at = -1
        self._follow = True  # stay at the newest line (until scrolled up, and again at the end)

    def add(self, events: Iterable[Event]) -> None:
        new = []
        for e in events:
            if e.seq <= self.last_seq:
                continue
            self.last_seq = e.seq
            if self.node is not None and not e.about(self.node):
                continue
            line = Text(no_wrap=False)
            line.append(self._stamp(e.wall), style="dim")
            line.append("  ")
            line.append(e.text, style=LEVEL_STYLE.get(e.severity, ""))
            new.append(_Entry(e.seq, line))
        if not new:
            return
        dropped = len(self._entries) + len(new) - (self._entries.maxlen or 0)
        self._entries.extend(new)
        width = self.scrollable_content_region.width
        if dropped > 0 or self._wrapped_at != width:
            self._rewrap()
        else:
            for entry in new:
                self._lines.extend(self._wrap(entry.text, width))
            self._set_height(width)
        self.refresh()

    def reset(self, *, node: str | None) -> None:
        """Show nothing, then the events about NODE (None: every event) from the next add."""
        self.node = node
        self.last_seq = 0
        self._entries.clear()
        self._lines = []
        self._set_height(self.scrollable_content_region.width)
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    @property
    def lines(self) -> list[str]:
        """The wrapped lines, as text (for tests)."""
        return [s.text for s in self._lines]

    def _wrap(self, text: Text, width: int) -> list[Strip]:
        if width <= 0:
            return []
        console = self.app.console
        lines = text.wrap(console, width, overflow="fold")
        return [Strip(line.render(console), line.cell_len) for line in lines]

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        self._wrapped_at = width
        self._lines = [s for e in self._entries for s in self._wrap(e.text, width)]
        self._set_height(width)

    def _set_height(self, width: int) -> None:
        size = Size(width, len(self._lines))
        if size != self.virtual_size:
            if size.width != self.virtual_size.width or not self.is_mounted:
                self.virtual_size = size
            else:
                # Only the scrollbar (always shown) needs to know: no layout.
                self.set_reactive(ScrollView.virtual_size, size)
                self._scroll_update(size)
        self._stick_to_end()

    def _stick_to_end(self) -> None:
        if self._follow and round(self.scroll_offset.y) != self.max_scroll_y:
            self.scroll_to(y=self.max_scroll_y, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        if self.scrollable_content_region.width != self._wrapped_at:
            self._rewrap()
            self.refresh()
        else:
            self._stick_to_end()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._follow = round(new_value) >= self.max_scroll_y

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._wrapped_at = -1

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if self._wrapped_at != width:
            self._rewrap()
        i = round(self.scroll_offset.y) + y
        if i >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        return self._lines[i].apply_style(self.rich_style).adjust_cell_length(width,
                                                                             self.rich_style)


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


# ---- the key bar -------------------------------------------------------------------------


FOOTER_DISPLAY = {"enter": "↵"}


def key_display(k: Key) -> str:
    if k.key in FOOTER_DISPLAY:
        return FOOTER_DISPLAY[k.key]
    if k.display:
        return k.display
    if k.key.startswith("ctrl+"):
        return "^" + k.key.removeprefix("ctrl+")
    return k.key


def fit_keys(keys: Sequence[tuple[Key, bool]], width: int) -> tuple[list[tuple[Key, bool]], bool]:
    """The keys (with whether each is enabled) that fit in WIDTH cells, in order: long labels
    if they all fit, else short ones, dropping keys until they fit: the disabled ones first,
    then by rank. Returns them and whether the labels are the short ones."""
    def used(ks: Sequence[tuple[Key, bool]], short: bool) -> int:
        return sum(cell_len(key_display(k)) + 1 + cell_len(k.footer_short if short
                                                           else k.footer_label)
                   for k, _ in ks) + 2 * max(0, len(ks) - 1) + 1

    def rank(k: Key, enabled: bool) -> int:
        return k.keep if enabled else k.keep - 100

    shown = list(keys)
    if used(shown, False) <= width:
        return shown, False
    for level in sorted({rank(k, e) for k, e in keys}):
        if used(shown, True) <= width:
            break
        shown = [(k, e) for k, e in shown if rank(k, e) > level]
    return shown, True


class KeyBar(Widget):
    """The footer: the keys that apply here, fitted to the width. A key whose action cannot run
    now (check_action None) is dimmed, one that never applies here (False) is left out."""

    COMPONENT_CLASSES = {"keybar--key", "keybar--off"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        background: $footer-background;
        color: $footer-foreground;
        & > .keybar--key { color: $footer-key-foreground; text-style: bold; }
        & > .keybar--off { color: $footer-foreground 50%; }
    }
    """

    def __init__(self, keys: Sequence[Key], check: Callable[[str], bool | None],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        self._check = check
        self._spans: list[tuple[int, int, str]] = []
        self._state: tuple[bool | None, ...] = ()

    def states(self) -> tuple[bool | None, ...]:
        return tuple(self._check(k.action.split(",")[0]) for k in self.keys)

    def update_state(self) -> None:
        """Check the keys again; repaint if one changed."""
        state = self.states()
        if state != self._state:
            self._state = state
            self.refresh()

    def render(self) -> Text:
        if len(self._state) != len(self.keys):
            self._state = self.states()
        offered = [(k, s is True) for k, s in zip(self.keys, self._state, strict=True)
                   if s is not False]
        shown, short = fit_keys(offered, self.content_region.width)
        key_style = self.get_component_rich_style("keybar--key", partial=True)
        off_style = self.get_component_rich_style("keybar--off", partial=True)
        t = Text(" ", no_wrap=True, overflow="crop")
        self._spans = []
        for i, (k, enabled) in enumerate(shown):
            if i:
                t.append("  ")
            start = len(t)
            t.append(key_display(k), style=key_style if enabled else off_style)
            t.append(" " + (k.footer_short if short else k.footer_label),
                     style=Style() if enabled else off_style)
            self._spans.append((start, len(t), k.key.split(",")[0]))
        return t

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return

