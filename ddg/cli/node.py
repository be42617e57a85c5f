"""`ddg-node`: run one node in the foreground; `remove`, `status`, `watch` and `config` go to
their commands (ddg.cli.admin, ddg.cli.watch)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ddg import __version__
from ddg.cli.args import (
    CliError,
    Parser,
    add_job_arguments,
    add_redis_arguments,
    add_timing_arguments,
    add_tls_arguments,
    env,
    job_configs,
    optional_path,
    redis_password,
    timing_from_args,
    timing_given,
    tls_from_args,
)
from ddg.election.clockrate import max_rate_error
from ddg.election.names import check_name
from ddg.election.timing import Timing
from ddg.errors import (
    ConfigError,
    DdgError,
    Removed,
)
from ddg.net import auth
from ddg.node.config import NodeConfig, default_data_dir
from ddg.node.stopping import exit_now, stop_deadline
from ddg.ops.logs import JsonFormatter
from ddg.ops.sdnotify import Notifier
from ddg.ops.vip import VipConfig, check_host

_MARGIN = Timing().drift_margin
_RATE = f"{max_rate_error(_MARGIN):.1%}"  # the clock-rate bound, stated in --help
_FACTOR = f"{1 / _MARGIN:g}x"
RUN_EPILOG = f"""\
other commands:
  ddg-node remove NAME... [--redis-url URL] [--cluster NAME] [--timeout S]
                     remove members from the cluster for good (alive or dead), one at a
                     time, each once a majority confirmed the current membership version
  ddg-node data-dirs [--prune [--yes]] [--redis-url URL]
                     this host's data dirs, and whether each is still a member
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
  SIGKILL --exec-grace-ms later. --on-change CMD runs CMD ROLE TERM GOOSE when this node
  becomes the goose, stops being it, or follows a goose it has not named before (a duck's
  GOOSE is never empty, but right after it stepped down as the goose).

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
  Rotating the secret without an outage: a node may hold several (comma-separated in
  DDG_CLUSTER_SECRET, one a line in --cluster-secret-file); it signs with the first and
  accepts any. Add the new one second on every node, then make it first on every node, then
  drop the old one; SIGHUP makes a node read --cluster-secret-file again, with no restart
  (docs/operations.md, "Rotating secrets").

clocks:
  The lease assumes every node's monotonic clock runs within {_RATE} of real time (drift
  margin {_MARGIN:g}: no clock more than {_FACTOR} as fast as another's; docs/design.md). A node
  whose clock rate a majority of its peers' clocks contradict logs an error and does not
  lead until they agree again (/status `clock`, metric ddg_clock_contradicted).

environment (used when the flag is not given):
  DDG_HTTP_PORT, DDG_HOST, DDG_ADVERTISE_URL, DDG_NODE_NAME, DDG_REDIS_URL,
  DDG_REDIS_PASSWORD, DDG_REDIS_CA, DDG_REDIS_CERT, DDG_REDIS_KEY, DDG_CLUSTER, DDG_DATA_DIR,
  DDG_CLUSTER_SECRET, DDG_BOOTSTRAP, DDG_LOG_FORMAT, DDG_TIMING, DDG_TLS_CERT, DDG_TLS_KEY,
  DDG_TLS_CA, DDG_TLS_CLIENT_AUTH, DDG_LOOP

