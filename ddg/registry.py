"""Cluster membership in Redis: a hash of members plus a version, changed only by Lua scripts.

Schema, for cluster C (see docs/design.md):
  ddg:C:members   hash  name -> JSON {"address": ..., "joined_at": ...}
  ddg:C:version   int   bumped by every change, never reused
  ddg:C:id        str   the cluster's id, written once by the node that bootstraps it
  ddg:C:removed   zset  node ids removed on purpose (score: the version), the last 100
  ddg:C:timing    str   the cluster's timing record (ddg.config.TimingRecord, canonical JSON)
  ddg:C:timing_seen  hash  member name -> the fingerprint of the timing record it confirmed
  ddg:C:version_seen  hash  member name -> "VERSION:MEMBERS:TERM", the membership it runs
  ddg:C:term_floor  int  no term at or below it may be won under the newest version
  ddg:C:events    pub/sub channel, one JSON message per change
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from .config import MAX_JOINT, NAME_RE, Timing, TimingRecord
from .errors import (
    ChangeWaiting,
    ClusterMismatch,
    ConfigError,
    NameConflict,
    NoCluster,
    NotAMember,
    RegistryAuthError,
    RegistryDataError,
    RegistryError,
    RegistryFull,
    RegistryUnavailable,
)
from .messages import MAX_TERM, MAX_VERSION
from .redisconn import RedisOptions, async_client

log = logging.getLogger("ddg.registry")
T = TypeVar("T")

MAX_MEMBERS = 100  # a leader election needs a handful; beyond this a registry is garbage
CHANGE_RETRY = 0.05  # seconds between two tries of a change the registry holds back
CLUSTER_ID_RE = re.compile(r"[0-9a-f]{32}")
# A cluster's keys (its events channel is no key), in the order the scripts' KEYS use them.
CLUSTER_KEYS = ("members", "version", "id", "removed", "timing", "timing_seen",
                "version_seen", "term_floor")


def cluster_keys(cluster: str) -> list[str]:
    return [f"ddg:{cluster}:{k}" for k in CLUSTER_KEYS]


# Read everything in one round trip, with the key types, so that a key of the wrong type is a
# clear registry problem rather than a script error; with ARGV[1] (a name), that member's
# confirmation too.
_READ = """
local mt = redis.call('TYPE', KEYS[1])['ok']
local vt = redis.call('TYPE', KEYS[2])['ok']
local it = redis.call('TYPE', KEYS[4])['ok']
local members, v, id, floor, mine = {}, false, false, false, false
if mt == 'hash' then members = redis.call('HGETALL', KEYS[1]) end
if vt == 'string' then v = redis.call('GET', KEYS[2]) end
if it == 'string' then id = redis.call('GET', KEYS[4]) end
if redis.call('TYPE', KEYS[9])['ok'] == 'string' then floor = redis.call('GET', KEYS[9]) end
if ARGV[1] and ARGV[1] ~= '' and redis.call('TYPE', KEYS[8])['ok'] == 'hash' then
  mine = redis.call('HGET', KEYS[8], ARGV[1])
end
return {mt, vt, it, v, id, members, floor, mine}
"""

# The prefix "VERSION:MEMBERS:" of a confirmation of the current version by one of NAMES,
# the current members (MEMBERS: the members_hash of their names), and the VERSION.
_CURRENT = """
local function current(names)
  local v = redis.call('GET', KEYS[2]) or '0'
  local sum = 0
  for _, n in ipairs(names) do
    sum = sum + tonumber(string.sub(redis.sha1hex(n), 1, 10), 16)
  end
  return v .. ':' .. string.format('%d', sum) .. ':', v
