"""The node's view of the membership, kept in step with the Redis registry.

Joining (and creating the cluster with --bootstrap), putting back what Redis lost, watching
for changes (pub/sub, and a re-read every refresh interval), confirming the version the core
runs (a change is written only once a majority confirmed the version before it), and saying
once per distinct problem when Redis is down or its data unusable. Nothing in the election
waits on this: the node keeps electing on the last membership it knew (docs/design.md,
"Bootstrap" and "One change at a time is safe").
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp

from ddg.client.nodestatus import RedisInfo
from ddg.election.timing import TimingRecord
from ddg.errors import (
    ChangeWaiting,
    ClusterMismatch,
    NameConflict,
    NoCluster,
    NoTimingRecord,
    RegistryAuthError,
    RegistryDataError,
    RegistryError,
    RegistryFull,
    RegistryUnavailable,
    Removed,
    StorageError,
)
from ddg.net.tls import client_context
from ddg.node.clustertiming import ClusterTiming
from ddg.node.config import MemberConfig
from ddg.node.stopping import cancel_and_wait
from ddg.node.storage import DataDir
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.records import Member, Membership
from ddg.registry.registry import Registry
from ddg.util.backoff import Backoff
from ddg.util.ratelimit import LogThrottle

log = logging.getLogger("ddg.membership")

OnChange = Callable[[Membership], Awaitable[None]]
OnError = Callable[[RegistryError], None]
Running = Callable[[], tuple[int, frozenset[str], int]]  # the core's version, members, term
WAIT_LOG_EVERY = 5.0  # seconds between two lines about a change the registry holds back
WAITING_FOR_CLUSTER = "waiting for the cluster to exist in Redis"  # `joining`, without one


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for EVENT at most SECONDS. (Python 3.11's wait_for can swallow a cancellation
    that races with completion; asyncio.timeout cannot.)"""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class MembershipSync:
    def __init__(self, *, config: MemberConfig, registry: Registry, data: DataDir,
                 rng: random.Random, on_change: OnChange, warn: LogThrottle,
                 on_error: OnError | None = None, timing: ClusterTiming | None = None) -> None:
        self.config = config
        self.registry = registry
        self.data = data
        self.rng = rng
        self._on_change = on_change
        self._on_error = on_error  # every registry error, for the metrics
        self._warn = warn
        self.membership = Membership()
        self.node_id = ""
        self.registered = False
        self.redis_ok = False
        self.redis_error: str | None = "not connected yet"
        self.registry_problem: str | None = None  # bad data, another cluster, refused login
        self._joining: str | None = None  # why the node has not joined yet
        self.on_joining: Callable[[str], None] | None = None  # told each new reason
        # The cluster's timing: checked before joining, read with each refresh.
        self.timing = timing
        self.joined_timing: TimingRecord | None = None  # the record the join returned
        self._refreshing: asyncio.Task[None] | None = None
        self._waiting = LogThrottle(log, WAIT_LOG_EVERY)
        # Confirmations (set by the node once its core runs): what the core runs, and from
        # when on every lease acknowledged under an older version has surely ended.
        self.running: Running | None = None
        self.settles_at: Callable[[], float] = lambda: math.inf
        self.confirmed: str | None = None  # the confirmation this process made (prefix)
        self._saved: tuple[int, frozenset[str]] | None = None  # what members.json holds
        self._confirming: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None  # a fresh node: an old cluster?

    @property
    def joining(self) -> str | None:
        return self._joining

    @joining.setter
    def joining(self, why: str | None) -> None:
        if why is not None and why != self._joining and self.on_joining is not None:
            self.on_joining(why)
        self._joining = why

    def info(self) -> RedisInfo:
        return RedisInfo(connected=self.redis_ok, error=self.redis_error,
                         problem=self.registry_problem, url=self.registry.url)

    def observe_version(self, version: int) -> None:
        """A peer has a newer membership version: read the registry (in the background)."""
        if version > self.membership.version:
            self.refresh_soon()

    async def close(self) -> None:
        tasks = [t for t in (self._refreshing, self._confirming, self._checking)
                 if t is not None]
        if tasks:
            await cancel_and_wait(*tasks)

    async def _explain(self, exc: NameConflict) -> NameConflict:
        """Say whether the node holding the name is alive: only a dead one may be removed."""
        if exc.address is None:
            return exc
        if exc.address == self.config.address:
            # This process listens there: whoever answers is this node itself, so the data
            # dir that registered the name is not running (a disk that died, a wiped dir).
            return NameConflict(
                f"name {exc.name!r} is already registered at {exc.address}, this node's own "
                "address, by another data dir, which is not running (this one is new: a disk "
                f"that died, a deleted data dir?); if it is gone for good: ddg-node remove "
                f"{exc.name}",
                name=exc.name, address=exc.address)
        # Here, not at the top: a running node has no other use for httpx (~6 MiB of RSS).
        from ddg.client.http import NodeClient

        # With the node's own TLS settings: a live holder behind the cluster's CA must not be
        # taken for a dead one (and its removal suggested).
        client = NodeClient(timeout=1.0, tls=self.config.tls)
        try:
            reply = await client.poll(exc.address)
        finally:
            await client.aclose()
        st = reply.status
        if st is not None and st.name == exc.name:
            return NameConflict(
                f"name {exc.name!r} is already registered to a live node at {exc.address} (it "
                f"answers, as {st.role.value} in term {st.term}); choose another --name",
                name=exc.name,
                address=exc.address)
        why = reply.error or "another name answers there"
        return NameConflict(
            f"name {exc.name!r} is already registered at {exc.address} by another node "
            f"(another data dir), which does not answer ({why}); if it is gone for good: "
            f"ddg-node remove {exc.name}", name=exc.name, address=exc.address)

    def _refusal(self, version: object) -> Removed:
        """The one line a removed data dir starts with: why, and how to join as a new member."""
        path = self.data.path
        when = f" (membership version {version})" if isinstance(version, int) else ""
        return Removed(
            f"this data dir ({path}) is node {self.config.name!r}, removed from cluster "
            f"{self.config.cluster!r}{when}: it does not join again; to join as a new member, "
            f"delete it (ddg-node data-dirs --prune, or rm -r {path}) or start with an empty "
            "--data-dir")

    def _mark_removed(self, version: int | None) -> None:
        """Remember the removal in the data dir: a restart refuses even if Redis lost the
        tombstone (flushed, failed over to a replica without it)."""
        try:
            self.data.mark_removed(name=self.config.name, cluster=self.config.cluster,
                                   version=version or 0)
        except StorageError as exc:
            self._warn.warning("removed-json", "%s (the registry's tombstone still refuses "
                               "this data dir)", exc)

    def _member(self) -> Member:
        return Member(self.config.name, self.config.address, time.time(), self.node_id)

    async def join(self, cached: Membership | None, stop: asyncio.Event) -> Membership | None:
        """Join the cluster the registry holds (or create it with --bootstrap), waiting for
        Redis unless a cached membership of this node's cluster lets it go on."""
        # Short: a fresh node waiting for the members to restore the registry joins within
        # half a second of it.
        backoff = Backoff(initial=0.1, maximum=0.5, rng=self.rng)
        known = cached is not None and cached.cluster_id is not None
        gone = self.data.load_removed()
        if gone is not None:
            raise self._refusal(gone.get("version"))
        while not stop.is_set():
            try:
                membership = await self._register(cached)
            except NameConflict as exc:
                raise await self._explain(exc) from None
            except Removed as exc:
                self._mark_removed(exc.version)
                raise self._refusal(exc.version) from None
            except (RegistryFull, RegistryAuthError):
                raise
            except ChangeWaiting as exc:
                # Joins as soon as the registry lets it: ask again in a moment.
                self._redis_up()
                self.joining = (f"waiting for {', '.join(exc.waiting_for)} to confirm "
                                f"membership version {exc.version} (a majority of its "
                                f"{exc.members} members must, before this node is added)")
                self._waiting.warning("join", "not added yet: %s", exc)
                await wait_event(stop, self.rng.uniform(0.05, 0.1))
                continue
            except NoCluster as exc:
                self.joining = ("waiting for the cluster's timing record"
                                if isinstance(exc, NoTimingRecord)
                                else WAITING_FOR_CLUSTER)
                self._redis_up()
                self._warn.warning("no-cluster", "%s", exc)
            except RegistryError as exc:
                self._registry_trouble(exc)
                if known and cached is not None and self.config.name in cached.members:
                    log.warning("registry unusable (%s); electing on the cached membership "
                                "(version %d) until it is back", exc, cached.version)
                    self._saved = (cached.version, cached.names)  # members.json holds it
                    return cached
                self.joining = f"waiting for Redis ({exc})"  # the "no goose" line says why
                self._warn.warning("join", "waiting for the registry at %s (%s)",
                                 self.registry.url, exc)
            else:
                self.joining = None
                if cached is None or cached.cluster_id is None:  # never delays the join
                    self._checking = asyncio.create_task(self._say_if_old(membership),
                                                         name="old-cluster-check")
                return membership
            await wait_event(stop, backoff.next())
        return None

    async def _say_if_old(self, membership: Membership) -> None:
        """A fresh node (or one started with --bootstrap) that joined a cluster none of whose
        other members answers says so: most likely a registry that kept an old cluster (a
        Redis that reloaded an earlier try-out's dump.rdb), where it would wait forever."""
        others = {n: m.address for n, m in sorted(membership.members.items())
                  if n != self.config.name}
        if not others:
            return
        # aiohttp, which the node runs on anyway: httpx (NodeClient) would cost every fresh
        # node ~5 MiB of RSS for one look.
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def answers(name: str, address: str) -> bool:
                try:
                    async with session.get(address.rstrip("/") + "/status",
                                           ssl=client_context(self.config.tls)) as resp:
                        body = await resp.json() if resp.status == 200 else None
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    return False
                return isinstance(body, dict) and body.get("name") == name

            replies = await asyncio.gather(*(answers(n, a) for n, a in others.items()))
        if any(replies):
            return
        cluster = self.config.cluster
        opt = "" if cluster == DEFAULT_CLUSTER else f" --cluster {cluster}"
        log.warning("none of the cluster's other %d members answers (%s): this registry holds "
                    "an old cluster (a Redis that kept an earlier run's data, a dump.rdb?), or "
                    "they are all down. If they are gone for good: ddg-node remove --force %s%s "
                    "(or use an empty Redis)", len(others), ", ".join(others), " ".join(others),
                    opt, extra={"event": "old_cluster", "silent": list(others)})

    async def _register(self, cached: Membership | None) -> Membership:
        """One attempt. A node that knows its cluster puts back what Redis lost before adding
        itself; a fresh node joins only a cluster that exists (docs/design.md, Bootstrap)."""
        member = self._member()
        current = await self.registry.read()
        timing = None
        if self.timing is not None and current.cluster_id is not None:
            # Timing flags that disagree refuse to start: before the node becomes a member.
            timing = await self.registry.read_timing()
            self.timing.check_join(timing.record)
        if cached is not None and cached.cluster_id is not None:
            await self._reconcile(cached, current)
            joined = await self.registry.add(member, cluster_id=cached.cluster_id)
        else:
            if current.cluster_id is None:
                # A cache from before cluster ids: the cluster existed, so it may be re-made.
                legacy = cached is not None and self.config.name in cached.members
                if not (self.config.bootstrap or legacy):
                    raise NoCluster(
                        f"cluster {self.config.cluster!r} does not exist in Redis at "
                        f"{self.registry.url}: waiting for its members to restore it, or start "
                        "its first node with --bootstrap")
                cid, created = await self.registry.create(
                    member, TimingRecord.first(self.config.timing))
                if created:
                    log.warning("created cluster %r (id %s) in Redis at %s",
                                self.config.cluster, cid, self.registry.url,
                                extra={"event": "cluster_created", "cluster_id": cid})
            elif self.config.bootstrap:
                log.info("--bootstrap ignored: cluster %r exists (id %s); joining it",
                         self.config.cluster, current.cluster_id)
            if timing is not None and timing.record is None and timing.problem is None:
                # A new node must not run its own timing beside the cluster's: Redis lost the
                # record (its members put it back within a refresh), or the cluster was made
                # by an older version (its goose writes one once it runs this version).
                raise NoTimingRecord(
                    f"cluster {self.config.cluster!r} in Redis at {self.registry.url} has no "
                    "timing record: waiting for its members to put it back (a cluster made by "
                    "an older version gets one from its goose once that runs this version)")
            joined = await self.registry.add(member, cluster_id=None)
        if joined.timing_problem is not None:
            raise RegistryDataError(joined.timing_problem)
        self.joined_timing = joined.timing
        membership = await self.registry.read(self.config.name)
        if self.config.name not in membership.members or membership.cluster_id is None:
            # Flushed between the add and the read: nothing here is ours to trust yet.
            raise RegistryUnavailable("the registry lost this node's entry while it joined")
        self.registered = True
        self._redis_up()
        self._registry_fine()
        self._save_membership(membership)
        return membership

    async def _reconcile(self, snapshot: Membership, current: Membership) -> Membership:
        """Put SNAPSHOT back if Redis lost it (no cluster id, an older version, or a fork at the
        same version); refuse a registry that holds another cluster."""
        if current.cluster_id is not None and current.cluster_id != snapshot.cluster_id:
            raise ClusterMismatch(
                f"Redis at {self.registry.url} holds another cluster {self.config.cluster!r} "
                f"(id {current.cluster_id}) than this node's (id {snapshot.cluster_id}); "
                "electing on the last membership this node knew")
        fork = (current.cluster_id is not None and current.version == snapshot.version
                and current.names != snapshot.names)
        if current.cluster_id is None or current.version < snapshot.version or fork:
            version = await self.registry.restore(snapshot, force=fork)
            if version:
                log.warning("the registry lost data (%s); restored %d members as version %d",
                            "no cluster" if current.cluster_id is None else
                            f"version {current.version}, this node knew {snapshot.version}",
                            len(snapshot.members), version,
                            extra={"event": "registry_restored", "membership_version": version})
            current = await self.registry.read(self.config.name)
        return current

    async def watch(self) -> None:
        backoff = Backoff(initial=0.1, maximum=1.0, rng=self.rng)
        while True:
            try:
                async for _ in self.registry.changes(self.config.refresh_interval):
                    try:
                        await self._refresh()
                        if self.timing is not None:
                            self.timing.refresh_soon()  # a task of its own: never delays this
                    except RegistryUnavailable:
                        raise
                    except RegistryError as exc:
                        # Redis answers but its data is unusable: keep watching, keep electing.
                        self._registry_trouble(exc)
                        continue
                    backoff.reset()
            except RegistryError as exc:
                self._registry_trouble(exc)
                await asyncio.sleep(backoff.next())

    def refresh_soon(self) -> asyncio.Task[None]:
        """One refresh at a time; callers share the one in flight."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_quietly())
        return self._refreshing

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except RegistryError as exc:
            self._registry_trouble(exc)

    async def _refresh(self) -> None:
        name = self.config.name
        current = await self.registry.read(name)
        self._redis_up()
        current = await self._reconcile(self.membership, current)
        if not self.registered:
            if not await self._add_back(current, "this node started while Redis was away"):
                return
            self.registered = True
            current = await self.registry.read(name)
        self._registry_fine()
        if current.version < self.membership.version:
            return  # a restore that lost a race; the next read sees the winner
        if name not in current.members and name in self.membership.members:
            if await self.registry.was_removed(self.node_id):
                log.warning("removed from cluster %r (membership version %d): this data dir "
                            "does not join again", self.config.cluster, current.version,
                            extra={"event": "removed", "membership_version": current.version})
                self._mark_removed(current.version)
            else:
                # A member restored a membership older than this node's join: put it back.
                if not await self._add_back(current, f"membership version {current.version} "
                                            "lost this node's entry (restored from an older "
                                            "membership, not removed)"):
                    return
                current = await self.registry.read(name)
                if name not in current.members:
                    return  # flushed again: the next refresh tries again
        if not (current.version == self.membership.version
                and current.names == self.membership.names
                and current.members == self.membership.members):
            self.membership = current
            self._save_membership(current)
            log.info("membership version %d: %s", current.version,
                     ",".join(sorted(current.names)),
                     extra={"event": "membership_changed",
                            "membership_version": current.version,
                            "members": sorted(current.names)})
            await self._on_change(current)
        elif not current.confirmed_in(current.confirmation) and self._is_confirmed(current):
            self.confirmed = None  # Redis lost it (flushed, an old RDB): again, at once
        if self._saved != (self.membership.version, self.membership.names):
            self._save_membership(self.membership)  # a write that failed: again, each refresh
        self.confirm_soon()

    async def _add_back(self, current: Membership, why: str) -> bool:
        """Add this node again (through the registry's rule for changes); False while the
        registry holds it back (the next refresh tries again)."""
        try:
            await self.registry.add(self._member(), cluster_id=self.membership.cluster_id)
        except Removed:
            return True  # removed meanwhile: the caller's next read adopts the removal
        except ChangeWaiting as exc:
            self._waiting.warning("add-back", "%s; adding it back once the registry lets it: "
                                  "%s", why, exc)
            return False
        if self.config.name not in current.members:
            log.warning("%s: added it back", why)
        return True

    # ---- confirmations (docs/design.md, "One change at a time is safe") ------------------

    def _is_confirmed(self, membership: Membership) -> bool:
        return self.confirmed is not None and membership.confirmed_in(self.confirmed)

    def confirm_soon(self) -> None:
        """Confirm the membership the core runs, once it is on disk and the core says every
        lease acknowledged under an older version has ended; one task at a time."""
        if self.running is None or self._is_confirmed(self.membership):
            return
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm_when_settled(),
                                                   name="membership-confirm")

    async def _confirm_when_settled(self) -> None:
        while self.running is not None:
            delay = self.settles_at() - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # an adoption meanwhile moves the moment on
            membership = self.membership
            version, names, term = self.running()
            if (version, names) != (membership.version, membership.names) \
                    or self._saved != (version, names) or self._is_confirmed(membership):
                return  # not the core's, or not on disk: the next adoption or refresh tries
            try:
                ok = await self.registry.confirm_version(self.config.name,
                                                         membership.confirmation_by(term))
            except RegistryError as exc:
                self._warn.warning("confirm", "cannot confirm membership version %d yet (%s); "
                                   "trying again on the next registry read", version, exc)
                return
            if ok and self.membership is membership:
                self.confirmed = membership.confirmation_by(term)
                log.debug("confirmed membership version %d", version)
            if self.membership is membership:
                return

    def _save_membership(self, membership: Membership) -> None:
        try:
            self.data.save_membership(membership)
        except StorageError as exc:
            self._warn.warning("members-json", "%s (the cache only helps restarts while Redis "
                               "is down; this node confirms membership version %d only once "
                               "it is written; trying again on each registry read)", exc,
                               membership.version)
            return
        self._saved = (membership.version, membership.names)

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.info("Redis reachable at %s", self.registry.url,
                     extra={"event": "redis_up", "url": self.registry.url})
        self.redis_ok, self.redis_error = True, None

    def _registry_fine(self) -> None:
        if self.registry_problem is not None:
            log.warning("registry usable again (was: %s)", self.registry_problem,
                        extra={"event": "registry_ok"})
            self.registry_problem = None

    def _registry_trouble(self, exc: RegistryError) -> None:
        """Redis down, or its data unusable: say so once per distinct problem, keep electing."""
        if self._on_error is not None:
            self._on_error(exc)
        if isinstance(exc, RegistryUnavailable):
            if self.redis_ok:
                log.warning("Redis unreachable (%s); electing on membership version %d",
                            exc, self.membership.version,
                            extra={"event": "redis_down", "error": str(exc)})
            self.redis_ok, self.redis_error = False, str(exc)
            return
        self.redis_ok, self.redis_error = True, None
        problem = str(exc)
        if problem != self.registry_problem:
            log.error("registry problem: %s; electing on membership version %d", problem,
                      self.membership.version,
                      extra={"event": "registry_problem", "problem": problem})
            self.registry_problem = problem
