"""docs/operations.md's runbook, run: each block tagged `<!-- runbook: ID -->` is read from the
doc and its commands run as written (the `ddg-node` the venv installs, the settings from the
environment as on the admin host), on real nodes and a real Redis on loopback. What a block
does on another host (`systemctl start ddg-node`, `systemctl disable --now ddg-node`) the test
does to the node process, and says so where it does.

The Redis and Sentinel units are checked with `systemd-analyze verify`, then played as systemd
would run them (their state directory taken over for the `redis` user, the `+` step as root,
the server as `redis`) with this machine's redis-server: Debian's redis-server package is not
installed (other tests would pick it up)."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ddg.errors import Removed
from ddg.local.embedded import free_port, redis_server
from ddg.local.tools import Tool
from ddg_testkit import LocalCluster, tools
from ddg_testkit.procs import stop
from ddg_testkit.wait import wait_until

pytestmark = pytest.mark.integration

Make = Callable[..., LocalCluster]
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_BLOCK = re.compile(r"^([ \t]*)<!-- runbook: ([\w-]+) -->\n\1```(?:sh)?\n(.*?)^\1```",
                    re.DOTALL | re.MULTILINE)
SYSTEMD_ANALYZE = tools.optional(tools.systemd_analyze)


def blocks() -> dict[str, str]:
    found = {}
    for m in _BLOCK.finditer(OPERATIONS.read_text()):
        assert m.group(2) not in found, f"two runbook blocks named {m.group(2)}"
        found[m.group(2)] = textwrap.dedent(textwrap.indent(m.group(3), m.group(1)))
    return found


def commands(block: str) -> list[str]:
    """A block's commands: `$ ` lines of a transcript, else every line (comments dropped)."""
    lines = block.splitlines()
    if any(ln.startswith("$ ") for ln in lines):
        return [ln[2:] for ln in lines if ln.startswith("$ ")]
    return [ln.split("  #")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def run(cmd: str, url: str, cluster: str = "ddg") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDG_")}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            "DDG_REDIS_URL": url, "DDG_CLUSTER": cluster}
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=90,
                          env=env)


def squeeze(text: str) -> list[str]:
    return [" ".join(ln.split()) for ln in text.strip().splitlines()]


def test_every_runbook_block_is_run_here() -> None:
    assert set(blocks()) == {"timing-show", "timing-set", "replace-remove", "replace-start",
                             "retire-remove", "retire-host", "data-dirs", "redis-unit",
                             "sentinel-unit"}, "a new block: run it in a test here"


def test_changing_the_timing(make_cluster: Make) -> None:
    c = make_cluster(cluster="ddg")
    names = c.start(3)
    c.wait_goose(timeout=10)
    url = c.redis_url
    assert url is not None and names == ["n1", "n2", "n3"]
    for step in ("timing-show", "timing-set"):
        transcript = blocks()[step]
        [cmd] = commands(transcript)
        out = run(cmd, url)
        assert out.returncode == 0, out.stderr
        want = [ln for ln in squeeze(transcript) if not ln.startswith("$ ")]
        assert squeeze(out.stdout) == want, f"{cmd}: the doc shows\n{transcript}"
    c.wait_for(lambda: all((s := c.status(n)) is not None and s.timing.timings == ("fast",)
                           for n in names), timeout=10, what="every node to run fast")
    # A goose on the new timing. (No election on the way is the timing change's own claim,
    # measured by tests/node/test_cluster_timing.py; `fast` on a loaded machine may have one after.)
    c.wait_goose(timeout=10)


