"""Run a command only while this node is the goose (`--exec -- CMD`), and a hook on every role
change (`--on-change CMD`).

The job: CMD starts when a Change makes this node the goose, with DDG_TERM (the fencing
token: strictly larger for every new goose), DDG_NODE_NAME and DDG_CLUSTER in its
environment. The moment a Change says it is no longer the goose (its lease ran out, a higher
term, a hand-over, removal, the node stopping), the listener itself has SIGTERM sent to every
process of CMD's tree (no await in between), and SIGKILL follows after `grace_ms`: two CMDs
overlap by at most that grace plus scheduling delay, as long as the old goose's node runs. A
frozen node (SIGSTOP, a VM pause) cannot stop its CMD: only a fencing token makes that overlap
harmless (README, "Run something only on the goose"). A CMD that exits by itself is logged
and restarted with the backoff, only while this node is still the goose; what it left
running is killed.

Nothing CMD starts outlives the node: CMD runs under a guard (ddg.ops.lifeline), a child
subreaper that adopts every orphan of the tree (setsid'd and double-forked ones included),
learns of the node's death at once however it dies, and then kills the whole tree. The node
talks to it over a socket only the node holds (`Guarded`).

The hook: every role change runs HOOK ROLE TERM GOOSE (keepalived's notify) under a guard
too, one at a time, killed after `timeout_ms` (with all it started, as when it exits); runs
wait in a bounded queue that drops the oldest. Neither ever delays the election: the
listeners only signal, append and wake a task.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ddg.election.roles import Role
from ddg.errors import ConfigError
from ddg.ops import lifeline
from ddg.ops.changes import Change
from ddg.util.backoff import Backoff

log = logging.getLogger("ddg.job")

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

# The guard runs without the virtualenv (-S) and ignores PYTHON* variables (-I): stdlib only.
GUARD = (sys.executable, "-I", "-S", lifeline.__file__)
START_TIMEOUT = 10.0  # s for a guard to start CMD: a Python start on a loaded host
REAP_TIMEOUT = lifeline.KILL_DEADLINE + 2.0  # s for a guard told to kill to end


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(extra)
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Guarded:
    """CMD under its guard (ddg.ops.lifeline): the guard is the node's child, CMD and everything it
    starts are the guard's, and the whole tree dies with the node however the node dies. The
    node talks to the guard over a socket only it holds; nothing here blocks but the awaits."""

    def __init__(self, guard: asyncio.subprocess.Process, chan: socket.socket,
                 name: str) -> None:
        self.guard = guard
        self.name = name
        self.pid: int | None = None  # CMD's, once the guard has started it
        self._chan = chan
        self._buf = bytearray()
        self._code: int | None = None  # CMD's exit, once the guard has ended

    def __str__(self) -> str:
        return f"{self.name} ({'starting' if self.pid is None else f'pid {self.pid}'})"

    @property
    def running(self) -> bool:
        """The guard runs: CMD or something it started may still run."""
        return self.guard.returncode is None

    async def _line(self) -> str | None:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buf:
            data = await loop.sock_recv(self._chan, 4096)
            if not data:
                return None
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        return line.decode(errors="replace")

    async def started(self) -> None:
        """Until CMD runs; OSError if it cannot start (the guard then ends by itself)."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = await self._line()
        except TimeoutError:
            raise OSError(f"its guard (pid {self.guard.pid}) did not start it in "
                          f"{START_TIMEOUT:g} s") from None
        what, _, rest = (line or "").partition(" ")
        if what == lifeline.STARTED and rest.isdigit():
            self.pid = int(rest)
            return
        if what == lifeline.FAILED:
            errno, _, text = rest.partition(" ")
            raise OSError(int(errno) if errno.isdigit() else 0, text)
        raise OSError(f"its guard (pid {self.guard.pid}) ended before it started")

    def terminate(self) -> None:
        """SIGTERM (and SIGCONT) to every process of the tree, now."""
        with contextlib.suppress(OSError):
            self._chan.send(lifeline.TERMINATE)

    def kill(self) -> None:
        """SIGKILL to every process of the tree, now: the guard does what a node's death makes
        it do, then ends."""
        with contextlib.suppress(OSError):
            self._chan.shutdown(socket.SHUT_WR)

    async def wait(self) -> int:
        """CMD's exit code (negative: the signal) once the guard has ended, which it does only
        when the whole tree is gone. A guard that ended without saying (someone SIGKILLed it)
        is logged, and its own code returned."""
        code = await self.guard.wait()
        if self._chan.fileno() != -1:
            self._code = self._exit_told()
            self._chan.close()
            if self._code is None:
                log.error("the guard (pid %d) of %s %s before %s's processes were gone: "
                          "what %s started may still run", self.guard.pid, self.name,
                          _describe_exit(code), self.name, self.name)
        return code if self._code is None else self._code

    def _exit_told(self) -> int | None:
        """The exit code the guard told, read after it ended (then all it sent is here)."""
        with contextlib.suppress(OSError):
            while data := self._chan.recv(4096):
                self._buf += data
        for line in self._buf.decode(errors="replace").splitlines():
            what, _, rest = line.partition(" ")
            if what == lifeline.EXITED:
                with contextlib.suppress(ValueError):
                    return int(rest)
        return None

    async def reap(self) -> int | None:
        """kill() and wait for the guard, bounded; a guard that does not end is SIGKILLed."""
        self.kill()
        try:
            async with asyncio.timeout(REAP_TIMEOUT):
                return await self.wait()
        except TimeoutError:
            log.error("the guard (pid %d) of %s did not end %g s after it was told to kill "
                      "the tree: SIGKILL", self.guard.pid, self.name, REAP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            self.guard.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REAP_TIMEOUT):
                return await self.wait()
        return None


