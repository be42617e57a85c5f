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
from dataclasses import dataclass, field
from typing import Any

import httpx

from .auth import sign_headers
from .status import NodeStatus, Role, StatusFormatError


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
