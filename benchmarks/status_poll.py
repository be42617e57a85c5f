"""What one `/status` poll costs the polling process, three ways: the console's reader on
asyncio streams (ddg.client.http, `NodeClient.poll`), the same connection handling with h11
(installed with httpx) parsing the answer instead, and httpx (`NodeClient`'s fallback, used for
https). Why the console's poll keeps its own reader: ddg/client/http.py's docstring.

One real node (and its embedded Redis, ddg_testkit.LocalCluster), polled in turn by each client
from this process, one poll at a time; each poll's CPU time (`time.process_time()`, this
process only: the node runs in its own) includes the same JSON parse and NodeStatus.from_json.
Not a test: it prints figures.

    .venv/bin/python -m benchmarks.status_poll [--polls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import h11

import ddg.client.http as http
from benchmarks.common import Stats
from ddg.client import NodeClient, Reply
from ddg_testkit import LocalCluster

_h11: dict[int, h11.Connection] = {}  # the benchmark's connections, by id


async def exchange_h11(conn: http._Conn, request: bytes) -> tuple[int, bytes, bool]:
    """http._exchange with h11 doing the HTTP/1.1: same request, same answer, same keep-alive."""
    h = _h11.get(id(conn))
    if h is None:
        h = _h11[id(conn)] = h11.Connection(our_role=h11.CLIENT)
    elif h.our_state is h11.DONE and h.their_state is h11.DONE:
        h.start_next_cycle()
    head = request.partition(b"\r\n\r\n")[0].split(b"\r\n")
    method, target, _ = head[0].split(b" ")
    headers = [(name, value) for name, _, value in (line.partition(b": ") for line in head[1:])]
    conn.writer.write(h.send(h11.Request(method=method, target=target, headers=headers))
                      + (h.send(h11.EndOfMessage()) or b""))
    code = 0
    body = bytearray()
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(65536)
            if not data:
                raise http._Closed()
            h.receive_data(data)
        elif isinstance(event, h11.Response):
            code = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > http.MAX_BODY:
                raise http._Bad("body too long")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise http._Closed()
    return code, bytes(body), h.our_state is h11.DONE and h.their_state is h11.DONE


async def measure(address: str, polls: int, poll: Callable[[str], Awaitable[Reply]]) -> Stats:
    for _ in range(50):  # warm: connections open, caches filled
        reply = await poll(address)
        assert reply.ok, reply
    cpu: list[float] = []
    for _ in range(polls):
        t0 = time.process_time()
        reply = await poll(address)
        cpu.append((time.process_time() - t0) * 1000)
        assert reply.ok, reply
    stats = Stats.of(cpu)
    assert stats is not None
    return stats


async def run(address: str, polls: int, rounds: int) -> None:
    reader = http._exchange
    for r in range(1, rounds + 1):
        for label, exchange, fallback in (("hand-written", reader, False),
                                          ("h11", exchange_h11, False),
                                          ("httpx", reader, True)):
            http._exchange = exchange
            client = NodeClient(timeout=2.0)
            try:
                s = await measure(address, polls, client._poll_http if fallback else client.poll)
            finally:
                http._exchange = reader
                await client.aclose()
            print(f"round {r} {label:>12}: CPU per poll median {s.median:.3f} ms, "
                  f"p95 {s.p95:.3f} ms, p99 {s.p99:.3f} ms, max {s.max:.3f} ms, "
                  f"mean {s.mean:.3f} ms (n={s.n}); at 100 polls/s (25 nodes, 4/s) "
                  f"{s.mean * 100 / 10:.1f} % of a core", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.status_poll", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--polls", type=int, default=3000, help="polls per client and round")
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    with LocalCluster(cluster="statuspoll") as cluster:
        [name] = cluster.start(1)
        cluster.wait_goose()
        asyncio.run(run(cluster.address(name), ns.polls, ns.rounds))


if __name__ == "__main__":
    main()
