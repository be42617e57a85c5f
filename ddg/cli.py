"""`ddg-node`: run a node, or `remove` / `status` a cluster's members, or show and change its
timing (`config`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
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
    JointTiming,
    NodeConfig,
    Timing,
    TimingRecord,
    check_name,
    default_data_dir,
    parse_timeout_range,
)
from .errors import (
    ChangeWaiting,
    ConfigError,
    DdgError,
    NoCluster,
    RegistryError,
    RegistryUnavailable,
)
from .job import add_job_arguments, job_configs
from .logs import JsonFormatter
from .redisconn import RedisOptions
from .registry import Membership, Registry, TimingState
from .stopping import exit_now, stop_deadline
from .tls import TlsConfig, add_tls_arguments, tls_from_args
from .watchcli import cmd_watch

_MARGIN = Timing().drift_margin
_RATE = f"{max_rate_error(_MARGIN):.1%}"  # the clock-rate bound, stated in --help
_FACTOR = f"{1 / _MARGIN:g}x"
RUN_EPILOG = f"""\
other commands:
  ddg-node remove NAME [--redis-url URL] [--cluster NAME] [--timeout S]
                     remove a member from the cluster for good (alive or dead), once a
                     majority confirmed the current membership version
  ddg-node status [--redis-url URL] [--cluster NAME] [--json] [--tls-ca FILE]
                     one row per member: address, role, term, goose it follows
  ddg-node watch [URL] [--json] [--tls-ca FILE]
                     a node's changes as they happen (GET /watch), one line each
  ddg-node config show [--redis-url URL] [--cluster NAME] [--json]
                     the cluster's timing, and any change in progress
  ddg-node config set --timing fast [--wait]   (or --heartbeat-ms, --election-timeout-ms,
                     --lease-ms) change the timing of the running cluster, safely online

run something only on the goose:
  ddg-node [flags] --exec -- CMD ARGS...   CMD runs while this node is the goose, with
  DDG_TERM (a fencing token), DDG_NODE_NAME, DDG_CLUSTER; SIGTERM the moment it is not,
  SIGKILL --exec-grace-ms later. --on-change CMD runs CMD ROLE TERM GOOSE on role changes.

