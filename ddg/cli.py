"""`ddg-node`: run a node, or `remove` / `status` a cluster's members."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .client import NodeClient, Reply
from .clockrate import max_rate_error
from .config import (
    DEFAULT_CLUSTER,
    DEFAULT_REDIS_URL,
    TIMINGS,
    NodeConfig,
    Timing,
    check_name,
    default_data_dir,
    parse_timeout_range,
)
from .errors import ConfigError, DdgError, RegistryError, RegistryUnavailable
from .job import add_job_arguments, job_configs
from .logs import JsonFormatter
from .redisconn import RedisOptions
from .registry import Registry
from .stopping import exit_now, stop_deadline
from .tls import TlsConfig, add_tls_arguments, tls_from_args
from .watchcli import cmd_watch

_MARGIN = Timing().drift_margin
_RATE = f"{max_rate_error(_MARGIN):.1%}"  # the clock-rate bound, stated in --help
_FACTOR = f"{1 / _MARGIN:g}x"
RUN_EPILOG = f"""\
other commands:
  ddg-node remove NAME [--redis-url URL] [--cluster NAME]
                     remove a member from the cluster for good (alive or dead)
  ddg-node status [--redis-url URL] [--cluster NAME] [--json] [--tls-ca FILE]
                     one row per member: address, role, term, goose it follows
  ddg-node watch [URL] [--json] [--tls-ca FILE]
                     a node's changes as they happen (GET /watch), one line each

run something only on the goose:
  ddg-node [flags] --exec -- CMD ARGS...   CMD runs while this node is the goose, with
  DDG_TERM (a fencing token), DDG_NODE_NAME, DDG_CLUSTER; SIGTERM the moment it is not,
  SIGKILL --exec-grace-ms later. --on-change CMD runs CMD ROLE TERM GOOSE on role changes.

