"""Bad input on every path: a 4xx with a JSON reason, and the node's state does not change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ddg_testkit import LocalCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(allow_fault_injection=False)
    c.start_redis()
    try:
        names = c.start(3)
        c.wait_goose(timeout=8)
        c.wait_for(lambda: all((s := c.status(n)) and len(s["members"]) == 3 for n in names),
                   timeout=5, what="3 members")
        yield c
    finally:
        c.close()


def _snapshot(c: LocalCluster) -> dict[str, tuple[Any, ...]]:
    return {n: (s["term"], s["voted_for"], s["role"], s["goose"])
            for n, s in c.statuses().items() if s}


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
]


@pytest.mark.parametrize(("what", "path", "raw", "body", "status"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_input_is_refused_and_changes_nothing(
    cluster: LocalCluster, what: str, path: str, raw: bytes | None, body: Any, status: int
) -> None:
    before = _snapshot(cluster)
    target = sorted(cluster.names)[-1]
    url = cluster.address(target) + path
    if raw is not None:
        resp = httpx.post(url, content=raw, headers={"Content-Type": "application/json"})
    else:
        resp = httpx.post(url, json=body)
    assert resp.status_code == status, resp.text
    assert isinstance(resp.json().get("error"), str) and resp.json()["error"]
    assert _snapshot(cluster) == before
    assert cluster.running(target)


def test_self_sent_message_is_refused(cluster: LocalCluster) -> None:
    target = sorted(cluster.names)[0]
    resp = httpx.post(cluster.address(target) + "/raft/vote",
                      json={"term": 10**6, "sender": target})
    assert resp.status_code == 400


def test_get_on_peer_path_is_405_json(cluster: LocalCluster) -> None:
    resp = httpx.get(cluster.address("n1") + "/raft/vote")
    assert resp.status_code == 405 and "error" in resp.json()


def test_higher_term_vote_from_member_is_refused_while_goose_lives(cluster: LocalCluster) -> None:
    """Leader stickiness: a member asking for a vote while the goose is alive changes nothing."""
    before = _snapshot(cluster)
    goose = next(n for n, s in before.items() if s[2] == "goose")
    duck = next(n for n in before if n != goose)
    other = next(n for n in before if n not in (goose, duck))
    for pre_vote in (True, False):
        resp = httpx.post(cluster.address(duck) + "/raft/vote",
                          json={"term": before[duck][0] + 100, "sender": other,
                                "pre_vote": pre_vote})
        assert resp.status_code == 200
        assert resp.json()["granted"] is False
    assert _snapshot(cluster) == before


def test_stale_timeout_now_is_acknowledged_and_ignored(cluster: LocalCluster) -> None:
    """Every reply carries the sender's term and name; a TimeoutNow of an old term does nothing."""
    before = _snapshot(cluster)
    goose = next(n for n, s in before.items() if s[2] == "goose")
    duck = next(n for n in before if n != goose)
    resp = httpx.post(cluster.address(duck) + "/raft/timeout_now",
                      json={"term": max(0, before[duck][0] - 1), "sender": goose})
    assert resp.status_code == 200
    assert resp.json()["sender"] == duck and resp.json()["term"] == before[duck][0]
    assert _snapshot(cluster) == before
