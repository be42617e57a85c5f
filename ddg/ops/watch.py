"""`GET /watch`: a node's changes as Server-Sent Events, the server side.

A watcher first gets the node's current state (`event: state`), then one `event: change` per
Change, each with `id:` = the Change id. A reconnecting reader sends `Last-Event-ID` and gets
exactly the changes it missed from a bounded ring of recent ones, without a duplicate or a
gap, while the node lives. When that is impossible (the id is older than the ring, or belongs
to another life of the node: ids restart at 1 with the process) it gets the current state
again, with `gap` saying why. The events and their wire form are ddg.client.events; a
reader that sends the node's incarnation back (ddg.client.watch does) tells a restarted node
apart from a live one even when its new ids have caught up with the old ones (a browser's
EventSource cannot send it: ids past the node's last one are still detected).

Bounded: at most `max_watchers` streams (beyond: 503 with a JSON reason); each watcher has a
queue of `queue_size` changes, and a reader that falls that far behind, or does not take a
write within `write_timeout`, is dropped with a logged reason (it may reconnect and resume
from the ring) instead of being buffered without limit. A `: ping` comment every
`ping_interval` keeps idle proxies from closing the stream. On shutdown every stream is
flushed briefly and ended, so it never delays a SIGTERM.

The handler imports aiohttp when it runs, inside the node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ddg.client.events import INCARNATION_HEADER, encode
from ddg.client.nodestatus import NodeStatus
from ddg.errors import ConfigError
from ddg.ops.changes import Change

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("ddg.watch")

RECONNECT_MS: Final = 1000  # the `retry:` hint for EventSource readers
LIVENESS_CHECK: Final = 1.0  # s between checks that an idle watcher's client is still there
SHUTDOWN_FLUSH: Final = 0.5  # s a stopping node spends delivering the last changes


def _seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise ConfigError(f"{name} must be 0-3600 s (exclusive of 0), got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchSettings:
    max_watchers: int = 32
    queue_size: int = 256  # changes one watcher may have unsent
    ring_size: int = 1024  # recent changes kept for Last-Event-ID
    ping_interval: float = 5.0
    write_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name, value, top in (("max watchers", self.max_watchers, 10_000),
                                 ("watch queue size", self.queue_size, 1_000_000),
                                 ("watch ring size", self.ring_size, 1_000_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"{name} must be an integer 1-{top}, got {value!r}")
        _seconds("ping interval", self.ping_interval)
        _seconds("watch write timeout", self.write_timeout)


@dataclass(eq=False, slots=True)
class _Watcher:
    peer: str
    pending: deque[Change] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: str | None = None  # why the node stopped serving it
    transport: asyncio.Transport | None = None


class Watchers:
    """The node's /watch streams. `publish` is a Changes listener (synchronous, never
    blocks); `handle` is the route; `shutdown` ends every stream (an on_shutdown hook).
    STATUS gives the state to send before the node has observed any change (while it
    joins)."""

    def __init__(self, *, node: str, status: Callable[[], NodeStatus],
                 settings: WatchSettings | None = None) -> None:
        self.node = node
        self.settings = settings or WatchSettings()
        self.incarnation = secrets.token_hex(8)
        self.dropped = 0  # watchers dropped for reading too slowly, since start
        self._status = status
        self._ring: deque[Change] = deque(maxlen=self.settings.ring_size)
        self._watchers: set[_Watcher] = set()
        self._closing = False

    @property
    def count(self) -> int:
        return len(self._watchers)

    # ---- events ----------------------------------------------------------------------

    def _data(self, kind: str, change: Change | None, gap: str | None = None) -> bytes:
        base = {"event": kind, "node": self.node, "incarnation": self.incarnation}
        if change is not None:
            data = base | change.to_json()
        else:
            st = self._status()
            data = base | {"id": 0, "time": time.time(), "role": st.role.value,
                           "state": st.state, "term": st.term, "goose": st.goose,
                           "members": list(st.members),
                           "membership_version": st.membership_version, "previous_role": None}
        data["gap"] = gap
        return encode(kind, data)

    def _first(self, last_id: int | None, incarnation: str | None) -> bytes:
        """What a new stream starts with: the current state, or the changes after LAST_ID."""
        last = self._ring[-1] if self._ring else None
        if last_id is None:
            return self._data("state", last)
        top = last.id if last is not None else 0
        gap = None
        if incarnation is not None and incarnation != self.incarnation:
            gap = (f"the node restarted (incarnation {self.incarnation}, not {incarnation}): "
                   "the changes of its previous life are gone")
        elif last_id > top:
            gap = (f"event id {last_id} is past this node's last change ({top}): the node "
                   "restarted, or the id came from another node")
        elif self._ring and last_id + 1 < self._ring[0].id:
            gap = (f"{self._ring[0].id - last_id - 1} changes after {last_id} are no longer "
                   f"kept (the node keeps the last {self.settings.ring_size})")
        if gap is not None:
            return self._data("state", last, gap)
        return b"".join(self._data("change", c) for c in self._ring if c.id > last_id)

    def publish(self, change: Change) -> None:
        self._ring.append(change)
        for w in list(self._watchers):
            if len(w.pending) >= self.settings.queue_size:
                self._drop(w, f"{len(w.pending)} changes unread (queue full)")
            else:
                w.pending.append(change)
                w.wake.set()

    def _drop(self, w: _Watcher, reason: str) -> None:
        """Stop serving a reader that does not keep up; it may reconnect and resume."""
        if w.dropped is not None:
            return
        w.dropped = reason
        self.dropped += 1
        self._watchers.discard(w)
        log.warning("dropping watcher %s: %s; it may reconnect and resume", w.peer, reason)
        if w.transport is not None:
            w.transport.abort()  # a write may be half done, and it must not block the drop
        w.wake.set()

    async def shutdown(self, app: object = None) -> None:
        """End every stream (after a short flush): a stopping node waits for none of them."""
        self._closing = True
        for w in list(self._watchers):
            w.wake.set()

    # ---- the route -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if self._closing:
            return _refuse(503, "the node is stopping")
        if len(self._watchers) >= self.settings.max_watchers:
            return _refuse(503, f"too many watchers (at most {self.settings.max_watchers}); "
                                "retry later")
        raw = request.headers.get("Last-Event-ID")
        last_id: int | None = None
        if raw is not None and raw.strip():
            try:
                last_id = int(raw.strip())
            except ValueError:
                last_id = -1
            if last_id < 0:
                return _refuse(400, "Last-Event-ID must be a change id (an integer >= 0)",
                               retry=False)
        w = _Watcher(peer=str(request.remote), transport=request.transport)
        # No await between the first events and the registration: no change falls between.
        first = self._first(last_id, request.headers.get(INCARNATION_HEADER))
        self._watchers.add(w)
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", INCARNATION_HEADER: self.incarnation})
        try:
            async with asyncio.timeout(self.settings.write_timeout):
                await resp.prepare(request)
                await resp.write(f"retry: {RECONNECT_MS}\n".encode() + first)
            await self._pump(w, resp, request)
        except TimeoutError:
            if self._closing:
                log.debug("watcher %s did not take the last changes in time", w.peer)
            else:
                self._drop(w, f"a write took over {self.settings.write_timeout:g} s "
                              "(not reading)")
        except ConnectionError:
            log.debug("watcher %s went away", w.peer)
        finally:
            self._watchers.discard(w)
        return resp

    async def _pump(self, w: _Watcher, resp: web.StreamResponse, request: web.Request) -> None:
        """Send W's changes as they come, a ping when idle, until it is dropped, its client
        goes away or the node stops."""
        s = self.settings
        last_write = time.monotonic()
        while w.dropped is None:
            if not w.pending and not self._closing:
                w.wake.clear()
                wait = min(LIVENESS_CHECK, max(0.0, last_write + s.ping_interval
                                               - time.monotonic()))
                try:
                    async with asyncio.timeout(wait):
                        await w.wake.wait()
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        log.debug("watcher %s went away", w.peer)
                        return
                    if time.monotonic() - last_write >= s.ping_interval:
                        async with asyncio.timeout(s.write_timeout):
                            await resp.write(b": ping\n\n")
                        last_write = time.monotonic()
                    continue
            if w.dropped is not None:
                return
            batch = b"".join(self._data("change", c) for c in w.pending)
            w.pending.clear()
            if batch:
                async with asyncio.timeout(SHUTDOWN_FLUSH if self._closing else s.write_timeout):
                    await resp.write(batch)
                last_write = time.monotonic()
            if self._closing:
                return


def _refuse(status: int, reason: str, *, retry: bool = True) -> web.StreamResponse:
    from aiohttp import web

    return web.json_response({"error": reason}, status=status,
                             headers={"Retry-After": "1"} if retry else None)
