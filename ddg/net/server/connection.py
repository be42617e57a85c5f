"""One accepted connection of the node's listener: aiohttp's RequestHandler inside a small
protocol that holds its slot under the cap and adds the timeouts aiohttp lacks (a request head
that does not come, a client that stops reading), and the middleware that tells it where a
request starts and ends. Every connection is an aiohttp RequestHandler made by the runner's
public protocol factory (``runner.server()``); no private aiohttp attribute is touched."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from aiohttp import web

from ddg.net.server.limits import ServerLimits, ServerStats

log = logging.getLogger("ddg.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Listener(Protocol):
    """What a connection needs of the server that accepted it (GuardedServer): its settings,
    its counters, its loop, and its line of connections by progress (eviction takes the
    front)."""

    limits: ServerLimits
    stats: ServerStats
    loop: asyncio.AbstractEventLoop

    def track(self, conn: Connection | Setup) -> None: ...

    def untrack(self, conn: Connection | Setup) -> None: ...


class Setup:
    """An accepted connection not yet handed to its protocol: for a loop pass or two (plain)
    or for its TLS handshake. It has made no progress, so at the cap it is evicted like an
    idle one; otherwise a burst larger than the cap, or sockets that never say hello to a TLS
    port, held the slots and every newcomer got a 503."""

    evictable = True

    def __init__(self, stats: ServerStats, conn: socket.socket,
                 release: Callable[[], bool]) -> None:
        self._stats = stats
        self.conn = conn
        self.release = release
        self.started = False  # its task began: from then on that task closes the socket
        # Its protocol is connected: the transport owns the socket now, and the Connection
        # takes this one's place in line for eviction.
        self.connected = False
        self.cancelled = False  # evicted, or the server closing: it must not live on
        self.task: asyncio.Task[None] | None = None

    def evict(self) -> bool:
        freed = self.cancel()
        if freed:
            self._stats.evicted_idle += 1
        return freed

    def cancel(self) -> bool:
        """Close it; True if that freed its slot (its protocol may have freed it already)."""
        self.cancelled = True
        if not self.started:  # a task cancelled before it runs never runs its cleanup
            self.conn.close()
        if self.task is not None:
            self.task.cancel()
        return self.release()  # the slot is free at once, as for an evicted connection


class Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's RequestHandler, plus its slot under the cap and the
    timeouts aiohttp lacks. (Its keep-alive timer runs from connect and from each response to
    the next complete head, so it does bound a dribbled head, but it cannot be both short for
    that and long for an idle keep-alive connection; it has no write timeout at all.)"""

    def __init__(self, server: Listener, inner: web.RequestHandler, setup: Setup) -> None:
        self._server = server
        self._inner = inner
        self._setup = setup
        self._release = setup.release
        self._inner_made = False  # aiohttp's handler saw connection_made
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._idle = True  # between requests (or before the first)
        self.in_request = ""
        self.close_after_response = False

    @property
    def stats(self) -> ServerStats:
        return self._server.stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # At once, not when the task that set it up resumes (a loop pass later): evicting the
        # Setup meanwhile would close the socket under the transport (TLS: mid-shutdown, and
        # the fd number's next owner was never read).
        self._setup.connected = True
        self._server.untrack(self._setup)
        if self._setup.cancelled:
            # Cancelled in the loop pass its handshake completed (or its plain transport was
            # made): its slot is gone, and the task's close() would start a graceful TLS
            # shutdown that keeps it open, uncounted, for up to 30 s. aiohttp never sees it.
            self._transport.abort()
            return
        self._inner_made = True
        self._server.track(self)
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._inner_made:  # aborted as it connected (above): bytes already read
            return
        if self._idle and self._timer is None:  # first byte of the next request
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        # aiohttp's is typed to return None (close on EOF); forward whatever it returns.
        if not self._inner_made:
            return None
        forward: Callable[[], bool | None] = self._inner.eof_received
        return forward()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.untrack(self)
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._transport = None
        self._release()
        if self._inner_made:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()
        self._watch_writes(None)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._inner.resume_writing()

    def _watch_writes(self, before: int | None) -> None:
        """While writing is paused, abort if the buffer has not shrunk in write_timeout: a
        client that reads slowly but steadily is not cut off, one that stopped reading is."""
        self._write_timer = None
        transport = self._transport
        if transport is None:
            return
        size = transport.get_write_buffer_size()
        if before is not None and size >= before:
            self.stats.write_timeouts += 1
            log.debug("aborting %s: client read nothing of %d buffered bytes in %g s",
                      transport.get_extra_info("peername"), size,
                      self._server.limits.write_timeout)
            transport.abort()
            return
        self._write_timer = self._server.loop.call_later(
            self._server.limits.write_timeout, self._watch_writes, size)

    def request_started(self, what: str = "") -> None:
        self.in_request = what  # "METHOD /path", for a slow stop's report
        self._idle = False
        self.close_after_response = False
        self._disarm()

    def request_finished(self) -> None:
        self._idle = True
        if self._transport is not None:  # a handler that outlived its client: already gone
            self._server.track(self)  # it made progress: last in line for eviction

    @property
    def evictable(self) -> bool:
        return self._idle and self._transport is not None

    def evict(self) -> bool:
        """Close it; True if that freed its slot for the new connection (an evicted connection
        can be tracked again before it is lost: it must not free a second slot)."""
        if self._transport is None:
            return False
        self._transport.abort()
        freed = self._release()
        if freed:
            self.stats.evicted_idle += 1
        return freed

    def _arm(self) -> None:
        self._disarm()
        timeout = self._server.limits.header_timeout
        self._timer = self._server.loop.call_later(timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        self.stats.header_timeouts += 1
        log.debug("closing %s: no complete request head within %g s",
                  self._transport.get_extra_info("peername"),
                  self._server.limits.header_timeout)
        self._transport.abort()  # not close(): a slow reader could hold a pending write


def connection_of(request: web.BaseRequest) -> Connection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Connection) else None


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection when a request head has been parsed (the header timer stops) and
    when its handler is done (the next byte restarts it); closes the connection after a 408 or
    413 from read_body, whose client may still be sending."""
    conn = connection_of(request)
    if conn is None:
        return await handler(request)
    conn.request_started(f"{request.method} {request.path}")
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if conn.close_after_response:
            exc.force_close()
        raise
    finally:
        conn.request_finished()
    if conn.close_after_response:
        resp.force_close()
    return resp
