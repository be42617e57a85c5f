"""The real data source: membership from the Redis registry, status over HTTP (one client)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ddg.auth import sign_headers
from ddg.config import mask_url
from ddg.registry import Membership, Registry

from .model import AdminResult, NodeStatus, Reply, StatusFormatError


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


class LiveSource:
    """ClusterSource backed by a Registry and one shared httpx.AsyncClient."""

    def __init__(self, *, redis_url: str, cluster: str, timeout: float,
                 secret: str | None = None, registry_timeout: float = 0.5,
                 password: str | None = None) -> None:
        self.cluster = cluster
        self.location = mask_url(redis_url)  # shown in the header: never the password
        self.timeout = timeout
        self.secret = secret
        self.registry = Registry(redis_url, cluster, timeout=registry_timeout, password=password)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Created lazily so it binds to the running event loop (the app's, or a test's).
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=64),
                trust_env=False,  # cluster nodes are never reached through an HTTP proxy
            )
        return self._client

    async def read(self) -> Membership:
        return await self.registry.read()

    def changes(self, interval: float) -> AsyncIterator[None]:
        return self.registry.changes(interval)

    async def remove(self, name: str) -> int:
        return await self.registry.remove(name)

    async def status(self, address: str) -> Reply:
        t0 = time.monotonic()
        try:
            # The backstop: httpx's timeout is per phase, this one is per request. (Not
            # wait_for: on Python 3.11 it can swallow a cancellation, and the poll worker
            # would outlive its node's row or the app.)
            async with asyncio.timeout(self.timeout + 0.05):
                resp = await self.client.get(f"{address}/status")
            latency = (time.monotonic() - t0) * 1000
            if resp.status_code != 200:
                return Reply(error=f"HTTP {resp.status_code}", latency_ms=latency)
            return Reply(status=NodeStatus.from_json(resp.json()), latency_ms=latency)
        except (StatusFormatError, json.JSONDecodeError) as exc:
            return Reply(error=f"bad /status answer: {exc}",
                         latency_ms=(time.monotonic() - t0) * 1000)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return Reply(error=describe_error(exc), latency_ms=(time.monotonic() - t0) * 1000)

    async def admin(self, name: str, address: str, path: str,
                    payload: dict[str, Any]) -> AdminResult:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret is not None:
            headers.update(sign_headers(self.secret.encode(), "POST", path, body,
                                        recipient=name))
        try:
            async with asyncio.timeout(max(self.timeout, 1.0) + 0.05):
                resp = await self.client.post(f"{address}{path}", content=body, headers=headers)
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

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self.registry.close()
