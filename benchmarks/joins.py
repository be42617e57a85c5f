"""Join and removal benchmark: what membership confirmations cost (docs/design.md, "One change
at a time is safe"). A join or removal is written only once a majority of the members have
confirmed the current version; a member confirms a version a lease wait (100 ms by default)
after it adopted it.

  single   a fresh node joins a settled 3-node cluster, then `ddg-node remove` takes it out
           again: from its spawn until it runs as a member (its /status no longer says
           `joining` and lists it), and the remove command's wall time
  burst    5 nodes spawned at once on an empty Redis (the first with --bootstrap): from the
           spawns until all five run as members and list all five (the nodes join one at a
           time now, each once the version before is confirmed)

    .venv/bin/python -m benchmarks.joins [--single 20] [--burst 5] [--json FILE]

from the repository root (it uses the test kit). Only portable Supervisor calls are used, so
the same file measures an older checkout (PYTHONPATH=that checkout) for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ddg_testkit import LocalCluster

from . import common
from .common import stats_line

POLL = 0.005  # s between two /status rounds while waiting for a join


def joined(c: LocalCluster, names: Iterable[str], timeout: float = 60.0) -> float:
    """Poll until every node of NAMES is a member and lists all of NAMES; the time then."""
    want = set(names)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = c.statuses(want)
        if all(st is not None and st.joining is None and want <= set(st.members)
               for st in sts.values()):
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"{','.join(sorted(want))} did not join within {timeout:g} s:\n"
                       + c.describe())


def single(rounds: int) -> tuple[list[float], list[float]]:
    joins: list[float] = []
    removes: list[float] = []
    with LocalCluster(log_level="INFO") as c:
        first = [c.add().name for _ in range(3)]
        joined(c, first)
        c.wait_goose(timeout=10)
        for i in range(rounds):
            t0 = time.monotonic()
            name = c.add(f"j{i}").name
            joins.append((joined(c, [*first, name]) - t0) * 1000)
            time.sleep(0.3)  # every member has confirmed the join: a healthy cluster again
            t0 = time.monotonic()
            out = c.remove(name)
            removes.append((time.monotonic() - t0) * 1000)
            if out.returncode != 0:
                raise RuntimeError(f"remove {name} failed: {out.stderr.strip()}")
            c.wait(name, 10)
            c.forget(name)
            time.sleep(0.3)
            print(f"single {i + 1}/{rounds}: join {joins[-1]:.0f} ms, remove "
                  f"{removes[-1]:.0f} ms", file=sys.stderr)
    return joins, removes


def burst(rounds: int, n: int = 5) -> list[float]:
    took: list[float] = []
    for i in range(rounds):
        with LocalCluster(log_level="INFO") as c:
            c.start_redis()
            t0 = time.monotonic()
            names = [c.add().name for _ in range(n)]
            took.append((joined(c, names) - t0) * 1000)
        print(f"burst {i + 1}/{rounds}: {took[-1]:.0f} ms", file=sys.stderr)
    return took


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.joins", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single", type=int, default=20, help="joins into a settled cluster")
    p.add_argument("--burst", type=int, default=5, help="rounds of five nodes at once")
    p.add_argument("--json", type=Path, help="write the figures here too")
    ns = p.parse_args(argv)
    joins, removes = single(ns.single)
    bursts = burst(ns.burst)
    print(f"joins and removals, {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(stats_line("join, settled 3-node cluster", joins))
    print(stats_line("ddg-node remove, settled cluster", removes))
    print(stats_line("5 nodes at once, until all joined", bursts))
    if ns.json is not None:
        out: dict[str, Any] = {"machine": common.machine(), "single_join_ms": joins,
                               "remove_ms": removes, "burst_5_ms": bursts}
        common.write_json(ns.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
