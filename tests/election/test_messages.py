"""Strict decoding of peer messages: anything malformed is a MessageError (HTTP 4xx)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from ddg.election.messages import (
    KIND_OF,
    MAX_TERM,
    REPLIES,
    REQUESTS,
    Heartbeat,
    HeartbeatAck,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode,
    encode,
)
from ddg.errors import MessageError

SAMPLES: list[Message] = [
    VoteRequest(term=3, sender="n1"),
    VoteRequest(term=4, sender="n1", pre_vote=True),
    VoteRequest(term=5, sender="n-2.x_y", transfer=True),
    VoteResponse(term=3, sender="n2", granted=True),
    VoteResponse(term=3, sender="n2", granted=False, pre_vote=True),
    Heartbeat(term=1, sender="n1", seq=7),
    Heartbeat(term=1, sender="n1", seq=8, sent_us=123_456_789),
    HeartbeatAck(term=1, sender="n3", seq=7, success=True),
    HeartbeatAck(term=1, sender="n3", seq=8, success=True, received_us=987_654_321),
    TimeoutNow(term=9, sender="n1"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_json(msg: Message) -> None:
    wire = json.loads(json.dumps(encode(msg, version=12)))
    assert wire["version"] == 12
    assert decode(type(msg), wire) == (msg, 12)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_encode_writes_every_field_of_the_message(msg: Message) -> None:
    """encode reads the wire's field list, not the dataclass: a field added to one and not
    the other would be dropped silently."""
    expected = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)
                if getattr(msg, f.name) is not None}
    assert encode(msg, version=3) == expected | {"version": 3}


def test_wire_kinds_are_consistent() -> None:
    assert set(REQUESTS.values()) == set(REPLIES)
    assert REPLIES[VoteRequest] is VoteResponse and REPLIES[Heartbeat] is HeartbeatAck
    assert REPLIES[TimeoutNow] is None
    assert KIND_OF[Heartbeat] == "heartbeat"


def test_clock_readings_are_optional_and_absent_when_unknown() -> None:
    """A node of an older version sends none and refuses them (strict decoding): absent, not
    null, when there is no reading."""
    assert "sent_us" not in encode(Heartbeat(term=1, sender="a", seq=1), version=1)
    assert "received_us" not in encode(HeartbeatAck(term=1, sender="a", seq=1, success=True),
                                       version=1)
    assert encode(Heartbeat(term=1, sender="a", seq=1, sent_us=5), version=1)["sent_us"] == 5
    for value in (None, -1, 1.5, "5", True, 2**53):
        with pytest.raises(MessageError, match="'sent_us' must be"):
            decode(Heartbeat, {"term": 1, "sender": "a", "seq": 1, "sent_us": value})
        with pytest.raises(MessageError, match="'received_us' must be"):
            decode(HeartbeatAck, {"term": 1, "sender": "a", "seq": 1, "success": True,
                                  "received_us": value})


def test_version_defaults_to_zero() -> None:
    assert decode(Heartbeat, {"term": 1, "sender": "a", "seq": 1}) == (
        Heartbeat(term=1, sender="a", seq=1), 0)


def test_optional_flags_default_to_false() -> None:
    msg, _ = decode(VoteRequest, {"term": 1, "sender": "a"})
    assert msg == VoteRequest(term=1, sender="a", pre_vote=False, transfer=False)


def _bad(cls: type[Any], data: Any, match: str) -> None:
    with pytest.raises(MessageError, match=match) as info:
        decode(cls, data)
    assert info.value.status == 400


@pytest.mark.parametrize("body", [[], "x", 3, None, True, [{"term": 1}]])
def test_body_must_be_an_object(body: Any) -> None:
    _bad(Heartbeat, body, "JSON object")


@pytest.mark.parametrize(("field", "value"), [
    ("term", True), ("term", False), ("seq", True), ("term", 1.0), ("term", 1.5),
    ("term", "1"), ("term", None), ("seq", [1]), ("version", True), ("version", "3"),
])
def test_integers_must_be_integers_not_bools(field: str, value: Any) -> None:
    data = {"term": 1, "sender": "a", "seq": 1, "version": 0, field: value}
    _bad(Heartbeat, data, f"'{field}' must be an integer")


@pytest.mark.parametrize(("field", "value"), [
    ("success", 1), ("success", 0), ("success", "true"), ("success", None),
])
def test_bools_must_be_bools(field: str, value: Any) -> None:
    data = {"term": 1, "sender": "a", "seq": 1, field: value}
    _bad(HeartbeatAck, data, f"'{field}' must be a bool")


@pytest.mark.parametrize("flag", ["pre_vote", "transfer"])
def test_vote_request_flags_must_be_bools(flag: str) -> None:
    _bad(VoteRequest, {"term": 1, "sender": "a", flag: 1}, f"'{flag}' must be a bool")


@pytest.mark.parametrize(("field", "value"), [
    ("term", -1), ("term", MAX_TERM + 1), ("term", 10**30), ("seq", -5), ("version", -1),
    ("version", 2**64),
])
def test_negative_or_absurd_numbers_are_refused(field: str, value: int) -> None:
    data = {"term": 1, "sender": "a", "seq": 1, field: value}
    _bad(Heartbeat, data, "must be between 0 and")


def test_largest_term_is_accepted() -> None:
    msg, _ = decode(TimeoutNow, {"term": MAX_TERM, "sender": "a"})
    assert msg.term == MAX_TERM


@pytest.mark.parametrize("extra", ["leader", "Term", "granted", ""])
def test_unknown_fields_are_refused(extra: str) -> None:
    _bad(Heartbeat, {"term": 1, "sender": "a", "seq": 1, extra: 1}, "unknown field")


@pytest.mark.parametrize(("cls", "data", "missing"), [
    (Heartbeat, {"sender": "a", "seq": 1}, "term"),
    (Heartbeat, {"term": 1, "seq": 1}, "sender"),
    (Heartbeat, {"term": 1, "sender": "a"}, "seq"),
    (VoteResponse, {"term": 1, "sender": "a"}, "granted"),
    (HeartbeatAck, {"term": 1, "sender": "a", "seq": 2}, "success"),
    (TimeoutNow, {}, "term"),
])
def test_missing_fields_are_refused(cls: type[Any], data: dict[str, Any], missing: str) -> None:
    _bad(cls, data, f"missing field '{missing}'")


@pytest.mark.parametrize("sender", [
    "", "-n1", ".n1", "n 1", "n1/", "../etc", "x" * 64, "ñ1", 5, None,
    "n1\n",  # a trailing newline once slipped through match() with $
])
def test_bad_sender_names_are_refused(sender: Any) -> None:
    with pytest.raises(MessageError, match="sender"):
        decode(TimeoutNow, {"term": 1, "sender": sender})


def test_longest_sender_name_is_accepted() -> None:
    msg, _ = decode(TimeoutNow, {"term": 1, "sender": "x" * 63})
    assert msg.sender == "x" * 63
