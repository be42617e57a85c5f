"""The floating IP (`ddg-node --vip`) on the multi-host bed (root): 3 nodes on hosts of their
own, a client host asking http://VIP:PORT/ every 10 ms and every node's own address as
often, every host's addresses read every 10 ms (ddg_testkit.vipbed), through SIGKILLs (then a
restart), link cuts and freezes (SIGSTOP for longer than the election timeout) of the goose.

Per fault kind: the time from the fault to the first `goose` through the VIP, next to the time
to the first `goose` on another node's own address (the failover as any client sees it); the
answers through the VIP by what they said; the readings with two holders of the address.

    .venv/bin/python -m benchmarks.vip [--kills 30] [--cuts 10] [--freezes 10]

from the repository root (it uses the test kit). Exit 1 if any reading had two holders or any
answer through the VIP was not `goose`.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import machine, stats_line
from ddg_testkit import hosts
from ddg_testkit.vipbed import VipBed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--cuts", type=int, default=10)
    p.add_argument("--freezes", type=int, default=10)
    p.add_argument("--nodes", type=int, default=3)
    args = p.parse_args()
    reason = hosts.missing_prerequisites()
    if reason is not None:
        print(f"benchmarks.vip: {reason}", file=sys.stderr)
        return 2
    plan = ["kill"] * args.kills + ["cut"] * args.cuts + ["freeze"] * args.freezes
    plan = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i % 5, i))]  # mixed
    started = time.monotonic()
    vb = VipBed(args.nodes)
    try:
        vb.start(stale=vb.names[1:])
        for i, kind in enumerate(plan, 1):
            f = vb.fault(kind)  # type: ignore[arg-type]
            print(f"{i:3}/{len(plan)} {kind:6} {f.old}->{f.new}: VIP {f.vip_ms:6.1f} ms, "
                  f"direct {f.direct_ms:6.1f} ms", file=sys.stderr, flush=True)
    finally:
        report = vb.close()
    print(" ".join(f"{k}={v}" for k, v in machine().items()))
    print(f"{args.nodes} nodes, default timing; {time.monotonic() - started:.0f} s in all")
    for kind in ("kill", "cut", "freeze", "all"):
        fs = [f for f in report.failovers if kind in ("all", f.fault)]
        if fs:
            print(stats_line(f"{kind:6} through the VIP", [f.vip_ms for f in fs]))
            print(stats_line(f"{kind:6} direct (crash failover)",
                             [f.direct_ms for f in fs]))
    print(f"address readings: {report.samples} (longest between two "
          f"{report.max_sample_gap_ms:.1f} ms), with two holders: {len(report.two_holders)}")
    if report.handovers_ms:
        print(stats_line("one host's removal to another's add (the keepers' logs)",
                         report.handovers_ms))
    print(f"holds in the keepers' logs: {len(report.held)}, overlapping: {len(report.overlaps)}"
          f"; removals by reason: {report.removals}")
    print(f"answers through the VIP: {report.vip_answers}; not goose: {report.not_goose}")
    return 1 if report.two_holders or report.not_goose or report.overlaps else 0


if __name__ == "__main__":
    sys.exit(main())
