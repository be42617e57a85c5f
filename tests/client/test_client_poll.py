"""The node client's light /status poll (ddg.client) against real HTTP servers in this
process: aiohttp (what a node serves) and hand-written answers for the edge cases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from ddg.client import NodeClient, NodeStatus, Role
from ddg.local.embedded import free_port

STATUS = NodeStatus(name="n1", role=Role.DUCK, term=7, goose="n2", pid=1234, uptime_s=3.5)


def poller(timeout: float = 1.0) -> NodeClient:
    return NodeClient(timeout=timeout)


async def serve_aiohttp(port: int, hits: list[str]) -> web.AppRunner:
    async def status(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response(STATUS.to_json())

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/prefix/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def node() -> AsyncIterator[tuple[str, list[str], int]]:
    port = free_port("127.0.0.1")
    hits: list[str] = []
    runner = await serve_aiohttp(port, hits)
    try:
        yield f"http://127.0.0.1:{port}", hits, port
    finally:
        await runner.cleanup()


async def test_polls_a_node_on_one_kept_alive_connection(node: tuple[str, list[str], int]
                                                         ) -> None:
    address, hits, _ = node
    p = poller()
    try:
        replies = [await p.poll(address) for _ in range(5)]
        assert all(r.status == STATUS for r in replies)
        assert all(r.latency_ms > 0 for r in replies)
        assert len(p._reader._idle[address]) == 1  # one connection, used five times
        assert (await p.poll(address + "/prefix")).status == STATUS
        assert (await p.poll(address + "/nothing")).error == "HTTP 404"
        assert hits.count("/status") == 5
    finally:
        await p.aclose()


async def test_a_closed_keep_alive_connection_is_retried_once() -> None:
    port = free_port("127.0.0.1")
    address = f"http://127.0.0.1:{port}"
    first = await serve_aiohttp(port, [])
    p = poller()
    try:
        assert (await p.poll(address)).ok
        await first.cleanup()  # closes the kept-alive connection from the server's side
        assert (await p.poll(address)).error == "connection refused"
        second = await serve_aiohttp(port, [])
        try:
            reply = await p.poll(address)
            assert reply.ok, reply.error
        finally:
            await second.cleanup()
    finally:
        await p.aclose()


async def raw_server(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]) -> tuple[asyncio.Server, str]:
    port = free_port("127.0.0.1")
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}"


def body() -> bytes:
    return json.dumps(STATUS.to_json()).encode()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    data = body()
    half = len(data) // 2
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (data[:half], data[half:]):
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body())
    await writer.drain()
    writer.close()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await writer.drain()
    writer.close()


async def not_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    payload = b'{"hello": "world"}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    await writer.drain()


async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.Event().wait()  # never answers


@pytest.mark.parametrize(("answer", "expect"), [
    (chunked, None), (http10, None),
    (garbage, "bad HTTP answer: status line 'SSH-2.0-OpenSSH_9.2'"),
    (not_status, "bad /status answer:"),
    (hangs_up, "connection closed by node"),
    (silent, "timeout"),
], ids=["chunked", "http/1.0", "garbage", "not-a-status", "hangs-up", "silent"])
async def test_answers_as_nodeclient_would(
        answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        expect: str | None) -> None:
    server, address = await raw_server(answer)
    p = poller(timeout=0.3)
    try:
        reply = await p.poll(address)
        if expect is None:
            assert reply.status == STATUS, reply.error
        else:
            assert reply.error is not None and reply.error.startswith(expect), reply.error
    finally:
        await p.aclose()
        server.close()


async def test_refused_and_https_go_the_usual_way() -> None:
    p = poller(timeout=0.3)
    try:
        reply = await p.poll(f"http://127.0.0.1:{free_port('127.0.0.1')}")
        assert reply.error == "connection refused"
        # not plain http: NodeClient's answer (here: nothing listens)
        reply = await p.poll(f"https://127.0.0.1:{free_port('127.0.0.1')}")
        assert reply.error is not None and not reply.ok
    finally:
        await p.aclose()
