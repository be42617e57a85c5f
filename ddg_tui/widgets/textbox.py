"""Text that is replaced often, repainted only when it changes (the detail screen's fields)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget


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
