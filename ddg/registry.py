"""Cluster membership in Redis: a hash of members plus a version, changed only by Lua scripts.

Schema, for cluster C (see docs/design.md):
  ddg:C:members   hash  name -> JSON {"address": ..., "joined_at": ...}
  ddg:C:version   int   bumped by every change, never reused
  ddg:C:id        str   the cluster's id, written once by the node that bootstraps it
  ddg:C:removed   zset  node ids removed on purpose (score: the version), the last 100
  ddg:C:events    pub/sub channel, one JSON message per change
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from .config import NAME_RE
from .errors import (
    ClusterMismatch,
    NameConflict,
    NoCluster,
    NotAMember,
    RegistryAuthError,
    RegistryDataError,
    RegistryFull,
    RegistryUnavailable,
)
from .messages import MAX_VERSION
from .redisconn import RedisOptions, async_client

log = logging.getLogger("ddg.registry")
T = TypeVar("T")

MAX_MEMBERS = 100  # a leader election needs a handful; beyond this a registry is garbage
CLUSTER_ID_RE = re.compile(r"[0-9a-f]{32}")

# Read everything in one round trip, with the key types, so that a key of the wrong type is a
# clear registry problem rather than a script error.
_READ = """
local mt = redis.call('TYPE', KEYS[1])['ok']
local vt = redis.call('TYPE', KEYS[2])['ok']
local it = redis.call('TYPE', KEYS[4])['ok']
local members, v, id = {}, false, false
if mt == 'hash' then members = redis.call('HGETALL', KEYS[1]) end
if vt == 'string' then v = redis.call('GET', KEYS[2]) end
if it == 'string' then id = redis.call('GET', KEYS[4]) end
return {mt, vt, it, v, id, members}
"""

# KEYS: members, version, channel, id, removed. ARGV: name, entry, node_id, address, cluster
# id the node already belongs to (or ''), max members.
_ADD = """
local id = redis.call('GET', KEYS[4])
if not id then return {-2, ''} end
if ARGV[5] ~= '' and id ~= ARGV[5] then return {-3, id} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  local mine = ok and type(obj) == 'table' and (obj['node_id'] == ARGV[3]
      or (obj['node_id'] == nil and obj['address'] == ARGV[4]))
  if not mine then return {-1, cur} end
  if obj['address'] == ARGV[4] and obj['node_id'] == ARGV[3] then
    return {0, redis.call('GET', KEYS[2]) or '0', id}
  end
  -- the same data dir at a new address (the node moved), or a pre-identity entry: adopt it
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', KEYS[3], cjson.encode({op='move', name=ARGV[1], version=v}))
  return {1, tostring(v), id}
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[6]) then return {-4, ''} end
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='join', name=ARGV[1], version=v}))
return {1, tostring(v), id}
"""

# The one way a cluster comes to exist: a node started with --bootstrap, on a registry that
# holds no cluster id. Entries already there (a cluster from before cluster ids) are kept.
# ARGV: new cluster id, name, entry.
_CREATE = """
local id = redis.call('GET', KEYS[4])
if id then return {0, id} end
redis.call('SET', KEYS[4], ARGV[1])
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='create', name=ARGV[2], version=v}))
return {1, ARGV[1]}
"""

# A tombstone tells a member that finds itself missing that it was removed on purpose, not
# lost by a restore from a membership older than its join.
_REMOVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('INCR', KEYS[2])
local ok, obj = pcall(cjson.decode, cur)
if ok and type(obj) == 'table' and type(obj['node_id']) == 'string' then
  redis.call('ZADD', KEYS[5], v, obj['node_id'])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -101)
end
redis.call('PUBLISH', KEYS[3], cjson.encode({op='remove', name=ARGV[1], version=v}))
return {1, tostring(v)}
"""

