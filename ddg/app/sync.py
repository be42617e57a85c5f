"""The member for scripts and threads: `with SyncMember(name=..., port=...) as me:` runs the
async Member on an event loop in a thread of its own, so nothing the caller does (blocking
calls, a long computation) slows its bookkeeping, and the node runs in its own process anyway.

A thread cannot be cancelled: a synchronous job gets a GooseTerm and asks it, before each
piece of work, whether the lease still holds (`held`, or `check()` which raises GooseLost).
Both read the lease deadline against the clock, without I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from ddg.app.member import Change, Member, MemberConfig
from ddg.errors import ConfigError, GooseLost, MemberClosed, MemberError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GooseTerm:
    """What a synchronous job gets: its term (the fencing token) and the lease to ask."""

    member: Member
    term: int

    @property
    def held(self) -> bool:
        """The node holds this term's lease right now."""
        return self.member.holds(self.term)

    def check(self) -> None:
        """Raise GooseLost unless the lease still holds."""
        if not self.member.holds(self.term):
            raise GooseLost(f"member {self.member.name} is not the goose of term {self.term} "
                            "any more")


class SyncMember:
    """ddg.app.member(...) without async. Same arguments (MemberConfig's)."""

    def __init__(self, **settings: Any) -> None:
        self.config = MemberConfig(**settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._member: Member | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None:
            coro.close()
            raise MemberClosed(f"member {self.config.name} is not running: use it in a with "
                               "block")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    @property
    def member(self) -> Member:
        if self._member is None:
            raise MemberClosed(f"member {self.config.name} is not running: use it in a with "
                               "block")
        return self._member

    def __enter__(self) -> SyncMember:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                        name=f"ddg-member-{self.config.name}")
        self._thread.start()
        self._loop = loop

        async def start() -> Member:
            me = Member(self.config)
            await me.start()
            return me

        try:
            self._member = self._call(start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._member is not None:
            try:
                self._call(self._member.close())
            finally:
                self._member = None
                self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()
        if loop is not None:
            loop.close()

    @property
    def is_goose(self) -> bool:
        return self.member.is_goose

    @property
    def term(self) -> int:
        return self.member.term

    @property
    def goose(self) -> str | None:
        return self.member.goose

    @property
    def lease_deadline(self) -> float | None:
        return self.member.lease_deadline

    @property
    def node_pid(self) -> int | None:
        return self.member.node_pid

    def wait_goose(self, timeout: float | None = None) -> int | None:
        """Block until the node holds the goose's lease: its term; None after TIMEOUT s."""
        if timeout is not None and not timeout >= 0:
            raise ConfigError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        try:
            return self._call(self.member.wait_goose(), timeout)
        except concurrent.futures.TimeoutError:
            return None

    def run_as_goose(self, job: Callable[[GooseTerm], object]) -> None:
        """Call job(GooseTerm) in this thread each time the node becomes the goose. The job
        must ask `held` (or call `check()`) before each piece of work and return, or raise
        GooseLost, when the lease is gone. A job that returns is called again in the next
        term. Returns never; raises the job's errors, or MemberError when the member ends."""
        if not callable(job):
            raise ConfigError(f"run_as_goose needs a callable job(goose_term), got {job!r}")
        member = self.member
        while True:
            term = self._call(member.wait_goose())
            try:
                job(GooseTerm(member, term))
            except GooseLost:
                pass
            while member.holds(term):  # returned early: wait for the term to end
                time.sleep(0.01)

    def changes(self) -> Iterator[Change]:
        """The node's changes, as Member.changes(); ends with the member's MemberError."""
        member = self.member
        items: queue.SimpleQueue[Change | MemberError] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for change in member.changes():
                    items.put(change)
            except MemberError as exc:
                items.put(exc)

        if self._loop is None:
            raise MemberClosed(f"member {self.config.name} is not running")
        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = items.get()
                if isinstance(item, MemberError):
                    raise item
                yield item
        finally:
            future.cancel()
