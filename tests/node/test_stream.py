"""The peer stream (ddg/node/frames.py, peers.py, inbound.py): its framing and signing, its
bounded queue, and the transport against a real node's HTTP server in-process: messages on
one stream with their replies; a peer of 0.2.0 (no stream: 404) gets HTTP POSTs instead; a
peer that never answers costs a timeout, not memory; fault injection drops both ways."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ddg.election.core import Send
from ddg.election.messages import Heartbeat, HeartbeatAck, Message, TimeoutNow, VoteRequest
from ddg.election.timing import Timing
from ddg.errors import MessageError
from ddg.net import auth
from ddg.node import frames, peers
from ddg.node.config import PeerConfig
from ddg.node.node import Node
from ddg.node.peers import MAX_QUEUED, Link, PeerTransport, _Out
from ddg.util.ratelimit import LogThrottle
from ddg_testkit.innode import node_in_process
from ddg_testkit.wait import wait_until_async

SECRET = b"s3cret-s3cret"
# Timeouts (an election timeout's minimum) no busy machine reaches: no message is lost to
# one here, unless the test wants it (then the default timing).
PATIENT = Timing(heartbeat_ms=500, election_timeout_min_ms=5000, election_timeout_max_ms=10000)


async def until(cond: Callable[[], bool], what: str) -> None:
    await wait_until_async(cond, timeout=10, what=what, interval=0.005)


# ---- framing -----------------------------------------------------------------------------

def test_a_signed_frame_passes_the_recipients_verifier_once() -> None:
    body = b'{"term":1,"sender":"b","seq":1,"version":1}'
    frame = frames.request_frame(7, "heartbeat", body, secret=SECRET, recipient="a")
    req = frames.parse_request(frame)
    assert (req.id, req.kind, req.body) == (7, "heartbeat", body)
    a = auth.Verifier(SECRET, recipient="a")
    assert a.check(req.signature, "POST", "/raft/heartbeat", req.body) is None
    assert a.check(req.signature, "POST", "/raft/heartbeat", req.body) == "replayed request"
    c = auth.Verifier(SECRET, recipient="c")  # bound to the recipient
    assert c.check(req.signature, "POST", "/raft/heartbeat", req.body) == "bad signature"
    other = frames.request_frame(8, "heartbeat", body, secret=SECRET, recipient="a")
    forged = frames.parse_request(other)
    assert a.check(forged.signature, "POST", "/raft/vote", forged.body) == "bad signature"
    assert a.check(forged.signature, "POST", "/raft/heartbeat", body + b" ") == "bad signature"
    unsigned = frames.parse_request(frames.request_frame(9, "vote", body, secret=None,
                                                         recipient="a"))
    assert unsigned.signature == {}
    assert a.check(unsigned.signature, "POST", "/raft/vote", body) is not None


@pytest.mark.parametrize("frame", [
    b"no header line", b"[1]\n{}", b"{bad\n{}", b'{"id":1}\n{}', b'{"id":1,"kind":"hold"}\n{}',
    b'{"id":-1,"kind":"vote"}\n{}', b'{"id":true,"kind":"vote"}\n{}',
    b'{"id":1,"kind":"vote","extra":1}\n{}', b'{"id":1,"kind":"vote","sig":5}\n{}',
])
def test_a_malformed_request_frame_is_a_clear_error(frame: bytes) -> None:
    with pytest.raises(MessageError):
        frames.parse_request(frame)


def test_a_reply_frame_round_trips() -> None:
    reply = frames.parse_reply(frames.reply_frame(3, 503, b'{"error":"x"}'))
    assert (reply.re, reply.status, reply.body) == (3, 503, b'{"error":"x"}')
    read = frames.read_request(b'{"id":4,"kind":"nope"}\n')  # answered: a 400 under id 4
    assert read is not None and read[0] == 4 and isinstance(read[1], MessageError)
    assert frames.read_request(b"junk") is None  # nothing to answer
    with pytest.raises(MessageError):
        frames.parse_reply(b'{"re":1}\n{}')


# ---- the queue ---------------------------------------------------------------------------

def hb(seq: int) -> Send:
    return Send(to="a", msg=Heartbeat(term=1, sender="b", seq=seq))


def vote(term: int) -> Send:
    return Send(to="a", msg=VoteRequest(term=term, sender="b"))


async def test_a_link_keeps_the_newest_heartbeat_and_a_bounded_queue() -> None:
    link = Link("a")
    first = _Out(hb(1), asyncio.get_running_loop().create_future())
    link.put(first)
    link.put(_Out(hb(2)))
    assert first.done is not None and first.done.done(), "the replaced heartbeat is dropped"
    outs = [_Out(vote(t), asyncio.get_running_loop().create_future())
            for t in range(MAX_QUEUED + 3)]
    for out in outs:
        link.put(out)
    assert [o.done.done() for o in outs[:3] if o.done] == [True] * 3, "oldest dropped first"
    taken = []
    while (out := link.take()) is not None:
        taken.append(out.send.msg)
    assert [m.term for m in taken[:-1]] == list(range(3, MAX_QUEUED + 3))
    assert isinstance(taken[-1], Heartbeat) and taken[-1].seq == 2  # votes go first


# ---- the transport against a node -------------------------------------------------------

class Peer:
    """Node b's side: a PeerTransport sending to A at ADDRESS, its replies collected."""

    def __init__(self, address: str, secret: bytes | None = SECRET,
                 timing: Timing = PATIENT) -> None:
        self.replies: list[Message] = []
        self.blocked: set[str] = set()
        self.transport = PeerTransport(
            config=PeerConfig(name="b", secret=secret, timing=timing), rng=random.Random(2),
            address_of=lambda n: address if n == "a" else None, version=lambda: 1,
            blocked=lambda p: p in self.blocked, on_reply=self._on_reply,
            warn=LogThrottle(logging.getLogger("test"), 60))

    async def _on_reply(self, msg: Message, version: int) -> None:
        self.replies.append(msg)

    async def acks(self, n: int) -> None:
        await until(lambda: sum(isinstance(r, HeartbeatAck) for r in self.replies) >= n,
                    f"{n} acks")


