"""The one way tests and tools wait: poll a condition until it holds or a deadline passes.

Never a bare sleep as synchronisation: the wait ends as soon as the condition holds, and a
condition that never holds fails with what was awaited instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T | None], *, timeout: float, what: str,
               interval: float = 0.02, detail: Callable[[], str] | None = None) -> T:
    """Poll COND until it returns something truthy and return that; after TIMEOUT s raise
    TimeoutError naming WHAT (and DETAIL(), e.g. the state of a cluster, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# The same call as wait_until's, on purpose: hence `timeout`, not asyncio.timeout().
async def wait_until_async(
        cond: Callable[[], T | None], *, timeout: float,  # noqa: ASYNC109
        what: str, interval: float = 0.05,
        pause: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """wait_until inside an event loop: PAUSE (e.g. a Textual pilot's pause, which also lets
    the app process its messages) runs between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await pause(interval)
