"""A private network namespace and the iptables rules that cut links between node processes.

Every rule lives in a namespace made by `unshare -n` for this run only, never in the machine's
own: `require_private_netns()` refuses to touch iptables anywhere else.

How a link is cut, on the loopback of that namespace: each node process runs with its own group
id (set in the child before exec). A mangle rule marks every connection with the group id of
the process that opened it (CONNMARK on the first packet), so each packet carries both who sent
it (`-m owner --gid-owner`, the socket's owner) and who opened its connection (`-m connmark`).
Packets from A to B are then exactly:
  * A's packets to B's listening port (A's requests to B), and
  * A's packets on connections that B opened (A's answers to B's requests).
Dropping those two cuts A -> B one way; cutting both ways adds the mirror rules. A node is cut
from Redis by dropping its packets to Redis's port and Redis's packets on connections it opened.
The observer runs as gid 0, which no rule names, so it always sees every node.

How a cut link fails is its mode (CutMode): `drop` loses the packets silently (a dead host or
a dead network); `reset` rejects them with a TCP reset and `icmp` with iptables' default ICMP
port-unreachable, so the sender's connect() is refused and its open connections are reset at
once: a live peer that looks like a crashed one to anyone watching connections. REJECT is
valid in the filter table's OUTPUT chain, where every rule here lives. The iptables-restore
is ddg_testkit.tools.iptables()'s (DDG_IPTABLES, else PATH's iptables and the one beside it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from ddg_testkit.tools import iptables, iptables_missing

ENV_MARKER = "DDG_FAULTS_NETNS"
GID_BASE = 42000

CutMode = Literal["drop", "reset", "icmp"]
CUT_MODES: tuple[CutMode, ...] = get_args(CutMode)
# The iptables target of each mode. tcp-reset needs `-p tcp` in the rule, which all of them have.
_TARGETS: dict[CutMode, str] = {
    "drop": "DROP",
    "reset": "REJECT --reject-with tcp-reset",
    "icmp": "REJECT",  # --reject-with icmp-port-unreachable, the default
}


def missing_prerequisites() -> str | None:
    """Why real network faults cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "real network faults need Linux network namespaces"
    if os.geteuid() != 0:
        return "real network faults need root (unshare -n and iptables); run as root"
    if shutil.which("unshare") is None:
        return "missing unshare: apt-get install -y util-linux"
    return iptables_missing()


