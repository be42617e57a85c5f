"""A job that forks the way real ones do, and /proc as the judge of what still runs: shared by
the `--exec`/`--on-change` tests (tests/ops/test_exec.py) and benchmarks/exec_kill.py.

The job (or hook) is a shell script whose long-lived program starts without `exec`, so the
shell forks it and waits (the issue's case: Debian's `sh -c 'a; b'` forks too). That program
forks a grandchild that calls setsid() and forks again, as a daemon does: the last process has
a session of its own and no parent in the tree, the one no process-group kill reaches. It also
ignores SIGTERM: only SIGKILL ends it. Every process of a tree carries the tree's directory in
its command line (its MARKER); which instance it belongs to is read from its environment
(DDG_TERM, DDG_NODE_NAME), so /proc alone says what runs, whoever started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .cluster import LocalCluster
from .procs import proc_stat

# argv: RECORD [LIFE]. Forks the setsid'd, double-forked escapee, then lives LIFE seconds
# (default: forever). The program and the escapee record "what pid term node" lines in RECORD.
TREE = textwrap.dedent("""\
    import os, signal, sys, time
    record, life = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None
    def note(what):
        with open(record, "a") as f:
            f.write(f"{what} {os.getpid()} {os.environ.get('DDG_TERM')} "
                    f"{os.environ.get('DDG_NODE_NAME')}\\n")
    def on_term(*_):
        note("sigterm")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note("escapee")
        while True:
            signal.pause()
    os.waitpid(first, 0)
    note("program")
    if life is None:
        while True:
            signal.pause()
    time.sleep(life)
""")

# A first line, then the long-lived program, started without exec: the shell forks it.
SCRIPT = textwrap.dedent("""\
    echo "started $DDG_TERM $DDG_NODE_NAME $*" >> "{dir}/started"
    "{python}" -I -S "{dir}/tree.py" "{dir}/records" {life}
""")

# How many processes a running tree has: the shell, its program, the escapee.
TREE_SIZE = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class Tree:
    """A forking job or hook written into DIR: `argv` runs it (a hook gets ROLE TERM GOOSE
    after it); `marker` is in the command line of each of its processes."""

    dir: Path
    argv: tuple[str, ...]

    @property
    def marker(self) -> str:
        return f"{self.dir}/"

    def records(self) -> list[list[str]]:
        path = self.dir / "records"
        return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def write_tree(where: Path, *, life: float | None = None) -> Tree:
    """A forking job (or hook) in the directory WHERE; its program lives LIFE seconds (None:
    forever), its escapee until it is killed."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "tree.py").write_text(TREE)
    (where / "job.sh").write_text(SCRIPT.format(dir=where, python=sys.executable,
                                                life="" if life is None else life))
    return Tree(dir=where, argv=("sh", str(where / "job.sh")))


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    term: int | None
    node: str | None
    guard: bool  # the job guard that runs the tree (its command line names the tree too)
    # One of the tree's own processes: its shell (`sh DIR/job.sh`), the program or the
    # escapee (`python -I -S DIR/tree.py`). Not the guard, nor the node (whose command line
    # names the tree too) or a child the node or a guard forked that has not exec'd yet.
    tree: bool = False


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _environ(pid: int) -> dict[str, str]:
    raw = _read(f"/proc/{pid}/environ") or b""
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (b"DDG_TERM", b"DDG_NODE_NAME"):
            out[key.decode()] = value.decode(errors="replace")
    return out


