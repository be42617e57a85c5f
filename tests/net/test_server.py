"""ddg.server on real sockets: the connection cap, the header, keep-alive and body timeouts, and
rate-limited accept() errors, including a node under a lowered RLIMIT_NOFILE in a subprocess.

Nothing here sleeps to synchronise: tests wait for a condition with a deadline. The only sleeps
are a slow client's pacing and an idle period whose length is what a test is about.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ddg.errors import ConfigError
from ddg.net.server.accept import AcceptErrorFilter, install_accept_error_filter
from ddg.net.server.body import read_body
from ddg.net.server.connection import connection_of
from ddg.net.server.limits import (
    DEFAULT_FD_RESERVE,
    UNLIMITED_FD_BUDGET,
    ServerLimits,
    raise_fd_limit,
)
from ddg.net.server.listener import REFUSAL, GuardedServer, serve
from ddg_testkit import wait_until_async

pytestmark = pytest.mark.timeout(15)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FAST: dict[str, Any] = {"header_timeout": 0.3, "keepalive_timeout": 1.0, "lingering_time": 0.2,
        "shutdown_timeout": 1.0}
BODY_LIMIT = 1000
BODY_TIMEOUT = 0.3
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# ---- helpers ----------------------------------------------------------------------------


async def eventually(check: Callable[[], bool], what: str, within: float = 3.0) -> float:
    """The test kit's wait, polled finely (the timers here are tens of ms): how long it took."""
    start = time.monotonic()
    await wait_until_async(check, timeout=within, what=what, interval=0.005)
    return time.monotonic() - start


async def until_closed(reader: asyncio.StreamReader, within: float = 3.0) -> tuple[bytes, float]:
    """Read until the server closes the connection; return what it sent and the time taken."""
    start = time.monotonic()
    data = b""
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data, time.monotonic() - start


async def connect(port: int) -> Conn:
    async with asyncio.timeout(3):
        return await asyncio.open_connection(HOST, port)


async def exchange(conn: Conn, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send RAW, read one response: (status, lower-cased headers, body)."""
    reader, writer = conn
    writer.write(raw)
    async with asyncio.timeout(3):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def get_eventually(port: int, within: float) -> float:
    """GET / on fresh connections until one answers 200; return how long that took."""
    start = time.monotonic()
    while True:
        try:
            reader, writer = await connect(port)
            try:
                status, _, _ = await exchange((reader, writer), GET)
            finally:
                writer.close()
            if status == 200:
                return time.monotonic() - start
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        if time.monotonic() - start > within:
            pytest.fail(f"no 200 for GET / within {within} s")
        await asyncio.sleep(0.02)


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


def server_side_fds(port: int) -> int:
    """How many of this process's fds are accepted connections on PORT (Linux /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # not LISTEN
            inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


# ---- the app under test -----------------------------------------------------------------


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Like ddg.node's: an HTTPException becomes a JSON reason; anything else is logged as an
    ERROR with its traceback, which is what a mid-body disconnect used to produce."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except Exception:
        logging.getLogger("test.app").exception("unexpected error")
        return web.json_response({"error": "internal error"}, status=500)


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="duck")


async def echo(request: web.Request) -> web.Response:
    body = await read_body(request, limit=BODY_LIMIT, timeout=BODY_TIMEOUT)
    return web.json_response({"size": len(body)})


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.query["size"]))


async def introspect(request: web.Request) -> web.Response:
    return web.json_response({"keepalive_timeout": request.protocol.keepalive_timeout,
                              "wrapped": connection_of(request) is not None})


RELEASE = web.AppKey("release", asyncio.Event)  # what the /held handler waits for
HELD_TASKS = web.AppKey("held", list)  # the tasks running /held (they run its middleware too)


async def held(request: web.Request) -> web.Response:
    request.app[HELD_TASKS].append(asyncio.current_task())
    await request.app[RELEASE].wait()
    return web.Response(text="late")


