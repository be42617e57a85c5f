"""Crash hints on real processes: each duck holds a stream open to its goose (ddg/node/hold.py);
a killed goose's kernel closes it, and the ducks campaign without an election timeout."""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx
import pytest

from ddg_testkit import LocalCluster

pytestmark = pytest.mark.integration
Make = Callable[..., LocalCluster]
HINT = "lost the connection to {}"


def test_a_killed_goose_is_noticed_by_every_duck_at_once(make_cluster: Make) -> None:
    c = make_cluster()
    names = c.start(5)
    old = c.wait_held(names)
    term = c.status(old).term
    c.kill(old)
    new = c.wait_goose(among=names, exclude=[old], timeout=3)
    ducks = [n for n in names if n != old]
    c.wait_for(lambda: all(HINT.format(old) in c.log_tail(n, 60) for n in ducks), timeout=3,
               what="every duck logged the hint")
    st = c.status(new)
    assert st is not None and st.term == term + 1, "one election, no split vote"
    # the new goose's ducks hold streams to it in turn
    c.wait_for(lambda: (s := c.status(new)) and s.hint_streams == 3, timeout=5,
               what="the ducks hold streams to the new goose")


@pytest.mark.parametrize("how", ["sigterm", "sigstop"])
def test_a_stopped_or_frozen_goose_gives_no_hint(make_cluster: Make, how: str) -> None:
    """SIGTERM: the goose says goodbye and hands over. SIGSTOP: its sockets stay open, so
    the ducks must sit out the election timeout as before. Neither is taken for a crash."""
    c = make_cluster()
    names = c.start(3)
    old = c.wait_held(names)
    if how == "sigterm":
        c.terminate(old)
    else:
        c.signal(old, signal.SIGSTOP)
    try:
        c.wait_goose(among=names, exclude=[old])
    finally:
        if how == "sigstop":
            c.signal(old, signal.SIGCONT)
    for n in names:
        if n != old:
            assert HINT.format(old) not in c.log_tail(n, 80), c.log_tail(n, 80)


def test_the_hold_route_refuses_what_it_should(make_cluster: Make) -> None:
    c = make_cluster()
    names = c.start(3)
    goose = c.wait_held(names)
    duck = next(n for n in names if n != goose)
    with httpx.Client(timeout=3) as http:
        r = http.get(f"{c.address(duck)}/raft/hold/{goose}")
        assert r.status_code == 409 and r.json() == {"error": "not the goose"}
        r = http.get(f"{c.address(goose)}/raft/hold/stranger")
        assert r.status_code == 403 and "not a member" in r.json()["error"]
        r = http.get(f"{c.address(goose)}/raft/hold/{goose}")
        assert r.status_code == 403
    signed = make_cluster(secret="s3cret-for-tests", cluster="signed")
    names = signed.start(3)
    goose = signed.wait_held(names)
    duck = next(n for n in names if n != goose)
    r = httpx.get(f"{signed.address(goose)}/raft/hold/{duck}", timeout=3)
    assert r.status_code == 401 and "signature" in r.json()["error"]
