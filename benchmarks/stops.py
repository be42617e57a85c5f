"""Stop benchmark: real ddg-node processes sent SIGTERM, the time until each process has exited.

Three kinds, on one cluster of 5 nodes (each stopped node is started again, and the cluster
settles on one goose, before the next stop):
  single   SIGTERM one node, at random (the goose hands over first; a duck just leaves)
  all      SIGTERM all five at once (what the supervisor's close() does)
  frozen   freeze one node (SIGSTOP) for 0.2-1 s, then SIGCONT and SIGTERM every node at once:
           the frozen one's overdue timers all fire as its SIGTERM arrives (issue 16)

Each figure is one process: from just before its SIGTERM to its exit, as the kernel reports
it (a pidfd turns readable), not as a poll sees it. The table also gives the time from the
node's `stopped` log line to its exit (the interpreter's own way out), and how many exits were
not clean (a code other than 0: 70 is a stop its deadline had to force, see ddg/node/stopping.py).
The default counts make 500 stops: 200 single, 30 rounds of all (150), 30 of frozen (150).

    .venv/bin/python -m benchmarks.stops [--single 200] [--all 30] [--frozen 30]
        [--node-arg=--timing=fast ...] [--seed 1] [--json FILE]

from the repository root: it uses the test kit (ddg_testkit), which is not installed.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddg_testkit import LocalCluster
from ddg_testkit.cluster import node_said

from . import common
from .common import Stats

KINDS = ("single", "all", "frozen")
NODES = 5
EXIT_WAIT = 10.0  # a process still there this long after its SIGTERM is SIGKILLed (a stall)
FREEZE = (0.2, 1.0)  # s a frozen node stays frozen before its SIGCONT and SIGTERM


@dataclass(kw_only=True, slots=True)
class KindRow:
    kind: str
    what: str
    exits_ms: list[float] = field(default_factory=list)  # SIGTERM -> exit, per process
    after_stopped_ms: list[float] = field(default_factory=list)  # `stopped` line -> exit
    unclean: dict[str, int] = field(default_factory=dict)  # "n3 round 7" -> exit code
    stalls: int = 0  # still running EXIT_WAIT s after SIGTERM (SIGKILLed)

    def to_json(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float] | None:
            s = Stats.of(values)
            return None if s is None else {k: round(v, 2) for k, v in
                                           (("median", s.median), ("p95", s.p95),
                                            ("p99", s.p99), ("max", s.max), ("min", s.min))}
        return {"kind": self.kind, "what": self.what, "n": len(self.exits_ms),
                "exit_ms": stats(self.exits_ms),
                "after_stopped_ms": stats(self.after_stopped_ms),
                "unclean": self.unclean, "stalls": self.stalls,
                "exits_ms": [round(t, 2) for t in self.exits_ms]}


def settle(c: LocalCluster) -> str:
    """Every node up, one goose, everyone following it with the full membership."""
    return c.wait_followed(timeout=30, also=lambda _, sts: all(
        len(st.members) == NODES for st in sts.values()),
        what="one goose that every node follows, with every member")


def stopped_at(c: LocalCluster, name: str) -> float | None:
    """The wall-clock time of NAME's last `stopped` log line (local time, ms)."""
    stops = [at for at, said in node_said(c.log_tail(name, 30))
             if said.startswith("stopped (exit code")]
    return stops[-1].timestamp() if stops else None


def stop(c: LocalCluster, names: Sequence[str], row: KindRow, label: str,
         frozen: str | None = None) -> None:
    """SIGCONT and SIGTERM NAMES back to back; record each one's exit as the kernel reports
    it, then start them again."""
    pids = {name: c.pid(name) for name in names}
    pidfds = {os.pidfd_open(pid): name for name, pid in pids.items() if pid is not None}
    sent: dict[str, float] = {}
    try:
        for name in names:
            sent[name] = time.monotonic()
            c.terminate(name)  # SIGCONT (the frozen one thaws here), then SIGTERM
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        left = dict(pidfds)
        deadline = max(sent.values()) + EXIT_WAIT
        while left and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                now, wall = time.monotonic(), time.time()
                name = left.pop(fd)
                poller.unregister(fd)
                row.exits_ms.append(1000 * (now - sent[name]))
                code = c.wait(name, 5)
                if code != 0:
                    row.unclean[f"{name} {label}"] = -999 if code is None else code
                at = stopped_at(c, name)
                if at is not None:
                    row.after_stopped_ms.append(1000 * (wall - at))
        for name in left.values():
            row.stalls += 1
            row.exits_ms.append(1000 * EXIT_WAIT)
            print(f"  {row.kind} {label}: {name} still ran {EXIT_WAIT:.0f} s after SIGTERM"
                  f"{' (the frozen one)' if name == frozen else ''}; its log ends:\n"
                  f"{c.log_tail(name)}", flush=True)
            c.kill(name)
            c.wait(name, 5)
    finally:
        for fd in pidfds:
            os.close(fd)
    for name in names:
        c.restart(name)


