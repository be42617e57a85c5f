"""Run a command only while this node is the goose (`--exec -- CMD`), and a hook on every role
change (`--on-change CMD`).

The job: CMD starts when a Change makes this node the goose, with DDG_TERM (the fencing
token: strictly larger for every new goose), DDG_NODE_NAME and DDG_CLUSTER in its
environment. The moment a Change says it is no longer the goose (its lease ran out, a higher
term, a hand-over, removal, the node stopping), the listener itself sends SIGTERM to CMD's
process group (no await in between), and SIGKILL follows after `grace_ms`: two CMDs overlap
by at most that grace plus scheduling delay, as long as the old goose's node runs. A frozen
node (SIGSTOP, a VM pause) cannot stop its CMD: only a fencing token makes that overlap
harmless (README, "Run something only on the goose"). CMD never outlives its node: the node
stops it on its way out, and the child asks the kernel to SIGKILL it when the node dies
(PR_SET_PDEATHSIG, Linux), so even a SIGKILLed node leaves no orphan. (That covers CMD's own
process; a CMD that forks should `exec` its long-running program, or its children may outlive
a SIGKILLed node.) A CMD that exits by itself is logged and restarted with the backoff, only
while this node is still the goose.

The hook: every role change runs HOOK ROLE TERM GOOSE (keepalived's notify), one at a time,
killed after `timeout_ms`; runs wait in a bounded queue that drops the oldest. Neither ever
delays the election: the listeners only signal, append and wake a task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .backoff import Backoff
from .changes import Change
from .errors import ConfigError
from .status import Role

log = logging.getLogger("ddg.job")

PR_SET_PDEATHSIG = 1
REAP_TIMEOUT = 5.0  # s to wait for a SIGKILLed process to be reaped
# Variables a job or hook has no business seeing.
SECRET_ENV = ("DDG_CLUSTER_SECRET", "DDG_REDIS_PASSWORD")


# ---- config -----------------------------------------------------------------------------


def _command(flag: str, command: tuple[str, ...]) -> None:
    if not command or not command[0]:
        raise ConfigError(f"{flag} needs a command")
    if any("\0" in arg for arg in command):
        raise ConfigError(f"{flag}: a command argument contains a NUL byte")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobConfig:
    """`--exec -- CMD ARGS...`: CMD runs while this node is the goose."""

    command: tuple[str, ...]
    grace_ms: int = 100  # SIGTERM to SIGKILL; the most two CMDs overlap
    log_file: Path | None = None  # CMD's stdout and stderr; None: the node's stderr
    restart_min_ms: int = 200  # backoff of a CMD that keeps exiting by itself
    restart_max_ms: int = 10_000

    def __post_init__(self) -> None:
        _command("--exec", self.command)
        if not 1 <= self.grace_ms <= 600_000:
            raise ConfigError(f"--exec-grace-ms must be 1-600000, got {self.grace_ms}")
        if not 1 <= self.restart_min_ms <= self.restart_max_ms <= 3_600_000:
            raise ConfigError("job restart backoff must be 1 <= min <= max <= 3600000 ms, got "
                              f"{self.restart_min_ms}-{self.restart_max_ms}")
        if self.log_file is not None and not str(self.log_file):
            raise ConfigError("--exec-log needs a file name")

    @property
    def grace(self) -> float:
        return self.grace_ms / 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class HookConfig:
    """`--on-change CMD`: CMD ROLE TERM GOOSE runs on every role change."""

    command: tuple[str, ...]
    timeout_ms: int = 10_000
    queue_size: int = 16

    def __post_init__(self) -> None:
        _command("--on-change", self.command)
        if not 1 <= self.timeout_ms <= 3_600_000:
            raise ConfigError(f"--on-change-timeout-ms must be 1-3600000, got {self.timeout_ms}")
        if not 1 <= self.queue_size <= 10_000:
            raise ConfigError(f"hook queue size must be 1-10000, got {self.queue_size}")


# ---- processes --------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when the node dies (Linux only).

    libc is looked up here, in the parent: the child runs only the call, with no import or
    dlopen between fork and exec. The death signal follows the thread that forked, so the
    child must be started from the event loop's thread (asyncio does).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the node died before prctl: do not run orphaned
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(extra)
    return env


def _signal_group(pid: int, sig: int) -> None:
    """SIG to the process group PID leads (start_new_session makes CMD its leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def _spawn(argv: tuple[str, ...], env: dict[str, str],
                 out: IO[bytes] | None) -> asyncio.subprocess.Process:
    """ARGV in a session (and process group) of its own, its output to OUT or the node's
    stderr: the node's terminal signals do not reach it, and its whole group can be killed."""
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=out if out is not None else sys.stderr.fileno(),
        stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
        preexec_fn=_die_with_parent(), close_fds=True)


