"""The Textual app: wires a ClusterSource (and, in demo mode, a Fleet) to the widgets."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Input
from textual.worker import Worker, WorkerState

from ddg.errors import ChangeWaiting, DdgError, NotAMember, RegistryError, RegistryUnavailable
from ddg.util.backoff import Backoff

from .config import PollSettings
from .events import Observation, Severity
from .fmt import fmt_ms
from .keys import console_keys, footer_keys, palette_keys
from .model import ClusterModel
from .screens import ConfirmScreen, HelpScreen, NodeDetailScreen
from .source import Clock, ClusterSource, Fleet, SystemClock
from .views import header_view, rows_view, signal_name
from .widgets import Banner, ClusterHeader, EventLog, HistoryPanel, KeyBar, NodeTable

NOTIFY_SEVERITY: dict[Severity, str] = {
    "info": "information", "good": "information", "warning": "warning", "error": "error",
}

# Restart delays of the long-running loops (discovery, each node's poll, the screen tick) after
# a failure; also the discovery loop's retry delay while Redis is in trouble.
RESTART_INITIAL = 0.25
RESTART_MAX = 2.0

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


def restart_backoff() -> Backoff:
    return Backoff(initial=RESTART_INITIAL, maximum=RESTART_MAX)


def describe(error: BaseException | None) -> str:
    """An exception as the event log shows it: its type, and its message if it has one."""
    if error is None:
        return "unknown error"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _needed() -> str | None:
    return None


@dataclass(slots=True)
class _Loop:
    """A long-running worker that the console restarts, after a backoff, when it crashes."""

    what: str                                   # "registry discovery", "the poll loop of n2"
    restart: Callable[[], object]               # starts it again
    backoff: Backoff
    node: str | None = None
    gone: Callable[[], str | None] = _needed    # why it need not run any more, if so


class FilterInput(Input):
    """The `/` filter: Enter keeps it, Esc clears it."""

    BINDINGS = [Binding("escape", "cancel", "Clear", show=False)]

    def action_cancel(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))


class ConsoleApp(App[int]):
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
        # Every worker the console runs, and what to do if it crashes: a _Loop is restarted;
        # a job (an admin action) is reported, with a notification.
        self._loops: dict[Worker[Any], _Loop] = {}
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

    # ---- workers: every one that fails says so -------------------------------------------

    def _run_loop(self, work: Coroutine[Any, Any, None], *, name: str, group: str,
                  loop: _Loop) -> Worker[None]:
        worker: Worker[None] = self.run_worker(work, name=name, group=group,
                                               exit_on_error=False)
        self._loops[worker] = loop
        return worker

    def _run_job(self, work: Callable[[], object] | Coroutine[Any, Any, None], *, name: str,
                 group: str, node: str | None = None, thread: bool = False) -> None:
        """Run a one-shot action; if it crashes, on_worker_state_changed reports it."""
        worker = self.run_worker(work, name=name, group=group, exit_on_error=False,
                                 thread=thread)
        self._jobs[worker] = node

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        # EVENT.state, not worker.state: by the time this runs, the worker may be further on.
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        loop = self._loops.pop(worker, None)
        node = self._jobs.pop(worker, None)
        if event.state != WorkerState.ERROR or self._closing:
            return
        error = describe(worker.error)
        if loop is None:
            self.report(f"{worker.name or 'a background task'} failed unexpectedly: {error}",
                        "error", node=node)
            return
        # A crash streak is notified once, when it starts; every crash goes to the event log.
        first = not loop.backoff.failing
        if (why_not := loop.gone()) is not None:
            self.report(f"{loop.what} crashed: {error}; not restarted: {why_not}", "error",
                        node=loop.node, notify=first)
            return
        delay = loop.backoff.next()
        self.report(f"{loop.what} crashed: {error}; restarting it in {fmt_ms(delay * 1000)}",
                    "error", node=loop.node, notify=first)
        self.set_timer(delay, lambda: self._restart(loop))

    def _restart(self, loop: _Loop) -> None:
        if self._closing:
            return
        if (why_not := loop.gone()) is not None:
            self.report(f"{loop.what} not restarted: {why_not}", "info", node=loop.node,
                        notify=False)
            return
        loop.restart()

    # ---- discovery and polling -----------------------------------------------------------

    def _start_discovery(self) -> None:
        self._run_loop(self._discover(), name="discovery", group="discovery",
                       loop=_Loop("registry discovery", self._start_discovery,
                                  self._discovery_backoff))

    async def _discover(self) -> None:
        backoff = self._discovery_backoff
        while True:
            try:
                async for _ in self.source.changes(self.poll.registry_interval):
                    membership = await self.source.read()
                    now = self.clock.monotonic()
                    self.model.apply_membership(membership, at=now, wall=self.clock.wall())
                    self._sync_pollers()
                    self._membership_seen.set()
                    self._dirty = True
                    backoff.reset()
            except RegistryError as exc:
                self.model.apply_registry_error(
                    str(exc), wall=self.clock.wall(),
                    unreachable=isinstance(exc, RegistryUnavailable))
                self._dirty = True
            await asyncio.sleep(backoff.next())

    def _sync_pollers(self) -> None:
        members = self.model.members
        for name in [n for n in self._pollers if n not in members]:
            self._pollers.pop(name).cancel()
        for name in members:
            if name not in self._pollers:
                self._start_poller(name, restart_backoff())

    def _start_poller(self, name: str, backoff: Backoff) -> None:
        def gone() -> str | None:
            if name not in self.model.members:
                return f"{name} left the registry"
            if self._pollers.get(name) is not worker:
                return f"{name} left and came back; a new loop polls it"
            return None

        worker = self._pollers[name] = self._run_loop(
            self._poll_node(name, backoff), name=f"poll {name}", group="poll",
            loop=_Loop(f"the poll loop of {name}", lambda: self._start_poller(name, backoff),
                       backoff, node=name, gone=gone))

    async def _poll_node(self, name: str, backoff: Backoff | None = None) -> None:
        """Poll one node forever: each node has its own loop, so none can delay another.

        BACKOFF, the loop's restart delay, is reset by every poll that goes through."""
        while name in self.model.members:
            address = self.model.members[name].address
            sent = self.clock.monotonic()
            reply = await self.source.status(address)
            obs = Observation(name=name, reply=reply, sent=sent, at=self.clock.monotonic(),
                              wall=self.clock.wall())
            self.model.apply_observation(obs)
            self._dirty = True
            if backoff is not None:
                backoff.reset()
            busy = self.model.leaderless_ms(obs.at) is not None
            interval = self.poll.failover_interval if busy else self.poll.interval
            await asyncio.sleep(max(0.0, interval - (obs.at - sent)))

    async def wait_for_membership(self) -> None:
        await self._membership_seen.wait()

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

    def _owned(self, name: str, verb: str) -> Fleet | None:
        """The fleet if NAME is a process this console started; otherwise say why not."""
        if self.fleet is None or not self.fleet.owns(name):
            where = self.model.members.get(name)
            addr = f" at {where.address}" if where else ""
            self.report(f"cannot {verb} {name}: it was not started by this console "
                        f"({'attached mode' if self.fleet is None else 'external node'}); "
                        f"{verb} it where it runs{addr}", "warning", node=name)
            return None
        return self.fleet

    def _on_exit(self, name: str, code: int | None, expected: bool, detail: str) -> None:
        now = self.clock.monotonic()
        proc = self.model.procs.get(name)
        if expected:
            if proc is not None and proc.state in ("killed", "stopped", "removed"):
                proc.code = code
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

    def action_add(self) -> None:
        if self.fleet is None:
            self.report("adding nodes needs demo mode (ddg-console --demo N); in attached "
                        "mode start one with ddg-node --name NAME --port PORT", "warning")
            return
        try:
            started = self.fleet.add()
        except DdgError as exc:
            self.report(f"add failed: {exc}", "error")
            return
        self.model.note_process(started.name, pid=started.pid, state="running",
                                at=self.clock.monotonic())
        self.report(f"started {started.name} on port {started.port} (pid {started.pid})",
                    "good", node=started.name)

    def action_kill(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "kill")) is None:
            return
        now = self.clock.monotonic()
        pid = fleet.kill(name)
        if pid is None:
            self.report(f"{name} is not running; nothing to kill", "warning", node=name)
            return
        self.model.note_process(name, pid=pid, state="killed", at=now)
        was_goose = self.model.mark_goose_loss(name, f"{name} killed", at=now)
        tail = " — it was the goose" if was_goose else ""
        self.report(f"{name} killed (SIGKILL, pid {pid}){tail}", "warning", node=name)

    def action_stop(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "stop")) is None:
            return
        if not fleet.running(name):
            self.report(f"{name} is not running; nothing to stop", "warning", node=name)
            return
        now = self.clock.monotonic()
        pid = fleet.pid(name)
        self.model.note_process(name, pid=pid, state="stopped", at=now)
        was_goose = self.model.mark_goose_loss(name, f"{name} stopped", at=now)
        tail = " — it was the goose" if was_goose else ""
        self.report(f"stopping {name} (SIGTERM, pid {pid}){tail}", "warning", node=name,
                    notify=False)
        self._stop_in_thread(name, pid, "stopped")

    def _stop_in_thread(self, name: str, pid: int | None, what: str) -> None:
        assert self.fleet is not None
        fleet, timeout, clock = self.fleet, self.stop_timeout, self.clock

        def work() -> None:
            t0 = clock.monotonic()
            try:
                code = fleet.stop(name, timeout)
            except DdgError as exc:
                self.call_from_thread(self.report, f"stop {name} failed: {exc}", "error")
                return
            took = fmt_ms((clock.monotonic() - t0) * 1000)
            forced = " (needed SIGKILL)" if code is not None and code < 0 and code != -15 else ""
            self.call_from_thread(
                self.report, f"{name} {what}: pid {pid} exited with code {code} after "
                f"{took}{forced}", "info", node=name)

        self._run_job(work, thread=True, name=f"stop {name}", group="stop", node=name)

    def action_start(self) -> None:
        name = self.selected()
        if name is None or (fleet := self._owned(name, "start")) is None:
            return
        try:
            started = fleet.start(name)
        except DdgError as exc:
            self.report(f"start {name} failed: {exc}", "warning", node=name)
            return
        self.model.note_process(name, pid=started.pid, state="running",
                                at=self.clock.monotonic())
        self.report(f"started {name} again on port {started.port} (pid {started.pid})", "good",
                    node=name)

    def action_remove(self) -> None:
        name = self.selected()
        if name is None:
            return
        ours = self.fleet is not None and self.fleet.owns(name)
        detail = (f"{name} leaves cluster {self.source.cluster} for good: the others stop "
                  f"counting it for the quorum.")
        if ours:
            detail += " Its process (started here) is stopped too."
        self.push_screen(ConfirmScreen(f"Remove {name} from the registry?", detail, "Remove"),
                         callback=self._make_remove_callback(name))

    def _make_remove_callback(self, name: str) -> Callable[[bool | None], None]:
        def done(yes: bool | None) -> None:
            if yes:
                self._run_job(self._remove(name), name=f"remove {name}", group="remove",
                              node=name)
            else:
                self.report(f"remove {name}: cancelled", "info", node=name, notify=False)
        return done

    async def _remove(self, name: str) -> None:
        now = self.clock.monotonic()
        try:
            version = await self.source.remove(name)
        except NotAMember:
            self.report(f"{name} is not in the registry any more", "warning", node=name)
            return
        except RegistryUnavailable as exc:
            self.report(f"remove {name} failed, Redis unreachable: {exc}", "error", node=name)
            return
        except ChangeWaiting as exc:
            self.report(f"{name} not removed (nothing written): {exc}", "warning", node=name)
            return
        except RegistryError as exc:
            self.report(f"remove {name} failed: {exc}", "error", node=name)
            return
        self.model.mark_goose_loss(name, f"{name} removed", at=now)
        self.report(f"removed {name} from the registry (version {version})", "good", node=name)
        try:
            membership = await self.source.read()
            self.model.apply_membership(membership, at=self.clock.monotonic(),
                                        wall=self.clock.wall())
            self._sync_pollers()
        except RegistryError:
            pass  # the discovery loop will catch up and report Redis trouble
        if self.fleet is not None and self.fleet.owns(name):
            pid = self.fleet.pid(name)
            self.model.note_process(name, pid=pid, state="removed", at=now)
            if self.fleet.running(name):
                self._stop_in_thread(name, pid, "removed")
            self.isolated_here.discard(name)

    def action_isolate(self) -> None:
        name = self.selected()
        if name is None:
            return
        member = self.model.members.get(name)
        if member is None:
            return
        if not self._can_sign():
            self.report(f"cannot isolate {name}: the cluster signs its messages (start this "
                        "console with --cluster-secret) or demands client certificates "
                        "(--tls-cert and --tls-key)", "warning", node=name)
            return
        ok = self.model.last_ok.get(name)
        st = ok.reply.status if ok is not None else None
        peers = set(self.model.members) - {name}
        if name in self.isolated_here or (
                st is not None and peers and peers <= set(st.isolated_from)):
            self.report(f"{name} is already isolated from all peers (h heals)", "info",
                        node=name)
            return
        self._run_job(self._isolate(name, member.address), name=f"isolate {name}",
                      group="admin", node=name)

    async def _isolate(self, name: str, address: str) -> None:
        now = self.clock.monotonic()
        result = await self.source.admin(name, address, "/admin/partition", {"all": True})
        if not result.ok:
            self.report(f"isolate {name} failed: {result.message}", "error", node=name)
            return
        self.isolated_here.add(name)
        was_goose = self.model.mark_goose_loss(name, f"{name} isolated", at=now,
                                               ends_role=False)
        self.report(f"{name} isolated from all peers{' — it was the goose' if was_goose else ''}"
                    " (h heals)", "warning", node=name)

    def action_heal(self) -> None:
        if not self.isolated_here:
            self.report("nothing to heal: this console made no partition", "info")
            return
        self._run_job(self._heal(sorted(self.isolated_here)), name="heal", group="admin")

    async def _heal(self, names: list[str]) -> None:
        targets = [(n, self.model.members[n].address) for n in names if n in self.model.members]
        for n in names:
            if n not in self.model.members:
                self.isolated_here.discard(n)
        results = await asyncio.gather(
            *(self.source.admin(n, addr, "/admin/heal", {}) for n, addr in targets))
        healed = [n for (n, _), r in zip(targets, results, strict=True) if r.ok]
        failed = [(n, r) for (n, _), r in zip(targets, results, strict=True) if not r.ok]
        self.isolated_here.difference_update(healed)
        if healed:
            self.report(f"healed {', '.join(healed)}", "good")
        for n, r in failed:
            self.report(f"heal {n} failed: {r.message}", "error", node=n)