def run_kind(c: LocalCluster, kind: str, count: int, rng: random.Random) -> KindRow:
    row = KindRow(kind=kind, what={
        "single": "SIGTERM one node (goose or duck)",
        "all": f"SIGTERM all {NODES} at once",
        "frozen": f"one of {NODES} frozen {FREEZE[0]:g}-{FREEZE[1]:g} s, then SIGCONT + "
                  "SIGTERM all at once"}[kind])
    for i in range(count):
        goose = settle(c)
        names = list(c.names)
        label = f"round {i + 1}"
        frozen = None
        if kind == "single":
            names = [rng.choice(names)]
            label += " (goose)" if names[0] == goose else ""
        else:
            rng.shuffle(names)
        if kind == "frozen":
            frozen = rng.choice(names)
            c.pause(frozen)
            time.sleep(rng.uniform(*FREEZE))  # the fault's length
        before = len(row.exits_ms)
        stop(c, names, row, label, frozen)
        took = row.exits_ms[before:]
        print(f"  {kind} {i + 1:3d}/{count}: {len(took)} exit(s), slowest "
              f"{max(took):.0f} ms" + (f" ({frozen} was frozen)" if frozen else ""),
              flush=True)
    return row


def table(rows: Sequence[KindRow]) -> str:
    head = (f"{'kind':<8} {common.STATS_HEAD}   {'stopped->exit med/max':>21}  "
            f"{'unclean':>7}  what")
    lines = [head, "-" * len(head)]
    for r in rows:
        a = Stats.of(r.after_stopped_ms)
        gap = f"{common.ms(a.median if a else None)}/{common.ms(a.max if a else None)} ms"
        unclean = len(r.unclean) + r.stalls
        lines.append(f"{r.kind:<8} {common.stats_cells(r.exits_ms)}   {gap:>21}  "
                     f"{unclean:>7}  {r.what}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single", type=int, default=200, help="single-node stops (default 200)")
    p.add_argument("--all", type=int, default=30,
                   help=f"rounds of all {NODES} at once (default 30)")
    p.add_argument("--frozen", type=int, default=30,
                   help="rounds of all at once with one frozen (default 30)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="passed to every ddg-node (repeatable)")
    p.add_argument("--seed", type=int, default=1, help="seed for the choices and freezes")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    return p


def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[KindRow] = []
    with LocalCluster(cluster="stops") as c:
        for _ in range(NODES):
            c.add(extra_args=args.node_arg)
        for kind in KINDS:
            count = getattr(args, kind)
            if count > 0:
                rows.append(run_kind(c, kind, count, rng))
    m = common.machine()
    everything = [t for r in rows for t in r.exits_ms]
    print("\n" + "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['kernel']}, "
        f"load {load_before} before, {m['load_average']} after, {m['date']}",
        f"node args: {args.node_arg or '(none)'}; {len(everything)} stops",
        "",
        "ms from a node's SIGTERM to its process's exit (the kernel's word: a pidfd)",
        table(rows),
        "",
        f"slowest exit of all {len(everything)}: {max(everything, default=0):.0f} ms",
    ]))
    for r in rows:
        for what, code in r.unclean.items():
            print(f"unclean exit: {r.kind} {what}: code {code}")
    if args.json:
        common.write_json(args.json, {"machine": m, "load_before": load_before,
                                      "node_args": args.node_arg,
                                      "kinds": [r.to_json() for r in rows]})
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    ns = parser().parse_args()
    if min(ns.single, ns.all, ns.frozen) < 0:
        parser().error("counts must not be negative")
    try:
        main(ns)
    except KeyboardInterrupt:
        sys.exit(130)  # the cluster's context manager has stopped its processes by now
