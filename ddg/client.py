"""The one client for a node's endpoints (`/status`, `GET /`, the admin calls), for every tool
that reads nodes: the CLI, the console, the fault observer, the test kit and the benchmark.

httpx, not aiohttp: the console polls with it (its connection pool and per-phase timeouts
suit many small concurrent GETs), and one library for one job beats two clients that drift
apart. The node's own peer transport stays on aiohttp, inside the daemon's event loop and
connector, next to its server: that is another job (peer RPC, signed, with per-peer backoff).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .auth import sign_headers
from .backoff import Backoff
from .errors import DdgError
from .status import NodeStatus, Role, StatusFormatError
from .watch import INCARNATION_HEADER, SseDecoder, WatchEvent, WatchFormatError, parse_event


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
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed by node"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class NodeClient:
    """Async, one connection pool, created on first use so that it binds to the running loop.
    Every call has a deadline (httpx's timeouts are per phase; asyncio.timeout is the whole
    request, and unlike Python 3.11's wait_for it never swallows a cancellation)."""

    def __init__(self, *, timeout: float, secret: bytes | None = None,
                 max_connections: int = 200) -> None:
        self.timeout = timeout
        self.secret = secret
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=min(64, max_connections))
        self._client: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout), limits=self._limits,
                trust_env=False,  # cluster nodes are never reached through an HTTP proxy
            )
        return self._client

    async def poll(self, address: str) -> Reply:
        """GET /status; never raises (but for cancellation)."""
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
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ---- for applications: one status, and a node's changes as they happen -------------------


class NodeUnavailable(DdgError):
    """A node gave no status: unreachable, too slow, or not a ddg node."""


class WatchRefused(DdgError):
    """A node refuses /watch for good (no such endpoint: not a ddg node, or too old)."""


async def status(url: str, *, request_timeout: float = 2.0) -> NodeStatus:
    """The node's /status at URL (e.g. http://127.0.0.1:4001); NodeUnavailable if none."""
    client = NodeClient(timeout=request_timeout)
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
                ) -> AsyncGenerator[WatchEvent, None]:
    """The events of the node at URL's /watch, forever: its state first, then each change.

    A broken stream is reopened after BACKOFF's delay (ON_RETRY(reason, delay) is told) with
    Last-Event-ID, so the events continue without a duplicate or a gap while the node lives;
    after a restart of the node (or too long away) the next event is its state again, with
    `gap` saying why. LAST_EVENT_ID resumes from an id kept from an earlier watch.
    CONNECT_TIMEOUT bounds the connect and each write; a stream silent for WATCH_READ_TIMEOUT
    is taken for dead and reopened. Raises WatchRefused if the node has no /watch. Close it
    with contextlib.aclosing().
    """
    base = url.rstrip("/")
    backoff = backoff or Backoff(initial=0.1, maximum=2.0)
    incarnation: str | None = None
    limits = httpx.Timeout(connect_timeout, read=WATCH_READ_TIMEOUT)
    async with httpx.AsyncClient(timeout=limits, trust_env=False) as http:
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
