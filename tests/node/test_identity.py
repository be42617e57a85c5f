"""Identity is bound to names, on real processes over real HTTPS: with mutual TLS a node takes a
peer message, or a crash-hint stream, only from a client certificate that names its sender
(subjectAltName DNS:<name>). A member's certificate used under another member's name, and a
certificate that names no member (the console's), get 403 on every /raft/* route and change
nothing. And on an unsigned loopback cluster, where no request proves who sent it, a flood of
crash-hint streams in the ducks' names costs no election."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ddg.net.tls import client_context
from ddg_testkit import LocalCluster
from ddg_testkit.certs import Pki

pytestmark = pytest.mark.integration
Make = Callable[..., LocalCluster]
# Slow enough that a loaded machine does not start an election of its own while a test checks
# that nothing changed; every forged effect (a trusted hand-over, a higher term, a crash hint)
# would act at once, whatever the timing.
CALM = {"heartbeat_ms": 100, "election_timeout_ms": "1000-2000"}
View = dict[str, tuple[str, int, str | None]]  # node -> (role, term, goose)


def view(c: LocalCluster, names: list[str], *, answered: bool = True) -> View:
    """Each node's role, term and goose (ANSWERED: every node must answer)."""
    out = {}
    for name, st in c.statuses(names).items():
        assert st is not None or not answered, f"{name} does not answer"
        if st is not None:
            out[name] = (st.role.value, st.term, st.goose)
    return out


def unchanged_for(c: LocalCluster, names: list[str], before: View, seconds: float) -> None:
    """Every node keeps BEFORE (role, term, goose) for SECONDS (an observation window; a
    status that a loaded machine answers late is a sample missed, not a change)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = view(c, names, answered=False)
        assert now == {n: before[n] for n in now}
        time.sleep(0.05)
    assert view(c, names) == before


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Pki]]:
    """Mutual TLS and no cluster secret: the certificate is all that says who sends."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    c = LocalCluster(tls=pki.client(), node_tls=pki.tls, allow_fault_injection=True, **CALM)
    try:
        c.start_redis()
        c.start(3)
        yield c, pki
    finally:
        c.close()


