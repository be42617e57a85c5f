"""The console's workers, out of the app: every long-running loop (registry discovery, one
poll loop per node) restarted with a backoff when it crashes, every one-shot job reported when
it fails. Mixed into ConsoleApp (as ddg.node.api is into the node), which owns the state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.worker import Worker, WorkerState

from ddg.errors import RegistryError, RegistryUnavailable
from ddg.util.backoff import Backoff

from .config import PollSettings
from .events import Observation, Severity
from .fmt import fmt_ms
from .model import ClusterModel
from .source import Clock, ClusterSource

# Restart delays of the long-running loops (discovery, each node's poll, the screen tick) after
# a failure; also the discovery loop's retry delay while Redis is in trouble.
RESTART_INITIAL = 0.25
RESTART_MAX = 2.0


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
class Loop:
    """A long-running worker that the console restarts, after a backoff, when it crashes."""

    what: str                                   # "registry discovery", "the poll loop of n2"
    restart: Callable[[], object]               # starts it again
    backoff: Backoff
    node: str | None = None
    gone: Callable[[], str | None] = _needed    # why it need not run any more, if so


class Workers(App[int]):
    """Discovery, polling and the supervision of every worker (ConsoleApp's __init__ sets the
    state below)."""

    model: ClusterModel
    source: ClusterSource
    clock: Clock
    poll: PollSettings
    _pollers: dict[str, Worker[None]]
    _loops: dict[Worker[Any], Loop]
    _jobs: dict[Worker[Any], str | None]
    _discovery_backoff: Backoff
    _membership_seen: asyncio.Event
    _dirty: bool
    _closing: bool

    if TYPE_CHECKING:
        def report(self, text: str, severity: Severity = "info", *, node: str | None = None,
                   notify: bool = True) -> None: ...

    def _run_loop(self, work: Coroutine[Any, Any, None], *, name: str, group: str,
                  loop: Loop) -> Worker[None]:
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

    def _restart(self, loop: Loop) -> None:
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
                       loop=Loop("registry discovery", self._start_discovery,
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
            loop=Loop(f"the poll loop of {name}", lambda: self._start_poller(name, backoff),
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
