"""accept() failures, rate-limited: while fds are exhausted asyncio logs a traceback for every
failed accept(), hundreds a second; one line per interval says the same."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ddg.util.ratelimit import Throttle

log = logging.getLogger("ddg.server")

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


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
