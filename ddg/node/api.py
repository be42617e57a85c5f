"""A node's HTTP API: the routes it serves (GET /, /status, /healthz, /metrics, /watch; the
peers' /raft/*; fault injection's /admin/*), every failure as a JSON reason, and the checks a
peer or admin request passes first (mutual TLS naming its sender, the cluster secret's
signature). None of them waits on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from ddg import __version__
from ddg.client.nodestatus import ClockInfo, NodeStatus, StorageInfo
from ddg.election.clockrate import max_rate_error
from ddg.election.core import Election, Output, State, quorum_of
from ddg.election.messages import REQUESTS, Message, decode, encode
from ddg.election.names import NAME_RE
from ddg.election.roles import Role
from ddg.errors import MessageError
from ddg.net import auth
from ddg.net.server.body import read_body
from ddg.net.server.listener import GuardedServer
from ddg.net.tls import CERT_DOES_NOT_NAME, CLIENT_CERT_REQUIRED, peer_names, peer_verified
from ddg.node import frames
from ddg.node.clustertiming import ClusterTiming
from ddg.node.config import NodeConfig
from ddg.node.hold import HoldServer
from ddg.node.inbound import InboundStreams
from ddg.node.membership import MembershipSync
from ddg.node.partitions import Partitions, parse_listener_fault
from ddg.node.peers import PeerTransport
from ddg.ops.changes import Changes
from ddg.ops.metrics import NodeMetrics
from ddg.ops.watch import Watchers
from ddg.registry.records import Membership
from ddg.util.ratelimit import LogThrottle

log = logging.getLogger("ddg.node")

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 2.0  # a peer message is a few hundred bytes: a client this slow is not a peer
MAX_REASON = 1000  # characters of an error reason in a stream's reply

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


class NodeApi:
    """The HTTP handlers of a Node (ddg.node.node), mixed into it: they read the node's parts,
    declared here, and step its core through `_apply`."""

    config: NodeConfig
    core: Election | None
    sync: MembershipSync
    timing: ClusterTiming
    partitions: Partitions
    peers: PeerTransport
    holds: HoldServer
    streams_in: InboundStreams
    metrics: NodeMetrics
    watchers: Watchers
    changes: Changes
    verifier: auth.Verifier | None
    http: GuardedServer | None
    warn: LogThrottle
    started: float
    fsync_last_ms: float | None
    fsync_max_ms: float

    async def _apply(self, out: Output, *, send: bool = True) -> None:
        """Persist, log, then send (the node's)."""
        raise NotImplementedError

    @property
    def membership(self) -> Membership:
        return self.sync.membership

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.handle_root)
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/watch", self.watchers.handle)
        for kind in REQUESTS:
            app.router.add_post(frames.raft_path(kind), self.handle_raft)
        app.router.add_get(frames.PATH + "{name}", self.handle_stream)
        app.router.add_get("/raft/hold/{name}", self.handle_hold)
        app.router.add_post("/admin/partition", self.handle_partition)
        app.router.add_post("/admin/heal", self.handle_heal)
        app.router.add_post("/admin/fault/close-listener", self.handle_close_listener)
        app.router.add_post("/admin/fault/open-listener", self.handle_open_listener)

    async def handle_root(self, request: web.Request) -> web.Response:
        goose = self.core is not None and self.core.is_goose(time.monotonic())
        vip = self.config.vip
        if not goose and vip is not None and _local_ip(request) == vip.ip:
            # A request that reached this node through the floating address before it left
            # (the keeper removes it before the lease ends, but a request already accepted
            # waits for the loop): the address speaks for the goose only, so no `duck` here.
            return web.json_response({"error": f"not the goose: {vip.ip} has moved to the "
                                      "new goose; retry"}, status=503)
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
            hint_streams=self.holds.open, peer_links=self.peers.links(),
            streams_in=tuple(self.streams_in.senders),
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
        """A peer's message as an HTTP POST (nodes of 0.2.0 send these; and any node to a
        peer that does not serve the stream)."""
        kind = request.path.rsplit("/", 1)[-1]
        body = await self._signed_body(request)
        msg, version = decode(REQUESTS[kind], parse_json(body))
        self._check_sender(request, msg.sender)
        status, answer = await self._step_message(msg, version)
        return web.json_response(answer, status=status)

    async def handle_stream(self, request: web.Request) -> web.StreamResponse:
        """A peer's message stream (ddg/node/frames.py): opened by the peer NAME only (a
        certificate naming it, a GET signed for this node), then each frame is checked as a
        POST would be (its own signature; the sender the stream's)."""
        name = request.match_info["name"]
        self._check_sender(request, name)
        await self._signed_body(request)
        if not NAME_RE.fullmatch(name) or name == self.config.name:
            return json_error(400, f"{name!r} cannot open a peer stream here")
        if self.core is None:
            return json_error(503, "node is starting")
        if not await self._is_member(name):
            return json_error(403, f"{name!r} is not a member of cluster "
                                   f"{self.config.cluster!r}")
        if self.partitions.blocked(name):
            return json_error(503, "partitioned by fault injection")
        self.peers.warm([name])  # (ours to it: a restarted peer opens its own to every member)
        return await self.streams_in.serve(request, name,
                                           lambda frame: self._stream_frame(name, frame))

    async def _stream_frame(self, sender: str, frame: bytes) -> bytes | None:
        """One frame of SENDER's stream: the reply frame (the status and body a POST would
        have had), or None for bytes that are not even a request frame."""
        read = frames.read_request(frame)
        if read is None:
            return None
        id, req = read
        try:
            if isinstance(req, MessageError):
                raise req
            if self.verifier is not None:
                reason = self.verifier.check(req.signature, "POST", frames.raft_path(req.kind),
                                             req.body)
                if reason is not None:
                    raise MessageError(reason, status=401)
            msg, version = decode(REQUESTS[req.kind], parse_json(req.body))
            if msg.sender != sender:
                raise MessageError(f"a message in {msg.sender!r}'s name on {sender!r}'s "
                                   "stream", status=403)
            status, answer = await self._step_message(msg, version)
        except MessageError as exc:
            # (bounded: a reason may quote the frame, and a reply must stay small, inbound.py)
            status, answer = exc.status, {"error": exc.reason[:MAX_REASON]}
        except Exception:
            log.exception("unexpected error serving a frame of %s's stream", sender)
            status, answer = 500, {"error": "internal error; see the node's log"}
        return frames.reply_frame(id, status, json.dumps(answer).encode())

    async def _is_member(self, name: str) -> bool:
        """NAME is a member; if not, maybe one that joined since our last read: ask once."""
        if name not in self.membership.members:
            refresh = self.sync.refresh_soon()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sync.registry.timeout):
                    await asyncio.shield(refresh)
        return name in self.membership.members

    async def _step_message(self, msg: Message, version: int) -> tuple[int, dict[str, Any]]:
        """A peer's message (its signature and sender checked) into the core: the answer's
        status and body, the same over either transport."""
        core = self.core
        if core is None:
            return 503, {"error": "node is starting"}
        if msg.sender == self.config.name:
            return 400, {"error": "message claims to come from this node"}
        if msg.sender in self.membership.members:
            if version > self.membership.version:
                self.sync.refresh_soon()  # in the background
        elif not await self._is_member(msg.sender):
            return 403, {"error": f"{msg.sender!r} is not a member of cluster "
                                  f"{self.config.cluster!r}"}
        if self.partitions.blocked(msg.sender):
            return 503, {"error": "partitioned by fault injection"}
        self.peers.alive(msg.sender)
        out = core.step(msg, time.monotonic(), version)
        if out.refused:
            self.warn.warning(f"refused:{msg.sender}", "not believing %s: %s", msg.sender,
                              out.refused)
            return 400, {"error": out.refused}
        await self._apply(out)
        if out.reply is None:  # TimeoutNow has no answer but an acknowledgement
            return 200, {"term": core.term, "sender": self.config.name,
                         "version": core.version}
        return 200, encode(out.reply, version=core.version)

    async def handle_hold(self, request: web.Request) -> web.StreamResponse:
        """A duck's crash-hint stream (ddg/node/hold.py): open while this node is the goose. A new
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


def _local_ip(request: web.Request) -> str | None:
    """The address the client connected to (the floating one, or the node's own)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[0] if isinstance(sockname, tuple) and sockname else None
