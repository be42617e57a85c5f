"""`--exec` jobs and `--on-change` hooks that fork, against SIGKILLs of the goose's node: the
issue's 30 kills, with figures.

Real Redis (embedded) and real ddg-node processes (ddg_testkit.LocalCluster). Every node runs
the forking tree of ddg_testkit.jobtree as its `--exec` job and as its `--on-change` hook: a
shell that starts its long-lived program without `exec`, which forks a grandchild that calls
setsid(), forks again and ignores SIGTERM. KILLS times: wait until the goose's job tree runs
whole, SIGKILL the goose's node (as the OOM killer does), and watch /proc until no process of
that node's job and hooks is left, guards included (the pids that ran, each ~0.2 ms; then
whole scans for anything they missed); then the node is started again. Throughout, a sampler
reads /proc every 10 ms and counts the moments at which two instances of the job (two
DDG_TERMs) ran. At the end every node is stopped gracefully, and one more look must find
nothing.

    .venv/bin/python -m benchmarks.exec_kill [--kills 30] [--nodes 3] [--json FILE]

Run from the repository root (it uses the test kit). Not a test: it prints figures; it exits 1
if any process outlived its node or two instances were seen.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, stats_line, write_json
from ddg_testkit import LocalCluster
from ddg_testkit.jobtree import Kill, Sampler, find, kill_all, kill_geese, write_tree

GRACE_MS = 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.exec_kill", description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = p.parse_args(argv)
    info = machine()
    print(f"{info['cpu']} x{info['cores']}, {info['python']}, {info['kernel']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ddg-exec-kill-") as tmp:
        job, hook = write_tree(Path(tmp) / "job"), write_tree(Path(tmp) / "hook")
        markers = [job.marker, hook.marker]
        node_args = ["--on-change", shlex.join(hook.argv), "--on-change-timeout-ms", "3000",
                     "--exec-grace-ms", str(GRACE_MS), "--exec", "--", *job.argv]
        started = time.monotonic()
        c = LocalCluster(cluster="exec-kill", log_level="WARNING")
        sampler = Sampler(job.marker)
        try:
            c.start_redis()
            names = [c.add(extra_args=node_args).name for _ in range(args.nodes)]
            c.wait_joined(names, timeout=30)
            sampler.start()

            def progress(k: Kill) -> None:
                def ms(x: float | None) -> str:
                    return "never" if x is None else f"{x:.1f} ms"
                print(f"  {k.node} {k.sig}: tree gone {ms(k.gone.tree_ms)}, guards too "
                      f"{ms(k.gone.all_ms)}{'' if k.hooked else ' (no hook ran)'}"
                      f"{'' if not k.gone.left else f', LEFT {k.gone.left}'}", flush=True)

            done = kill_geese(c, names, job, hook, args.kills, signals=(signal.SIGKILL,),
                              progress=progress)
            sampler.stop()
            c.close()
            after_stop = find(markers)
        finally:
            sampler.stop()
            c.close()
            stray = kill_all(markers)
    took = time.monotonic() - started
    survivors = [p for k in done for p in k.gone.left]
    tree = [k.gone.tree_ms for k in done if k.gone.tree_ms is not None]
    every = [k.gone.all_ms for k in done if k.gone.all_ms is not None]
    periods = [x * 1000 for x in sampler.periods]
    print(f"\n{args.kills} SIGKILLs of the goose's node on {args.nodes} nodes in {took:.0f} s "
          f"(load average at the end: {machine()['load_average']})")
    print(f"two job instances at once: {len(sampler.doubles)} of {sampler.samples} samples "
          f"({stats_line('sample period', periods)})")
    print(f"processes that outlived their node: {len(survivors)}; left after a graceful stop "
          f"of every node: {len(after_stop)}; stray at the very end: {len(stray)}")
    print(f"kills that found a hook tree running: {sum(k.hooked for k in done)}")
    print("node SIGKILL to the last process gone, per kill (the pids that ran looked at every "
          "~0.2 ms, then /proc scans for any they missed):")
    print("  " + stats_line("job and hook trees", tree))
    print("  " + stats_line("and their guards", every))
    if args.json is not None:
        write_json(args.json, {
            "machine": info, "kills": args.kills, "nodes": args.nodes,
            "doubles": len(sampler.doubles), "samples": sampler.samples,
            "survivors": len(survivors), "after_stop": len(after_stop),
            "tree_gone_ms": tree, "all_gone_ms": every})
    return 1 if survivors or sampler.doubles or after_stop else 0


if __name__ == "__main__":
    sys.exit(main())
