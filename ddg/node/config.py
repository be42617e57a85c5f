"""Validated, frozen settings for a node, built from the CLI and the environment (NodeConfig),
and the narrower views its parts take: the peer transport and crash-hint streams (PeerConfig),
the membership sync and the node's part in the cluster's timing (MemberConfig)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ddg.election.names import check_name
from ddg.election.timing import Timing
from ddg.errors import ConfigError
from ddg.net.auth import MIN_SECRET
from ddg.net.tls import TlsConfig
from ddg.ops.job import HookConfig, JobConfig
from ddg.ops.vip import VipConfig
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.redisconn import DEFAULT_REDIS_URL, RedisOptions

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
class PeerConfig:
    """What a node's peer transport and its crash-hint streams need of its config: its name,
    how its messages are signed (the cluster secret) and whom it trusts and shows (TLS), and
    the timing it starts on (the cluster's replaces it as it changes)."""

    name: str
    timing: Timing = field(default_factory=Timing)
    secret: bytes | None = field(default=None, repr=False)
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        check_name("node name", self.name)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemberConfig:
    """What a node's membership sync and its part in the cluster's timing record need of its
    config: the member it registers (name, address, cluster), whether it may create the
    cluster, its timing flags (what --bootstrap writes; explicit ones must match the
    cluster's), how often it re-reads Redis, and its TLS settings (to ask a name's holder)."""

    name: str
    cluster: str = DEFAULT_CLUSTER
    address: str
    timing: Timing = field(default_factory=Timing)
    timing_explicit: bool = False
    bootstrap: bool = False
    refresh_interval: float = 1.0
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        check_name("node name", self.name)
        check_name("cluster name", self.cluster)


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
    secret: bytes | None = field(default=None, repr=False)  # signs; checked: see secrets
    # More cluster secrets accepted (never used to sign), during a rotation.
    extra_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    # Where the secrets came from (--cluster-secret-file): SIGHUP reads it again.
    secret_file: Path | None = None
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
    vip: VipConfig | None = None  # --vip: a floating address only the goose holds
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
        if self.secret is not None and len(self.secret) < MIN_SECRET:
            raise ConfigError(f"cluster secret must be at least {MIN_SECRET} bytes")
        if self.extra_secrets and self.secret is None:
            raise ConfigError("extra cluster secrets without one to sign with")
        if any(len(s) < MIN_SECRET for s in self.extra_secrets):
            raise ConfigError(f"every cluster secret must be at least {MIN_SECRET} bytes")
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
    def peer(self) -> PeerConfig:
        return PeerConfig(name=self.name, timing=self.timing, secret=self.secret, tls=self.tls)

    @property
    def member(self) -> MemberConfig:
        return MemberConfig(name=self.name, cluster=self.cluster, address=self.address,
                            timing=self.timing, timing_explicit=self.timing_explicit,
                            bootstrap=self.bootstrap, refresh_interval=self.refresh_interval,
                            tls=self.tls)

    @property
    def redis(self) -> RedisOptions:
        return RedisOptions(url=self.redis_url, password=self.redis_password,
                            ca_file=self.redis_ca_file, cert_file=self.redis_cert_file,
                            key_file=self.redis_key_file)

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """Every secret a peer message may be signed with; the first is the one this node
        signs with."""
        return () if self.secret is None else (self.secret, *self.extra_secrets)

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
