"""The event log: timestamped events, newest at the bottom, wrapped to the width."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text

from ..events import Event
from .table import LEVEL_STYLE
from .wrapped import WrappedLog

GAP = "  "  # between an event's time and its text


class EventLog(WrappedLog):
    """Timestamped events, newest at the bottom, wrapped to the width (again after a resize);
    a wrapped event's lines hang under its text, not under the times.

    NODE: only the events about that node. Holds the last MAX_EVENTS events."""

    def __init__(self, stamp: Callable[[float], str], *, node: str | None = None,
                 max_events: int = 500, **kwargs: Any) -> None:
        super().__init__(max_entries=max_events, **kwargs)
        self._stamp = stamp
        self.node = node
        self.last_seq = 0

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
            line.append(GAP)
            hang = line.cell_len
            line.append(e.text, style=LEVEL_STYLE.get(e.severity, ""))
            new.append((line, hang))
        self.write_texts(new)

    def reset(self, *, node: str | None) -> None:
        """Show nothing, then the events about NODE (None: every event) from the next add."""
        self.node = node
        self.last_seq = 0
        self.clear()
