"""Bad input on every path: a 4xx with a JSON reason, and the node's state does not change."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ddg.election.core import Election
from ddg.election.messages import Heartbeat
from ddg.election.timing import Timing
from ddg.errors import MessageError
from ddg.node.config import NodeConfig
from ddg.node.node import Node
from ddg.node.partitions import parse_listener_fault
from ddg.node.storage import DataDir
from ddg.registry.records import Member, Membership

NAMES = ("n1", "n2", "n3")
# Timeouts long enough that nothing but the test moves the node during a test.
TIMING = Timing(heartbeat_ms=50, election_timeout_min_ms=60_000, election_timeout_max_ms=60_000)


class StaticRegistry:
    """The registry as the node sees it, for the HTTP contract alone (membership safety is
    tested against real Redis elsewhere)."""

    url = "redis://stub"
    timeout = 0.2

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    async def read(self, name: str | None = None) -> Membership:
        return self.membership

    async def close(self) -> None:
        pass


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Node, TestClient[Any, Any]]]:
    """n3, in-process: a duck that has just heard goose n1 (so it is sticky)."""
    members = {n: Member(n, "http://127.0.0.1:9", node_id=f"{i:032x}")  # discard port
               for i, n in enumerate(NAMES, 1)}
    membership = Membership(3, members, "a" * 32)
    config = NodeConfig(name="n3", port=1, data_dir=tmp_path / "n3", timing=TIMING)
    data = DataDir(config.data_dir)
    n = Node(config, registry=StaticRegistry(membership), data=data)  # type: ignore[arg-type]
    data.open()
    n.sync.membership = membership
    n.sync.registered = True
    now = time.monotonic()
    n.core = Election(name="n3", timing=TIMING, rng=n.rng, now=now,
                      members=membership.names, version=3)
    n.core.step(Heartbeat(term=4, sender="n1", seq=1), now)
    client = TestClient(TestServer(n.make_app()))
    await client.start_server()
    try:
        yield n, client
    finally:
        await client.close()
        data.close()


def _snapshot(n: Node) -> tuple[Any, ...]:
    st = n.status()
    return (st.term, st.voted_for, st.role, st.goose)


BAD: list[tuple[str, str, bytes | None, Any, int]] = [
    # (name, path, raw body, json body, expected status)
    ("not json", "/raft/vote", b"{nope", None, 400),
    ("not an object", "/raft/vote", None, [1, 2], 400),
    ("missing term", "/raft/vote", None, {"sender": "n1"}, 400),
    ("missing sender", "/raft/heartbeat", None, {"term": 1, "seq": 1}, 400),
    ("string term", "/raft/vote", None, {"term": "9", "sender": "n1"}, 400),
    ("bool term", "/raft/vote", None, {"term": True, "sender": "n1"}, 400),
    ("float term", "/raft/vote", None, {"term": 1.5, "sender": "n1"}, 400),
    ("negative term", "/raft/vote", None, {"term": -1, "sender": "n1"}, 400),
    ("absurd term", "/raft/vote", None, {"term": 10**30, "sender": "n1"}, 400),
    ("unknown field", "/raft/vote", None, {"term": 99, "sender": "n1", "x": 1}, 400),
    ("bad sender name", "/raft/vote", None, {"term": 99, "sender": "../etc"}, 400),
    ("pre_vote not bool", "/raft/vote", None, {"term": 99, "sender": "n1", "pre_vote": 1}, 400),
    ("unknown sender", "/raft/vote", None, {"term": 99, "sender": "mallory"}, 403),
    ("unknown sender hb", "/raft/heartbeat", None, {"term": 99, "sender": "eve", "seq": 1}, 403),
    ("too large", "/raft/vote", b"{" + b" " * (65 * 1024) + b"}", None, 413),
    ("no such path", "/raft/nothing", None, {}, 404),
    ("admin disabled", "/admin/partition", None, {"all": True}, 403),
    ("listener fault disabled", "/admin/fault/close-listener", None, {}, 403),
    ("listener reopen disabled", "/admin/fault/open-listener", None, {}, 403),
]


@pytest.mark.parametrize(("what", "path", "raw", "body", "status"), BAD,
                         ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_and_changes_nothing(
    node: tuple[Node, TestClient[Any, Any]], what: str, path: str, raw: bytes | None, body: Any,
    status: int,
) -> None:
    n, client = node
    before = _snapshot(n)
    if raw is not None:
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    else:
        resp = await client.post(path, json=body)
    assert resp.status == status, await resp.text()
    data = await resp.json()
    assert isinstance(data.get("error"), str) and data["error"]
    assert _snapshot(n) == before


async def test_self_sent_message_is_refused(node: tuple[Node, TestClient[Any, Any]]) -> None:
    _, client = node
    resp = await client.post("/raft/vote", json={"term": 10**6, "sender": "n3"})
    assert resp.status == 400


async def test_get_on_peer_path_is_405_json(node: tuple[Node, TestClient[Any, Any]]) -> None:
    _, client = node
    resp = await client.get("/raft/vote")
    assert resp.status == 405 and "error" in await resp.json()


async def test_higher_term_vote_from_member_is_refused_while_goose_lives(
        node: tuple[Node, TestClient[Any, Any]]) -> None:
    """Leader stickiness: a member asking for a vote while the goose is alive changes nothing."""
    n, client = node
    before = _snapshot(n)
    for pre_vote in (True, False):
        resp = await client.post("/raft/vote", json={"term": 104, "sender": "n2",
                                                     "pre_vote": pre_vote})
        assert resp.status == 200
        assert (await resp.json())["granted"] is False
    assert _snapshot(n) == before


async def test_stale_timeout_now_is_acknowledged_and_ignored(
        node: tuple[Node, TestClient[Any, Any]]) -> None:
    """Every reply carries the sender's term and name; a TimeoutNow of an old term does nothing."""
    n, client = node
    before = _snapshot(n)
    resp = await client.post("/raft/timeout_now", json={"term": 3, "sender": "n1"})
    assert resp.status == 200
    data = await resp.json()
    assert data["sender"] == "n3" and data["term"] == 4
    assert _snapshot(n) == before


def test_the_listener_fault_body_is_checked() -> None:
    assert parse_listener_fault({}) is None
    assert parse_listener_fault({"reopen_after_s": 2}) == 2.0
    for bad in ([], {"reopen_after_s": 0}, {"reopen_after_s": -1}, {"reopen_after_s": True},
                {"reopen_after_s": "2"}, {"reopen_after_s": 601}, {"seconds": 2},
                {"reopen_after_s": float("nan")}):
        with pytest.raises(MessageError):
            parse_listener_fault(bad)
