"""Validated, frozen settings of the console, built from the command line and the environment."""

from __future__ import annotations

from dataclasses import dataclass

from ddg.election.names import check_name
from ddg.errors import ConfigError
from ddg.net.auth import parse_secrets
from ddg.net.tls import TlsConfig
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.redisconn import check_redis_url

MAX_DEMO_NODES = 15
# How a --web server gives each tab's console its options (JSON, a list of arguments): in the
# environment, which only the user can read, not on the command line, which `ps` shows anyone.
SERVED_ARGV_ENV = "DDG_CONSOLE_ARGV"


@dataclass(frozen=True, kw_only=True, slots=True)
class PollSettings:
    """How the console talks to nodes and Redis. Durations in seconds."""

    interval: float = 0.25
    timeout: float = 0.4
    # Faster polling while the cluster has no goose, so failover times are measured tightly.
    failover_interval: float = 0.05
    # Registry re-read period when no change notification arrives.
    registry_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 0.02 <= self.interval <= 10.0:
            raise ConfigError(f"poll interval must be 20-10000 ms, got {self.interval * 1000:g}")
        if not 0.02 <= self.timeout <= 10.0:
            raise ConfigError(f"request timeout must be 20-10000 ms, got {self.timeout * 1000:g}")
        if not 0.01 <= self.failover_interval <= self.interval:
            raise ConfigError("failover poll interval must be 10 ms up to the poll interval")
        if not 0.05 <= self.registry_interval <= 60.0:
            raise ConfigError("registry interval must be 0.05-60 s")

    @property
    def stale_after(self) -> float:
        """An answer older than this is shown as stale (a poll should have replaced it)."""
        return 2 * self.interval + self.timeout + 0.5


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsoleConfig:
    """What `ddg-console` was asked to do: run a demo cluster, or attach to one."""

    demo: int | None = None
    redis_url: str | None = None
    cluster: str = DEFAULT_CLUSTER
    secret: str | None = None
    poll: PollSettings = PollSettings()
    tls: TlsConfig | None = None  # for https:// nodes: the CA, and a client certificate

    def __post_init__(self) -> None:
        if self.demo is None and self.redis_url is None:
            raise ConfigError(
                "nothing to show: pass --demo N to start a demo cluster, or --redis-url URL "
                "to attach to a running one"
            )
        if self.demo is not None and not 1 <= self.demo <= MAX_DEMO_NODES:
            raise ConfigError(f"--demo takes 1-{MAX_DEMO_NODES} nodes, got {self.demo}")
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        check_name("cluster name", self.cluster)
        if self.secret is not None:  # a rotation's list (new,old): sign with the first
            first = parse_secrets(self.secret, separator=",")[0]
            object.__setattr__(self, "secret", first.decode())

    @property
    def owned(self) -> bool:
        return self.demo is not None
