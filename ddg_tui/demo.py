"""A demo cluster owned by the console: N ddg-node processes, one temp dir, and an embedded
Redis unless the operator named one.

`Demo.close()` stops everything it started, takes its nodes out of a Redis it did not start,
and removes the temp dir; it is safe to call more than once and from any exit path (normal
quit, exception, SIGTERM/SIGHUP via the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ddg.embedded import EmbeddedRedis, free_port
from ddg.errors import ConfigError, DdgError, NotAMember, RegistryError
from ddg.launcher import NodeProcess, NodeSpec
from ddg.registry import Registry

from .source import Exit, Started


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoConfig:
    nodes: int
    cluster: str = "demo"
    secret: str | None = None
    host: str = "127.0.0.1"
    heartbeat_ms: int | None = None
    election_timeout_ms: str | None = None
    redis_url: str | None = None  # None: start an embedded Redis

    def __post_init__(self) -> None:
        if not 0 <= self.nodes <= 64:
            raise ConfigError(f"demo size must be 0-64 nodes, got {self.nodes}")


def log_tail(path: Path | None, lines: int = 1, limit: int = 200) -> str:
    """The last non-empty line(s) of a node log, for error messages."""
    if path is None or not path.exists():
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(tail)[-limit:]


class Demo:
    """Owns the embedded Redis and the node processes; implements the console's Fleet."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.redis = EmbeddedRedis(host=config.host) if config.redis_url is None else None
        self.dir: Path | None = None
        self.redis_url: str | None = None
        self._procs: dict[str, NodeProcess] = {}
        self._expected: set[str] = set()  # names whose next exit was asked for
        self._reported: set[int] = set()  # pids whose exit was already reported
        self._next = 1
        self._lock = threading.Lock()
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------

    def launch(self) -> str:
        """Start Redis and the configured nodes; returns the Redis URL. Cleans up on failure."""
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="ddg-demo-"))
            self.redis_url = self.redis.start() if self.redis else self.config.redis_url
            for _ in range(self.config.nodes):
                self.add()
        except BaseException:
            self.close()
            raise
        return self.redis_url

    def close(self, timeout: float = 5.0) -> list[str]:
        """Stop every node (SIGTERM, then SIGKILL), stop Redis, delete the temp dir."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            procs = list(self._procs.values())
        done: list[str] = []
        for p in procs:
            if p.running:
                p.signal(signal.SIGCONT)
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            if p.wait(max(0.0, deadline - time.monotonic())) is None:
                p.kill()
                p.wait(2.0)
            p.close_log()
            done.append(p.spec.name)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        elif self.redis_url is not None and procs:
            self._deregister([p.spec.name for p in procs])
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return done

    def _deregister(self, names: list[str]) -> None:
        """Leave a Redis we did not start as we found it: our nodes out of its registry.

        Runs its own event loop in a thread, so it works whether or not a loop is running here.
        """
        url = self.redis_url
        assert url is not None

        async def remove_all() -> None:
            registry = Registry(url, self.config.cluster, timeout=2.0)
            try:
                for name in names:
                    with contextlib.suppress(NotAMember, RegistryError):
                        await registry.remove(name)
            finally:
                await registry.close()

        worker = threading.Thread(target=asyncio.run, args=(remove_all(),), daemon=True)
        worker.start()
        worker.join(10.0)

    @property
    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items() if p.pid is not None and p.running}

    # ---- Fleet ---------------------------------------------------------------------------

    def owns(self, name: str) -> bool:
        return name in self._procs

    def pid(self, name: str) -> int | None:
        p = self._procs.get(name)
        return p.pid if p is not None else None

    def running(self, name: str) -> bool:
        p = self._procs.get(name)
        return p is not None and p.running

    def _new_name(self) -> str:
        while f"n{self._next}" in self._procs:
            self._next += 1
        name = f"n{self._next}"
        self._next += 1
        return name

    def add(self) -> Started:
        if self._closed or self.dir is None or self.redis_url is None:
            raise DdgError("the demo cluster is not running")
        name = self._new_name()
        spec = NodeSpec(
            name=name, port=free_port(self.config.host), redis_url=self.redis_url,
            cluster=self.config.cluster, data_dir=self.dir / name, host=self.config.host,
            secret=self.config.secret, allow_fault_injection=True,
            heartbeat_ms=self.config.heartbeat_ms,
            election_timeout_ms=self.config.election_timeout_ms,
            bootstrap=not self._procs,  # the demo's first node creates the cluster
        )
        proc = NodeProcess(spec, log_path=self.dir / f"{name}.log")
        try:
            proc.start()
        except OSError as exc:
            raise DdgError(f"cannot start {name}: {exc}") from exc
        self._procs[name] = proc
        return Started(name=name, pid=proc.pid, port=spec.port, log_path=str(proc.log_path))

    def start(self, name: str) -> Started:
        proc = self._get(name)
        if proc.running:
            raise DdgError(f"{name} is already running (pid {proc.pid})")
        proc.close_log()
        try:
            proc.start()
        except OSError as exc:
            raise DdgError(f"cannot start {name}: {exc}") from exc
        self._expected.discard(name)
        return Started(name=name, pid=proc.pid, port=proc.spec.port,
                       log_path=str(proc.log_path))

    def _get(self, name: str) -> NodeProcess:
        proc = self._procs.get(name)
        if proc is None:
            raise DdgError(f"{name} was not started by this console")
        return proc

    def kill(self, name: str) -> int | None:
        proc = self._get(name)
        pid = proc.pid
        if not proc.running:
            return None
        self._expected.add(name)
        return pid if proc.kill() else None

    def terminate(self, name: str) -> int | None:
        proc = self._get(name)
        pid = proc.pid
        if not proc.running:
            return None
        self._expected.add(name)
        proc.signal(signal.SIGCONT)
        return pid if proc.terminate() else None

    def stop(self, name: str, timeout: float) -> int | None:
        proc = self._get(name)
        self._expected.add(name)
        proc.stop(timeout)
        return proc.returncode

    def forget(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None and proc.pid is not None:
            self._reported.add(proc.pid)
        self._expected.discard(name)

    def exits(self) -> list[Exit]:
        out: list[Exit] = []
        for name, proc in list(self._procs.items()):
            if proc.proc is None or proc.pid in self._reported:
                continue
            code = proc.proc.poll()
            if code is None:
                continue
            assert proc.pid is not None
            self._reported.add(proc.pid)
            expected = name in self._expected
            self._expected.discard(name)
            proc.close_log()
            detail = "" if expected or code == 0 else log_tail(proc.log_path)
            out.append(Exit(name=name, code=code, expected=expected, detail=detail))
        return out

    def log_path(self, name: str) -> Path | None:
        p = self._procs.get(name)
        return p.log_path if p is not None else None
