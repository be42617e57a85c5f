"""The one client for a node's endpoints (`/status`, `GET /`, the admin calls), for every tool
that reads nodes: the CLI, the console, the fault observer, the test kit and the benchmark.

httpx, not aiohttp, for the admin calls, https and anything unusual: one library for one
job beats two clients that drift apart. The `/status` poll itself (the console sends 100 a
second at 25 nodes) reads plain-http answers on asyncio streams over one kept-alive connection
per node: through httpx each cost ~1.9 ms of CPU (18.5 % of a core at 25 nodes), this way
~0.13 ms (benchmarks/console.py); the answer is parsed by the same NodeStatus.from_json and
failures read the same. h11 (installed with httpx) on the same connections was measured as the
alternative and kept out: per poll, with the JSON parse, 0.17 ms of CPU here, 0.28-0.30 ms with
h11, 1.2 ms with httpx (median, 3 rounds of 3000, benchmarks/status_poll.py): 1.7 %, 3 % and
12 % of a core at 25 nodes. The reader is small because a node's answer is: HTTP/1.1, a
content-length or chunked body under MAX_BODY; anything else is a clear error or the fallback.
The node's own peer transport stays on aiohttp, inside the daemon's event loop and connector,
next to its server: that is another job (peer RPC, signed, with per-peer backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ddg.client.events import (
    INCARNATION_HEADER,
    SseDecoder,
    WatchEvent,
    WatchFormatError,
    parse_event,
)
from ddg.client.nodestatus import NodeStatus, StatusFormatError
from ddg.election.roles import Role
from ddg.errors import DdgError
from ddg.net.auth import sign_headers
from ddg.net.tls import CLIENT_CERT_REQUIRED, TlsConfig, client_context
from ddg.util.backoff import Backoff


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """The outcome of one poll: a status, or the reason there is none."""

    status: NodeStatus | None = None
    error: str | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError("a reply has exactly one of status and error")

    @property
    def ok(self) -> bool:
        return self.status is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminResult:
    ok: bool
    message: str
    status_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for a failed request (no traceback, no repr soup)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "certificate" in text or "ssl" in text:
            return f"TLS: {exc}"
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed by node"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


# ---- the light /status reader ----------------------------------------------------------

MAX_BODY = 1 << 20  # a /status answer is ~2 KiB; anything near this is not a ddg node
MAX_IDLE = 2  # kept-alive connections per node (one poll loop uses one)


class _Closed(Exception):
    """The node closed the connection before a whole answer arrived."""


class _Bad(Exception):
    """An answer that is not HTTP/1.x as a ddg node sends it."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    request: bytes


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: bool = False  # has carried a request already (a stale keep-alive may fail)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _StatusReader:
    """GET /status on plain asyncio streams, with a deadline; never raises (but for
    cancellation). What it does not handle (https, credentials in the URL) goes to FALLBACK."""

    def __init__(self, *, timeout: float,
                 fallback: Callable[[str], Awaitable[Reply]]) -> None:
        self.timeout = timeout
        self.fallback = fallback
        self._targets: dict[str, _Target | None] = {}
        self._idle: dict[str, list[_Conn]] = {}

    def _target(self, address: str) -> _Target | None:
        if address in self._targets:
            return self._targets[address]
        target: _Target | None = None
        try:
            url = urlsplit(address)
            port = url.port or 80
        except ValueError:
            url = None
        if url is not None and url.scheme == "http" and url.hostname and not url.username:
            path = url.path.rstrip("/") + "/status"
            request = (f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                       "Accept: application/json\r\nUser-Agent: ddg-console\r\n\r\n").encode()
            target = _Target(url.hostname, port, request)
        self._targets[address] = target
        return target

    async def poll(self, address: str) -> Reply:
        target = self._target(address)
        if target is None:
            return await self.fallback(address)
        t0 = time.monotonic()

        def took() -> float:
            return (time.monotonic() - t0) * 1000

        phase = "connect"
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self.timeout):
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
                while True:
                    if conn is None:
                        phase = "connect"
                        reader, writer = await asyncio.open_connection(target.host,
                                                                       target.port)
                        conn = _Conn(reader, writer)
                    phase = "request"
                    reused = conn.used
                    conn.used = True
                    try:
                        code, body, keep = await _exchange(conn, target.request)
                        break
                    except (_Closed, ConnectionError):
                        if not reused:
                            raise
                        # A kept-alive connection the node had closed: once more, afresh.
                        conn.close()
                        conn = None
            if keep:
                self._idle.setdefault(address, []).append(conn)
                if len(self._idle[address]) > MAX_IDLE:
                    self._idle[address].pop(0).close()
            else:
                conn.close()
            conn = None
            if code != 200:
                return Reply(error=f"HTTP {code}", latency_ms=took())
            return Reply(status=NodeStatus.from_json(json.loads(body)), latency_ms=took())
        except (StatusFormatError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Reply(error=f"bad /status answer: {exc}", latency_ms=took())
        except TimeoutError:
            return Reply(error="connect timeout" if phase == "connect" else "timeout",
                         latency_ms=took())
        except ConnectionRefusedError:
            return Reply(error="connection refused", latency_ms=took())
        except (_Closed, ConnectionError):
            return Reply(error="connection closed by node", latency_ms=took())
        except _Bad as exc:
            return Reply(error=f"bad HTTP answer: {exc}", latency_ms=took())
        except OSError as exc:
            text = str(exc)
            if phase == "connect":
                return Reply(error=f"cannot connect: {text}" if text else "cannot connect",
                             latency_ms=took())
            return Reply(error=f"{type(exc).__name__}: {text}", latency_ms=took())
        finally:
            if conn is not None:  # failed or cancelled half-way: its state is unknown
                conn.close()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


async def _exchange(conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
    """Send REQUEST, read one answer: (status code, body, whether the connection stays)."""
    conn.writer.write(request)
    try:
        head = await conn.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed() from exc
    except asyncio.LimitOverrunError as exc:
        raise _Bad("response head too long") from exc
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise _Bad(f"status line {lines[0][:60]!r}")
    code = int(status[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = status[0] != "HTTP/1.0" and headers.get("connection", "").lower() != "close"
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _chunked(conn.reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY:
                raise _Bad(f"content-length {length}")
            body = await conn.reader.readexactly(length)
        else:
            body = await conn.reader.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise _Bad("body too long")
            keep = False
    except asyncio.IncompleteReadError as exc:
        raise _Closed() from exc
    except ValueError as exc:
        raise _Bad(str(exc)) from exc
    return code, body, keep


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise _Bad("body too long")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


class NodeClient:
    """Async, one connection pool, created on first use so that it binds to the running loop.
    Every call has a deadline (httpx's timeouts are per phase; asyncio.timeout is the whole
    request, and unlike Python 3.11's wait_for it never swallows a cancellation).
    https:// nodes are verified against TLS's CA (else the system's), and TLS's certificate
    is presented to them (nodes with --tls-client-auth demand one for /admin/*)."""

    def __init__(self, *, timeout: float, secret: bytes | None = None,
                 max_connections: int = 200, tls: TlsConfig | None = None) -> None:
        self.timeout = timeout
        self.secret = secret
        self._ssl = client_context(tls)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=min(64, max_connections))
        self._client: httpx.AsyncClient | None = None
        self._reader = _StatusReader(timeout=timeout, fallback=self._poll_http)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout), limits=self._limits, verify=self._ssl,
                trust_env=False,  # cluster nodes are never reached through an HTTP proxy
            )
        return self._client

    async def poll(self, address: str) -> Reply:
        """GET /status; never raises (but for cancellation)."""
        return await self._reader.poll(address)

    async def _poll_http(self, address: str) -> Reply:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout + 0.05):
                resp = await self.http.get(f"{address}/status")
            latency = (time.monotonic() - t0) * 1000
            if resp.status_code != 200:
                return Reply(error=f"HTTP {resp.status_code}", latency_ms=latency)
            return Reply(status=NodeStatus.from_json(resp.json()), latency_ms=latency)
        except (StatusFormatError, json.JSONDecodeError) as exc:
            return Reply(error=f"bad /status answer: {exc}",
                         latency_ms=(time.monotonic() - t0) * 1000)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return Reply(error=describe_error(exc), latency_ms=(time.monotonic() - t0) * 1000)

    async def role(self, address: str) -> Role | None:
        """GET /: the node's answer, or None if it gave none."""
        try:
            async with asyncio.timeout(self.timeout + 0.05):
                resp = await self.http.get(f"{address}/")
        except (httpx.HTTPError, TimeoutError, OSError):
            return None
        if resp.status_code != 200:
            return None
        try:
            return Role(resp.text)
        except ValueError:
            return None

    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        """POST an admin request to node NAME (signed for it when there is a secret)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            headers.update(sign_headers(self.secret, "POST", path, body, recipient=name))
        try:
            async with asyncio.timeout(max(self.timeout, 1.0) + 0.05):
                resp = await self.http.post(f"{address}{path}", content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return AdminResult(ok=False, message=describe_error(exc))
        text = resp.text.strip()
        detail = ""
        try:
            data = resp.json()
            if isinstance(data, dict):
                detail = str(data.get("error") or data.get("detail") or data.get("message") or "")
        except ValueError:
            detail = text[:160]
        if resp.status_code == 403:
            hint = detail or "forbidden"
            if hint.startswith(CLIENT_CERT_REQUIRED):
                return AdminResult(ok=False, status_code=403,
                                   message=f"refused (403: {hint}); give --tls-cert and "
                                           "--tls-key signed by the cluster's CA")
            return AdminResult(
                ok=False, status_code=403,
                message=f"refused (403: {hint}); fault injection needs the node to run with "
                        "--allow-fault-injection" + ("" if self.secret else
                                                     ", and a secret-protected cluster needs "
                                                     "--cluster-secret"))
        if resp.status_code == 401:
            return AdminResult(
                ok=False, status_code=401,
                message=f"refused (401: {detail or 'unauthorized'}); check --cluster-secret")
        if resp.status_code >= 400:
            return AdminResult(ok=False, status_code=resp.status_code,
                               message=f"HTTP {resp.status_code}: {detail or text[:160]}")
        return AdminResult(ok=True, status_code=resp.status_code, message="ok")

    async def aclose(self) -> None:
        await self._reader.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ---- for applications: one status, and a node's changes as they happen -------------------


class NodeUnavailable(DdgError):
    """A node gave no status: unreachable, too slow, or not a ddg node."""


class WatchRefused(DdgError):
    """A node refuses /watch for good (no such endpoint: not a ddg node, or too old)."""


async def status(url: str, *, request_timeout: float = 2.0,
                 tls: TlsConfig | None = None) -> NodeStatus:
    """The node's /status at URL (e.g. http://127.0.0.1:4001); NodeUnavailable if none."""
    client = NodeClient(timeout=request_timeout, tls=tls)
    try:
        reply = await client.poll(url.rstrip("/"))
    finally:
        await client.aclose()
    if reply.status is None:
        raise NodeUnavailable(f"{url}: {reply.error}")
    return reply.status


# No byte for this long (not even a ping, sent every 5 s) and the stream is taken for dead.
WATCH_READ_TIMEOUT = 15.0


async def watch(url: str, *, last_event_id: int | None = None, connect_timeout: float = 5.0,
                backoff: Backoff | None = None,
                on_retry: Callable[[str, float], object] | None = None,
                tls: TlsConfig | None = None) -> AsyncGenerator[WatchEvent, None]:
    """The events of the node at URL's /watch, forever: its state first, then each change.

    A broken stream is reopened after BACKOFF's delay (ON_RETRY(reason, delay) is told) with
    Last-Event-ID, so the events continue without a duplicate or a gap while the node lives;
    after a restart of the node (or too long away) the next event is its state again, with
    `gap` saying why. LAST_EVENT_ID resumes from an id kept from an earlier watch.
    CONNECT_TIMEOUT bounds the connect and each write; a stream silent for WATCH_READ_TIMEOUT
    is taken for dead and reopened. TLS: as NodeClient's. Raises WatchRefused if the node has
    no /watch. Close it with contextlib.aclosing().
    """
    base = url.rstrip("/")
    backoff = backoff or Backoff(initial=0.1, maximum=2.0)
    incarnation: str | None = None
    limits = httpx.Timeout(connect_timeout, read=WATCH_READ_TIMEOUT)
    async with httpx.AsyncClient(timeout=limits, verify=client_context(tls),
                                 trust_env=False) as http:
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
                if incarnation is not None:
                    headers[INCARNATION_HEADER] = incarnation
            try:
                async with http.stream("GET", f"{base}/watch", headers=headers) as resp:
                    if resp.status_code in (404, 405):
                        raise WatchRefused(f"{base}/watch answered {resp.status_code}: not a "
                                           "ddg node, or one too old to have /watch")
                    kind = resp.headers.get("content-type", "")
                    if resp.status_code != 200 or not kind.startswith("text/event-stream"):
                        await resp.aread()
                        reason = f"HTTP {resp.status_code}: {_reason(resp)}"
                        if resp.status_code == 400:
                            last_event_id = incarnation = None  # start afresh
                    else:
                        decoder = SseDecoder()
                        reason = "the node ended the stream"
                        async for line in resp.aiter_lines():
                            msg = decoder.feed(line)
                            if msg is None:
                                continue
                            event = parse_event(msg)
                            last_event_id, incarnation = event.id, event.incarnation
                            backoff.reset()
                            yield event
            except WatchFormatError as exc:
                reason = str(exc)
            except (httpx.HTTPError, OSError) as exc:
                reason = describe_error(exc)
            delay = backoff.next()
            if on_retry is not None:
                on_retry(reason, delay)
            await asyncio.sleep(delay)


def _reason(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:160]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return resp.text[:160]
