"""The console's demo cluster: N ddg-node processes on an embedded Redis (or one the operator
named), owned by a `ddg.local.supervisor.Supervisor`. This module only adapts the supervisor to the
console's Fleet protocol; processes, Redis and the temp dir are the supervisor's.

`Demo.close()` stops everything it started, takes its nodes out of a Redis it did not start
(deleting the cluster's keys there if the demo created the cluster), and removes the temp dir;
it is safe to call more than once and from any exit path (normal quit, exception, SIGTERM/SIGHUP
via the CLI). When the console dies without close() (SIGKILL, a crash), the kernel kills its
nodes and Redis with it (the supervisor's die_with_parent), and the next demo removes the temp
dir it left (`stale_dirs_removed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddg.errors import ConfigError
from ddg.local.supervisor import Supervisor, SupervisorConfig
from ddg.local.tools import Tool

from .source import Exit, Started

# The demo's temp dirs: <tmp>/ddg-demo-<console pid>-*.
TEMP_PREFIX = "ddg-demo-"


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


class Demo:
    """The console's Fleet over a Supervisor."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.supervisor = Supervisor(SupervisorConfig(
            cluster=config.cluster, host=config.host, redis_url=config.redis_url,
            secret=config.secret, heartbeat_ms=config.heartbeat_ms,
            election_timeout_ms=config.election_timeout_ms, allow_fault_injection=True,
            temp_prefix=TEMP_PREFIX, die_with_parent=True,
        ))

    # ---- lifecycle -----------------------------------------------------------------------

    def launch(self) -> str:
        """Start Redis and the configured nodes; returns the Redis URL. Cleans up on failure."""
        try:
            url = self.supervisor.start_redis()
            for _ in range(self.config.nodes):
                self.supervisor.add()
        except BaseException:
            self.close()
            raise
        return url

    def close(self, timeout: float | None = None) -> list[str]:
        """Stop every node (SIGTERM, then SIGKILL), stop Redis, delete the temp dir. Returns
        the nodes that were still running, which it stopped (not those already killed,
        stopped or exited: the quit message counts what it really stopped)."""
        running = [name for name in self.supervisor.names if self.supervisor.running(name)]
        closed = set(self.supervisor.close(timeout))
        return [name for name in running if name in closed]

    @property
    def stale_dirs_removed(self) -> list[Path]:
        """Temp dirs of demos whose console died, removed when this one was made."""
        return self.supervisor.stale_dirs_removed

    @property
    def redis_url(self) -> str | None:
        return self.supervisor.redis_url

    @property
    def redis_server(self) -> Tool | None:
        """The redis-server binary of the embedded Redis (None: the operator's Redis)."""
        return self.supervisor.redis_server

    @property
    def dir(self) -> Path:
        return self.supervisor.base_dir

    @property
    def pids(self) -> dict[str, int]:
        return self.supervisor.pids

    # ---- Fleet ---------------------------------------------------------------------------

    def owns(self, name: str) -> bool:
        return self.supervisor.owns(name)

    def pid(self, name: str) -> int | None:
        return self.supervisor.pid(name)

    def running(self, name: str) -> bool:
        return self.supervisor.running(name)

    def _started(self, name: str) -> Started:
        return Started(name=name, pid=self.supervisor.pid(name),
                       port=self.supervisor.spec(name).port,
                       log_path=str(self.supervisor.log_path(name)))

    def add(self) -> Started:
        return self._started(self.supervisor.add().name)

    def start(self, name: str) -> Started:
        return self._started(self.supervisor.restart(name).name)

    def kill(self, name: str) -> int | None:
        return self.supervisor.kill(name)

    def terminate(self, name: str) -> int | None:
        return self.supervisor.terminate(name)

    def stop(self, name: str, timeout: float) -> int | None:
        return self.supervisor.stop(name, timeout)

    def forget(self, name: str) -> None:
        self.supervisor.forget(name)

    def exits(self) -> list[Exit]:
        return [Exit(name=ex.name, code=ex.code, expected=ex.expected,
                     detail="" if ex.expected or ex.code == 0
                     else self.supervisor.log_tail(ex.name, 1)[-200:])
                for ex in self.supervisor.reap()]

    def log_path(self, name: str) -> Path | None:
        return self.supervisor.log_path(name) if self.supervisor.owns(name) else None
