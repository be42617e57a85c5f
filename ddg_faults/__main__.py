"""`python -m ddg_faults`: run fault scenarios against real nodes in a private network namespace.

Re-executes itself under `unshare --net` (root only), brings the namespace's loopback up, runs
the scenarios and checks every recorded history. The bed-* scenarios (not in `all`) run on
the multi-host bed instead: a network namespace per node (ddg_testkit.hosts); there --secure runs
the nodes as operators do across hosts (HTTPS + mutual TLS + the secret + the least-ACL Redis
user) and --sentinels N puts Redis behind Sentinel (a master, a replica, N sentinels, each on a
host of its own; bed-soak then kills the master too). Exit status: 0
all held, 1 a violation, a failed expectation or a crashed node, 2 bad usage, 3 prerequisites
missing (not root, no iptables, unshare or iproute2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddg.errors import DdgError
from ddg.local.embedded import redis_server
from ddg_testkit import faketime, hosts
from ddg_testkit.hosts import BedConfig
from ddg_testkit.tools import iptables

from .bed import BedHarness, secured
from .checker import CheckConfig, quantile, summarize
from .harness import Harness, HarnessConfig, Outcome, RunConfig, ScenarioFailed
from .netns import in_private_netns, loopback_up, missing_prerequisites, reexec_in_private_netns
from .scenarios import SCENARIOS


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ddg_faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   help=f"all, or a comma-separated list of: {', '.join(SCENARIOS)}")
    p.add_argument("--seconds", type=float, default=None,
                   help="how long chaos runs (default 30 s)")
    p.add_argument("--steps", type=int, default=None,
                   help="run exactly this many chaos steps instead (for replaying a seed)")
    p.add_argument("--faults", type=int, default=None,
                   help="bed-soak: stop after this many faults (default 300)")
    p.add_argument("--seed", type=int, default=1, help="seed for random choices (default 1)")
    p.add_argument("--nodes", type=int, default=None,
                   help="cluster size for chaos and the size-agnostic scenarios")
    p.add_argument("--recovery-bound-ms", type=float, default=600.0,
                   help="a goose must answer within this of a majority reconnecting")
    p.add_argument("--settle-bound-ms", type=float, default=2000.0,
                   help="after a full heal, all nodes must agree on one goose within this")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep node logs and data under this directory")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="passed to every ddg-node, e.g. --node-arg=--timing=fast (repeatable)")
    p.add_argument("--clock-rate", action="append", default=[], metavar="NODE=RATE",
                   help="run NODE on a clock at RATE x real time (libfaketime; apt-get install "
                        "faketime), e.g. n1=0.5 (repeatable)")
    p.add_argument("--secure", action="store_true",
                   help="bed-*: HTTPS + mutual TLS + secret + the least-ACL Redis user")
    p.add_argument("--sentinels", type=int, default=0, metavar="N",
                   help="bed-*: Redis Sentinel with N sentinels (0: one redis-server)")
    p.add_argument("--down-after-ms", type=int, default=500,
                   help="bed-* with --sentinels: the sentinels' down-after-milliseconds")
    p.add_argument("-v", "--verbose", action="store_true", help="print every chaos step")
    ns = p.parse_args(argv)
    names = ([n for n, s in SCENARIOS.items() if s.in_all] if ns.scenario == "all"
             else ns.scenario.split(","))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if ns.nodes is not None and not 1 <= ns.nodes <= 15:
        p.error("--nodes must be 1-15")
    if not 0 <= ns.sentinels <= 7:
        p.error("--sentinels must be 0-7")
    ns.names = names
    ns.clock_rates = []
    for item in ns.clock_rate:
        node, _, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = 0.0
        if not node or not 0.01 <= value <= 100:
            p.error(f"--clock-rate {item!r} must look like NODE=RATE with RATE 0.01-100, "
                    "e.g. n1=0.5")
        ns.clock_rates.append((node, value))
    if ns.clock_rates and faketime.missing() is not None:
        p.error(f"--clock-rate: {faketime.missing()}")
    if ns.clock_rates and any(SCENARIOS[n].bed for n in names):
        p.error("--clock-rate runs on the loopback harness only, not the bed-* scenarios")
    for node, _ in ns.clock_rates:
        for name in names:
            if node not in {f"n{i}" for i in range(1, node_count(name, ns) + 1)}:
                p.error(f"--clock-rate names {node}, but scenario {name} runs "
                        f"n1-n{node_count(name, ns)}")
    return ns


def node_count(name: str, ns: argparse.Namespace) -> int:
    """How many nodes scenario NAME runs (--nodes changes the size-agnostic ones)."""
    if ns.nodes is not None and name not in ("initial-election", "re-election",
                                             "many-elections", "selftest-split-brain"):
        return int(ns.nodes)
    return SCENARIOS[name].nodes


def run_one(name: str, ns: argparse.Namespace) -> Outcome:
    scenario = SCENARIOS[name]
    nodes = node_count(name, ns)
    base = ns.keep / name if ns.keep else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    check = CheckConfig(recovery_bound=ns.recovery_bound_ms / 1000,
                        settle_bound=ns.settle_bound_ms / 1000)
    config = HarnessConfig(nodes=nodes, late=scenario.late, base_dir=base, check=check,
                           split_brain=name == "selftest-split-brain",
                           node_args=tuple(ns.node_arg), clock_rates=tuple(ns.clock_rates))
    pki = tempfile.TemporaryDirectory(prefix="ddg-faults-pki-")
    h: Harness = Harness(config)
    if scenario.bed:
        bed = BedConfig(nodes=nodes, base_dir=base, down_after_ms=ns.down_after_ms,
                        sentinels=max(ns.sentinels, scenario.sentinels))
        h = BedHarness(config, secured(Path(pki.name), bed) if ns.secure else bed)
    started = time.monotonic()
    try:
        h.start()
        scenario.run(h, RunConfig(seconds=ns.seconds, steps=ns.steps, seed=ns.seed,
                                  nodes=ns.nodes, faults=ns.faults))
    except ScenarioFailed as exc:
        h.fail(f"{exc}\n{h.cluster.describe()}")
    except Exception as exc:  # report, then still check what was recorded
        h.fail(f"harness error: {type(exc).__name__}: {exc}")
    try:
        outcome = h.finish(name, started)
    finally:
        h.close()
        pki.cleanup()
    if ns.verbose:
        for note in h.notes:
            print(f"    {note}")
    elif h.notes and name != "chaos":
        for note in h.notes:
            print(f"    {note}")
    return outcome


def print_outcome(o: Outcome) -> None:
    f = o.report.figures
    status = "ok" if o.ok else "FAILED"
    print(f"[{status}] {o.scenario}: {o.seconds:.1f} s, {f.faults} faults, "
          f"{len(o.report.violations)} violations, {len(o.failures)} failed expectations, "
          f"{len(o.crashes)} crashes, {f.observations} observations, {f.elections} elections")
    print(f"    failover {summarize(f.failovers)}; recovery {summarize(f.recoveries)}; "
          f"settle {summarize(f.settles)}; initial election {summarize(f.initial_elections)}")
    for v, tl in zip(o.report.violations, o.report.timelines, strict=True):
        print(f"  VIOLATION {v.rule}: {v.message}\n  timeline (ms since start):\n{tl}\n")
    for msg in o.failures:
        print(f"  FAILED: {msg}")
    for msg in o.crashes:
        print(f"  CRASH: {msg}")


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    figs = [o.report.figures for o in outcomes]
    failovers = [x for f in figs for x in f.failovers]
    recoveries = [x for f in figs for x in f.recoveries]
    initial = [x for f in figs for x in f.initial_elections]
    settles = [x for f in figs for x in f.settles]
    per_fault = [x for f in figs for x in f.elections_per_fault]

    def dist(xs: list[float]) -> dict[str, Any]:
        ms = [x * 1000 for x in xs]
        return {"n": len(ms), "median_ms": statistics.median(ms) if ms else None,
                "p95_ms": quantile(ms, 0.95) if ms else None, "max_ms": max(ms, default=None)}

    kinds: dict[str, int] = {}
    elections_by_kind: dict[str, int] = {}
    for f in figs:
        for k, n in f.fault_kinds.items():
            kinds[k] = kinds.get(k, 0) + n
        for k, n in f.elections_by_kind.items():
            elections_by_kind[k] = elections_by_kind.get(k, 0) + n
    majority = sum(f.majority_time for f in figs)
    gooseless = sum(f.gooseless_with_majority for f in figs)
    return {
        "scenarios": {o.scenario: {"ok": o.ok, "seconds": round(o.seconds, 1),
                                   "faults": o.report.figures.faults,
                                   "violations": [f"{v.rule}: {v.message}"
                                                  for v in o.report.violations],
                                   "failures": o.failures, "crashes": o.crashes,
                                   "notes": o.notes}
                      for o in outcomes},
        "faults": sum(f.faults for f in figs),
        "fault_kinds": dict(sorted(kinds.items())),
        "violations": sum(len(o.report.violations) for o in outcomes),
        "failures": sum(len(o.failures) for o in outcomes),
        "crashes": sum(len(o.crashes) for o in outcomes),
        "observations": sum(f.observations for f in figs),
        "elections": sum(f.elections for f in figs),
        "failover": dist(failovers),
        "recovery": dist(recoveries),
        "initial_election": dist(initial),
        "settle": dist(settles),
        "gooseless_with_majority_s": round(gooseless, 3),
        "majority_s": round(majority, 3),
        "elections_per_fault_mean": statistics.mean(per_fault) if per_fault else None,
        "elections_per_fault_max": max(per_fault, default=None),
        "elections_by_fault_kind": dict(sorted(elections_by_kind.items())),
        "unsettled_heals": sum(f.unsettled for f in figs),
        # fast kill-restarts: SIGKILL -> new process spawned, and -> new process answering
        "kill_restart": dist([a for o in outcomes for a, _ in o.respawns]),
        "kill_restart_answering": dist([b for o in outcomes for _, b in o.respawns]),
        # Sentinel failovers: master SIGKILL -> replica promoted, and -> every live node on it
        "redis_promoted": dist([a for o in outcomes for a, _ in o.redis_failovers]),
        "redis_nodes_on_new_master": dist([b for o in outcomes for _, b in o.redis_failovers]),
        "timing_changes": sum(o.timing_changes for o in outcomes),
        "timing_finalized": sum(o.timing_finalized for o in outcomes),
        "ok": all(o.ok for o in outcomes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(args)
    if not in_private_netns():
        reason = missing_prerequisites()
        if reason is None and any(SCENARIOS[n].bed for n in ns.names):
            reason = hosts.missing_prerequisites()
        if reason is None:
            try:
                redis_server()
            except DdgError as exc:
                reason = str(exc)
        if reason is not None:
            print(f"ddg_faults: cannot run: {reason}", file=sys.stderr)
            return 3
        reexec_in_private_netns(args)  # does not return
    loopback_up()
    tools = {"redis-server": redis_server().describe(), "iptables": iptables()[0].describe()}
    for tool in tools.values():
        print(f"using {tool}", flush=True)
    outcomes = []
    t0 = time.monotonic()
    for name in ns.names:
        print(f"--- {name}: {SCENARIOS[name].about}", flush=True)
        outcome = run_one(name, ns)
        print_outcome(outcome)
        sys.stdout.flush()
        outcomes.append(outcome)
    s = summary(outcomes)
    s["seconds"] = round(time.monotonic() - t0, 1)
    s["seed"] = ns.seed
    s["tools"] = tools

    def fmt(d: dict[str, Any]) -> str:
        if not d["n"]:
            return "n=0"
        return (f"n={d['n']} median={d['median_ms']:.0f} ms p95={d['p95_ms']:.0f} ms "
                f"max={d['max_ms']:.0f} ms")

    print("=== summary")
    print(f"scenarios {len(outcomes)} in {s['seconds']} s (seed {ns.seed}); faults injected "
          f"{s['faults']}; observations {s['observations']}; elections {s['elections']}")
    print("faults by kind: " + ", ".join(f"{k} {n}" for k, n in s["fault_kinds"].items()))
    print(f"violations {s['violations']}; failed expectations {s['failures']}; "
          f"crashes {s['crashes']}")
    print(f"failover (goose lost, majority connected -> next goose): {fmt(s['failover'])}")
    print(f"recovery (majority reconnected -> goose): {fmt(s['recovery'])}")
    print(f"settle (full heal -> all agree): {fmt(s['settle'])}")
    print(f"initial election (every node answering -> goose): {fmt(s['initial_election'])}")
    share = s["gooseless_with_majority_s"] / s["majority_s"] if s["majority_s"] else 0.0
    print(f"time without a goose while a majority was connected: "
          f"{s['gooseless_with_majority_s']:.2f} s of {s['majority_s']:.1f} s ({share:.1%})")
    if s["elections_per_fault_mean"] is not None:
        print(f"elections per fault: mean {s['elections_per_fault_mean']:.2f}, "
              f"max {s['elections_per_fault_max']}; after each kind (until the next fault): "
              + ", ".join(f"{k} {n}/{s['fault_kinds'].get(k, 0)}"
                          for k, n in s["elections_by_fault_kind"].items()))
    if s["kill_restart"]["n"]:
        print(f"kill-restart gap (SIGKILL -> new process spawned): {fmt(s['kill_restart'])}; "
              f"until it answers: {fmt(s['kill_restart_answering'])}")
    if s["timing_changes"]:
        print(f"timing changes (ddg-node config set): {s['timing_changes']}; waited for to "
              f"complete: {s['timing_finalized']}")
    if s["redis_promoted"]["n"]:
        print(f"Sentinel failover (master SIGKILL -> replica promoted): "
              f"{fmt(s['redis_promoted'])}; -> every live node on the new master: "
              f"{fmt(s['redis_nodes_on_new_master'])}")
    print("RESULT:", "ok" if s["ok"] else "FAILED")
    if ns.json is not None:
        ns.json.write_text(json.dumps(s, indent=2))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
