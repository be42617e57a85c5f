"""What a node tells the outside about itself as it happens: a change of its role, term, the
goose it follows, or its membership. The node observes after every step of its core and at
every deadline of its clock; listeners (the watch stream, the job runner, the metrics, the
logs) get each change once, in order, with a monotonic id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddg.election.roles import Role


@dataclass(frozen=True, kw_only=True, slots=True)
class View:
    """The observable part of a node's state; a Change is a new View."""

    role: Role
    state: str
    term: int
    goose: str | None
    members: tuple[str, ...]
    version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    id: int  # 1, 2, ... for the life of the process
    at: float  # monotonic
    wall: float  # time.time(), for display
    view: View
    previous: View | None

    def to_json(self) -> dict[str, Any]:
        v = self.view
        return {"id": self.id, "time": self.wall, "role": v.role.value, "state": v.state,
                "term": v.term, "goose": v.goose, "members": list(v.members),
                "membership_version": v.version,
                "previous_role": None if self.previous is None else self.previous.role.value}


Listener = Callable[[Change], None]


class Changes:
    """Turns observations into changes; calls listeners synchronously (they must not block)."""

    def __init__(self) -> None:
        self.last: Change | None = None
        self.role_since: float | None = None  # monotonic: when the current role began
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def observe(self, view: View, *, at: float, wall: float) -> Change | None:
        previous = self.last.view if self.last is not None else None
        if view == previous:
            return None
        if previous is None or previous.role != view.role:
            self.role_since = at
        change = Change(id=1 if self.last is None else self.last.id + 1, at=at, wall=wall,
                        view=view, previous=previous)
        self.last = change
        for listener in self._listeners:
            listener(change)
        return change
