"""The event log: timestamped events, newest at the bottom, wrapped to the width."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..events import Event
from .table import LEVEL_STYLE


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
