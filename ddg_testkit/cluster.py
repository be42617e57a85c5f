"""A Supervisor with eyes: the tests, the benchmark and the fault harness observe the nodes
they start through these helpers: GET / and /status over loopback, all nodes at once, with
the one node client (ddg.client) on an event loop of its own, and the one status contract."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any, TypeVar

from ddg.client import AdminResult, NodeClient, NodeStatus, Role
from ddg.errors import ConfigError
from ddg.local.supervisor import Supervisor, SupervisorConfig
from ddg.registry.keys import ClusterKeys
from ddg.registry.redisconn import RedisOptions, sync_client

from .wait import wait_until

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread, so that synchronous tests can use the async client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ddg-observe",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def open(self) -> bool:
        return not self.loop.is_closed()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class LocalCluster(Supervisor):
    """LocalCluster(cluster="x", redis_url=..., ...) takes SupervisorConfig's fields, or one
    SupervisorConfig. Built from fields, its processes die with the test process
    (die_with_parent), so that a test run killed hard leaves no node or Redis behind."""

    def __init__(self, config: SupervisorConfig | None = None, **settings: Any) -> None:
        if config is not None and settings:
            raise ConfigError("pass a SupervisorConfig or its fields, not both")
        settings.setdefault("die_with_parent", True)
        super().__init__(config if config is not None else SupervisorConfig(**settings))
        self._loop = _LoopThread()
        self._client = NodeClient(timeout=0.5, max_connections=64, tls=self.config.tls)

    def start(self, n: int, *, joined: bool = True, timeout: float | None = None) -> list[str]:
        """Add N nodes; returns their names. With JOINED (the default), once each of them is
        a member and sees the others: the registry adds one member at a time, each once a
        majority confirmed the version before (docs/design.md), so nodes started at once
        join one after another, and a test that stops one too early would leave the rest
        waiting."""
        names = [self.add().name for _ in range(n)]
        if joined and names:
            self.wait_joined(names, timeout=10.0 + 2.0 * n if timeout is None else timeout)
        return names

    def wait_joined(self, names: Iterable[str], *, timeout: float = 10.0) -> None:
        """Until each of NAMES is a member (not `joining`) and lists all of NAMES."""
        want = set(names)

        def joined() -> bool:
            sts = self.statuses(want)
            return all(st is not None and st.joining is None and want <= set(st.members)
                       for st in sts.values())

        self.wait_for(joined, timeout=timeout, what=f"{','.join(sorted(want))} to join")

    def wait_confirmed(self, names: Iterable[str], *, timeout: float = 10.0) -> None:
        """Until each of NAMES confirmed the registry's current membership version: only then
        may a majority of them die without holding back the next join (a node confirms once
        the leases acknowledged under the version before have ended, after it joined)."""
        want = set(names)
        keys = ClusterKeys.of(self.cluster)
        url = self.redis_url or self.config.redis_url
        assert url is not None

        def confirmed() -> bool:
            r = sync_client(RedisOptions.from_env(url), timeout=2.0)
            try:
                version = r.get(keys.version)
                seen = r.hgetall(keys.version_seen)
            finally:
                r.close()
            prefix = f"{int(version or 0)}:"
            mine = {k.decode() if isinstance(k, bytes) else k:
                    v.decode() if isinstance(v, bytes) else v for k, v in seen.items()}
            return all(str(mine.get(n, "")).startswith(prefix) for n in want)

        self.wait_for(confirmed, timeout=timeout,
                      what=f"{','.join(sorted(want))} to confirm the membership")

    def close(self, timeout: float | None = None) -> list[str]:
        try:
            return super().close(timeout)
        finally:
            if self._loop.open:  # close() may be called twice, as the Supervisor's may
                self._loop.run(self._client.aclose())
                self._loop.close()

    def __enter__(self) -> LocalCluster:
        self.start_redis()
        return self

    # ---- observation -------------------------------------------------------------------------

    async def _role(self, name: str) -> Role | None:
        return await self._client.role(self.address(name))

    async def _status(self, name: str) -> NodeStatus | None:
        return (await self._client.poll(self.address(name))).status

    def role(self, name: str) -> Role | None:
        return self._loop.run(self._role(name))

    def status(self, name: str) -> NodeStatus | None:
        return self._loop.run(self._status(name))

    def roles(self, names: Iterable[str] | None = None) -> dict[str, Role | None]:
        names = list(self.names if names is None else names)

        async def all_roles() -> list[Role | None]:
            return await asyncio.gather(*(self._role(n) for n in names))
        return dict(zip(names, self._loop.run(all_roles()), strict=True))

    def statuses(self, names: Iterable[str] | None = None) -> dict[str, NodeStatus | None]:
        names = list(self.names if names is None else names)

        async def all_statuses() -> list[NodeStatus | None]:
            return await asyncio.gather(*(self._status(n) for n in names))
        return dict(zip(names, self._loop.run(all_statuses()), strict=True))

    def admin(self, name: str, path: str, payload: dict[str, Any]) -> AdminResult:
        """POST an admin request (e.g. /admin/partition) to NAME; needs allow_fault_injection."""
        return self._loop.run(self._client.admin(name, self.address(name), path, payload))

    def geese(self, names: Iterable[str] | None = None) -> list[str]:
        return sorted(n for n, r in self.roles(names).items() if r is Role.GOOSE)
    def wait_for(self, cond: Callable[[], T | None], *, timeout: float, what: str,
                 interval: float = 0.02) -> T:
        """wait_until, and the cluster's state in the error when it times out."""
        return wait_until(cond, timeout=timeout, what=what, interval=interval,
                          detail=self.describe)

    def wait_goose(self, among: Iterable[str] | None = None, *, timeout: float = 10.0,
                   exclude: Iterable[str] = ()) -> str:
        skip = set(exclude)
        names = [n for n in (among or self.names) if n not in skip]

        def one() -> str | None:
            geese = self.geese(names)
            return geese[0] if len(geese) == 1 else None

        return self.wait_for(one, timeout=timeout, what=f"one goose among {names}")

    def wait_followed(self, among: Iterable[str] | None = None, *, timeout: float = 10.0,
                      also: Callable[[str, dict[str, NodeStatus]], bool] | None = None,
                      what: str = "") -> str:
        """The one goose among AMONG once every node there answers and follows it (and
        ALSO(goose, statuses) holds), all looked at together. Not wait_goose() and then a wait
        for the others to follow that one: on a busy machine it may lose its quorum first, and
        another take over."""
        names = list(among or self.names)

        def followed() -> str | None:
            sts = self.statuses(names)
            geese = [s.name for s in sts.values() if s is not None and s.role is Role.GOOSE]
            if len(geese) != 1 or not all(s is not None and s.goose == geese[0]
                                          for s in sts.values()):
                return None
            known = {n: s for n, s in sts.items() if s is not None}
            return geese[0] if also is None or also(geese[0], known) else None

        return self.wait_for(followed, timeout=timeout,
                             what=what or f"one goose among {names}, followed by all")

    def wait_held(self, among: list[str], *, timeout: float = 15.0) -> str:
        """wait_followed(AMONG), and every duck holds its crash-hint stream to the goose."""
        return self.wait_followed(
            among, timeout=timeout, also=lambda goose, sts: sts[goose].hint_streams == len(sts) - 1,
            what=f"one goose among {among}, followed by all and held by {len(among) - 1} "
                 "crash-hint streams")

    def describe(self, lines: int = 15) -> str:
        out = []
        for name, st in self.statuses().items():
            brief = "unreachable" if st is None else (
                f"role={st.role} term={st.term} goose={st.goose} "
                f"members={','.join(st.members)}"
                + (f" joining: {st.joining}" if st.joining else ""))
            out.append(f"--- {name} (pid {self.pid(name)}, running {self.running(name)}): "
                       f"{brief}\n{self.log_tail(name, lines) or '(no log)'}")
        return "\n".join(out)


def node_said(log: str) -> list[tuple[datetime, str]]:
    """What a node's LOG says as `ddg.node`, line by line: (the line's time stamp, local and
    naive as the log writes it; the message after `ddg.node: `)."""
    return [(datetime.fromisoformat(line.split(maxsplit=1)[0]), line.split("ddg.node: ", 1)[1])
            for line in log.splitlines() if "ddg.node: " in line]
