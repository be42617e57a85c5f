"""The node daemon: the I/O shell around the pure election core.

It owns the HTTP server (status and peer messages), the peer client, the registry watcher and
the election timer. Only the timer and message handlers touch the core; none of them waits on
Redis, so a slow or frozen Redis cannot delay a heartbeat or stretch a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from . import __version__, auth
from .backoff import Backoff
from .config import NodeConfig
from .core import Election, HardState, Output, Send, State, quorum_of
from .errors import (
    ClusterMismatch,
    DdgError,
    MessageError,
    NameConflict,
    NoCluster,
    RegistryAuthError,
    RegistryError,
    RegistryFull,
    RegistryUnavailable,
    StorageError,
)
from .messages import KIND_OF, REPLIES, REQUESTS, Heartbeat, TimeoutNow, decode, encode
from .registry import Member, Membership, Registry
from .server import GuardedServer, ServerLimits, raise_fd_limit, read_body, serve
from .status import NodeStatus, RedisInfo, Role, StorageInfo, TimingInfo
from .storage import DataDir

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 2.0  # a peer message is a few hundred bytes: a client this slow is not a peer
MAX_HEARTBEATS_IN_FLIGHT = 2  # per peer; more would only queue behind a dead link
# All peers together: a membership full of dead or black-holed addresses must not take the
# event loop (and so `GET /`) with it. Hand-overs are never dropped.
MAX_OUTGOING = 64
PEER_BACKOFF_MAX = 1.0  # a peer that keeps failing is tried at most this rarely
WARN_EVERY = 60.0  # seconds between two log lines about the same recurring problem
log = logging.getLogger("ddg.node")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for EVENT at most SECONDS. (Python 3.11's wait_for can swallow a cancellation
    that races with completion; asyncio.timeout cannot.)"""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON reason with a 4xx/5xx status, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason or "error")
    except MessageError as exc:
        return json_error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_error(500, "internal error; see the node's log")