def make_app() -> web.Application:
    app = web.Application(middlewares=[errors_as_json])
    app[RELEASE] = asyncio.Event()
    app[HELD_TASKS] = []
    app.router.add_get("/held", held)
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/introspect", introspect)
    app.router.add_get("/big", big)
    return app


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[GuardedServer]]]:
    servers: list[GuardedServer] = []

    async def go(**limits: Any) -> GuardedServer:
        server = await serve(make_app(), HOST, 0, limits=ServerLimits(**(FAST | limits)))
        servers.append(server)
        return server

    yield go
    for server in servers:
        await server.close()


# ---- the connection cap -----------------------------------------------------------------


async def test_at_the_cap_new_connections_evict_the_stalest_idle_ones(start: Any) -> None:
    server = await start(max_connections=50, header_timeout=0.5)
    stats = server.stats
    fds_before = len(os.listdir("/proc/self/fd"))
    conns = [await connect(server.port) for _ in range(80)]
    try:
        await eventually(lambda: stats.accepted == 80, "80 accepted")
        await eventually(lambda: stats.evicted_idle == 30, "30 evicted")
        assert stats.open == 50 and stats.refused_over_cap == 0
        held = server_side_fds(server.port)
        assert held <= 50
        # 80 client ends, 50 server ends, and a few for the loop's bookkeeping at most
        assert len(os.listdir("/proc/self/fd")) - fds_before <= 80 + 50 + 5
        # A new client (a peer, /status) is served at once, in the slot of the stalest.
        took = await get_eventually(server.port, within=0.2)
        # The first 31 (30 + the slot the GET took) were closed to make room, the newest ones
        # at the header timeout.
        results = await asyncio.gather(*(until_closed(reader) for reader, _ in conns))
        assert all(data == b"" for data, _ in results)
        await eventually(lambda: stats.open == 0, "idle connections closed")
        assert stats.header_timeouts + stats.evicted_idle == 80
        assert stats.accept_errors == 0 and stats.peak_open == 50
        print(f"cap 50, 80 idle: {held} server fds at peak, a GET served in "
              f"{took * 1000:.1f} ms")
    finally:
        close_all(conns)


async def test_a_burst_larger_than_the_cap_evicts_and_refuses_nobody(start: Any) -> None:
    """More idle clients than the cap queued at once (a busy loop, a slow machine): those
    accepted in the same pass are not set up yet, so not evictable; the rest must wait for them
    rather than get a 503 (CI saw 47 of 300 refused)."""
    server = await start(max_connections=2)
    stats = server.stats
    first = [await connect(server.port) for _ in range(2)]
    burst: list[socket.socket] = []
    try:
        await eventually(lambda: len(server._by_progress) == 2, "2 set up")
        # Blocking connects finish in the kernel's accept queue: the loop runs no pass between.
        burst = [socket.create_connection((HOST, server.port), timeout=3) for _ in range(5)]
        await eventually(lambda: stats.accepted + stats.refused_over_cap == 7, "the burst taken")
        await eventually(lambda: stats.evicted_idle == 5, "5 evicted")
        assert stats.refused_over_cap == 0 and stats.open == 2 and stats.peak_open == 2
        # The newest two hold the slots.
        for sock in burst[-2:]:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = [await asyncio.to_thread(sock.recv, 100) for sock in burst[-2:]]
        assert all(data.startswith(b"HTTP/1.1 200") for data in answers)
    finally:
        close_all(first)
        for sock in burst:
            sock.close()


