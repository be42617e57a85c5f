"""How many connections the node's listener may hold and for how long: the fd limit (raised to
the hard limit at start), the connection cap below it, the timeouts, and the counters /status
shows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final

from ddg.errors import ConfigError

DEFAULT_FD_RESERVE: Final = 192


# Used as the fd budget when RLIMIT_NOFILE is unlimited or unknown, so the cap stays finite.
UNLIMITED_FD_BUDGET: Final = 65536


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return (soft, hard) afterwards.

    The usual soft limit of 1024 is what a few hundred idle clients exhaust; the hard limit is
    ours to take. Never fails: where the platform refuses, the limit stays as it was. -1 means
    unlimited (RLIM_INFINITY) or, without the resource module, unknown.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return (-1, -1)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - defensive
        return (-1, -1)
    inf = resource.RLIM_INFINITY
    # macOS reports an unlimited hard limit but refuses a soft limit above OPEN_MAX.
    for target in [hard] if hard != inf else [inf, 1 << 20, 65536, 10240]:
        if soft == inf or (target != inf and target <= soft):
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        break
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - defensive
        pass
    return (-1 if soft == inf else soft, -1 if hard == inf else hard)


def fd_soft_limit() -> int | None:
    """The current soft RLIMIT_NOFILE, or None if unlimited or unknown."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """How long and how many clients may hold the node's connections.

    header_timeout: a connection must deliver a complete request head this soon after
        connecting, and a keep-alive connection this soon after the first byte of its next
        request. Slow-header clients are closed.
    keepalive_timeout: how long a keep-alive connection may sit idle after a response before
        its next request head is complete (aiohttp's own timer; at least header_timeout, as it
        also runs from connect). Longer than the 15 s pool
        expiry of aiohttp's client (httpx: 5 s), so clients drop idle connections first and
        never reuse one the node is closing.
    write_timeout: a connection whose unsent response data has not shrunk for this long (the
        client stopped reading) is aborted; aiohttp would wait for it forever.
    lingering_time: how long aiohttp keeps reading an unread body after the response (it
        otherwise waits 10 s for a client that stalled mid-body).
    shutdown_timeout: how long close() waits for requests in flight.
    max_connections: the cap on concurrent connections; None means the soft fd limit minus
        fd_reserve. An explicit cap above that budget is lowered to it.
    fd_reserve: fds kept free for the node's own use: outgoing peer connections (up to two
        heartbeats in flight per peer, plus votes), Redis, the data dir, logs, the event
        loop's selector and the listening sockets.
    backlog: the listen() backlog, and the most connections accepted in one loop pass.
    accept_log_interval: accept() failures are logged at most once per this many seconds.
    """

    header_timeout: float = 5.0
    keepalive_timeout: float = 20.0
    write_timeout: float = 10.0
    lingering_time: float = 1.0
    shutdown_timeout: float = 10.0
    max_connections: int | None = None
    fd_reserve: int = DEFAULT_FD_RESERVE
    backlog: int = 128
    accept_log_interval: float = 10.0

    def __post_init__(self) -> None:
        _positive("header timeout", self.header_timeout)
        _positive("keep-alive timeout", self.keepalive_timeout)
        _positive("write timeout", self.write_timeout)
        _positive("lingering time", self.lingering_time, zero_ok=True)
        _positive("shutdown timeout", self.shutdown_timeout)
        _positive("accept log interval", self.accept_log_interval)
        if self.keepalive_timeout < self.header_timeout:
            # aiohttp's keep-alive timer also runs from connect, so it would cut the header
            # timeout short, uncounted.
            raise ConfigError(f"keep-alive timeout ({self.keepalive_timeout} s) must be at least "
                              f"the header timeout ({self.header_timeout} s)")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max connections must be >= 1, got {self.max_connections}")
        if self.fd_reserve < 0:
            raise ConfigError(f"fd reserve must be >= 0, got {self.fd_reserve}")
        if not 1 <= self.backlog <= 65535:
            raise ConfigError(f"backlog must be 1-65535, got {self.backlog}")

    def connection_cap(self, soft_fd_limit: int | None) -> int:
        """The cap for a process whose soft fd limit is SOFT_FD_LIMIT (None: unlimited)."""
        budget = (UNLIMITED_FD_BUDGET if soft_fd_limit is None else soft_fd_limit)
        budget -= self.fd_reserve
        if budget < 1:
            raise ConfigError(
                f"the fd limit ({soft_fd_limit}) leaves no room for connections after a reserve "
                f"of {self.fd_reserve} fds; raise `ulimit -n` or lower the reserve"
            )
        if self.max_connections is None:
            return budget
        return min(self.max_connections, budget)


@dataclass(slots=True)
class ServerStats:
    """Counters for /status. All are totals since start except open and cap."""

    cap: int = 0
    open: int = 0
    peak_open: int = 0
    accepted: int = 0
    refused_over_cap: int = 0
    # closed at the cap to make room for a new connection: idle, or not set up yet (in its
    # TLS handshake, say)
    evicted_idle: int = 0
    refused_out_of_fds: int = 0
    header_timeouts: int = 0
    write_timeouts: int = 0
    body_timeouts: int = 0
    bodies_too_large: int = 0
    client_disconnects: int = 0  # mid-body
    accept_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