class Counted:
    """The node's app behind a middleware that counts requests by path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], object]) -> web.StreamResponse:
        self.paths.append(request.path)
        return await handler(request)  # type: ignore[misc,no-any-return]


SERVERS: dict[Peer, TestServer] = {}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    servers: list[TestServer] = []
    transports: list[PeerTransport] = []

    async def serve(*, old: bool = False, secret: bytes | None = SECRET
                    ) -> tuple[Node, Peer, Counted]:
        node = node_in_process(tmp_path, secret=SECRET)
        counted = Counted()
        if old:  # what a node of 0.2.0 serves: the POSTs, no stream
            app = web.Application(middlewares=[counted.middleware])
            for kind in ("vote", "heartbeat", "timeout_now"):
                app.router.add_post(frames.raft_path(kind), node.handle_raft)
        else:
            app = node.make_app()
            app.middlewares.insert(0, counted.middleware)
            app.cleanup_ctx.clear()
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        peer = Peer(str(server.make_url("")).rstrip("/"), secret)
        SERVERS[peer] = server
        await peer.transport.start()
        transports.append(peer.transport)
        return node, peer, counted

    yield serve
    for t in transports:
        await t.close()
    for s in servers:
        await s.close()


async def test_heartbeats_ride_one_stream_and_their_acks_come_back_on_it(served) -> None:
    node, peer, counted = await served()
    for seq in range(1, 21):
        await peer.transport.send(hb(seq))
        await peer.acks(seq)
    assert counted.paths == [frames.PATH + "b"], "one upgrade, no POST"
    assert peer.transport.links() == {"a": "stream"}
    assert node.streams_in.senders == ["b"]
    assert node.core is not None and node.core.leader == "b"
    await peer.transport.deliver(Send(to="a", msg=TimeoutNow(term=1, sender="b")))
    assert counted.paths == [frames.PATH + "b"]


async def test_a_peer_of_0_2_0_gets_posts_and_is_offered_the_stream_again_later(
        served) -> None:
    _node, peer, counted = await served(old=True)
    for seq in range(1, 6):
        await peer.transport.send(hb(seq))
        await peer.acks(seq)
    assert counted.paths == [frames.PATH + "b"] + ["/raft/heartbeat"] * 5
    assert peer.transport.links() == {"a": "http"}
    link = peer.transport._links["a"]
    link.retry_stream_at = time.monotonic()  # STREAM_RETRY later
    await peer.transport.send(hb(6))
    await peer.acks(6)
    assert counted.paths[-2:] == [frames.PATH + "b", "/raft/heartbeat"]
    assert peer.transport.links() == {"a": "http"}


async def test_a_message_in_another_members_name_is_refused_on_the_stream(served) -> None:
    node, peer, _counted = await served()
    await peer.transport.send(Send(to="a", msg=Heartbeat(term=1, sender="c", seq=1)))
    await until(lambda: peer.transport._backoff.get("a") is not None, "a failure")
    assert node.core is not None and node.core.leader is None
    assert not peer.replies


async def test_a_wrong_secret_is_refused_at_the_upgrade_and_said(served, caplog) -> None:
    node, peer, counted = await served(secret=b"another-secret")
    with caplog.at_level(logging.WARNING):
        await peer.transport.send(hb(1))
        await until(lambda: "/raft/heartbeat" in counted.paths, "the POST instead")
        await until(lambda: "refused our signature" in caplog.text, "the warning")
    assert not peer.replies and node.streams_in.senders == []


async def test_fault_injection_drops_messages_both_ways(served) -> None:
    node, peer, _counted = await served()
    await peer.transport.send(hb(1))
    await peer.acks(1)
    peer.blocked.add("a")  # this side's partition: nothing leaves
    await peer.transport.send(hb(2))
    await asyncio.sleep(0.05)
    assert node.core is not None and node.core.counters.heartbeats_received == 1
    peer.blocked.clear()
    node.partitions.isolate(False, {"b"}, node.membership.names, "a")  # the other side's
    await peer.transport.send(hb(3))
    await until(lambda: peer.transport._backoff.get("a") is not None, "a failure")
    assert node.core.counters.heartbeats_received == 1
    assert sum(isinstance(r, HeartbeatAck) for r in peer.replies) == 1


async def test_a_peer_that_never_answers_costs_a_timeout_and_bounded_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that is accepted and then never answered (a frozen process): each message
    waits at most an election timeout's minimum, at most two heartbeats are in flight, and
    the stream is ended and opened again."""
    opened: list[web.WebSocketResponse] = []
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        opened.append(ws)
        await release.wait()
        return ws

    app = web.Application()
    app.router.add_get(frames.PATH + "{name}", silent)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    peer = Peer(str(server.make_url("")).rstrip("/"), timing=Timing())
    await peer.transport.start()
    failures: list[str] = []
    monkeypatch.setattr(peer.transport, "_failed",
                        lambda p, reason: failures.append(reason))
    try:
        t0 = time.monotonic()
        for seq in range(1, 40):
            await peer.transport.send(hb(seq))
            link = peer.transport._links["a"]
            assert len(link.pending) <= peers.MAX_HEARTBEATS_IN_FLIGHT
            await asyncio.sleep(0.01)
        await until(lambda: "timeout" in failures and len(opened) >= 2,
                    "a timeout, and a new stream")
        assert time.monotonic() - t0 < 5
        assert not peer.replies
    finally:
        release.set()
        await peer.transport.close()
        await server.close()
    assert not peer.transport._tasks, "tasks left after close"


