"""What the console's model takes in and gives out: a node's answer (Observation) and a line
of the event log (Event), with its severity. The bottom of ddg_tui: imports ddg.client only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddg.client import Reply

Severity = Literal["info", "good", "warning", "error"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Observation:
    """A reply from node NAME: request sent at `sent`, answer received at `at` (monotonic)."""

    name: str
    reply: Reply
    sent: float
    at: float
    wall: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    seq: int
    wall: float
    kind: str
    text: str
    severity: Severity = "info"
    node: str | None = None
    nodes: tuple[str, ...] = ()  # an event about several nodes (folded term changes)

    def about(self, name: str) -> bool:
        return self.node == name or name in self.nodes
