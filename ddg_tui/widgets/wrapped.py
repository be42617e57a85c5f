"""A log of lines wrapped to the width (again after a resize), newest at the bottom: the event
log and a node's log on its detail screen. A wrapped line's continuation hangs indented, so
that it never reads as a line of its own, and nothing is cut at the right edge."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

# Below this many columns left of a hanging indent, continuations start at the left edge.
MIN_HUNG_WIDTH = 16


def hang_wrap(console: Console, text: Text, width: int, hang: int) -> list[Text]:
    """TEXT wrapped to WIDTH, its continuation lines indented by HANG (words kept whole when
    they fit; a longer one is folded)."""
    lines = list(text.wrap(console, width, overflow="fold"))
    if len(lines) <= 1 or hang <= 0 or width - hang < MIN_HUNG_WIDTH:
        return lines
    first = lines[0]
    rest = text[len(first.plain):]
    rest = rest[len(rest.plain) - len(rest.plain.lstrip()):]
    pad = Text(" " * hang)
    return [first, *(pad + line for line in rest.wrap(console, width - hang, overflow="fold"))]


class WrappedLog(ScrollView, can_focus=True):
    """Lines of text, newest at the bottom, wrapped to the width (again after a resize); it
    follows the newest line until scrolled up, and again once scrolled back to the end.

    Holds the last MAX_ENTRIES lines; a line's continuations hang indented by HANG (or by the
    hang given with it)."""

    # The scrollbar is always there, so that a new line never changes the layout: the log
    # only tells its scrollbar (a layout of the whole screen for each line costs 10-40 ms).
    DEFAULT_CSS = """
    WrappedLog { overflow-x: hidden; overflow-y: scroll; }
    """

    def __init__(self, *, max_entries: int = 500, hang: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang = hang
        self._entries: deque[tuple[Text, int]] = deque(maxlen=max_entries)
        self._lines: list[Strip] = []
        self._wrapped_at = -1
        self._follow = True

    @property
    def line_count(self) -> int:
        """How many lines it holds (before wrapping)."""
        return len(self._entries)

    @property
    def entries(self) -> list[str]:
        """The lines it holds, unwrapped, as text (for tests)."""
        return [text.plain for text, _ in self._entries]

    @property
    def lines(self) -> list[str]:
        """The wrapped lines, as text (for tests)."""
        return [s.text for s in self._lines]

    def write_lines(self, lines: Iterable[str]) -> None:
        self.write_texts([(Text(line), self.hang) for line in lines])

    def write_texts(self, texts: Iterable[tuple[Text, int]]) -> None:
        """Add (text, hang) lines at the bottom."""
        new = list(texts)
        if not new:
            return
        dropped = len(self._entries) + len(new) - (self._entries.maxlen or 0)
        self._entries.extend(new)
        width = self.scrollable_content_region.width
        if dropped > 0 or self._wrapped_at != width:
            self._rewrap()
        else:
            for text, hang in new:
                self._lines.extend(self._wrap(text, hang, width))
            self._set_height(width)
        self.refresh()

    def clear(self) -> None:
        self._entries.clear()
        self._lines = []
        self._set_height(self.scrollable_content_region.width)
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    def _wrap(self, text: Text, hang: int, width: int) -> list[Strip]:
        if width <= 0:
            return []
        console = self.app.console
        return [Strip(line.render(console), line.cell_len)
                for line in hang_wrap(console, text, width, hang)]

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        self._wrapped_at = width
        self._lines = [s for text, hang in self._entries for s in self._wrap(text, hang, width)]
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
