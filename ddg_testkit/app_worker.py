"""One app of tests/app/test_app.py: a member whose job records what it does.

    python -m ddg_testkit.app_worker NAME PORT REDIS_URL CLUSTER WORKDIR [--bootstrap]

Once joined it writes WORKDIR/node-<its pid> (its node's pid). While goose, its job steps every
2 ms and writes, in place, WORKDIR/progress-<pid>: `term start last active` (monotonic s;
active 0 once the job ended); when the job ends it appends `name pid term start last ended`
to WORKDIR/jobs.log. A killed app writes no end: the test reads its progress file instead.
SIGUSR1 freezes the event loop (time.sleep) for FREEZE s while its node is stopped (SIGSTOP),
so that the goose moves while the loop is blocked, then continues the node and returns;
WORKDIR/freeze-<pid> gets `start end` of the freeze. SIGTERM leaves the member block.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from ddg.app import member

FREEZE = float(os.environ.get("DDG_APP_FREEZE_S", "1.0"))
STEP = 0.002


async def main() -> None:
    name, port, redis_url, cluster, workdir = sys.argv[1:6]
    work = Path(workdir)
    me_pid = os.getpid()
    progress = os.open(work / f"progress-{me_pid}", os.O_WRONLY | os.O_CREAT, 0o644)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)

    async with member(name=name, port=int(port), redis_url=redis_url, cluster=cluster,
                      data_dir=work / "data" / name, log_path=work / f"node-{name}.log",
                      bootstrap="--bootstrap" in sys.argv) as me:
        node_pid = me.node_pid
        assert node_pid is not None

        def freeze() -> None:
            start = time.monotonic()
            os.kill(node_pid, signal.SIGSTOP)
            time.sleep(FREEZE)
            os.kill(node_pid, signal.SIGCONT)
            end = time.monotonic()
            part = work / f"freeze-{me_pid}.part"  # renamed whole: never read half-written
            part.write_text(f"{start:.6f} {end:.6f}\n")
            part.rename(work / f"freeze-{me_pid}")

        loop.add_signal_handler(signal.SIGUSR1, freeze)

        async def job(term: int) -> None:
            start = last = time.monotonic()
            try:
                while True:
                    last = time.monotonic()
                    os.pwrite(progress, f"{term} {start:.6f} {last:.6f} 1".ljust(63).encode()
                              + b"\n", 0)
                    await asyncio.sleep(STEP)
            finally:
                ended = time.monotonic()
                os.pwrite(progress, f"{term} {start:.6f} {last:.6f} 0".ljust(63).encode()
                          + b"\n", 0)
                line = f"{name} {me_pid} {term} {start:.6f} {last:.6f} {ended:.6f}\n"
                fd = os.open(work / "jobs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
                os.close(fd)

        part = work / f"node-{me_pid}.part"
        part.write_text(str(node_pid))
        part.rename(work / f"node-{me_pid}")
        await me.run_as_goose(job)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
