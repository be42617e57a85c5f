"""Polls every node's /status from outside, every ~20 ms, and records what each answered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector

from .checker import Observation


def parse_status(node: str, sent: float, received: float, data: Any) -> Observation:
    if not isinstance(data, dict):
        return Observation(node=node, sent=sent, received=received, role=None,
                           error="status is not a JSON object")
    timing = data.get("timing") if isinstance(data.get("timing"), dict) else {}
    return Observation(
        node=node, sent=sent, received=received, role=str(data.get("role")),
        term=data.get("term"), goose=data.get("goose"),
        lease_ms=data.get("lease_remaining_ms"), lease_total_ms=timing.get("lease_ms"),
        pid=data.get("pid"),
    )


class Observer:
    """One thread, one event loop, one polling task per node."""

    def __init__(self, targets: Mapping[str, str], *, interval: float = 0.02,
                 timeout: float = 0.5) -> None:
        self.targets = dict(targets)  # name -> http://host:port
        self.interval = interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._history: list[Observation] = []
        self._latest: dict[str, Observation] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ddg-observer", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def history(self) -> list[Observation]:
        with self._lock:
            return list(self._history)

    def latest(self) -> dict[str, Observation]:
        with self._lock:
            return dict(self._latest)

    def since(self, t: float) -> dict[str, Observation]:
        """Each node's latest successful answer to a request sent at or after T."""
        with self._lock:
            return {n: o for n, o in self._latest.items() if o.sent >= t and o.ok}

    def _record(self, obs: Observation) -> None:
        with self._lock:
            self._history.append(obs)
            if obs.ok or self._latest.get(obs.node) is None or \
                    obs.sent - self._latest[obs.node].sent > self.timeout:
                self._latest[obs.node] = obs

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        connector = TCPConnector(limit=0)
        async with ClientSession(connector=connector, trust_env=False,
                                 timeout=ClientTimeout(total=self.timeout)) as session:
            tasks = [asyncio.create_task(self._poll(session, n, a))
                     for n, a in self.targets.items()]
            self._started.set()
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, session: ClientSession, node: str, address: str) -> None:
        url = address + "/status"
        while True:
            sent = time.monotonic()
            try:
                async with session.get(url) as resp:
                    data = await resp.json(content_type=None) if resp.status == 200 else None
                    received = time.monotonic()
                    if data is None:
                        obs = Observation(node=node, sent=sent, received=received, role=None,
                                          error=f"HTTP {resp.status}")
                    else:
                        obs = parse_status(node, sent, received, data)
            except (ClientError, TimeoutError, ValueError, OSError) as exc:
                obs = Observation(node=node, sent=sent, received=time.monotonic(), role=None,
                                  error=type(exc).__name__)
            self._record(obs)
            delay = sent + self.interval - time.monotonic()
            if not obs.ok:
                delay = max(delay, self.interval)  # do not spin on a refused connection
            await asyncio.sleep(max(delay, 0.0))
