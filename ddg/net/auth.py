"""Optional shared-secret signing of peer and admin requests.

HMAC-SHA256 over the recipient's name, a timestamp, a random nonce, the method, the path and
the body. The recipient binds a request to one node (a message signed for n2 is useless at
n3); the timestamp bounds how long a captured request stays usable; the nonce, remembered by
the receiver for exactly that long, makes a second use of the same request detectable.

A node may hold several secrets: it signs with the first and accepts any, so a secret is
rotated without an outage (add the new one second everywhere, then first, then drop the old;
docs/operations.md "Rotating secrets").
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ddg.errors import ConfigError

TS_HEADER = "X-DDG-Timestamp"
NONCE_HEADER = "X-DDG-Nonce"
SIG_HEADER = "X-DDG-Signature"
MAX_SKEW = 5.0  # seconds of wall-clock difference a signed message may carry
MAX_NONCES = 200_000  # replay-cache cap: bounds memory whatever the request rate
MIN_SECRET = 8  # bytes, for each secret
MAX_SECRETS = 4  # a rotation needs two; a refused request is checked against each
DOMAIN = b"ddg-auth-v2\n"  # versions the MAC input, so no other format can collide with it

# Strict ASCII grammars (no nan/inf, signs, spaces, '_' or Unicode digits that float() accepts).
_TS_RE = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_NONCE_RE = re.compile(r"[0-9a-f]{1,64}")
_SIG_RE = re.compile(r"[0-9a-fA-F]{64}")


def parse_secrets(text: str, *, separator: str) -> tuple[bytes, ...]:
    """The secrets in TEXT, split at SEPARATOR ("\\n" for a file, "," for the environment),
    in order, surrounding whitespace and empty parts dropped, a repeat kept once. ConfigError
    (that never quotes a secret) if there is none, too many, or one is too short."""
    found: list[bytes] = []
    for part in text.split(separator):
        value = part.strip().encode()
        if value and value not in found:
            found.append(value)
    if not found:
        raise ConfigError("no cluster secret in it")
    if len(found) > MAX_SECRETS:
        raise ConfigError(f"{len(found)} cluster secrets: at most {MAX_SECRETS} (a rotation "
                          "needs two)")
    for i, value in enumerate(found, 1):
        if len(value) < MIN_SECRET:
            which = "cluster secret" if len(found) == 1 else f"cluster secret {i} of {len(found)}"
            raise ConfigError(f"{which} must be at least {MIN_SECRET} bytes")
    return tuple(found)


def read_secrets(path: Path) -> tuple[bytes, ...]:
    """The secrets in the file PATH, one a line (parse_secrets). ConfigError names the file,
    never a secret."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster secret file {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the cluster secret file {path} is not UTF-8 text") from None
    try:
        return parse_secrets(text, separator="\n")
    except ConfigError as exc:
        raise ConfigError(f"the cluster secret file {path}: {exc}") from None


def signature(secret: bytes, *, recipient: str, ts: str, nonce: str, method: str, path: str,
              body: bytes) -> str:
    """Hex HMAC-SHA256 of the request. Pure: the same inputs always give the same MAC.

    Each field goes in as b"<byte length>:<bytes>\\n" after DOMAIN, so no two different
    requests share a MAC input (a path that ends in "\\n..." cannot shift bytes into the body).
    """
    mac = hmac.new(secret, DOMAIN, hashlib.sha256)
    for field in (recipient, ts, nonce, method.upper(), path):
        # surrogatepass: any str encodes, so a decoded odd path can never raise here.
        data = field.encode("utf-8", "surrogatepass")
        mac.update(b"%d:%s\n" % (len(data), data))
    mac.update(b"%d:" % len(body))
    mac.update(body)
    mac.update(b"\n")
    return mac.hexdigest()


