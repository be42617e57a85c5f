"""Screens: a node's details, the key help and the confirm dialog."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Label, Static

from ddg.client import NodeStatus

from .fmt import fmt_ms
from .keys import KEYS, Key
from .model import ClusterModel
from .views import row_view
from .widgets.eventlog import EventLog
from .widgets.keybar import KeyBar
from .widgets.textbox import TextBox
from .widgets.wrapped import WrappedLog

LEGEND: tuple[tuple[str, str], ...] = (
    ("★ GOOSE", "the node that answers goose: the leader"),
    ("duck / ◌ candidate", "followers; a candidate is asking for votes"),
    ("… starting", "started here and not answering yet, or joining the cluster"),
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
        # Scrolls (↑ ↓ PgUp PgDn) when the terminal is too short for it.
        with VerticalScroll(id="help-box"):
            yield Label("ddg-console — keys", classes="title")
            yield Static(keys)
            yield Label("What the table shows", classes="title")
            yield Static(legend)
            note = ("In a node's details (Enter), [ and ] step to the previous and next node, "
                    "Esc goes back, and k s t r p g act on the node shown. Every value is what "
                    "a node answered to the last poll; nothing is guessed. Esc or ? closes "
                    "this help.")
            if self.attached:
                note += " Attach mode: the dimmed keys need nodes started by --demo."
            yield Static(Text(note, style="dim"))

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()

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


# ---- a node's details ----------------------------------------------------------------------

LOG_TAIL_BYTES = 64 * 1024  # read at most this much of a log at a time
LOG_LINES = 1000  # lines of log kept on screen
LOG_POLL_S = 0.25  # how often the log file is checked for new lines


def status_fields(st: NodeStatus) -> Iterator[tuple[str, str]]:
    """Every /status field, nested ones as `redis.connected`, values as text."""
    def text(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3f}".rstrip("0").rstrip(".")
        if isinstance(value, list | tuple):
            return ", ".join(text(v) for v in value) or "—"
        return str(value)

    for key, value in st.to_json().items():
        if isinstance(value, dict):
            for sub, v in value.items():
                yield f"{key}.{sub}", text(v)
        else:
            yield key, text(value)


def read_tail(path: Path, position: int | None) -> tuple[list[str], int]:
    """Blocking (run it in a thread): the complete lines of PATH after POSITION (None: its last
    LOG_TAIL_BYTES), and the position after them. A file shorter than POSITION was started
    anew: it is read from its start."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if position is None:
                position = max(0, size - LOG_TAIL_BYTES)
                skip_partial = position > 0
            else:
                skip_partial = False
                if size < position:
                    position = 0
            f.seek(position)
            data = f.read(LOG_TAIL_BYTES)
    except FileNotFoundError:
        return [], 0
    start: int = position
    end = data.rfind(b"\n")
    if end < 0:
        return [], start
    chunk = data[:end + 1]
    lines = chunk.decode(errors="replace").splitlines()
    if skip_partial and lines:
        lines = lines[1:]  # the first line was cut by the seek
    return lines, start + len(chunk)


# The detail screen's own keys; the console's keys for one node (k, s, t, r, p, g) act on the
# node shown.
DETAIL_OWN: tuple[Key, ...] = (
    Key(key="escape", display="Esc", action="close", label="Back", keep=9,
        description="back to the cluster", attach=True),
    Key(key="left_square_bracket", display="[", action="step(-1)", label="Previous node",
        short="prev", keep=5, description="the previous node", attach=True),
    Key(key="right_square_bracket", display="]", action="step(1)", label="Next node",
        short="next", keep=5, description="the next node", attach=True),
    Key(key="tab", display="Tab", action="app.focus_next", label="Next panel", short="panel",
        keep=3, description="move between the panels", attach=True),
)
DETAIL_KEYS: tuple[Key, ...] = DETAIL_OWN + tuple(
    k for k in KEYS if k.action in ("kill", "stop", "start", "remove", "isolate", "heal",
                                    "goto_goose"))


