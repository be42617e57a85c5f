"""Rate limits: of logging (a problem that recurs every heartbeat is said once, then at most once
per interval with a count of what was held back: logs that help, not logs that flood), and of
an action anyone may ask for (TokenBucket)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class Throttle:
    """Lets one event through per INTERVAL seconds and counts the ones it holds back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last: float | None = None

    def allow(self) -> int | None:
        """None to stay quiet; otherwise the number suppressed since the last allowed one."""
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = now
        held, self.suppressed = self.suppressed, 0
        return held


class LogThrottle:
    """One Throttle per kind of message (KEY), e.g. one per peer and problem."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._throttles: dict[str, Throttle] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> None:
        throttle = self._throttles.get(key)
        if throttle is None:
            throttle = self._throttles[key] = Throttle(self.interval, self.clock)
        held = throttle.allow()
        if held is None:
            return
        if held:
            msg, args = msg + " (%d more since)", (*args, held)
        self.logger.log(level, msg, *args)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)


class TokenBucket:
    """BURST actions at once, then one per EVERY seconds."""

    def __init__(self, burst: int, every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or not every > 0:
            raise ValueError(f"a token bucket needs burst >= 1 and every > 0: {burst}, {every}")
        self.burst = burst
        self.every = every
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """Whether one more action may go now (then it is counted)."""
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.every)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
