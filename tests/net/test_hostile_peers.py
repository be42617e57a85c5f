"""Hostile peers: a forged hand-over without a secret, non-loopback binds, HMAC replays and bad
values, terms far above or at the maximum. Each against real nodes: real redis-server, real ddg-
node processes, real HTTP; every wait has a deadline (fixed-time loops only observe)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ddg.local.embedded import free_port
from ddg.net import auth
from ddg_testkit.adversary import (
    MAX_TERM,
    NONCE_HEADER,
    Make,
    Sample,
    double_geese,
    is_json_error,
    log_text,
    nonblank_lines,
    post_raw,
    run_ddg,
    started_cluster,
    watch,
)

pytestmark = pytest.mark.integration


# ---- forged hand-over without a secret ---------------------------------------------------


@pytest.mark.parametrize("sides", ["goose-side", "both-sides"])
def test_forged_timeout_now_never_makes_two_geese(make_cluster: Make, sides: str) -> None:
    """Partition a duck D from the goose G, then send D a TimeoutNow "from G". With
    "both-sides", D's fault-injection filter also drops anything that claims to come from G;
    with "goose-side" only G drops D, so the forged message reaches D's election."""
    # A longer heartbeat widens the window in which the old goose has not yet heard of the
    # new term, so a violation is seen reliably if there is one.
    c, names, _goose = started_cluster(make_cluster, allow_fault_injection=True,
                                      heartbeat_ms=100, election_timeout_ms="300-600")
    addr = {n: c.address(n) for n in names}
    samples: list[Sample] = []
    answers = []
    for _attempt in range(3 if sides == "goose-side" else 1):
        for n in names:
            assert httpx.post(addr[n] + "/admin/heal", json={"all": True}).status_code == 200
        goose = c.wait_followed(names, timeout=5)
        duck = next(n for n in names if n != goose)
        resp = httpx.post(addr[goose] + "/admin/partition", json={"peers": [duck]})
        assert resp.status_code == 200, resp.text
        if sides == "both-sides":
            resp = httpx.post(addr[duck] + "/admin/partition", json={"peers": [goose]})
            assert resp.status_code == 200, resp.text
        st = c.status(goose)
        assert st is not None
        forged = {"term": st.term, "sender": goose, "version": st.membership_version}
        resp = httpx.post(addr[duck] + "/raft/timeout_now", json=forged, timeout=2)
        answers.append(f"{resp.status_code} {resp.text}")
        samples += watch(c, 0.6, names, interval=0.003)
        if double_geese(samples):
            break
    doubles = double_geese(samples)
    assert not doubles, (f"forged TimeoutNow (answers {answers}): two geese in {len(doubles)} "
                         f"of {len(samples)} samples, e.g. {doubles[:3]}")


# ---- secure by default: binding, HMAC, terms ---------------------------------------------


BIND_CASES = {
    # case: (extra args, secret, words the one-line error must contain)
    "wildcard-advertised-no-secret": (["--advertise-url", "http://127.0.0.1:{port}"], None,
                                      ["secret"]),
    "wildcard-no-advertise-url": ([], "s3cret-s3cret", ["--advertise-url"]),
    "wildcard-no-advertise-url-no-secret": ([], None, []),
}


@pytest.mark.parametrize("case", list(BIND_CASES))
def test_non_loopback_bind_is_refused(make_cluster: Make, tmp_path: Path, case: str) -> None:
    c = make_cluster()
    extra, secret, words = BIND_CASES[case]
    port = free_port("0.0.0.0")
    args = ["--name", "exposed", "--host", "0.0.0.0", "--port", str(port),
            "--redis-url", c.redis_url or "", "--cluster", c.cluster,
            "--data-dir", str(tmp_path / "data"), *[a.format(port=port) for a in extra]]
    env = {"DDG_CLUSTER_SECRET": secret} if secret else {}
    rc, out, took = run_ddg(args, timeout=5, env=env)
    lines = nonblank_lines(out)
    assert rc not in (None, 0), f"still running after {took:.1f} s: {out[-800:]!r}"
    assert "Traceback" not in out and len(lines) == 1, f"not a one-line error: {out!r}"
    for word in words:
        assert word in lines[0], f"the error should name {word!r}: {lines[0]!r}"


def _signature(secret: bytes, *, recipient: str, ts: str, nonce: str, path: str,
               body: bytes) -> str:
    """A valid MAC for arbitrary header values (new keyword API, else the old one)."""
    try:
        return auth.signature(secret, recipient=recipient, ts=ts, nonce=nonce,  # type: ignore[call-arg]
                              method="POST", path=path, body=body)
    except TypeError:
        return auth.signature(secret, ts, "POST", path, body)  # type: ignore[call-arg]