starting a cluster:
  The first node of a new cluster is started once with --bootstrap; every other node (and
  that one, later) joins the cluster it finds in Redis. A node with a fresh data dir never
  forms a cluster of its own from an empty Redis: it waits for the cluster's members to
  restore the registry (etcd's --initial-cluster-state new|existing).

security:
  A node that binds anything but loopback needs a cluster secret (the same on every node):
  DDG_CLUSTER_SECRET or --cluster-secret-file. Keep passwords out of the command line (and
  so out of `ps`): DDG_REDIS_PASSWORD or --redis-password-file. Mutual TLS (--tls-cert,
  --tls-key, --tls-ca, --tls-client-auth) also satisfies that rule: then each node's
  certificate must name it (subjectAltName DNS:<name>), as peers take a message only from its
  sender's certificate. With --tls-cert the node serves HTTPS and advertises https://.

clocks:
  The lease assumes every node's monotonic clock runs within {_RATE} of real time (drift
  margin {_MARGIN:g}: no clock more than {_FACTOR} as fast as another's; docs/design.md). A node
  whose clock rate a majority of its peers' clocks contradict logs an error and does not
  lead until they agree again (/status `clock`, metric ddg_clock_contradicted).

environment (used when the flag is not given):
  DDG_HTTP_PORT, DDG_HOST, DDG_ADVERTISE_URL, DDG_NODE_NAME, DDG_REDIS_URL,
  DDG_REDIS_PASSWORD, DDG_REDIS_CA, DDG_REDIS_CERT, DDG_REDIS_KEY, DDG_CLUSTER, DDG_DATA_DIR,
  DDG_CLUSTER_SECRET, DDG_BOOTSTRAP, DDG_LOG_FORMAT, DDG_TIMING, DDG_TLS_CERT, DDG_TLS_KEY,
  DDG_TLS_CA, DDG_TLS_CLIENT_AUTH

endpoints: GET / (goose|duck), GET /status (JSON), GET /healthz, GET /metrics (Prometheus),
GET /watch (Server-Sent Events); peers POST /raft/vote, /raft/heartbeat, /raft/timeout_now,
and each duck holds GET /raft/hold/NAME open to its goose (its sudden end: a crash hint).
SIGTERM or Ctrl-C stops the node gracefully (a goose hands over first); it stays a member.
A second one, or a stop still running after 3 s (plus the minimum election timeout and
--exec-grace-ms), ends it at once: exit code 128+signal, or 70 (docs/operations.md).
"""


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One prefix for every error of the program: "ddg-node: error: status: ..."
        sub = self.prog.removeprefix("ddg-node").strip()
        self.exit(2, f"ddg-node: error: {sub + ': ' if sub else ''}{message}\n")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=_env("DDG_REDIS_URL", DEFAULT_REDIS_URL),
                   help="registry Redis: redis://, rediss://, unix:// or "
                        "redis+sentinel://HOST:PORT,.../MASTER/DB (env DDG_REDIS_URL; "
                        "default %(default)s)")
    p.add_argument("--redis-password-file", metavar="FILE",
                   help="read the Redis password from FILE (or set DDG_REDIS_PASSWORD); "
                        "overrides a password in the URL and keeps it out of `ps`")
    p.add_argument("--redis-ca", metavar="FILE", default=_env("DDG_REDIS_CA"),
                   help="with rediss://: the CA file that signed the Redis server's certificate "
                        "(env DDG_REDIS_CA; default: the system's CAs)")
    p.add_argument("--redis-cert", metavar="FILE", default=_env("DDG_REDIS_CERT"),
                   help="with rediss://: a client certificate, for a Redis that asks for one "
                        "(env DDG_REDIS_CERT; needs --redis-key)")
    p.add_argument("--redis-key", metavar="FILE", default=_env("DDG_REDIS_KEY"),
                   help="the client certificate's key (env DDG_REDIS_KEY)")
    p.add_argument("--cluster", default=_env("DDG_CLUSTER", DEFAULT_CLUSTER),
                   help="cluster name, the Redis key prefix (env DDG_CLUSTER; default %(default)s)")


def _read_secret_file(path: str, what: str) -> str:
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
        return _read_secret_file(ns.redis_password_file, "Redis password")
    return _env("DDG_REDIS_PASSWORD")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def redis_options(ns: argparse.Namespace) -> RedisOptions:
    return RedisOptions(url=ns.redis_url, password=redis_password(ns),
                        ca_file=_path(ns.redis_ca), cert_file=_path(ns.redis_cert),
                        key_file=_path(ns.redis_key))


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddg-node", description="Run one DuckDuckGoose node in the foreground.",
                epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ddg-node {__version__}")
    p.add_argument("--name", default=_env("DDG_NODE_NAME"),
                   help="node name, unique in the cluster (env DDG_NODE_NAME; default HOST-PORT)")
    p.add_argument("--host", default=_env("DDG_HOST", "127.0.0.1"),
                   help="address to serve HTTP on (env DDG_HOST; default %(default)s)")
    p.add_argument("--port", type=int, default=None,
                   help="HTTP port (env DDG_HTTP_PORT); required")
    p.add_argument("--advertise-url", default=_env("DDG_ADVERTISE_URL"), metavar="URL",
                   help="the URL peers and the console use to reach this node, e.g. "
                        "http://10.0.0.5:4001 (env DDG_ADVERTISE_URL; default: from --host and "
                        "--port; required when --host is 0.0.0.0 or ::)")
    p.add_argument("--bootstrap", action="store_true",
                   default=(_env("DDG_BOOTSTRAP") or "").lower() in ("1", "true", "yes"),
                   help="create the cluster if Redis holds none (once, on the first node of a "
                        "new cluster; ignored when the cluster exists; env DDG_BOOTSTRAP=1)")
    _common(p)
    p.add_argument("--data-dir", default=_env("DDG_DATA_DIR"),
                   help="where term and vote are kept (env DDG_DATA_DIR; default "
                        "$XDG_STATE_HOME/ddg/CLUSTER/NAME)")
    p.add_argument("--timing", choices=sorted(TIMINGS), default=_env("DDG_TIMING", "default"),
                   help="named election timing: default (heartbeat 50 ms, election timeout "
                        "150-300 ms, lease 80 ms) or fast (15, 60-120, 30: for a small cluster "
                        "on a LAN with spare CPU, 3.3x the heartbeats; see the README's "
                        "figures). The flags below "
                        "override its parts (env DDG_TIMING; default %(default)s)")
    p.add_argument("--heartbeat-ms", type=int, default=None,
                   help="goose heartbeat interval (default: from --timing)")
    p.add_argument("--election-timeout-ms", default=None, metavar="MIN-MAX",
                   help="randomized election timeout range (default: from --timing)")
    p.add_argument("--lease-ms", type=int, default=None,
                   help="how long after a round a quorum acknowledged the goose answers "
                        "`goose`; a new goose waits lease / 0.8 after the last heartbeat its "
                        "voters heard (default: from --timing). Use the same timing on every "
                        "node")
    p.add_argument("--cluster-secret", default=None,
                   help="sign peer messages with this shared secret (env DDG_CLUSTER_SECRET; "
                        "prefer the env or --cluster-secret-file: flags show in `ps`)")
    p.add_argument("--cluster-secret-file", metavar="FILE",
                   help="read the cluster secret from FILE")
    p.add_argument("--allow-fault-injection", action="store_true",
                   help="enable POST /admin/partition, /admin/heal and /admin/fault/* "
                        "(for tests and demos)")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default %(default)s)")
    p.add_argument("--log-format", choices=("text", "json"),
                   default=_env("DDG_LOG_FORMAT", "text"),
                   help="text, or json: one object per line with ts, level, node, cluster, "
                        "event, term, msg (env DDG_LOG_FORMAT; default %(default)s)")
    add_tls_arguments(p, node=True)
    add_job_arguments(p)
    return p


def timing_from_args(ns: argparse.Namespace) -> Timing:
    """The --timing preset with any of --heartbeat-ms, --election-timeout-ms, --lease-ms."""
    base = TIMINGS.get(ns.timing)
    if base is None:  # from DDG_TIMING: argparse checks only what is on the command line
        raise ConfigError(f"timing {ns.timing!r} must be one of {', '.join(sorted(TIMINGS))}")
    lo, hi = (base.election_timeout_min_ms, base.election_timeout_max_ms)
    if ns.election_timeout_ms is not None:
        lo, hi = parse_timeout_range(ns.election_timeout_ms)
    heartbeat = base.heartbeat_ms if ns.heartbeat_ms is None else ns.heartbeat_ms
    lease = ns.lease_ms
    if lease is None and (heartbeat, lo) == (base.heartbeat_ms, base.election_timeout_min_ms):
        lease = base.lease_ms  # the preset's own; otherwise derived from what was changed
    return Timing(heartbeat_ms=heartbeat, election_timeout_min_ms=lo,
                  election_timeout_max_ms=hi, lease_ms=lease, drift_margin=base.drift_margin)


def config_from_args(ns: argparse.Namespace) -> NodeConfig:
    port = ns.port
    if port is None:
        raw = _env("DDG_HTTP_PORT")
        if raw is None:
            raise ConfigError("--port (or DDG_HTTP_PORT) is required")
        try:
            port = int(raw)
        except ValueError:
            raise ConfigError(f"DDG_HTTP_PORT={raw!r} is not a port number") from None
    name = ns.name or f"{ns.host}-{port}"
    cluster = check_name("cluster name", ns.cluster)
    timing = timing_from_args(ns)
    secret = ns.cluster_secret or (
        _read_secret_file(ns.cluster_secret_file, "cluster secret") if ns.cluster_secret_file
        else _env("DDG_CLUSTER_SECRET"))
    data_dir = Path(ns.data_dir) if ns.data_dir else default_data_dir(cluster, check_name(
        "node name", name))
    job, on_change = job_configs(ns)
    return NodeConfig(
        job=job, on_change=on_change,
        name=name, host=ns.host, port=port, redis_url=ns.redis_url, cluster=cluster,
        data_dir=data_dir, timing=timing, secret=secret.encode() if secret else None,
        redis_password=redis_password(ns), redis_ca_file=_path(ns.redis_ca),
        redis_cert_file=_path(ns.redis_cert), redis_key_file=_path(ns.redis_key),
        advertise_url=ns.advertise_url,
        bootstrap=ns.bootstrap, allow_fault_injection=ns.allow_fault_injection,
        log_level=ns.log_level.upper(), log_format=ns.log_format, tls=tls_from_args(ns),
    )


def setup_logging(level: str, name: str, *, log_format: str = "text",
                  cluster: str = "") -> JsonFormatter | None:
    """Log to stderr; returns the JSON formatter when that is the format (ddg/logs.py)."""
    if log_format == "json":
        json_logs = JsonFormatter(node=name, cluster=cluster)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_logs)
        logging.basicConfig(level=level, handlers=[handler])
        logging.getLogger("aiohttp").setLevel(logging.WARNING)
        return json_logs
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format=f"%(asctime)s.%(msecs)03d %(levelname)-7s [{name}] %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    return None


def cmd_run(argv: Sequence[str]) -> int:
    from .node import Node

    ns = run_parser().parse_args(argv)
    config = config_from_args(ns)
    json_logs = setup_logging(config.log_level, config.name, log_format=config.log_format,
                              cluster=config.cluster)

    async def run() -> int:
        node = Node(config, stop_deadline=stop_deadline(config))
        if json_logs is not None:  # every line carries the term the node is in
            json_logs.term = lambda: None if node.core is None else node.core.term
        try:
            return await node.run()
        except DdgError as exc:
            if json_logs is None:
                raise  # main() prints it, as it always has
            logging.getLogger("ddg.node").critical("%s", exc, extra={"event": "failed"})
            return 1

    # Everything is closed and logged: skip the interpreter's teardown (ddg/stopping.py).
    exit_now(asyncio.run(run()))


def cmd_remove(argv: Sequence[str]) -> int:
    p = _Parser(prog="ddg-node remove",
                description="Remove a member from the cluster's registry, alive or dead. A "
                            "live node notices within a heartbeat or two and exits.")
    p.add_argument("name")
    _common(p)
    ns = p.parse_args(argv)
    check_name("node name", ns.name)
    options = redis_options(ns)

    async def go() -> int:
        registry = Registry(options, check_name("cluster name", ns.cluster), timeout=2.0)
        try:
            return await registry.remove(ns.name)
        finally:
            await registry.close()

    version = _redis(options, go)
    print(f"removed {ns.name} from cluster {ns.cluster} (membership version {version})")
    return 0


def _redis(options: RedisOptions, fn: Any) -> Any:
    try:
        return asyncio.run(fn())
    except RegistryUnavailable as exc:
        raise CliError(f"cannot reach Redis at {options.shown}: {exc}") from None
    except RegistryError as exc:
        raise CliError(f"registry problem: {exc}") from None


async def fetch_statuses(addresses: dict[str, str], request_timeout: float,
                         tls: TlsConfig | None = None) -> dict[str, Reply]:
    client = NodeClient(timeout=request_timeout, tls=tls)
    try:
        replies = await asyncio.gather(*(client.poll(a) for a in addresses.values()))
    finally:
        await client.aclose()
    return dict(zip(addresses, replies, strict=True))


def cmd_status(argv: Sequence[str]) -> int:
    p = _Parser(prog="ddg-node status", description="Show every member's answer, one row each.")
    _common(p)
    p.add_argument("--timeout", type=float, default=1.0, help="per-node timeout in s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tls_arguments(p, node=False)
    ns = p.parse_args(argv)
    options = redis_options(ns)
    tls = tls_from_args(ns)

    async def go() -> tuple[Any, dict[str, Reply]]:
        registry = Registry(options, check_name("cluster name", ns.cluster), timeout=2.0)
        try:
            membership = await registry.read()
        finally:
            await registry.close()
        addresses = {n: m.address for n, m in sorted(membership.members.items())}
        return membership, await fetch_statuses(addresses, ns.timeout, tls)

    membership, replies = _redis(options, go)
    if ns.json:
        members = {n: r.status.to_json() if r.status is not None else {"error": r.error}
                   for n, r in replies.items()}
        print(json.dumps({"version": membership.version, "members": members}, indent=2))
        return 0
    if not membership.members:
        print(f"cluster {ns.cluster} has no members (version {membership.version})")
        return 0
    rows = [("NAME", "ADDRESS", "ROLE", "TERM", "GOOSE", "ERROR")]
    for name, r in replies.items():
        st = r.status
        rows.append((name, membership.members[name].address, st.role if st else "-",
                     str(st.term) if st else "-", (st.goose if st else None) or "-",
                     r.error or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    silent = [n for n, r in replies.items() if r.status is None]
    for name in silent:
        print(f"{name} does not answer; if it is gone for good: ddg-node remove {name}"
              f"{'' if ns.cluster == DEFAULT_CLUSTER else ' --cluster ' + ns.cluster}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"remove": cmd_remove, "status": cmd_status, "watch": cmd_watch}
    try:
        if args and args[0] in commands:
            return commands[args[0]](args[1:])
        return cmd_run(args)
    except (DdgError, CliError) as exc:
        print(f"ddg-node: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ddg-node status --json | head`: the reader left; that is not an error. Point
        # stdout at /dev/null so that the interpreter's final flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