endpoints: GET / (goose|duck), GET /status (JSON), GET /healthz, GET /metrics (Prometheus),
GET /watch (Server-Sent Events); peers POST /raft/vote, /raft/heartbeat, /raft/timeout_now,
and each duck holds GET /raft/hold/NAME open to its goose (its sudden end: a crash hint).
SIGTERM or Ctrl-C stops the node gracefully (a goose hands over first); it stays a member.
A second one, or a stop still running after 3 s (plus the minimum election timeout and
--exec-grace-ms), ends it at once: exit code 128+signal, or 70 (docs/operations.md).
"""


def run_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ddg-node", description="Run one DuckDuckGoose node in the foreground.",
                epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ddg-node {__version__}")
    p.add_argument("--name", default=env("DDG_NODE_NAME"),
                   help="node name, unique in the cluster (env DDG_NODE_NAME; default HOST-PORT)")
    p.add_argument("--host", default=env("DDG_HOST", "127.0.0.1"),
                   help="address to serve HTTP on (env DDG_HOST; default %(default)s)")
    p.add_argument("--port", type=int, default=None,
                   help="HTTP port (env DDG_HTTP_PORT); required")
    p.add_argument("--advertise-url", default=env("DDG_ADVERTISE_URL"), metavar="URL",
                   help="the URL peers and the console use to reach this node, e.g. "
                        "http://10.0.0.5:4001 (env DDG_ADVERTISE_URL; default: from --host and "
                        "--port; required when --host is 0.0.0.0 or ::)")
    p.add_argument("--bootstrap", action="store_true",
                   default=(env("DDG_BOOTSTRAP") or "").lower() in ("1", "true", "yes"),
                   help="create the cluster if Redis holds none (once, on the first node of a "
                        "new cluster; ignored when the cluster exists; env DDG_BOOTSTRAP=1)")
    add_redis_arguments(p)
    p.add_argument("--data-dir", default=env("DDG_DATA_DIR"),
                   help="where term and vote are kept (env DDG_DATA_DIR; default "
                        "$XDG_STATE_HOME/ddg/CLUSTER/NAME)")
    add_timing_arguments(p, node=True)
    p.add_argument("--cluster-secret", default=None,
                   help="sign peer messages with this shared secret (env DDG_CLUSTER_SECRET; "
                        "prefer the env or --cluster-secret-file: flags show in `ps`). "
                        "Several, comma-separated: signs with the first, accepts any (a "
                        "rotation); each at least 8 bytes")
    p.add_argument("--cluster-secret-file", metavar="FILE",
                   help="read the cluster secret from FILE; several, one a line: signs with "
                        "the first, accepts any. SIGHUP reads FILE again (a bad file keeps "
                        "the secrets in use), so a rotation needs no restart")
    p.add_argument("--allow-fault-injection", action="store_true",
                   help="enable POST /admin/partition, /admin/heal and /admin/fault/* "
                        "(for tests and demos)")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default %(default)s)")
    p.add_argument("--log-format", choices=("text", "json"),
                   default=env("DDG_LOG_FORMAT", "text"),
                   help="text, or json: one object per line with ts, level, node, cluster, "
                        "event, term, msg (env DDG_LOG_FORMAT; default %(default)s)")
    add_tls_arguments(p, node=True)
    add_job_arguments(p)
    p.add_argument("--vip", metavar="ADDR/PREFIX", default=env("DDG_VIP"),
                   help="a floating IPv4 address only the goose holds, on --vip-dev: added "
                        "(and announced with arping -U) when this node becomes the goose, "
                        "removed before its lease ends (env DDG_VIP)")
    p.add_argument("--vip-dev", metavar="DEV", default=env("DDG_VIP_DEV"),
                   help="the network interface for --vip (env DDG_VIP_DEV)")
    p.add_argument("--loop", choices=LOOPS, default=env("DDG_LOOP", "asyncio"),
                   help="the event loop: asyncio (the standard library's), uvloop (pip "
                        "install 'duckduckgoose[fast]'), or auto: uvloop when installed, else "
                        "asyncio (env DDG_LOOP; default %(default)s)")
    return p


LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop --loop CHOICE asks for (None: asyncio's own). Not uvloop by default:
    at rest it saved a node 3-10 % of its CPU and cost it 2 MiB more memory (README, "Cost at
    rest"), where the time goes to the peer requests, not to the loop."""
    if choice not in LOOPS:
        raise ConfigError(f"--loop (or DDG_LOOP) must be one of {', '.join(LOOPS)}, "
                          f"not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop  # optional: the [fast] extra
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed (pip install "
                              "'duckduckgoose[fast]', or --loop asyncio)") from None
        return None
    return uvloop.new_event_loop


def vip_config(ns: argparse.Namespace) -> VipConfig | None:
    if ns.vip is None and ns.vip_dev is None:
        return None
    if ns.vip is None or ns.vip_dev is None:
        raise ConfigError("--vip ADDR/PREFIX and --vip-dev DEV go together")
    config = VipConfig(address=ns.vip, device=ns.vip_dev)
    check_host(config)
    return config


def cluster_secrets(ns: argparse.Namespace) -> tuple[tuple[bytes, ...], Path | None]:
    """The cluster secrets (the first signs) and the file they came from, if one did."""
    if not ns.cluster_secret and ns.cluster_secret_file:
        path = Path(ns.cluster_secret_file).absolute()
        return auth.read_secrets(path), path
    where, value = (("--cluster-secret", ns.cluster_secret) if ns.cluster_secret
                    else ("DDG_CLUSTER_SECRET", env("DDG_CLUSTER_SECRET")))
    if not value:
        return (), None
    try:
        return auth.parse_secrets(value, separator=","), None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_from_args(ns: argparse.Namespace) -> NodeConfig:
    port = ns.port
    if port is None:
        raw = env("DDG_HTTP_PORT")
        if raw is None:
            raise ConfigError("--port (or DDG_HTTP_PORT) is required")
        try:
            port = int(raw)
        except ValueError:
            raise ConfigError(f"DDG_HTTP_PORT={raw!r} is not a port number") from None
    name = ns.name or f"{ns.host}-{port}"
    cluster = check_name("cluster name", ns.cluster)
    timing = timing_from_args(ns)
    secrets, secret_file = cluster_secrets(ns)
    data_dir = Path(ns.data_dir) if ns.data_dir else default_data_dir(cluster, check_name(
        "node name", name))
    job, on_change = job_configs(ns)
    return NodeConfig(
        job=job, on_change=on_change, vip=vip_config(ns),
        name=name, host=ns.host, port=port, redis_url=ns.redis_url, cluster=cluster,
        data_dir=data_dir, timing=timing, timing_explicit=timing_given(ns),
        secret=secrets[0] if secrets else None, extra_secrets=secrets[1:],
        secret_file=secret_file,
        redis_password=redis_password(ns), redis_ca_file=optional_path(ns.redis_ca),
        redis_cert_file=optional_path(ns.redis_cert), redis_key_file=optional_path(ns.redis_key),
        advertise_url=ns.advertise_url,
        bootstrap=ns.bootstrap, allow_fault_injection=ns.allow_fault_injection,
        log_level=ns.log_level.upper(), log_format=ns.log_format, tls=tls_from_args(ns),
    )


def setup_logging(level: str, name: str, *, log_format: str = "text",
                  cluster: str = "") -> JsonFormatter | None:
    """Log to stderr; returns the JSON formatter when that is the format (ddg/ops/logs.py)."""
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
    ns = run_parser().parse_args(argv)
    config = config_from_args(ns)
    from ddg.node.node import Node  # after the flags: a bad one is refused at once

    new_loop = loop_factory(ns.loop)
    json_logs = setup_logging(config.log_level, config.name, log_format=config.log_format,
                              cluster=config.cluster)

    async def run() -> int:
        node = Node(config, stop_deadline=stop_deadline(config),
                    notify=Notifier.from_environ())
        if json_logs is not None:  # every line carries the term the node is in
            json_logs.term = lambda: None if node.core is None else node.core.term
        try:
            return await node.run()
        except DdgError as exc:
            if json_logs is None:
                raise  # main() prints it, as it always has
            logging.getLogger("ddg.node").critical("%s", exc, extra={"event": "failed"})
            return Removed.EXIT_STATUS if isinstance(exc, Removed) else 1

    # Everything is closed and logged: skip the interpreter's teardown (ddg/node/stopping.py).
    with asyncio.Runner(loop_factory=new_loop) as runner:
        code = runner.run(run())
    exit_now(code)


# ddg-node's other commands: the module of each one's cmd_NAME(argv).
COMMANDS = {"remove": "ddg.cli.admin", "status": "ddg.cli.admin", "config": "ddg.cli.admin",
            "watch": "ddg.cli.watch", "data-dirs": "ddg.cli.datadirs"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            # Imported when asked for: their HTTP client (httpx) is no part of a running node.
            module = importlib.import_module(COMMANDS[args[0]])
            name = "cmd_" + args[0].replace("-", "_")
            command: Callable[[Sequence[str]], int] = getattr(module, name)
            return command(args[1:])
        return cmd_run(args)
    except (DdgError, CliError) as exc:
        print(f"ddg-node: error: {exc}", file=sys.stderr)
        return Removed.EXIT_STATUS if isinstance(exc, Removed) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ddg-node status --json | head`: the reader left; that is not an error. Point
        # stdout at /dev/null so that the interpreter's final flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
