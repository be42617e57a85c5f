"""`GET /watch`: a node's changes as Server-Sent Events, and the wire format its readers parse.

A watcher first gets the node's current state (`event: state`), then one `event: change` per
Change, each with `id:` = the Change id. A reconnecting reader sends `Last-Event-ID` and gets
exactly the changes it missed from a bounded ring of recent ones, without a duplicate or a
gap, while the node lives. When that is impossible (the id is older than the ring, or belongs
to another life of the node: ids restart at 1 with the process) it gets the current state
again, with `gap` saying why. Every event's data is one JSON object that carries the node's
name and `incarnation` (random per process); ddg.client.watch sends the incarnation back in
the `DDG-Incarnation` header, so a restarted node is told apart from a live one even when
its new ids have caught up with the old ones (a browser's EventSource cannot send it: ids
past the node's last one are still detected).

Bounded: at most `max_watchers` streams (beyond: 503 with a JSON reason); each watcher has a
queue of `queue_size` changes, and a reader that falls that far behind, or does not take a
write within `write_timeout`, is dropped with a logged reason (it may reconnect and resume
from the ring) instead of being buffered without limit. A `: ping` comment every
`ping_interval` keeps idle proxies from closing the stream. On shutdown every stream is
flushed briefly and ended, so it never delays a SIGTERM.

The wire format (WatchEvent, SseDecoder) is kept free of aiohttp so that clients import it
cheaply; the handler imports aiohttp when it runs, inside the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .changes import Change
from .errors import ConfigError
from .status import NodeStatus, Role, StatusFormatError, _Reader

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("ddg.watch")

INCARNATION_HEADER: Final = "DDG-Incarnation"
RECONNECT_MS: Final = 1000  # the `retry:` hint for EventSource readers
LIVENESS_CHECK: Final = 1.0  # s between checks that an idle watcher's client is still there
SHUTDOWN_FLUSH: Final = 0.5  # s a stopping node spends delivering the last changes
KINDS: Final = frozenset({"state", "change"})


# ---- the wire format (client and server) ------------------------------------------------


class WatchFormatError(StatusFormatError):
    """An event that does not fit the /watch contract."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchEvent:
    """One event of a node's /watch stream: its state at connect (kind "state", with `gap`
    set when a resume was impossible), or one change (kind "change")."""

    kind: str
    id: int  # the Change id (0: the node had observed nothing yet)
    node: str
    incarnation: str
    time: float  # time.time() on the node when it observed the change
    role: Role
    state: str
    term: int
    goose: str | None
    members: tuple[str, ...] = ()
    membership_version: int | None = None
    previous_role: Role | None = None
    gap: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "id": self.id, "node": self.node,
                "incarnation": self.incarnation, "time": self.time, "role": self.role.value,
                "state": self.state, "term": self.term, "goose": self.goose,
                "members": list(self.members), "membership_version": self.membership_version,
                "previous_role": None if self.previous_role is None else self.previous_role.value,
                "gap": self.gap}

    @classmethod
    def from_json(cls, data: Any) -> WatchEvent:
        if not isinstance(data, dict):
            raise WatchFormatError(f"an event must be a JSON object, got {type(data).__name__}")
        try:
            r = _Reader(data)
            kind = r.text("event")
            if kind not in KINDS:
                raise WatchFormatError(f"unknown event kind {kind!r}")
            previous = r.opt_text("previous_role")
            when = r.number("time")
            event_id = r.integer("id")
            if event_id < 0:
                raise WatchFormatError(f"event id must be >= 0, got {event_id}")
            return cls(kind=kind, id=event_id, node=r.text("node"),
                       incarnation=r.text("incarnation"), time=0.0 if when is None else when,
                       role=Role(r.text("role")), state=r.text("state", ""),
                       term=r.integer("term"), goose=r.opt_text("goose"),
                       members=r.texts("members"),
                       membership_version=r.opt_integer("membership_version"),
                       previous_role=None if previous is None else Role(previous),
                       gap=r.opt_text("gap"))
        except WatchFormatError:
            raise
        except (StatusFormatError, ValueError) as exc:
            raise WatchFormatError(f"bad event: {exc}") from None


@dataclass(frozen=True, slots=True)
class SseMessage:
    event: str
    id: str | None
    data: str


class SseDecoder:
    """Lines of a text/event-stream in, messages out: the part of the SSE format a watcher
    needs (id, event, data, comments; `retry:` is ignored)."""

    def __init__(self) -> None:
        self._event = ""
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SseMessage | None:
        """One line without its end; a message when LINE is the blank line that ends one."""
        if not line:
            if not self._data:
                self._event, self._id = "", None
                return None
            msg = SseMessage(self._event or "message", self._id, "\n".join(self._data))
            self._event, self._id, self._data = "", None, []
            return msg
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def parse_event(msg: SseMessage) -> WatchEvent:
    try:
        data = json.loads(msg.data)
    except ValueError:
        raise WatchFormatError(f"event data is not JSON: {msg.data[:80]!r}") from None
    event = WatchEvent.from_json(data)
    if msg.event != event.kind or msg.id != str(event.id):
        raise WatchFormatError(f"event {msg.event!r} id {msg.id!r} does not match its data "
                               f"({event.kind!r}, {event.id})")
    return event


def encode(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {data['id']}\nevent: {kind}\ndata: {payload}\n\n".encode()


# ---- the server side --------------------------------------------------------------------


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
