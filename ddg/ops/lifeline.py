"""Processes that cannot outlive the one they serve (Linux).

`die_with_parent` asks the kernel to signal a child when its parent dies: ddg.local.launcher binds
every node and Redis to a supervisor with it, and ddg.ops.job binds each job guard to its node.

The job guard (`python -I -S lifeline.py PARENT FD -- CMD ARGS...`, started by ddg.ops.job for
`--exec` and `--on-change`) stands between the node and CMD so that no process CMD starts can
outlive the node: its children, grandchildren, a process that called setsid() or forked
twice. The guard is a child subreaper (PR_SET_CHILD_SUBREAPER): an orphan of the tree is
re-parented to it, not to init, so "every process below the guard" is the whole tree, whatever
sessions and groups it made. It learns of the node's death at once: FD is one end of a socket
pair whose other end only the node holds, and the kernel closes it however the node dies
(SIGTERM, SIGKILL, a crash, the OOM killer); the parent-death signal (SIGHUP) is the second
messenger. Then it SIGKILLs the tree (CMD's group in one call, then every process below it,
found in /proc, again until none is left), reaps it and exits.

What the node says on the socket: b"T" sends SIGTERM (and SIGCONT) to every process of the
tree, and the guard then waits for the tree to end; closing its end (shutdown() will do)
SIGKILLs the tree. What the guard says: "pid N" once CMD runs (or "error ERRNO TEXT" and exit
127), and "exit CODE" (negative: the signal) after the whole tree is gone, just before it
exits. A CMD that exits by itself takes what is left of its tree with it (SIGKILL).

The guard's own risks: with CAP_SYS_RESOURCE (root, usually) it sets its oom_score_adj to
-1000 (CMD gets the node's value back), so the OOM killer never picks it; without, it keeps
the node's value, and at ~10 MB it is rarely the largest process. SIGKILLed itself (by hand,
or by the OOM killer anyway), it cannot clean up: CMD gets SIGKILL from the kernel (its own
parent-death signal), but CMD's descendants run on. A guard starved of CPU cleans up late.

Nothing from ddg and little from the standard library: the guard runs under `python -I -S`,
without the virtualenv, once per job start and hook run, so every import counts (no
subprocess, socket or contextlib: each pulls in modules that double its start-up CPU). It
starts in about 25 ms of CPU and stays at about 10 MB.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

# Not collections.abc: _collections_abc is loaded at start-up already, collections is not.
from _collections_abc import Callable, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
PreexecFn = Callable[[], object]

# What the guard gets when its node dies (the socket's EOF comes first): not SIGKILL, which
# would leave it no time to kill the tree.
GUARD_DEATH_SIGNAL = signal.SIGHUP
TERMINATE = b"T"  # node -> guard; the end of the stream: kill
KILL_DEADLINE = 5.0  # s: a process that outlives SIGKILL this long is stuck in the kernel
RESCAN = 0.01  # s: children still alive this long after SIGKILL were forked after the scan
OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
STARTED, FAILED, EXITED = "pid", "error", "exit"  # guard -> node, one line each


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


# Looked up once, in the parent: between fork and exec the child only calls it (no dlopen).
_PRCTL = _load_prctl()


def die_with_parent(sig: int, then: PreexecFn | None = None) -> Callable[[], None]:
    """A preexec_fn: the child gets SIG as soon as this process dies, however it dies (SIGKILL
    included). Call it in the parent right before the spawn: it notes the parent's pid.

    THEN (the caller's own preexec, e.g. a setgid) runs first: a change of credentials clears
    the death signal, so prctl must come after it. If the parent died between fork and prctl,
    the kernel sent nothing (the child already has a new parent); getppid() tells, and the child
    ends itself instead of running orphaned. The signal follows the *thread* that forked: see
    ddg.local.launcher.spawn_bound. A no-op where the platform has no such signal (not Linux).
    """
    parent = os.getpid()

    def preexec() -> None:
        if then is not None:
            then()
        if not bind_to_parent(parent, sig):
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)

    return preexec


def bind_to_parent(parent: int, sig: int) -> bool:
    """Have the kernel send SIG to the calling process when its parent dies; False if its
    parent is not PARENT any more (it died already: nothing will be sent, act now). True where
    the platform has no parent-death signal."""
    if _PRCTL is None:
        return True
    _PRCTL(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


# ---- the guard --------------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    """Every running process below ROOT (zombies are dead: they only wait to be reaped), read
    from /proc. A pid read here may die and, rarely, be reused before it is signalled: the
    window is the scan's few ms, and pids are handed out in order."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (not Linux): CMD's group is all the guard can kill
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:  # os.open, not open(): a third faster, and the scan is the guard's slowest step
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
        except OSError:
            continue
        try:
            fields = os.read(fd, 1024).rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        finally:
            os.close(fd)
        if fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _spawn(argv: Sequence[str], preexec: PreexecFn) -> int:
    """fork and exec ARGV in a process group of its own, PREEXEC run first; its pid, or the
    OSError the exec raised (told through a pipe that the exec closes)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # no return from here
        try:
            os.close(r)
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; CMD must not
                signal.signal(sig, signal.SIG_DFL)
            preexec()
            os.execvp(argv[0], list(argv))
        except BaseException as exc:
            errno, text = getattr(exc, "errno", 0), getattr(exc, "strerror", None) or exc
            os.write(w, f"{errno or 0} {text}".encode(errors="replace"))
        finally:
            os._exit(127)
    os.close(w)
    told = b""
    while chunk := os.read(r, 1024):
        told += chunk
    os.close(r)
    if told:
        os.waitpid(pid, 0)
        errno, _, text = told.decode(errors="replace").partition(" ")
        raise OSError(int(errno) if errno.isdigit() else 0, text)
    return pid


class _Guard:
    def __init__(self, parent: int, chan: int, argv: Sequence[str]) -> None:
        self.parent = parent
        self.chan = chan  # our end of the node's socket, non-blocking
        self.argv = argv
        self.cmd: int | None = None  # CMD's pid
        self.code: int | None = None  # CMD's exit, once reaped
        self.stopping = False
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, GUARD_DEATH_SIGNAL):
            signal.signal(sig, lambda *_: None)  # the wake-up fd says which

    def say(self, *words: object) -> None:
        try:  # one short line: a socket's buffer takes it whole
            os.write(self.chan, " ".join(map(str, words)).encode(errors="replace") + b"\n")
        except OSError:  # the node is gone: nobody to tell
            pass

    def node_gone(self) -> bool:
        """The node died or asked for the end (its end of the socket is closed), or we have
        another parent. Reads what the node sent; b"T" starts a stop."""
        if os.getppid() != self.parent:
            return True
        while True:
            try:
                data = os.read(self.chan, 64)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not data:
                return True
            if TERMINATE in data:
                self.terminate()

    def terminate(self) -> None:
        if not self.stopping:
            self.stopping = True
            tree = _tree(os.getpid())
            _signal_all(tree, signal.SIGTERM)
            _signal_all(tree, signal.SIGCONT)  # a stopped process cannot act on SIGTERM

    def reap(self) -> bool:
        """Reap what has ended; True when no child is left, which means no process of the tree
        is: a process below the guard whose parent died is the guard's child (subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if pid == self.cmd:
                self.code = os.waitstatus_to_exitcode(status)

    def wait_for_events(self, timeout: float | None, *, node: bool = True) -> set[int]:
        """Until a signal (or, with NODE, the socket) says something, or TIMEOUT s; the signals
        that came. (Once the socket has ended it is always readable: do not wait on it then.)"""
        try:
            select.select([self.chan, self.wake_r] if node else [self.wake_r], [], [], timeout)
        except InterruptedError:
            pass
        try:
            return set(os.read(self.wake_r, 512))
        except BlockingIOError:
            return set()

    def start(self) -> int:
        if self.node_gone():  # it died while we started: start nothing
            return 0
        old_adj = _read_oom_adj()
        try:
            _write_oom_adj("-1000")
        except OSError:  # only with CAP_SYS_RESOURCE
            pass

        def as_before() -> None:
            if old_adj is not None and _read_oom_adj() != old_adj:
                _write_oom_adj(old_adj)  # a raise: allowed to anyone

        try:
            self.cmd = _spawn(self.argv, die_with_parent(signal.SIGKILL, then=as_before))
        except OSError as exc:  # the node logs it
            self.say(FAILED, exc.errno or 0, exc.strerror or exc)
            return 127
        self.say(STARTED, self.cmd)
        if self.stopping:  # the node asked for a stop before CMD ran: it gets its SIGTERM now
            self.stopping = False
            self.terminate()
        return self.watch()

    def watch(self) -> int:
        """Until the node dies or asks for the end, or CMD exits (while stopping: until the
        whole tree has); then the tree is killed, and CMD's code told."""
        while True:
            signals = self.wait_for_events(None)
            if self.node_gone():
                break
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                self.terminate()
            empty = self.reap()
            if self.code is not None and (not self.stopping or empty):
                break
        self.kill_tree()
        self.say(EXITED, self.code)
        return 0

    def kill_tree(self) -> None:
        """SIGKILL every process below the guard and reap them all: CMD's group in one call,
        then what a scan of /proc finds, again (in case something forked after the scan) until
        the guard has no child left."""
        if self.cmd is not None and self.code is None:  # its pid cannot be reused yet
            try:
                os.killpg(self.cmd, signal.SIGKILL)  # the bulk, in one call
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + KILL_DEADLINE
        while not self.reap():
            now = time.monotonic()
            if now > deadline:
                print(f"ddg job guard: processes {_tree(os.getpid())} outlived SIGKILL for "
                      f"{KILL_DEADLINE:g} s", file=sys.stderr)
                return
            _signal_all(_tree(os.getpid()), signal.SIGKILL)
            rescan = now + RESCAN
            while not self.reap() and time.monotonic() < rescan:
                self.wait_for_events(RESCAN, node=False)  # SIGCHLD, as each child goes


def _read_oom_adj() -> str | None:
    try:
        with open(OOM_SCORE_ADJ) as f:
            return f.read().strip()
    except OSError:
        return None


def _write_oom_adj(value: str) -> None:
    with open(OOM_SCORE_ADJ, "w") as f:
        f.write(value)


def main(argv: Sequence[str]) -> int:
    """PARENT FD -- CMD ARGS...: run CMD so that its whole tree dies with PARENT (see above)."""
    if len(argv) < 4 or argv[2] != "--" or not argv[0].isdigit() or not argv[1].isdigit():
        print("usage: lifeline.py PARENT_PID FD -- CMD [ARGS...] (started by ddg-node)",
              file=sys.stderr)
        return 2
    parent, fd = int(argv[0]), int(argv[1])
    try:
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    except OSError as exc:
        print(f"ddg job guard: fd {fd} is not the node's socket: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    if _PRCTL is not None:
        _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return _Guard(parent, fd, argv[3:]).start()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # nothing to finalize: a node waiting for a stop waits a few ms less
