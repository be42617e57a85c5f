"""A deterministic cluster for snapshots and tests: fixed answers, fixed pids, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ddg.client import AdminResult, NodeStatus, Reply, Role, TimingInfo
from ddg.election.core import quorum_of
from ddg.errors import DdgError, NotAMember, RegistryUnavailable
from ddg.registry.records import Member, Membership
from ddg_tui.source import Exit, Started

GOOSE = Role.GOOSE
DEFAULT_TIMING = TimingInfo(heartbeat_ms=50, election_timeout_ms=(150, 300), lease_ms=80.0,
                            lease_wait_ms=100.0, epoch=1, target="default",
                            timings=("default",), confirmed=True, source="cluster")
# A change to fast in progress (the joint timing of both), waiting for n1.
CHANGING_TIMING = TimingInfo(heartbeat_ms=15, election_timeout_ms=(150, 300), lease_ms=30.0,
                             lease_wait_ms=100.0, epoch=4, target="fast",
                             timings=("default", "fast"), confirmed=True,
                             waiting_for=("n1",), source="cluster")


def _status(name: str, role: str, term: int, goose: str | None, members: list[str],
            **extra: Any) -> NodeStatus:
    extra.setdefault("timing", DEFAULT_TIMING)
    return NodeStatus(
        name=name, role=Role(role), term=term, goose=goose, cluster="demo",
        address=f"http://127.0.0.1:{7100 + int(name[1:])}", pid=40000 + int(name[1:]),
        members=tuple(members), quorum=quorum_of(len(members)), membership_version=7,
        heartbeat_age_ms=None if role == GOOSE else 12.0 + int(name[1:]),
        lease_remaining_ms=96.0 if role == GOOSE else None,
        uptime_s=125.0 + int(name[1:]), **extra)


class FakeSource:
    """ClusterSource with canned answers. `replies[name]` is what that node answers."""

    def __init__(self, *, cluster: str = "demo", members: dict[str, Member],
                 replies: dict[str, Reply], version: int = 7) -> None:
        self.cluster = cluster
        self.location = "redis://127.0.0.1:6390/0"
        self.members = dict(members)
        self.replies = dict(replies)
        self.version = version
        self.admin_calls: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self.redis_error: str | None = None

    async def read(self) -> Membership:
        if self.redis_error:
            raise RegistryUnavailable(self.redis_error)
        return Membership(self.version, dict(self.members))

    async def changes(self, interval: float) -> AsyncIterator[None]:
        yield None
        while True:
            await self._changed.wait()
            self._changed.clear()
            yield None

    async def status(self, address: str) -> Reply:
        for name, m in self.members.items():
            if m.address == address:
                return self.replies.get(name, Reply(error="connection refused", latency_ms=0.4))
        return Reply(error="connection refused", latency_ms=0.4)

    async def remove(self, name: str) -> int:
        if name not in self.members:
            raise NotAMember(f"{name!r} is not a member of cluster {self.cluster!r}")
        del self.members[name]
        self.version += 1
        self._changed.set()
        return self.version

    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        self.admin_calls.append((address, path, payload))
        return AdminResult(ok=True, message="ok", status_code=200)

    async def close(self) -> None:
        return None


class FakeFleet:
    """A Fleet that records calls and never starts a process."""

    def __init__(self, names: list[str]) -> None:
        self._pids = {n: 50000 + i for i, n in enumerate(names, 1)}
        self._running = set(names)
        self._exits: list[Exit] = []
        self.calls: list[tuple[str, str]] = []

    def owns(self, name: str) -> bool:
        return name in self._pids

    def pid(self, name: str) -> int | None:
        return self._pids.get(name)

    def running(self, name: str) -> bool:
        return name in self._running

    def add(self) -> Started:
        name = f"n{len(self._pids) + 1}"
        self._pids[name] = 50000 + len(self._pids) + 1
        self._running.add(name)
        self.calls.append(("add", name))
        return Started(name=name, pid=self._pids[name], port=7100 + len(self._pids))

    def start(self, name: str) -> Started:
        if name in self._running:
            raise DdgError(f"{name} is already running (pid {self._pids[name]})")
        self._running.add(name)
        self.calls.append(("start", name))
        return Started(name=name, pid=self._pids[name], port=7100)

    def kill(self, name: str) -> int | None:
        self.calls.append(("kill", name))
        if name not in self._running:
            return None
        self._running.discard(name)
        return self._pids[name]

    def terminate(self, name: str) -> int | None:
        self.calls.append(("terminate", name))
        if name not in self._running:
            return None
        self._running.discard(name)
        return self._pids[name]

    def stop(self, name: str, timeout: float) -> int | None:
        self.calls.append(("stop", name))
        self._running.discard(name)
        return 0

    def forget(self, name: str) -> None:
        self._pids.pop(name, None)
        self._running.discard(name)

    def exits(self) -> list[Exit]:
        out, self._exits = self._exits, []
        return out


class LoggingFleet(FakeFleet):
    """A FakeFleet whose nodes' logs are LOGS/NAME.log (the detail screen shows them)."""

    def __init__(self, names: list[str], logs: Path) -> None:
        super().__init__(names)
        self.logs = logs

    def log_path(self, name: str) -> Path | None:
        return self.logs / f"{name}.log" if self.owns(name) else None


def healthy_cluster(n: int = 3, *, goose: str = "n1", term: int = 3) -> FakeSource:
    """N nodes, one goose, every duck following it: the screen a healthy demo shows."""
    names = [f"n{i}" for i in range(1, n + 1)]
    members = {nm: Member(nm, f"http://127.0.0.1:{7100 + i}", 1_767_225_000.0 + i)
               for i, nm in enumerate(names, 1)}
    replies = {
        nm: Reply(status=_status(nm, GOOSE if nm == goose else "duck", term, goose, names),
                  latency_ms=1.2 + i * 0.3)
        for i, nm in enumerate(names, 1)
    }
    return FakeSource(members=members, replies=replies)


def troubled_cluster() -> FakeSource:
    """Five nodes: n1 down, n2 and n3 both answer goose, n4 isolated, n5 a candidate; a timing
    change to fast waits for n1, and n4 has not seen it."""
    src = healthy_cluster(5, goose="n2", term=6)
    names = sorted(src.members)
    src.replies["n1"] = Reply(error="connection refused", latency_ms=0.3)
    st2 = src.replies["n2"].status
    assert st2 is not None
    src.replies["n2"] = Reply(status=replace(st2, timing=CHANGING_TIMING), latency_ms=1.8)
    src.replies["n3"] = Reply(status=_status("n3", GOOSE, 5, "n3", names,
                                             timing=CHANGING_TIMING), latency_ms=2.1)
    st4 = src.replies["n4"].status
    assert st4 is not None
    src.replies["n4"] = Reply(
        status=replace(st4, isolated_from=("n1", "n2", "n3", "n5"), heartbeat_age_ms=812.0,
                       timing=replace(DEFAULT_TIMING, epoch=3)),
        latency_ms=1.9)
    src.replies["n5"] = Reply(status=_status("n5", "candidate", 7, None, names,
                                             timing=CHANGING_TIMING), latency_ms=3.3)
    return src
