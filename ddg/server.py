"""The node's HTTP listener, hardened against clients that hold connections and never finish.

aiohttp's own TCPSite accepts through asyncio's accept loop, which has no connection cap: a few
hundred idle clients exhaust the fd limit, accept() fails with EMFILE, asyncio logs a traceback
per failure, and the node stops answering even /status. This module accepts connections itself
(loop.add_reader + loop.connect_accepted_socket, both public asyncio API), so it can:

* cap concurrent connections below the fd limit, keeping a reserve for the node's own peer
  connections, Redis and files; at the cap, a new connection takes the slot of the one that
  has gone longest without completing a request (a flood of idle clients cannot lock out a
  peer or /status); only when every connection is busy does it get a 503;
* close a connection that does not deliver a complete request head in time (a slow-header
  client), an idle keep-alive connection, and one whose client stops reading its responses;
* shed connections with a spare fd, and log accept() failures at most once per interval,
  if the fd limit is hit anyway;
* serve TLS (serve(ssl=...)): the handshake must complete within header_timeout, then the
  request head gets its own header_timeout as on a plain connection, so a client that starts a
  handshake and never finishes it holds its slot for header_timeout at most, and at the cap
  not even that: a connection not yet set up has made no progress, and is evicted first.

For fault injection (`--allow-fault-injection`), ``close_listeners`` closes the listening
sockets while everything else runs on (a new connection is refused; accepted ones go on), and
``reopen_listeners`` listens again on the same addresses.

``read_body`` gives handlers the missing body deadline and size cap. Every connection is an
aiohttp RequestHandler made by the runner's public protocol factory (``runner.server()``),
wrapped in a small protocol; no private aiohttp attribute is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

from aiohttp import web

from .errors import ConfigError
from .ratelimit import LogThrottle, Throttle

log = logging.getLogger("ddg.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

DEFAULT_FD_RESERVE: Final = 192
# Used as the fd budget when RLIMIT_NOFILE is unlimited or unknown, so the cap stays finite.
UNLIMITED_FD_BUDGET: Final = 65536
ACCEPT_RETRY_DELAY: Final = 0.1  # pause after accept() fails; asyncio waits 1 s
SLOW_STOP_REPORT: Final = 1.0  # close() still waiting this long: say for which requests
REOPEN_RETRY_DELAY: Final = 1.0  # a scheduled reopen that could not bind tries again after this
RESOLVE_TIMEOUT: Final = 10.0  # getaddrinfo of the listen host
# A client whose certificate this node refuses (another CA) retries at every heartbeat; it only
# sees the connection drop, so the reason is logged here, once per client address per minute.
TLS_FAILURE_LOG_INTERVAL: Final = 60.0
_REFUSAL_BODY: Final = b'{"error": "too many connections; retry later"}'
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})


# ---- fd limit ---------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return (soft, hard) afterwards.

    The usual soft limit of 1024 is what a few hundred idle clients exhaust; the hard limit is
    ours to take. Never fails: where the platform refuses, the limit stays as it was. -1 means
    unlimited (RLIM_INFINITY) or, without the resource module, unknown.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return (-1, -1)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - defensive
        return (-1, -1)
    inf = resource.RLIM_INFINITY
    # macOS reports an unlimited hard limit but refuses a soft limit above OPEN_MAX.
    for target in [hard] if hard != inf else [inf, 1 << 20, 65536, 10240]:
        if soft == inf or (target != inf and target <= soft):
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        break
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - defensive
        pass
    return (-1 if soft == inf else soft, -1 if hard == inf else hard)


def fd_soft_limit() -> int | None:
    """The current soft RLIMIT_NOFILE, or None if unlimited or unknown."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    return None if soft == resource.RLIM_INFINITY else soft


