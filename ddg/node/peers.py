"""The node's peer transport: election messages out over HTTP, replies back to the node.

Sends never wait on each other: each is its own task. What it bounds: heartbeats in flight
per peer (more would only queue behind a dead link), peer requests in flight overall (a
membership full of black-holed addresses must not take the event loop, and so `GET /`, with
it), and how often a peer that keeps failing is tried (a backoff up to PEER_BACKOFF_MAX; any
message from it ends the backoff; heartbeats only, votes always go). Hand-overs are never
dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientSSLError,
    ClientTimeout,
    TCPConnector,
)

from ddg.election.core import Send
from ddg.election.messages import KIND_OF, REPLIES, Heartbeat, Message, TimeoutNow, decode, encode
from ddg.election.timing import JointTiming, Timing
from ddg.errors import MessageError
from ddg.net import auth
from ddg.net.tls import CERT_DOES_NOT_NAME, CLIENT_CERT_REQUIRED, client_context
from ddg.node.config import PeerConfig
from ddg.ops.metrics import NodeMetrics
from ddg.util.backoff import Backoff
from ddg.util.ratelimit import LogThrottle

MAX_HEARTBEATS_IN_FLIGHT = 2  # per peer
MAX_OUTGOING = 64
PEER_BACKOFF_MAX = 1.0
log = logging.getLogger("ddg.peers")

OnReply = Callable[[Message, int], Awaitable[None]]


def failure_reason(failure: BaseException | int) -> str:
    """The `reason` label of ddg_peer_message_failures_total for an exception or a non-200
    status: what an operator looks at first (the peer is down, slow, or refusing us)."""
    if isinstance(failure, int):
        return "http_4xx" if 400 <= failure < 500 else "http_5xx" if failure >= 500 else "other"
    if isinstance(failure, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(failure, ClientSSLError):
        return "tls"
    if isinstance(failure, ClientConnectorError) and isinstance(failure.os_error,
                                                               ConnectionRefusedError):
        return "refused"
    return "other"


class PeerTransport:
    def __init__(self, *, config: PeerConfig, rng: random.Random,
                 address_of: Callable[[str], str | None], version: Callable[[], int],
                 blocked: Callable[[str], bool], on_reply: OnReply,
                 warn: LogThrottle, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.rng = rng
        self._address_of = address_of
        self._version = version
        self._blocked = blocked
        self._on_reply = on_reply
        self._warn = warn
        self._metrics = metrics
        # The timing in force (the cluster's: the node sets it as it changes).
        self.timing: Timing | JointTiming = config.timing
        self._session: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        self._outgoing = 0
        self._backoff: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}
        self.answered_at: dict[str, float] = {}  # monotonic: each peer's last usable answer

    def _timeout(self) -> ClientTimeout:
        return ClientTimeout(total=self.timing.election_min)

    async def start(self) -> None:
        # Peers at https:// addresses are verified against --tls-ca, and shown our certificate.
        self._session = ClientSession(connector=TCPConnector(
            limit=MAX_OUTGOING + 8, ssl=client_context(self.config.tls)))

    @property
    def session(self) -> ClientSession | None:
        """The one client session for peers (the crash-hint streams use it too)."""
        return self._session

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(self, send: Send) -> None:
        """Fire and forget (the reply, if any, goes to on_reply)."""
        if self._blocked(send.to):
            return
        if not isinstance(send.msg, TimeoutNow):
            if self._outgoing >= MAX_OUTGOING:
                return
            if isinstance(send.msg, Heartbeat):
                # Only heartbeats back off: they come 20 times a second. A vote request is
                # rare and may be the one that makes a quorum (a peer restarted a moment ago
                # would otherwise miss elections for up to PEER_BACKOFF_MAX: split votes).
                if time.monotonic() < self._retry_at.get(send.to, -math.inf):
                    return  # it keeps failing: try it again after its backoff
                if self._in_flight.get(send.to, 0) >= MAX_HEARTBEATS_IN_FLIGHT:
                    return
        task = asyncio.create_task(self.deliver(send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def alive(self, peer: str) -> None:
        """PEER was just heard from: send to it again at once."""
        if self._backoff.pop(peer, None) is not None:
            self._retry_at.pop(peer, None)

    async def deliver(self, send: Send) -> None:
        address = self._address_of(send.to)
        if address is None or self._session is None:
            return
        kind = KIND_OF[type(send.msg)]
        path = f"/raft/{kind}"
        body = json.dumps(encode(send.msg, version=self._version())).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.secret is not None:
            headers |= auth.sign_headers(self.config.secret, "POST", path, body,
                                         recipient=send.to)
        self._in_flight[send.to] = self._in_flight.get(send.to, 0) + 1
        self._outgoing += 1
        sent_at = time.monotonic()
        try:
            async with self._session.post(address + path, data=body, headers=headers,
                                          timeout=self._timeout()) as resp:
                if resp.status != 200:
                    reason = (await resp.text())[:200]
                    log.debug("%s %s -> %d %s", send.to, kind, resp.status, reason)
                    if resp.status == 401:
                        self._warn.warning(f"401:{send.to}", "%s refused our signature: %s (is "
                                           "the cluster secret the same on every node?)",
                                           send.to, reason)
                    elif resp.status == 403 and CLIENT_CERT_REQUIRED in reason:
                        self._warn.warning(f"403:{send.to}", "%s refused our %s: %s (start "
                                           "this node with --tls-cert and --tls-key signed by "
                                           "the cluster's CA)", send.to, kind, reason)
                    elif resp.status == 403 and CERT_DOES_NOT_NAME in reason:
                        self._warn.warning(f"403:{send.to}", "%s refused our %s: %s (this "
                                           "node's --tls-cert must name it)", send.to, kind,
                                           reason)
                    self._failed(send.to, failure_reason(resp.status))
                    return
                data = await resp.json(content_type=None)
            if isinstance(send.msg, Heartbeat) and self._metrics is not None:
                self._metrics.heartbeat_round_trip(send.to, time.monotonic() - sent_at)
            self.alive(send.to)
            self.answered_at[send.to] = time.monotonic()
            reply_cls = REPLIES[type(send.msg)]
            if reply_cls is None:
                return
            reply, version = decode(reply_cls, data)
        except (ClientError, TimeoutError, MessageError, ValueError, RecursionError) as exc:
            log.debug("%s %s failed: %s", send.to, kind, str(exc) or type(exc).__name__)
            reason = failure_reason(exc)
            if reason == "tls":  # a wrong CA or certificate fails every heartbeat: say it once
                self._warn.warning(f"tls:{send.to}", "TLS with %s at %s failed: %s", send.to,
                                   address, str(exc) or type(exc).__name__)
            self._failed(send.to, reason)
            return
        finally:
            self._in_flight[send.to] -= 1
            self._outgoing -= 1
        if reply.sender != send.to or self._blocked(send.to):
            return
        await self._on_reply(reply, version)

    def _failed(self, peer: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.peer_failed(peer, reason)
        backoff = self._backoff.get(peer)
        if backoff is None:
            self._backoff[peer] = Backoff(initial=self.timing.heartbeat,
                                          maximum=PEER_BACKOFF_MAX, rng=self.rng)
            return  # one failure is a lost packet, not a dead peer
        self._retry_at[peer] = time.monotonic() + backoff.next()
