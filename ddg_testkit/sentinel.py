"""A Redis Sentinel deployment on loopback for the tests: a master, a replica and N sentinels,
each a real redis-server (the one ddg.embedded finds) on its own port and temp dir.

Every process dies with the test process (ddg.launcher.spawn_bound) and close() stops them
all. The replica replicates as its own ACL user, so that cut_replication() can keep it from
ever hearing of a write: the deterministic way to lose an acknowledged write in a failover.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from ddg.embedded import find_redis_server, free_port
from ddg.errors import EmbeddedRedisError
from ddg.launcher import spawn_bound

from .wait import wait_until

HOST = "127.0.0.1"
REPL_USER, REPL_PASSWORD = "repl", "repl-secret"


class _Server:
    """One redis-server (or sentinel) from a config file in its own dir."""

    def __init__(self, name: str, base: Path, lines: list[str], *, sentinel: bool = False,
                 password: str | None = None) -> None:
        self.name = name
        self.port = free_port(HOST)
        self.dir = base / name
        self.dir.mkdir()
        self.password = password
        conf = self.dir / "redis.conf"
        conf.write_text("\n".join([
            f"port {self.port}", f"bind {HOST}", "daemonize no", f'dir "{self.dir}"',
            f'logfile "{self.dir / "redis.log"}"', "save \"\"", "appendonly no", *lines]) + "\n")
        argv = [find_redis_server(), str(conf)] + (["--sentinel"] if sentinel else [])
        self.proc: subprocess.Popen[bytes] = spawn_bound(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def ping(self) -> bool:
        if self.proc.poll() is not None:
            log = self.dir / "redis.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise EmbeddedRedisError(f"{self.name} exited: {' | '.join(tail)}")
        try:
            with self.client(0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class SentinelSet:
    """Master, replica and SENTINELS sentinels monitoring them as MASTER_NAME. PASSWORD: the
    default user's password on all of them (sentinels included), as redis+sentinel:// URLs
    with credentials expect. Use as a context manager, or start() and close()."""

    def __init__(self, *, master_name: str = "ddg", sentinels: int = 3,
                 password: str | None = None, down_after_ms: int = 500,
                 failover_timeout_ms: int = 2000) -> None:
        self.master_name = master_name
        self.password = password
        self.n_sentinels = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.servers: dict[str, _Server] = {}  # "a" (first master), "b" (replica), sentinels
        self.sentinels: list[_Server] = []

    def start(self, timeout: float = 20.0) -> SentinelSet:
        self._tmp = tempfile.TemporaryDirectory(prefix="ddg-sentinel-")
        base = Path(self._tmp.name)
        try:
            auth = [f'requirepass "{self.password}"'] if self.password else []
            users = [f"user {REPL_USER} on >{REPL_PASSWORD} ~* &* +@all"]
            a = self._add(_Server("a", base, auth + users, password=self.password))
            wait_until(a.ping, timeout=timeout, what="the Redis master")
            b = self._add(_Server("b", base, auth + users + [
                f"replicaof {HOST} {a.port}", f"masteruser {REPL_USER}",
                f"masterauth {REPL_PASSWORD}"], password=self.password))
            wait_until(b.ping, timeout=timeout, what="the Redis replica")
            m = self.master_name
            for i in range(self.n_sentinels):
                lines = [f"sentinel monitor {m} {HOST} {a.port} {self.n_sentinels // 2 + 1}",
                         f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
                         f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
                         f"sentinel parallel-syncs {m} 1"]
                if self.password:
                    lines += [f'requirepass "{self.password}"',
                              f'sentinel auth-pass {m} "{self.password}"',
                              f'sentinel sentinel-pass "{self.password}"']
                s = self._add(_Server(f"s{i + 1}", base, lines, sentinel=True,
                                      password=self.password))
                self.sentinels.append(s)
            for s in self.sentinels:
                wait_until(s.ping, timeout=timeout, what=f"sentinel {s.name}")
            wait_until(self.ready, timeout=timeout,
                       what="replica in sync and every sentinel seeing the others and it")
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, server: _Server) -> _Server:
        self.servers[server.name] = server
        return server

    @property
    def url(self) -> str:
        """The redis+sentinel:// URL, without the password (pass it as DDG_REDIS_PASSWORD)."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master(self) -> _Server | None:
        """The server the first sentinel that answers names as the master."""
        for s in self.sentinels:
            if not s.running:
                continue
            try:
                with s.client(0.5) as c:
                    addr = c.execute_command("SENTINEL", "get-master-addr-by-name",
                                             self.master_name)
            except redis.RedisError:
                continue
            if addr:
                port = int(addr[1])
                return next((v for v in self.servers.values() if v.port == port), None)
        return None

    def ready(self) -> bool:
        """The replica is in sync and every sentinel knows the master, the replica and the
        other sentinels: a failover can happen."""
        a, b = self.servers["a"], self.servers["b"]
        with b.client() as c:
            if c.info("replication").get("master_link_status") != "up":
                return False
        for s in self.sentinels:
            with s.client() as c:
                info = c.execute_command("SENTINEL", "master", self.master_name)
                fields = dict(zip(info[::2], info[1::2], strict=True)) if isinstance(
                    info, list) else info
                known = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
                others = int(known.get("num-other-sentinels", 0))
                replicas = int(known.get("num-slaves", 0))
                if others < self.n_sentinels - 1 or replicas < 1 or int(known["port"]) != a.port:
                    return False
        return True

    def cut_replication(self) -> None:
        """Keep the current master's writes from reaching the replica: its replication user is
        disabled and its link killed, so it cannot reconnect."""
        master = self.master()
        assert master is not None
        replica = next(v for k, v in self.servers.items() if k in "ab" and v is not master)
        with master.client() as c:
            c.execute_command("ACL", "SETUSER", REPL_USER, "off")
            c.execute_command("CLIENT", "KILL", "USER", REPL_USER)

        def link_down() -> bool:
            with replica.client() as c:
                return c.info("replication").get("master_link_status") == "down"
        wait_until(link_down, timeout=10, what="the replica's link to the master down")

    def close(self) -> None:
        for server in reversed(list(self.servers.values())):
            server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
