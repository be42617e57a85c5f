"""The real data source: membership from the Redis registry, status over HTTP (ddg.client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ddg.client import AdminResult, NodeClient, Reply
from ddg.net.tls import TlsConfig
from ddg.registry.records import Membership
from ddg.registry.redisconn import RedisOptions
from ddg.registry.registry import Registry

REMOVE_WAIT = 5.0  # seconds a removal waits for the registry to take it


class LiveSource:
    """ClusterSource backed by a Registry and the one node client."""

    def __init__(self, *, redis_url: str | RedisOptions, cluster: str, timeout: float,
                 secret: str | None = None, registry_timeout: float = 0.5,
                 tls: TlsConfig | None = None) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.secret = secret
        self.tls = tls
        self.registry = Registry(redis_url, cluster, timeout=registry_timeout)
        self.location = self.registry.url  # shown in the header: never the password
        self.nodes = NodeClient(timeout=timeout, secret=secret.encode() if secret else None,
                                tls=tls)

    async def read(self) -> Membership:
        return await self.registry.read()

    def changes(self, interval: float) -> AsyncIterator[None]:
        return self.registry.changes(interval)

    async def remove(self, name: str) -> int:
        # A removal waits for a majority to confirm the current version (milliseconds on a
        # healthy cluster); beyond REMOVE_WAIT the console says who has not (ChangeWaiting).
        return await self.registry.remove(name, wait=REMOVE_WAIT)

    async def status(self, address: str) -> Reply:
        return await self.nodes.poll(address)

    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        return await self.nodes.admin(name, address, path, payload)

    async def close(self) -> None:
        await self.nodes.aclose()
        await self.registry.close()
