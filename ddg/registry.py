"""Cluster membership in Redis: a hash of members plus a version, changed only by Lua scripts.

Schema, for cluster C (see docs/design.md):
  ddg:C:members   hash  name -> JSON {"address": ..., "joined_at": ...}
  ddg:C:version   int   bumped by every change, never reused
  ddg:C:events    pub/sub channel, one JSON message per change
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .errors import NameConflict, NotAMember, RegistryError, RegistryUnavailable

log = logging.getLogger("ddg.registry")
T = TypeVar("T")

_READ = """
local v = redis.call('GET', KEYS[2]) or '0'
return {v, redis.call('HGETALL', KEYS[1])}
"""

_ADD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and obj['address'] == ARGV[3] then
    return {0, redis.call('GET', KEYS[2]) or '0'}
  end
  return {-1, cur}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='join', name=ARGV[1], version=v}))
return {1, tostring(v)}
"""

_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='remove', name=ARGV[1], version=v}))
return {1, tostring(v)}
"""

# Redis lost its data (restarted empty) or went back in time: put back the membership a node
# last knew, so that no member silently drops out of the quorum.
_RESTORE = """
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local snap = tonumber(ARGV[1])
if cur >= snap then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], snap + 1)
redis.call('PUBLISH', KEYS[3], cjson.encode({op='restore', version=snap + 1}))
return snap + 1
"""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    address: str
    joined_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"address": self.address, "joined_at": self.joined_at})


@dataclass(frozen=True, slots=True)
class Membership:
    version: int = 0
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.members)

    def address_of(self, name: str) -> str | None:
        m = self.members.get(name)
        return m.address if m else None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "members": {n: {"address": m.address, "joined_at": m.joined_at}
                        for n, m in sorted(self.members.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Membership:
        members = {
            str(n): Member(str(n), str(v["address"]), float(v.get("joined_at", 0.0)))
            for n, v in data["members"].items()
        }
        return cls(int(data["version"]), members)


def _decode(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def parse_members(flat: list[Any]) -> dict[str, Member]:
    out: dict[str, Member] = {}
    for i in range(0, len(flat) - 1, 2):
        name, value = _decode(flat[i]), _decode(flat[i + 1])
        try:
            obj = json.loads(value)
            out[name] = Member(name, str(obj["address"]), float(obj.get("joined_at", 0.0)))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed registry entry %r: %r", name, value[:100])
    return out


class Registry:
    """Async access to one cluster's membership. Every call has a deadline."""

    def __init__(self, redis_url: str, cluster: str, *, timeout: float = 0.5) -> None:
        self.cluster = cluster
        self.timeout = timeout
        prefix = f"ddg:{cluster}:"
        self.members_key = prefix + "members"
        self.version_key = prefix + "version"
        self.channel = prefix + "events"
        self._redis = aioredis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._keys = [self.members_key, self.version_key, self.channel]

    async def _call(self, aw: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except (TimeoutError, RedisError, OSError) as exc:
            raise RegistryUnavailable(f"redis: {str(exc) or type(exc).__name__}") from exc

    async def _script(self, script: str, args: list[Any]) -> Any:
        return await self._call(self._redis.eval(script, 3, *self._keys, *args))

    async def read(self) -> Membership:
        version, flat = await self._script(_READ, [])
        return Membership(int(_decode(version)), parse_members(flat))

    async def add(self, name: str, address: str) -> int:
        """Register NAME at ADDRESS; returns the version. Idempotent for the same address."""
        member = Member(name, address, time.time())
        code, value = await self._script(_ADD, [name, member.to_json(), address])
        if int(code) == -1:
            existing = parse_members([name, value]).get(name)
            where = existing.address if existing else _decode(value)
            raise NameConflict(
                f"name {name!r} is already registered at {where}; remove it first "
                f"(ddg-node remove {name}) or choose another --name"
            )
        return int(_decode(value))

    async def remove(self, name: str) -> int:
        code, value = await self._script(_REMOVE, [name])
        if int(code) == 0:
            raise NotAMember(f"{name!r} is not a member of cluster {self.cluster!r}")
        return int(_decode(value))

    async def restore(self, snapshot: Membership) -> int:
        """Put SNAPSHOT back if Redis has an older version (it lost data); 0 if not needed."""
        args: list[Any] = [snapshot.version]
        for m in snapshot.members.values():
            args += [m.name, m.to_json()]
        return int(await self._script(_RESTORE, args))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except RegistryError:
            return False

    async def changes(self, interval: float) -> AsyncIterator[None]:
        """Yield on each change notification, and every INTERVAL seconds without one.

        Raises RegistryUnavailable when the subscription breaks; the caller backs off and
        calls again.
        """
        pubsub = self._redis.pubsub()
        try:
            await self._call(pubsub.subscribe(self.channel))
            yield None
            while True:
                try:
                    async with asyncio.timeout(interval + self.timeout):
                        await pubsub.get_message(ignore_subscribe_messages=True, timeout=interval)
                except (TimeoutError, RedisError, OSError) as exc:
                    raise RegistryUnavailable(f"redis: {str(exc) or type(exc).__name__}") from exc
                yield None
        finally:
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()
            except (TimeoutError, RedisError, OSError):
                pass

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.aclose()
        except (TimeoutError, RedisError, OSError):
            pass