starting a cluster:
  The first node of a new cluster is started once with --bootstrap; every other node (and
  that one, later) joins the cluster it finds in Redis. A node with a fresh data dir never
  forms a cluster of its own from an empty Redis: it waits for the cluster's members to
  restore the registry (etcd's --initial-cluster-state new|existing).

timing is the cluster's:
  --bootstrap writes the timing flags (or the default) into the cluster's record; every node
  runs the record's timing. A node started with timing flags that disagree with it refuses to
  start; without them it runs the cluster's. `ddg-node config set` changes it online.

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
    _timing_flags(p, node=True)
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


def _timing_flags(p: argparse.ArgumentParser, *, node: bool) -> None:
    """--timing and its parts: for a node, what --bootstrap writes and what must match the
    cluster's; for `config set`, the cluster's new timing."""
    if node:
        env = _env("DDG_TIMING")
        about = ("for --bootstrap: the new cluster's timing; otherwise it must match the "
                 "cluster's, which a node without timing flags just runs (env DDG_TIMING)")
    else:
        env = None
        about = "the parts not given are the cluster's current timing's"
    p.add_argument("--timing", choices=sorted(TIMINGS), default=env,
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
        data_dir=data_dir, timing=timing, timing_explicit=timing_given(ns),
        secret=secret.encode() if secret else None,
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
                            "live node notices within a heartbeat or two and exits. The "
                            "registry takes the removal once a majority of the members have "
                            "confirmed the current membership version (milliseconds on a "
                            "healthy cluster, one change at a time): this waits for that.")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="wait at most this long for a majority of the members to confirm "
                        "the current membership version; then fail, removing nothing "
                        "(default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="remove without that confirmation: ONLY for members that are down for "
                        "good (their hosts gone), when a majority of the cluster is lost and "
                        "cannot confirm any more. A member that is only cut off may then lead "
                        "beside the rest: two geese")
    _common(p)
    ns = p.parse_args(argv)
    check_name("node name", ns.name)
    if not 0 <= ns.timeout <= 3600:
        raise CliError(f"--timeout must be between 0 and 3600 seconds, not {ns.timeout:g}")
    options = redis_options(ns)

    async def go() -> int:
        registry = Registry(options, check_name("cluster name", ns.cluster), timeout=2.0)
        try:
            return await registry.remove(ns.name, wait=ns.timeout, force=ns.force)
        except ChangeWaiting as exc:
            raise CliError(f"{ns.name} not removed (nothing written) after {ns.timeout:g} s: "
                           f"{exc}; if a majority of the members is down for good, see "
                           "--force") from None
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
    except NoCluster as exc:
        raise CliError(str(exc)) from None
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


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _polling(p: argparse.ArgumentParser) -> None:
    """The options of a command that asks every member for its /status."""
    p.add_argument("--timeout", type=float, default=1.0, help="per-node timeout in s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tls_arguments(p, node=False)


def read_cluster(ns: argparse.Namespace) -> tuple[Membership, TimingState, dict[str, Reply]]:
    """The membership and timing record from Redis, and every member's /status answer."""
    options = redis_options(ns)
    tls = tls_from_args(ns)
    cluster = check_name("cluster name", ns.cluster)

    async def go() -> tuple[Membership, TimingState, dict[str, Reply]]:
        registry = Registry(options, cluster, timeout=2.0)
        try:
            membership = await registry.read()
            timing = await registry.read_timing()
        finally:
            await registry.close()
        addresses = {n: m.address for n, m in sorted(membership.members.items())}
        return membership, timing, await fetch_statuses(addresses, ns.timeout, tls)

    result: tuple[Membership, TimingState, dict[str, Reply]] = _redis(options, go)
    return result


def cmd_status(argv: Sequence[str]) -> int:
    p = _Parser(prog="ddg-node status", description="Show every member's answer, one row each.")
    _common(p)
    _polling(p)
    ns = p.parse_args(argv)
    membership, timing, replies = read_cluster(ns)
    if ns.json:
        members = {n: r.status.to_json() if r.status is not None else {"error": r.error}
                   for n, r in replies.items()}
        print(json.dumps({"version": membership.version, "members": members,
                          "timing": timing_json(timing)}, indent=2))
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
    print_table(rows)
    silent = [n for n, r in replies.items() if r.status is None]
    for name in silent:
        print(f"{name} does not answer; if it is gone for good: ddg-node remove {name}"
              f"{'' if ns.cluster == DEFAULT_CLUSTER else ' --cluster ' + ns.cluster}")
    print(f"timing: {timing_line(timing)}")
    return 0


# ---- the cluster's timing ---------------------------------------------------------------


def timing_line(state: TimingState) -> str:
    """One line: the cluster's timing, any change in progress and whom it waits for."""
    rec = state.record
    if rec is None:
        return (f"unusable record ({state.problem})" if state.problem else
                "no record yet (a cluster made by an older version: its goose writes one)")
    line = rec.describe()
    if rec.changing:
        line += (f"; waiting for {', '.join(state.waiting_for)} to confirm"
                 if state.waiting_for else "; every member confirmed: finishing")
    return line


def _joint_json(t: JointTiming) -> dict[str, Any]:
    return {"heartbeat_ms": round(t.heartbeat * 1000, 3),
            "election_timeout_ms": [round(t.election_min * 1000, 3),
                                    round(t.election_max * 1000, 3)],
            "lease_ms": round(t.lease * 1000, 3), "lease_wait_ms": round(t.lease_wait * 1000, 3)}


def timing_json(state: TimingState) -> dict[str, Any] | None:
    rec = state.record
    if rec is None:
        return None if state.problem is None else {"problem": state.problem}
    return {"epoch": rec.epoch, "changing": rec.changing,
            "target": {"label": rec.target.label, **rec.target.to_json()},
            "timings": [{"label": t.label, **t.to_json()} for t in rec.timings],
            "in_force": _joint_json(rec.joint), "fingerprint": rec.fingerprint,
            "confirmed": sorted(state.confirmed), "waiting_for": list(state.waiting_for)}


def _config_parser(sub: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"ddg-node config {sub}", description=description)
    _common(p)
    return p


def cmd_config(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("show", "set"):
        p = _Parser(prog="ddg-node config",
                    description="Show or change the cluster's timing: `ddg-node config show`, "
                                "`ddg-node config set --timing fast`.")
        p.add_argument("what", choices=("show", "set"))
        p.parse_args(argv[:1])
        return 2
    return (cmd_config_show if argv[0] == "show" else cmd_config_set)(argv[1:])


def cmd_config_show(argv: Sequence[str]) -> int:
    p = _config_parser("show", "The cluster's timing (from Redis), any change in progress, "
                               "and the timing each member answers with.")
    _polling(p)
    ns = p.parse_args(argv)
    cluster = ns.cluster
    membership, state, replies = read_cluster(ns)
    if membership.cluster_id is None and not membership.members:
        raise CliError(f"cluster {cluster!r} does not exist in Redis at "
                       f"{redis_options(ns).shown}")
    if ns.json:
        members = {name: {"error": r.error} if r.status is None else
                   {"epoch": r.status.timing.epoch, "timings": list(r.status.timing.timings),
                    "confirmed": name in state.confirmed}
                   for name, r in replies.items()}
        print(json.dumps({"cluster": cluster, "record": timing_json(state), "members": members},
                         indent=2))
        return 0
    rec = state.record
    print(f"cluster {cluster}: {timing_line(state)}")
    if rec is not None:
        for t in rec.timings:
            mark = "target" if t == rec.target else "in force"
            print(f"  {mark:8}  {t.label}: {_values(t)}")
        if rec.changing:
            print(f"  every node runs the joint timing until all confirm: "
                  f"{_joint_values(rec.joint)}")
    rows = [("MEMBER", "EPOCH", "CONFIRMED", "RUNS")]
    for name, r in replies.items():
        st = r.status
        confirmed = "yes" if name in state.confirmed else "no"
        if st is None:
            rows.append((name, "-", confirmed, f"does not answer: {r.error}"))
        else:
            epoch = "-" if st.timing.epoch is None else str(st.timing.epoch)
            rows.append((name, epoch, confirmed, " + ".join(st.timing.timings)))
    print_table(rows)
    return 0


def _values(t: Timing) -> str:
    return (f"heartbeat {t.heartbeat_ms} ms, election timeout {t.election_timeout_min_ms}-"
            f"{t.election_timeout_max_ms} ms, lease {t.lease * 1000:g} ms (a new goose waits "
            f"{t.lease_wait * 1000:g} ms)")


def _joint_values(t: JointTiming) -> str:
    return (f"heartbeat {t.heartbeat * 1000:g} ms, election timeout {t.election_min * 1000:g}-"
            f"{t.election_max * 1000:g} ms, lease {t.lease * 1000:g} ms, wait "
            f"{t.lease_wait * 1000:g} ms")


def cmd_config_set(argv: Sequence[str]) -> int:
    p = _config_parser("set", "Change the running cluster's timing. The nodes run the new and "
                              "the old together (the safe combination of both) until every "
                              "member has confirmed, then the new one alone: no election, no "
                              "restart. A member that is down holds the change until it is "
                              "back or removed.")
    _timing_flags(p, node=False)
    p.add_argument("--wait", action="store_true",
                   help="wait until every node runs the new timing alone")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="with --wait: give up after this many seconds (default %(default)s)")
    ns = p.parse_args(argv)
    if not timing_given(ns):
        p.error("give the new timing: --timing NAME, or any of --heartbeat-ms, "
                "--election-timeout-ms, --lease-ms")
    if not 0 < ns.timeout <= 3600:
        p.error("--timeout must be more than 0 and at most 3600 s")
    options = redis_options(ns)
    cluster = check_name("cluster name", ns.cluster)
    if ns.timing is not None:
        timing_from_args(ns)  # a bad value is an error before Redis is asked

    async def go() -> tuple[str, TimingRecord]:
        registry = Registry(options, cluster, timeout=2.0)
        try:
            before, changed = await registry.change_timing(
                lambda target: timing_from_args(ns, base=target))
        finally:
            await registry.close()
        if changed is None:
            what = "a change to it is in progress" if before.changing else "nothing to do"
            return (f"cluster {cluster} already has timing {before.target.label} as its "
                    f"target (epoch {before.epoch}): {what}"), before
        return (f"cluster {cluster}: timing change to {changed.target.label} as epoch "
                f"{changed.epoch}; every node runs it with "
                f"{', '.join(t.label for t in before.timings)} until all confirm"), changed

    message, record = _redis(options, go)
    print(message)
    if not ns.wait:
        return 0
    return _wait_for_timing(options, cluster, record, ns.timeout)


def _wait_for_timing(options: RedisOptions, cluster: str, record: TimingRecord,
                     timeout: float) -> int:
    """Until the record is RECORD's target alone (a later change by someone else: said)."""
    async def go() -> tuple[bool, str]:
        registry = Registry(options, cluster, timeout=2.0)
        deadline = time.monotonic() + timeout
        line = ""
        try:
            while time.monotonic() < deadline:
                state = await registry.read_timing()
                rec = state.record
                line = timing_line(state)
                if rec is not None and rec.target != record.target:
                    return False, f"the timing was changed again meanwhile: {line}"
                if rec is not None and not rec.changing and rec.epoch > record.epoch - 1:
                    return True, f"every member runs {rec.target.label} (epoch {rec.epoch})"
                await asyncio.sleep(0.05)
        finally:
            await registry.close()
        return False, f"not done after {timeout:g} s: {line}"

    done, line = _redis(options, go)
    if not done:
        raise CliError(line)
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"remove": cmd_remove, "status": cmd_status, "watch": cmd_watch,
                "config": cmd_config}
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