def _running(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _is_tree(argv: list[bytes]) -> bool:
    shell = len(argv) > 1 and argv[0].rsplit(b"/", 1)[-1] == b"sh" and argv[1].endswith(
        b"/job.sh")
    return shell or (len(argv) > 3 and argv[1:3] == [b"-I", b"-S"]
                     and argv[3].endswith(b"/tree.py"))


def _describe(pid: int, cmdline: bytes) -> Proc:
    env = _environ(pid)
    term = env.get("DDG_TERM")
    argv = cmdline.split(b"\0")
    return Proc(pid=pid, term=int(term) if term and term.isdigit() else None,
                node=env.get("DDG_NODE_NAME"),
                guard=any(arg.endswith(b"ddg/ops/lifeline.py") for arg in argv),
                tree=_is_tree(argv))


def find(markers: Iterable[str]) -> list[Proc]:
    """Every running (not zombie) process whose command line holds one of MARKERS, read afresh
    from /proc: guards included."""
    wanted = [m.encode() for m in markers]
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmdline = _read(f"/proc/{entry}/cmdline")
        if cmdline and any(m in cmdline for m in wanted) and _running(int(entry)):
            out.append(_describe(int(entry), cmdline))
    return out


@dataclass
class Double:
    at: float  # monotonic s
    terms: dict[int, list[int]]  # term -> its running processes


@dataclass
class Sampler:
    """Reads /proc every INTERVAL s in a thread and notes every moment at which processes of
    two instances of a tree (two DDG_TERMs) run at once. Only tree processes count, not their
    guards. A tree process is born a copy of one that carried the marker already (a guard, or
    a tree process), so only the command lines of new pids and of the others that carry the
    marker are read again: a guard's fork may exec the tree, and a node's fork exec a guard.
    (Known by the command line alone, a node's fork whose command line was read before it
    exec'd a hook's guard and its environment after, with the hook's DDG_TERM, counted as a
    second instance for the 3 s the hook ran.)"""

    marker: str
    interval: float = 0.010
    samples: int = 0
    doubles: list[Double] = field(default_factory=list)
    periods: list[float] = field(default_factory=list)  # s between consecutive samples
    _known: dict[int, Proc | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def sample(self) -> dict[int, list[int]]:
        pids = {int(e) for e in os.listdir("/proc") if e.isdigit()}
        for gone in self._known.keys() - pids:
            del self._known[gone]
        wanted = self.marker.encode()
        terms: dict[int, list[int]] = {}
        for pid in pids:
            proc = self._known.get(pid)
            if pid not in self._known or (proc is not None and not proc.tree):
                cmdline = _read(f"/proc/{pid}/cmdline")  # it may exec a guard or the tree
                if cmdline is None:
                    continue
                self._known[pid] = proc = (_describe(pid, cmdline) if wanted in cmdline
                                           else None)
            if proc is None or not proc.tree or proc.term is None or not _running(pid):
                continue
            terms.setdefault(proc.term, []).append(pid)
        return terms

    def _run(self) -> None:
        last = None
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                terms = self.sample()
                self.samples += 1
                if last is not None:
                    self.periods.append(now - last)
                last = now
                if len(terms) > 1:
                    self.doubles.append(Double(at=now, terms=terms))
                self._stop.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        error, self.error = self.error, None
        if error is not None:
            raise error


@dataclass(frozen=True, kw_only=True, slots=True)
class Gone:
    tree_ms: float | None  # to the first look that found no tree process left (None: never)
    all_ms: float | None  # ... and no guard either
    left: list[Proc]  # what still ran at the deadline


def gone_after(markers: Iterable[str], node: str, known: list[Proc], since_ns: int, *,
               timeout: float) -> Gone:
    """Watch until no process of MARKERS started by NODE runs; times from SINCE_NS (a
    monotonic_ns). KNOWN, what ran at SINCE_NS, is watched pid by pid (a look: ~0.1 ms); then
    whole scans of /proc (~3 ms each) until one finds nothing, so that a process KNOWN missed
    still counts."""
    markers = list(markers)
    deadline = time.monotonic() + timeout
    tree_ms = all_ms = None
    while known and time.monotonic() < deadline:
        known = [p for p in known if _running(p.pid)]
        ms = (time.monotonic_ns() - since_ns) / 1e6
        if tree_ms is None and not any(p.tree for p in known):
            tree_ms = ms
        if not known:
            all_ms = ms
            break
        time.sleep(0.0002)
    while True:
        left = [p for p in find(markers) if p.node == node]
        ms = (time.monotonic_ns() - since_ns) / 1e6
        if any(p.tree for p in left):
            tree_ms = None  # one KNOWN missed
        elif tree_ms is None:
            tree_ms = ms
        if not left:
            return Gone(tree_ms=tree_ms, all_ms=ms if all_ms is None else all_ms, left=[])
        all_ms = None
        if time.monotonic() > deadline:
            return Gone(tree_ms=tree_ms, all_ms=None, left=left)
        time.sleep(0.001)


def tree_running(marker: str, node: str, term: int) -> Callable[[], bool]:
    """A condition: NODE's tree for TERM runs whole (its shell, program and escapee)."""
    def check() -> bool:
        procs = [p for p in find([marker]) if p.tree and p.node == node and p.term == term]
        return len(procs) >= TREE_SIZE
    return check


def kill_all(markers: Iterable[str]) -> list[Proc]:
    """SIGKILL whatever runs of MARKERS (a test's clean-up after a failure); what it found."""
    found = find(markers)
    for proc in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class Kill:
    node: str
    sig: str
    hooked: bool  # a hook tree of the node ran when it died
    gone: Gone  # from the signal to the last process of the node's job and hooks


def kill_geese(c: LocalCluster, names: list[str], job: Tree, hook: Tree, kills: int, *,
               signals: Sequence[int] = (signal.SIGKILL,), gone_timeout: float = 2.0,
               progress: Callable[[Kill], object] | None = None) -> list[Kill]:
    """KILLS times: wait until a goose's job tree runs whole, kill its node with the next of
    SIGNALS (SIGKILL; SIGSEGV or SIGABRT: a crash), time how long its job and hooks (every
    process of their trees, guards included) outlive it, then wait for the next goose's tree,
    start the node again and wait until it follows a goose. (On a busy machine leadership may
    move by itself in between: each wait takes whichever goose there is.)"""

    def goose_with_tree(but: str | None = None) -> str | None:
        for name in names:
            s = c.status(name) if name != but else None
            if s is not None and s.role == "goose" and tree_running(job.marker, name, s.term)():
                return name
        return None

    out = []
    for i in range(kills):
        goose = c.wait_for(goose_with_tree, timeout=15, what="a goose's job tree")
        known = [p for p in find([job.marker, hook.marker]) if p.node == goose]
        hooked = any(p.tree and p.node == goose for p in find([hook.marker]))
        sig = signals[i % len(signals)]
        since = time.monotonic_ns()
        if sig == signal.SIGKILL:
            c.kill(goose)
        else:
            c.signal(goose, sig)
        gone = gone_after([job.marker, hook.marker], goose, known, since,
                          timeout=gone_timeout)
        kill = Kill(node=goose, sig=signal.Signals(sig).name, hooked=hooked, gone=gone)
        out.append(kill)
        if progress is not None:
            progress(kill)
        if c.wait(goose, 5) is None:
            raise AssertionError(f"{goose} outlived {kill.sig}")
        c.wait_for(partial(goose_with_tree, but=goose), timeout=15,
                   what="the next goose's job tree")
        c.restart(goose)

        def back(old: str = goose) -> bool:
            s = c.status(old)
            return s is not None and s.goose is not None

        c.wait_for(back, timeout=15, what=f"{goose} back, following a goose")
    return out
