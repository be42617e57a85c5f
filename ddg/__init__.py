"""DuckDuckGoose: Raft-style leader election; one goose, every other node a duck."""

from __future__ import annotations

__version__ = "0.1.0"