def test_replacing_a_dead_disk(make_cluster: Make) -> None:
    c = make_cluster(cluster="ddg")
    c.start(3)
    url = c.redis_url
    assert url is not None
    c.wait_goose(timeout=10)
    c.kill("n3")  # the disk died: the process and its data dir are gone
    c.wait("n3", 5)
    shutil.rmtree(c.data_dir("n3"))
    c.wait_goose(["n1", "n2"], timeout=10)

    # the new disk, before the removal: refused, with the command that fixes it
    c.restart("n3")
    assert c.wait("n3", 20) == 1
    shown = next(ln for ln in OPERATIONS.read_text().splitlines()
                 if ln.startswith("ddg-node: error: name 'n3'"))
    assert shown.replace("http://10.0.0.13:4001", c.address("n3")) in c.log_tail("n3")

    status, remove = commands(blocks()["replace-remove"])
    out = run(status, url)
    assert "ddg-node remove n3" in out.stdout, out.stdout + out.stderr
    out = run(remove, url)
    assert out.returncode == 0 and out.stdout.startswith("removed n3 from cluster ddg"), \
        out.stderr

    start, status = commands(blocks()["replace-start"])
    assert start == "systemctl start ddg-node"
    c.restart("n3")  # what the unit does: the node, on its new (empty) data dir
    c.wait_joined(["n1", "n2", "n3"])

    def n3_follows() -> bool:
        now = c.wait_goose(timeout=10)
        out = run(status, url)
        rows = [r.split() for r in out.stdout.splitlines() if r.startswith("n3 ")]
        return bool(rows) and rows[0][2] == "duck" and rows[0][4] == now

    c.wait_for(n3_follows, timeout=20, what="ddg-node status: n3 a duck of the goose")


def test_removing_a_host_for_good(make_cluster: Make) -> None:
    c = make_cluster(cluster="ddg")
    c.start(3)
    url = c.redis_url
    assert url is not None
    c.wait_goose(timeout=10)
    [remove] = commands(blocks()["retire-remove"])
    out = run(remove, url)
    assert out.returncode == 0, out.stderr
    assert c.wait("n3", 15) == 0, "a live node that was removed exits 0 by itself"
    assert c.wait_goose(["n1", "n2"], timeout=10)

    # started again by mistake: refused with the line the doc shows, nothing changes
    c.restart("n3")
    assert c.wait("n3", 20) == 3, "exit status 3: the unit's RestartPreventExitStatus=3"
    line = c.log_tail("n3").splitlines()[-1]
    shown = next(ln for ln in OPERATIONS.read_text().splitlines()
                 if ln.startswith("ddg-node: error: this data dir"))
    want = re.escape(shown.replace("/var/lib/ddg-node", str(c.data_dir("n3")))
                     .replace("'prod'", "'ddg'")).replace("version\\ 9", r"version\ \d+")
    assert re.fullmatch(want, line), f"{line}\n{shown}"

    disable, prune = commands(blocks()["retire-host"])
    assert disable == "systemctl disable --now ddg-node"  # the process has exited already
    out = run(prune.replace("/var/lib/ddg-node", str(c.data_dir("n3"))), url)
    assert out.returncode == 0, out.stderr
    assert f"deleted {c.data_dir('n3')} (n3, cluster ddg, removed)" in out.stdout
    assert not c.data_dir("n3").exists()
    members = redis.Redis.from_url(url).hkeys("ddg:ddg:members")
    assert sorted(members) == [b"n1", b"n2"]
    c.wait_goose(["n1", "n2"], timeout=10)


def test_data_dirs_block_lists_the_default_location(make_cluster: Make,
                                                    tmp_path: Path) -> None:
    """`ddg-node data-dirs` as the doc types it: $XDG_STATE_HOME/ddg, each dir's state."""
    c = make_cluster(cluster="ddg")
    c.start(1)
    url = c.redis_url
    assert url is not None
    c.wait_goose(timeout=10)
    state = tmp_path / "state"
    shutil.copytree(c.data_dir("n1"), state / "ddg" / "ddg" / "n1",
                    ignore=shutil.ignore_patterns("lock"))
    [cmd] = commands(blocks()["data-dirs"])
    out = run(f"XDG_STATE_HOME={shlex.quote(str(state))} {cmd}", url)
    assert out.returncode == 0, out.stderr
    rows = squeeze(out.stdout)
    assert rows[0] == "PATH NAME CLUSTER STATE"
    assert rows[1:] == [f"{state}/ddg/ddg/n1 n1 ddg member"]


