"""Every command-line flag of ddg-node that more than one command takes, and how its value
becomes a setting: Redis, timing, TLS, `--exec`/`--on-change`, and the environment fallbacks.
The only place (with the commands beside it) that ddg imports argparse."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any, NoReturn

from ddg.election.timing import TIMINGS, Timing, parse_timeout_range
from ddg.errors import ConfigError
from ddg.net.tls import TlsConfig
from ddg.ops.job import HookConfig, JobConfig
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.redisconn import DEFAULT_REDIS_URL, RedisOptions


class CliError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One prefix for every error of the program: "ddg-node: error: status: ..."
        sub = self.prog.removeprefix("ddg-node").strip()
        self.exit(2, f"ddg-node: error: {sub + ': ' if sub else ''}{message}\n")


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def add_redis_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=env("DDG_REDIS_URL", DEFAULT_REDIS_URL),
                   help="registry Redis: redis://, rediss://, unix:// or "
                        "redis+sentinel://HOST:PORT,.../MASTER/DB (env DDG_REDIS_URL; "
                        "default %(default)s)")
    p.add_argument("--redis-password-file", metavar="FILE",
                   help="read the Redis password from FILE (or set DDG_REDIS_PASSWORD); "
                        "overrides a password in the URL and keeps it out of `ps`")
    p.add_argument("--redis-ca", metavar="FILE", default=env("DDG_REDIS_CA"),
                   help="with rediss://: the CA file that signed the Redis server's certificate "
                        "(env DDG_REDIS_CA; default: the system's CAs)")
    p.add_argument("--redis-cert", metavar="FILE", default=env("DDG_REDIS_CERT"),
                   help="with rediss://: a client certificate, for a Redis that asks for one "
                        "(env DDG_REDIS_CERT; needs --redis-key)")
    p.add_argument("--redis-key", metavar="FILE", default=env("DDG_REDIS_KEY"),
                   help="the client certificate's key (env DDG_REDIS_KEY)")
    p.add_argument("--cluster", default=env("DDG_CLUSTER", DEFAULT_CLUSTER),
                   help="cluster name, the Redis key prefix (env DDG_CLUSTER; default %(default)s)")


def read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} file {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def redis_password(ns: argparse.Namespace) -> str | None:
    if ns.redis_password_file:
        return read_secret_file(ns.redis_password_file, "Redis password")
    return env("DDG_REDIS_PASSWORD")


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def redis_options(ns: argparse.Namespace) -> RedisOptions:
    return RedisOptions(url=ns.redis_url, password=redis_password(ns),
                        ca_file=optional_path(ns.redis_ca), cert_file=optional_path(ns.redis_cert),
                        key_file=optional_path(ns.redis_key))


def add_timing_arguments(p: argparse.ArgumentParser, *, node: bool) -> None:
    """--timing and its parts: for a node, what --bootstrap writes and what must match the
    cluster's; for `config set`, the cluster's new timing."""
    if node:
        default = env("DDG_TIMING")
        about = ("for --bootstrap: the new cluster's timing; otherwise it must match the "
                 "cluster's, which a node without timing flags just runs (env DDG_TIMING)")
    else:
        default = None
        about = "the parts not given are the cluster's current timing's"
    p.add_argument("--timing", choices=sorted(TIMINGS), default=default,
                   help="named election timing: default (heartbeat 50 ms, election timeout "
                        "150-300 ms, lease 80 ms) or fast (15, 60-120, 30: for a small cluster "
                        "on a LAN with spare CPU, 3.3x the heartbeats; see the README's "
                        f"figures). The flags below override its parts; {about}")
    p.add_argument("--heartbeat-ms", type=int, default=None,
                   help="goose heartbeat interval (default: from --timing)")
    p.add_argument("--election-timeout-ms", default=None, metavar="MIN-MAX",
                   help="randomized election timeout range (default: from --timing)")
    p.add_argument("--lease-ms", type=int, default=None,
                   help="how long after a round a quorum acknowledged the goose answers "
                        "`goose`; a new goose waits lease / 0.8 after the last heartbeat its "
                        "voters heard (default: from --timing)")


def timing_given(ns: argparse.Namespace) -> bool:
    return any(v is not None for v in (ns.timing, ns.heartbeat_ms, ns.election_timeout_ms,
                                       ns.lease_ms))


def timing_from_args(ns: argparse.Namespace, base: Timing | None = None) -> Timing:
    """The --timing preset (else BASE, else the default) with any of --heartbeat-ms,
    --election-timeout-ms, --lease-ms."""
    if ns.timing is not None or base is None:
        name = ns.timing or "default"
        base = TIMINGS.get(name)
        if base is None:  # from DDG_TIMING: argparse checks only what is on the command line
            raise ConfigError(f"timing {name!r} must be one of {', '.join(sorted(TIMINGS))}")
    lo, hi = (base.election_timeout_min_ms, base.election_timeout_max_ms)
    if ns.election_timeout_ms is not None:
        lo, hi = parse_timeout_range(ns.election_timeout_ms)
    heartbeat = base.heartbeat_ms if ns.heartbeat_ms is None else ns.heartbeat_ms
    lease = ns.lease_ms
    if lease is None and (heartbeat, lo) == (base.heartbeat_ms, base.election_timeout_min_ms):
        lease = base.lease_ms  # the preset's own; otherwise derived from what was changed
    return Timing(heartbeat_ms=heartbeat, election_timeout_min_ms=lo,
                  election_timeout_max_ms=hi, lease_ms=lease, drift_margin=base.drift_margin)


def add_tls_arguments(p: argparse.ArgumentParser, *, node: bool) -> None:
    """--tls-cert/--tls-key/--tls-ca (and, for a NODE, --tls-client-auth), with their
    environment fallbacks."""
    g = p.add_argument_group("TLS")
    cert_help = ("serve HTTPS with this certificate (PEM; leaf first) and present it to peers"
                 if node else "client certificate (PEM) for nodes that demand one")
    g.add_argument("--tls-cert", metavar="FILE", default=env("DDG_TLS_CERT"),
                   help=f"{cert_help} (env DDG_TLS_CERT)")
    g.add_argument("--tls-key", metavar="FILE", default=env("DDG_TLS_KEY"),
                   help="the certificate's private key, PEM, unencrypted (env DDG_TLS_KEY)")
    g.add_argument("--tls-ca", metavar="FILE", default=env("DDG_TLS_CA"),
                   help="CA certificate(s) that node certificates are checked against "
                        "(env DDG_TLS_CA; default: the system's)")
    if node:
        g.add_argument("--tls-client-auth", action="store_true",
                       default=(env("DDG_TLS_CLIENT_AUTH") or "").lower()
                       in ("1", "true", "yes"),
                       help="accept /raft/* and /admin/* only from clients with a certificate "
                            "signed by --tls-ca, and a peer message only from a certificate "
                            "that names its sender (subjectAltName DNS:<node name>; this "
                            "node's own must name it) (mutual TLS; env DDG_TLS_CLIENT_AUTH=1)")


def tls_from_args(ns: argparse.Namespace) -> TlsConfig | None:
    """The TlsConfig the flags ask for; None when no TLS flag is given."""
    client_auth = bool(getattr(ns, "tls_client_auth", False))
    if ns.tls_cert is None and ns.tls_key is None and ns.tls_ca is None and not client_auth:
        return None

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return TlsConfig(cert=path(ns.tls_cert), key=path(ns.tls_key), ca=path(ns.tls_ca),
                     client_auth=client_auth)


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """ddg-node's --exec and --on-change flags, and the command after `--`."""
    p.add_argument("--exec", action="store_true",
                   help="run the command given after `--` only while this node is the goose "
                        "(env DDG_TERM: the fencing token, DDG_NODE_NAME, DDG_CLUSTER)")
    p.add_argument("--exec-grace-ms", type=int, default=None, metavar="MS",
                   help="SIGTERM to SIGKILL when the command must stop; the most two commands "
                        "overlap (default 100)")
    p.add_argument("--exec-log", metavar="FILE",
                   help="append the command's output to FILE (default: the node's stderr)")
    p.add_argument("--on-change", metavar="CMD",
                   help="run CMD ROLE TERM GOOSE when this node becomes the goose, stops "
                        "being it, or (not the goose) follows a goose it has not named "
                        "before; never before it follows one (CMD is split like a shell "
                        "would; one at a time)")
    p.add_argument("--on-change-timeout-ms", type=int, default=10_000, metavar="MS",
                   help="kill an on-change hook after this long (default %(default)s)")
    p.add_argument("command", nargs="*", metavar="-- CMD ARGS",
                   help="with --exec: the command to run while this node is the goose")


def job_configs(ns: argparse.Namespace) -> tuple[JobConfig | None, HookConfig | None]:
    command = tuple(ns.command)
    if command and not ns.exec:
        raise ConfigError(f"unexpected argument {command[0]!r}: a command to run only on the "
                          "goose goes after --exec --")
    if not ns.exec and (ns.exec_log is not None or ns.exec_grace_ms is not None):
        raise ConfigError("--exec-log and --exec-grace-ms need --exec -- CMD")
    job = None
    if ns.exec:
        if not command:
            raise ConfigError("--exec needs a command after --, e.g. --exec -- my-job --flag")
        extra: dict[str, Any] = {}
        if ns.exec_grace_ms is not None:
            extra["grace_ms"] = ns.exec_grace_ms
        job = JobConfig(command=command, log_file=Path(ns.exec_log) if ns.exec_log else None,
                        **extra)
    hook = None
    if ns.on_change is not None:
        try:
            argv = tuple(shlex.split(ns.on_change))
        except ValueError as exc:
            raise ConfigError(f"--on-change {ns.on_change!r}: {exc}") from None
        hook = HookConfig(command=argv, timeout_ms=ns.on_change_timeout_ms)
    return job, hook
