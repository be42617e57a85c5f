"""One ddg-node child process: what it is started with (NodeSpec) and the handle on it
(NodeProcess). `ddg.local.supervisor.Supervisor` owns many of these; use it unless a test needs a
process the supervisor must not know about (an impostor under a taken name, say).

Also the parent-death lifeline (`spawn_bound`, on ddg.lifeline's `die_with_parent`) that the
supervisor uses for every child it starts when told to `die_with_parent`: nodes and the
embedded redis-server alike.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from ddg.errors import ConfigError, DdgError
from ddg.net.tls import TlsConfig
from ddg.ops.lifeline import PreexecFn as PreexecFn  # the supervisor's too
from ddg.ops.lifeline import die_with_parent

T = TypeVar("T")

TLS_ENV = ("DDG_TLS_CERT", "DDG_TLS_KEY", "DDG_TLS_CA", "DDG_TLS_CLIENT_AUTH")

# What a child started with die_with_parent gets when this process dies. SIGKILL, not SIGTERM:
# all of a supervisor's nodes die at once, so a goose's graceful hand-over would go to a node
# that is dying too (with the embedded Redis dying beside them, it could also spend its
# shutdown on Redis timeouts); a node that was frozen (SIGSTOP: the fault harness does it)
# cannot act on SIGTERM and would live on, stopped, an orphan; SIGKILL ends a frozen or wedged
# process as surely as a running one. The cluster is built to survive a node that dies without
# a word, which is all this is. (A console served by `ddg-console --web` runs under a job guard,
# ddg.ops.lifeline, which ends its whole tree with the tab or the server.)
PARENT_DEATH_SIGNAL = signal.SIGKILL


class _Spawner:
    """One thread that lives as long as this process and forks every child bound to it.

    Linux sends the parent-death signal when the *thread* that forked the child ends, not the
    process: a child spawned from a short-lived worker thread (the console runs node actions in
    Textual's worker threads) would be killed as soon as that worker returns. So every bound
    child is forked here, from a daemon thread that ends only with the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ddg-spawner",
                                                daemon=True)
                self._thread.start()
            thread = self._thread
        if threading.current_thread() is thread:
            return fn()
        future: Future[object] = Future()
        self._jobs.put((fn, future))
        return cast(T, future.result())


_SPAWNER = _Spawner()


def node_command() -> list[str]:
    """How to run ddg-node in this Python environment: its console script, run itself (its
    #! line names this environment's interpreter), so that `ps` and `top` show ddg-node and
    its arguments, not `python -m ddg`; `-m ddg` where no script was installed (a source tree
    run in place)."""
    script = Path(sysconfig.get_path("scripts")) / "ddg-node"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "ddg"]


def split_password(url: str) -> tuple[str, str | None]:
    """URL without its password, and the password (None: it has none): a password goes to a
    child by DDG_REDIS_PASSWORD, never on its command line, where `ps` shows it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}@{host}" if user else host
    # (percent-decoded, as the URL's own reader does: `p%40ss` is the password `p@ss`)
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


def start_spawner() -> None:
    """Start the spawner thread now if it is not running. A thread starts in its creator's
    network namespace: a test that moves its own thread into another one (ddg_testkit.hosts)
    calls this first, so that later children still start in this process's namespace."""
    _SPAWNER.call(lambda: None)


