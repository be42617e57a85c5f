"""A console worker that crashes says so in the event log, and the long-running loops (each
node's poll, the registry discovery, the screen tick) start again after a Backoff delay."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

try:
    from ddg_testkit.fake_source import FakeFleet, FakeSource, healthy_cluster
except ImportError:  # before the fake moved out of tests/
    from fake_source import FakeFleet, FakeSource, healthy_cluster  # type: ignore[no-redef,import-not-found]

import ddg_tui.app
from ddg.client import AdminResult, Reply
from ddg.registry.records import Membership
from ddg_testkit.pilot import until
from ddg_tui.app import ConsoleApp
from ddg_tui.events import Event
from ddg_tui.source import Exit, FixedClock
from ddg_tui.widgets.eventlog import EventLog
from ddg_tui.widgets.table import NodeTable
from ddg_tui.workers import RESTART_INITIAL, RESTART_MAX


class Recording(ConsoleApp):
    """The console, keeping the notifications it showed."""

    # A relative CSS_PATH is read next to the module of the class that sets it.
    CSS_PATH = str(Path(ddg_tui.app.__file__).with_name("console.tcss"))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.toasts: list[tuple[str, str]] = []

    def notify(self, message: str, **kwargs: Any) -> None:
        self.toasts.append((message, kwargs.get("severity", "information")))
        super().notify(message, **kwargs)


class StatusCrashes(FakeSource):
    """status() of NODE raises RuntimeError (not a Reply with an error: a bug) TIMES times."""

    def __init__(self, *, node: str, times: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node, self.crashes_left = node, times
        self.calls: dict[str, int] = {}

    async def status(self, address: str) -> Reply:
        name = next(n for n, m in self.members.items() if m.address == address)
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.node and self.crashes_left > 0:
            self.crashes_left -= 1
            raise RuntimeError(f"{name} status exploded")
        return await super().status(address)


class ReadCrashes(FakeSource):
    """read() raises RuntimeError (not a RegistryError) TIMES times, then answers."""

    def __init__(self, *, times: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crashes_left = times

    async def read(self) -> Membership:
        if self.crashes_left > 0:
            self.crashes_left -= 1
            raise RuntimeError("registry decoder exploded")
        return await super().read()


class AdminCrashes(FakeSource):
    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        raise RuntimeError(f"admin client exploded on {path} [sic]")


class StopCrashes(FakeFleet):
    def stop(self, name: str, timeout: float) -> int | None:
        raise RuntimeError(f"waitpid exploded for {name}")


class ExitsCrashOnce(FakeFleet):
    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.crashed = False

    def exits(self) -> list[Exit]:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("exit queue exploded")
        return super().exits()


def cluster(cls: type[FakeSource] = FakeSource, **kwargs: Any) -> FakeSource:
    base = healthy_cluster()
    return cls(members=base.members, replies=base.replies, **kwargs)


def events(app: ConsoleApp, needle: str) -> list[Event]:
    return [e for e in app.model.events if needle in e.text]


def shown(app: ConsoleApp, event: Event) -> bool:
    """The event has been written to the event log widget."""
    return app.query_one(EventLog).last_seq >= event.seq


def delay_s(event: Event) -> float:
    m = re.search(r"restarting it in ([\d.]+) (ms|s)\b", event.text)
    assert m, event.text
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


async def test_a_crashed_poll_loop_is_reported_and_restarted_with_backoff() -> None:
    source = cluster(StatusCrashes, node="n2", times=3)
    assert isinstance(source, StatusCrashes)
    app = Recording(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        crash = "the poll loop of n2 crashed: RuntimeError: n2 status exploded; restarting it in"
        await until(pilot, lambda: len(events(app, crash)) == 3, "three crash events", 10)
        crashes = events(app, crash)
        assert all(e.severity == "error" and e.node == "n2" for e in crashes)
        # Backoff: each delay is the step (0.25, 0.5, 1 s, capped at 2 s) times 0.5-1.5.
        for i, e in enumerate(crashes):
            step = min(RESTART_INITIAL * 2 ** i, RESTART_MAX)
            assert 0.5 * step - 0.001 <= delay_s(e) <= 1.5 * step + 0.001, e.text
        # The restarted loop polls n2 again: its answer reaches the model and the table.
        await until(pilot, lambda: "n2" in app.model.latest, "n2's answer after restarts", 10)
        await until(pilot, lambda: app.query_one(NodeTable).get_cell("n2", "role").plain
                    == "duck", "n2's row to show its answer", 5)
        assert all(shown(app, e) for e in crashes)
        calls = source.calls["n2"]
        await until(pilot, lambda: source.calls["n2"] >= calls + 2, "n2 polled on and on", 5)
        # One notification per crash streak, not per crash; the other nodes were not touched.
        assert [t for t in app.toasts if "n2 crashed" in t[0]] == [(crashes[0].text, "error")]
        assert not events(app, "n1 crashed") and not events(app, "n3 crashed")


async def test_a_crashed_discovery_loop_is_reported_and_restarted() -> None:
    source = cluster(ReadCrashes, times=2)
    app = Recording(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        crash = ("registry discovery crashed: RuntimeError: registry decoder exploded; "
                 "restarting it in")
        await until(pilot, lambda: len(events(app, crash)) == 2, "two crash events", 10)
        await until(pilot, lambda: sorted(app.model.members) == ["n1", "n2", "n3"],
                    "the membership after the restart", 10)
        await until(pilot, lambda: len(app.model.latest) == 3, "every node answering", 5)
        assert all(shown(app, e) for e in events(app, crash))
        # Discovery goes on after its restart: a change in the registry still arrives.
        await source.remove("n3")
        await until(pilot, lambda: "n3" not in app.model.members, "n3 to leave", 5)
        assert len(events(app, crash)) == 2


@pytest.mark.parametrize("key", ["p", "h"])
async def test_a_crashed_admin_action_is_reported_and_notified(key: str) -> None:
    source = cluster(AdminCrashes)
    app = Recording(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.query_one(NodeTable).row_count == 3, "3 rows", 5)
        if key == "h":
            app.isolated_here.add("n1")  # as if an earlier isolate had gone through
        await pilot.press(key)
        what = "isolate n1" if key == "p" else "heal"
        text = f"{what} failed unexpectedly: RuntimeError: admin client exploded on /admin/"
        await until(pilot, lambda: events(app, text), f"the {what} failure event", 5)
        [event] = events(app, text)
        assert event.severity == "error"
        assert "[sic]" in event.text  # the message is shown as it is, not read as markup
        assert (event.text, "error") in app.toasts
        await until(pilot, lambda: shown(app, event), "the event in the log", 5)
        assert app.is_running


async def test_a_crashed_stop_thread_is_reported_and_notified() -> None:
    source = cluster()
    app = Recording(source=source, fleet=StopCrashes(sorted(source.members)),
                    clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.query_one(NodeTable).row_count == 3, "3 rows", 5)
        await pilot.press("s")
        text = "stop n1 failed unexpectedly: RuntimeError: waitpid exploded for n1"
        await until(pilot, lambda: events(app, text), "the stop failure event", 5)
        [event] = events(app, text)
        assert event.node == "n1" and (event.text, "error") in app.toasts


async def test_a_crashed_screen_tick_is_reported_and_resumes() -> None:
    source = cluster()
    fleet = ExitsCrashOnce(sorted(source.members))
    app = Recording(source=source, fleet=fleet, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        text = "the screen update crashed: RuntimeError: exit queue exploded; restarting it in"
        await until(pilot, lambda: events(app, text), "the tick crash event", 5)
        [event] = events(app, text)
        renders = app.renders
        # The tick runs again: the screen is redrawn and shows the event.
        await until(pilot, lambda: app.renders > renders and shown(app, event),
                    "a redraw after the crash", 5)
        assert (event.text, "error") in app.toasts
        await until(pilot, lambda: len(app.model.latest) == 3, "3 answers", 5)
        assert app.is_running


class StatusCrashesAndLeaves(FakeSource):
    """n2's status() takes n2 out of the registry, then raises."""

    async def status(self, address: str) -> Reply:
        if self.members.get("n2") is not None and self.members["n2"].address == address:
            await self.remove("n2")
            raise RuntimeError("n2 status exploded on the way out")
        return await super().status(address)


async def test_a_crashed_poll_loop_of_a_node_that_left_is_not_restarted() -> None:
    source = cluster(StatusCrashesAndLeaves)
    app = Recording(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        # Whether the crash or the registry change is seen first, the event says why.
        await until(pilot, lambda: events(app, "the poll loop of n2"), "the crash event", 5)
        await until(pilot, lambda: events(app, "not restarted: n2 left the registry"),
                    "the reason it is not restarted", 5)
        assert events(app, "the poll loop of n2 crashed: RuntimeError: n2 status exploded")
        await until(pilot, lambda: "n2" not in app.query_one(NodeTable).rows, "n2's row to go",
                    5)
        assert "n2" not in app._pollers
        assert len(app.model.latest) == 2
