"""The node's HTTP listener, hardened against clients that hold connections and never finish.

aiohttp's own TCPSite accepts through asyncio's accept loop, which has no connection cap: a few
hundred idle clients exhaust the fd limit, accept() fails with EMFILE, asyncio logs a traceback
per failure, and the node stops answering even /status. GuardedServer accepts connections
itself (loop.add_reader + loop.connect_accepted_socket, both public asyncio API), so it can:

* cap concurrent connections below the fd limit (ddg.net.server.limits), keeping a reserve for
  the node's own peer connections, Redis and files; at the cap, a new connection takes the
  slot of the one that has gone longest without completing a request (a flood of idle clients
  cannot lock out a peer or /status); only when every connection is busy does it get a 503;
* have each connection closed when it does not deliver a complete request head in time, sits
  idle on keep-alive, or stops reading its responses (ddg.net.server.connection);
* shed connections with a spare fd, and log accept() failures at most once per interval
  (ddg.net.server.accept), if the fd limit is hit anyway;
* serve TLS (serve(ssl=...)): the handshake must complete within header_timeout, then the
  request head gets its own header_timeout as on a plain connection, so a client that starts a
  handshake and never finishes it holds its slot for header_timeout at most, and at the cap
  not even that: a connection not yet set up has made no progress, and is evicted first.

For fault injection (`--allow-fault-injection`), ``close_listeners`` closes the listening
sockets while everything else runs on (a new connection is refused; accepted ones go on), and
``reopen_listeners`` listens again on the same addresses.
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
from typing import Any, Final

from aiohttp import web

from ddg.net.server.accept import AcceptErrorFilter, install_accept_error_filter
from ddg.net.server.connection import Connection, Setup, track_requests
from ddg.net.server.limits import ServerLimits, ServerStats, fd_soft_limit
from ddg.util.ratelimit import LogThrottle, Throttle

log = logging.getLogger("ddg.server")

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


# ---- config and counters ----------------------------------------------------------------


# ---- connections ------------------------------------------------------------------------


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
        self._pending: set[Setup] = set()
        self._spare = _open_spare()
        self._refusals = Throttle(limits.accept_log_interval, time.monotonic)
        self._tls_failures = LogThrottle(log, TLS_FAILURE_LOG_INTERVAL)
        self._closed = False
        # Open connections, oldest progress first (connect, or the last completed request).
        self._by_progress: dict[Connection | Setup, None] = {}

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

    def track(self, conn: Connection | Setup) -> None:
        self._by_progress.pop(conn, None)
        self._by_progress[conn] = None

    def untrack(self, conn: Connection | Setup) -> None:
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

        setup = Setup(stats, conn, release)
        setup.task = self.loop.create_task(self._connect(setup))
        self._pending.add(setup)
        setup.task.add_done_callback(lambda _: self._pending.discard(setup))
        self.track(setup)

    async def _connect(self, setup: Setup) -> None:
        setup.started = True
        conn, release = setup.conn, setup.release

        def protocol() -> Connection:
            return Connection(self, self._factory(), setup)

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
                      if isinstance(c, Connection) and not c.evictable)
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
    app.middlewares.insert(0, track_requests)
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
