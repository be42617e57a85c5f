"""Optional shared-secret signing of peer and admin requests (HMAC-SHA256 over a timestamp,
the method, the path and the body)."""

from __future__ import annotations

import hashlib
import hmac
import time

TS_HEADER = "X-DDG-Timestamp"
SIG_HEADER = "X-DDG-Signature"
MAX_SKEW = 5.0  # seconds of wall-clock difference a signed message may carry


def signature(secret: bytes, ts: str, method: str, path: str, body: bytes) -> str:
    mac = hmac.new(secret, f"{ts}\n{method.upper()}\n{path}\n".encode(), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign_headers(secret: bytes, method: str, path: str, body: bytes) -> dict[str, str]:
    ts = f"{time.time():.3f}"
    return {TS_HEADER: ts, SIG_HEADER: signature(secret, ts, method, path, body)}


def check(secret: bytes, headers: dict[str, str] | object, method: str, path: str,
          body: bytes, *, now: float | None = None) -> str | None:
    """None if the request is signed correctly and fresh, else the reason it is refused."""
    get = headers.get  # type: ignore[attr-defined]
    ts, sig = get(TS_HEADER), get(SIG_HEADER)
    if not ts or not sig:
        return "missing signature: this cluster requires the shared secret"
    try:
        sent = float(ts)
    except ValueError:
        return "malformed timestamp"
    wall = time.time() if now is None else now
    if abs(wall - sent) > MAX_SKEW:
        return "stale or future timestamp"
    if not hmac.compare_digest(signature(secret, ts, method, path, body), sig):
        return "bad signature"
    return None