# ---- config and counters ----------------------------------------------------------------


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """How long and how many clients may hold the node's connections.

    header_timeout: a connection must deliver a complete request head this soon after
        connecting, and a keep-alive connection this soon after the first byte of its next
        request. Slow-header clients are closed.
    keepalive_timeout: how long a keep-alive connection may sit idle after a response before
        its next request head is complete (aiohttp's own timer; at least header_timeout, as it
        also runs from connect). Longer than the 15 s pool
        expiry of aiohttp's client (httpx: 5 s), so clients drop idle connections first and
        never reuse one the node is closing.
    write_timeout: a connection whose unsent response data has not shrunk for this long (the
        client stopped reading) is aborted; aiohttp would wait for it forever.
    lingering_time: how long aiohttp keeps reading an unread body after the response (it
        otherwise waits 10 s for a client that stalled mid-body).
    shutdown_timeout: how long close() waits for requests in flight.
    max_connections: the cap on concurrent connections; None means the soft fd limit minus
        fd_reserve. An explicit cap above that budget is lowered to it.
    fd_reserve: fds kept free for the node's own use: outgoing peer connections (up to two
        heartbeats in flight per peer, plus votes), Redis, the data dir, logs, the event
        loop's selector and the listening sockets.
    backlog: the listen() backlog, and the most connections accepted in one loop pass.
    accept_log_interval: accept() failures are logged at most once per this many seconds.
    """

    header_timeout: float = 5.0
    keepalive_timeout: float = 20.0
    write_timeout: float = 10.0
    lingering_time: float = 1.0
    shutdown_timeout: float = 10.0
    max_connections: int | None = None
    fd_reserve: int = DEFAULT_FD_RESERVE
    backlog: int = 128
    accept_log_interval: float = 10.0

    def __post_init__(self) -> None:
        _positive("header timeout", self.header_timeout)
        _positive("keep-alive timeout", self.keepalive_timeout)
        _positive("write timeout", self.write_timeout)
        _positive("lingering time", self.lingering_time, zero_ok=True)
        _positive("shutdown timeout", self.shutdown_timeout)
        _positive("accept log interval", self.accept_log_interval)
        if self.keepalive_timeout < self.header_timeout:
            # aiohttp's keep-alive timer also runs from connect, so it would cut the header
            # timeout short, uncounted.
            raise ConfigError(f"keep-alive timeout ({self.keepalive_timeout} s) must be at least "
                              f"the header timeout ({self.header_timeout} s)")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError(f"max connections must be >= 1, got {self.max_connections}")
        if self.fd_reserve < 0:
            raise ConfigError(f"fd reserve must be >= 0, got {self.fd_reserve}")
        if not 1 <= self.backlog <= 65535:
            raise ConfigError(f"backlog must be 1-65535, got {self.backlog}")

    def connection_cap(self, soft_fd_limit: int | None) -> int:
        """The cap for a process whose soft fd limit is SOFT_FD_LIMIT (None: unlimited)."""
        budget = (UNLIMITED_FD_BUDGET if soft_fd_limit is None else soft_fd_limit)
        budget -= self.fd_reserve
        if budget < 1:
            raise ConfigError(
                f"the fd limit ({soft_fd_limit}) leaves no room for connections after a reserve "
                f"of {self.fd_reserve} fds; raise `ulimit -n` or lower the reserve"
            )
        if self.max_connections is None:
            return budget
        return min(self.max_connections, budget)


@dataclass(slots=True)
class ServerStats:
    """Counters for /status. All are totals since start except open and cap."""

    cap: int = 0
    open: int = 0
    peak_open: int = 0
    accepted: int = 0
    refused_over_cap: int = 0
    # closed at the cap to make room for a new connection: idle, or not set up yet (in its
    # TLS handshake, say)
    evicted_idle: int = 0
    refused_out_of_fds: int = 0
    header_timeouts: int = 0
    write_timeouts: int = 0
    body_timeouts: int = 0
    bodies_too_large: int = 0
    client_disconnects: int = 0  # mid-body
    accept_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ---- rate-limited accept errors ---------------------------------------------------------


def is_accept_error(context: dict[str, Any]) -> bool:
    """asyncio's report of a failed accept(): 'socket.accept() out of system resource', or an
    OSError escaping its _accept_connection callback."""
    exc = context.get("exception")
    return isinstance(exc, OSError) and "accept" in str(context.get("message", "")).lower()


