"""The events of a node's `GET /watch` stream and their wire form (Server-Sent Events), for the
node that writes them (ddg.ops.watch) and every reader (ddg.client.watch, `ddg-node watch`).

Every event's data is one JSON object that carries the node's name and `incarnation` (random
per process); a reader sends the incarnation back in the `DDG-Incarnation` header, so a
restarted node is told apart from a live one even when its new ids have caught up with the old
ones. Free of aiohttp and httpx: a reader imports it cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from ddg.client.nodestatus import FieldReader, StatusFormatError
from ddg.election.roles import Role

INCARNATION_HEADER: Final = "DDG-Incarnation"
KINDS: Final = frozenset({"state", "change"})


class WatchFormatError(StatusFormatError):
    """An event that does not fit the /watch contract."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchEvent:
    """One event of a node's /watch stream: its state at connect (kind "state", with `gap`
    set when a resume was impossible), or one change (kind "change")."""

    kind: str
    id: int  # the Change id (0: the node had observed nothing yet)
    node: str
    incarnation: str
    time: float  # time.time() on the node when it observed the change
    role: Role
    state: str
    term: int
    goose: str | None
    members: tuple[str, ...] = ()
    membership_version: int | None = None
    previous_role: Role | None = None
    gap: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "id": self.id, "node": self.node,
                "incarnation": self.incarnation, "time": self.time, "role": self.role.value,
                "state": self.state, "term": self.term, "goose": self.goose,
                "members": list(self.members), "membership_version": self.membership_version,
                "previous_role": None if self.previous_role is None else self.previous_role.value,
                "gap": self.gap}

    @classmethod
    def from_json(cls, data: Any) -> WatchEvent:
        if not isinstance(data, dict):
            raise WatchFormatError(f"an event must be a JSON object, got {type(data).__name__}")
        try:
            r = FieldReader(data)
            kind = r.text("event")
            if kind not in KINDS:
                raise WatchFormatError(f"unknown event kind {kind!r}")
            previous = r.opt_text("previous_role")
            when = r.number("time")
            event_id = r.integer("id")
            if event_id < 0:
                raise WatchFormatError(f"event id must be >= 0, got {event_id}")
            return cls(kind=kind, id=event_id, node=r.text("node"),
                       incarnation=r.text("incarnation"), time=0.0 if when is None else when,
                       role=Role(r.text("role")), state=r.text("state", ""),
                       term=r.integer("term"), goose=r.opt_text("goose"),
                       members=r.texts("members"),
                       membership_version=r.opt_integer("membership_version"),
                       previous_role=None if previous is None else Role(previous),
                       gap=r.opt_text("gap"))
        except WatchFormatError:
            raise
        except (StatusFormatError, ValueError) as exc:
            raise WatchFormatError(f"bad event: {exc}") from None


@dataclass(frozen=True, slots=True)
class SseMessage:
    event: str
    id: str | None
    data: str


class SseDecoder:
    """Lines of a text/event-stream in, messages out: the part of the SSE format a watcher
    needs (id, event, data, comments; `retry:` is ignored)."""

    def __init__(self) -> None:
        self._event = ""
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> SseMessage | None:
        """One line without its end; a message when LINE is the blank line that ends one."""
        if not line:
            if not self._data:
                self._event, self._id = "", None
                return None
            msg = SseMessage(self._event or "message", self._id, "\n".join(self._data))
            self._event, self._id, self._data = "", None, []
            return msg
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def parse_event(msg: SseMessage) -> WatchEvent:
    try:
        data = json.loads(msg.data)
    except ValueError:
        raise WatchFormatError(f"event data is not JSON: {msg.data[:80]!r}") from None
    event = WatchEvent.from_json(data)
    if msg.event != event.kind or msg.id != str(event.id):
        raise WatchFormatError(f"event {msg.event!r} id {msg.id!r} does not match its data "
                               f"({event.kind!r}, {event.id})")
    return event


def encode(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {data['id']}\nevent: {kind}\ndata: {payload}\n\n".encode()