# ---- Redis and Sentinel under systemd -------------------------------------------------------

def unit_text(block: str) -> tuple[str, str]:
    """The unit's file name and text, from the block's `cat > PATH <<'EOF'` here-document."""
    m = re.search(r"cat > /etc/systemd/system/([\w.-]+) <<'EOF'\n(.*?)\nEOF\n", block,
                  re.DOTALL)
    assert m is not None
    return m.group(1), m.group(2) + "\n"


def service(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            out[key] = value
    return out


def unit_user() -> tuple[str, int, int]:
    """Debian's `redis` user when the machine has one (redis-tools makes it), else nobody."""
    for name in ("redis", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, pw.pw_uid, pw.pw_gid
    pytest.skip("no redis or nobody user")


@pytest.fixture
def bed() -> Iterator[dict[str, object]]:
    """A root dir the unit's user can reach (pytest's tmp_path is under a mode-700 dir)."""
    if os.geteuid() != 0:
        pytest.skip("root only: the units' user and the take-over of a root-owned directory")
    root = Path(tempfile.mkdtemp(prefix="ddg-runbook-"))
    root.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield {"root": root, "procs": procs}
    finally:
        for p in procs:
            stop(p, 5)
        shutil.rmtree(root, ignore_errors=True)


def systemd_line(value: str, root: Path, user: str) -> list[str]:
    """An Exec line as systemd runs it on ROOT: %S, /etc and the binaries moved, the user
    named (Debian's redis, or nobody where it does not exist)."""
    value = value.replace("%S", f"{root}/var/lib").replace("/etc/redis", f"{root}/etc/redis")
    value = value.replace("/usr/bin/redis-server", redis_server().path)
    if user != "redis":
        value = value.replace("-o redis -g redis", f"-o {user} -g {pwd.getpwnam(user).pw_gid}")
    return shlex.split(value)


def start_as(cmd: list[str], uid: int, gid: int, log: Path) -> subprocess.Popen[bytes]:
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    with log.open("ab") as f:
        return subprocess.Popen([*drop, *cmd], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def take_over(directory: Path, uid: int, gid: int) -> None:
    """StateDirectory=: systemd makes it, or takes over the existing one recursively."""
    directory.mkdir(parents=True, exist_ok=True)
    for p in [directory, *directory.rglob("*")]:
        os.chown(p, uid, gid)
    directory.chmod(0o700)


def test_redis_and_sentinel_units(bed: dict[str, object]) -> None:
    root = bed["root"]
    procs = bed["procs"]
    assert isinstance(root, Path) and isinstance(procs, list)
    user, uid, gid = unit_user()
    units = {}
    for step in ("redis-unit", "sentinel-unit"):
        name, text = unit_text(blocks()[step])
        units[name] = service(text)
        assert units[name]["User"] == "redis" and units[name]["ProtectSystem"] == "strict"
        if isinstance(SYSTEMD_ANALYZE, Tool):
            # verify wants the binaries it names: this machine's redis-server, at its path
            path = root / "units" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(text.replace("/usr/bin/redis-server", redis_server().path))
            proc = subprocess.run([SYSTEMD_ANALYZE.path, "verify", str(path)],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0 and proc.stdout + proc.stderr == "", (
                f"systemd-analyze verify {name}: {proc.stdout}{proc.stderr}")

    # deploy.md's layout: /etc/redis and the data dir made by root, mode 700; files mode 600
    port, sport = free_port(), free_port()
    etc, data = root / "etc/redis", root / "var/lib/redis-ddg"
    for d in (etc, data, root / "var/lib/redis-ddg-sentinel"):
        d.mkdir(parents=True, mode=0o700)
    conf = etc / "ddg.conf"
    conf.write_text(f"bind 127.0.0.1\nport {port}\ndir {data}\nappendonly yes\n")
    sconf = etc / "ddg-sentinel.conf"
    sconf.write_text(f"bind 127.0.0.1\nport {sport}\ndir {root}/var/lib/redis-ddg-sentinel\n"
                     f"sentinel monitor prod 127.0.0.1 {port} 1\n")
    for f in (conf, sconf):
        f.chmod(0o600)
    root.chmod(0o755)
    (root / "var").chmod(0o755)
    (root / "var/lib").chmod(0o755)
    (root / "etc").chmod(0o755)

    # as it was: that file started as the redis user (Debian's unit) cannot even be read
    log = root / "redis.log"
    old = start_as([redis_server().path, str(conf)], uid, gid, log)
    assert old.wait(30) != 0, "the guide's root-owned file under a redis user must fail"
    assert f"can't open config file '{conf}': Permission denied" in log.read_text()

    # the unit: take-over, the + step as root, the server as the unit's user
    take_over(data, uid, gid)
    red = units["redis-ddg.service"]
    assert red["StateDirectory"] == "redis-ddg"
    pre = subprocess.run(systemd_line(red["ExecStartPre"].removeprefix("+"), root, user),
                         capture_output=True, text=True, timeout=30)
    assert pre.returncode == 0, pre.stderr
    procs.append(start_as(systemd_line(red["ExecStart"], root, user), uid, gid, log))
    client = redis.Redis(port=port, socket_timeout=2)
    wait_until(lambda: _pings(client), timeout=20, what=f"Redis as {user}",
               detail=lambda: log.read_text()[-2000:])
    client.set("ddg:probe", "1")
    assert client.config_rewrite(), "Sentinel's replicaof rewrite must be able to land"
    assert "appendonly" in (data / "redis.conf").read_text()
    wait_until(lambda: any(p.name.startswith("appendonly") for p in data.iterdir()),
               timeout=10, what="the append-only file in the state directory")
    client.close()

    sdir = root / "var/lib/redis-ddg-sentinel"
    take_over(sdir, uid, gid)
    sen = units["redis-ddg-sentinel.service"]
    spre = systemd_line(sen["ExecStartPre"].removeprefix("+"), root, user)
    assert subprocess.run(spre, timeout=30).returncode == 0
    procs.append(start_as(systemd_line(sen["ExecStart"], root, user), uid, gid, log))
    sclient = redis.Redis(port=sport, socket_timeout=2)
    wait_until(lambda: _master(sclient) == ("127.0.0.1", str(port)), timeout=20,
               what="the sentinel to name the master", detail=lambda: log.read_text()[-2000:])
    copy = sdir / "sentinel.conf"
    wait_until(lambda: "sentinel myid" in copy.read_text(), timeout=10,
               what="the sentinel to rewrite its copy")
    kept = copy.read_text()
    assert subprocess.run(spre, timeout=30).returncode == 0
    assert copy.read_text() == kept, "a restart keeps the sentinel's identity and epochs"
    sclient.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _master(client: redis.Redis) -> tuple[str, str] | None:
    try:
        reply = client.execute_command("SENTINEL", "get-master-addr-by-name", "prod")
    except redis.RedisError:
        return None
    if not reply:
        return None
    host, port = (x.decode() if isinstance(x, bytes) else x for x in reply)
    return host, port


def test_the_node_unit_does_not_restart_a_removed_node() -> None:
    """deploy.md's unit names the exit status of a removed data dir's refusal (systemd would
    otherwise start it again every RestartSec)."""
    name, unit = unit_text((OPERATIONS.parent / "deploy.md").read_text())
    assert name == "ddg-node.service"
    assert service(unit)["RestartPreventExitStatus"] == str(Removed.EXIT_STATUS)