async def test_a_slow_stop_says_which_requests_it_waits_for(
        start: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A node that takes seconds to stop should say why (CI once saw one take over 5 s)."""
    server = await start(shutdown_timeout=5.0)
    _, writer = await connect(server.port)
    writer.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await eventually(lambda: server.busy() == 1, "the request in its handler")

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "still stopping" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="ddg.server"):
        closing = asyncio.create_task(server.close())
        await eventually(reports, "the report", within=3)
        server.runner.app[RELEASE].set()  # the request finishes: the stop goes on at once
        async with asyncio.timeout(3):
            await closing
    writer.close()
    assert reports() == ["still stopping after 1 s: 1 request(s) in flight (GET /held) get up "
                         "to 5 s to finish"]


async def test_a_handler_that_outlives_its_client_leaves_no_busy_connection(start: Any) -> None:
    """aiohttp lets a handler run on after its client hung up; when it returns, the gone
    connection must not be tracked again (it stayed 'busy' for ever, spared by eviction)."""
    server = await start()
    _reader, writer = await connect(server.port)
    writer.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await eventually(lambda: server.busy() == 1, "the request in its handler")
    writer.close()
    await eventually(lambda: server.stats.open == 0, "the client's connection lost")
    app = server.runner.app
    app[RELEASE].set()
    [task] = app[HELD_TASKS]
    async with asyncio.timeout(2):
        await asyncio.gather(task, return_exceptions=True)  # the handler and its middleware
    assert server.busy() == 0


async def test_when_every_connection_is_busy_a_new_one_gets_503(start: Any) -> None:
    server = await start(max_connections=2)
    busy = [await connect(server.port) for _ in range(2)]
    try:
        for _, writer in busy:  # a request whose body never ends: busy, not idle
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            await writer.drain()
        await eventually(lambda: server.busy() == 2, "two busy connections")
        reader, writer = await connect(server.port)
        data, _ = await until_closed(reader)
        writer.close()
        assert data == REFUSAL
        assert server.stats.refused_over_cap == 1 and server.stats.evicted_idle == 0
    finally:
        close_all(busy)


CHILD = r"""
import asyncio, json, logging, resource, sys

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

from aiohttp import web
from ddg.net.server.limits import ServerLimits, raise_fd_limit
from ddg.net.server.listener import serve

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s: %(message)s")


async def hello(request):
    return web.Response(text="duck")


async def main():
    rlimit = raise_fd_limit()
    app = web.Application()
    app.router.add_get("/", hello)
    limits = ServerLimits(**{"keepalive_timeout": 2.0} | json.loads(sys.argv[2]))
    server = await serve(app, "127.0.0.1", 0, limits=limits)
    print(json.dumps({"port": server.port, "cap": server.cap, "rlimit": rlimit}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps(server.stats.as_dict()), flush=True)
    await server.close()


asyncio.run(main())
"""


# No header timeout fires during the test: how fast the 300 connections open depends on the
# machine (a full accept queue costs a 1 s SYN retransmission), and an early timeout would make
# room before the last arrive. The cap makes room by eviction; out of fds, the clients hang up.
@pytest.mark.integration
@pytest.mark.parametrize("overrides", [{"header_timeout": 60.0, "keepalive_timeout": 60.0},
                                       {"header_timeout": 60.0, "keepalive_timeout": 60.0,
                                        "fd_reserve": 0}],
                         ids=["cap", "out-of-fds"])
async def test_a_server_limited_to_256_fds_survives_300_idle_connections(
    overrides: dict[str, float],
) -> None:
    """Under `ulimit -n 256`: with the default reserve the cap keeps it under the limit; with
    no reserve it runs out of fds, sheds connections with its spare fd, logs one line, and
    serves again once clients hang up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, "256", json.dumps(overrides), cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr
    lines: list[str] = []

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            lines.append(line.decode())

    stderr = asyncio.create_task(read_stderr(proc.stderr))
    conns: list[Conn] = []
    try:
        async with asyncio.timeout(10):
            hello = json.loads(await proc.stdout.readline())
        assert hello["rlimit"] == [256, 256]
        started = time.monotonic()
        out_of_fds = "fd_reserve" in overrides
        fds = Path(f"/proc/{proc.pid}/fd")
        for i in range(300):
            if out_of_fds and i == 200:
                # The last 100 wait in the accept queue while the server is stopped, so that
                # it meets its fd limit with connections still queued, however fast it is.
                await eventually(lambda: len(list(fds.iterdir())) >= 200,
                                 "the first 200 accepted")
                os.kill(proc.pid, signal.SIGSTOP)
            conns.append(await connect(hello["port"]))
        opening = time.monotonic() - started
        if out_of_fds:
            os.kill(proc.pid, signal.SIGCONT)
            # Hang up once it ran out (a server that read the hang-ups first would never reach
            # its limit), then all: queued idle clients would take any fd the first few free.
            await eventually(lambda: any("accept() failed" in ln for ln in lines),
                             "the server to run out of fds", within=10)
            close_all(conns)
        took = await get_eventually(hello["port"], within=3.0)
        proc.stdin.write(b"stop\n")
        async with asyncio.timeout(5):
            stats = json.loads(await proc.stdout.readline())
            await proc.wait()
            await stderr
        errors = "".join(lines)
    finally:
        close_all(conns)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    print(f"{overrides}: cap {hello['cap']}, 300 connections in {opening * 1000:.0f} ms, then "
          f"GET answered in {took * 1000:.0f} ms; stats {stats}; stderr "
          f"{len(errors.splitlines())} lines:\n{errors}")
    assert proc.returncode == 0
    assert len(errors.splitlines()) <= 3 and "Traceback" not in errors
    assert stats["peak_open"] <= hello["cap"]
    if "fd_reserve" in overrides:
        assert stats["accept_errors"] >= 1 and stats["refused_out_of_fds"] >= 1
        assert "accept() failed: Too many open files" in errors
    else:
        assert hello["cap"] == 256 - DEFAULT_FD_RESERVE
        assert stats["accept_errors"] == 0 and stats["evicted_idle"] >= 300 - hello["cap"]


# ---- header and keep-alive timeouts ------------------------------------------------------


async def test_a_client_that_sends_nothing_is_closed_after_the_header_timeout(start: Any) -> None:
    server = await start()
    reader, writer = await connect(server.port)
    data, took = await until_closed(reader)
    writer.close()
    assert data == b"" and 0.25 <= took < 1.0
    assert server.stats.header_timeouts == 1


async def test_a_client_dribbling_its_head_is_closed_after_the_header_timeout(start: Any) -> None:
    server = await start()
    reader, writer = await connect(server.port)
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200

    async def dribble() -> None:
        for byte in head:  # one byte every 20 ms: 4 s for the head if nothing stopped it
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(dribble())
    data, took = await until_closed(reader)
    task.cancel()
    writer.close()
    assert data == b"" and 0.25 <= took < 1.0
    assert server.stats.header_timeouts == 1


async def test_keep_alive_may_idle_longer_than_the_header_timeout_but_not_dribble(
    start: Any,
) -> None:
    server = await start(header_timeout=0.3, keepalive_timeout=2.0)
    conn = await connect(server.port)
    assert (await exchange(conn, GET))[0] == 200
    await asyncio.sleep(0.5)  # idle longer than the header timeout, within keep-alive
    assert (await exchange(conn, GET))[0] == 200
    conn[1].write(b"GET / HTTP/1.1\r\nHo")  # the next head starts, and stalls
    data, took = await until_closed(conn[0])
    conn[1].close()
    assert data == b"" and 0.25 <= took < 1.0
    assert server.stats.header_timeouts == 1


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    start: Any,
) -> None:
    server = await start(header_timeout=0.3, keepalive_timeout=0.6)
    conn = await connect(server.port)
    assert (await exchange(conn, GET))[0] == 200
    data, took = await until_closed(conn[0])
    conn[1].close()
    assert data == b"" and 0.55 <= took < 1.2
    assert server.stats.header_timeouts == 0


async def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout(
    start: Any,
) -> None:
    server = await start(write_timeout=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    async with asyncio.timeout(3):
        await asyncio.get_running_loop().sock_connect(sock, (HOST, server.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (16 << 20))
    took = await eventually(lambda: server.stats.write_timeouts == 1, "write timeout")
    await eventually(lambda: server.stats.open == 0, "connection closed")
    writer.close()
    assert 0.3 <= took < 1.5


async def test_a_client_reading_slowly_but_steadily_is_not_cut_off(start: Any) -> None:
    server = await start(write_timeout=0.3)
    reader, writer = await connect(server.port)
    size = 4 << 20
    writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
    received = 0
    started = time.monotonic()
    async with asyncio.timeout(5):
        await reader.readuntil(b"\r\n\r\n")
        while received < size:
            received += len(await reader.read(256 << 10))
            await asyncio.sleep(0.05)  # pacing: the reader is slow, never stalled 0.3 s
    writer.close()
    assert time.monotonic() - started > 0.5  # slower than the write timeout
    assert received == size and server.stats.write_timeouts == 0


# ---- bodies -----------------------------------------------------------------------------


def post(length: int, body: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (length, body)


async def test_closed_listeners_refuse_new_connections_while_open_ones_go_on(
        start: Any) -> None:
    """The listener fault: new connections are refused, accepted ones keep being served; it
    listens again on the same port on request or after the given time."""
    server = await start()
    port = server.port
    kept = await connect(port)
    assert (await exchange(kept, GET))[0] == 200
    server.close_listeners()
    assert not server.listening
    with pytest.raises(ConnectionRefusedError):
        await connect(port)
    assert (await exchange(kept, GET))[0] == 200, "an accepted connection goes on"
    server.reopen_listeners()
    assert server.listening and server.port == port
    fresh = await connect(port)
    assert (await exchange(fresh, GET))[0] == 200
    server.close_listeners(reopen_after=0.2)
    with pytest.raises(ConnectionRefusedError):
        await connect(port)
    assert await get_eventually(port, within=3) >= 0.1
    assert server.listening
    with pytest.raises(ValueError):
        server.close_listeners(reopen_after=0)
    close_all([kept, fresh])


async def test_bodies_are_read_and_the_connection_kept_alive(start: Any) -> None:
    server = await start()
    conn = await connect(server.port)
    for size in (0, 10, BODY_LIMIT):
        status, headers, body = await exchange(conn, post(size, b"x" * size))
        assert (status, json.loads(body)) == (200, {"size": size})
        assert headers.get("connection", "keep-alive").lower() == "keep-alive"
    conn[1].close()
    assert server.stats.body_timeouts == server.stats.bodies_too_large == 0


async def test_a_stalled_body_gets_408_and_the_connection_is_closed(start: Any) -> None:
    server = await start()
    conn = await connect(server.port)
    started = time.monotonic()
    status, headers, body = await exchange(conn, post(100, b"x" * 10))
    answered = time.monotonic() - started
    assert status == 408 and BODY_TIMEOUT - 0.05 <= answered < BODY_TIMEOUT + 0.5
    assert "within 0.3 s" in json.loads(body)["error"]
    assert headers["connection"].lower() == "close"
    _, took = await until_closed(conn[0])
    conn[1].close()
    assert took < 1.0
    assert server.stats.body_timeouts == 1


async def test_a_body_over_the_limit_gets_413_without_being_read(start: Any) -> None:
    server = await start()
    conn = await connect(server.port)
    status, headers, _ = await exchange(conn, post(BODY_LIMIT + 1))
    assert status == 413 and headers["connection"].lower() == "close"
    chunked = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"%x\r\n%s\r\n" % (BODY_LIMIT + 1, b"x" * (BODY_LIMIT + 1)))
    conn2 = await connect(server.port)
    assert (await exchange(conn2, chunked))[0] == 413
    for c in (conn, conn2):
        await until_closed(c[0])
        c[1].close()
    assert server.stats.bodies_too_large == 2


async def test_a_client_leaving_mid_body_logs_no_error(
    start: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start()
    _, writer = await connect(server.port)
    writer.write(post(100, b"x" * 10))
    await writer.drain()
    handler = server.runner.server
    assert handler is not None
    await eventually(lambda: handler.requests_count == 1, "request head parsed")
    writer.close()
    await eventually(lambda: server.stats.client_disconnects == 1, "disconnect noticed")
    await eventually(lambda: server.stats.open == 0, "connection closed")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any(r.name == "ddg.server" and "disconnected after 10 bytes" in r.getMessage()
               for r in caplog.records)


# ---- accept() errors --------------------------------------------------------------------


def accept_failure() -> dict[str, Any]:
    """What asyncio's selector loop reports when accept() fails with EMFILE."""
    return {"message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "Too many open files"), "socket": object()}


def test_accept_errors_are_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    passed: list[dict[str, Any]] = []
    now = [1000.0]
    try:
        flt = AcceptErrorFilter(lambda _loop, ctx: passed.append(ctx), interval=10.0,
                                clock=lambda: now[0])
        loop.set_exception_handler(flt)
        with caplog.at_level(logging.WARNING, logger="ddg.server"):
            for _ in range(1000):
                loop.call_exception_handler(accept_failure())
                now[0] += 0.001  # 1000 errors in one second
            now[0] += 10.0
            loop.call_exception_handler(accept_failure())
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2 and flt.total == 1001
        assert "Too many open files" in warnings[0] and "more since" not in warnings[0]
        assert "(999 more since the last warning)" in warnings[1]
        assert all(r.exc_info is None for r in caplog.records)
        assert passed == []
        other = {"message": "Task exception was never retrieved", "exception": ValueError()}
        not_oserror = {"message": "socket.accept() broke", "exception": TypeError()}
        loop.call_exception_handler(other)
        loop.call_exception_handler(not_oserror)
        assert passed == [other, not_oserror]
        assert passed[0] is other
    finally:
        loop.close()


def test_the_filter_chains_to_the_previous_handler_and_uninstalls() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert install_accept_error_filter(loop).previous is None  # default handler
        loop.set_exception_handler(None)
        previous = lambda _loop, _ctx: None  # noqa: E731
        loop.set_exception_handler(previous)
        flt = install_accept_error_filter(loop, interval=1.0)
        assert flt.previous is previous and loop.get_exception_handler() is flt
        assert install_accept_error_filter(loop) is flt  # idempotent
        flt.uninstall(loop)
        assert loop.get_exception_handler() is previous
    finally:
        loop.close()


# ---- config, fd limit, and the aiohttp behaviour this module relies on -------------------


def test_limits_are_validated() -> None:
    for bad in ({"header_timeout": 0}, {"keepalive_timeout": -1}, {"lingering_time": -0.1},
                {"header_timeout": float("nan")}, {"shutdown_timeout": float("inf")},
                {"write_timeout": 0}, {"header_timeout": 2.0, "keepalive_timeout": 1.0},
                {"max_connections": 0}, {"fd_reserve": -1}, {"backlog": 0},
                {"accept_log_interval": 0}):
        with pytest.raises(ConfigError):
            ServerLimits(**bad)
    with pytest.raises(TypeError):
        ServerLimits(5.0)  # type: ignore[call-arg]


def test_the_cap_leaves_the_reserve_free() -> None:
    limits = ServerLimits()
    assert limits.connection_cap(1024) == 1024 - DEFAULT_FD_RESERVE
    assert limits.connection_cap(None) == UNLIMITED_FD_BUDGET - DEFAULT_FD_RESERVE
    assert ServerLimits(max_connections=50).connection_cap(1024) == 50
    assert ServerLimits(max_connections=5000).connection_cap(1024) == 1024 - 192
    with pytest.raises(ConfigError, match="ulimit"):
        limits.connection_cap(100)


@pytest.mark.integration
def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    code = ("import resource; from ddg.net.server.limits import raise_fd_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512)); print(raise_fd_limit())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=10, check=True).stdout
    assert out.strip() == "(512, 512)"


def test_raise_fd_limit_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    def refuse(*_: object) -> None:
        raise ValueError("not permitted")

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_fd_limit() == before


async def test_aiohttp_hooks_this_module_relies_on(
    start: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Fails loudly if aiohttp stops passing runner kwargs to its RequestHandler (Server()
    then drops them with a warning) or stops exposing request.transport as the transport
    whose protocol is this module's wrapper."""
    server = await start(keepalive_timeout=1.5)
    conn = await connect(server.port)
    status, _, body = await exchange(conn, b"GET /introspect HTTP/1.1\r\nHost: t\r\n\r\n")
    conn[1].close()
    assert (status, json.loads(body)) == (200, {"keepalive_timeout": 1.5, "wrapped": True})
    assert not [r for r in caplog.records if "custom kwargs" in r.getMessage()]


async def test_listening_on_a_busy_port_fails_cleanly(start: Any) -> None:
    server = await start()
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    with pytest.raises(OSError) as failure:
        await serve(make_app(), HOST, server.port, limits=ServerLimits(**FAST))
    assert failure.value.errno == errno.EADDRINUSE
    assert loop.get_exception_handler() is handler  # left as it was
