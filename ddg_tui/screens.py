"""Modal screens: the key help and the confirm dialog."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓", "move between nodes"),
    ("g", "jump to the current goose"),
    ("a", "add a node (new ddg-node on the next free port; demo mode only)"),
    ("k", "kill the selected node with SIGKILL (nodes this console started)"),
    ("s", "stop the selected node gracefully (SIGTERM)"),
    ("t", "start the selected node again (same name, port and data dir)"),
    ("r", "remove the selected node from the registry (asks first); stops it if ours"),
    ("p", "isolate the selected node from all peers (fault injection)"),
    ("h", "heal every partition this console made"),
    ("ctrl+p", "command palette"),
    ("?", "this help"),
    ("q", "quit (demo mode: stops every node and Redis it started)"),
)

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
    BINDINGS = [
        Binding("escape,question_mark,q", "close", "Close", show=True),
    ]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold #ffd200", no_wrap=True)
        keys.add_column()
        for k, what in KEYS:
            keys.add_row(k, what)
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
            yield Static(Text("Every value is what a node answered to the last poll; "
                              "nothing is guessed. Esc or ? closes this help.", style="dim"))

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
