"""ddg-console: watch a DuckDuckGoose cluster live, break it, and watch it heal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from ddg.config import DEFAULT_CLUSTER, mask_url
from ddg.errors import ConfigError, DdgError

from .config import MAX_DEMO_NODES, ConsoleConfig, PollSettings
from .keys import epilog as keys_epilog

PROG = "ddg-console"

EPILOG = """\
examples:
  ddg-console --demo 3
      start a private Redis and 3 real ddg-node processes (with fault injection), show them;
      quitting stops every process it started and deletes its temp dir
  ddg-console --redis-url redis://10.0.0.5:6379/0 --cluster prod
      attach to a running cluster; quitting leaves its nodes alone

""" + keys_epilog()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
                        "--demo the nodes are started with it (env DDG_CLUSTER_SECRET)")
    p.epilog = ((p.epilog or "") + "\nA Redis password may come from DDG_REDIS_PASSWORD instead "
                "of the URL\n(so it is not in `ps`); the console never shows it.\n")
    return p


def parse_config(argv: Sequence[str] | None = None) -> ConsoleConfig:
    """Parse and validate; raises ConfigError (argparse errors exit 2 by themselves)."""
    args = build_parser().parse_args(argv)
    if args.demo is None and args.redis_url is None:
        # Only attaching reads the environment: a demo uses a Redis only when told so.
        args.redis_url = os.environ.get("DDG_REDIS_URL") or None
    cluster = args.cluster or ("demo" if args.demo is not None else DEFAULT_CLUSTER)
    poll = PollSettings(interval=args.poll_interval / 1000, timeout=args.timeout / 1000,
                        failover_interval=min(0.05, args.poll_interval / 1000))
    return ConsoleConfig(demo=args.demo, redis_url=args.redis_url, cluster=cluster,
                         secret=args.cluster_secret, poll=poll)


class _Terminated(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(signal.Signals(sig).name)
        self.sig = sig


def _raise_terminated(sig: int, _frame: FrameType | None) -> None:
    raise _Terminated(sig)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

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
            where = mask_url(config.redis_url) if config.redis_url else "an embedded Redis"
            print(f"{PROG}: starting {config.demo} nodes on {where}…", file=sys.stderr)
            redis_url = demo.launch()
        assert redis_url is not None
        source = LiveSource(redis_url=redis_url, cluster=config.cluster,
                            timeout=config.poll.timeout, secret=config.secret,
                            password=os.environ.get("DDG_REDIS_PASSWORD") or None)
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
    return code
