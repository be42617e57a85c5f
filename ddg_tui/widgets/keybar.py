"""The key bar: the keys that apply now, fitted into the width."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.widget import Widget

from ..keys import Key

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