async def spawn_bound(program: Sequence[str], args: Sequence[str], *,
                      env: dict[str, str] | None = None, out: IO[bytes] | None = None,
                      merge_stderr: bool = False, pipes: bool = False,
                      ) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """PROGRAM NODE_PID FD ARGS...: a helper bound to this node (the job guard, the VIP
    keeper), in a session of its own (the node's terminal signals do not reach it), its output
    to OUT or the node's stderr (with PIPES: stdin, stdout and stderr are pipes to this
    process, as the web console's tabs need). FD is its end of a socket pair whose other end,
    returned non-blocking, only the node holds: the kernel closes it however the node dies. The
    parent-death signal is a second messenger."""
    pipe = asyncio.subprocess.PIPE
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            *program, str(os.getpid()), str(theirs.fileno()), *args,
            stdin=pipe if pipes else asyncio.subprocess.DEVNULL,
            stdout=pipe if pipes else out if out is not None else sys.stderr.fileno(),
            stderr=(pipe if pipes else asyncio.subprocess.STDOUT if merge_stderr else None),
            env=env if env is not None else _environment({}),  # never the secrets
            start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(),),
            preexec_fn=lifeline.die_with_parent(lifeline.GUARD_DEATH_SIGNAL))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return proc, ours


async def _spawn(argv: tuple[str, ...], env: dict[str, str], out: IO[bytes] | None) -> Guarded:
    """ARGV under a guard (spawn_bound)."""
    guard, chan = await spawn_bound(GUARD, ("--", *argv), env=env, out=out, merge_stderr=True)
    return Guarded(guard, chan, argv[0])


# ---- the job ----------------------------------------------------------------------------