def _ns_inode(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def in_private_netns() -> bool:
    """True only in the namespace this harness made: marker set, and not PID 1's namespace."""
    if os.environ.get(ENV_MARKER) != "1":
        return False
    mine, init = _ns_inode("self"), _ns_inode("1")
    return mine is not None and (init is None or mine != init)


def require_private_netns() -> None:
    if not in_private_netns():
        raise RuntimeError("refusing to change iptables outside this run's own network "
                           "namespace (start through `python -m ddg_faults`)")


def reexec_argv(args: Iterable[str]) -> list[str]:
    return ["unshare", "--net", "--", sys.executable, "-m", "ddg_faults", *args]


def reexec_in_private_netns(args: list[str]) -> None:
    """Replace this process with itself inside a new network namespace."""
    env = dict(os.environ)
    env[ENV_MARKER] = "1"
    os.execvpe("unshare", reexec_argv(args), env)


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


EPHEMERAL = (40000, 60999)  # outgoing connections' ports in the namespace
FIXED_PORTS = (20000, 39999)  # where Redis and the nodes listen


def reserve_fixed_ports() -> None:
    """Keep outgoing connections off the ports that Redis and the nodes listen on.

    A port picked free can otherwise be taken as the source port of some outgoing connection
    before the node binds it, or while a killed node waits for its restart on the same port.
    """
    require_private_netns()
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{EPHEMERAL[0]} {EPHEMERAL[1]}\n")


def abort_connections_to(port: int) -> None:
    """Abort every established TCP connection to PORT in this namespace (`ss -K`, the kernel's
    sock_destroy), as the kernel of a process that died closes them: whoever holds one reads
    its end at once. Needs ss (iproute2) and a kernel with CONFIG_INET_DIAG_DESTROY."""
    require_private_netns()
    if shutil.which("ss") is None:
        raise RuntimeError("ss not found: apt-get install -y iproute2")
    proc = subprocess.run(["ss", "-K", "-t", "-n", "state", "established", "dport", "=",
                           f":{port}"], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ss -K failed: {proc.stderr.strip()}")


class PortPool:
    """Hands out listening ports from FIXED_PORTS that nothing holds now."""

    def __init__(self, start: int = FIXED_PORTS[0]) -> None:
        self._next = start

    def take(self) -> int:
        while self._next <= FIXED_PORTS[1]:
            port, self._next = self._next, self._next + 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free fixed port left")


def _restore(rules: str) -> None:
    require_private_netns()
    proc = subprocess.run([iptables()[1], "-w"], input=rules, text=True,
                          capture_output=True, timeout=20)
    if proc.returncode != 0:
        raise RuntimeError(f"iptables-restore failed: {proc.stderr.strip()}\n{rules}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoint:
    name: str
    gid: int
    port: int


class Firewall:
    """The cut links of this namespace; apply() replaces the whole filter table at once."""

    def __init__(self, *, redis_port: int) -> None:
        self.redis_port = redis_port
        self.nodes: dict[str, Endpoint] = {}
        self._installed = False

    def add(self, name: str, port: int) -> Endpoint:
        ep = Endpoint(name=name, gid=GID_BASE + len(self.nodes) + 1, port=port)
        self.nodes[name] = ep
        return ep

    def preexec(self, name: str) -> Callable[[], None]:
        gid = self.nodes[name].gid

        def drop_to_group() -> None:
            os.setgroups([])
            os.setgid(gid)
        return drop_to_group

    def install(self) -> None:
        """Connection marking; must be in place before any node process starts."""
        lines = ["*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
                 ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
        for ep in self.nodes.values():
            lines.append(f"-A OUTPUT -m conntrack --ctstate NEW -m owner --gid-owner {ep.gid} "
                         f"-j CONNMARK --set-mark {ep.gid}")
        lines.append("COMMIT")
        _restore("\n".join(lines) + "\n")
        # Never call a packet INVALID (and so unmarked) for being outside the TCP window after
        # a long cut: it would slip through the connmark rules.
        liberal = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
        if os.path.exists(liberal):
            with open(liberal, "w") as f:
                f.write("1\n")
        self._installed = True
        self.apply(cut=(), redis_cut=())

    def rules(self, cut: Iterable[tuple[str, str]], redis_cut: Iterable[str],
              modes: Mapping[tuple[str, str], CutMode] | None = None) -> str:
        """The filter table for CUT (directed pairs), each cut the way MODES says (default
        drop), and REDIS_CUT (nodes cut from Redis, always by dropping)."""
        modes = modes or {}
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                 ":OUTPUT ACCEPT [0:0]"]
        for a, b in sorted(set(cut)):
            src, dst = self.nodes[a], self.nodes[b]
            target = _TARGETS[modes.get((a, b), "drop")]
            lines.append(f"-A OUTPUT -p tcp -m owner --gid-owner {src.gid} -m tcp "
                         f"--dport {dst.port} -j {target}")
            lines.append(f"-A OUTPUT -p tcp -m owner --gid-owner {src.gid} -m connmark "
                         f"--mark {dst.gid} -j {target}")
        for a in sorted(set(redis_cut)):
            ep = self.nodes[a]
            lines.append(f"-A OUTPUT -p tcp -m owner --gid-owner {ep.gid} -m tcp "
                         f"--dport {self.redis_port} -j DROP")
            lines.append(f"-A OUTPUT -p tcp -m tcp --sport {self.redis_port} -m connmark "
                         f"--mark {ep.gid} -j DROP")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def apply(self, *, cut: Iterable[tuple[str, str]], redis_cut: Iterable[str],
              modes: Mapping[tuple[str, str], CutMode] | None = None) -> None:
        if not self._installed:
            raise RuntimeError("install() first")
        _restore(self.rules(cut, redis_cut, modes))
