"""The node's HTTP contract in-process (aiohttp's test client), where a real process cannot
show the detail: what happens while the disk is slow; when its ticker wakes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from ddg.election.core import Election, HardState, Output, Send, State
from ddg.election.messages import Heartbeat, HeartbeatAck, VoteResponse
from ddg.election.timing import Timing
from ddg_testkit.innode import node_in_process
from ddg_testkit.wait import wait_until_async


async def test_a_slow_disk_delays_the_vote_but_not_get_root(tmp_path: Path) -> None:
    node = node_in_process(tmp_path)
    entered, written, release = threading.Event(), threading.Event(), threading.Event()
    save = node.data.save_hard_state

    def stalled_save(hard: HardState) -> None:
        entered.set()
        release.wait(5)  # a disk that takes its time
        save(hard)
        written.set()

    node.data.save_hard_state = stalled_save  # type: ignore[method-assign]
    client = TestClient(TestServer(node.make_app()))
    await client.start_server()
    try:
        vote = asyncio.create_task(client.post(
            "/raft/vote", json={"term": 1, "sender": "b", "version": 1}))
        assert await asyncio.to_thread(entered.wait, 5), "the vote never reached the disk"
        t0 = time.monotonic()
        for _ in range(20):
            resp = await client.get("/")
            assert await resp.text() == "duck"
        took = time.monotonic() - t0
        assert took < 0.5, f"GET / waited for the disk: {took:.3f} s for 20"
        assert not vote.done(), "the vote was answered before its HardState was on disk"
        release.set()
        async with asyncio.timeout(5):
            resp = await vote
        assert written.is_set()
        body = await resp.json()
        assert body["granted"] is True and body["term"] == 1
        st = await (await client.get("/status")).json()
        assert st["storage"]["fsync_last_ms"] is not None and st["voted_for"] == "b"
    finally:
        release.set()
        await client.close()
        node.data.close()


async def test_a_duck_never_says_duck_on_the_floating_address(tmp_path: Path) -> None:
    """A request a node accepted on its --vip address (127.0.0.2 here: loopback, no address is
    added or removed, no keeper runs) after it stopped being the goose gets 503, never `duck`:
    the address speaks for the goose only. On its own address the node says `duck`."""
    from dataclasses import replace

    from ddg.ops.vip import VipConfig

    for host, vip, expect in (("127.0.0.2", "127.0.0.2/8", 503),
                              ("127.0.0.1", "127.0.0.2/8", 200)):
        node = node_in_process(tmp_path / host)
        node.config = replace(node.config, vip=VipConfig(address=vip, device="lo"))
        assert node.vip is None  # the keeper is the node's only when built with the config
        client = TestClient(TestServer(node.make_app(), host=host))
        await client.start_server()
        try:
            resp = await client.get("/")
            assert resp.status == expect, await resp.text()
            if expect == 503:
                assert "not the goose: 127.0.0.2 has moved" in (await resp.json())["error"]
            else:
                assert await resp.text() == "duck"
        finally:
            await client.close()
            node.data.close()


async def test_a_cancelled_apply_keeps_the_write_lock_until_its_write_ends(
        tmp_path: Path) -> None:
    """A peer stream that ends while its reply is applied cancels that apply mid-write; the
    write goes on in its thread, so the next one must wait for it (never two at once on one
    file, never the core told of a state that is not on disk)."""
    from ddg.election.core import Output

    node = node_in_process(tmp_path)
    entered, release, overlapping = threading.Event(), threading.Event(), threading.Event()
    running, overlaps = [0], [0]
    lock = threading.Lock()
    save = node.data.save_hard_state

    def slow_save(hard: HardState) -> None:
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
            if running[0] > 1:
                overlapping.set()
        entered.set()
        release.wait(5)
        save(hard)
        with lock:
            running[0] -= 1

    node.data.save_hard_state = slow_save  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(node._apply(Output(persist=HardState(term=1))))
        assert await asyncio.to_thread(entered.wait, 5), "the first write never started"
        first.cancel()
        second = asyncio.create_task(node._apply(Output(persist=HardState(term=2))))
        # Without the lock held, the second write starts at once: give it 0.3 s to show.
        assert not await asyncio.to_thread(overlapping.wait, 0.3), "the second write did not wait"
        assert not second.done()
        release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(first, second, return_exceptions=True)
        assert first.cancelled()
        assert overlaps[0] == 1, "two writes of the hard state ran at once"
        assert node.data.load_hard_state().term == 2
    finally:
        release.set()
        node.data.close()


def count_ticks(core: Election) -> list[int]:
    """CORE's tick() counted from now: the one-element list holds the count."""
    ticks = [0]
    tick = core.tick

    def counted(now: float) -> Output:
        ticks[0] += 1
        return tick(now)

    core.tick = counted  # type: ignore[method-assign]
    return ticks


