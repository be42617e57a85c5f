"""`ddg-node watch [URL]`: a node's changes as they happen, one line each (or JSON), until
interrupted. It reconnects with the backoff and Last-Event-ID, so a restart of the node or a
dropped connection costs no event while the node lives (ddg.client.watch)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from ddg.cli.args import add_tls_arguments, tls_from_args
from ddg.client.events import WatchEvent
from ddg.client.http import watch
from ddg.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def watch_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddg-node watch",
                description="Print a node's role, term, goose and membership changes as they "
                            "happen: its state first, then one line per change. Reconnects "
                            "by itself; Ctrl-C stops it.")
    p.add_argument("url", nargs="?", default=None,
                   help="the node, e.g. http://127.0.0.1:4001 or just 4001 (default: "
                        "http://127.0.0.1:$DDG_HTTP_PORT)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--last-event-id", type=int, default=None, metavar="ID",
                   help="resume after this change id (from an earlier watch of this node)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="connect timeout in s (default %(default)s)")
    add_tls_arguments(p, node=False)
    return p


def node_url(arg: str | None) -> str:
    """URL, or a bare PORT on loopback, or http://127.0.0.1:$DDG_HTTP_PORT."""
    if arg is None:
        port = os.environ.get("DDG_HTTP_PORT")
        if not port:
            raise ConfigError("give the node's URL (e.g. http://127.0.0.1:4001) or set "
                              "DDG_HTTP_PORT")
        arg = port
    if arg.isdigit():
        return f"http://127.0.0.1:{arg}"
    if "://" not in arg:
        return f"http://{arg}"
    if not arg.startswith(("http://", "https://")):
        raise ConfigError(f"node URL {arg!r} must start with http:// or https://")
    return arg


def line(event: WatchEvent) -> str:
    """One human line: when (node's clock), node, role, term, goose, what it was, the id."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    stamp += f".{int(event.time * 1000) % 1000:03d}"
    text = (f"{stamp} {event.node} {event.role.value:<9} term {event.term:<4} "
            f"goose {event.goose or '-'}")
    if event.kind == "state":
        text += "  (current state" + (f"; after a gap: {event.gap})" if event.gap else ")")
    elif event.previous_role is not None and event.previous_role != event.role:
        text += f"  (was {event.previous_role.value})"
    return f"{text}  #{event.id}"


async def _watch(url: str, ns: argparse.Namespace) -> None:
    def retrying(reason: str, delay: float) -> None:
        print(f"ddg-node watch: {url}: {reason}; retrying in {delay:.1f} s", file=sys.stderr,
              flush=True)

    events = watch(url, last_event_id=ns.last_event_id, connect_timeout=ns.timeout,
                   on_retry=retrying, tls=tls_from_args(ns))
    async with contextlib.aclosing(events):
        async for event in events:
            text = json.dumps(event.to_json(), separators=(",", ":")) if ns.json else line(event)
            print(text, flush=True)


def cmd_watch(argv: Sequence[str]) -> int:
    ns = watch_parser().parse_args(argv)
    if not ns.timeout > 0:
        raise ConfigError(f"--timeout must be > 0, got {ns.timeout}")
    url = node_url(ns.url).rstrip("/")
    try:
        asyncio.run(_watch(url, ns))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): leave quietly, and keep Python from complaining
        # when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
