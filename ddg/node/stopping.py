"""How a node process ends: promptly, and surely.

- `cancel_and_wait`: a task is cancelled again until it has ended, because a library can drop
  a cancellation (Python 3.11's asyncio.wait_for returns the result of an inner task that
  finished in the loop pass where the cancel landed; redis-py wrapped every write in one, and
  a node's registry task ran on after SIGTERM).
- `StopDeadline`: once a stop begins, a thread ends the process if it is still there
  DEADLINE s later, or at a second SIGTERM/SIGINT, whatever the event loop or a task does;
  it logs one line naming what was still pending and exits non-zero.
- `exit_now`: after a clean stop, the logs are flushed and the process exits at once, without
  the interpreter's teardown (its garbage collection of every module's objects took 150-600 ms
  between the `stopped` line and the exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from types import FrameType
from typing import Any, NoReturn

from ddg.election.timing import JointTiming, Timing
from ddg.node.config import NodeConfig

log = logging.getLogger("ddg.node")

# How long a whole stop may take, from its start to the process's exit, before it is forced.
# A clean stop takes milliseconds (benchmarks/stops.py); its slowest legitimate waits are
# bounded and short: the registry and its subscription closing (0.5 s each when Redis is
# frozen), a request in flight getting its body (2 s at most). 3 s is more than these on a
# busy machine, and less than what comes after it: the supervisor's SIGKILL (5 s) and the
# systemd unit's TimeoutStopSec (15 s, docs/deploy.md), so the node says what hung before it
# is killed. The waits a node's settings add come on top: see stop_deadline().
STOP_DEADLINE = 3.0
EXIT_OVERDUE = 70  # EX_SOFTWARE: a stop that had to be forced is a bug to report
RECANCEL_EVERY = 0.05  # s between two cancellations of a task that has not ended
_LOG_BOUND = 0.5  # s the forced exit waits for its log line (a stuck stderr must not hold it)


def stop_deadline(config: NodeConfig, timing: Timing | JointTiming | None = None) -> float:
    """STOP_DEADLINE plus what the node's settings add: a goose's hand-over (one message,
    which may take the minimum election timeout of TIMING, the cluster's once the node runs
    it; default: CONFIG's) and an --exec job's grace between SIGTERM and SIGKILL."""
    grace = config.job.grace if config.job is not None else 0.0
    return STOP_DEADLINE + (timing or config.timing).election_min + grace


async def wait_out(future: asyncio.Future[Any]) -> None:
    """Wait until FUTURE is done, whatever cancellations arrive meanwhile (they are taken as
    read: the caller re-raises its own). For work that cannot be stopped halfway, such as a
    file write running in a thread."""
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            pass
    if not future.cancelled():
        future.exception()  # retrieved: its caller was cancelled and reports nothing


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel TASKS and wait until each has ended, cancelling again every RECANCEL_EVERY s
    one that is still running (its cancellation may have been dropped)."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
        for task in pending:
            task.cancel()


def _place(frame: FrameType) -> str:
    path = frame.f_code.co_filename.split(os.sep)
    return f"{'/'.join(path[-2:])}:{frame.f_lineno} {frame.f_code.co_name}"


_ASYNCIO = os.path.dirname(asyncio.__file__)


def _where(task: asyncio.Task[Any]) -> str:
    """Where TASK waits: the innermost coroutine it awaits outside asyncio itself."""
    aw: Any = task.get_coro()
    frames: list[FrameType] = []
    for _ in range(100):  # a chain of coroutines awaiting each other
        f = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None) or getattr(
            aw, "ag_frame", None)
        if f is None:
            break
        frames.append(f)
        aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None) or getattr(
            aw, "ag_await", None)
    ours = [f for f in frames if not f.f_code.co_filename.startswith(_ASYNCIO)]
    return _place((ours or frames)[-1]) if frames else "?"


def pending_work(loop: asyncio.AbstractEventLoop | None, main: FrameType | None = None) -> str:
    """Where the main thread is (MAIN: the frame a signal interrupted), the tasks of LOOP that
    have not ended (a running task's place is the main thread's) and the threads still
    running, for a log line. Safe to call from another thread: it only reads."""
    main = main or sys._current_frames().get(threading.main_thread().ident or 0)
    parts = [] if main is None else [f"main thread at {_place(main)}"]
    if loop is not None and not loop.is_closed():
        try:
            tasks = asyncio.all_tasks(loop)
        except RuntimeError:  # the set changed while it was copied, too often
            tasks = set()
        # Tasks by name; the unnamed ones (an HTTP connection's, a message's) by place.
        seen = Counter(("task " if t.get_name().startswith("Task-") else f"task {t.get_name()} ")
                       + f"at {_where(t)}"
                       + (" (cancelled, still running)" if t.cancelling() else "")
                       for t in tasks)
        parts += sorted(what if n == 1 else f"{n} {what.replace('task ', 'tasks ', 1)}"
                        for what, n in seen.items())
    me = threading.current_thread()
    parts += sorted(f"thread {t.name}" for t in threading.enumerate()
                    if t is not me and t is not threading.main_thread() and not t.daemon)
    return "; ".join(parts) or "no task or thread (the interpreter was exiting)"


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def exit_now(code: int) -> NoReturn:
    """End the process with CODE after flushing the logs, skipping the interpreter's teardown.
    Only once nothing is left to clean up: atexit handlers do not run (a node has one, the
    logging's, and this does its work)."""
    _flush()
    os._exit(code)


class StopDeadline:
    """Ends the process DEADLINE s after begin(), or at a second SIGTERM/SIGINT.

    A daemon thread keeps the time, so the deadline holds whatever the event loop does (a
    task that ignores cancellation, a blocking call, a hang while the interpreter exits).
    begin() also takes SIGTERM and SIGINT from the loop (whose handlers run only while it
    runs) and answers them with plain signal handlers, which the main thread runs between
    two bytecodes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._began: float | None = None
        self._why = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def begin(self, why: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the clock (once; later calls do nothing). WHY: what began the stop."""
        with self._lock:
            if self._began is not None:
                return
            self._began, self._why = time.monotonic(), why
            self._loop = loop
        if loop is not None and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                signal.signal(sig, self._second_signal)
        threading.Thread(target=self._watch, name="ddg-stop-deadline", daemon=True).start()

    def _second_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.force(f"{name} while stopping ({self._why})", 128 + signum, frame)

    def _watch(self) -> None:
        assert self._began is not None
        if not self._done.wait(max(0.0, self._began + self.seconds - time.monotonic())):
            self.force(f"still stopping {self.seconds:g} s after {self._why}", EXIT_OVERDUE)

    def force(self, why: str, code: int, frame: FrameType | None = None) -> None:
        """Log one line saying WHY and what was pending, then exit with CODE at once. FRAME:
        where a signal interrupted the main thread."""
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
        pending = pending_work(self._loop, frame)

        def say() -> None:
            log.critical("%s: exiting now (code %d); pending: %s", why, code, pending,
                         extra={"event": "stop_forced", "exit_code": code, "pending": pending})
            _flush()

        # In a thread of its own: a log handler stuck on a full pipe must not hold the exit.
        speaker = threading.Thread(target=say, name="ddg-stop-log", daemon=True)
        speaker.start()
        speaker.join(_LOG_BOUND)
        os._exit(code)
