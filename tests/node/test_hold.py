"""The crash-hint stream (ddg/node/hold.py) in-process: how each end of it is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from ddg.election.timing import TIMINGS, JointTiming, Timing
from ddg.node import hold
from ddg.node.config import PeerConfig
from ddg.node.hold import Ended, Holder, HoldServer, hold_once
from ddg.util.ratelimit import TokenBucket
from ddg_testkit import wait_until_async

Serve = Callable[[HoldServer], Awaitable[str]]


@pytest.fixture
def fast_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "PING_INTERVAL", 0.05)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def go(holds: HoldServer) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await holds.handle(request, request.match_info["name"], is_goose=True)
        app = web.Application()
        app.router.add_get("/raft/hold/{name}", handle)
        app.on_shutdown.append(holds.shutdown)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield go
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def goose(serve: Serve) -> tuple[HoldServer, str]:
    """A goose's stream end with the default timing, serving: (it, its URL)."""
    holds = HoldServer(Timing())
    holds.became_goose()
    return holds, await serve(holds)


def duck(tmp_path: Path, name: str = "d1") -> PeerConfig:
    return PeerConfig(name=name)


async def open_stream(session: ClientSession, holds: HoldServer, url: str, tmp_path: Path
                      ) -> asyncio.Task[Ended]:
    """Duck d1's stream to goose g, once the goose holds it open; the task ends with it."""
    task = asyncio.create_task(hold_once(session, duck(tmp_path), "g", url))
    await wait_until_async(lambda: holds.open == 1, timeout=5, what="the stream open")
    return task


async def test_a_goose_that_steps_down_says_bye(goose: tuple[HoldServer, str],
                                                tmp_path: Path) -> None:
    holds, url = goose
    async with ClientSession() as session:
        task = await open_stream(session, holds, url, tmp_path)
        holds.stopped_being_goose()
        assert await asyncio.wait_for(task, 5) is Ended.BYE
    assert holds.open == 0


async def test_a_stopping_goose_says_bye_and_a_node_not_goose_refuses(
        serve: Serve, tmp_path: Path) -> None:
    holds = HoldServer(Timing())
    url = await serve(holds)
    async with ClientSession() as session:
        assert await hold_once(session, duck(tmp_path), "g", url) is Ended.FAILED  # 409
        holds.became_goose()
        task = await open_stream(session, holds, url, tmp_path)
        await holds.shutdown()
        assert await asyncio.wait_for(task, 5) is Ended.BYE
        holds.became_goose()  # a stopping node takes no new tenure
        assert await hold_once(session, duck(tmp_path), "g", url) is Ended.FAILED


async def test_pings_keep_it_open_and_a_newer_stream_of_the_same_duck_ends_the_older(
        goose: tuple[HoldServer, str], tmp_path: Path, fast_pings: None) -> None:
    holds, url = goose
    async with ClientSession() as session:
        first = await open_stream(session, holds, url, tmp_path)
        done, _ = await asyncio.wait({first}, timeout=0.3)  # six pings' worth
        assert not done, "pings must not end the stream"
        second = asyncio.create_task(hold_once(session, duck(tmp_path), "g", url))
        # the older stream ends with a goodbye: whoever opened the newer one (its duck, or
        # someone else in its name), the goose did not crash
        assert await asyncio.wait_for(first, 5) is Ended.BYE
        assert holds.open == 1
        holds.stopped_being_goose()
        assert await asyncio.wait_for(second, 5) is Ended.BYE


def test_token_bucket_allows_a_burst_then_one_per_interval() -> None:
    now = [0.0]
    bucket = TokenBucket(3, 1.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert not bucket.take()  # half a token
    now[0] = 1.0
    assert bucket.take() and not bucket.take()
    now[0] = 100.0  # a long quiet time refills up to the burst, no more
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)


async def refused(session: ClientSession, url: str) -> str:
    """Duck d1's next stream, refused: the reason."""
    async with session.get(f"{url}/raft/hold/d1") as resp:
        assert resp.status == 429, resp.status
        return str((await resp.json())["error"])