class Node:
    def __init__(self, config: NodeConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.data = DataDir(config.data_dir)
        self.registry = Registry(config.redis_url, config.cluster,
                                 password=config.redis_password)
        self.verifier = (None if config.secret is None
                         else auth.Verifier(config.secret, recipient=config.name))
        self.membership = Membership()
        self.node_id = ""
        self.core: Election | None = None
        self.started = time.monotonic()
        self.registered = False
        self.redis_ok = False
        self.redis_error: str | None = "not connected yet"
        self.registry_problem: str | None = None  # bad data, another cluster, refused login
        self.joining: str | None = None  # why the node has not joined yet
        self.fsync_last_ms: float | None = None
        self.fsync_max_ms = 0.0
        self.http: GuardedServer | None = None
        self.isolated: set[str] = set()
        self.isolated_all = False
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()  # set once registered and the core exists
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight: dict[str, int] = {}
        self._outgoing = 0
        self._peer_backoff: dict[str, Backoff] = {}
        self._peer_retry_at: dict[str, float] = {}
        self._persist_lock = asyncio.Lock()
        self._on_disk: HardState | None = None
        self._warned: dict[str, float] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None
        self.rpc_timeout = ClientTimeout(total=config.timing.election_min)

    # ---- lifecycle -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_as_json])
        app.router.add_get("/", self.handle_root)
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/healthz", self.handle_healthz)
        for kind in REQUESTS:
            app.router.add_post(f"/raft/{kind}", self.handle_raft)
        app.router.add_post("/admin/partition", self.handle_partition)
        app.router.add_post("/admin/heal", self.handle_heal)
        app.cleanup_ctx.append(self._background)
        return app

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        self._session = ClientSession(connector=TCPConnector(limit=MAX_OUTGOING + 8))
        loops = [asyncio.create_task(self._run_ticker(), name="ticker"),
                 asyncio.create_task(self._watch_registry(), name="registry")]
        for task in loops:
            task.add_done_callback(self._loop_ended)
        yield
        extra = [self._refreshing] if self._refreshing is not None else []
        for task in loops + extra + list(self._tasks):
            task.cancel()
        await asyncio.gather(*loops, *extra, *self._tasks, return_exceptions=True)
        await self._session.close()

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("%s loop failed; stopping", task.get_name(), exc_info=task.exception())
            self.exit_code = 1
            self.stop_event.set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or removal from the registry; returns the exit code."""
        self.data.open()
        try:
            code = await self._serve()
        finally:
            self.data.close()
        log.info("stopped (exit code %d)", code)
        return code

    async def _serve(self) -> int:
        hard = self.data.load_hard_state()
        self._on_disk = hard
        cached = self.data.load_membership()
        self.node_id = self.data.node_id()
        soft, hard_fds = raise_fd_limit()
        try:
            self.http = await serve(self.make_app(), self.config.host, self.config.port,
                                    limits=ServerLimits())
        except OSError as exc:  # serve() has cleaned up
            raise DdgError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        log.debug("fd limit %d (hard %d); at most %d connections", soft, hard_fds,
                  self.http.cap)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            membership = await self._join(cached)
            if membership is None:  # stopped while waiting for Redis
                return self.exit_code
            self.membership = membership
            self.core = Election(
                name=self.config.name, timing=self.config.timing, rng=self.rng,
                now=time.monotonic(), members=membership.names, version=membership.version,
                hard=hard, trust_transfers=self.config.signed,
            )
            self._ready.set()
            log.info("serving %s as %s in cluster %r: term %d, members %s (version %d)",
                     self.config.address, self.config.name, self.config.cluster, hard.term,
                     ",".join(sorted(membership.names)), membership.version)
            if not self.config.signed:
                log.info("peer messages are not signed: fine on loopback only; set "
                         "DDG_CLUSTER_SECRET (the same on every node) to sign them")
            self._wake.set()
            await self.stop_event.wait()
            await self._hand_over()
            return self.exit_code
        finally:
            # The handlers stay until the loop closes: a SIGTERM that arrives while the node is
            # already leaving must not kill it half-way.
            await self.http.close()
            await self.registry.close()

    def _on_signal(self, sig: int) -> None:
        if self.core is None:
            log.info("received %s: stopping before joining the cluster",
                     signal.Signals(sig).name)
        else:
            log.info("received %s: stopping (this node stays a member)",
                     signal.Signals(sig).name)
        self.stop_event.set()

    def _member(self) -> Member:
        return Member(self.config.name, self.config.address, time.time(), self.node_id)

    async def _join(self, cached: Membership | None) -> Membership | None:
        """Join the cluster the registry holds (or create it with --bootstrap), waiting for
        Redis unless a cached membership of this node's cluster lets it go on."""
        # Short: a fresh node waiting for the members to restore the registry joins within
        # half a second of it.
        backoff = Backoff(initial=0.1, maximum=0.5, rng=self.rng)
        known = cached is not None and cached.cluster_id is not None
        while not self.stop_event.is_set():
            try:
                membership = await self._register(cached)
            except (NameConflict, RegistryFull, RegistryAuthError):
                raise
            except NoCluster as exc:
                self.joining = "waiting for the cluster to exist in Redis"
                self._redis_up()
                self._warn_every("no-cluster", "%s", exc)
            except RegistryError as exc:
                self._registry_trouble(exc)
                if known and cached is not None and self.config.name in cached.members:
                    log.warning("registry unusable (%s); electing on the cached membership "
                                "(version %d) until it is back", exc, cached.version)
                    return cached
                self.joining = "waiting for Redis"
                self._warn_every("join", "waiting for the registry at %s (%s)",
                                 self.registry.url, exc)
            else:
                self.joining = None
                return membership
            await wait_event(self.stop_event, backoff.next())
        return None

    async def _register(self, cached: Membership | None) -> Membership:
        """One attempt. A node that knows its cluster puts back what Redis lost before adding
        itself; a fresh node joins only a cluster that exists (docs/design.md, Bootstrap)."""
        member = self._member()
        current = await self.registry.read()
        if cached is not None and cached.cluster_id is not None:
            await self._reconcile(cached, current)
            await self.registry.add(member, cluster_id=cached.cluster_id)
        else:
            if current.cluster_id is None:
                # A cache from before cluster ids: the cluster existed, so it may be re-made.
                legacy = cached is not None and self.config.name in cached.members
                if not (self.config.bootstrap or legacy):
                    raise NoCluster(
                        f"cluster {self.config.cluster!r} does not exist in Redis at "
                        f"{self.registry.url}: waiting for its members to restore it, or start "
                        "its first node with --bootstrap")
                cid, created = await self.registry.create(member)
                if created:
                    log.warning("created cluster %r (id %s) in Redis at %s",
                                self.config.cluster, cid, self.registry.url)
            elif self.config.bootstrap:
                log.info("--bootstrap ignored: cluster %r exists (id %s); joining it",
                         self.config.cluster, current.cluster_id)
            await self.registry.add(member, cluster_id=None)
        membership = await self.registry.read()
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
                            len(snapshot.members), version)
            current = await self.registry.read()
        return current

    async def _hand_over(self) -> None:
        """A goose stopping gracefully hands leadership to an up-to-date duck first."""
        if self.core is None or self.core.state is not State.GOOSE:
            return
        out = self.core.transfer_leadership(time.monotonic())
        await self._apply(out, send=False)
        await asyncio.gather(*(self._deliver(s) for s in out.sends), return_exceptions=True)

    # ---- timer ---------------------------------------------------------------------------

    async def _run_ticker(self) -> None:
        while True:
            core = self.core
            if core is not None:
                await self._apply(core.tick(time.monotonic()))
                delay = core.next_deadline() - time.monotonic()
            else:
                delay = math.inf
            self._wake.clear()
            # Cap the sleep so a missed wake-up costs at most one heartbeat interval.
            delay = min(max(delay, 0.0), self.config.timing.heartbeat)
            await wait_event(self._wake, delay)

    async def _apply(self, out: Output, *, send: bool = True) -> None:
        """Persist, log, then send: nothing leaves before the term and vote are on disk.

        The write runs in a thread so a slow disk never stalls `GET /`; the lock keeps outputs
        in order, so a later output (which may depend on that state) waits for the write too.
        """
        async with self._persist_lock:
            if out.persist is not None and out.persist != self._on_disk:
                await self._persist(out.persist)
        for event in out.events:
            log.info("%s", event)
        if self.core is not None and self.core.state is State.REMOVED:
            self.stop_event.set()
        if send:
            for s in out.sends:
                self._spawn(s)
        self._wake.set()

    async def _persist(self, hard: HardState) -> None:
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self.data.save_hard_state, hard)
        except StorageError as exc:
            log.critical("%s; stopping so no vote is given that is not on disk", exc)
            self.exit_code = 1
            self.stop_event.set()
            raise
        took = (time.monotonic() - t0) * 1000
        self.fsync_last_ms, self.fsync_max_ms = took, max(self.fsync_max_ms, took)
        if took > self.config.timing.heartbeat_ms:
            self._warn_every("fsync", "writing the term and vote took %.0f ms (a slow disk "
                             "delays votes and heartbeats)", took)
        self._on_disk = hard
        if self.core is not None:
            self.core.persisted(hard)

    def _warn_every(self, key: str, msg: str, *args: Any) -> None:
        """Log a recurring problem once, then at most every WARN_EVERY seconds."""
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= WARN_EVERY:
            self._warned[key] = now
            log.warning(msg, *args)

    # ---- peers ---------------------------------------------------------------------------

    def _blocked(self, peer: str) -> bool:
        return self.isolated_all or peer in self.isolated

    def _spawn(self, send: Send) -> None:
        if self._blocked(send.to):
            return
        if not isinstance(send.msg, TimeoutNow):
            if self._outgoing >= MAX_OUTGOING:
                return
            if time.monotonic() < self._peer_retry_at.get(send.to, -math.inf):
                return  # it keeps failing: try it again after its backoff
            if (isinstance(send.msg, Heartbeat)
                    and self._in_flight.get(send.to, 0) >= MAX_HEARTBEATS_IN_FLIGHT):
                return
        task = asyncio.create_task(self._deliver(send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, send: Send) -> None:
        address = self.membership.address_of(send.to)
        if address is None or self._session is None:
            return
        kind = KIND_OF[type(send.msg)]
        path = f"/raft/{kind}"
        body = json.dumps(encode(send.msg, version=self.membership.version)).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.secret is not None:
            headers |= auth.sign_headers(self.config.secret, "POST", path, body,
                                         recipient=send.to)
        self._in_flight[send.to] = self._in_flight.get(send.to, 0) + 1
        self._outgoing += 1
        try:
            async with self._session.post(address + path, data=body, headers=headers,
                                          timeout=self.rpc_timeout) as resp:
                if resp.status != 200:
                    reason = (await resp.text())[:200]
                    log.debug("%s %s -> %d %s", send.to, kind, resp.status, reason)
                    if resp.status == 401:
                        self._warn_every(f"401:{send.to}", "%s refused our signature: %s "
                                         "(is the cluster secret the same on every node?)",
                                         send.to, reason)
                    self._peer_failed(send.to)
                    return
                data = await resp.json(content_type=None)
            self._peer_ok(send.to)
            reply_cls = REPLIES[type(send.msg)]
            if reply_cls is None:
                return
            reply, version = decode(reply_cls, data)
        except (ClientError, TimeoutError, MessageError, ValueError, RecursionError) as exc:
            log.debug("%s %s failed: %s", send.to, kind, str(exc) or type(exc).__name__)
            self._peer_failed(send.to)
            return
        finally:
            self._in_flight[send.to] -= 1
            self._outgoing -= 1
        if reply.sender != send.to or self._blocked(send.to) or self.core is None:
            return
        self._observe_version(version)
        out = self.core.step(reply, time.monotonic())
        if out.refused:
            self._warn_every(f"refused:{send.to}", "not believing %s's reply: %s",
                             send.to, out.refused)
        await self._apply(out)

    def _peer_failed(self, peer: str) -> None:
        backoff = self._peer_backoff.get(peer)
        if backoff is None:
            backoff = self._peer_backoff[peer] = Backoff(
                initial=self.config.timing.heartbeat, maximum=PEER_BACKOFF_MAX, rng=self.rng)
            return  # one failure is a lost packet, not a dead peer
        self._peer_retry_at[peer] = time.monotonic() + backoff.next()

    def _peer_ok(self, peer: str) -> None:
        if self._peer_backoff.pop(peer, None) is not None:
            self._peer_retry_at.pop(peer, None)

    def _observe_version(self, version: int) -> None:
        if version > self.membership.version:
            self._refresh_soon()

    # ---- registry ------------------------------------------------------------------------

    async def _watch_registry(self) -> None:
        await self._ready.wait()
        backoff = Backoff(initial=0.1, maximum=1.0, rng=self.rng)
        while True:
            try:
                async for _ in self.registry.changes(self.config.refresh_interval):
                    try:
                        await self._refresh()
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

    def _refresh_soon(self) -> asyncio.Task[None]:
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
        current = await self.registry.read()
        self._redis_up()
        current = await self._reconcile(self.membership, current)
        if not self.registered:
            await self.registry.add(self._member(), cluster_id=self.membership.cluster_id)
            self.registered = True
            current = await self.registry.read()
        self._registry_fine()
        if current.version < self.membership.version:
            return  # a restore that lost a race; the next read sees the winner
        if (self.config.name not in current.members and self.config.name in self.membership.members
                and not await self.registry.was_removed(self.node_id)):
            # A member restored a membership older than this node's join: put it back.
            log.warning("membership version %d lost this node's entry (restored from an older "
                        "membership, not removed); adding it back", current.version)
            await self.registry.add(self._member(), cluster_id=self.membership.cluster_id)
            current = await self.registry.read()
            if self.config.name not in current.members:
                return  # flushed again: the next refresh tries again
        if (current.version == self.membership.version and current.names == self.membership.names
                and current.members == self.membership.members):
            return
        self.membership = current
        self._save_membership(current)
        if self.core is not None:
            log.info("membership version %d: %s", current.version, ",".join(sorted(current.names)))
            await self._apply(self.core.set_membership(current.names, current.version,
                                                       time.monotonic()))

    def _save_membership(self, membership: Membership) -> None:
        try:
            self.data.save_membership(membership)
        except StorageError as exc:
            log.warning("%s (the cache only helps restarts while Redis is down)", exc)

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.info("Redis reachable at %s", self.registry.url)
        self.redis_ok, self.redis_error = True, None

    def _registry_fine(self) -> None:
        if self.registry_problem is not None:
            log.warning("registry usable again (was: %s)", self.registry_problem)
            self.registry_problem = None

    def _registry_trouble(self, exc: RegistryError) -> None:
        """Redis down, or its data unusable: say so once per distinct problem, keep electing."""
        if isinstance(exc, RegistryUnavailable):
            if self.redis_ok:
                log.warning("Redis unreachable (%s); electing on membership version %d",
                            exc, self.membership.version)
            self.redis_ok, self.redis_error = False, str(exc)
            return
        self.redis_ok, self.redis_error = True, None
        problem = str(exc)
        if problem != self.registry_problem:
            log.error("registry problem: %s; electing on membership version %d", problem,
                      self.membership.version)
            self.registry_problem = problem

    # ---- HTTP ----------------------------------------------------------------------------

    async def handle_root(self, request: web.Request) -> web.Response:
        goose = self.core is not None and self.core.is_goose(time.monotonic())
        return web.Response(text=Role.GOOSE if goose else Role.DUCK)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status().to_json())

    def status(self) -> NodeStatus:
        """One reading of the core and the shell, at one instant."""
        now = time.monotonic()
        snap = self.core.snapshot(now) if self.core is not None else None
        t = self.config.timing

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        shell = NodeStatus(
            name=self.config.name, role=Role.DUCK, term=0,
            state="joining" if self.joining else "starting",
            quorum=quorum_of(len(self.membership.names)),
            cluster=self.config.cluster, address=self.config.address, pid=os.getpid(),
            version=__version__, node_id=self.node_id, cluster_id=self.membership.cluster_id,
            security=self.config.security, joining=self.joining,
            members=tuple(sorted(self.membership.names)),
            membership_version=self.membership.version, uptime_s=round(now - self.started, 3),
            redis=RedisInfo(connected=self.redis_ok, error=self.redis_error,
                            problem=self.registry_problem, url=self.registry.url),
            storage=StorageInfo(
                fsync_last_ms=None if self.fsync_last_ms is None else round(self.fsync_last_ms, 2),
                fsync_max_ms=round(self.fsync_max_ms, 2)),
            http=self.http.stats.as_dict() if self.http is not None else None,
            isolated_from=tuple(self._isolated_names()),
            timing=TimingInfo(heartbeat_ms=t.heartbeat_ms,
                              election_timeout_ms=(t.election_timeout_min_ms,
                                                   t.election_timeout_max_ms),
                              lease_ms=round(t.lease * 1000, 1)),
        )
        if snap is None:
            return shell
        c = snap.counters
        return replace(
            shell, role=snap.role, term=snap.term, state=snap.state.value, goose=snap.goose,
            voted_for=snap.voted_for, quorum=snap.quorum,
            heartbeat_age_ms=ms(snap.heard_ago), lease_remaining_ms=ms(snap.lease_remaining),
            elections_started=c.elections_started, pre_votes_started=c.pre_votes_started,
            elections_won=c.elections_won, step_downs=c.step_downs,
            heartbeats_sent=c.heartbeats_sent, heartbeats_received=c.heartbeats_received)

    def _isolated_names(self) -> list[str]:
        if self.isolated_all:
            return sorted(self.membership.names - {self.config.name})
        return sorted(self.isolated)

    async def _signed_body(self, request: web.Request) -> bytes:
        body = await read_body(request, limit=MAX_BODY, timeout=BODY_TIMEOUT)
        if self.verifier is not None:
            reason = self.verifier.check(request.headers, request.method, request.path, body)
            if reason is not None:
                raise MessageError(reason, status=401)
        return body

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MessageError("body is not valid JSON") from None
        except RecursionError:
            raise MessageError("body is nested too deeply") from None

    async def handle_raft(self, request: web.Request) -> web.Response:
        kind = request.path.rsplit("/", 1)[-1]
        body = await self._signed_body(request)
        msg, version = decode(REQUESTS[kind], self._json(body))
        core = self.core
        if core is None:
            return json_error(503, "node is starting")
        if msg.sender == self.config.name:
            return json_error(400, "message claims to come from this node")
        if msg.sender not in self.membership.members or version > self.membership.version:
            refresh = self._refresh_soon()
            if msg.sender not in self.membership.members:
                # Unknown sender: maybe a member that joined since our last read. Ask once.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.registry.timeout):
                        await asyncio.shield(refresh)
                if msg.sender not in self.membership.members:
                    return json_error(403, f"{msg.sender!r} is not a member of cluster "
                                           f"{self.config.cluster!r}")
        if self._blocked(msg.sender):
            return json_error(503, "partitioned by fault injection")
        self._peer_ok(msg.sender)  # it is alive: send to it again at once
        out = core.step(msg, time.monotonic())
        if out.refused:
            self._warn_every(f"refused:{msg.sender}", "not believing %s: %s", msg.sender,
                             out.refused)
            return json_error(400, out.refused)
        await self._apply(out)
        if out.reply is None:  # TimeoutNow has no answer but an acknowledgement
            return web.json_response({"term": core.term, "sender": self.config.name,
                                      "version": self.membership.version})
        return web.json_response(encode(out.reply, version=self.membership.version))

    async def _admin_peers(self, request: web.Request) -> tuple[bool, set[str]]:
        if not self.config.allow_fault_injection:
            raise MessageError("fault injection is disabled; start the node with "
                               "--allow-fault-injection", status=403)
        data = self._json(await self._signed_body(request))
        if not isinstance(data, dict) or set(data) - {"peers", "all"}:
            raise MessageError("body must be {\"peers\": [names]} or {\"all\": true}")
        everyone = data.get("all", False)
        peers = data.get("peers", [])
        if not isinstance(everyone, bool) or not isinstance(peers, list) or not all(
            isinstance(p, str) for p in peers
        ):
            raise MessageError("'all' must be a boolean and 'peers' a list of names")
        return everyone, set(peers)

    async def handle_partition(self, request: web.Request) -> web.Response:
        everyone, peers = await self._admin_peers(request)
        unknown = peers - self.membership.names
        if unknown:
            raise MessageError(f"not members: {', '.join(sorted(unknown))}")
        if self.config.name in peers:
            raise MessageError("a node cannot be partitioned from itself")
        if not everyone and not peers:
            raise MessageError("name at least one peer, or set \"all\": true")
        self.isolated_all = self.isolated_all or everyone
        self.isolated |= peers
        log.warning("fault injection: dropping messages to and from %s",
                    "all peers" if self.isolated_all else ",".join(sorted(self.isolated)))
        return web.json_response({"isolated_from": self._isolated_names()})

    async def handle_heal(self, request: web.Request) -> web.Response:
        everyone, peers = await self._admin_peers(request)
        if peers and not everyone:
            self.isolated -= peers
        else:
            self.isolated.clear()
            self.isolated_all = False
        log.warning("fault injection: healed; isolated from %s",
                    ",".join(self._isolated_names()) or "nobody")
        return web.json_response({"isolated_from": self._isolated_names()})


async def run_node(config: NodeConfig) -> int:
    return await Node(config).run()
