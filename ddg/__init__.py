"""DuckDuckGoose: Raft-style leader election; one goose, every other node a duck.
Its packages, bottom up: errors, util, election, net, registry, client, ops, node, local,
cli and app (leader election inside a Python app: `from ddg.app import member`)."""

from __future__ import annotations

__version__ = "0.2.0"
