"""Polls every node's /status from outside, every ~20 ms, and records what each answered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping

from ddg.client import NodeClient, Reply
from ddg.net.tls import TlsConfig

from .checker import Observation


def observation(node: str, sent: float, received: float, reply: Reply,
                rate: float = 1.0) -> Observation:
    """NODE's answer; its lease read in real milliseconds when its clock runs at RATE x real
    time (a node on a faked clock: ddg_testkit.faketime)."""
    st = reply.status
    if st is None:
        return Observation(node=node, sent=sent, received=received, role=None,
                           error=reply.error)

    def real(ms: float | None) -> float | None:
        return None if ms is None else ms / rate

    return Observation(
        node=node, sent=sent, received=received, role=st.role.value, term=st.term,
        goose=st.goose, lease_ms=real(st.lease_remaining_ms),
        lease_total_ms=real(st.timing.longest_lease_ms or st.timing.lease_ms), pid=st.pid,
    )


class Observer:
    """One thread, one event loop, one polling task per node."""

    def __init__(self, targets: Mapping[str, str], *, interval: float = 0.02,
                 timeout: float = 0.5, tls: TlsConfig | None = None,
                 clock_rates: Mapping[str, float] | None = None) -> None:
        self.targets = dict(targets)  # name -> http://host:port (or https:// with TLS)
        self.clock_rates = dict(clock_rates or {})  # nodes on a faked clock: its rate
        self.tls = tls
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
        client = NodeClient(timeout=self.timeout, max_connections=4 * len(self.targets) + 8,
                            tls=self.tls)
        try:
            tasks = [asyncio.create_task(self._poll(client, n, a))
                     for n, a in self.targets.items()]
            self._started.set()
            await self._stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.aclose()

    async def _poll(self, client: NodeClient, node: str, address: str) -> None:
        while True:
            sent = time.monotonic()
            reply = await client.poll(address)
            obs = observation(node, sent, time.monotonic(), reply,
                              self.clock_rates.get(node, 1.0))
            self._record(obs)
            delay = sent + self.interval - time.monotonic()
            if not obs.ok:
                delay = max(delay, self.interval)  # do not spin on a refused connection
            await asyncio.sleep(max(delay, 0.0))
