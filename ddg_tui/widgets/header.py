"""The header: the cluster and where it is, members, quorum, goose and term (parts of less
weight shortened, then dropped, to fit the width); the banner for what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.widget import Widget

from ..views import HeaderView, Part, fit_parts, header_parts


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
