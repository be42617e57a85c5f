"""A Supervisor with eyes: the tests, the benchmark and the fault harness observe the nodes
they start through these helpers (GET / and /status over loopback, in parallel)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from ddg.errors import ConfigError
from ddg.supervisor import Supervisor, SupervisorConfig

from .wait import wait_until

T = TypeVar("T")


class LocalCluster(Supervisor):
    """LocalCluster(cluster="x", redis_url=..., ...) takes SupervisorConfig's fields, or one
    SupervisorConfig. Built from fields, its processes die with the test process
    (die_with_parent), so that a test run killed hard leaves no node or Redis behind."""

    def __init__(self, config: SupervisorConfig | None = None, **settings: Any) -> None:
        if config is not None and settings:
            raise ConfigError("pass a SupervisorConfig or its fields, not both")
        settings.setdefault("die_with_parent", True)
        super().__init__(config if config is not None else SupervisorConfig(**settings))
        self._http = httpx.Client(timeout=httpx.Timeout(0.5), trust_env=False)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ddg-poll")

    def start(self, n: int) -> list[str]:
        """Add N nodes; returns their names."""
        return [self.add().name for _ in range(n)]

    def close(self, timeout: float | None = None) -> list[str]:
        try:
            return super().close(timeout)
        finally:
            self._http.close()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> LocalCluster:
        self.start_redis()
        return self

    # ---- observation -------------------------------------------------------------------------

    def _get(self, name: str, path: str) -> httpx.Response | None:
        try:
            return self._http.get(self.address(name) + path)
        except httpx.HTTPError:
            return None

    def role(self, name: str) -> str | None:
        resp = self._get(name, "/")
        return resp.text if resp is not None and resp.status_code == 200 else None

    def status(self, name: str) -> dict[str, Any] | None:
        resp = self._get(name, "/status")
        if resp is None or resp.status_code != 200:
            return None
        body: dict[str, Any] = resp.json()
        return body

    def roles(self, names: Iterable[str] | None = None) -> dict[str, str | None]:
        names = list(self.names if names is None else names)
        return dict(zip(names, self._pool.map(self.role, names), strict=True))

    def statuses(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any] | None]:
        names = list(self.names if names is None else names)
        return dict(zip(names, self._pool.map(self.status, names), strict=True))

    def geese(self, names: Iterable[str] | None = None) -> list[str]:
        return sorted(n for n, r in self.roles(names).items() if r == "goose")

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

    def describe(self) -> str:
        out = []
        for name, st in self.statuses().items():
            brief = "unreachable" if st is None else (
                f"role={st['role']} term={st['term']} goose={st['goose']} "
                f"members={st['members']}")
            out.append(f"--- {name} (pid {self.pid(name)}, running {self.running(name)}): "
                       f"{brief}\n{self.log_tail(name) or '(no log)'}")
        return "\n".join(out)