async def test_a_live_stream_is_replaced_at_a_limited_rate(
        goose: tuple[HoldServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where anyone on the host may open a duck's stream (an unsigned cluster), a flood of them
    must not keep replacing the duck's own: after SUPERSEDE_BURST, 429, and the live one stays."""
    monkeypatch.setattr(hold, "SUPERSEDE_EVERY", 60.0)  # nothing comes back within the test
    holds, url = goose
    async with ClientSession() as session:
        streams = [await open_stream(session, holds, url, tmp_path)]
        for _ in range(hold.SUPERSEDE_BURST):
            streams.append(asyncio.create_task(hold_once(session, duck(tmp_path), "g", url)))
            assert await asyncio.wait_for(streams[-2], 5) is Ended.BYE  # replaced: no hint
        assert "replaced too often" in await refused(session, url)
        live = streams[-1]
        assert not live.done() and holds.open == 1
        holds.stopped_being_goose()
        assert await asyncio.wait_for(live, 5) is Ended.BYE


async def test_a_stream_whose_duck_has_gone_is_replaced_without_counting(
        goose: tuple[HoldServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "SUPERSEDE_BURST", 1)
    monkeypatch.setattr(hold, "SUPERSEDE_EVERY", 60.0)
    holds, url = goose
    async with ClientSession() as session:
        gone = await open_stream(session, holds, url, tmp_path)
        gone.cancel()  # its connection closes; the goose notices at its next ping (5 s)
        await asyncio.gather(gone, return_exceptions=True)
        await wait_until_async(lambda: holds._streams["d1"][1].transport is None, timeout=5,
                               what="the goose seeing the connection closed")
        assert holds.open == 1
        first = asyncio.create_task(hold_once(session, duck(tmp_path), "g", url))
        await wait_until_async(lambda: holds._streams["d1"][1].transport is not None,
                               timeout=5, what="a live stream again")
        # replacing the dead one did not count: the one replacement allowed is still there
        second = asyncio.create_task(hold_once(session, duck(tmp_path), "g", url))
        assert await asyncio.wait_for(first, 5) is Ended.BYE
        assert "replaced too often" in await refused(session, url)
        holds.stopped_being_goose()
        assert await asyncio.wait_for(second, 5) is Ended.BYE


async def test_a_duck_that_went_away_is_noticed_by_the_next_ping(
        goose: tuple[HoldServer, str], tmp_path: Path, fast_pings: None) -> None:
    holds, url = goose
    async with ClientSession() as session:
        task = await open_stream(session, holds, url, tmp_path)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await wait_until_async(lambda: holds.open == 0, timeout=5, what="the handler gone")


async def test_an_end_without_bye_is_the_hint(tmp_path: Path) -> None:
    """What a killed goose's kernel does: the stream just closes after `hold`."""
    async def crashed_goose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhold\n\r\n")
        await writer.drain()
        writer.transport.abort()  # no last chunk, no bye: as a SIGKILL leaves it

    server = await asyncio.start_server(crashed_goose, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ClientSession() as session:
            got = await hold_once(session, duck(tmp_path), "g", f"http://127.0.0.1:{port}")
        assert got is Ended.LOST
    finally:
        server.close()
        await server.wait_closed()


async def test_a_goose_with_another_timing_is_reported_once(
        serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    holds = HoldServer(TIMINGS["fast"])
    holds.became_goose()
    url = await serve(holds)
    holder = Holder(config=duck(tmp_path), session=lambda: None, address_of=lambda n: url,
                    blocked=lambda n: False, on_lost=lambda n: asyncio.sleep(0))
    async with ClientSession() as session:
        for _ in range(2):
            task = asyncio.create_task(holder._hold(session, "g", url))
            await wait_until_async(lambda: holds.open == 1, timeout=5, what="the stream open")
            holds.stopped_being_goose()
            assert await asyncio.wait_for(task, 5) is Ended.BYE
            holds.became_goose()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "goose g runs another timing (heartbeat=15" in errors[0]


async def test_a_goose_in_a_timing_change_shares_a_timing_and_is_not_reported(
        serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """During a change the goose runs the joint timing of default and fast; a duck still on
    default (or already on fast) shares one with it: nothing to report."""
    holds = HoldServer(JointTiming.of([Timing(), TIMINGS["fast"]]))
    holds.became_goose()
    url = await serve(holds)
    for mine in (Timing(), TIMINGS["fast"]):
        holder = Holder(config=duck(tmp_path), session=lambda: None,
                        address_of=lambda n: url, blocked=lambda n: False,
                        on_lost=lambda n: asyncio.sleep(0))
        holder.timing = mine
        async with ClientSession() as session:
            task = asyncio.create_task(holder._hold(session, "g", url))
            await wait_until_async(lambda: holds.open == 1, timeout=5, what="the stream open")
            holds.stopped_being_goose()
            assert await asyncio.wait_for(task, 5) is Ended.BYE
            holds.became_goose()
    holds.announce(TIMINGS["fast"])  # the change completed: fast alone
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
