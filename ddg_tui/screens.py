"""Modal screens: the key help and the confirm dialog."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from .keys import KEYS

LEGEND: tuple[tuple[str, str], ...] = (
    ("★ GOOSE", "the node that answers goose: the leader"),
    ("duck / ◌ candidate", "followers; a candidate is asking for votes"),
    ("✗ no answer", "the last poll failed (the error is in the state column); term and "
                    "follows in italics are the last values it answered"),
    ("✗ killed / ■ stopped", "killed or stopped from this console"),
    ("hb age", "how long ago a duck last heard its goose"),
    ("lease", "how long the goose may still answer goose without hearing a quorum"),
    ("poll", "round-trip time of the console's last /status request"),
)


class HelpScreen(ModalScreen[None]):
    """The keys (from ddg_tui/keys.py) and a legend of the node table.

    ATTACHED: the console runs in attach mode; keys that need --demo are dimmed."""

    BINDINGS = [
        Binding("escape,question_mark,q", "close", "Close", show=True),
    ]

    def __init__(self, *, attached: bool = False) -> None:
        super().__init__()
        self.attached = attached

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold #ffd200", no_wrap=True)
        keys.add_column()
        for key in KEYS:
            dim = "dim" if self.attached and not key.attach else ""
            keys.add_row(Text(key.shown, style=dim), Text(key.text, style=dim))
        legend = Table.grid(padding=(0, 2))
        legend.add_column(style="bold", no_wrap=True)
        legend.add_column()
        for k, what in LEGEND:
            legend.add_row(k, what)
        with Vertical(id="help-box"):
            yield Label("ddg-console — keys", classes="title")
            yield Static(keys)
            yield Label("What the table shows", classes="title")
            yield Static(legend)
            note = ("Every value is what a node answered to the last poll; nothing is "
                    "guessed. Esc or ? closes this help.")
            if self.attached:
                note += " Attach mode: the dimmed keys need nodes started by --demo."
            yield Static(Text(note, style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question. y or Enter confirms; n or Escape cancels."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", show=True),
        Binding("n,escape", "answer(False)", "No", show=True),
    ]

    def __init__(self, question: str, detail: str = "", yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="question")
            if self.detail:
                yield Static(self.detail, id="detail")
            with Horizontal(id="buttons"):
                yes = Button(f"{self.yes} (y)", variant="error", id="yes")
                no = Button("Cancel (n)", variant="default", id="no")
                # Keys decide, not focus: Enter must confirm whatever has focus.
                yes.can_focus = no.can_focus = False
                yield yes
                yield no

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