def test_hmac_replay_nan_and_non_ascii_are_refused(make_cluster: Make) -> None:
    secret = "s3cret-s3cret-s3cret"
    key = secret.encode()
    c, names, goose = started_cluster(make_cluster, secret=secret)
    duck, other = [n for n in names if n != goose]
    addr = {n: c.address(n) for n in names}
    st = c.status(duck)
    assert st is not None
    path = "/raft/heartbeat"
    problems: list[str] = []
    if st.security != "hmac":
        problems.append(f"/status security should be 'hmac', got {st.security!r}")

    def body(seq: int) -> bytes:
        return json.dumps({"term": st.term, "sender": goose, "seq": seq,
                           "version": st.membership_version}).encode()

    # replay, and a request signed for another recipient
    try:
        b = body(1)
        headers = auth.sign_headers(key, "POST", path, b, recipient=duck)  # type: ignore[call-arg]
    except TypeError as exc:
        problems.append(f"auth.sign_headers(..., recipient=) is not supported: {exc}")
    else:
        first = post_raw(addr[duck], path, b, headers)
        again = post_raw(addr[duck], path, b, headers)
        if first.status_code != 200:
            problems.append(f"a correctly signed request got {first.status_code} {first.text}")
        if again.status_code != 401 or not is_json_error(again):
            problems.append(f"replayed request got {again.status_code} {again.text}, not 401")
        b = body(2)
        for_duck = auth.sign_headers(key, "POST", path, b, recipient=duck)  # type: ignore[call-arg]
        wrong = post_raw(addr[other], path, b, for_duck)
        if wrong.status_code != 401:
            problems.append(f"a request signed for {duck} was accepted by {other}: "
                            f"{wrong.status_code} {wrong.text}")

    # non-finite timestamps, with a MAC that is otherwise valid
    for ts in ("nan", "NaN", "inf", "-inf", "infinity"):
        b = body(3)
        nonce = secrets.token_hex(16)
        headers = {auth.TS_HEADER: ts, NONCE_HEADER: nonce,
                   auth.SIG_HEADER: _signature(key, recipient=duck, ts=ts, nonce=nonce,
                                               path=path, body=b)}
        resp = post_raw(addr[duck], path, b, headers)
        if resp.status_code != 401 or not is_json_error(resp):
            problems.append(f"timestamp {ts!r}: {resp.status_code} {resp.text[:200]}, not 401")

    # non-ASCII header values
    for header, value in ((auth.SIG_HEADER, "é".encode() * 32), (auth.SIG_HEADER, b"\xff" * 64),
                          # Arabic-Indic digits, which float() would accept
                          (auth.TS_HEADER, ("\u0661\u0667" + "\u0660" * 8).encode()),
                          (NONCE_HEADER, "ü".encode() * 16)):
        b = body(4)
        nonce = secrets.token_hex(16)
        ts = f"{time.time():.3f}"
        headers: dict[str, Any] = {
            auth.TS_HEADER: ts, NONCE_HEADER: nonce,
            auth.SIG_HEADER: _signature(key, recipient=duck, ts=ts, nonce=nonce, path=path,
                                        body=b)}
        headers[header] = value
        resp = post_raw(addr[duck], path, b, headers)
        if resp.status_code != 401 or not is_json_error(resp):
            problems.append(f"non-ASCII {header} {value[:8]!r}: {resp.status_code} "
                            f"{resp.text[:200]}, not 401")
    if "Traceback" in log_text(c, duck):
        problems.append("the duck logged a traceback:\n" + log_text(c, duck)[-2000:])
    assert not problems, "\n".join(problems)


def test_term_far_above_is_refused_and_not_adopted(make_cluster: Make) -> None:
    c, names, goose = started_cluster(make_cluster)
    a, b = [n for n in names if n != goose]
    addr = {n: c.address(n) for n in names}
    st = c.status(goose)
    assert st is not None
    term, version = st.term, st.membership_version
    problems: list[str] = []
    if st.security != "insecure-loopback":
        problems.append(f"/status security should be 'insecure-loopback', got "
                        f"{st.security!r}")
    far = term + 2**20 + 1
    hb = httpx.post(addr[a] + "/raft/heartbeat",
                    json={"term": far, "sender": goose, "seq": 1, "version": version})
    vote = httpx.post(addr[b] + "/raft/vote", json={"term": far, "sender": a, "version": version})
    for what, resp in (("heartbeat", hb), ("vote request", vote)):
        if not 400 <= resp.status_code < 500:
            problems.append(f"{what} with term {far} (node term {term}): "
                            f"{resp.status_code} {resp.text}, not 4xx")
    for n in names:
        s = c.status(n)
        if s is None or s.term >= far:
            problems.append(f"{n} adopted the forged term: {s and s['term']}")
    assert not problems, "\n".join(problems)


def test_forged_max_term_does_not_brick_the_cluster(make_cluster: Make) -> None:
    c, names, goose = started_cluster(make_cluster)
    st = c.status(goose)
    assert st is not None
    forged = {"term": MAX_TERM, "sender": goose, "seq": 1, "version": st.membership_version}
    answers = {}
    for n in names:
        if n != goose:
            resp = httpx.post(c.address(n) + "/raft/heartbeat", json=forged)
            answers[n] = resp.status_code
    c.kill(goose)
    c.wait(goose, 5)
    c.wait_goose(among=names, exclude=[goose])
    c.restart(goose)
    for n in names:
        c.stop(n)
    for n in names:
        c.restart(n)
    c.wait_goose(among=names, timeout=8)
    terms = {n: None if s is None else s.term for n, s in c.statuses(names).items()}
    assert all(t is not None and t < 2**20 for t in terms.values()), (answers, terms)