class AcceptErrorFilter:
    """A loop exception handler that turns asyncio's accept() error flood into at most one
    WARNING per interval, with the count suppressed; every other context goes unchanged to the
    handler installed before it, or to the loop's default handler.

    While fds are exhausted asyncio logs a traceback for every failed accept(), hundreds a
    second (a real node wrote 67,120 of them, 30 MB). One line per interval says the same.
    """

    def __init__(self, previous: ExceptionHandler | None, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.previous = previous
        self.logger = logger
        self.total = 0
        self._throttle = Throttle(interval, clock)

    @property
    def suppressed(self) -> int:
        """Errors held back since the last warning."""
        return self._throttle.suppressed

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not is_accept_error(context):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.report(context["exception"])

    def report(self, exc: OSError) -> None:
        """Count one accept() failure; log it unless one was logged within the interval."""
        self.total += 1
        held = self._throttle.allow()
        if held is None:
            return
        more = f" ({held} more since the last warning)" if held else ""
        self.logger.warning("accept() failed: %s%s; check `ulimit -n` and the connection cap",
                            exc.strerror or exc, more)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put the previous handler back, if this filter is still the loop's handler."""
        if loop.get_exception_handler() is self:
            loop.set_exception_handler(self.previous)


def install_accept_error_filter(loop: asyncio.AbstractEventLoop | None = None, *,
                                interval: float = 10.0) -> AcceptErrorFilter:
    """Install an AcceptErrorFilter on LOOP (default: the running loop), chained to the
    handler already there. Idempotent: an installed filter is returned as it is."""
    loop = loop or asyncio.get_running_loop()
    current = loop.get_exception_handler()
    if isinstance(current, AcceptErrorFilter):
        return current
    flt = AcceptErrorFilter(current, interval=interval)
    loop.set_exception_handler(flt)
    return flt


# ---- connections ------------------------------------------------------------------------


class _Setup:
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
        # Its protocol is connected: the transport owns the socket now, and the _Connection
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


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's RequestHandler, plus its slot under the cap and the
    timeouts aiohttp lacks. (Its keep-alive timer runs from connect and from each response to
    the next complete head, so it does bound a dribbled head, but it cannot be both short for
    that and long for an idle keep-alive connection; it has no write timeout at all.)"""

    def __init__(self, server: GuardedServer, inner: web.RequestHandler, setup: _Setup) -> None:
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
        # _Setup meanwhile would close the socket under the transport (TLS: mid-shutdown, and
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


def _connection_of(request: web.BaseRequest) -> _Connection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _Connection) else None


@web.middleware
async def _track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection when a request head has been parsed (the header timer stops) and
    when its handler is done (the next byte restarts it); closes the connection after a 408 or
    413 from read_body, whose client may still be sending."""
    conn = _connection_of(request)
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


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _refuse(conn: socket.socket) -> None:
    """Answer 503 and close without waiting: the fd is free again before accept() returns."""
    try:
        conn.setblocking(False)
        conn.send(REFUSAL)
        # Read what the client already sent, so close() sends FIN, not a RST that could
        # destroy the 503 before the client reads it.
        conn.recv(65536)
    except OSError:
        pass
    finally:
        conn.close()


class GuardedServer:
    """A running aiohttp app behind capped, timed-out listening sockets. Make one with serve()."""

    def __init__(self, runner: web.AppRunner, limits: ServerLimits, cap: int,
                 accept_filter: AcceptErrorFilter, *, owns_filter: bool,
                 ssl: _ssl.SSLContext | None = None) -> None:
        assert runner.server is not None, "runner.setup() first"
        self.runner = runner
        self.limits = limits
        self.ssl = ssl
        self.stats = ServerStats(cap=cap)
        self.accept_filter = accept_filter
        self._owns_filter = owns_filter
        self._factory = runner.server
        self.loop = asyncio.get_running_loop()
        self._sockets: list[socket.socket] = []
        self._addresses: list[tuple[str, int]] = []
        # (family, type, proto, bound address) of each listener, to listen there again
        self._binds: list[tuple[int, int, int, Any]] = []
        self._reopen: asyncio.TimerHandle | None = None
        self._paused: dict[socket.socket, asyncio.TimerHandle] = {}
        self._pending: set[_Setup] = set()
        self._spare = _open_spare()
        self._refusals = Throttle(limits.accept_log_interval, time.monotonic)
        self._tls_failures = LogThrottle(log, TLS_FAILURE_LOG_INTERVAL)
        self._closed = False
        # Open connections, oldest progress first (connect, or the last completed request).
        self._by_progress: dict[_Connection | _Setup, None] = {}

    @property
    def cap(self) -> int:
        return self.stats.cap

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket."""
        return list(self._addresses)

    @property
    def port(self) -> int:
        """The bound port (useful after listening on port 0)."""
        return self.addresses[0][1]

    async def _listen(self, host: str | None, port: int) -> None:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await self.loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC,
                                                 type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)
        seen: set[tuple[int, Any]] = set()
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # e.g. IPv6 disabled; asyncio skips such families too
                continue
            self._sockets.append(sock)
            self._bind(sock, address)  # OSError as it is: the caller names the address
            self._binds.append((family, kind, proto, sock.getsockname()))
        if not self._sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host}:{port}")
        for sock in self._sockets:
            self._addresses.append(sock.getsockname()[:2])
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _bind(self, sock: socket.socket, address: Any) -> None:
        # SO_REUSEADDR: a node restarted at once binds its port again although connections of
        # its previous process still linger there (TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(self.limits.backlog)
        sock.setblocking(False)

    def _drop_listeners(self) -> None:
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        for sock in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    # ---- fault injection: listeners closed while the node runs on ---------------------------

    @property
    def listening(self) -> bool:
        return bool(self._sockets)

    def close_listeners(self, reopen_after: float | None = None) -> None:
        """Close every listening socket; the node, its outgoing connections and the connections
        already accepted go on, a new connection is refused. After REOPEN_AFTER seconds (if
        given) it listens again; otherwise only reopen_listeners() or a restart does that."""
        if reopen_after is not None and not (math.isfinite(reopen_after) and reopen_after > 0):
            raise ValueError(f"reopen_after must be a finite number of seconds > 0, "
                             f"got {reopen_after!r}")
        if self._closed:
            return
        self._cancel_reopen()
        self._drop_listeners()
        if reopen_after is not None:
            self._reopen = self.loop.call_later(reopen_after, self._scheduled_reopen)

    def reopen_listeners(self) -> None:
        """Listen again on the addresses of close_listeners() (at once: SO_REUSEADDR). A no-op
        when listening. Raises OSError if an address has been taken meanwhile."""
        self._cancel_reopen()
        if self._closed or self._sockets:
            return
        try:
            for family, kind, proto, address in self._binds:
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                self._bind(sock, address)
        except OSError:
            self._drop_listeners()
            raise
        for sock in self._sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _scheduled_reopen(self) -> None:
        self._reopen = None
        try:
            self.reopen_listeners()
        except OSError as exc:
            log.warning("cannot listen again on %s: %s; retrying in %g s", self._addresses,
                        exc.strerror or exc, REOPEN_RETRY_DELAY)
            self._reopen = self.loop.call_later(REOPEN_RETRY_DELAY, self._scheduled_reopen)
        else:
            log.warning("fault injection: listening again on %s", self._addresses)

    def _cancel_reopen(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(self.limits.backlog):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(listener, exc)
                return
            if self.stats.open >= self.stats.cap and not self._evict_one():
                self.stats.refused_over_cap += 1
                _refuse(conn)
                self._note_refusal()
            else:
                self._adopt(conn)

    def busy(self) -> int:
        """Connections inside a request right now (those eviction spares)."""
        return sum(1 for conn in self._by_progress if not conn.evictable)

    def track(self, conn: _Connection | _Setup) -> None:
        self._by_progress.pop(conn, None)
        self._by_progress[conn] = None

    def untrack(self, conn: _Connection | _Setup) -> None:
        self._by_progress.pop(conn, None)

    def _evict_one(self) -> bool:
        """Close the connection that has gone longest without completing a request and is not
        in one now (or not set up yet), freeing its slot at once; False if none could."""
        while True:
            victim = next((c for c in self._by_progress if c.evictable), None)
            if victim is None:
                return False
            del self._by_progress[victim]
            if victim.evict():
                return True

    def _note_refusal(self) -> None:
        held = self._refusals.allow()
        if held is not None:
            more = f" ({held} more since the last warning)" if held else ""
            log.warning("refused a connection with 503: at the cap of %d open connections%s",
                        self.stats.cap, more)

    def _accept_failed(self, listener: socket.socket, exc: OSError) -> None:
        """Out of fds (or kernel memory) despite the cap: refuse what waits in the backlog
        using the spare fd, then stop accepting for a moment instead of spinning."""
        self.stats.accept_errors += 1
        self.accept_filter.report(exc)
        if exc.errno in _OUT_OF_FDS:
            self._shed(listener)
        self.loop.remove_reader(listener.fileno())
        self._paused[listener] = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume,
                                                       listener)

    def _shed(self, listener: socket.socket) -> None:
        for _ in range(self.limits.backlog):
            if self._spare is None:
                return
            os.close(self._spare)
            self._spare = None
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            else:
                self.stats.refused_out_of_fds += 1
                _refuse(conn)
            finally:
                self._spare = _open_spare()

    def _resume(self, listener: socket.socket) -> None:
        del self._paused[listener]
        if not self._closed:
            self.loop.add_reader(listener.fileno(), self._accept, listener)

    def _adopt(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        stats = self.stats
        stats.open += 1
        stats.accepted += 1
        stats.peak_open = max(stats.peak_open, stats.open)
        released = False

        def release() -> bool:
            """Free the slot, once: True if this call did."""
            nonlocal released
            if released:
                return False
            released = True
            stats.open -= 1
            return True

        setup = _Setup(stats, conn, release)
        setup.task = self.loop.create_task(self._connect(setup))
        self._pending.add(setup)
        setup.task.add_done_callback(lambda _: self._pending.discard(setup))
        self.track(setup)

    async def _connect(self, setup: _Setup) -> None:
        setup.started = True
        conn, release = setup.conn, setup.release

        def protocol() -> _Connection:
            return _Connection(self, self._factory(), setup)

        try:
            peer = conn.getpeername()[0]
        except OSError:
            peer = "?"
        try:
            if self.ssl is None:
                await self.loop.connect_accepted_socket(protocol, sock=conn)
            else:
                # Our protocol sees the connection only once the handshake is done (its timers
                # start then): until then the slot is bounded by the handshake timeout (and
                # evictable at the cap), and a failed or timed-out handshake raises here and
                # frees it.
                await self.loop.connect_accepted_socket(
                    protocol, sock=conn, ssl=self.ssl,
                    ssl_handshake_timeout=self.limits.header_timeout)
        except BaseException as exc:
            if not setup.connected:  # else the transport owns the socket, and closes it
                conn.close()
            release()
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, _ssl.SSLError):
                why = exc.reason or str(exc)
                if isinstance(exc, _ssl.SSLCertVerificationError):
                    why += f" ({exc.verify_message})"
                self._tls_failures.warning(peer, "TLS handshake with %s failed: %s", peer, why)
            else:
                log.debug("dropped a new connection: %s", exc)
        finally:
            self.untrack(setup)

    def _report_slow_stop(self) -> None:
        busy = sorted(c.in_request for c in self._by_progress
                      if isinstance(c, _Connection) and not c.evictable)
        log.warning("still stopping after %g s: %d request(s) in flight (%s) get up to %g s "
                    "to finish", SLOW_STOP_REPORT, len(busy), ", ".join(busy) or "none",
                    self.limits.shutdown_timeout)

    async def close(self) -> None:
        """Stop listening, close every connection (requests in flight get shutdown_timeout),
        and run the app's cleanup."""
        if self._closed:
            return
        self._closed = True
        self._cancel_reopen()
        self._drop_listeners()
        pending = list(self._pending)
        for setup in pending:
            setup.cancel()
            self.untrack(setup)  # one whose task never ran never untracks itself
        await asyncio.gather(*(s.task for s in pending if s.task is not None),
                             return_exceptions=True)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        report = self.loop.call_later(SLOW_STOP_REPORT, self._report_slow_stop)
        try:
            await self.runner.cleanup()
        finally:
            report.cancel()
            if self._owns_filter:
                self.accept_filter.uninstall(self.loop)


async def serve(app: web.Application, host: str | None, port: int, *,
                limits: ServerLimits | None = None,
                access_log: logging.Logger | None = None,
                ssl: _ssl.SSLContext | None = None) -> GuardedServer:
    """Start APP on HOST:PORT (None or "" for every interface; port 0 for any free port),
    speaking TLS with the SSL context if one is given.

    Replaces web.AppRunner + web.TCPSite: runs the app's startup hooks, then listens. The app
    must not be started yet, since a middleware is added to it. Installs an AcceptErrorFilter
    on the running loop unless one is there. Raises OSError if it cannot listen (after
    cleaning up), ConfigError if the fd limit is too small for the reserve. Stop with close().
    """
    limits = limits or ServerLimits()
    cap = limits.connection_cap(fd_soft_limit())
    app.middlewares.insert(0, _track_requests)
    runner = web.AppRunner(app, handle_signals=False, access_log=access_log,
                           keepalive_timeout=limits.keepalive_timeout,
                           lingering_time=limits.lingering_time,
                           shutdown_timeout=limits.shutdown_timeout)
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()
        raise
    loop = asyncio.get_running_loop()
    owns_filter = not isinstance(loop.get_exception_handler(), AcceptErrorFilter)
    accept_filter = install_accept_error_filter(loop, interval=limits.accept_log_interval)
    server = GuardedServer(runner, limits, cap, accept_filter, owns_filter=owns_filter,
                           ssl=ssl)
    try:
        await server._listen(host, port)
    except BaseException:
        await server.close()
        raise
    log.debug("listening on %s, at most %d connections", server.addresses, cap)
    return server


# ---- request bodies ---------------------------------------------------------------------


# The deadline is a parameter, not the caller's asyncio.timeout(), so that a timeout here is
# told apart from any other: it is the client's fault (408), not the handler's.
async def read_body(
    request: web.BaseRequest, *, limit: int, timeout: float  # noqa: ASYNC109
) -> bytes:
    """Read the whole body within TIMEOUT seconds and LIMIT bytes.

    aiohttp has no body deadline: a client that announces a Content-Length and stalls holds
    the handler forever. Raises web.HTTPRequestTimeout (408) or web.HTTPRequestEntityTooLarge
    (413), after which the connection is closed, and web.HTTPBadRequest when the body is
    malformed or the client went away mid-body (logged at DEBUG only: aiohttp would otherwise
    log the ConnectionResetError as an ERROR with a traceback). All are HTTPExceptions, so an
    errors-as-JSON middleware turns them into JSON replies.
    """
    if limit < 0 or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"read_body needs limit >= 0 and timeout > 0, got {limit}, {timeout}")
    conn = _connection_of(request)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(conn, limit, declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(conn, limit, size)
                chunks.append(chunk)
    except TimeoutError:
        if conn is not None:
            conn.stats.body_timeouts += 1
            conn.close_after_response = True
        log.debug("%s: body not received within %g s (%d bytes)", request.remote, timeout, size)
        raise web.HTTPRequestTimeout(
            reason=f"request body not received within {timeout:g} s") from None
    except (ConnectionError, RuntimeError) as exc:
        # aiohttp raises RuntimeError("Connection closed.") when the client is already gone
        transport = request.transport
        if isinstance(exc, RuntimeError) and transport is not None and not transport.is_closing():
            raise
        if conn is not None:
            conn.stats.client_disconnects += 1
        log.debug("%s disconnected after %d bytes of the body of %s %s",
                  request.remote, size, request.method, request.path)
        raise web.HTTPBadRequest(reason="client disconnected mid-body") from None
    except web.RequestPayloadError as exc:  # bad chunked encoding or compression
        log.debug("%s sent a malformed body: %s", request.remote, exc)
        raise web.HTTPBadRequest(reason="malformed request body") from None
    return b"".join(chunks)


def _too_large(conn: _Connection | None, limit: int, size: int) -> web.HTTPException:
    if conn is not None:
        conn.stats.bodies_too_large += 1
        conn.close_after_response = True
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size, reason=f"request body over {limit} bytes")