# Redis lost its data (restarted empty, FLUSHALL) or went back in time (an old RDB), or its
# history forked (the same version with other members): put back the membership a node last
# knew, merged with what is there, under a version newer than both. ARGV: cluster id,
# snapshot version, force (1: the same version is a fork), then name/entry pairs.
_RESTORE = """
local id = redis.call('GET', KEYS[4])
if id and id ~= ARGV[1] then return {-3, id} end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local snap = tonumber(ARGV[2])
if id and (cur > snap or (cur == snap and ARGV[3] ~= '1')) then return {0, tostring(cur)} end
for i = 4, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local v = math.max(cur, snap) + 1
redis.call('SET', KEYS[2], string.format('%d', v))
redis.call('SET', KEYS[4], ARGV[1])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='restore', version=v}))
return {1, string.format('%d', v)}
"""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    address: str
    joined_at: float = 0.0
    node_id: str | None = None  # the member's data dir; None only for pre-identity entries

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "joined_at": self.joined_at}
        if self.node_id is not None:
            out["node_id"] = self.node_id
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class Membership:
    version: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    cluster_id: str | None = None  # None: Redis holds no cluster (or a cache from before ids)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.members)

    def address_of(self, name: str) -> str | None:
        m = self.members.get(name)
        return m.address if m else None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "members": {n: m.to_dict() for n, m in sorted(self.members.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Membership:
        raw = data["members"]
        if not isinstance(raw, dict):
            raise RegistryDataError("members is not an object")
        members = {n: parse_entry(n, v) for n, v in raw.items()}
        cluster_id = data.get("cluster_id")
        if cluster_id is not None:
            cluster_id = check_cluster_id(cluster_id)
        return cls(check_version(data["version"]), members, cluster_id)


def check_version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise RegistryDataError(f"version {value!r} is not an integer in 0..{MAX_VERSION}")
    return value


def check_cluster_id(value: Any) -> str:
    if not isinstance(value, str) or not CLUSTER_ID_RE.fullmatch(value):
        raise RegistryDataError(f"cluster id {str(value)[:40]!r} is not 32 hex digits")
    return value


def parse_entry(name: Any, value: Any) -> Member:
    """One member entry, strictly: a registry entry no node wrote is a problem, not a member."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RegistryDataError(f"member name {str(name)[:70]!r} is not a valid node name")
    obj = json.loads(value) if isinstance(value, str) else value
    if not isinstance(obj, dict):
        raise RegistryDataError(f"member {name!r}: entry is not a JSON object")
    address, joined, node_id = obj.get("address"), obj.get("joined_at", 0.0), obj.get("node_id")
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise RegistryDataError(f"member {name!r}: address {str(address)[:70]!r} is not a URL")
    if isinstance(joined, bool) or not isinstance(joined, int | float) or not math.isfinite(
            joined):
        raise RegistryDataError(f"member {name!r}: joined_at is not a number")
    if node_id is not None and (not isinstance(node_id, str) or not CLUSTER_ID_RE.fullmatch(
            node_id)):
        raise RegistryDataError(f"member {name!r}: node_id is not 32 hex digits")
    return Member(name, address, float(joined), node_id)


def _text(raw: Any, what: str) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise RegistryDataError(f"{what} {raw[:40]!r} is not UTF-8") from None
    return str(raw)


def parse_registry(key_types: tuple[str, str, str], version: Any, cluster_id: Any,
                   flat: list[Any], keys: tuple[str, str, str]) -> Membership:
    """Validate what _READ returned; any problem raises RegistryDataError naming it."""
    for typ, want, key in zip(key_types, ("hash", "string", "string"), keys, strict=True):
        if typ not in (want, "none"):
            raise RegistryDataError(f"{key} is a {typ}, not a {want}")
    if version is None or version is False:
        v = 0
    else:
        text = _text(version, keys[1])
        if not text.isascii() or not text.isdigit():
            raise RegistryDataError(f"{keys[1]} is {text[:40]!r}, not a version number")
        v = check_version(int(text))
    cid = None if cluster_id in (None, False) else check_cluster_id(_text(cluster_id, keys[2]))
    if len(flat) // 2 > MAX_MEMBERS:
        raise RegistryDataError(f"{keys[0]} has {len(flat) // 2} members; at most "
                                f"{MAX_MEMBERS} are allowed")
    members: dict[str, Member] = {}
    for i in range(0, len(flat) - 1, 2):
        name = _text(flat[i], f"a member name in {keys[0]}")
        try:
            members[name] = parse_entry(name, _text(flat[i + 1], f"member {name!r}"))
        except ValueError as exc:
            raise RegistryDataError(f"member {name!r}: entry is not JSON ({exc})") from None
    if members and v == 0:
        raise RegistryDataError(f"{keys[0]} has members but {keys[1]} is missing")
    return Membership(v, members, cid)


# How Redis words an ACL refusal inside a script (6.x and 7.x).
_ACL_REFUSALS = ("can't run this command", "can't access at least one of the keys",
                 "No permissions to", "no permissions to")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _tls_refusal(exc: BaseException) -> str | None:
    """Why a TLS handshake with Redis failed for good (a certificate that does not verify
    against our CA, or the server refusing ours), from redis-py's ConnectionError's causes;
    None for anything a retry may cure."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (f"its TLS certificate does not verify: {seen.verify_message or seen} "
                    "(--redis-ca: the CA that signed the Redis server's certificate)")
        if isinstance(seen, ssl.SSLError) and "ALERT" in str(seen).upper():
            return (f"the TLS handshake was refused: {seen.reason or seen} (a Redis with "
                    "tls-auth-clients wants --redis-cert and --redis-key signed by its CA)")
        seen = seen.__cause__ or seen.__context__
    return None


class Registry:
    """Async access to one cluster's membership. Every call has a deadline."""

    def __init__(self, redis: RedisOptions | str, cluster: str, *,
                 timeout: float = 0.5) -> None:
        options = RedisOptions(url=redis) if isinstance(redis, str) else redis
        self.cluster = cluster
        self.timeout = timeout
        self.url = options.shown  # the only form of the URL that may be shown
        # A TLS Redis that demands a client certificate may just reset a client without one
        # (TLS 1.3: the refusal comes after the client's handshake is done): say so.
        self._reset_hint = (" (a Redis with tls-auth-clients resets clients without "
                            "--redis-cert and --redis-key)"
                            if options.target.tls and options.cert_file is None else "")
        prefix = f"ddg:{cluster}:"
        self.members_key = prefix + "members"
        self.version_key = prefix + "version"
        self.id_key = prefix + "id"
        self.removed_key = prefix + "removed"
        self.channel = prefix + "events"
        self._redis = async_client(options, timeout=timeout)
        self._keys = [self.members_key, self.version_key, self.channel, self.id_key,
                      self.removed_key]
        # EVALSHA with a fallback to EVAL: the script text crosses the wire once.
        self._read = self._redis.register_script(_READ)
        self._add = self._redis.register_script(_ADD)
        self._create = self._redis.register_script(_CREATE)
        self._remove = self._redis.register_script(_REMOVE)
        self._restore = self._redis.register_script(_RESTORE)

    async def _call(self, aw: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except AuthenticationError as exc:
            raise RegistryAuthError(
                f"Redis at {self.url} refused this client: {exc} (check the user and password: "
                "--redis-password-file or DDG_REDIS_PASSWORD)") from None
        except ResponseError as exc:
            text = str(exc)
            if isinstance(exc, NoPermissionError) or text.startswith("NOPERM") or any(
                    s in text for s in _ACL_REFUSALS):
                raise RegistryAuthError(
                    f"Redis at {self.url} refused this client: {_first_line(text)} (the Redis "
                    f"user needs the ACL in docs/operations.md, \"Redis\")") from None
            if text.startswith(("NOAUTH", "WRONGPASS")):
                raise RegistryAuthError(f"Redis at {self.url} refused this client: {exc}") from None
            raise RegistryDataError(f"Redis refused the registry update: {exc}") from None
        except (TimeoutError, RedisError, OSError) as exc:
            if (why := _tls_refusal(exc)) is not None:
                raise RegistryAuthError(f"Redis at {self.url}: {why}") from None
            hint = self._reset_hint if "reset by peer" in str(exc) else ""
            # A bare TimeoutError is our own deadline (the client has none on commands).
            why = str(exc) or (f"no answer within {self.timeout:g} s"
                               if isinstance(exc, TimeoutError) else type(exc).__name__)
            raise RegistryUnavailable(f"redis: {why}{hint}") from exc

    async def _script(self, script: Any, args: list[Any]) -> Any:
        return await self._call(script(keys=self._keys, args=args))

    async def read(self) -> Membership:
        """The membership; RegistryDataError if the keys hold anything a node did not write."""
        reply = await self._script(self._read, [])
        try:
            mt, vt, it, version, cid, flat = reply
            types = (_text(mt, "type"), _text(vt, "type"), _text(it, "type"))
        except (TypeError, ValueError):
            raise RegistryDataError("unexpected reply to the registry read") from None
        return parse_registry(types, version, cid, list(flat),
                              (self.members_key, self.version_key, self.id_key))

    async def create(self, member: Member) -> tuple[str, bool]:
        """Bootstrap: make the cluster with MEMBER as its first member, unless one exists.
        Returns the cluster id and whether this call created it."""
        new_id = uuid.uuid4().hex
        code, cid = await self._script(self._create, [new_id, member.name, member.to_json()])
        return check_cluster_id(_text(cid, "cluster id")), int(code) == 1

    async def add(self, member: Member, *, cluster_id: str | None) -> int:
        """Register MEMBER (idempotent for the same data dir) in the cluster the registry holds,
        which must be CLUSTER_ID when the node already belongs to one; returns the version."""
        code, value, *_ = await self._script(self._add, [
            member.name, member.to_json(), member.node_id or "", member.address,
            cluster_id or "", MAX_MEMBERS])
        code = int(code)
        if code == -2:
            raise NoCluster(
                f"Redis at {self.url} holds no cluster {self.cluster!r}: the first node of a new "
                "cluster is started with --bootstrap; a node of an existing one waits for its "
                "members to restore the registry")
        if code == -3:
            raise ClusterMismatch(
                f"Redis at {self.url} holds another cluster {self.cluster!r} (id "
                f"{_text(value, 'id')[:32]}) than the one this node belongs to ({cluster_id})")
        if code == -4:
            raise RegistryFull(f"cluster {self.cluster!r} already has {MAX_MEMBERS} members, "
                               "the most it may have")
        if code == -1:
            address: str | None
            try:
                address = parse_entry(member.name, _text(value, "entry")).address
            except (RegistryDataError, ValueError):
                address = None
            raise NameConflict(
                f"name {member.name!r} is already registered at {address or 'an unreadable entry'}"
                f" by another node (another data dir); if that node is gone for good, "
                f"`ddg-node remove {member.name}` first, else choose another --name",
                name=member.name, address=address)
        return check_version(int(_text(value, "version")))

    async def remove(self, name: str) -> int:
        code, value = await self._script(self._remove, [name])
        if int(code) == 0:
            raise NotAMember(f"{name!r} is not a member of cluster {self.cluster!r}")
        return int(_text(value, "version"))

    async def was_removed(self, node_id: str) -> bool:
        """Whether NODE_ID was removed on purpose (its tombstone is there)."""
        score = await self._call(self._redis.zscore(self.removed_key, node_id))
        return score is not None

    async def restore(self, snapshot: Membership, *, force: bool = False) -> int:
        """Put SNAPSHOT back where Redis lost it (no cluster id, an older version, or with
        FORCE the same version with other members); returns the new version, 0 if not needed.
        """
        if snapshot.cluster_id is None:
            raise RegistryDataError("cannot restore a membership without a cluster id")
        args: list[Any] = [snapshot.cluster_id, snapshot.version, "1" if force else "0"]
        for m in snapshot.members.values():
            args += [m.name, m.to_json()]
        code, value = await self._script(self._restore, args)
        if int(code) == -3:
            raise ClusterMismatch(
                f"Redis at {self.url} holds another cluster {self.cluster!r} (id "
                f"{_text(value, 'id')[:32]}) than this node's ({snapshot.cluster_id}); not "
                "restoring over it")
        return check_version(int(_text(value, "version"))) if int(code) == 1 else 0

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
                if await self._master_moved():
                    await self._close(pubsub)
                    pubsub = self._redis.pubsub()
                    await self._call(pubsub.subscribe(self.channel))
                yield None
        finally:
            await self._close(pubsub)

    async def _close(self, pubsub: Any) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.aclose()
        except (TimeoutError, RedisError, OSError):
            pass

    async def _master_moved(self) -> bool:
        """With Sentinel: whether the sentinels now name another master. If so, the idle
        connections to the old one are closed (redis-py does that on a changed address).

        A master demoted by a failover it survived (`SENTINEL FAILOVER`, a partition that
        heals) answers as a master for about 10 s, until Sentinel reconfigures it; clients
        that keep their connections read a stale registry there and lose what they write.
        Asking once per change or refresh interval costs one round trip to a sentinel."""
        pool = self._redis.connection_pool
        if not isinstance(pool, SentinelConnectionPool) or pool.master_address is None:
            return False
        before = pool.master_address
        try:
            async with asyncio.timeout(self.timeout):
                now = await pool.get_master_address()
        except (TimeoutError, RedisError, OSError):
            return False  # no sentinel answers: stay where we are; the next tick asks again
        if now == before:
            return False
        log.warning("Redis master moved from %s:%s to %s:%s (Sentinel); reconnecting",
                    *before, *now)
        return True

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.aclose()
        except (TimeoutError, RedisError, OSError):
            pass