def spawn_bound(argv: list[str], *, preexec_fn: PreexecFn | None = None,
                sig: int = PARENT_DEATH_SIGNAL, **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(ARGV, **POPEN) for a child that dies with this process (SIG, see
    PARENT_DEATH_SIGNAL), forked from the long-lived spawner thread; PREEXEC_FN runs first."""

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, preexec_fn=die_with_parent(sig, then=preexec_fn),
                                **popen)

    return _SPAWNER.call(start)


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSpec:
    """What is needed to (re)start one node process with the same identity."""

    name: str
    port: int
    redis_url: str
    cluster: str
    data_dir: Path
    host: str = "127.0.0.1"
    secret: str | None = None
    allow_fault_injection: bool = False
    bootstrap: bool = False  # create the cluster if Redis holds none
    heartbeat_ms: int | None = None
    election_timeout_ms: str | None = None
    log_level: str = "INFO"
    tls: TlsConfig | None = None
    extra_args: tuple[str, ...] = ()
    # Started under this command, e.g. ("ip", "netns", "exec", NS) to run on another network
    # namespace's "host"; it must exec the node in place, so that signals reach the node.
    prefix: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # extra environment, e.g. for TLS settings
    advertise_url: str | None = None  # passed as --advertise-url; the address when set

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a node needs a name")
        if not 0 < self.port < 65536:
            raise ConfigError(f"node {self.name}: port must be 1-65535, got {self.port}")
        if not self.cluster:
            raise ConfigError(f"node {self.name}: the cluster name is empty")

    @property
    def address(self) -> str:
        if self.advertise_url is not None:
            return self.advertise_url
        scheme = "https" if self.tls is not None and self.tls.serving else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        # The URL's password goes by the environment (NodeProcess.start): not in `ps`.
        args = [*self.prefix, *node_command(), "--name", self.name, "--host", self.host,
                "--port", str(self.port), "--redis-url", split_password(self.redis_url)[0],
                "--cluster", self.cluster, "--data-dir", str(self.data_dir),
                "--log-level", self.log_level]
        if self.heartbeat_ms is not None:
            args += ["--heartbeat-ms", str(self.heartbeat_ms)]
        if self.election_timeout_ms is not None:
            args += ["--election-timeout-ms", self.election_timeout_ms]
        if self.allow_fault_injection:
            args.append("--allow-fault-injection")
        if self.bootstrap:
            args.append("--bootstrap")
        tls = self.tls
        if tls is not None:
            for flag, path in (("--tls-cert", tls.cert), ("--tls-key", tls.key),
                               ("--tls-ca", tls.ca)):
                if path is not None:
                    args += [flag, str(path)]
            if tls.client_auth:
                args.append("--tls-client-auth")
        if self.advertise_url is not None:
            args += ["--advertise-url", self.advertise_url]
        return args + list(self.extra_args)


class NodeProcess:
    """One ddg-node child process. Never blocks except in wait()."""

    def __init__(self, spec: NodeSpec, *, log_path: Path | None = None,
                 preexec_fn: PreexecFn | None = None, die_with_parent: bool = False) -> None:
        self.spec = spec
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._preexec = preexec_fn
        # The child gets PARENT_DEATH_SIGNAL when this process dies (see spawn_bound).
        self.die_with_parent = die_with_parent
        self._log: IO[bytes] | None = None
        self._terminated = False  # the current process was sent SIGTERM

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def start(self) -> None:
        if self.running:
            raise DdgError(f"node {self.spec.name} is already running (pid {self.pid})")
        env = dict(os.environ)
        # The spec says all there is about the secret and TLS: nothing comes from our env.
        for var in ("DDG_CLUSTER_SECRET", *TLS_ENV):
            env.pop(var, None)
        if self.spec.secret is not None:
            env["DDG_CLUSTER_SECRET"] = self.spec.secret
        password = split_password(self.spec.redis_url)[1]
        if password:
            env["DDG_REDIS_PASSWORD"] = password
        env.update(self.spec.env)
        out: IO[bytes] | int = subprocess.DEVNULL
        self._terminated = False
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        try:
            if self.die_with_parent:
                self.proc = spawn_bound(
                    self.spec.argv(), preexec_fn=self._preexec, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            else:
                self.proc = subprocess.Popen(
                    self.spec.argv(), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    preexec_fn=self._preexec,
                )
        except BaseException:
            self.close_log()
            raise

    def signal(self, sig: int) -> bool:
        """Send SIG; False if the process is not running."""
        if not self.running:
            return False
        assert self.proc is not None
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> bool:
        return self.signal(signal.SIGKILL)

    def terminate(self) -> bool:
        """SIGTERM, once per process: a node takes a second one as "exit now", cutting its
        stop short (ddg/node/stopping.py). True if the process runs (signalled now or before)."""
        if not self._terminated:
            self._terminated = self.signal(signal.SIGTERM)
            return self._terminated
        return self.running

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (after SIGCONT, in case it is frozen), then SIGKILL if it lingers."""
        if self.running:
            self.signal(signal.SIGCONT)
            self.terminate()
            if self.wait(timeout) is None:
                self.kill()
                self.wait(timeout)
        self.close_log()

    def close_log(self) -> None:
        if self._log is not None and not self.running:
            self._log.close()
            self._log = None
