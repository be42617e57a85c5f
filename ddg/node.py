"""The node daemon: the I/O shell around the pure election core.

It owns the lifecycle, the HTTP handlers, the election timer and the term/vote persistence.
The peer transport (peers.py), the membership sync with Redis (membership.py) and fault
injection (partitions.py) are its parts. Only the timer and message handlers touch the core;
none of them waits on Redis, so a slow or frozen Redis cannot delay a heartbeat or stretch a
lease.
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

from aiohttp import web

from . import __version__, auth
from .changes import Changes, View
from .clockrate import max_rate_error
from .clustertiming import ClusterTiming
from .config import JointTiming, NodeConfig
from .core import Election, HardState, Output, State, quorum_of
from .errors import DdgError, MessageError, StorageError
from .hold import Holder, HoldServer
from .job import Jobs
from .membership import MembershipSync
from .messages import REQUESTS, Message, decode, encode
from .metrics import NodeMetrics
from .partitions import Partitions, parse_listener_fault
from .peers import PeerTransport
from .ratelimit import LogThrottle, Throttle
from .registry import Membership, Registry
from .server import GuardedServer, ServerLimits, raise_fd_limit, read_body, serve
from .status import ClockInfo, NodeStatus, Role, StorageInfo
from .stopping import StopDeadline, cancel_and_wait, stop_deadline
from .storage import DataDir
from .tls import CERT_DOES_NOT_NAME, CLIENT_CERT_REQUIRED, peer_names, peer_verified
from .watch import Watchers

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 2.0  # a peer message is a few hundred bytes: a client this slow is not a peer
WARN_EVERY = 60.0  # seconds between two log lines about the same recurring problem
log = logging.getLogger("ddg.node")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MessageError("body is not valid JSON") from None
    except RecursionError:
        raise MessageError("body is nested too deeply") from None


class Node:
    """REGISTRY and DATA may be given (tests run the HTTP contract in-process with them);
    by default they come from the config. STOP_DEADLINE (the ddg-node process sets it; see
    ddg/stopping.py): once a stop begins, the process ends within that many seconds, or at
    a second SIGTERM/SIGINT, whatever a task does."""

    def __init__(self, config: NodeConfig, *, rng: random.Random | None = None,
                 registry: Registry | None = None, data: DataDir | None = None,
                 stop_deadline: float | None = None) -> None:
        self.config = config
        self.deadline = None if stop_deadline is None else StopDeadline(stop_deadline)
        self.rng = rng or random.Random()
        self.data = data or DataDir(config.data_dir)
        self.warn = LogThrottle(log, WARN_EVERY)
        self.metrics = NodeMetrics(
            name=config.name, status=self.status,
            counters=lambda: None if self.core is None else self.core.counters)
        registry = registry or Registry(config.redis, config.cluster)
        self.timing = ClusterTiming(config=config, registry=registry, data=self.data,
                                    warn=self.warn)
        self.sync = MembershipSync(
            config=config, rng=self.rng, data=self.data, warn=self.warn, registry=registry,
            on_change=self._membership_changed, on_error=self.metrics.registry_error,
            timing=self.timing)
        self.partitions = Partitions()
        self.peers = PeerTransport(
            config=config, rng=self.rng, address_of=self._address_of,
            version=self._version, blocked=self.partitions.blocked,
            on_reply=self._on_reply, warn=self.warn, metrics=self.metrics)
        self.holds = HoldServer(config.timing)
        self.holder = Holder(config=config, session=lambda: self.peers.session,
                             address_of=self._address_of, blocked=self.partitions.blocked,
                             on_lost=self._goose_lost, warn=self.warn)
        self.verifier = (None if config.secret is None
                         else auth.Verifier(config.secret, recipient=config.name))
        self.core: Election | None = None
        self.started = time.monotonic()
        self.fsync_last_ms: float | None = None
        self.fsync_max_ms = 0.0
        self.http: GuardedServer | None = None
        self.changes = Changes()
        self.changes.listen(self.metrics.observe)
        self.jobs = Jobs(config.job, config.on_change, node=config.name, cluster=config.cluster)
        self.changes.listen(self.jobs.on_change)  # before the watchers: SIGTERM at once
        self.watchers = Watchers(node=config.name, status=self.status)
        self.changes.listen(self.watchers.publish)
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self._wake = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._on_disk: HardState | None = None
        self._clock_nag: Throttle | None = None  # while peers contradict this node's clock

    @property
    def membership(self) -> Membership:
        return self.sync.membership

    def _address_of(self, name: str) -> str | None:
        return self.sync.membership.address_of(name)

    def _version(self) -> int:
        """The membership version the core runs: what every message says (a peer refuses a
        candidate or goose of an older one)."""
        return self.core.version if self.core is not None else self.sync.membership.version

    # ---- lifecycle -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_as_json])
        app.router.add_get("/", self.handle_root)
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/watch", self.watchers.handle)
        for kind in REQUESTS:
            app.router.add_post(f"/raft/{kind}", self.handle_raft)
        app.router.add_get("/raft/hold/{name}", self.handle_hold)
        app.router.add_post("/admin/partition", self.handle_partition)
        app.router.add_post("/admin/heal", self.handle_heal)
        app.router.add_post("/admin/fault/close-listener", self.handle_close_listener)
        app.router.add_post("/admin/fault/open-listener", self.handle_open_listener)
        app.cleanup_ctx.append(self._background)
        app.cleanup_ctx.append(self.jobs.context)  # stops --exec's command before exiting
        app.on_shutdown.append(self.watchers.shutdown)  # ends /watch streams: no delay
        app.on_shutdown.append(self.holds.shutdown)  # `bye`: a stop is not taken for a crash
        return app

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        await self.peers.start()
        ticker = asyncio.create_task(self._run_ticker(), name="ticker")
        holder = asyncio.create_task(self.holder.run(), name="hold")
        for task in (ticker, holder):
            task.add_done_callback(self._loop_ended)
        yield
        await cancel_and_wait(ticker, holder)
        await self.sync.close()
        await self.timing.close()
        await self.peers.close()

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
        log.info("stopped (exit code %d)", code, extra={"event": "stopped", "exit_code": code})
        return code

    async def _serve(self) -> int:
        hard = self.data.load_hard_state()
        self._on_disk = hard
        cached = self.data.load_membership()
        self.timing.cached = self.data.load_timing()
        self.sync.node_id = self.data.node_id()
        soft, hard_fds = raise_fd_limit()
        try:
            tls = self.config.tls
            self.http = await serve(self.make_app(), self.config.host, self.config.port,
                                    limits=ServerLimits(),
                                    ssl=tls.server_context() if tls and tls.serving else None)
        except OSError as exc:  # serve() has cleaned up
            raise DdgError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        log.debug("fd limit %d (hard %d); at most %d connections", soft, hard_fds,
                  self.http.cap)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        watcher: asyncio.Task[None] | None = None
        try:
            membership = await self.sync.join(cached, self.stop_event)
            if membership is None:  # stopped while waiting for Redis
                return self.exit_code
            self.sync.membership = membership
            timing = await self.timing.start(self.sync.joined_timing)
            self.core = Election(
                name=self.config.name, timing=timing, rng=self.rng,
                now=time.monotonic(), members=membership.names, version=membership.version,
                hard=hard, trust_transfers=self.config.authenticated,
                term_floor=membership.term_floor,
            )
            self._timing_changed_to(timing)
            core = self.core
            self.timing.apply = self._set_timing
            self.timing.settled = lambda: core.timing_settled(time.monotonic())
            self.timing.settles_at = lambda: core.timing_settles_at
            self.timing.is_goose = lambda: core.state is State.GOOSE
            self.sync.running = lambda: (core.version, core.members, core.term)
            self.sync.settles_at = lambda: core.membership_settles_at
            self.sync.confirm_soon()
            self.observe()
            watcher = asyncio.create_task(self.sync.watch(), name="registry")
            watcher.add_done_callback(self._loop_ended)
            log.info("serving %s as %s in cluster %r: term %d, members %s (version %d)",
                     self.config.address, self.config.name, self.config.cluster, hard.term,
                     ",".join(sorted(membership.names)), membership.version,
                     extra={"event": "started", "term": hard.term,
                            "address": self.config.address,
                            "members": sorted(membership.names),
                            "membership_version": membership.version})
            if not self.config.authenticated:
                log.info("peer messages are not signed: fine on loopback only; set "
                         "DDG_CLUSTER_SECRET (the same on every node) to sign them, or use "
                         "mutual TLS (--tls-client-auth)")
            self._wake.set()
            await self.stop_event.wait()
            await self._hand_over()
            return self.exit_code
        finally:
            self._begin_stop("the stop began")
            if watcher is not None:
                await cancel_and_wait(watcher)
            # The signal handlers stay to the end: a SIGTERM that arrives while the node is
            # already leaving never meets the default action half-way; with a stop deadline
            # it ends the process at once, on purpose (ddg/stopping.py).
            await self.http.close()
            await self.sync.registry.close()

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        extra = {"event": "stopping", "signal": name}
        if self.core is None:
            log.info("received %s: stopping before joining the cluster", name, extra=extra)
        else:
            log.info("received %s: stopping (this node stays a member)", name, extra=extra)
        self._begin_stop(name)
        self.stop_event.set()

    def _begin_stop(self, why: str) -> None:
        """Start the stop's deadline (once); from now on SIGTERM and SIGINT end the process."""
        if self.deadline is not None:
            self.deadline.begin(why, asyncio.get_running_loop())

    async def _hand_over(self) -> None:
        """A goose stopping gracefully hands leadership to an up-to-date duck first."""
        if self.core is None or self.core.state is not State.GOOSE:
            return
        out = self.core.transfer_leadership(time.monotonic())
        await self._apply(out, send=False)
        await asyncio.gather(*(self.peers.deliver(s) for s in out.sends),
                             return_exceptions=True)

    # ---- timer and core ------------------------------------------------------------------

    async def _run_ticker(self) -> None:
        while True:
            core = self.core
            if core is not None:
                await self._apply(core.tick(time.monotonic()))
                self.observe()  # a deadline of the clock alone (a lease edge) changes the role
                self._remind_clock(core)
                delay = core.next_deadline() - time.monotonic()
            else:
                delay = math.inf
            self._wake.clear()
            # Cap the sleep so a missed wake-up costs at most one heartbeat interval.
            delay = min(max(delay, 0.0), self.heartbeat)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _apply(self, out: Output, *, send: bool = True) -> None:
        """Persist, log, then send: nothing leaves before the term and vote are on disk.

        The write runs in a thread so a slow disk never stalls `GET /`; the lock keeps outputs
        in order, so a later output (which may depend on that state) waits for the write too.
        """
        async with self._persist_lock:
            if out.persist is not None and out.persist != self._on_disk:
                await self._persist(out.persist)
        for event in out.events:
            level = logging.DEBUG if event.debug else logging.ERROR if event.error else logging.INFO
            log.log(level, "%s", event.text, extra={"event": event.name, **event.fields})
        self.observe()
        if self.core is not None and self.core.state is State.REMOVED:
            self.stop_event.set()
        if send:
            for s in out.sends:
                self.peers.send(s)
        self._wake.set()

    async def _persist(self, hard: HardState) -> None:
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self.data.save_hard_state, hard)
        except StorageError as exc:
            log.critical("%s; stopping so no vote is given that is not on disk", exc,
                         extra={"event": "storage_failed"})
            self.exit_code = 1
            self.stop_event.set()
            raise
        took = (time.monotonic() - t0) * 1000
        self.metrics.fsync_took(took / 1000)
        self.fsync_last_ms, self.fsync_max_ms = took, max(self.fsync_max_ms, took)
        if took > self.heartbeat * 1000:
            self.warn.warning("fsync", "writing the term and vote took %.0f ms (a slow disk "
                              "delays votes and heartbeats)", took)
        self._on_disk = hard
        if self.core is not None:
            self.core.persisted(hard)

    def _remind_clock(self, core: Election) -> None:
        """While peers contradict this node's clock, say so again once every WARN_EVERY (the
        core's event said it first)."""
        if not core.clock.contradicted:
            self._clock_nag = None
            return
        if self._clock_nag is None:
            self._clock_nag = Throttle(WARN_EVERY)
            self._clock_nag.allow()
        elif self._clock_nag.allow() is not None:
            rates = core.clock.rates(time.monotonic())
            log.error("this node's clock rate is still contradicted by its peers (its rate "
                      "relative to theirs: %s); not leading",
                      ", ".join(f"{p} {r:.3f}x" for p, r in rates.items()) or "no recent "
                      "evidence", extra={"event": "clock_contradicted", "term": core.term})

    def observe(self) -> None:
        """Tell the listeners if the role, term, goose or membership changed."""
        core = self.core
        if core is None:
            return
        # On the goose this runs for every acknowledgement: read only what a View holds (no
        # snapshot with its copy of the counters).
        now = time.monotonic()
        change = self.changes.observe(
            View(role=core.reported_role(now), state=core.state.value, term=core.term,
                 goose=core.known_goose(now), members=tuple(sorted(core.members)),
                 version=core.version),
            at=now, wall=time.time())
        if core.state is State.GOOSE:
            self.holds.became_goose()
        else:
            self.holds.stopped_being_goose()
        self.holder.follow(core.leader if core.state is State.DUCK else None)
        if change is not None and change.previous is not None \
                and change.previous.role != change.view.role:
            # the instant the answer on GET / changed: what failover times are measured to
            log.info("now answering %s (term %d)", change.view.role.value, change.view.term)

    async def _on_reply(self, reply: Message, version: int) -> None:
        if self.core is None:
            return
        self.sync.observe_version(version)
        out = self.core.step(reply, time.monotonic())
        if out.refused:
            self.warn.warning(f"refused:{reply.sender}", "not believing %s's reply: %s",
                              reply.sender, out.refused)
        await self._apply(out)

    async def _goose_lost(self, goose: str) -> None:
        if self.core is not None:
            await self._apply(self.core.goose_lost(goose, time.monotonic()))

    @property
    def heartbeat(self) -> float:
        """The heartbeat in force (the cluster's timing, once the core runs)."""
        return (self.core.timing if self.core is not None else self.config.timing).heartbeat

    async def _set_timing(self, timing: JointTiming) -> None:
        """The cluster's timing record changed (ddg/clustertiming.py)."""
        if self.core is not None:
            await self._apply(self.core.set_timing(timing, time.monotonic()))
        self._timing_changed_to(timing)

    def _timing_changed_to(self, timing: JointTiming) -> None:
        self.holds.announce(timing)
        self.holder.timing = timing
        self.peers.timing = timing
        if self.deadline is not None:  # the hand-over waits up to the cluster's Tmin
            self.deadline.seconds = max(self.deadline.seconds,
                                        stop_deadline(self.config, timing))

    async def _membership_changed(self, membership: Membership) -> None:
        if self.core is not None:
            await self._apply(self.core.set_membership(membership.names, membership.version,
                                                       time.monotonic(), membership.term_floor))

    # ---- HTTP ----------------------------------------------------------------------------

    async def handle_root(self, request: web.Request) -> web.Response:
        goose = self.core is not None and self.core.is_goose(time.monotonic())
        return web.Response(text=Role.GOOSE if goose else Role.DUCK)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status().to_json())

    def status(self) -> NodeStatus:
        """One reading of the core and the shell, at one instant."""
        now = time.monotonic()
        snap = self.core.snapshot(now) if self.core is not None else None
        members = self.membership.names

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 1)

        shell = NodeStatus(
            name=self.config.name, role=Role.DUCK, term=0,
            state="joining" if self.sync.joining else "starting",
            quorum=quorum_of(len(members)),
            cluster=self.config.cluster, address=self.config.address, pid=os.getpid(),
            version=__version__, node_id=self.sync.node_id,
            cluster_id=self.membership.cluster_id, security=self.config.security,
            joining=self.sync.joining, members=tuple(sorted(members)),
            membership_version=self.membership.version, uptime_s=round(now - self.started, 3),
            redis=self.sync.info(),
            storage=StorageInfo(
                fsync_last_ms=None if self.fsync_last_ms is None else round(self.fsync_last_ms, 2),
                fsync_max_ms=round(self.fsync_max_ms, 2)),
            http=self.http.stats.as_dict() if self.http is not None else None,
            isolated_from=tuple(self.partitions.isolated_from(members, self.config.name)),
            timing=self.timing.info(
                None if self.core is None else self.core.timing,
                None if self.core is None else self.core.longest_lease(now)),
            clock=ClockInfo(rate_bound=round(max_rate_error(
                (self.core.timing if self.core is not None else self.config.timing).drift_margin),
                4)),
        )
        if snap is None:
            return shell
        c = snap.counters
        since = self.changes.role_since
        return replace(
            shell, role=snap.role, term=snap.term, state=snap.state.value, goose=snap.goose,
            role_since_ms=None if since is None else ms(now - since),
            voted_for=snap.voted_for, quorum=snap.quorum,
            heartbeat_age_ms=ms(snap.heard_ago), lease_remaining_ms=ms(snap.lease_remaining),
            elections_started=c.elections_started, pre_votes_started=c.pre_votes_started,
            elections_won=c.elections_won, step_downs=c.step_downs,
            heartbeats_sent=c.heartbeats_sent, heartbeats_received=c.heartbeats_received,
            hint_streams=self.holds.open,
            clock=ClockInfo(contradicted=snap.clock_contradicted, rate_bound=shell.clock.rate_bound,
                            rates={p: round(r, 4) for p, r in snap.clock_rates.items()}))

    def _client_names(self, request: web.Request) -> frozenset[str]:
        """With mutual TLS: the names the client's verified certificate speaks for; 403 for a
        client without one."""
        peercert = None if request.transport is None else \
            request.transport.get_extra_info("peercert")
        if not peer_verified(peercert):
            raise MessageError(f"{CLIENT_CERT_REQUIRED}: {request.path} needs a client "
                               "certificate signed by the cluster's CA", status=403)
        return peer_names(peercert)

    def _check_sender(self, request: web.Request, sender: str) -> None:
        """With mutual TLS, a peer message or crash-hint stream in SENDER's name only from a
        certificate that names SENDER: a certificate of the CA is not every member."""
        if not self.config.mutual_tls:
            return
        names = self._client_names(request)
        if sender not in names:
            has = ", ".join(sorted(names)[:5]) or "no member"
            raise MessageError(f"{CERT_DOES_NOT_NAME} {sender!r} (it names {has}): a message "
                               "or crash-hint stream in a member's name needs a certificate "
                               f"with subjectAltName DNS:{sender}", status=403)

    async def _signed_body(self, request: web.Request) -> bytes:
        """The body of a peer or admin request, from a client that proved it is one of us."""
        if self.config.mutual_tls:
            self._client_names(request)
        body = await read_body(request, limit=MAX_BODY, timeout=BODY_TIMEOUT)
        if self.verifier is not None:
            reason = self.verifier.check(request.headers, request.method, request.path, body)
            if reason is not None:
                raise MessageError(reason, status=401)
        return body

    async def handle_raft(self, request: web.Request) -> web.Response:
        kind = request.path.rsplit("/", 1)[-1]
        body = await self._signed_body(request)
        msg, version = decode(REQUESTS[kind], parse_json(body))
        self._check_sender(request, msg.sender)
        core = self.core
        if core is None:
            return json_error(503, "node is starting")
        if msg.sender == self.config.name:
            return json_error(400, "message claims to come from this node")
        if msg.sender not in self.membership.members or version > self.membership.version:
            refresh = self.sync.refresh_soon()
            if msg.sender not in self.membership.members:
                # Unknown sender: maybe a member that joined since our last read. Ask once.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.sync.registry.timeout):
                        await asyncio.shield(refresh)
                if msg.sender not in self.membership.members:
                    return json_error(403, f"{msg.sender!r} is not a member of cluster "
                                           f"{self.config.cluster!r}")
        if self.partitions.blocked(msg.sender):
            return json_error(503, "partitioned by fault injection")
        self.peers.alive(msg.sender)
        out = core.step(msg, time.monotonic(), version)
        if out.refused:
            self.warn.warning(f"refused:{msg.sender}", "not believing %s: %s", msg.sender,
                              out.refused)
            return json_error(400, out.refused)
        await self._apply(out)
        if out.reply is None:  # TimeoutNow has no answer but an acknowledgement
            return web.json_response({"term": core.term, "sender": self.config.name,
                                      "version": core.version})
        return web.json_response(encode(out.reply, version=core.version))

    async def handle_hold(self, request: web.Request) -> web.StreamResponse:
        """A duck's crash-hint stream (ddg/hold.py): open while this node is the goose. A new
        one ends the duck's older one: only that duck may open it (signed with the secret, or
        from a certificate naming it); unsigned, HoldServer limits how often."""
        name = request.match_info["name"]
        self._check_sender(request, name)
        await self._signed_body(request)
        core = self.core
        if core is None:
            return json_error(503, "node is starting")
        if name not in self.membership.members or name == self.config.name:
            return json_error(403, f"{name!r} is not a member of cluster "
                                   f"{self.config.cluster!r}")
        if self.partitions.blocked(name):
            return json_error(503, "partitioned by fault injection")
        return await self.holds.handle(request, name, is_goose=core.state is State.GOOSE)

    async def _admin_json(self, request: web.Request) -> Any:
        if not self.config.allow_fault_injection:
            raise MessageError("fault injection is disabled; start the node with "
                               "--allow-fault-injection", status=403)
        return parse_json(await self._signed_body(request))

    async def _admin_body(self, request: web.Request) -> tuple[bool, set[str]]:
        return Partitions.parse(await self._admin_json(request))

    def _isolated(self) -> list[str]:
        return self.partitions.isolated_from(self.membership.names, self.config.name)

    async def handle_partition(self, request: web.Request) -> web.Response:
        everyone, peers = await self._admin_body(request)
        self.partitions.isolate(everyone, peers, self.membership.names, self.config.name)
        log.warning("fault injection: dropping messages to and from %s",
                    "all peers" if self.partitions.everyone else ",".join(self._isolated()),
                    extra={"event": "partitioned"})
        return web.json_response({"isolated_from": self._isolated()})

    async def handle_heal(self, request: web.Request) -> web.Response:
        everyone, peers = await self._admin_body(request)
        self.partitions.heal(everyone, peers)
        log.warning("fault injection: healed; isolated from %s",
                    ",".join(self._isolated()) or "nobody", extra={"event": "healed"})
        return web.json_response({"isolated_from": self._isolated()})

    def _served(self) -> GuardedServer:
        if self.http is None:
            raise MessageError("not served by a GuardedServer", status=503)
        return self.http

    async def handle_close_listener(self, request: web.Request) -> web.Response:
        """Stop accepting connections; the node and its open connections go on."""
        reopen_after = parse_listener_fault(await self._admin_json(request))
        self._served().close_listeners(reopen_after)
        log.warning("fault injection: listening sockets closed%s",
                    "" if reopen_after is None else f" for {reopen_after:g} s",
                    extra={"event": "listener_closed"})
        return web.json_response({"listening": False, "reopen_after_s": reopen_after})

    async def handle_open_listener(self, request: web.Request) -> web.Response:
        """Listen again (reachable over a connection that was open before the close)."""
        await self._admin_json(request)
        try:
            self._served().reopen_listeners()
        except OSError as exc:
            raise MessageError(f"cannot listen again: {exc.strerror or exc}", status=500) from None
        log.warning("fault injection: listening again", extra={"event": "listener_opened"})
        return web.json_response({"listening": True})


async def run_node(config: NodeConfig) -> int:
    return await Node(config).run()
