"""Validated, frozen settings for a node; built from the CLI and the environment."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, RegistryDataError
from .job import HookConfig, JobConfig
from .redisconn import RedisOptions
from .tls import TlsConfig

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CLUSTER = "ddg"


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ConfigError(
            f"{kind} {value!r} is not valid: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return value


WILDCARDS = frozenset({"0.0.0.0", "::", "", "*"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_advertise_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or port is None or parts.path not in ("", "/") or parts.query or parts.username
            or parts.hostname in WILDCARDS):
        raise ConfigError(
            f"advertise URL {url!r} must look like http://HOST:PORT (or https://), with the "
            "concrete address peers and the console use to reach this node"
        )
    return url.rstrip("/")


def state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) if xdg else Path.home() / ".local" / "state"


def default_data_dir(cluster: str, name: str) -> Path:
    return state_home() / "ddg" / cluster / name


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """Election timing in milliseconds (docs/design.md, "Protocol").

    The lease is how long after sending a round that a quorum acknowledged the goose may answer
    `goose`; a node that heard a goose waits lease / drift margin before it may take over
    (the drift margin absorbs clock-rate differences). The goose steps down (check-quorum) only
    after election_min x drift margin without an acknowledged round, so a slow round makes it
    stop answering `goose` for a moment, never starts an election.
    """

    heartbeat_ms: int = 50
    election_timeout_min_ms: int = 150
    election_timeout_max_ms: int = 300
    # Default: a heartbeat plus a fifth of the minimum election timeout (80 ms by default),
    # at most election_min x drift_margin (the step-down time). A cluster's timing record
    # holds it resolved (resolved()), which may be a fraction of a millisecond.
    lease_ms: float | None = None
    drift_margin: float = 0.8

    def __post_init__(self) -> None:
        if not 1 <= self.heartbeat_ms <= 60_000:
            raise ConfigError(f"heartbeat must be 1-60000 ms, got {self.heartbeat_ms}")
        if not 1 <= self.election_timeout_min_ms <= self.election_timeout_max_ms <= 600_000:
            raise ConfigError(
                "election timeout must be MIN-MAX ms with 1 <= MIN <= MAX <= 600000, got "
                f"{self.election_timeout_min_ms}-{self.election_timeout_max_ms}"
            )
        if self.election_timeout_min_ms < 2 * self.heartbeat_ms:
            raise ConfigError(
                f"minimum election timeout ({self.election_timeout_min_ms} ms) must be at least "
                f"twice the heartbeat ({self.heartbeat_ms} ms), or ducks time out between beats"
            )
        if not math.isfinite(self.drift_margin) or not 0.1 <= self.drift_margin < 1.0:
            raise ConfigError(f"drift margin must be in [0.1, 1.0), got {self.drift_margin}")
        longest = self.election_timeout_min_ms * self.drift_margin
        if self.lease_ms is not None and not (math.isfinite(self.lease_ms)
                                              and self.heartbeat_ms < self.lease_ms <= longest):
            raise ConfigError(
                f"lease must be longer than the heartbeat ({self.heartbeat_ms} ms) and at most "
                f"the minimum election timeout x {self.drift_margin} ({longest:g} ms), got "
                f"{self.lease_ms}"
            )

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_ms / 1000

    @property
    def election_min(self) -> float:
        return self.election_timeout_min_ms / 1000

    @property
    def election_max(self) -> float:
        return self.election_timeout_max_ms / 1000

    @property
    def lease(self) -> float:
        if self.lease_ms is not None:
            return self.lease_ms / 1000
        return min(self.quorum_timeout, self.heartbeat + self.election_min / 5)

    @property
    def lease_wait(self) -> float:
        """How long after hearing a goose its lease may still run, on another node's clock."""
        return self.lease / self.drift_margin

    @property
    def quorum_timeout(self) -> float:
        """A goose with no round acknowledged this long after sending it steps down."""
        return self.election_min * self.drift_margin

    @property
    def hint_step(self) -> float:
        """Ducks that see their goose's connection drop campaign this far apart, in turn: more
        than a pre-vote round trip, so the next in turn has heard of the first's campaign."""
        return max(self.heartbeat / 5, 0.005)

    def resolved(self) -> Timing:
        """The same timing with its lease written out (in ms), as a cluster's record holds it:
        a node of another version that derived the lease otherwise still runs this one."""
        if self.lease_ms is not None:
            return self
        derived = min(self.election_timeout_min_ms * self.drift_margin,
                      self.heartbeat_ms + self.election_timeout_min_ms / 5)
        return replace(self, lease_ms=round(derived, 3))

    @property
    def label(self) -> str:
        """Its --timing name, or its values: 'heartbeat 15 ms, election 60-120 ms, lease 30 ms'."""
        mine = self.resolved()
        for name, preset in TIMINGS.items():
            if preset.resolved() == mine:
                return name
        margin = "" if self.drift_margin == 0.8 else f", margin {self.drift_margin:g}"
        return (f"heartbeat {self.heartbeat_ms} ms, election {self.election_timeout_min_ms}-"
                f"{self.election_timeout_max_ms} ms, lease {_ms(self.lease * 1000)} ms{margin}")

    def to_json(self) -> dict[str, Any]:
        """The record's form: every value the safety argument compares, the lease resolved."""
        t = self.resolved()
        assert t.lease_ms is not None
        return {"heartbeat_ms": t.heartbeat_ms,
                "election_timeout_ms": [t.election_timeout_min_ms, t.election_timeout_max_ms],
                "lease_ms": _number(t.lease_ms), "drift_margin": t.drift_margin}

    @classmethod
    def from_json(cls, data: Any) -> Timing:
        """Strictly: RegistryDataError for anything a node did not write."""
        if not isinstance(data, dict) or set(data) != {"heartbeat_ms", "election_timeout_ms",
                                                       "lease_ms", "drift_margin"}:
            raise RegistryDataError(f"timing {str(data)[:80]!r} is not a timing object")
        window = data["election_timeout_ms"]
        if not (isinstance(window, list) and len(window) == 2 and all(_is_int(v) for v in window)
                and _is_int(data["heartbeat_ms"]) and _is_number(data["lease_ms"])
                and _is_number(data["drift_margin"])):
            raise RegistryDataError(f"timing {str(data)[:80]!r} has a value of the wrong type")
        try:
            return cls(heartbeat_ms=data["heartbeat_ms"], election_timeout_min_ms=window[0],
                       election_timeout_max_ms=window[1], lease_ms=data["lease_ms"],
                       drift_margin=data["drift_margin"])
        except ConfigError as exc:
            raise RegistryDataError(f"timing {str(data)[:80]!r}: {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number(x: float) -> float | int:
    """80.0 as 80 (one JSON form for one value)."""
    return int(x) if float(x).is_integer() else x


def _ms(x: float) -> str:
    return f"{round(x, 3):g}"


# Named timings for --timing. "fast" is for a small cluster on a LAN whose round trips stay
# well under 10 ms: crash failover in tens of ms, for 3.3x the heartbeats (README figures; 25
# nodes sharing 2 cores could not elect with it).
TIMINGS: dict[str, Timing] = {
    "default": Timing(),
    "fast": Timing(heartbeat_ms=15, election_timeout_min_ms=60, election_timeout_max_ms=120,
                   lease_ms=30),
}


@dataclass(frozen=True, slots=True)
class JointTiming:
    """What a node runs on while its cluster's record names more than one timing (a change in
    progress): the conservative combination, safe beside a node on any of them
    (docs/design.md, "Timing is cluster state"). The names are Timing's, in seconds."""

    timings: tuple[Timing, ...]
    heartbeat: float
    election_min: float  # also the stickiness: the longest of the set
    election_max: float
    lease: float  # the shortest a goose may hold
    lease_wait: float  # the longest any of them may need waiting out
    quorum_timeout: float
    hint_step: float
    drift_margin: float

    @classmethod
    def of(cls, timings: Iterable[Timing]) -> JointTiming:
        ts = tuple(sorted({t.resolved() for t in timings}, key=_canonical))
        if not ts:
            raise ConfigError("a joint timing needs at least one timing")
        return cls(
            timings=ts,
            heartbeat=min(t.heartbeat for t in ts),
            election_min=max(t.election_min for t in ts),
            election_max=max(t.election_max for t in ts),
            lease=min(t.lease for t in ts),
            lease_wait=max(t.lease_wait for t in ts),
            quorum_timeout=max(t.quorum_timeout for t in ts),
            hint_step=min(t.hint_step for t in ts),
            drift_margin=min(t.drift_margin for t in ts),
        )

    @property
    def label(self) -> str:
        return " + ".join(t.label for t in self.timings)


def _canonical(t: Timing) -> str:
    return json.dumps(t.to_json(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TimingRecord:
    """A cluster's timing (`ddg:C:timing`): TIMINGS in force, TARGET where a change goes.

    One timing: the cluster runs it. More: a change is in progress and nodes run their joint
    combination until every member has confirmed this EPOCH, then the record becomes
    [TARGET] alone (finalized()). The epoch is never reused; see docs/design.md."""

    epoch: int
    timings: tuple[Timing, ...]
    target: Timing

    def __post_init__(self) -> None:
        ts = tuple(sorted({t.resolved() for t in self.timings}, key=_canonical))
        object.__setattr__(self, "timings", ts)
        object.__setattr__(self, "target", self.target.resolved())
        if not 1 <= self.epoch <= 2**53 - 1 or isinstance(self.epoch, bool):
            raise RegistryDataError(f"timing epoch {self.epoch!r} is not in 1..2^53-1")
        if self.target not in ts:
            raise RegistryDataError("the timing record's target is not among its timings")
        if len(ts) > MAX_JOINT:
            raise RegistryDataError(f"the timing record holds {len(ts)} timings; at most "
                                    f"{MAX_JOINT} are allowed")

    @classmethod
    def first(cls, timing: Timing) -> TimingRecord:
        return cls(1, (timing,), timing)

    @property
    def joint(self) -> JointTiming:
        return JointTiming.of(self.timings)

    @property
    def changing(self) -> bool:
        return len(self.timings) > 1

    def to_json(self) -> str:
        """Canonical: the same record is always the same string (confirmations compare it)."""
        return json.dumps({"epoch": self.epoch, "timings": [t.to_json() for t in self.timings],
                           "target": self.target.to_json()},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TimingRecord:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise RegistryDataError(f"timing record {text[:60]!r} is not JSON") from None
        if not isinstance(data, dict) or set(data) != {"epoch", "timings", "target"} \
                or not _is_int(data["epoch"]) or not isinstance(data["timings"], list):
            raise RegistryDataError(f"timing record {text[:60]!r} is not a timing record")
        if len(data["timings"]) > MAX_JOINT:
            raise RegistryDataError(f"the timing record holds {len(data['timings'])} timings; "
                                    f"at most {MAX_JOINT} are allowed")
        return cls(data["epoch"], tuple(Timing.from_json(t) for t in data["timings"]),
                   Timing.from_json(data["target"]))

    @property
    def fingerprint(self) -> str:
        """What a member writes to confirm this record: its epoch and a hash of the rest, so
        that a record of the same epoch with other timings (a history forked by a Redis that
        lost data) is not confirmed by mistake."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:16]
        return f"{self.epoch}:{digest}"

    def shares(self, timings: Iterable[Timing]) -> bool:
        """Whether a node running TIMINGS is safe beside one running this record."""
        return not {t.resolved() for t in timings}.isdisjoint(self.timings)

    def changed_to(self, target: Timing) -> TimingRecord:
        """An operator's change: the new timing joins those in force (a change during a change
        still shares a timing with everything in use)."""
        return TimingRecord(self.epoch + 1, (*self.timings, target), target)

    def finalized(self) -> TimingRecord:
        """Every member runs the joint timing and confirmed it: the target alone."""
        return TimingRecord(self.epoch + 1, (self.target,), self.target)

    def merged(self, timings: Iterable[Timing], epoch: int) -> TimingRecord:
        """This record and TIMINGS (another history's, or a node's own) as one change in
        progress toward this record's target, newer than EPOCH."""
        return TimingRecord(max(self.epoch, epoch) + 1, (*self.timings, *timings), self.target)

    def describe(self) -> str:
        if not self.changing:
            return f"{self.target.label} (epoch {self.epoch})"
        others = [t.label for t in self.timings if t != self.target]
        return (f"changing to {self.target.label} from {', '.join(others)} "
                f"(epoch {self.epoch})")


MAX_JOINT = 8  # timings in one record: a change during a change during a change...


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a node does with the record it read: run ADOPT, write WRITE (over what it read)."""

    adopt: TimingRecord | None = None
    write: TimingRecord | None = None
    why: str = ""


def reconcile(mine: TimingRecord | None, theirs: TimingRecord | None,
              running: Iterable[Timing]) -> Reconciled:
    """A running node's step, from its record (MINE; None: it runs on its flags, RUNNING),
    the registry's (THEIRS) and the timings it runs on. A newer record always shares a timing
    with the one a member runs (docs/design.md); one that does not, or another record of the
    same epoch, is a history forked by a Redis that lost data: the node writes both as one
    change, never runs a record disjoint from its own. An older record (or none) is Redis
    having lost data: the node puts its own back."""
    running = tuple(running)
    if theirs is None:
        return Reconciled(write=mine, why="the registry has no timing record") if mine \
            else Reconciled()
    if mine is not None and theirs.epoch < mine.epoch:
        return Reconciled(write=mine, why=f"the registry holds epoch {theirs.epoch}, older "
                                          f"than this node's {mine.epoch}")
    if mine is not None and theirs.epoch == mine.epoch:
        if theirs == mine:
            return Reconciled()
        merged = theirs.merged(mine.timings, mine.epoch)
        return Reconciled(adopt=merged, write=merged,
                          why=f"the registry holds another epoch {theirs.epoch}")
    if theirs.shares(running):
        return Reconciled(adopt=theirs)
    merged = theirs.merged(running, theirs.epoch)
    return Reconciled(adopt=merged, write=merged,
                      why=f"epoch {theirs.epoch} shares no timing with this node's")


def parse_timeout_range(text: str) -> tuple[int, int]:
    """Parse '150-300' (or a single '200') into a (min, max) pair of milliseconds."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"election timeout {text!r} must look like MIN-MAX in ms, e.g. 150-300"
        ) from None
    return lo, hi


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeConfig:
    name: str
    host: str = "127.0.0.1"
    port: int
    redis_url: str = DEFAULT_REDIS_URL
    cluster: str = DEFAULT_CLUSTER
    data_dir: Path
    timing: Timing = field(default_factory=Timing)
    # Whether --timing (or its parts, or DDG_TIMING) was given: then it must match the
    # cluster's timing; without, the node runs whatever its cluster's record says.
    timing_explicit: bool = False
    secret: bytes | None = field(default=None, repr=False)
    # Kept out of the URL so it is not in `ps` output; it overrides a password in the URL.
    redis_password: str | None = field(default=None, repr=False)
    # rediss://: the CA that signed the server's certificate, and a client certificate + key.
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    advertise_url: str | None = None
    # Create the cluster if the registry holds none (etcd's --initial-cluster-state new).
    bootstrap: bool = False
    allow_fault_injection: bool = False
    log_level: str = "INFO"
    # "text" (for people; unchanged) or "json" (one object per line, for a log pipeline).
    log_format: str = "text"
    # Seconds between registry refreshes when no change notification arrives.
    refresh_interval: float = 1.0
    job: JobConfig | None = None  # --exec: a command run only while this node is the goose
    on_change: HookConfig | None = None  # --on-change: a hook run on every role change
    tls: TlsConfig | None = None  # --tls-*: HTTPS, peers verified, maybe mutual TLS

    def __post_init__(self) -> None:
        check_name("node name", self.name)
        check_name("cluster name", self.cluster)
        self.redis  # noqa: B018 -- validates the URL and the TLS files
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if not self.host:
            raise ConfigError("host must not be empty")
        if self.advertise_url is not None:
            object.__setattr__(self, "advertise_url", check_advertise_url(self.advertise_url))
            scheme = self.advertise_url.split(":", 1)[0]
            if scheme != self.scheme:
                raise ConfigError(
                    f"advertise URL {self.advertise_url} is {scheme}, but this node serves "
                    f"{self.scheme} ({'with' if self.serves_tls else 'without'} --tls-cert): "
                    f"use {self.scheme}://")
        elif self.host in WILDCARDS:
            raise ConfigError(
                f"--host {self.host} listens on every interface, so peers cannot be told where "
                f"to reach this node: pass --advertise-url "
                f"{self.scheme}://THIS-HOST-ADDRESS:{self.port}"
            )
        if self.secret is not None and len(self.secret) < 8:
            raise ConfigError("cluster secret must be at least 8 bytes")
        if not self.authenticated and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is not loopback, so anyone on the network could send "
                "election messages: set a cluster secret (DDG_CLUSTER_SECRET or "
                "--cluster-secret-file FILE, the same on every node), or use mutual TLS "
                "(--tls-cert, --tls-key, --tls-ca and --tls-client-auth)"
            )
        if self.tls is not None and self.tls.client_auth:
            self._check_cert_names(self.tls)
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"log level {self.log_level!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log format {self.log_format!r} must be text or json")
        if not 0.05 <= self.refresh_interval <= 60:
            raise ConfigError(f"refresh interval must be 0.05-60 s, got {self.refresh_interval}")

    def _check_cert_names(self, tls: TlsConfig) -> None:
        """With mutual TLS, peers take this node's messages only from a certificate that names
        it, and its certificate is its client certificate: one that does not would leave it
        silently unheard."""
        names = tls.cert_names()
        if self.name not in names:
            has = ", ".join(f"DNS:{n}" for n in sorted(names)[:5]) or "no DNS name"
            raise ConfigError(
                f"the TLS certificate {tls.cert} does not name this node {self.name!r} (it has "
                f"{has}): with --tls-client-auth peers take a message only from a certificate "
                f"naming its sender; issue it with subjectAltName DNS:{self.name} "
                "(docs/deploy.md, section 2)")

    @property
    def address(self) -> str:
        """The URL peers, the CLI and the console use: the advertised one, else the bind one."""
        if self.advertise_url is not None:
            return self.advertise_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def serves_tls(self) -> bool:
        return self.tls is not None and self.tls.serving

    @property
    def scheme(self) -> str:
        return "https" if self.serves_tls else "http"

    @property
    def redis(self) -> RedisOptions:
        return RedisOptions(url=self.redis_url, password=self.redis_password,
                            ca_file=self.redis_ca_file, cert_file=self.redis_cert_file,
                            key_file=self.redis_key_file)

    @property
    def signed(self) -> bool:
        return self.secret is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.client_auth

    @property
    def authenticated(self) -> bool:
        """Whether only cluster members can send election messages: they are signed with the
        secret, or need a client certificate from the cluster's CA."""
        return self.signed or self.mutual_tls

    @property
    def security(self) -> str:
        """How peer messages are authenticated, for /status: "hmac" (with or without TLS),
        "mtls" (client certificates alone) or "insecure-loopback"."""
        return "hmac" if self.signed else "mtls" if self.mutual_tls else "insecure-loopback"
