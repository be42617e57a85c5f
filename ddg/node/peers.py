"""The node's peer transport: election messages out to peers, replies back to the node.

Each peer gets one long-lived WebSocket (ddg/node/frames.py): a message is one frame, its
reply comes back on the same stream, so a heartbeat costs a frame each way instead of an HTTP
request and response. A peer that does not serve the stream (a node of 0.2.0: 404 on the
upgrade) gets today's HTTP POSTs to /raft/{kind}; the stream is tried again every
STREAM_RETRY, and after a POST to it failed (it may have restarted as a newer version).

What it bounds: per peer, one queued heartbeat (a newer one replaces it: a stale heartbeat is
worth nothing) and MAX_QUEUED other messages, MAX_PENDING requests awaiting a reply on a
stream, MAX_HEARTBEATS_IN_FLIGHT heartbeats in flight (more would only queue behind a dead
link); peer POSTs in flight overall (a membership full of black-holed addresses must not take
the event loop, and so `GET /`, with it); and how often a peer that keeps failing is tried (a
backoff up to PEER_BACKOFF_MAX; any message from it ends the backoff; heartbeats only, votes
always go). Every connect and reply wait has a timeout (an election timeout's minimum; one
timer per stream, for its oldest request); a reply that does not come in time closes the
stream (the next message opens a new one). A write on a stream never waits: at most
MAX_PENDING small frames are unanswered, far below the transport's high-water mark, so a
heartbeat on an open stream goes out from the caller at once. Hand-overs are never dropped
for lack of room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientSSLError,
    ClientTimeout,
    ClientWebSocketResponse,
    ClientWSTimeout,
    TCPConnector,
    WSMsgType,
    WSServerHandshakeError,
)

from ddg.election.core import Send
from ddg.election.messages import KIND_OF, REPLIES, Heartbeat, Message, TimeoutNow, decode, encode
from ddg.election.timing import JointTiming, Timing
from ddg.errors import MessageError
from ddg.net import auth
from ddg.net.tls import CERT_DOES_NOT_NAME, CLIENT_CERT_REQUIRED, client_context
from ddg.node import frames
from ddg.node.config import PeerConfig
from ddg.ops.metrics import NodeMetrics
from ddg.util.backoff import Backoff
from ddg.util.ratelimit import LogThrottle

MAX_HEARTBEATS_IN_FLIGHT = 2  # per peer
MAX_OUTGOING = 64  # HTTP POSTs in flight, all peers
MAX_QUEUED = 8  # per peer: votes and hand-overs waiting for the stream to take them
MAX_PENDING = 16  # per stream: requests awaiting their reply
MAX_FRAME = 64 * 1024
PEER_BACKOFF_MAX = 1.0
STREAM_RETRY = 30.0  # s: how often a peer that does not serve the stream is offered it again
log = logging.getLogger("ddg.peers")

OnReply = Callable[[Message, int], Awaitable[None]]

STREAM = "stream"  # the link's transport, as /status says it (peer_links)
HTTP = "http"
CLOSED = "closed"  # no stream open now (the next message opens one)


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


class _Out:
    """One message on its way: queued, then pending its reply."""

    __slots__ = ("done", "send", "sent_at")

    def __init__(self, send: Send, done: asyncio.Future[None] | None = None) -> None:
        self.send = send
        self.done = done  # set once it is answered, failed or dropped (deliver() waits)
        self.sent_at = 0.0

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class Link:
    """One peer's outgoing side: its queue, its stream, the requests awaiting replies."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.heartbeat: _Out | None = None  # the newest heartbeat not yet written
        self.queue: deque[_Out] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ws: ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pending: dict[int, _Out] = {}  # in the order written (ids grow)
        self.expiry: asyncio.TimerHandle | None = None  # for the oldest pending's reply
        self.heartbeats_pending = 0
        self.next_id = 0
        self.fallen_back = False  # the peer did not serve the stream: HTTP POSTs to it
        self.warm = False  # open the stream with nothing to send yet (PeerTransport.warm)
        self.retry_stream_at = -math.inf

    @property
    def transport(self) -> str:
        if self.ws is not None and not self.ws.closed:
            return STREAM
        return HTTP if self.fallen_back else CLOSED

    def uses_http(self, now: float) -> bool:
        return self.fallen_back and now < self.retry_stream_at

    def put(self, out: _Out) -> None:
        """Queue OUT; what no longer fits is dropped (oldest first, a replaced heartbeat)."""
        if isinstance(out.send.msg, Heartbeat):
            if self.heartbeat is not None:
                self.heartbeat.finish()
            self.heartbeat = out
        else:
            if len(self.queue) >= MAX_QUEUED:
                self.queue.popleft().finish()
            self.queue.append(out)
        self.wake.set()

    def take(self) -> _Out | None:
        if self.queue:
            return self.queue.popleft()
        out, self.heartbeat = self.heartbeat, None
        return out

    def settle(self, id: int) -> _Out | None:
        out = self.pending.pop(id, None)
        if out is not None:
            if isinstance(out.send.msg, Heartbeat):
                self.heartbeats_pending -= 1
            out.finish()
        return out

    def drop_pending(self) -> bool:
        """Forget every request awaiting a reply (the stream ended); whether there was one."""
        had = bool(self.pending)
        for id in list(self.pending):
            self.settle(id)
        return had


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
        self._streams: ClientSession | None = None  # the peer streams' (one per peer: no cap)
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: dict[str, Link] = {}
        self._in_flight: dict[str, int] = {}
        self._outgoing = 0
        self._backoff: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}
        self.answered_at: dict[str, float] = {}  # monotonic: each peer's last usable answer

    def _timeout(self) -> ClientTimeout:
        return ClientTimeout(total=self.timing.election_min)

    async def start(self) -> None:
        # Peers at https:// addresses are verified against --tls-ca, and shown our certificate.
        ssl = client_context(self.config.tls)
        self._session = ClientSession(connector=TCPConnector(limit=MAX_OUTGOING + 8, ssl=ssl))
        self._streams = ClientSession(connector=TCPConnector(limit=0, ssl=ssl))

    @property
    def session(self) -> ClientSession | None:
        """The one client session for peers' POSTs (the crash-hint streams use it too)."""
        return self._session

    def links(self) -> dict[str, str]:
        """Each peer this node has sent to: how its messages go now (STREAM, HTTP, CLOSED)."""
        return {peer: link.transport for peer, link in sorted(self._links.items())}

    def keep(self, members: frozenset[str]) -> None:
        """Close the links of peers that are no longer members."""
        for peer in set(self._links) - members:
            link = self._links.pop(peer)
            if link.task is not None:
                link.task.cancel()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._links.clear()
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()
        self._session = self._streams = None

    async def send(self, send: Send) -> None:
        """Fire and forget (the reply, if any, goes to on_reply). On an open stream with
        nothing queued before it, the message is written at once, by the caller (no wake-up
        of the link's task per message: the cost at rest); else it is queued."""
        if self._blocked(send.to):
            return
        if isinstance(send.msg, Heartbeat) and \
                time.monotonic() < self._retry_at.get(send.to, -math.inf):
            # Only heartbeats back off: they come 20 times a second. A vote request is
            # rare and may be the one that makes a quorum (a peer restarted a moment ago
            # would otherwise miss elections for up to PEER_BACKOFF_MAX: split votes).
            return  # it keeps failing: try it again after its backoff
        link = self._link(send.to)
        ws = link.ws
        if link.uses_http(time.monotonic()):
            self._post(send)
        elif (ws is not None and not ws.closed and link.heartbeat is None and not link.queue
              and link.task is not None and not link.task.done()):
            try:
                await self._write_one(link, ws, _Out(send))
            except Exception:  # a bug: the caller (the ticker, a handler) must go on
                log.exception("writing %s to %s failed", KIND_OF[type(send.msg)], send.to)
                self._end_stream(link, ws)
        else:
            self._enqueue(link, _Out(send))

    async def deliver(self, send: Send) -> None:
        """Send and wait for the answer (or the failure, or an election timeout's minimum)."""
        if self._blocked(send.to):
            return
        link = self._link(send.to)
        if link.uses_http(time.monotonic()):
            await self._deliver_http(send)
            return
        out = _Out(send, asyncio.get_running_loop().create_future())
        self._enqueue(link, out)
        assert out.done is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self.timing.election_min):  # connect, then reply
                await out.done

    def warm(self, peers: Iterable[str]) -> None:
        """Open a stream to each of PEERS that has none, ahead of need: a candidate's first
        votes then go on an open stream, not behind a connect and an upgrade (an idle stream
        costs nothing at rest). Once, quietly: a peer that is down is left for later."""
        now = time.monotonic()
        for peer in peers:
            link = self._link(peer)
            if (link.ws is None or link.ws.closed) and not link.uses_http(now) \
                    and not self._blocked(peer):
                link.warm = True
                link.wake.set()
                if link.task is None or link.task.done():
                    link.task = self._spawn(self._run(link), f"peer-{link.peer}")

    def alive(self, peer: str) -> None:
        """PEER was just heard from: send to it again at once."""
        if self._backoff.pop(peer, None) is not None:
            self._retry_at.pop(peer, None)

    def _link(self, peer: str) -> Link:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = Link(peer)
        return link

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _enqueue(self, link: Link, out: _Out) -> None:
        link.put(out)
        if link.task is None or link.task.done():
            link.task = self._spawn(self._run(link), f"peer-{link.peer}")

    # ---- the stream ----------------------------------------------------------------------

    async def _run(self, link: Link) -> None:
        """The link's writer: opens the stream when there is something to send, writes."""
        try:
            while True:
                await link.wake.wait()
                link.wake.clear()
                warm, link.warm = link.warm, False
                if link.heartbeat is None and not link.queue and not warm:
                    continue
                ws = link.ws
                if ws is None or ws.closed:
                    if link.uses_http(time.monotonic()):
                        self._flush_to_http(link)
                        continue
                    ws = await self._open(link, quiet=link.heartbeat is None and not link.queue)
                    if ws is None:
                        continue
                await self._write(link, ws)
        finally:
            while (out := link.take()) is not None:
                out.finish()
            if link.expiry is not None:
                link.expiry.cancel()
                link.expiry = None
            if link.reader is not None:
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)

    def _flush_to_http(self, link: Link) -> None:
        while (out := link.take()) is not None:
            if out.done is not None:  # a hand-over: the caller waits for it
                self._spawn(self._answered_http(out), f"post-{link.peer}")
            else:
                self._post(out.send)

    async def _answered_http(self, out: _Out) -> None:
        try:
            await self._deliver_http(out.send)
        finally:
            out.finish()

    async def _open(self, link: Link, *, quiet: bool = False
                    ) -> ClientWebSocketResponse | None:
        """The stream to LINK's peer, or None (then what was queued went as POSTs, or was
        dropped). QUIET (a warm-up, nothing to send): a failure is no peer failure."""
        peer = link.peer
        address = self._address_of(peer)
        if address is None or self._streams is None:
            while (out := link.take()) is not None:
                out.finish()
            return None
        path = frames.PATH + self.config.name
        headers = {}
        if self.config.secret is not None:
            headers = auth.sign_headers(self.config.secret, "GET", path, b"", recipient=peer)
        wait = self.timing.election_min
        try:
            async with asyncio.timeout(wait):
                ws = await self._streams.ws_connect(
                    address + path, headers=headers, max_msg_size=MAX_FRAME,
                    timeout=ClientWSTimeout(ws_receive=None, ws_close=wait))
        except WSServerHandshakeError as exc:
            # 404: a node of 0.2.0, which has no stream. Any other refusal (401, 403, 503):
            # the POSTs it is sent instead say why, with the peer's own reason.
            old = exc.status in (404, 405)
            if old and not link.fallen_back:
                log.info("%s does not serve the peer stream (%d; a node of 0.2.0?): sending "
                         "it HTTP POSTs, and offering the stream again every %g s", peer,
                         exc.status, STREAM_RETRY)
            link.fallen_back = True
            link.retry_stream_at = time.monotonic() + (STREAM_RETRY if old
                                                       else PEER_BACKOFF_MAX)
            self._flush_to_http(link)
            return None
        except (ClientError, OSError, TimeoutError) as exc:
            log.debug("%s stream failed: %s", peer, str(exc) or type(exc).__name__)
            reason = failure_reason(exc)
            if reason == "tls":
                self._warn.warning(f"tls:{peer}", "TLS with %s at %s failed: %s", peer, address,
                                   str(exc) or type(exc).__name__)
            if not quiet:
                self._failed(peer, reason)
            while (out := link.take()) is not None:
                out.finish()
            return None
        if link.fallen_back:
            log.info("%s serves the peer stream now", peer)
        link.fallen_back = False
        link.ws = ws
        link.reader = self._spawn(self._read(link, ws), f"peer-{peer}-reader")
        return ws

    async def _write(self, link: Link, ws: ClientWebSocketResponse) -> None:
        while (out := link.take()) is not None:
            if not await self._write_one(link, ws, out):
                return

    async def _write_one(self, link: Link, ws: ClientWebSocketResponse, out: _Out) -> bool:
        """Write OUT to the stream; False if that ended the stream. Never waits: what was
        written and not yet answered is at most MAX_PENDING small frames, far below the
        transport's high-water mark (64 KiB), and a peer that does not answer loses the
        stream (_expire)."""
        peer = link.peer
        msg = out.send.msg
        heartbeat = isinstance(msg, Heartbeat)
        if self._blocked(peer) or len(link.pending) >= MAX_PENDING or (
                heartbeat and link.heartbeats_pending >= MAX_HEARTBEATS_IN_FLIGHT):
            out.finish()
            return True
        kind = KIND_OF[type(msg)]
        body = json.dumps(encode(msg, version=self._version())).encode()
        link.next_id += 1
        id = link.next_id
        frame = frames.request_frame(id, kind, body, secret=self.config.secret, recipient=peer)
        out.sent_at = time.monotonic()
        link.pending[id] = out
        if link.expiry is None:
            link.expiry = asyncio.get_running_loop().call_at(
                out.sent_at + self.timing.election_min, self._expire, link)
        if heartbeat:
            link.heartbeats_pending += 1
        try:
            await ws.send_bytes(frame)
        except (ClientError, ConnectionError) as exc:
            log.debug("%s %s failed: %s", peer, kind, str(exc) or type(exc).__name__)
            self._failed(peer, failure_reason(exc))
            self._end_stream(link, ws)
            return False
        return True

    def _expire(self, link: Link) -> None:
        """The oldest request's reply is due (one timer per link, not one per message: the
        cost at rest). None in time: the peer is slow, frozen or gone. End the stream (as a
        POST's timeout ends its connection); the next message opens another."""
        link.expiry = None
        ws = link.ws  # (what is pending was written to the current stream)
        if ws is None or not link.pending:
            return
        oldest = next(iter(link.pending.values()))
        due = oldest.sent_at + self.timing.election_min
        if time.monotonic() < due:
            link.expiry = asyncio.get_running_loop().call_at(due, self._expire, link)
            return
        log.debug("%s: no reply in %g s", link.peer, self.timing.election_min)
        self._failed(link.peer, "timeout")
        self._end_stream(link, ws)

    def _end_stream(self, link: Link, ws: ClientWebSocketResponse) -> None:
        if link.ws is ws:  # (what awaits a reply was all written to the current stream)
            link.ws = None
            link.drop_pending()
            if link.reader is not None:
                link.reader.cancel()  # it closes the stream

    async def _read(self, link: Link, ws: ClientWebSocketResponse) -> None:
        """The stream's replies, to the node; when it ends, whatever awaited one failed."""
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    break
                try:
                    reply = frames.parse_reply(msg.data)
                except MessageError as exc:
                    log.debug("%s sent a bad frame: %s", link.peer, exc.reason)
                    break
                out = link.settle(reply.re)
                if out is not None:
                    await self._answer(out, reply.status, reply.body)
        finally:
            if link.ws is ws:  # the peer ended it (not _end_stream)
                link.ws = None
                if link.drop_pending():
                    self._failed(link.peer, "other")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timing.election_min):
                    await ws.close()

    # ---- HTTP POSTs (peers of 0.2.0) -----------------------------------------------------

    def _post(self, send: Send) -> None:
        if not isinstance(send.msg, TimeoutNow):
            if self._outgoing >= MAX_OUTGOING:
                return
            if isinstance(send.msg, Heartbeat) and \
                    self._in_flight.get(send.to, 0) >= MAX_HEARTBEATS_IN_FLIGHT:
                return
        self._spawn(self._deliver_http(send), f"post-{send.to}")

    async def _deliver_http(self, send: Send) -> None:
        address = self._address_of(send.to)
        # (blocked: a partition made while the message waited in the stream's queue)
        if address is None or self._session is None or self._blocked(send.to):
            return
        kind = KIND_OF[type(send.msg)]
        path = frames.raft_path(kind)
        body = json.dumps(encode(send.msg, version=self._version())).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.secret is not None:
            headers |= auth.sign_headers(self.config.secret, "POST", path, body,
                                         recipient=send.to)
        self._in_flight[send.to] = self._in_flight.get(send.to, 0) + 1
        self._outgoing += 1
        out = _Out(send)
        out.sent_at = time.monotonic()
        try:
            async with self._session.post(address + path, data=body, headers=headers,
                                          timeout=self._timeout()) as resp:
                status, data = resp.status, await resp.read()
        except (ClientError, TimeoutError) as exc:
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
        await self._answer(out, status, data)

    # ---- both ----------------------------------------------------------------------------

    async def _answer(self, out: _Out, status: int, body: bytes) -> None:
        """The peer's answer to OUT (the same status and body over either transport)."""
        send = out.send
        peer = send.to
        kind = KIND_OF[type(send.msg)]
        if status != 200:
            reason = body[:200].decode("utf-8", "replace")
            log.debug("%s %s -> %d %s", peer, kind, status, reason)
            if status == 401:
                self._warn.warning(f"401:{peer}", "%s refused our signature: %s (is the "
                                   "cluster secret the same on every node?)", peer, reason)
            elif status == 403 and CLIENT_CERT_REQUIRED in reason:
                self._warn.warning(f"403:{peer}", "%s refused our %s: %s (start this node "
                                   "with --tls-cert and --tls-key signed by the cluster's CA)",
                                   peer, kind, reason)
            elif status == 403 and CERT_DOES_NOT_NAME in reason:
                self._warn.warning(f"403:{peer}", "%s refused our %s: %s (this node's "
                                   "--tls-cert must name it)", peer, kind, reason)
            self._failed(peer, failure_reason(status))
            return
        if isinstance(send.msg, Heartbeat) and self._metrics is not None:
            self._metrics.heartbeat_round_trip(peer, time.monotonic() - out.sent_at)
        self.alive(peer)
        self.answered_at[peer] = time.monotonic()
        reply_cls = REPLIES[type(send.msg)]
        if reply_cls is None:
            return
        try:
            reply, version = decode(reply_cls, json.loads(body))
        except (MessageError, ValueError, RecursionError) as exc:
            log.debug("%s %s: bad reply: %s", peer, kind, exc)
            self._failed(peer, "other")
            return
        if reply.sender != peer or self._blocked(peer):
            return
        await self._on_reply(reply, version)

    def _failed(self, peer: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.peer_failed(peer, reason)
        link = self._links.get(peer)
        if link is not None and link.fallen_back:
            link.retry_stream_at = -math.inf  # it may have restarted, as a newer version
        backoff = self._backoff.get(peer)
        if backoff is None:
            self._backoff[peer] = Backoff(initial=self.timing.heartbeat,
                                          maximum=PEER_BACKOFF_MAX, rng=self.rng)
            return  # one failure is a lost packet, not a dead peer
        self._retry_at[peer] = time.monotonic() + backoff.next()
