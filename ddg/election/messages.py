"""Peer messages: plain frozen dataclasses, and their strict JSON wire form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddg.election.names import NAME_RE
from ddg.errors import MessageError

MAX_TERM = 2**53 - 1  # JSON-safe; anything larger is absurd, not a real term
# No run of elections produces a jump this large between two nodes' terms (it would take
# years of back-to-back elections), so a message claiming one is not believed: otherwise one
# forged message could push every node to MAX_TERM, where no node can campaign again.
MAX_TERM_JUMP = 2**20
MAX_VERSION = MAX_TERM


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest:
    term: int
    sender: str
    pre_vote: bool = False
    transfer: bool = False  # a leadership hand-over: voters skip leader stickiness


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse:
    term: int
    sender: str
    granted: bool
    pre_vote: bool = False
    # On a granted vote: microseconds since the voter last heard a goose (or started). The new
    # goose waits out any lease the voter may still be honouring (docs/design.md).
    heard_us: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    term: int
    sender: str
    seq: int  # heartbeat round; the goose's lease starts at the send time of an acked round
    # The goose's monotonic clock when it sent the round, in microseconds: with the ducks'
    # readings in their acks, evidence of each node's clock rate (ddg/election/clockrate.py).
    sent_us: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    term: int
    sender: str
    seq: int
    success: bool
    received_us: int | None = None  # the duck's monotonic clock when the heartbeat came, in us


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """From a goose that is stepping down: campaign now, without pre-vote."""

    term: int
    sender: str


Message = VoteRequest | VoteResponse | Heartbeat | HeartbeatAck | TimeoutNow

# Wire kinds: the HTTP path a request goes to, and the type its reply must be.
REQUESTS: dict[str, type[Any]] = {
    "vote": VoteRequest,
    "heartbeat": Heartbeat,
    "timeout_now": TimeoutNow,
}
REPLIES: dict[type[Any], type[Any] | None] = {
    VoteRequest: VoteResponse,
    Heartbeat: HeartbeatAck,
    TimeoutNow: None,
}
KIND_OF: dict[type[Any], str] = {v: k for k, v in REQUESTS.items()}

_FIELDS: dict[type[Any], dict[str, type]] = {
    VoteRequest: {"term": int, "sender": str, "pre_vote": bool, "transfer": bool},
    VoteResponse: {"term": int, "sender": str, "granted": bool, "pre_vote": bool,
                   "heard_us": int},
    Heartbeat: {"term": int, "sender": str, "seq": int, "sent_us": int},
    HeartbeatAck: {"term": int, "sender": str, "seq": int, "success": bool,
                   "received_us": int},
    TimeoutNow: {"term": int, "sender": str},
}
_REQUIRED = {"term", "sender", "seq", "granted", "success"}


def encode(msg: Message, *, version: int) -> dict[str, Any]:
    # The fields by name, not dataclasses.asdict: that deep-copies each value and was the
    # largest single cost of a message on the wire (the fields are all ints, strs and bools).
    data = {k: v for k in _FIELDS[type(msg)] if (v := getattr(msg, k)) is not None}
    data["version"] = version
    return data


def decode(cls: type[Any], data: Any) -> tuple[Message, int]:
    """Validate DATA as a CLS message; returns (message, sender's membership version)."""
    if not isinstance(data, dict):
        raise MessageError("body must be a JSON object")
    fields = _FIELDS[cls]
    unknown = set(data) - set(fields) - {"version"}
    if unknown:
        raise MessageError(f"unknown field(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, typ in fields.items():
        if name not in data:
            if name in _REQUIRED:
                raise MessageError(f"missing field {name!r}")
            continue
        kwargs[name] = _check(name, data[name], typ)
    version = _check("version", data.get("version", 0), int)
    if not NAME_RE.fullmatch(kwargs["sender"]):
        raise MessageError("field 'sender' is not a valid node name")
    return cls(**kwargs), version


def _check(name: str, value: Any, typ: type) -> Any:
    # bool is a subclass of int: refuse true/false where a number belongs, and vice versa
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"field {name!r} must be an integer")
        if not 0 <= value <= MAX_TERM:
            raise MessageError(f"field {name!r} must be between 0 and {MAX_TERM}")
    elif not isinstance(value, typ):
        raise MessageError(f"field {name!r} must be a {typ.__name__}")
    return value
