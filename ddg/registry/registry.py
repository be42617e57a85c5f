"""A cluster's registry in Redis (docs/design.md): its membership (a hash of members plus a
version) and its timing record, changed only by the Lua scripts of ddg.registry.scripts, on
the keys of ddg.registry.keys. Every call has a deadline; every failure is a RegistryError that
says what to do about it."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from ddg.election.timing import MAX_JOINT, Timing, TimingRecord
from ddg.errors import (
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
    Removed,
)
from ddg.registry import scripts
from ddg.registry.keys import ClusterKeys
from ddg.registry.records import (
    MAX_MEMBERS,
    Joined,
    Member,
    Membership,
    TimingState,
    as_text,
    check_cluster_id,
    check_version,
    parse_entry,
    parse_registry,
    parse_timing,
)
from ddg.registry.redisconn import RedisOptions, async_client

log = logging.getLogger("ddg.registry")
T = TypeVar("T")

CHANGE_RETRY = 0.05  # seconds between two tries of a change the registry holds back


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
        self.keys = ClusterKeys.of(cluster)
        self._redis = async_client(options, timeout=timeout)
        # EVALSHA with a fallback to EVAL: the script text crosses the wire once.
        self._read = self._redis.register_script(scripts.READ)
        self._add = self._redis.register_script(scripts.ADD)
        self._create = self._redis.register_script(scripts.CREATE)
        self._remove = self._redis.register_script(scripts.REMOVE)
        self._restore = self._redis.register_script(scripts.RESTORE)
        self._read_timing = self._redis.register_script(scripts.READ_TIMING)
        self._put_timing = self._redis.register_script(scripts.PUT_TIMING)
        self._confirm = self._redis.register_script(scripts.CONFIRM)
        self._confirm_version = self._redis.register_script(scripts.CONFIRM_VERSION)

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
        return await self._call(script(keys=self.keys.all, args=args))

    async def read(self, name: str | None = None) -> Membership:
        """The membership (with NAME's confirmation); RegistryDataError if the keys hold
        anything a node did not write."""
        reply = await self._script(self._read, [name or ""])
        try:
            mt, vt, it, version, cid, flat, floor, mine = reply
            types = (as_text(mt, "type"), as_text(vt, "type"), as_text(it, "type"))
        except (TypeError, ValueError):
            raise RegistryDataError("unexpected reply to the registry read") from None
        return parse_registry(types, version, cid, list(flat),
                              (self.keys.members, self.keys.version, self.keys.id),
                              term_floor=floor, confirmation=mine)

    async def create(self, member: Member, timing: TimingRecord) -> tuple[str, bool]:
        """Bootstrap: make the cluster with MEMBER as its first member and TIMING as its timing
        record, unless one exists. Returns the cluster id and whether this call created it."""
        new_id = uuid.uuid4().hex
        code, cid = await self._script(self._create, [new_id, member.name, member.to_json(),
                                                      timing.to_json()])
        return check_cluster_id(as_text(cid, "cluster id")), int(code) == 1

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
                f"{as_text(value, 'id')[:32]}) than the one this node belongs to ({cluster_id})")
        if code == -4:
            raise RegistryFull(f"cluster {self.cluster!r} already has {MAX_MEMBERS} members, "
                               "the most it may have")
        if code == -5:
            raise self._waiting(value, rest)
        if code == -6:
            version = int(float(as_text(value, "version")))
            raise Removed(f"node {member.name!r} was removed from cluster {self.cluster!r} "
                          f"(membership version {version}) and does not join again",
                          version=version)
        if code == -1:
            address: str | None
            try:
                address = parse_entry(member.name, as_text(value, "entry")).address
            except (RegistryDataError, ValueError):
                address = None
            raise NameConflict(
                f"name {member.name!r} is already registered at {address or 'an unreadable entry'}"
                f" by another node (another data dir); if that node is gone for good, "
                f"`ddg-node remove {member.name}` first, else choose another --name",
                name=member.name, address=address)
        raw = rest[1] if len(rest) > 1 else None
        record, problem = parse_timing(raw, self.keys.timing)
        return Joined(check_version(int(as_text(value, "version"))), record, problem)

    def _waiting(self, version: Any, rest: list[Any]) -> ChangeWaiting:
        """The gate's reply (_GATE): the version, the member count, who has not confirmed."""
        v = int(as_text(version, "version"))
        count = int(rest[0]) if rest else 0
        names = tuple(sorted(as_text(n, "a member name") for n in rest[1:]))
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
                return int(as_text(value, "version"))
            if asyncio.get_running_loop().time() + CHANGE_RETRY > deadline:
                raise self._waiting(value, rest)
            await asyncio.sleep(CHANGE_RETRY)

    async def confirm_version(self, name: str, confirmation: str) -> bool:
        """NAME runs the membership CONFIRMATION names (Membership.confirmation_by); False if
        NAME is not a member (nothing written)."""
        return int(await self._script(self._confirm_version, [name, confirmation])) == 1

    async def was_removed(self, node_id: str) -> bool:
        """Whether NODE_ID was removed on purpose (its tombstone is there)."""
        score = await self._call(self._redis.zscore(self.keys.removed, node_id))
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
                f"{as_text(value, 'id')[:32]}) than this node's ({snapshot.cluster_id}); not "
                "restoring over it")
        return check_version(int(as_text(value, "version"))) if int(code) == 1 else 0

    async def read_timing(self) -> TimingState:
        """The timing record, its confirmations and the members, in one round trip."""
        reply = await self._script(self._read_timing, [])
        try:
            tt, st, mt, raw, seen_flat, names = reply
            types = (as_text(tt, "type"), as_text(st, "type"), as_text(mt, "type"))
        except (TypeError, ValueError):
            raise RegistryDataError("unexpected reply to the timing read") from None
        for typ, want, key in zip(types, ("string", "hash", "hash"),
                                  (self.keys.timing, self.keys.timing_seen, self.keys.members),
                                  strict=True):
            if typ not in (want, "none"):
                raise RegistryDataError(f"{key} is a {typ}, not a {want}")
        record, problem = parse_timing(raw, self.keys.timing)
        text = None if raw in (None, False) else as_text(raw, self.keys.timing)
        seen = {as_text(seen_flat[i], "a name"): as_text(seen_flat[i + 1], "a fingerprint")
                for i in range(0, len(seen_flat) - 1, 2)}
        members = sorted(as_text(n, "a member name") for n in names)
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
        missing = tuple(sorted(as_text(n, "a member name") for n in reply[1:]))
        return int(reply[0]) == 1, missing or None

    async def changes(self, interval: float) -> AsyncIterator[None]:
        """Yield on each change notification, and every INTERVAL seconds without one.

        Raises RegistryUnavailable when the subscription breaks; the caller backs off and
        calls again.
        """
        pubsub = self._redis.pubsub()
        try:
            await self._call(pubsub.subscribe(self.keys.events))
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
                    await self._call(pubsub.subscribe(self.keys.events))
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
