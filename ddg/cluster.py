"""A local cluster of real ddg-node processes on an (optionally embedded) Redis.

Shared by the console's demo mode, the integration tests, the fault harness and the benchmark,
so that all of them start and observe nodes the same way.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .embedded import EmbeddedRedis, free_port
from .errors import DdgError
from .launcher import NodeProcess, NodeSpec

T = TypeVar("T")


class LocalCluster:
    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        cluster: str = "ddg",
        redis_url: str | None = None,
        secret: str | None = None,
        allow_fault_injection: bool = False,
        heartbeat_ms: int | None = None,
        election_timeout_ms: str | None = None,
        log_level: str = "INFO",
        name_prefix: str = "n",
    ) -> None:
        self._tmp = None if base_dir else tempfile.TemporaryDirectory(prefix="ddg-cluster-")
        self.base_dir = base_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.cluster = cluster
        self.redis: EmbeddedRedis | None = None
        self.redis_url = redis_url
        self.secret = secret
        self.allow_fault_injection = allow_fault_injection
        self.heartbeat_ms = heartbeat_ms
        self.election_timeout_ms = election_timeout_ms
        self.log_level = log_level
        self.name_prefix = name_prefix
        self.nodes: dict[str, NodeProcess] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(0.5), trust_env=False)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ddg-poll")
        self._counter = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def start_redis(self) -> str:
        if self.redis_url is None:
            self.redis = EmbeddedRedis()
            self.redis_url = self.redis.start()
        return self.redis_url

    def spec(self, name: str, port: int, *, bootstrap: bool | None = None) -> NodeSpec:
        assert self.redis_url is not None, "start_redis() first"
        return NodeSpec(
            # by default the first node this cluster starts creates it
            bootstrap=not self.nodes if bootstrap is None else bootstrap,
            name=name, port=port, redis_url=self.redis_url, cluster=self.cluster,
            data_dir=self.base_dir / "data" / name, secret=self.secret,
            allow_fault_injection=self.allow_fault_injection, heartbeat_ms=self.heartbeat_ms,
            election_timeout_ms=self.election_timeout_ms, log_level=self.log_level,
        )

    def next_name(self) -> str:
        while True:
            self._counter += 1
            name = f"{self.name_prefix}{self._counter}"
            if name not in self.nodes:
                return name

    def add(self, name: str | None = None, *, port: int | None = None,
            preexec_fn: Callable[[], None] | None = None,
            bootstrap: bool | None = None) -> NodeProcess:
        """Start a new node process (it registers itself)."""
        self.start_redis()
        name = name or self.next_name()
        if name in self.nodes and self.nodes[name].running:
            raise DdgError(f"node {name} is already running")
        node = NodeProcess(self.spec(name, port or free_port(), bootstrap=bootstrap),
                           log_path=self.base_dir / "logs" / f"{name}.log", preexec_fn=preexec_fn)
        node.start()
        self.nodes[name] = node
        return node

    def start(self, n: int) -> list[str]:
        return [self.add().spec.name for _ in range(n)]

    def restart(self, name: str) -> NodeProcess:
        node = self.nodes[name]
        if node.running:
            raise DdgError(f"node {name} is still running")
        node.close_log()
        node.start()
        return node

    def remove(self, name: str) -> subprocess.CompletedProcess[str]:
        """`ddg-node remove NAME`, the real CLI."""
        assert self.redis_url is not None
        return subprocess.run(
            [sys.executable, "-m", "ddg", "remove", name, "--redis-url", self.redis_url,
             "--cluster", self.cluster], capture_output=True, text=True, timeout=30,
        )

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop(timeout=5)
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        self._http.close()
        self._pool.shutdown(wait=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalCluster:
        self.start_redis()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- observation -------------------------------------------------------------------------

    def _get(self, name: str, path: str) -> httpx.Response | None:
        node = self.nodes[name]
        try:
            return self._http.get(node.spec.address + path)
        except httpx.HTTPError:
            return None

    def role(self, name: str) -> str | None:
        resp = self._get(name, "/")
        return resp.text if resp is not None and resp.status_code == 200 else None

    def status(self, name: str) -> dict[str, Any] | None:
        resp = self._get(name, "/status")
        return resp.json() if resp is not None and resp.status_code == 200 else None

    def roles(self, names: Iterable[str] | None = None) -> dict[str, str | None]:
        names = list(self.nodes if names is None else names)
        return dict(zip(names, self._pool.map(self.role, names), strict=True))

    def statuses(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any] | None]:
        names = list(self.nodes if names is None else names)
        return dict(zip(names, self._pool.map(self.status, names), strict=True))

    def geese(self, names: Iterable[str] | None = None) -> list[str]:
        return sorted(n for n, r in self.roles(names).items() if r == "goose")

    def wait_for(self, cond: Callable[[], T | None], *, timeout: float, what: str,
                 interval: float = 0.02) -> T:
        """Poll COND until it returns something truthy, or fail with WHAT after TIMEOUT s."""
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n"
                                   + self.describe())
            time.sleep(interval)

    def wait_goose(self, among: Iterable[str] | None = None, *, timeout: float = 10.0,
                   exclude: Iterable[str] = ()) -> str:
        names = [n for n in (among or self.nodes) if n not in set(exclude)]

        def one() -> str | None:
            geese = self.geese(names)
            return geese[0] if len(geese) == 1 else None

        return self.wait_for(one, timeout=timeout, what=f"one goose among {names}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.base_dir / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def describe(self) -> str:
        out = []
        for name, st in self.statuses().items():
            brief = "unreachable" if st is None else (
                f"role={st['role']} term={st['term']} goose={st['goose']} "
                f"members={st['members']}")
            out.append(f"--- {name} (pid {self.nodes[name].pid}, running "
                       f"{self.nodes[name].running}): {brief}\n{self.log_tail(name)}")
        return "\n".join(out)