def forged(c: LocalCluster, names: list[str], goose: str, speaks_for: set[str]
           ) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(target, path, claimed sender, body) of every /raft/* request in the name of a member
    that SPEAKS_FOR does not hold, each one that would move the cluster if it were believed:
    a hand-over from the goose, a heartbeat of the goose's with a higher term, a transfer vote
    with a higher term, a crash-hint stream that supersedes a duck's."""
    st = c.status(goose)
    assert st is not None
    term, version = st.term, st.membership_version
    out: list[tuple[str, str, str, dict[str, Any] | None]] = []
    for target in names:
        for sender in names:
            if sender in speaks_for:
                continue
            out += [
                (target, "/raft/timeout_now", sender,
                 {"term": term, "sender": sender, "version": version}),
                (target, "/raft/heartbeat", sender,
                 {"term": term + 6, "sender": sender, "seq": 1, "version": version}),
                (target, "/raft/vote", sender,
                 {"term": term + 1, "sender": sender, "transfer": True, "version": version}),
                (target, f"/raft/hold/{sender}", sender, None),
            ]
    return out


@pytest.mark.parametrize("whose", ["member", "console"])
def test_a_borrowed_or_non_member_certificate_gets_403_on_every_raft_route(
        mtls: tuple[LocalCluster, Pki], whose: str) -> None:
    c, pki = mtls
    names = c.names[:3]
    goose = c.wait_held(names)
    duck = next(n for n in names if n != goose)
    # a duck's own certificate and key, as one stolen from its host; or the console's
    tls = c.spec(duck).tls if whose == "member" else pki.client()
    assert tls is not None
    speaks_for = {duck} if whose == "member" else set()
    before = view(c, names)
    requests = forged(c, names, goose, speaks_for)
    refused: Counter[str] = Counter()
    believed = []
    with httpx.Client(verify=client_context(tls), timeout=5) as http:
        for target, path, sender, body in requests:
            url = c.address(target) + path
            resp = http.get(url) if body is None else http.post(url, json=body)
            if resp.status_code == 403 and f"does not name {sender!r}" in resp.text:
                refused[path.rsplit("/", 1)[0] if "/hold/" in path else path] += 1
            else:
                believed.append((target, path, sender, resp.status_code, resp.text[:80]))
    assert not believed, f"{len(believed)} of {len(requests)} not refused: {believed}"
    assert set(refused) == {"/raft/timeout_now", "/raft/heartbeat", "/raft/vote",
                            "/raft/hold"}, refused
    assert view(c, names) == before
    unchanged_for(c, names, before, 1.0)
    if whose == "console":  # what the console's certificate is for: /admin/*, where allowed
        healed = c.admin(duck, "/admin/heal", {"peers": []})
        assert healed.ok, healed.message


def test_a_member_certificate_speaks_for_its_member_but_hands_over_only_as_the_goose(
        mtls: tuple[LocalCluster, Pki]) -> None:
    """A duck's own certificate in its own name is believed: its TimeoutNow reaches the other
    duck (200), which follows the goose, not the sender, so nothing moves."""
    c, _ = mtls
    names = c.names[:3]
    goose = c.wait_held(names)
    duck, other = (n for n in names if n != goose)
    tls = c.spec(duck).tls
    before = view(c, names)
    st = c.status(other)
    assert st is not None
    with httpx.Client(verify=client_context(tls), timeout=5) as http:
        resp = http.post(c.address(other) + "/raft/timeout_now",
                         json={"term": st.term, "sender": duck,
                               "version": st.membership_version})
    assert resp.status_code == 200, resp.text
    unchanged_for(c, names, before, 1.0)


def test_a_graceful_stop_hands_over_with_node_certificates(make_cluster: Make,
                                                           tmp_path: Path) -> None:
    """The goose's own TimeoutNow, sent with its own certificate, is believed at once."""
    pki = Pki(tmp_path / "pki")
    c = make_cluster(tls=pki.client(), node_tls=pki.tls, **CALM)
    names = c.start(3)
    old = c.wait_held(names)
    term = c.status(old).term  # type: ignore[union-attr]
    c.terminate(old)
    new = c.wait_goose(among=names, exclude=[old])
    assert c.status(new).term == term + 1  # type: ignore[union-attr]
    assert f"{old} handed leadership over" in c.log_tail(new, 80), c.log_tail(new, 80)
    assert "does not name" not in c.log_tail(old, 80) + c.log_tail(new, 80)


def test_a_node_whose_certificate_does_not_name_it_is_told_why(make_cluster: Make,
                                                                tmp_path: Path) -> None:
    """Without --tls-client-auth a node starts on any certificate of the CA (with it, it would
    refuse to start: tests/net/test_tls_integration.py), but its peers do not take it for the
    member it claims to be: it logs why, once, instead of being silently unheard."""
    pki = Pki(tmp_path / "pki")
    c = make_cluster(tls=pki.client(), node_tls=pki.tls, **CALM)
    names = c.start(3)
    goose = c.wait_held(names)
    odd = make_cluster(redis_url=c.redis_url, cluster=c.cluster, tls=pki.client(), **CALM,
                       node_tls=lambda name: pki.tls("elsewhere", client_auth=False))
    odd.add("odd")
    said = f"{goose} refused this node's crash-hint stream (403): "
    c.wait_for(lambda: said in odd.log_tail("odd", 80), timeout=15,
               what="the odd node saying why its goose refuses it")
    [line] = [ln for ln in odd.log_path("odd").read_text().splitlines() if said in ln]
    assert "the client certificate does not name 'odd' (it names elsewhere" in line, line
    assert c.wait_followed(names) == goose  # (a lease may lapse for a moment: not one look)


# ---- a flood of crash-hint streams on an unsigned loopback cluster ---------------------------


async def _flood(c: LocalCluster, names: list[str], stop: threading.Event, codes: Counter[str],
                 workers: int) -> None:
    """WORKERS clients opening GET /raft/hold/<name> on every node for every other member,
    over and over (whichever is the goose, it gets a share): each reads the stream's first line
    and drops it, as a local stranger could, until STOP."""
    targets = [f"{c.address(at)}/raft/hold/{name}" for at in names for name in names
               if name != at]

    async def one(client: httpx.AsyncClient, i: int) -> None:
        n = i
        while not stop.is_set():
            url = targets[n % len(targets)]
            n += 1
            try:
                async with client.stream("GET", url) as resp:
                    codes[str(resp.status_code)] += 1
                    if resp.status_code == 200:
                        async for _ in resp.aiter_lines():
                            break
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=2, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(workers)))


def test_a_flood_of_crash_hint_streams_costs_no_election(make_cluster: Make) -> None:
    c = make_cluster(**CALM)
    names = c.start(3)
    c.wait_held(names)
    before = view(c, names)
    stop = threading.Event()
    codes: Counter[str] = Counter()
    flood = threading.Thread(target=lambda: asyncio.run(
        _flood(c, names, stop, codes, workers=8)), daemon=True)
    flood.start()
    try:
        changed = []
        end = time.monotonic() + 6.0  # an observation window, sampled every 50 ms
        while time.monotonic() < end:
            now = view(c, names, answered=False)
            if now != {n: before[n] for n in now}:
                changed.append(now)
            time.sleep(0.05)
    finally:
        stop.set()
        flood.join(10)
    opened = codes["200"]
    print(f"flood: {sum(codes.values())} requests, {dict(codes)}")
    assert opened > 0 and sum(codes.values()) > 100, codes  # it did reach the goose
    assert not changed, f"the flood moved the cluster: {changed[:3]} (before {before})"
    assert view(c, names) == before
    # and the ducks hold their streams again
    c.wait_held(names, timeout=10)
