"""The peer stream's frames: one WebSocket binary message per election message or reply.

A request frame is a JSON header line, then the exact body an HTTP POST to /raft/{kind}
would carry; with the cluster secret the header holds that POST's signature (timestamp,
nonce, MAC over the recipient, "POST", "/raft/{kind}" and the body), so the stream keeps the
HTTP path's signing (per message, bound to the recipient, replay-protected by the same
Verifier and its one nonce cache):

    {"id": 7, "kind": "heartbeat", "ts": "...", "nonce": "...", "sig": "..."}\\n{...body...}

A reply frame names the request it answers and carries the HTTP answer's status and body:

    {"re": 7, "status": 200}\\n{...body...}

Pure: no I/O, so the framing is tested on its own (tests/node/test_stream.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ddg.election.messages import REQUESTS
from ddg.errors import MessageError
from ddg.net import auth

PATH = "/raft/stream/"  # + the sender's name (the opening GET is signed with the rest)
MAX_ID = 2**53 - 1
_SIGNATURE = {"ts": auth.TS_HEADER, "nonce": auth.NONCE_HEADER, "sig": auth.SIG_HEADER}


def raft_path(kind: str) -> str:
    """The HTTP path of KIND, and what a stream frame of that kind is signed as."""
    return f"/raft/{kind}"


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    kind: str
    body: bytes
    signature: dict[str, str]  # the HTTP headers a Verifier checks ({} unsigned)


@dataclass(frozen=True, slots=True)
class Reply:
    re: int
    status: int
    body: bytes


def request_frame(id: int, kind: str, body: bytes, *, secret: bytes | None,
                  recipient: str) -> bytes:
    header: dict[str, Any] = {"id": id, "kind": kind}
    if secret is not None:
        signed = auth.sign_headers(secret, "POST", raft_path(kind), body, recipient=recipient)
        header |= {short: signed[name] for short, name in _SIGNATURE.items()}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def reply_frame(re: int, status: int, body: bytes) -> bytes:
    return b'{"re":%d,"status":%d}\n' % (re, status) + body


def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    head, sep, body = frame.partition(b"\n")
    if not sep:
        raise MessageError("frame has no header line")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MessageError("frame header is not valid JSON") from None
    if not isinstance(header, dict):
        raise MessageError("frame header must be a JSON object")
    return header, body


def _integer(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise MessageError(f"frame header {key!r} must be an integer between 0 and {MAX_ID}")
    return value


def parse_request(frame: bytes) -> Request:
    """A request frame; MessageError (a 400) for anything else. The signature is not checked
    here: the receiver's Verifier does, as for an HTTP POST."""
    return _request(*_split(frame))


def read_request(frame: bytes) -> tuple[int, Request | MessageError] | None:
    """What the receiver answers: the frame's id and its request, or why it is none (a 400
    under that id); None for bytes that are not even a request frame (no id to answer)."""
    try:
        header, body = _split(frame)
        id = _integer(header, "id")
    except MessageError:
        return None
    try:
        return id, _request(header, body)
    except MessageError as exc:
        return id, exc


def _request(header: dict[str, Any], body: bytes) -> Request:
    unknown = set(header) - {"id", "kind", *_SIGNATURE}
    if unknown:
        raise MessageError(f"unknown frame header field(s): {', '.join(sorted(unknown))}")
    kind = header.get("kind")
    if not isinstance(kind, str) or kind not in REQUESTS:
        raise MessageError(f"frame kind must be one of {', '.join(REQUESTS)}")
    signature = {}
    for short, name in _SIGNATURE.items():
        value = header.get(short)
        if value is not None:
            if not isinstance(value, str):
                raise MessageError(f"frame header {short!r} must be a string")
            signature[name] = value
    return Request(id=_integer(header, "id"), kind=kind, body=body, signature=signature)


def parse_reply(frame: bytes) -> Reply:
    header, body = _split(frame)
    if set(header) != {"re", "status"}:
        raise MessageError("a reply frame's header is {\"re\": id, \"status\": code}")
    status = _integer(header, "status")
    return Reply(re=_integer(header, "re"), status=status, body=body)