async def test_a_ducks_ticker_does_not_wake_for_every_heartbeat(tmp_path: Path) -> None:
    """The ticker runs at the core's deadlines; a heartbeat moves a duck's deadline later, so
    it wakes nothing (it woke the ticker once per message: the cost at rest, issue 17). A
    deadline made earlier still wakes it at once (the goose's first heartbeat)."""
    node = node_in_process(tmp_path)
    core = node.core
    assert core is not None
    ticks = count_ticks(core)

    async def heartbeat(seq: int) -> None:
        assert core is not None
        await node._apply(core.step(Heartbeat(term=1, sender="b", seq=seq), time.monotonic(),
                                    1))

    await heartbeat(1)
    ticker = asyncio.create_task(node._run_ticker())
    try:
        await asyncio.sleep(0)  # its first run
        first = ticks[0]
        for seq in range(2, 32):
            await heartbeat(seq)
            await asyncio.sleep(0.01)
        assert core.state is State.DUCK and core.leader == "b"
        # 30 heartbeats 10 ms apart: the deadline (an election timeout after the last) and the
        # ticker's cap wake it a few times at most, where every heartbeat woke it.
        assert ticks[0] - first < 10, f"{ticks[0] - first} ticks for 30 heartbeats"
        # An earlier deadline wakes it: the heartbeats stop and the duck campaigns, its
        # deadline now; its pre-vote round is the tick that the wait does not delay.
        before = ticks[0]
        await node._apply(core.goose_lost("b", time.monotonic()))
        await wait_until_async(lambda: ticks[0] > before, timeout=5, what="a tick",
                               interval=0.005)
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        await node.peers.close()
        node.data.close()


async def test_a_gooses_ticker_runs_once_per_heartbeat_round(tmp_path: Path) -> None:
    """A goose whose ducks answer at once: the quorum's ack cancels the round's resend, and
    the ticker sleeps on to the next heartbeat instead of waking for the resend it no longer
    has (a wake-up for nothing each round: the cost at rest)."""
    # the default's heartbeat and a lease under three of them (the round's resend then comes
    # before the next round), but a patient election: a stall does not end the tenure
    node = node_in_process(tmp_path, timing=Timing(heartbeat_ms=50, election_timeout_min_ms=1000,
                                                   election_timeout_max_ms=2000, lease_ms=140))
    core = node.core
    assert core is not None
    loop = asyncio.get_running_loop()

    async def ack(msg: Heartbeat) -> None:  # b answers each round as a peer's stream would
        await node._on_reply(HeartbeatAck(term=msg.term, sender="b", seq=msg.seq,
                                          success=True), 1)

    acks: set[asyncio.Task[None]] = set()

    async def send(s: Send) -> None:
        if isinstance(s.msg, Heartbeat) and s.to == "b":
            task = loop.create_task(ack(s.msg))
            acks.add(task)
            task.add_done_callback(acks.discard)

    node.peers.send = send  # type: ignore[assignment,method-assign]
    await node._apply(core.tick(time.monotonic()))  # pre-vote (its deadline is long past)
    await node._apply(core.step(VoteResponse(term=1, sender="b", granted=True, pre_vote=True),
                                time.monotonic()))
    await node._apply(core.step(VoteResponse(term=1, sender="b", granted=True),
                                time.monotonic()))
    assert core.state is State.GOOSE
    ticks = count_ticks(core)
    ticker = asyncio.create_task(node._run_ticker())
    try:
        first_seq = core.seq
        await asyncio.sleep(1.0)  # a busy machine may run fewer rounds: they are counted
        rounds = core.seq - first_seq
        assert rounds >= 5 and core.state is State.GOOSE
        # one tick per round, and a few for the cap; the resend's made it two per round
        assert ticks[0] <= 1.5 * rounds + 3, f"{ticks[0]} ticks for {rounds} rounds"
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        node.data.close()


async def test_outputs_applied_after_the_ticker_stopped_are_no_error(tmp_path: Path) -> None:
    """At a stop the ticker is cancelled while it waits, and the node still applies outputs
    (the goose's hand-over): that must not touch the dead ticker's timer (it raised
    RuntimeError: Cannot change state of exited Timeout)."""
    node = node_in_process(tmp_path)
    core = node.core
    assert core is not None

    async def no_send(s: Send) -> None:
        pass

    node.peers.send = no_send  # type: ignore[assignment,method-assign]
    await node._apply(core.step(Heartbeat(term=1, sender="b", seq=1), time.monotonic(), 1))
    ticker = asyncio.create_task(node._run_ticker())
    try:  # waiting for its deadline, which is near (a later one would reschedule its timer)
        await asyncio.sleep(0)  # its first run
        await asyncio.sleep(max(node._tick_at - time.monotonic() - 0.03, 0.0))
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    assert node._ticking is None, "the cancelled wait's timer is still there to reschedule"
    try:
        for seq in range(2, 5):
            await node._apply(core.step(Heartbeat(term=1, sender="b", seq=seq),
                                        time.monotonic(), 1))
        assert core.leader == "b"
    finally:
        node.data.close()