async def _reap(proc: asyncio.subprocess.Process) -> int | None:
    """SIGKILL the group and wait for the leader, bounded (a process stuck in the kernel)."""
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(REAP_TIMEOUT):
            return await proc.wait()
    except TimeoutError:
        log.error("process %d did not end %g s after SIGKILL", proc.pid, REAP_TIMEOUT)
        return None


# ---- the job ----------------------------------------------------------------------------


class Job:
    """Keeps CMD running exactly while the last Change said this node is the goose."""

    def __init__(self, config: JobConfig, *, node: str, cluster: str) -> None:
        self.config = config
        self.node = node
        self.cluster = cluster
        self.starts = 0  # CMDs started, since the node started
        self._want: int | None = None  # the term to run CMD for; None: not the goose
        self._proc: asyncio.subprocess.Process | None = None
        self._term = 0  # of _proc
        self._stopping_since: float | None = None  # monotonic: SIGTERM sent to _proc
        self._changed = asyncio.Event()
        self._closed = False
        self._out: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def on_change(self, change: Change) -> None:
        """A Changes listener: never blocks, never raises."""
        view = change.view
        want = view.term if view.role is Role.GOOSE and not self._closed else None
        if want == self._want:
            return
        self._want = want
        self._stop_now()
        self._changed.set()

    def _stop_now(self) -> None:
        """SIGTERM a CMD that no longer matches the leadership, at once."""
        proc = self._proc
        if (proc is None or proc.returncode is not None or self._want == self._term
                or self._stopping_since is not None):
            return
        self._stopping_since = time.monotonic()
        _signal_group(proc.pid, signal.SIGTERM)
        log.info("no longer the goose of term %d: sent SIGTERM to %s (pid %d)", self._term,
                 self.config.command[0], proc.pid)

    def open_log(self) -> None:
        """Open --exec-log FILE now, so that a bad path stops the node's start."""
        if self.config.log_file is not None and self._out is None:
            try:
                self._out = open(self.config.log_file, "ab")  # closed by close()
            except OSError as exc:
                raise ConfigError(f"cannot open --exec-log {self.config.log_file}: "
                                  f"{exc.strerror or exc}") from None

    async def run(self) -> None:
        backoff = Backoff(initial=self.config.restart_min_ms / 1000,
                          maximum=self.config.restart_max_ms / 1000)
        while not self._closed:
            term = self._want
            if term is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            started = time.monotonic()
            proc = await self._start(term)
            if proc is not None:
                code = await self._until_exit_or_change(proc, term)
                if code is None:  # leadership moved on: stop it, then look again
                    await self._stop(proc)
                    backoff.reset()
                    continue
                log.warning("%s (pid %d, term %d) %s", self.config.command[0], proc.pid, term,
                            _describe_exit(code))
                await _reap(proc)  # anything it left in its group
                self._proc = None
            if time.monotonic() - started > backoff.maximum:
                backoff.reset()
            delay = backoff.next()
            if self._want == term and not self._closed:
                log.info("restarting %s in %.2f s (still the goose of term %d)",
                         self.config.command[0], delay, term)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def _start(self, term: int) -> asyncio.subprocess.Process | None:
        env = _environment({"DDG_TERM": str(term), "DDG_NODE_NAME": self.node,
                            "DDG_CLUSTER": self.cluster})
        try:
            proc = await _spawn(self.config.command, env, self._out)
        except OSError as exc:
            log.error("cannot start %s: %s", self.config.command[0], exc.strerror or exc)
            return None
        self._proc, self._term, self._stopping_since = proc, term, None
        self.starts += 1
        log.info("the goose of term %d: started %s (pid %d)", term, self.config.command[0],
                 proc.pid)
        self._stop_now()  # leadership may have moved on while it was being started
        return proc

    async def _until_exit_or_change(self, proc: asyncio.subprocess.Process,
                                    term: int) -> int | None:
        """CMD's exit code, or None as soon as it should no longer run."""
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                if self._want != term or self._closed:  # even if it has just exited
                    return None
                if exited.done():
                    return exited.result()
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({exited, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            if not exited.done():
                exited.cancel()

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM (unless sent already), SIGKILL after the grace, then reap."""
        self._stop_now()
        if self._stopping_since is None:  # it matches the leadership again: stop anyway
            self._stopping_since = time.monotonic()
            _signal_group(proc.pid, signal.SIGTERM)
        left = self._stopping_since + self.config.grace - time.monotonic()
        code: int | None = None
        if proc.returncode is None and left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    code = await proc.wait()
        if code is None and proc.returncode is None:
            log.warning("%s (pid %d) still ran %d ms after SIGTERM: SIGKILL",
                        self.config.command[0], proc.pid, self.config.grace_ms)
        code = await _reap(proc)
        took = (time.monotonic() - self._stopping_since) * 1000
        log.info("%s (pid %d, term %d) stopped in %.0f ms: %s", self.config.command[0],
                 proc.pid, self._term, took, "?" if code is None else _describe_exit(code))
        self._proc, self._stopping_since = None, None

    async def close(self) -> None:
        """Stop CMD (SIGTERM, SIGKILL after the grace) before the node exits."""
        self._closed = True
        self._want = None
        self._changed.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await self._stop(proc)
        elif proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)
        if self._out is not None:
            self._out.close()
            self._out = None


# ---- the hook ---------------------------------------------------------------------------


class Hooks:
    """Runs HOOK ROLE TERM GOOSE for each role change, one at a time, in a task."""

    def __init__(self, config: HookConfig, *, node: str, cluster: str) -> None:
        self.config = config
        self.node = node
        self.cluster = cluster
        self.dropped = 0
        self.ran = 0
        self._queue: deque[Change] = deque()
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None

    def on_change(self, change: Change) -> None:
        """A Changes listener: appends, drops the oldest if full, never blocks."""
        previous = change.previous
        if previous is not None and previous.role == change.view.role:
            return
        if len(self._queue) >= self.config.queue_size:
            old = self._queue.popleft()
            self.dropped += 1
            log.warning("on-change hook queue full (%d): dropped the run for %s in term %d",
                        self.config.queue_size, old.view.role.value, old.view.term)
        self._queue.append(change)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._run_one(self._queue.popleft())

    async def _run_one(self, change: Change) -> None:
        v = change.view
        args = (v.role.value, str(v.term), v.goose or "")
        env = _environment({
            "DDG_ROLE": v.role.value, "DDG_TERM": str(v.term), "DDG_GOOSE": v.goose or "",
            "DDG_PREVIOUS_ROLE": "" if change.previous is None else change.previous.role.value,
            "DDG_NODE_NAME": self.node, "DDG_CLUSTER": self.cluster})
        name = self.config.command[0]
        try:
            proc = await _spawn(self.config.command + args, env, None)
        except OSError as exc:
            log.error("cannot run the on-change hook %s: %s", name, exc.strerror or exc)
            return
        self._proc = proc  # left set if cancelled: close() kills it
        self.ran += 1
        timeout = self.config.timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            log.warning("on-change hook %s %s took over %g s: killed", name, " ".join(args),
                        timeout)
            await _reap(proc)
            self._proc = None
            return
        self._proc = None
        _signal_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
        if code != 0:
            log.warning("on-change hook %s %s %s", name, " ".join(args), _describe_exit(code))

    async def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await _reap(proc)


# ---- wiring -----------------------------------------------------------------------------


class Jobs:
    """What a node runs for its role: a Job and/or Hooks, either may be absent. `on_change`
    is the Changes listener; `context` is an aiohttp cleanup context that owns their tasks."""

    def __init__(self, job: JobConfig | None, hook: HookConfig | None, *, node: str,
                 cluster: str) -> None:
        self.job = None if job is None else Job(job, node=node, cluster=cluster)
        self.hooks = None if hook is None else Hooks(hook, node=node, cluster=cluster)

    def on_change(self, change: Change) -> None:
        for listener in (self.job, self.hooks):
            if listener is None:
                continue
            try:
                listener.on_change(change)
            except Exception:  # a listener must never break the node's step
                log.exception("job listener failed")

    async def context(self, app: Any = None) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        if self.job is not None:
            self.job.open_log()
            tasks.append(asyncio.create_task(self.job.run(), name="job"))
        if self.hooks is not None:
            tasks.append(asyncio.create_task(self.hooks.run(), name="hooks"))
        for task in tasks:
            task.add_done_callback(_task_ended)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.job is not None:
                await self.job.close()
            if self.hooks is not None:
                await self.hooks.close()


def _task_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s task failed", task.get_name(), exc_info=task.exception())


# ---- command line -----------------------------------------------------------------------


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """ddg-node's --exec and --on-change flags, and the command after `--`."""
    p.add_argument("--exec", action="store_true",
                   help="run the command given after `--` only while this node is the goose "
                        "(env DDG_TERM: the fencing token, DDG_NODE_NAME, DDG_CLUSTER)")
    p.add_argument("--exec-grace-ms", type=int, default=None, metavar="MS",
                   help="SIGTERM to SIGKILL when the command must stop; the most two commands "
                        "overlap (default 100)")
    p.add_argument("--exec-log", metavar="FILE",
                   help="append the command's output to FILE (default: the node's stderr)")
    p.add_argument("--on-change", metavar="CMD",
                   help="run CMD ROLE TERM GOOSE on every role change, one at a time "
                        "(CMD is split like a shell would)")
    p.add_argument("--on-change-timeout-ms", type=int, default=10_000, metavar="MS",
                   help="kill an on-change hook after this long (default %(default)s)")
    p.add_argument("command", nargs="*", metavar="-- CMD ARGS",
                   help="with --exec: the command to run while this node is the goose")


def job_configs(ns: argparse.Namespace) -> tuple[JobConfig | None, HookConfig | None]:
    command = tuple(ns.command)
    if command and not ns.exec:
        raise ConfigError(f"unexpected argument {command[0]!r}: a command to run only on the "
                          "goose goes after --exec --")
    if not ns.exec and (ns.exec_log is not None or ns.exec_grace_ms is not None):
        raise ConfigError("--exec-log and --exec-grace-ms need --exec -- CMD")
    job = None
    if ns.exec:
        if not command:
            raise ConfigError("--exec needs a command after --, e.g. --exec -- my-job --flag")
        extra: dict[str, Any] = {}
        if ns.exec_grace_ms is not None:
            extra["grace_ms"] = ns.exec_grace_ms
        job = JobConfig(command=command, log_file=Path(ns.exec_log) if ns.exec_log else None,
                        **extra)
    hook = None
    if ns.on_change is not None:
        try:
            argv = tuple(shlex.split(ns.on_change))
        except ValueError as exc:
            raise ConfigError(f"--on-change {ns.on_change!r}: {exc}") from None
        hook = HookConfig(command=argv, timeout_ms=ns.on_change_timeout_ms)
    return job, hook
