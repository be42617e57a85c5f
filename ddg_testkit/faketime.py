"""Run a process on a clock of another rate: libfaketime (Debian's `faketime` package) preloaded.

`FAKETIME="+0 xRATE"` makes every clock the process reads, CLOCK_MONOTONIC included (what
Python's time.monotonic() and asyncio's timers use), run at RATE x real time, and its sleeps and
poll/epoll timeouts last 1 / RATE as long: a node on a clock that is slow (RATE < 1) or fast
throughout. `measure_rate` checks that from outside: the rate the child's monotonic clock runs
at against this process's.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

# The multi-threaded variant: a node runs threads (fsync, DNS), which the plain one does not
# guard against.
LIBRARY = "libfaketimeMT.so.1"
PATTERNS = ("/usr/lib/*/faketime/", "/usr/lib/faketime/", "/usr/local/lib/faketime/",
            "/usr/lib64/faketime/")


def library() -> str | None:
    for pattern in PATTERNS:
        found = sorted(glob.glob(pattern + LIBRARY))
        if found:
            return found[0]
    return None


def missing() -> str | None:
    """Why a process cannot be run on a faked clock here, or None if it can."""
    if sys.platform != "linux":
        return "libfaketime is preloaded with LD_PRELOAD: Linux only"
    if library() is None:
        return f"{LIBRARY} not found: apt-get install faketime"
    return None


def env(rate: float) -> dict[str, str]:
    """The environment that runs a process on a clock at RATE x real time."""
    lib = library()
    if lib is None:
        raise RuntimeError(missing() or LIBRARY)
    if not 0.01 <= rate <= 100:
        raise ValueError(f"clock rate {rate} is out of 0.01-100")
    return {
        "LD_PRELOAD": lib,
        "FAKETIME": f"+0 x{rate:g}",
        # Fake CLOCK_MONOTONIC too (the point), whatever the caller's environment says.
        "FAKETIME_DONT_FAKE_MONOTONIC": "0",
        "DONT_FAKE_MONOTONIC": "0",
    }


_CHILD = "import sys, time\nfor _ in sys.stdin:\n    print(repr(time.monotonic()), flush=True)\n"


def measure_rate(rate: float, seconds: float = 1.0) -> float:
    """Start a Python under env(RATE) and read its monotonic clock twice, SECONDS apart on
    ours: how fast its clock runs against this process's, as a ratio."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **env(rate)})
    assert child.stdin is not None and child.stdout is not None
    try:
        readings = []
        for _ in range(3):  # the first is off: libfaketime starts its clock at the first read
            before = time.monotonic()
            child.stdin.write("\n")
            child.stdin.flush()
            theirs = float(child.stdout.readline())
            readings.append(((before + time.monotonic()) / 2, theirs))
            time.sleep(seconds if len(readings) == 2 else 0.05)
        (ours0, theirs0), (ours1, theirs1) = readings[1:]
        return (theirs1 - theirs0) / (ours1 - ours0)
    finally:
        child.stdin.close()
        child.wait(5)
