"""The node daemon: the I/O shell around the pure election core.

It owns the lifecycle, the election timer and the term/vote persistence; it serves the HTTP
API (api.py, mixed in). The peer transport (peers.py), the crash-hint streams (hold.py), the
membership sync with Redis (membership.py), the cluster's timing (clustertiming.py) and fault
injection (partitions.py) are its parts. Only the timer and message handlers touch the core;
none of them waits on Redis, so a slow or frozen Redis cannot delay a heartbeat or stretch a
lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from ddg.election.core import Election, HardState, Output, State, quorum_of
from ddg.election.messages import Message
from ddg.election.timing import JointTiming
from ddg.errors import ConfigError, DdgError, StorageError
from ddg.net import auth
from ddg.net.server.limits import ServerLimits, raise_fd_limit
from ddg.net.server.listener import GuardedServer, serve
from ddg.node.api import MAX_BODY, NodeApi, errors_as_json
from ddg.node.clustertiming import ClusterTiming
from ddg.node.config import NodeConfig
from ddg.node.hold import Holder, HoldServer
from ddg.node.inbound import InboundStreams
from ddg.node.membership import WAITING_FOR_CLUSTER, MembershipSync
from ddg.node.partitions import Partitions
from ddg.node.peers import PeerTransport
from ddg.node.stopping import StopDeadline, cancel_and_wait, stop_deadline, wait_out
from ddg.node.storage import DataDir
from ddg.ops.changes import Changes, View
from ddg.ops.job import Jobs
from ddg.ops.metrics import NodeMetrics
from ddg.ops.sdnotify import Notifier, describe
from ddg.ops.vip import Vip
from ddg.ops.watch import Watchers
from ddg.registry.records import Membership
from ddg.registry.registry import Registry
from ddg.util.ratelimit import LogThrottle, Throttle

WARN_EVERY = 60.0  # seconds between two log lines about the same recurring problem
VIP_RELEASE_WAIT = 1.0  # s: a hand-over waits this long for the keeper to remove the VIP
TICK_CAP = 0.5  # s: the longest the ticker sleeps (it wakes earlier for a core deadline)
NO_GOOSE_SAY_AFTER = 3.0  # s without a goose before a node says why (a failover takes less)
NO_GOOSE_SAY_EVERY = 5.0  # s between two such lines
log = logging.getLogger("ddg.node")

class Node(NodeApi):
    """REGISTRY and DATA may be given (tests run the HTTP contract in-process with them);
    by default they come from the config. STOP_DEADLINE (the ddg-node process sets it; see
    ddg/node/stopping.py): once a stop begins, the process ends within that many seconds, or at
    a second SIGTERM/SIGINT, whatever a task does. NOTIFY: systemd's notify socket (the
    ddg-node process passes it when systemd set one); the node owns and closes it."""

    def __init__(self, config: NodeConfig, *, rng: random.Random | None = None,
                 registry: Registry | None = None, data: DataDir | None = None,
                 stop_deadline: float | None = None, notify: Notifier | None = None) -> None:
        self.config = config
        self.notify = notify
        self.deadline = None if stop_deadline is None else StopDeadline(stop_deadline)
        self.rng = rng or random.Random()
        self.data = data or DataDir(config.data_dir)
        self.warn = LogThrottle(log, WARN_EVERY)
        self.metrics = NodeMetrics(
            name=config.name, status=self.status,
            counters=lambda: None if self.core is None else self.core.counters)
        registry = registry or Registry(config.redis, config.cluster)
        self.timing = ClusterTiming(config=config.member, registry=registry, data=self.data,
                                    warn=self.warn)
        self.sync = MembershipSync(
            config=config.member, rng=self.rng, data=self.data, warn=self.warn, registry=registry,
            on_change=self._membership_changed, on_error=self.metrics.registry_error,
            timing=self.timing)
        self.partitions = Partitions()
        self.peers = PeerTransport(
            config=config.peer, rng=self.rng, address_of=self._address_of,
            version=self._version, blocked=self.partitions.blocked,
            on_reply=self._on_reply, warn=self.warn, metrics=self.metrics)
        self.holds = HoldServer(config.timing)
        self.streams_in = InboundStreams()
        self.holder = Holder(config=config.peer, session=lambda: self.peers.session,
                             address_of=self._address_of, blocked=self.partitions.blocked,
                             on_lost=self._goose_lost, warn=self.warn)
        self.verifier = (None if config.secret is None
                         else auth.Verifier(config.secrets, recipient=config.name))
        self.core: Election | None = None
        self.started = time.monotonic()
        self.fsync_last_ms: float | None = None
        self.fsync_max_ms = 0.0
        self.http: GuardedServer | None = None
        self.changes = Changes()
        self.changes.listen(self.metrics.observe)
        self.jobs = Jobs(config.job, config.on_change, node=config.name, cluster=config.cluster)
        self.changes.listen(self.jobs.on_change)  # before the watchers: SIGTERM at once
        self.vip = None if config.vip is None else Vip(config.vip, on_lost=self._vip_lost)
        self.watchers = Watchers(node=config.name, status=self.status)
        self.changes.listen(self.watchers.publish)
        if notify is not None:
            self.changes.listen(notify.on_change)
            self.sync.on_joining = lambda why: notify.status(f"joining: {why}")
        self.stop_event = asyncio.Event()
        self.exit_code = 0
        self._wake = asyncio.Event()
        self._tick_at = -math.inf  # monotonic: when the ticker wakes by itself next
        self._tick_cap = -math.inf  # ... at the latest
        self._ticking: asyncio.Timeout | None = None  # its wait's timeout, while it waits
        self._members_of: frozenset[str] | None = None
        self._members: tuple[str, ...] = ()
        self._persist_lock = asyncio.Lock()
        self._on_disk: HardState | None = None
        self._clock_nag: Throttle | None = None  # while peers contradict this node's clock
        self._no_goose_nag = Throttle(NO_GOOSE_SAY_EVERY)

    def _address_of(self, name: str) -> str | None:
        return self.sync.membership.address_of(name)

    def _version(self) -> int:
        """The membership version the core runs: what every message says (a peer refuses a
        candidate or goose of an older one)."""
        return self.core.version if self.core is not None else self.sync.membership.version

    # ---- lifecycle -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_as_json])
        self.add_routes(app)
        if self.vip is not None:  # first in, last out: the address goes after everything
            app.cleanup_ctx.append(self.vip.context)
        app.cleanup_ctx.append(self._background)
        app.cleanup_ctx.append(self.jobs.context)  # stops --exec's command before exiting
        app.on_shutdown.append(self.watchers.shutdown)  # ends /watch streams: no delay
        app.on_shutdown.append(self.holds.shutdown)  # `bye`: a stop is not taken for a crash
        app.on_shutdown.append(self.streams_in.shutdown)  # peers' streams: no delay
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

    def _vip_lost(self) -> None:
        self.exit_code = 1
        self.stop_event.set()

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
            if self.notify is not None:
                self.notify.close()
        log.info("stopped (exit code %d)", code, extra={"event": "stopped", "exit_code": code})
        return code

    async def _serve(self) -> int:
        hard = self.data.load_hard_state()
        self._on_disk = hard
        cached = self.data.load_membership()
        self.timing.cached = self.data.load_timing()
        self.sync.node_id = self.data.node_id()
        self.data.note_owner(name=self.config.name, cluster=self.config.cluster)
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
        if self.config.secret_file is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reload_secrets)
        watcher: asyncio.Task[None] | None = None
        watchdog: asyncio.Task[None] | None = None
        if self.notify is not None:
            self.notify.status(f"joining cluster {self.config.cluster!r} as "
                               f"{self.config.name}")
            watchdog = asyncio.create_task(self.notify.run_watchdog(), name="watchdog")
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
            self.peers.warm(membership.names - {self.config.name})
            watcher = asyncio.create_task(self.sync.watch(), name="registry")
            watcher.add_done_callback(self._loop_ended)
            loop_kind = type(loop).__module__.partition(".")[0]
            log.info("serving %s as %s in cluster %r: term %d, members %s (version %d), "
                     "event loop %s", self.config.address, self.config.name,
                     self.config.cluster, hard.term, ",".join(sorted(membership.names)),
                     membership.version, loop_kind,
                     extra={"event": "started", "term": hard.term,
                            "address": self.config.address,
                            "members": sorted(membership.names),
                            "membership_version": membership.version, "loop": loop_kind})
            if not self.config.authenticated:
                log.info("peer messages are not signed: fine on loopback only; set "
                         "DDG_CLUSTER_SECRET (the same on every node) to sign them, or use "
                         "mutual TLS (--tls-client-auth)")
            self._wake.set()
            if self.notify is not None and self.changes.last is not None:
                self.notify.mark_ready(describe(self.changes.last))
            await self.stop_event.wait()
            await self._hand_over()
            return self.exit_code
        finally:
            self._begin_stop("the stop began")
            for task in (watcher, watchdog):
                if task is not None:
                    await cancel_and_wait(task)
            # The signal handlers stay to the end: a SIGTERM that arrives while the node is
            # already leaving never meets the default action half-way; with a stop deadline
            # it ends the process at once, on purpose (ddg/node/stopping.py).
            await self.http.close()
            await self.sync.registry.close()

    def _explain_no_goose(self, now: float) -> None:
        """A node without a goose for a while says why, every few seconds (not only that it
        is a candidate): the members that do not answer and how many are needed, or what
        it waits for to join."""
        gap = self.metrics.goose_gap(now)
        if gap < NO_GOOSE_SAY_AFTER or self._no_goose_nag.allow() is None:
            return
        log.warning("no goose for %.0f s: %s", gap, self._why_no_goose(now),
                    extra={"event": "no_goose", "seconds": round(gap, 1)})

    def _why_no_goose(self, now: float) -> str:
        core = self.core
        if core is None:
            why = self.sync.joining or "starting"
            if why == WAITING_FOR_CLUSTER:
                return ("not a member: waiting to join (is there a cluster? start one node "
                        "with --bootstrap)")
            return f"not a member: {why}"
        members = sorted(core.members)
        if self.config.name not in members:
            return f"not in membership version {core.version} ({', '.join(members)})"
        # Without a goose every member sends pre-votes each election timeout: a peer that
        # answered none of them for a few rounds is silent.
        window = max(1.0, 4 * core.timing.election_max)
        answering = [m for m in members if m == self.config.name
                     or now - self.peers.answered_at.get(m, -math.inf) <= window]
        silent = [m for m in members if m not in answering]
        need = quorum_of(len(members))
        counted = f"{len(answering)} of {len(members)} members answer"
        if len(answering) < need:
            return f"{counted}, {need} needed; silent: {', '.join(silent)}"
        return (f"{counted} ({need} needed): an election is under way (term {core.term}, "
                f"{core.state.value})")

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        extra = {"event": "stopping", "signal": name}
        if self.core is None:
            log.info("received %s: stopping before joining the cluster", name, extra=extra)
        else:
            log.info("received %s: stopping (this node stays a member)", name, extra=extra)
        self._begin_stop(name)
        self.stop_event.set()

    def reload_secrets(self) -> None:
        """SIGHUP: read --cluster-secret-file again and sign with its first secret, accept any
        (a rotation with no restart). All at once, between two messages; a file that will not
        do leaves the secrets in use as they were. The log never shows a secret."""
        path = self.config.secret_file
        assert path is not None and self.verifier is not None
        try:
            secrets = auth.read_secrets(path)
        except ConfigError as exc:
            log.error("SIGHUP: kept the %d cluster secrets in use: %s",
                      len(self.verifier.secrets), exc, extra={"event": "secrets_kept"})
            return
        before = self.verifier.secrets
        self.peers.config = replace(self.peers.config, secret=secrets[0])
        self.holder.config = replace(self.holder.config, secret=secrets[0])
        self.verifier.secrets = secrets
        kept = sum(s in before for s in secrets)
        log.info("SIGHUP: cluster secrets reloaded from %s: %d (%d new, %d dropped); signing "
                 "with the %s one", path, len(secrets), len(secrets) - kept, len(before) - kept,
                 "same" if secrets[0] == before[0] else "new",
                 extra={"event": "secrets_reloaded", "secrets": len(secrets)})

    def _begin_stop(self, why: str) -> None:
        """Start the stop's deadline (once); from now on SIGTERM and SIGINT end the process."""
        if self.notify is not None:
            self.notify.mark_stopping(why)
        if self.deadline is not None:
            self.deadline.begin(why, asyncio.get_running_loop())

    async def _hand_over(self) -> None:
        """A goose stopping gracefully hands leadership to an up-to-date duck first."""
        if self.core is None or self.core.state is not State.GOOSE:
            return
        out = self.core.transfer_leadership(time.monotonic())
        await self._apply(out, send=False)
        if self.vip is not None:
            try:
                async with asyncio.timeout(VIP_RELEASE_WAIT):
                    await self.vip.released()
            except TimeoutError:
                log.error("the VIP keeper did not confirm the address's removal in %g s: no "
                          "hand-over (the next goose waits for this lease to end)",
                          VIP_RELEASE_WAIT)
                return
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
            now = time.monotonic()
            self._explain_no_goose(now)
            self._wake.clear()
            # _apply wakes the ticker only for a deadline earlier than this one (an ack or a
            # duck's heartbeat moves none earlier: no wake-up per message, the cost at rest).
            # The cap is for what has no deadline: the "no goose" and clock reminders.
            self._tick_cap = now + TICK_CAP
            self._tick_at = min(core.next_deadline() if core is not None else math.inf,
                                self._tick_cap)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(self._tick_at - now, 0.0)) as self._ticking:
                        await self._wake.wait()
            finally:
                self._ticking = None  # (also when cancelled: _apply runs on, at the stop)

    async def _apply(self, out: Output, *, send: bool = True) -> None:
        """Persist, log, then send: nothing leaves before the term and vote are on disk.

        The write runs in a thread so a slow disk never stalls `GET /`; the lock keeps outputs
        in order, so a later output (which may depend on that state) waits for the write too.
        The VIP's keeper hears of a step down before that wait (GET / no longer says goose).
        """
        try:
            self._tell_vip(time.monotonic())
            async with self._persist_lock:
                if out.persist is not None and out.persist != self._on_disk:
                    await self._persist(out.persist)
            for event in out.events:
                level = (logging.DEBUG if event.debug else logging.ERROR if event.error
                         else logging.INFO)
                log.log(level, "%s", event.text, extra={"event": event.name, **event.fields})
            self.observe()
            if self.core is not None and self.core.state is State.REMOVED:
                self.stop_event.set()
            if send:
                for s in out.sends:
                    await self.peers.send(s)
        finally:  # the core stepped already: its deadline counts even if this was cut short
            if self.core is not None:
                self._retime_ticker(self.core.next_deadline())

    def _retime_ticker(self, deadline: float) -> None:
        """Wake the ticker for a DEADLINE earlier than its own; let it sleep on if the one it
        waits for is soon and now later (the quorum's ack cancels the goose's resend: else a
        wake-up for nothing each heartbeat)."""
        if deadline < self._tick_at:
            self._wake.set()
            return
        ticking = self._ticking
        now = time.monotonic()
        if (ticking is not None and not ticking.expired() and deadline > self._tick_at
                and self._tick_at - now < self.heartbeat):
            self._tick_at = min(deadline, self._tick_cap)
            ticking.reschedule(asyncio.get_running_loop().time() + self._tick_at - now)

    async def _persist(self, hard: HardState) -> None:
        t0 = time.monotonic()
        write = asyncio.ensure_future(asyncio.to_thread(self.data.save_hard_state, hard))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # The caller was cancelled (a peer stream ended while its reply was applied), but
            # the thread writes on: hold the lock until it is done, or the next write would
            # run beside it on the same file and the core be told of a state not on disk.
            await wait_out(write)
            raise
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

    def _tell_vip(self, now: float) -> None:
        core = self.core
        if self.vip is not None and core is not None:
            self.vip.on_lease(core.lease_until if core.is_goose(now) else None, core.term)

    def observe(self) -> None:
        """Tell the listeners if the role, term, goose or membership changed."""
        core = self.core
        if core is None:
            return
        # On the goose this runs for every acknowledgement: read only what a View holds (no
        # snapshot with its copy of the counters).
        now = time.monotonic()
        if core.members is not self._members_of:  # (sorted once per membership, not per ack)
            self._members_of, self._members = core.members, tuple(sorted(core.members))
        change = self.changes.observe(
            View(role=core.reported_role(now), state=core.state.value, term=core.term,
                 goose=core.known_goose(now), members=self._members, version=core.version),
            at=now, wall=time.time())
        self._tell_vip(now)
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
        """The cluster's timing record changed (ddg/node/clustertiming.py)."""
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
        self.peers.keep(membership.names)
        self.peers.warm(membership.names - {self.config.name})
        if self.core is not None:
            await self._apply(self.core.set_membership(membership.names, membership.version,
                                                       time.monotonic(), membership.term_floor))


async def run_node(config: NodeConfig) -> int:
    return await Node(config).run()
