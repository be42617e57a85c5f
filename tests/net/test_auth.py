"""Unit tests for request signing: recipient binding, replay refusal, bounded memory, parsing."""

from __future__ import annotations

import time

import pytest

from ddg.net.auth import (
    MAX_SKEW,
    NONCE_HEADER,
    SIG_HEADER,
    TS_HEADER,
    Verifier,
    sign_headers,
    signature,
)

SECRET = b"s3cret-s3cret"
PATH = "/raft/heartbeat"
BODY = b'{"term":3,"sender":"n1","seq":1}'


def signed(recipient: str = "n2", *, secret: bytes = SECRET, method: str = "POST",
           path: str = PATH, body: bytes = BODY, ts: float | None = None,
           nonce: str | None = None) -> dict[str, str]:
    """Headers as sign_headers makes them, optionally with a chosen timestamp or nonce."""
    headers = sign_headers(secret, method, path, body, recipient=recipient)
    if ts is not None or nonce is not None:
        t = f"{ts:.3f}" if ts is not None else headers[TS_HEADER]
        n = nonce if nonce is not None else headers[NONCE_HEADER]
        headers = {TS_HEADER: t, NONCE_HEADER: n,
                   SIG_HEADER: signature(secret, recipient=recipient, ts=t, nonce=n,
                                         method=method, path=path, body=body)}
    return headers


def test_round_trip() -> None:
    headers = sign_headers(SECRET, "post", PATH, BODY, recipient="n2")
    assert set(headers) == {TS_HEADER, NONCE_HEADER, SIG_HEADER}
    assert len(headers[NONCE_HEADER]) == 32 and len(headers[SIG_HEADER]) == 64
    assert abs(float(headers[TS_HEADER]) - time.time()) < 1
    assert Verifier(SECRET, recipient="n2").check(headers, "POST", PATH, BODY) is None


def test_each_signing_has_a_fresh_nonce() -> None:
    a, b = (sign_headers(SECRET, "POST", PATH, BODY, recipient="n2") for _ in range(2))
    assert a[NONCE_HEADER] != b[NONCE_HEADER]
    v = Verifier(SECRET, recipient="n2")
    assert v.check(a, "POST", PATH, BODY) is None
    assert v.check(b, "POST", PATH, BODY) is None


def mac(*, secret: bytes = SECRET, recipient: str = "n2", ts: str = "100.000",
        nonce: str = "ab", method: str = "POST", path: str = PATH, body: bytes = BODY) -> str:
    return signature(secret, recipient=recipient, ts=ts, nonce=nonce, method=method, path=path,
                     body=body)


def test_signature_is_pure_and_covers_every_field() -> None:
    assert mac() == mac() and len(mac()) == 64
    assert mac(method="post") == mac()  # the method is case-insensitive, like HTTP's
    others = [mac(secret=b"another-secret"), mac(recipient="n3"), mac(ts="100.001"),
              mac(nonce="ac"), mac(method="GET"), mac(path="/raft/vote"), mac(body=b"{}")]
    assert len({mac(), *others}) == 1 + len(others)
    # Field boundaries are unambiguous: bytes cannot move from the path into the body.
    assert mac(path=PATH + "\n1:x", body=b"") != mac(body=b"x")
    assert mac(recipient="n2\n1:1", ts="") != mac(recipient="n2", ts="1")


def test_wrong_secret_refused() -> None:
    v = Verifier(SECRET, recipient="n2")
    assert v.check(signed(secret=b"not-the-secret"), "POST", PATH, BODY) == "bad signature"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", PATH, BODY + b" "),
    ("POST", "/raft/vote", BODY),
    ("PUT", PATH, BODY),
])
def test_tampered_request_refused(method: str, path: str, body: bytes) -> None:
    v = Verifier(SECRET, recipient="n2")
    assert v.check(signed(), method, path, body) == "bad signature"


def test_signed_for_another_recipient_refused() -> None:
    headers = signed("n2")
    assert Verifier(SECRET, recipient="n3").check(headers, "POST", PATH, BODY) == "bad signature"
    assert Verifier(SECRET, recipient="n2").check(headers, "POST", PATH, BODY) is None


def test_replay_refused() -> None:
    v = Verifier(SECRET, recipient="n2")
    headers = signed()
    assert v.check(dict(headers), "POST", PATH, BODY) is None
    assert v.check(dict(headers), "POST", PATH, BODY) == "replayed request"
    assert len(v) == 1


def test_refused_requests_are_not_remembered() -> None:
    v = Verifier(SECRET, recipient="n2")
    headers = signed()
    assert v.check(headers, "POST", PATH, BODY + b"x") == "bad signature"
    assert v.check(signed(secret=b"not-the-secret"), "POST", PATH, BODY) == "bad signature"
    assert len(v) == 0
    assert v.check(headers, "POST", PATH, BODY) is None