def sign_headers(secret: bytes, method: str, path: str, body: bytes, *,
                 recipient: str) -> dict[str, str]:
    """Headers that authenticate one request to the node named RECIPIENT (use them once)."""
    ts = f"{time.time():.3f}"
    nonce = secrets.token_hex(16)
    sig = signature(secret, recipient=recipient, ts=ts, nonce=nonce, method=method, path=path,
                    body=body)
    return {TS_HEADER: ts, NONCE_HEADER: nonce, SIG_HEADER: sig}


class Verifier:
    """Checks signed requests addressed to one node and refuses replays.

    Not thread-safe; meant for one event loop. Memory is bounded: a nonce is kept only while
    its timestamp could still pass the freshness check, only after its MAC verified (so nobody
    without the secret can fill the cache), and never beyond MAX_NONCES entries.
    """

    def __init__(self, secret: bytes | Sequence[bytes], *, recipient: str,
                 window: float = MAX_SKEW, max_nonces: int = MAX_NONCES) -> None:
        """SECRET: one secret, or the several a rotation holds (a request signed with any of
        them passes)."""
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive finite number of seconds: {window!r}")
        if max_nonces < 1:
            raise ValueError(f"max_nonces must be at least 1: {max_nonces!r}")
        self.secrets: tuple[bytes, ...] = ((secret,) if isinstance(secret, bytes)
                                           else tuple(secret))
        if not self.secrets:
            raise ValueError("a verifier needs at least one secret")
        self.recipient = recipient
        self.window = float(window)
        self.max_nonces = max_nonces
        self._seen: set[str] = set()
        self._by_ts: list[tuple[float, str]] = []  # min-heap of (timestamp, nonce)
        # Latest wall clock seen: if the clock steps back, timestamps older than this minus the
        # window stay refused, since their nonces may already have been forgotten.
        self._latest = float("-inf")

    def __len__(self) -> int:
        """How many nonces are remembered right now."""
        return len(self._seen)

    def check(self, headers: Mapping[str, str], method: str, path: str, body: bytes, *,
              now: float | None = None) -> str | None:
        """None if the request is authentic, fresh and new; else a short reason to refuse it.

        NOW is wall-clock seconds (time.time()), since timestamps come from other machines.
        Never raises on anything a client sends.
        """
        values: dict[str, str] = {}
        for name in (TS_HEADER, NONCE_HEADER, SIG_HEADER):
            value = headers.get(name)
            if not value:
                return "missing signature: this cluster requires the shared secret"
            if not isinstance(value, str) or not value.isascii():
                return f"malformed {name} header: not ASCII"
            values[name] = value
        ts, nonce, sig = values[TS_HEADER], values[NONCE_HEADER], values[SIG_HEADER]
        if not _TS_RE.fullmatch(ts):
            return "malformed timestamp"
        if not _NONCE_RE.fullmatch(nonce):
            return "malformed nonce: use 1-64 characters 0-9a-f"
        if not _SIG_RE.fullmatch(sig):
            return "malformed signature"

        wall = time.time() if now is None else now
        if not math.isfinite(wall):
            raise ValueError(f"now must be finite: {wall!r}")
        self._latest = max(self._latest, wall)
        floor = self._latest - self.window  # >= wall - window
        self._forget_before(floor)
        sent = float(ts)  # finite: the grammar has no nan, inf or exponent
        if sent < floor or sent > wall + self.window:
            return "stale or future timestamp"
        given = bytes.fromhex(sig)
        if not any(hmac.compare_digest(bytes.fromhex(signature(
                secret, recipient=self.recipient, ts=ts, nonce=nonce, method=method, path=path,
                body=body)), given) for secret in self.secrets):
            return "bad signature"

        if nonce in self._seen:
            return "replayed request"
        if len(self._seen) >= self.max_nonces:
            return "too many signed requests in the replay window; try again shortly"
        self._seen.add(nonce)
        heapq.heappush(self._by_ts, (sent, nonce))
        return None

    def _forget_before(self, floor: float) -> None:
        """Drop nonces whose timestamp can no longer pass the freshness check."""
        heap = self._by_ts
        while heap and heap[0][0] < floor:
            self._seen.discard(heapq.heappop(heap)[1])
