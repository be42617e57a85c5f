"""The floor under a Python node's cost at rest, for benchmarks/idle.py: asyncio processes that
exchange exactly ddg's messages at rest (a leader writes a ~100-byte message to each follower
every heartbeat, each follower answers each one) and do nothing else: no parsing, no signing,
no election, no registry. What a ddg node costs above this row is ddg's own work.

    python benchmarks/floor_node.py follower PORT
    python benchmarks/floor_node.py leader HEARTBEAT_MS PORT [PORT ...]

Each prints `ready` once it listens (follower) or is connected to every follower (leader).
"""

from __future__ import annotations

import asyncio
import sys

HOST = "127.0.0.1"
MESSAGE = b'{"term":1,"sender":"n1","seq":1,"sent_us":123456789012,"version":1}\n'
ANSWER = b'{"term":1,"sender":"n2","seq":1,"success":true,"received_us":12345678901}\n'


class Follower(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(ANSWER * data.count(b"\n"))


async def follower(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Follower, HOST, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def leader(heartbeat: float, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    links = [(await loop.create_connection(asyncio.Protocol, HOST, p))[0] for p in ports]
    print("ready", flush=True)
    while True:  # as ddg's goose: one write to each follower per heartbeat
        for transport in links:
            transport.write(MESSAGE)
        await asyncio.sleep(heartbeat)


if __name__ == "__main__":
    if sys.argv[1] == "follower":
        asyncio.run(follower(int(sys.argv[2])))
    else:
        asyncio.run(leader(int(sys.argv[2]) / 1000, [int(p) for p in sys.argv[3:]]))
