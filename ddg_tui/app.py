"""The Textual app: wires a ClusterSource (and, in demo mode, a Fleet) to the model and the
widgets; its workers (workers.py: discovery, polls) and node actions (actions.py) are mixed in."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import events
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Input
from textual.worker import Worker

from .actions import NodeActions
from .config import PollSettings
from .events import Severity
from .fmt import fmt_ms
from .keys import console_keys, footer_keys, palette_keys
from .model import ClusterModel
from .screens import HelpScreen, NodeDetailScreen
from .source import Clock, ClusterSource, Fleet, SystemClock
from .views import header_view, rows_view, signal_name
from .widgets.eventlog import EventLog
from .widgets.header import Banner, ClusterHeader
from .widgets.history import HistoryPanel
from .widgets.keybar import KeyBar
from .widgets.table import NodeTable
from .workers import Loop, describe, restart_backoff

NOTIFY_SEVERITY: dict[Severity, str] = {
    "info": "information", "good": "information", "warning": "warning", "error": "error",
}

# The screen is redrawn from the model at most this often while polls come in (a new event is
# shown at once), and at least this often for the ages it shows ("answer is 1.2 s old").
RENDER_GAP = 0.25
RENDER_MAX_GAP = 1.0
TICK = 0.1
# Once the screen is built, its objects (widgets, styles, caches) are moved out of the garbage
# collector's sight (gc.freeze): a full collection then takes a few ms instead of up to 200 ms
# at 25 nodes, which a key pressed at that moment would wait for.
GC_FREEZE_AFTER = 2.0

# The keys the console binds, by key name, and the actions that need demo mode.
CONSOLE_ACTIONS = {key: action for k in console_keys() for key, action in k.pairs()}
DEMO_ACTIONS = ("add", "kill", "stop", "start")
# Actions of the main screen only (on a node's detail screen, k, s, t, r and p act on that node).
MAIN_SCREEN_ACTIONS = ("add", "detail", "filter", "sort")


class FilterInput(Input):
    """The `/` filter: Enter keeps it, Esc clears it."""

    BINDINGS = [Binding("escape", "cancel", "Clear", show=False)]

    def action_cancel(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))


class ConsoleApp(NodeActions):
    """Live view of one DuckDuckGoose cluster, with the keys to break it and watch it heal."""

    CSS_PATH = "console.tcss"
    TITLE = "ddg-console"
    BINDINGS = [Binding(k.key, k.action, k.label) for k in console_keys()]

    def __init__(self, *, source: ClusterSource, fleet: Fleet | None = None,
                 poll: PollSettings | None = None, clock: Clock | None = None,
                 mode: str | None = None, handle_signals: bool = False,
                 stop_timeout: float = 5.0, tune_gc: bool | None = None) -> None:
        """TUNE_GC: freeze the garbage collector's view of the built screen (see
        GC_FREEZE_AFTER); None: when running in a terminal (not headless, as in tests)."""
        super().__init__()
        self.tune_gc = tune_gc
        self.source = source
        self.fleet = fleet
        self.poll = poll or PollSettings()
        self.clock: Clock = clock or SystemClock()
        # In demo mode the header counts the nodes started here itself (they come and go).
        self.mode = mode or ("demo" if fleet else "attached")
        self.handle_signals = handle_signals
        self.stop_timeout = stop_timeout
        self.model = ClusterModel(cluster=source.cluster, stale_after=self.poll.stale_after)
        self.isolated_here: set[str] = set()
        self.renders = 0
        self._pollers: dict[str, Worker[None]] = {}
        # Every worker the console runs, and what to do if it crashes: a Loop is restarted;
        # a job (an admin action) is reported, with a notification.
        self._loops: dict[Worker[Any], Loop] = {}
        self._jobs: dict[Worker[Any], str | None] = {}  # worker -> its node, if any
        self._discovery_backoff = restart_backoff()
        self._tick_backoff = restart_backoff()
        self._ticker: Timer | None = None
        self._closing = False
        self._dirty = True
        self._last_render = -1e9
        self._rendered_seq = -1
        self._render_pending = False
        self._detail: NodeDetailScreen | None = None
        self._toasts_at: tuple[int, int, int, int] | None = None  # see _place_toasts
        self._membership_seen = asyncio.Event()
        self._poll_text = (f"poll {self.poll.interval * 1000:.0f} ms, timeout "
                           f"{self.poll.timeout * 1000:.0f} ms",
                           f"poll {self.poll.interval * 1000:.0f} ms")

    # ---- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield ClusterHeader(id="header")
        yield Banner(id="banner", classes="-hidden")
        yield NodeTable(id="nodes")
        with Horizontal(id="lower"):
            yield EventLog(self.clock.stamp, id="events")
            yield HistoryPanel(self.clock.stamp, id="history")
        yield FilterInput(placeholder="filter nodes by name (Enter keeps it, Esc clears it)",
                          id="filter", classes="-hidden")
        yield KeyBar(footer_keys(), self._key_state, id="keys")

    def on_mount(self) -> None:
        self._ui_table = table = self.query_one(NodeTable)
        self._ui_header = self.query_one(ClusterHeader)
        self._ui_banner = self.query_one(Banner)
        self._ui_log = self.query_one(EventLog)
        self._ui_history = self.query_one(HistoryPanel)
        self._ui_keys = self.query_one("#keys", KeyBar)
        self._ui_filter = self.query_one("#filter", FilterInput)
        table.border_title = "nodes"
        self._ui_log.border_title = "events"
        self._ui_history.border_title = "history"
        table.focus()
        self._start_discovery()
        self._ticker = self.set_interval(TICK, self._tick)
        if self.tune_gc if self.tune_gc is not None else not self.is_headless:
            self.set_timer(GC_FREEZE_AFTER, gc.freeze)
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self.render_now()

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self._place_toasts)

    def _place_toasts(self) -> None:
        """Fit the main screen's notifications inside the event log's border (it says what
        they say), so that they cover nothing shown only once: not the history panel, not
        the table; and at most half of the log. The newest stay in view when there are more
        than fit."""
        if not self.screen_stack or not hasattr(self, "_ui_log"):
            return
        racks = self.screen_stack[0].query("#textual-toastrack")
        box = self._ui_log.region
        if not racks or box.height < 3:
            return
        rack = racks.first()
        styles = rack.styles
        place = (box.x + 1, self.screen_stack[0].size.height - box.bottom + 1,
                 box.width - 2, max(1, (box.height - 2) // 2))
        if self._toasts_at == place:
            return
        self._toasts_at = place
        left, bottom, width, height = place
        styles.margin = (0, 0, bottom, left)
        styles.width = width
        styles.max_height = height

    def _on_signal(self, sig: int) -> None:
        self.exit(128 + sig, return_code=128 + sig)

    async def on_unmount(self) -> None:
        self._closing = True
        self.workers.cancel_all()
        await self.source.close()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for k in palette_keys():
            yield SystemCommand(k.title, k.text, getattr(self, f"action_{k.action}"))

    # ---- rendering -----------------------------------------------------------------------

    def _tick(self) -> None:
        """Every TICK: process exits, and redraw when something changed: at once for a new
        event, else at most every RENDER_GAP, and at least every RENDER_MAX_GAP.

        If it fails, the ticker pauses, says so, and resumes after a backoff."""
        try:
            if self.fleet is not None:
                for ex in self.fleet.exits():
                    self._on_exit(ex.name, ex.code, ex.expected, ex.detail)
            now = self.clock.monotonic()
            self.model.tick(now)
            # paced by the real clock: the model's may be a test's, standing still
            since = time.monotonic() - self._last_render
            if self.model.last_seq != self._rendered_seq or since >= RENDER_MAX_GAP or (
                    self._dirty and since >= RENDER_GAP):
                self.render_now()
        except Exception as exc:
            if self._ticker is None:
                raise
            self._ticker.pause()
            first = not self._tick_backoff.failing
            delay = self._tick_backoff.next()
            self.report(f"the screen update crashed: {describe(exc)}; restarting it in "
                        f"{fmt_ms(delay * 1000)}", "error", notify=first)
            self.set_timer(delay, self._ticker.resume)
        else:
            self._tick_backoff.reset()

    def _mode(self) -> tuple[str, str]:
        """What the header says about who owns the nodes (long, short)."""
        if self.fleet is None:
            return self.mode, "attached"
        fleet = self.fleet
        ours = sum(1 for name in self.model.members if fleet.owns(name))
        return (f"demo: {ours} node{'' if ours == 1 else 's'} started here",
                f"demo, {ours} ours")

    def render_now(self) -> None:
        """Bring every widget up to date with the model."""
        now = self.clock.monotonic()
        self._dirty = False
        self._last_render = time.monotonic()
        self._rendered_seq = self.model.last_seq
        self.renders += 1
        m = self.model
        header = header_view(m, now)
        new = m.events_after(self._ui_log.last_seq)
        mode, mode_short = self._mode()
        with self.batch_update():
            self._ui_header.show(header, mode=mode, mode_short=mode_short,
                                 location=self.source.location, poll=self._poll_text[0],
                                 poll_short=self._poll_text[1])
            self._ui_banner.show(header.banner, header.banner_level)
            self._ui_table.sync(rows_view(m, now))
            self._ui_log.add(new)
            self._ui_history.show(m.failovers, m.timeline)
            self._ui_keys.update_state()
            if isinstance(self.screen, NodeDetailScreen):
                self.screen.update_view()
        self._place_toasts()
        for e in new:
            if e.kind in ("failover", "split"):
                self.notify(e.text, severity=NOTIFY_SEVERITY[e.severity],  # type: ignore[arg-type]
                            timeout=6)

    # ---- keys that do not apply --------------------------------------------------------------

    def _key_state(self, action: str) -> bool | None:
        if action == "command_palette":
            return True
        return self.check_action(action, ())

    def _can_sign(self) -> bool:
        """Whether the console can send admin requests the nodes accept: a cluster that signs
        its messages needs the secret, one with mutual TLS a client certificate."""
        modes = {o.reply.status.security for o in self.model.last_ok.values()
                 if o.reply.status is not None}
        if "hmac" in modes and getattr(self.source, "secret", None) is None:
            return False
        tls = getattr(self.source, "tls", None)
        return "mtls" not in modes or (tls is not None and tls.cert is not None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """True: the key applies; None: not to the selected node, or not now (dimmed in the
        footer); False: never in this mode (left out of the footer)."""
        if action in MAIN_SCREEN_ACTIONS and isinstance(self.screen, NodeDetailScreen):
            return False  # the detail screen has its own keys for these
        name = self._current_node()
        if action in DEMO_ACTIONS:
            if self.fleet is None:
                return False
            if action == "add":
                return True
            if name is None or not self.fleet.owns(name):
                return None
            running = self.fleet.running(name)
            return True if running != (action == "start") else None
        if action in ("remove", "detail", "isolate"):
            if name is None:
                return None
            if action == "isolate" and not self._can_sign():
                return None
        if action == "heal":
            return True if self.isolated_here else None
        if action == "goto_goose":
            return True if self.model.live_goose() is not None else None
        return True

    def on_key(self, event: events.Key) -> None:
        """A key whose action does not apply still says why (the action explains itself)."""
        if isinstance(self.screen, ModalScreen) or isinstance(self.focused, Input):
            return
        action = CONSOLE_ACTIONS.get(event.key)
        if action is None:
            return
        state = self.check_action(action, ())
        # dimmed (None): it says why; left out (False): only the demo keys, in attach mode
        if state is None or (state is False and action in DEMO_ACTIONS and self.fleet is None):
            event.stop()
            getattr(self, f"action_{action}")()

    def on_node_table_highlighted(self, message: NodeTable.Highlighted) -> None:
        self._ui_keys.update_state()

    def on_node_table_chosen(self, message: NodeTable.Chosen) -> None:
        self.action_detail()

    # ---- helpers -------------------------------------------------------------------------

    def report(self, text: str, severity: Severity = "info", *, node: str | None = None,
               notify: bool = True) -> None:
        """An action's outcome: into the event log and, by default, a notification."""
        self.model.note(self.clock.wall(), text, severity, node=node)
        if notify:
            # No markup: the text may quote an error message, brackets and all.
            self.notify(text, severity=NOTIFY_SEVERITY[severity],  # type: ignore[arg-type]
                        timeout=5 if severity in ("info", "good") else 8, markup=False)
        self._dirty = True
        self._render_soon()

    def _render_soon(self) -> None:
        """Redraw as soon as the current message is handled (a key's outcome shows at once,
        not at the next tick); several requests before then make one redraw."""
        if not self._render_pending:
            self._render_pending = True
            self.call_next(self._render_requested)

    def _render_requested(self) -> None:
        self._render_pending = False
        if not self._closing:
            self.render_now()

    def _current_node(self) -> str | None:
        """The node the keys act on: the one shown in detail, else the table's cursor's."""
        if isinstance(self.screen, NodeDetailScreen):
            return self.screen.node
        table: NodeTable | None = getattr(self, "_ui_table", None)  # None until mounted
        return table.selected() if table is not None else None

    def selected(self) -> str | None:
        name = self._current_node()
        if name is None:
            self.notify("no node selected", severity="warning")
        return name

    def _on_exit(self, name: str, code: int | None, expected: bool, detail: str) -> None:
        now = self.clock.monotonic()
        proc = self.model.procs.get(name)
        if expected:
            if proc is not None and proc.state in ("killed", "stopped", "removed"):
                # The kill, stop or remove logged it already (a stop when the process ended,
                # with its code): one line for one action.
                proc.code = code
                return
            self.report(f"{name} process exited (code {code})", "info", node=name,
                        notify=False)
            return
        pid = self.fleet.pid(name) if self.fleet else None
        self.model.note_process(name, pid=pid, state="exited", at=now, code=code, detail=detail)
        if code is not None and code < 0:
            # Not this console: someone else signalled it (or the kernel, out of memory).
            sig = signal_name(-code)
            self.model.mark_goose_loss(name, f"{name} killed by {sig}", at=now)
            self.report(f"{name} was killed by {sig}, not by this console (pid {pid})",
                        "error", node=name)
            return
        self.model.mark_goose_loss(name, f"{name} exited", at=now)
        hint = f": {detail}" if detail else ""
        path = self._log_path(name)
        where = f" (log {path})" if path is not None and detail else ""
        self.report(f"{name} exited by itself (code {code}){hint}{where}",
                    "info" if code == 0 else "error", node=name)

    def _log_path(self, name: str) -> Path | None:
        log = getattr(self.fleet, "log_path", None)
        path = log(name) if callable(log) else None
        return path if isinstance(path, Path) else None

    # ---- actions -------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(attached=self.fleet is None))

    def action_detail(self) -> None:
        name = self.selected()
        if name is None:
            return
        if isinstance(self.screen, NodeDetailScreen):
            return
        if self._detail is None:
            self._detail = NodeDetailScreen(
                name, model=self.model, stamp=self.clock.stamp, now=self.clock.monotonic,
                log_path=self._log_path, order=lambda: self._ui_table.names,
                check=self._key_state)
            self.install_screen(self._detail, name="node-detail")
        self._detail.show(name)
        self.push_screen("node-detail")

    def action_filter(self) -> None:
        box = self._ui_filter
        box.remove_class("-hidden")
        box.value = self._ui_table.filter_text
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self._ui_table.set_filter(event.value)
            self._ui_keys.update_state()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self._ui_table.set_filter(event.value)
            if not event.value:
                event.input.add_class("-hidden")
            self._ui_table.focus()
            self._ui_keys.update_state()

    def action_sort(self) -> None:
        self._ui_table.cycle_sort()

    def action_goto_goose(self) -> None:
        goose = self.model.live_goose()
        if goose is None:
            self.notify("no node answers goose right now", severity="warning")
            return
        self._ui_table.select(goose)
        if isinstance(self.screen, NodeDetailScreen):
            self.screen.show(goose)