async def test_a_peer_gone_before_its_stream_opened_is_no_error(served, caplog) -> None:
    """A peer whose connect timed out closes the connection while this node answers the
    upgrade: nothing to log but a debug line (it was logged as an unexpected error, a
    traceback: found by tests/harness/test_faults.py's join-lag scenario under load)."""
    node, peer, _counted = await served()
    host, port = node_address(peer)
    with caplog.at_level(logging.DEBUG, logger="ddg.node"):
        for _ in range(5):
            headers = auth.sign_headers(SECRET, "GET", frames.PATH + "b", b"", recipient="a")
            request = (f"GET {frames.PATH}b HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
            _, writer = await asyncio.open_connection(host, port)
            writer.write(request.encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await until(lambda: sum(caplog.text.count(end) for end in (
            "stream of b not opened", "stream of b closed", "unexpected error")) == 5,
            "the 5 upgrades' ends")
        server = served_servers(peer)
        await until(lambda: not server.connections, "the server to finish them")
    assert "unexpected error" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert node.streams_in.senders == []


def served_servers(peer: Peer) -> Any:
    """The aiohttp Server behind the node PEER sends to (its open connections)."""
    server = SERVERS[peer]
    assert server.runner is not None
    return server.runner.server


def node_address(peer: Peer) -> tuple[str, int]:
    url = peer.transport._address_of("a")
    assert url is not None
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def test_a_stream_opened_while_the_node_stops_is_closed_not_served(
        served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's upgrade that passed the stopping check just before the node began to stop:
    its handshake ends after shutdown closed the streams. It is closed at once, not served
    until the peer hangs up (which a stop would wait for)."""
    node, peer, _counted = await served()
    prepare = web.WebSocketResponse.prepare
    shaken: list[bool] = []

    async def stop_meanwhile(self: web.WebSocketResponse, request: web.Request) -> Any:
        await node.streams_in.shutdown()  # the stop begins during the handshake
        try:
            return await prepare(self, request)
        finally:
            shaken.append(True)

    monkeypatch.setattr(web.WebSocketResponse, "prepare", stop_meanwhile)
    await peer.transport.send(hb(1))
    await until(lambda: bool(shaken), "the handshake")
    await until(lambda: node.streams_in.senders == [] and served_servers(peer).connections == [],
                "the stream to be closed")
    assert peer.transport.links().get("a") != "stream"


async def test_a_reply_that_stops_coming_after_one_that_came_still_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One reply timer per link (not one per message): once the first request is answered,
    the next one's missing reply still ends the stream in an election timeout's minimum."""
    answered = asyncio.Event()
    release = asyncio.Event()

    async def once(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_bytes()
        req = frames.parse_request(first)
        await ws.send_bytes(frames.reply_frame(req.id, 503, b'{"error":"busy"}'))
        answered.set()
        await release.wait()  # then silent: a process frozen after one answer
        return ws

    app = web.Application()
    app.router.add_get(frames.PATH + "{name}", once)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    # a wait a busy machine's connect and first answer stay within, a timeout still soon
    patient = Timing(heartbeat_ms=200, election_timeout_min_ms=1000, election_timeout_max_ms=2000)
    peer = Peer(str(server.make_url("")).rstrip("/"), timing=patient)
    await peer.transport.start()
    failures: list[str] = []
    monkeypatch.setattr(peer.transport, "_failed", lambda p, reason: failures.append(reason))
    try:
        await peer.transport.send(hb(1))
        await until(lambda: "http_5xx" in failures, "the first request's answer")
        await peer.transport.send(hb(2))
        await until(lambda: "timeout" in failures, "the second request's timeout")
        assert peer.transport.links() == {"a": "closed"}
    finally:
        release.set()
        await peer.transport.close()
        await server.close()


async def test_a_peer_that_does_not_read_its_replies_loses_its_stream(
        served, caplog: pytest.LogCaptureFixture) -> None:
    """A sender that writes frames and never reads the replies: once MAX_UNREAD bytes of
    replies wait, its stream is closed; no write of a reply ever waits on it (there is no
    timer per reply to end such a wait)."""
    import socket

    node, peer, _counted = await served()
    host, port = node_address(peer)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    headers = auth.sign_headers(SECRET, "GET", frames.PATH + "b", b"", recipient="a")
    writer.write((f"GET {frames.PATH}b HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    async with asyncio.timeout(5):
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    # Each frame is refused with a reason that names its 40 unknown fields: ~1 KB a reply.
    fields = {f"field{i:02d}" + "x" * 40: 1 for i in range(40)}
    try:
        with caplog.at_level(logging.DEBUG, logger="ddg.node"):
            # until the kernel's buffers (megabytes on loopback) are full and 16 KiB wait
            deadline = time.monotonic() + 30
            id = 0
            while node.streams_in.senders and time.monotonic() < deadline:
                for _ in range(50):
                    id += 1
                    body = b'{"id":%d,' % id + json.dumps(fields)[1:].encode() + b"\n{}"
                    # a client's frame is masked: a zero mask leaves the bytes as they are
                    writer.write(b"\x82\xfe" + len(body).to_bytes(2, "big") + b"\0\0\0\0"
                                 + body)
                async with asyncio.timeout(5):
                    await writer.drain()
            await until(lambda: node.streams_in.senders == [], "the stream to be closed")
        assert "stream of b ended: it does not read its replies" in caplog.text
    finally:
        writer.close()
    await peer.transport.send(hb(1))  # and b's next stream is served as any
    await peer.acks(1)