end
"""

# The one rule every change to the set of names passes (docs/design.md, "One change at a
# time is safe"): a majority of the current members have confirmed the current version
# ("VERSION:MEMBERS:TERM" in KEYS[8]). The change then raises the term floor (KEYS[9]) to
# the highest TERM among those confirmations.
# Returns nil when the change may go, else the reply: {-5, version, member count, names of
# the members that have not confirmed it}.
_GATE = _CURRENT + """
local function gate()
  local flat, names = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
  if #names == 0 then return nil end
  local want, v = current(names)
  local have, top, missing = 0, 0, {}
  for _, n in ipairs(names) do
    local c = redis.call('HGET', KEYS[8], n)
    if c and string.sub(c, 1, #want) == want then
      have = have + 1
      local t = tonumber(string.sub(c, #want + 1)) or 0
      if t > top then top = t end
    else
      missing[#missing + 1] = n
    end
  end
  if have * 2 <= #names then return {-5, v, #names, unpack(missing)} end
  if top > (tonumber(redis.call('GET', KEYS[9]) or '0') or 0) then
    redis.call('SET', KEYS[9], string.format('%d', top))
  end
  return nil
end
"""

# KEYS: members, version, channel, id, removed, timing, timing_seen, version_seen, term_floor.
# ARGV: name, entry, node_id, address, cluster id the node already belongs to (or ''), max
# members. The reply carries the timing record as it was at the add: a node runs on nothing
# older. A new name (not a move of a member's data dir) passes the gate.
_ADD = _GATE + """
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
    return {0, redis.call('GET', KEYS[2]) or '0', id, redis.call('GET', KEYS[6])}
  end
  -- the same data dir at a new address (the node moved), or a pre-identity entry: adopt it
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', KEYS[3], cjson.encode({op='move', name=ARGV[1], version=v}))
  return {1, tostring(v), id, redis.call('GET', KEYS[6])}
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[6]) then return {-4, ''} end
local wait = gate()
if wait then return wait end
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('HDEL', KEYS[7], ARGV[1])  -- another node's confirmations under this name
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='join', name=ARGV[1], version=v}))
return {1, tostring(v), id, redis.call('GET', KEYS[6])}
"""

# The one way a cluster comes to exist: a node started with --bootstrap, on a registry that
# holds no cluster id. Entries already there (a cluster from before cluster ids) are kept, and
# so is a timing record. ARGV: new cluster id, name, entry, timing record.
_CREATE = """
local id = redis.call('GET', KEYS[4])
if id then return {0, id} end
redis.call('SET', KEYS[4], ARGV[1])
if not redis.call('GET', KEYS[6]) then redis.call('SET', KEYS[6], ARGV[4]) end
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='create', name=ARGV[2], version=v}))
return {1, ARGV[1]}
"""

# A tombstone tells a member that finds itself missing that it was removed on purpose, not
# lost by a restore from a membership older than its join. ARGV: name, '1' to skip the gate
# (an operator's `--force`, for members that are down for good).
_REMOVE = _GATE + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
if ARGV[2] ~= '1' then
  local wait = gate()
  if wait then return wait end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
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

# A member confirms the membership it runs (ARGV[2], "VERSION:MEMBERS:TERM"); only a member.
_CONFIRM_VERSION = """
if not redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[8], ARGV[1], ARGV[2])
return 1
"""

# The timing record with its confirmations and the members' names, in one round trip.
_READ_TIMING = """
local tt = redis.call('TYPE', KEYS[6])['ok']
local st = redis.call('TYPE', KEYS[7])['ok']
local mt = redis.call('TYPE', KEYS[1])['ok']
local rec, seen, names = false, {}, {}
if tt == 'string' then rec = redis.call('GET', KEYS[6]) end
if st == 'hash' then seen = redis.call('HGETALL', KEYS[7]) end
if mt == 'hash' then
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
end
return {tt, st, mt, rec, seen, names}
"""

# Write a timing record over the one the caller read (ARGV[1], '' for none), or nothing if
# it changed since. ARGV: expected, new record, new epoch, 1 if the cluster must exist.
_PUT_TIMING = """
if ARGV[4] == '1' and not redis.call('GET', KEYS[4]) then return {-2} end
local cur = redis.call('GET', KEYS[6]) or ''
if cur ~= ARGV[1] then return {0, cur} end
redis.call('SET', KEYS[6], ARGV[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='timing', epoch=tonumber(ARGV[3])}))
return {1}
"""

# A member confirms the record whose fingerprint is ARGV[2] (ARGV[1]: its name; '' to only
# try the next step); then, if the record is still ARGV[3], every member has confirmed it and
# every member has confirmed the current membership version too (a member confirms a version
# only a lease wait after it adopted it, so a member removed meanwhile holds no lease under
# the old timing any more: docs/design.md, "Timing is cluster state"), it becomes ARGV[4]
# (its target alone). Replies 1 when it did, else 0 and who has not.
_CONFIRM = _CURRENT + """
if ARGV[1] ~= '' then redis.call('HSET', KEYS[7], ARGV[1], ARGV[2]) end
if ARGV[4] == '' or not redis.call('GET', KEYS[4]) then return {0} end
if redis.call('GET', KEYS[6]) ~= ARGV[3] then return {0} end
local flat, names = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
if #names == 0 then return {0} end
local want = current(names)
local missing = {0}
for _, n in ipairs(names) do
  local c = redis.call('HGET', KEYS[8], n)
  if redis.call('HGET', KEYS[7], n) ~= ARGV[2] or not c or string.sub(c, 1, #want) ~= want then
    missing[#missing + 1] = n
  end
end
if #missing > 1 then return missing end
redis.call('SET', KEYS[6], ARGV[4])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='timing', epoch=tonumber(ARGV[5])}))
return {1}
"""


@dataclass(frozen=True, slots=True)
class TimingState:
    """The cluster's timing as the registry holds it: the record (None: none, as in a cluster
    made by an older version), its raw text (what a write compares against), which members
    have confirmed it and which have not."""

    record: TimingRecord | None
    raw: str | None
    confirmed: frozenset[str] = frozenset()
    waiting_for: tuple[str, ...] = ()  # members that have not confirmed the record
    problem: str | None = None  # a record no node wrote: not used

    def confirmed_by(self, name: str) -> bool:
        return name in self.confirmed

    def has_member(self, name: str) -> bool:
        """Whether NAME is a member (True while Redis holds no members: lost data)."""
        return name in self.confirmed or name in self.waiting_for or not (
            self.confirmed or self.waiting_for)


@dataclass(frozen=True, slots=True)
class Joined:
    """What a join (add) returns: the membership version and the timing record at that moment."""

    version: int
    timing: TimingRecord | None
    timing_problem: str | None = None


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


def members_hash(names: frozenset[str] | set[str] | dict[str, Any]) -> str:
    """What a confirmation says about the set of names it saw (as _GATE computes it, in any
    order): a confirmation of the same version number from a forked history (Redis lost
    data) does not count."""
    return str(sum(int(hashlib.sha1(n.encode()).hexdigest()[:10], 16) for n in names))


@dataclass(frozen=True, slots=True)
class Membership:
    version: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    cluster_id: str | None = None  # None: Redis holds no cluster (or a cache from before ids)
    # From a registry read (not cached in members.json): the term floor of the newest change,
    # and the reader's own confirmation ("VERSION:MEMBERS:TERM"; None: none there).
    term_floor: int = field(default=0, compare=False)
    confirmation: str | None = field(default=None, compare=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.members)

    def confirmation_by(self, term: int) -> str:
        """The confirmation of this membership by a node in TERM."""
        return f"{self.version}:{members_hash(self.names)}:{term}"

    def confirmed_in(self, confirmation: str | None) -> bool:
        """Whether CONFIRMATION (whatever its term) is of this membership."""
        want = f"{self.version}:{members_hash(self.names)}:"
        return confirmation is not None and confirmation.startswith(want)

    def address_of(self, name: str) -> str | None:
        m = self.members.get(name)
        return m.address if m else None

    def to_json(self) -> dict[str, Any]:
        """members.json: with the term floor, which a node restarted on it while Redis is
        away must honour as it did when it adopted this version."""
        out: dict[str, Any] = {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "members": {n: m.to_dict() for n, m in sorted(self.members.items())},
        }
        if self.term_floor:
            out["term_floor"] = self.term_floor
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Membership:
        raw = data["members"]
        if not isinstance(raw, dict):
            raise RegistryDataError("members is not an object")
        members = {n: parse_entry(n, v) for n, v in raw.items()}
        cluster_id = data.get("cluster_id")
        if cluster_id is not None:
            cluster_id = check_cluster_id(cluster_id)
        floor = data.get("term_floor", 0)
        if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= MAX_TERM:
            raise RegistryDataError(f"term_floor {floor!r} is not a term")
        return cls(check_version(data["version"]), members, cluster_id, term_floor=floor)


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


def _parse_timing(raw: Any, key: str) -> tuple[TimingRecord | None, str | None]:
    """The timing record, or None and why not: a record no node wrote is not used."""
    if raw is None or raw is False:
        return None, None
    try:
        return TimingRecord.from_json(_text(raw, key)), None
    except RegistryDataError as exc:
        return None, f"{key}: {exc}"


def parse_registry(key_types: tuple[str, str, str], version: Any, cluster_id: Any,
                   flat: list[Any], keys: tuple[str, str, str], *, term_floor: Any = None,
                   confirmation: Any = None) -> Membership:
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
    floor = 0
    if term_floor not in (None, False):
        text = _text(term_floor, "the term floor")
        if not text.isascii() or not text.isdigit() or int(text) > MAX_TERM:
            raise RegistryDataError(f"the term floor is {text[:40]!r}, not a term")
        floor = int(text)
    mine = None if confirmation in (None, False) else _text(confirmation, "a confirmation")
    return Membership(v, members, cid, term_floor=floor, confirmation=mine)


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
        self.timing_key = prefix + "timing"
        self.seen_key = prefix + "timing_seen"
        self.version_seen_key = prefix + "version_seen"
        self.floor_key = prefix + "term_floor"
        self.channel = prefix + "events"
        self._redis = async_client(options, timeout=timeout)
        self._keys = [self.members_key, self.version_key, self.channel, self.id_key,
                      self.removed_key, self.timing_key, self.seen_key, self.version_seen_key,
                      self.floor_key]
        # EVALSHA with a fallback to EVAL: the script text crosses the wire once.
        self._read = self._redis.register_script(_READ)
        self._add = self._redis.register_script(_ADD)
        self._create = self._redis.register_script(_CREATE)
        self._remove = self._redis.register_script(_REMOVE)
        self._restore = self._redis.register_script(_RESTORE)
        self._read_timing = self._redis.register_script(_READ_TIMING)
        self._put_timing = self._redis.register_script(_PUT_TIMING)
        self._confirm = self._redis.register_script(_CONFIRM)
        self._confirm_version = self._redis.register_script(_CONFIRM_VERSION)

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

    async def read(self, name: str | None = None) -> Membership:
        """The membership (with NAME's confirmation); RegistryDataError if the keys hold
        anything a node did not write."""
        reply = await self._script(self._read, [name or ""])
        try:
            mt, vt, it, version, cid, flat, floor, mine = reply
            types = (_text(mt, "type"), _text(vt, "type"), _text(it, "type"))
        except (TypeError, ValueError):
            raise RegistryDataError("unexpected reply to the registry read") from None
        return parse_registry(types, version, cid, list(flat),
                              (self.members_key, self.version_key, self.id_key),
                              term_floor=floor, confirmation=mine)

    async def create(self, member: Member, timing: TimingRecord) -> tuple[str, bool]:
        """Bootstrap: make the cluster with MEMBER as its first member and TIMING as its timing
        record, unless one exists. Returns the cluster id and whether this call created it."""
        new_id = uuid.uuid4().hex
        code, cid = await self._script(self._create, [new_id, member.name, member.to_json(),
                                                      timing.to_json()])
        return check_cluster_id(_text(cid, "cluster id")), int(code) == 1

    async def add(self, member: Member, *, cluster_id: str | None) -> Joined:
        """Register MEMBER (idempotent for the same data dir) in the cluster the registry holds,
        which must be CLUSTER_ID when the node already belongs to one; returns the version
        and the timing record, read in the same script."""
        code, value, *rest = await self._script(self._add, [
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
        if code == -5:
            raise self._waiting(value, rest)
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
        raw = rest[1] if len(rest) > 1 else None
        record, problem = _parse_timing(raw, self.timing_key)
        return Joined(check_version(int(_text(value, "version"))), record, problem)

    def _waiting(self, version: Any, rest: list[Any]) -> ChangeWaiting:
        """The gate's reply (_GATE): the version, the member count, who has not confirmed."""
        v = int(_text(version, "version"))
        count = int(rest[0]) if rest else 0
        names = tuple(sorted(_text(n, "a member name") for n in rest[1:]))
        return ChangeWaiting(
            f"membership version {v} is not yet confirmed by a majority of the cluster's "
            f"{count} members (not by {', '.join(names) or 'anyone'}); a member is added or "
            "removed only after that (docs/design.md, \"One change at a time is safe\"; a "
            "node of a version before membership confirmations never confirms)",
            version=v, members=count, waiting_for=names)

    async def remove(self, name: str, *, wait: float = 0.0, force: bool = False) -> int:
        """Remove NAME; returns the new version. While the current version is not confirmed
        by a majority, tries again for up to WAIT seconds, then raises ChangeWaiting (nothing
        written). FORCE skips that rule: only for members that are down for good (a cluster
        that lost its majority for good has no other way back), else two geese are possible.
        """
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            code, value, *rest = await self._script(self._remove, [name, "1" if force else ""])
            code = int(code)
            if code == 0:
                raise NotAMember(f"{name!r} is not a member of cluster {self.cluster!r}")
            if code != -5:
                return int(_text(value, "version"))
            if asyncio.get_running_loop().time() + CHANGE_RETRY > deadline:
                raise self._waiting(value, rest)
            await asyncio.sleep(CHANGE_RETRY)

    async def confirm_version(self, name: str, confirmation: str) -> bool:
        """NAME runs the membership CONFIRMATION names (Membership.confirmation_by); False if
        NAME is not a member (nothing written)."""
        return int(await self._script(self._confirm_version, [name, confirmation])) == 1

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

    async def read_timing(self) -> TimingState:
        """The timing record, its confirmations and the members, in one round trip."""
        reply = await self._script(self._read_timing, [])
        try:
            tt, st, mt, raw, seen_flat, names = reply
            types = (_text(tt, "type"), _text(st, "type"), _text(mt, "type"))
        except (TypeError, ValueError):
            raise RegistryDataError("unexpected reply to the timing read") from None
        for typ, want, key in zip(types, ("string", "hash", "hash"),
                                  (self.timing_key, self.seen_key, self.members_key),
                                  strict=True):
            if typ not in (want, "none"):
                raise RegistryDataError(f"{key} is a {typ}, not a {want}")
        record, problem = _parse_timing(raw, self.timing_key)
        text = None if raw in (None, False) else _text(raw, self.timing_key)
        seen = {_text(seen_flat[i], "a name"): _text(seen_flat[i + 1], "a fingerprint")
                for i in range(0, len(seen_flat) - 1, 2)}
        members = sorted(_text(n, "a member name") for n in names)
        fp = None if record is None else record.fingerprint
        confirmed = frozenset(n for n in members if fp is not None and seen.get(n) == fp)
        return TimingState(record=record, raw=text, confirmed=confirmed,
                           waiting_for=tuple(n for n in members if n not in confirmed),
                           problem=problem)

    async def put_timing(self, expected: str | None, record: TimingRecord, *,
                         cluster_must_exist: bool = False) -> bool:
        """Write RECORD over EXPECTED (the raw text read; None: no record). False if the
        record changed since (nothing written): read again."""
        reply = await self._script(self._put_timing, [
            expected or "", record.to_json(), record.epoch, "1" if cluster_must_exist else "0"])
        code = int(reply[0])
        if code == -2:
            raise NoCluster(f"Redis at {self.url} holds no cluster {self.cluster!r}")
        return code == 1

    async def change_timing(self, make: Callable[[Timing], Timing]
                            ) -> tuple[TimingRecord, TimingRecord | None]:
        """An operator's change (`ddg-node config set`): MAKE gives the new timing from the
        current target; it joins the timings in force as the next epoch. Returns the record
        read and the one written (None: the target is that timing already). ConfigError for a
        bad timing or too many in force; NoCluster without a record."""
        for _ in range(5):  # another write between our read and ours: read again
            state = await self.read_timing()
            rec = state.record
            if rec is None:
                raise NoCluster(
                    f"cluster {self.cluster!r} has no timing record ("
                    + (state.problem or "a cluster that does not exist, or one made by an "
                       "older version: its goose writes one once it runs this version") + ")")
            new = make(rec.target).resolved()
            if new == rec.target:
                return rec, None
            if len(rec.timings) >= MAX_JOINT:
                raise ConfigError(
                    f"{len(rec.timings)} timings are in force already (at most {MAX_JOINT}): "
                    "let the change in progress finish first (ddg-node config show says whom "
                    "it waits for)")
            changed = rec.changed_to(new)
            if await self.put_timing(state.raw, changed, cluster_must_exist=True):
                return rec, changed
        raise RegistryError("the timing record kept changing under this change; try again")

    async def confirm_timing(self, name: str | None, record: TimingRecord,
                             raw: str | None) -> tuple[bool, tuple[str, ...] | None]:
        """NAME (None: nobody) confirms RECORD; then, if the registry still holds RAW (RECORD's
        text there) and every member has confirmed it, finalize it. Returns whether this
        finalized, and the members that have not confirmed (None: not known)."""
        final = record.finalized() if record.changing and raw is not None else None
        reply = await self._script(self._confirm, [
            name or "", record.fingerprint, raw or "",
            "" if final is None else final.to_json(), 0 if final is None else final.epoch])
        missing = tuple(sorted(_text(n, "a member name") for n in reply[1:]))
        return int(reply[0]) == 1, missing or None

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