class Job:
    """Keeps CMD running exactly while the last Change said this node is the goose."""

    def __init__(self, config: JobConfig, *, node: str, cluster: str) -> None:
        self.config = config
        self.node = node
        self.cluster = cluster
        self.starts = 0  # CMDs started, since the node started
        self._want: int | None = None  # the term to run CMD for; None: not the goose
        self._proc: Guarded | None = None
        self._term = 0  # of _proc
        self._stopping_since: float | None = None  # monotonic: SIGTERM sent to _proc
        self._changed = asyncio.Event()
        self._closed = False
        self._out: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.running else None

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
        """SIGTERM a CMD (and all it started) that no longer matches the leadership, at once."""
        proc = self._proc
        if (proc is None or not proc.running or self._want == self._term
                or self._stopping_since is not None):
            return
        self._stopping_since = time.monotonic()
        proc.terminate()
        log.info("no longer the goose of term %d: sent SIGTERM to %s and all it started",
                 self._term, proc)

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
                log.warning("%s, term %d, %s", proc, term, _describe_exit(code))
                self._proc = None  # its guard killed what it left behind
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

    async def _start(self, term: int) -> Guarded | None:
        env = _environment({"DDG_TERM": str(term), "DDG_NODE_NAME": self.node,
                            "DDG_CLUSTER": self.cluster})
        name = self.config.command[0]
        try:
            proc = await _spawn(self.config.command, env, self._out)
        except OSError as exc:
            log.error("cannot start %s: %s", name, exc.strerror or exc)
            return None
        # Set before CMD runs: a change now SIGTERMs it as soon as it does, close() stops it.
        self._proc, self._term, self._stopping_since = proc, term, None
        try:
            await proc.started()
        except OSError as exc:
            log.error("cannot start %s: %s", name, exc.strerror or exc)
            await proc.reap()
            self._proc = None
            return None
        self.starts += 1
        log.info("the goose of term %d: started %s (pid %d; its guard: pid %d)", term, name,
                 proc.pid, proc.guard.pid)
        self._stop_now()  # leadership may have moved on while it was being started
        return proc

    async def _until_exit_or_change(self, proc: Guarded,
                                    term: int) -> int | None:
        """CMD's exit code, or None as soon as it should no longer run, or was told to stop:
        a SIGTERM cannot be taken back, so a stop goes on even if leadership came back."""
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                if (self._want != term or self._closed  # even if it has just exited
                        or self._stopping_since is not None):
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

    async def _stop(self, proc: Guarded) -> None:
        """SIGTERM to the tree (unless sent already), SIGKILL to what is left of it after the
        grace; returns when the whole tree is gone."""
        self._stop_now()
        if self._stopping_since is None:  # it matches the leadership again: stop anyway
            self._stopping_since = time.monotonic()
            proc.terminate()
        left = self._stopping_since + self.config.grace - time.monotonic()
        if proc.running and left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await proc.wait()
        if proc.running:
            log.warning("%s or what it started still ran %d ms after SIGTERM: SIGKILL", proc,
                        self.config.grace_ms)
        code = await proc.reap()
        took = (time.monotonic() - self._stopping_since) * 1000
        log.info("%s, term %d, stopped in %.0f ms: %s", proc, self._term, took,
                 "?" if code is None else _describe_exit(code))
        self._proc, self._stopping_since = None, None

    async def close(self) -> None:
        """Stop CMD (SIGTERM, SIGKILL after the grace) before the node exits."""
        self._closed = True
        self._want = None
        self._changed.set()
        proc = self._proc
        if proc is not None and proc.running:
            await self._stop(proc)
        elif proc is not None:
            await proc.reap()
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
        self._queue: deque[tuple[Change, str]] = deque()  # and the role the run before said
        self._wake = asyncio.Event()
        self._proc: Guarded | None = None
        self._said: tuple[Role, str | None] | None = None  # the last run's role and goose

    def on_change(self, change: Change) -> None:
        """A Changes listener: appends, drops the oldest if full, never blocks. Only what
        `_worth_a_run` lets through runs."""
        before = "" if self._said is None else self._said[0].value
        if not self._worth_a_run(change):
            return
        if len(self._queue) >= self.config.queue_size:
            old, _ = self._queue.popleft()
            self.dropped += 1
            log.warning("on-change hook queue full (%d): dropped the run for %s in term %d",
                        self.config.queue_size, old.view.role.value, old.view.term)
        self._queue.append((change, before))
        self._wake.set()

    def _worth_a_run(self, change: Change) -> bool:
        """The rule (README, docs/operations.md): a run when this node becomes the goose,
        stops being it, or, not the goose, follows a goose (another one than it last said).
        A node that follows none yet (it just started, or an election is on) is not told: the
        run comes once it knows whom it follows, with that name."""
        v = change.view
        said = self._said
        goose = Role.GOOSE
        if v.role is not goose and v.goose is None:
            worth = said is not None and said[0] is goose  # a goose that stepped down
        else:
            worth = said is None or (said[0] is goose) != (v.role is goose) \
                or (v.role is not goose and said[1] != v.goose)
        if worth:
            self._said = (v.role, v.goose)
        return worth

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._run_one(*self._queue.popleft())

    async def _run_one(self, change: Change, previous_role: str) -> None:
        v = change.view
        args = (v.role.value, str(v.term), v.goose or "")
        env = _environment({
            "DDG_ROLE": v.role.value, "DDG_TERM": str(v.term), "DDG_GOOSE": v.goose or "",
            "DDG_PREVIOUS_ROLE": previous_role,
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
                await proc.started()
                code = await proc.wait()  # its guard killed what it left behind
        except TimeoutError:  # (an OSError too)
            log.warning("on-change hook %s %s took over %g s: killed", name, " ".join(args),
                        timeout)
            await proc.reap()
            self._proc = None
            return
        except OSError as exc:
            log.error("cannot run the on-change hook %s: %s", name, exc.strerror or exc)
            await proc.reap()
            self._proc = None
            return
        self._proc = None
        if code != 0:
            log.warning("on-change hook %s %s %s", name, " ".join(args), _describe_exit(code))

    async def close(self) -> None:
        proc = self._proc
        if proc is not None:
            await proc.reap()


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
