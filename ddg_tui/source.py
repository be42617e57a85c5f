"""The pluggable edges of the console: where data comes from, who owns processes, what time it is.

The app talks only to these protocols. `poller.LiveSource` and `demo.Demo` are the real ones;
`ddg_testkit.fake_source`'s FakeSource and FakeFleet and `FixedClock` make the screens
deterministic for tests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ddg.client import AdminResult, Reply
from ddg.registry.records import Membership


class ClusterSource(Protocol):
    """Membership from the registry, status from the nodes, and the calls that change them."""

    cluster: str
    location: str  # where the registry lives, for the header (e.g. the Redis URL)

    async def read(self) -> Membership:
        """The current membership; raises ddg.errors.RegistryError."""
        ...

    def changes(self, interval: float) -> AsyncIterator[None]:
        """Yields on each membership change (and every INTERVAL s); raises RegistryUnavailable."""
        ...

    async def status(self, address: str) -> Reply:
        """Poll one node. Never raises: failures are a Reply with an error."""
        ...

    async def remove(self, name: str) -> int:
        """Remove NAME from the registry; returns the new version. Raises RegistryError."""
        ...

    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        """POST an admin request (fault injection) to node NAME. Never raises."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Started:
    name: str
    pid: int | None
    port: int
    log_path: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Exit:
    name: str
    code: int | None
    expected: bool
    detail: str = ""


class Fleet(Protocol):
    """Node processes this console started (demo mode). Only wait/stop/close block."""

    def owns(self, name: str) -> bool: ...

    def pid(self, name: str) -> int | None: ...

    def running(self, name: str) -> bool: ...

    def add(self) -> Started:
        """Start a new node on a free port; raises ddg.errors.DdgError."""
        ...

    def start(self, name: str) -> Started:
        """Start NAME again with the same name, port and data dir."""
        ...

    def kill(self, name: str) -> int | None:
        """SIGKILL; returns the pid signalled, or None if it was not running."""
        ...

    def terminate(self, name: str) -> int | None:
        """SIGTERM; returns the pid signalled, or None if it was not running."""
        ...

    def stop(self, name: str, timeout: float) -> int | None:
        """Blocking: SIGTERM, then SIGKILL after TIMEOUT; returns the exit code."""
        ...

    def forget(self, name: str) -> None: ...

    def exits(self) -> list[Exit]:
        """Processes that ended since the last call (non-blocking; reaps them)."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def stamp(self, wall: float) -> str:
        """Format a wall-clock time for the event log."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def stamp(self, wall: float) -> str:
        return datetime.fromtimestamp(wall).strftime("%H:%M:%S.%f")[:-3]


@dataclass(kw_only=True, slots=True)
class FixedClock:
    """A clock that moves only when told to: for snapshots and unit tests. Formats in UTC."""

    mono: float = 1000.0
    wall_time: float = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds

    def stamp(self, wall: float) -> str:
        return datetime.fromtimestamp(wall, UTC).strftime("%H:%M:%S.%f")[:-3]