class NodeDetailScreen(Screen[None]):
    """One node: every field of its last /status answer, the console's events about it and,
    for a node this console started, its log as it grows."""

    BINDINGS = [Binding("escape", "close", "Back", show=False),
                Binding("left_square_bracket", "step(-1)", "Previous", show=False),
                Binding("right_square_bracket", "step(1)", "Next", show=False)]

    def __init__(self, name: str, *, model: ClusterModel, stamp: Callable[[float], str],
                 now: Callable[[], float], log_path: Callable[[str], Path | None],
                 order: Callable[[], list[str]],
                 check: Callable[[str], bool | None] = lambda action: True) -> None:
        super().__init__()
        self.node = name
        self.model = model
        self._stamp = stamp
        self._now = now
        self._log_path = log_path
        self._order = order
        self._check = check
        self._shown_status: object = None
        self.log_file: Path | None = None
        self._log_position = 0
        # Composed: until then there is nothing to draw into (a redraw timer can fire between
        # the push and the compose); on_mount draws it.
        self._composed = False

    def compose(self) -> ComposeResult:
        yield TextBox(id="detail-title")
        with Horizontal(id="detail-body"):
            with VerticalScroll(id="detail-status"):
                yield TextBox(id="detail-fields")
            with Vertical(id="detail-right"):
                yield EventLog(self._stamp, node=self.node, id="detail-events")
                yield WrappedLog(max_entries=LOG_LINES, id="detail-log")
        own = {k.action for k in DETAIL_OWN}
        yield KeyBar(DETAIL_KEYS, lambda action: True if action in own else self._check(action),
                     id="detail-keys")

    # The app makes one of these and shows it again for each node (install_screen): a screen
    # made anew for each Enter costs more than the 50 ms a key may take.

    def on_mount(self) -> None:
        self._composed = True
        if self.is_current:
            self._show_node()

    def on_screen_resume(self) -> None:
        self._show_node()

    def on_screen_suspend(self) -> None:
        self.workers.cancel_group(self, "log")

    def show(self, name: str) -> None:
        """Show NAME from now on (when the screen is shown next, or at once if it is)."""
        if name != self.node:
            self.node = name
            if self._composed:
                self.query_one("#detail-events", EventLog).reset(node=name)
        if self.is_current:
            self._show_node()

    def _show_node(self) -> None:
        if not self._composed:
            return
        self.query_one("#detail-status").border_title = "status"
        events_log = self.query_one("#detail-events", EventLog)
        if events_log.node != self.node:
            events_log.reset(node=self.node)
        events_log.border_title = f"events about {self.node}"
        log = self.query_one("#detail-log", WrappedLog)
        path = self._log_path(self.node)
        if path != self.log_file:
            log.clear()
        self.log_file = path
        log.display = path is not None
        self.workers.cancel_group(self, "log")
        if self.log_file is not None:
            log.border_title = f"log {self.log_file} (following)"
            self.run_worker(self._follow(self.log_file), exclusive=True, group="log",
                            name=f"follow the log of {self.node}")
        self._shown_status = None
        self.update_view()

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width < 100, "-narrow")

    def update_view(self) -> None:
        """Bring the screen up to date with the model (the app calls it with each redraw)."""
        if not self._composed:
            return
        self.query_one("#detail-keys", KeyBar).update_state()
        m = self.model
        now = self._now()
        name = self.node
        events_log = self.query_one("#detail-events", EventLog)
        if events_log.last_seq == 0:
            events_log.add(list(m.events))
        else:
            events_log.add(m.events_after(events_log.last_seq))
        member = m.members.get(name)
        latest = m.latest.get(name)
        ok = m.last_ok.get(name)
        title = Text()
        title.append(f" {name} ", style="bold black on #ffd200")
        if member is None:
            title.append("  not a member any more", style="bold red")
        else:
            title.append(f"  {member.address}", style="dim")
        if name in m.members:
            row = row_view(m, name, now)
            title.append(f"  ·  {row.role}", style="bold")
            if row.term is not None:
                title.append(f"  ·  term {row.term}")
            if row.follows:
                title.append(f"  ·  follows {row.follows}")
            title.append(f"  ·  {row.state}", style="dim")
        self.query_one("#detail-title", TextBox).show(title)
        key = (ok, latest is not None and latest.reply.ok)
        if key == self._shown_status:
            return
        self._shown_status = key
        fields = Text(no_wrap=True, overflow="ellipsis")
        if ok is None or ok.reply.status is None:
            fields.append("no answer yet" if latest is None
                          else f"no answer: {latest.reply.error}", style="dim")
        else:
            ago = fmt_ms((now - ok.at) * 1000)
            when = f"answered {ago} ago, in {fmt_ms(ok.reply.latency_ms)}"
            if latest is not None and not latest.reply.ok:
                when = f"last answer {ago} ago; now: {latest.reply.error}"
            fields.append(when, style="dim")
            rows = list(status_fields(ok.reply.status))
            width = max(len(f) for f, _ in rows)
            for field, value in rows:
                fields.append("\n")
                fields.append(field.ljust(width + 2), style="bold")
                fields.append(value)
        self.query_one("#detail-fields", TextBox).show(fields)

    async def _follow(self, path: Path) -> None:
        """Show the tail of PATH, then each line written to it (bounded: LOG_LINES)."""
        log = self.query_one("#detail-log", WrappedLog)
        start: int | None = self._log_position if log.line_count else None
        while True:
            lines, self._log_position = await asyncio.to_thread(read_tail, path, start)
            start = self._log_position
            if lines:
                log.write_lines(lines)
            await asyncio.sleep(LOG_POLL_S)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_step(self, delta: int) -> None:
        order = self._order()
        if not order:
            return
        i = order.index(self.node) if self.node in order else 0
        self.show(order[(i + delta) % len(order)])