def test_nonces_expire_after_the_window() -> None:
    v = Verifier(SECRET, recipient="n2", window=5.0)
    t0 = 1_000_000.0
    old = signed(ts=t0)
    assert v.check(old, "POST", PATH, BODY, now=t0) is None
    assert v.check(signed(ts=t0 + 1), "POST", PATH, BODY, now=t0 + 1) is None
    assert len(v) == 2
    # Still inside the window: remembered, so a replay is caught.
    assert v.check(old, "POST", PATH, BODY, now=t0 + 5.0) == "replayed request"
    # Out of the window: refused as stale, and its nonce is forgotten.
    assert v.check(old, "POST", PATH, BODY, now=t0 + 5.5) == "stale or future timestamp"
    assert len(v) == 1
    assert v.check(signed(ts=t0 + 20), "POST", PATH, BODY, now=t0 + 20) is None
    assert len(v) == 1


def test_clock_stepping_back_does_not_reopen_forgotten_nonces() -> None:
    v = Verifier(SECRET, recipient="n2", window=5.0)
    t0 = 1_000_000.0
    old = signed(ts=t0)
    assert v.check(old, "POST", PATH, BODY, now=t0) is None
    assert v.check(signed(ts=t0 + 10), "POST", PATH, BODY, now=t0 + 10) is None
    assert len(v) == 1  # the first nonce is gone
    assert v.check(old, "POST", PATH, BODY, now=t0 + 1) == "stale or future timestamp"


def test_future_timestamp_refused() -> None:
    v = Verifier(SECRET, recipient="n2", window=5.0)
    now = 1_000_000.0
    assert v.check(signed(ts=now + 5.5), "POST", PATH, BODY, now=now) == (
        "stale or future timestamp")
    assert v.check(signed(ts=now + 4.5), "POST", PATH, BODY, now=now) is None


def test_cap_reached_refuses_new_requests() -> None:
    v = Verifier(SECRET, recipient="n2", window=5.0, max_nonces=3)
    now = 1_000_000.0
    for i in range(3):
        assert v.check(signed(ts=now, nonce=f"{i:x}"), "POST", PATH, BODY, now=now) is None
    reason = v.check(signed(ts=now), "POST", PATH, BODY, now=now)
    assert reason is not None and "too many" in reason
    assert len(v) == 3
    # A replay is still reported as such, and room comes back once the window has passed.
    assert v.check(signed(ts=now, nonce="0"), "POST", PATH, BODY, now=now) == "replayed request"
    assert v.check(signed(ts=now + 6), "POST", PATH, BODY, now=now + 6) is None
    assert len(v) == 1


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "Infinity", "abc", "1e9", "-1",
                                " 100", "1_000", "", "1.", ".5", "0x10"])
def test_bad_timestamps_refused(ts: str) -> None:
    v = Verifier(SECRET, recipient="n2")
    headers = signed() | {TS_HEADER: ts}
    headers[SIG_HEADER] = signature(SECRET, recipient="n2", ts=ts, nonce=headers[NONCE_HEADER],
                                    method="POST", path=PATH, body=BODY)
    reason = v.check(headers, "POST", PATH, BODY)
    assert reason in ("malformed timestamp", "missing signature: this cluster requires the "
                                             "shared secret")
    assert len(v) == 0


@pytest.mark.parametrize("header", [TS_HEADER, NONCE_HEADER, SIG_HEADER])
@pytest.mark.parametrize("value", ["\u00e9" * 64, "\uff11\uff12\uff13", "\udcff" * 32])
def test_non_ascii_header_refused_with_a_reason(header: str, value: str) -> None:
    v = Verifier(SECRET, recipient="n2")
    reason = v.check(signed() | {header: value}, "POST", PATH, BODY)
    assert reason == f"malformed {header} header: not ASCII"


@pytest.mark.parametrize("nonce", ["", "A0", "xyz", "0" * 65, "ab cd", "-1"])
def test_bad_nonce_refused(nonce: str) -> None:
    v = Verifier(SECRET, recipient="n2")
    reason = v.check(signed(nonce=nonce), "POST", PATH, BODY)
    assert reason is not None and ("nonce" in reason or "missing" in reason)


@pytest.mark.parametrize("sig", ["00" * 31, "zz" * 32, "00" * 33])
def test_malformed_signature_refused(sig: str) -> None:
    v = Verifier(SECRET, recipient="n2")
    assert v.check(signed() | {SIG_HEADER: sig}, "POST", PATH, BODY) == "malformed signature"


def test_uppercase_signature_accepted() -> None:
    headers = signed()
    headers[SIG_HEADER] = headers[SIG_HEADER].upper()
    assert Verifier(SECRET, recipient="n2").check(headers, "POST", PATH, BODY) is None


@pytest.mark.parametrize("missing", [TS_HEADER, NONCE_HEADER, SIG_HEADER])
def test_missing_header_refused(missing: str) -> None:
    headers = signed()
    del headers[missing]
    reason = Verifier(SECRET, recipient="n2").check(headers, "POST", PATH, BODY)
    assert reason == "missing signature: this cluster requires the shared secret"
    assert Verifier(SECRET, recipient="n2").check({}, "POST", PATH, BODY) == reason


def test_bad_settings_rejected() -> None:
    for window in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            Verifier(SECRET, recipient="n2", window=window)
    with pytest.raises(ValueError):
        Verifier(SECRET, recipient="n2", max_nonces=0)
    assert Verifier(SECRET, recipient="n2").window == MAX_SKEW
