"""The one retry delay of the package: exponential, capped, with jitter so that nodes that
failed together do not retry together."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ddg.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError(f"backoff must have 0 < initial <= maximum, got "
                              f"{self.initial}, {self.maximum}")
        self._current = self.initial

    def next(self) -> float:
        """The delay before the next try: between 0.5x and 1.5x of the current step."""
        delay = self._current * (0.5 + self.rng.random())
        self._current = min(self._current * 2, self.maximum)
        return min(delay, self.maximum)

    def reset(self) -> None:
        self._current = self.initial

    @property
    def failing(self) -> bool:
        return self._current > self.initial
