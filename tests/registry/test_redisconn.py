"""The one Redis client factory: every URL form parses to what it says, every bad one is a
one-line ConfigError with the password masked."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio.sentinel as asentinel
import redis.sentinel

from ddg.errors import ConfigError
from ddg.registry.redisconn import RedisOptions, Target, async_client, parse_redis_url, sync_client


@pytest.mark.parametrize(("url", "want"), [
    ("redis://h", Target(host="h")),
    ("redis://u:p%40ss@h:7000/3", Target(host="h", port=7000, db=3, username="u",
                                         password="p@ss")),
    ("redis://:pw@[::1]:7000/0", Target(host="::1", port=7000, password="pw")),
    ("rediss://h:6380/1", Target(host="h", port=6380, db=1, tls=True)),
    ("unix:///run/redis.sock?db=2", Target(path="/run/redis.sock", db=2)),
    ("redis+sentinel://s1:26379,s2:26380/main/4",
     Target(sentinels=(("s1", 26379), ("s2", 26380)), master="main", db=4)),
    ("redis+sentinel://ddg:pw@s1,[::1]:1/main",
     Target(sentinels=(("s1", 26379), ("::1", 1)), master="main", username="ddg",
            password="pw")),
])
def test_url_forms(url: str, want: Target) -> None:
    got = parse_redis_url(url)
    assert got == want


@pytest.mark.parametrize(("url", "match"), [
    ("http://h", "must start with"),
    ("redis://h:0/0", "port '0'"),
    ("redis://h:99999", "port '99999'"),
    ("redis://h:x/0", "port 'x'"),
    ("redis://h/zero", "database 'zero'"),
    ("redis://:secret@/0", "names no host"),
    ("redis://h/0?ssl_cert_reqs=none", "query string"),
    ("redis://a:1,b:2/0", "redis\\+sentinel"),
    ("redis+sentinel:///main/0", "names no sentinel"),
    ("redis+sentinel://s1:26379/", "names no master"),
    ("redis+sentinel://s1:26379", "names no master"),
    ("redis+sentinel://s1:26379,s2:bad/main/0", "port 'bad'"),
    ("redis+sentinel://s1:26379,/main/0", "names no host"),
    ("redis+sentinel://s1/main/x", "database 'x'"),
    ("unix://h/x.sock", "unix:///PATH"),
])
def test_bad_urls_are_one_line_errors_without_the_password(url: str, match: str) -> None:
    url = url.replace("://", "://u:secret@", 1) if "@" not in url and "///" not in url else url
    with pytest.raises(ConfigError, match=match) as info:
        RedisOptions(url=url)
    text = str(info.value)
    assert "\n" not in text and "secret" not in text


def test_tls_files_go_with_rediss_only(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert RedisOptions(url="rediss://h", ca_file=ca).ca_file == ca
    with pytest.raises(ConfigError, match="goes with a rediss://"):
        RedisOptions(url="redis://h", ca_file=ca)
    with pytest.raises(ConfigError, match="is not a readable file"):
        RedisOptions(url="rediss://h", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="needs its key"):
        RedisOptions(url="rediss://h", cert_file=ca)


def test_the_password_option_wins_and_is_never_shown() -> None:
    opts = RedisOptions(url="redis://u:inurl@h:1/2", password="fromfile")
    assert "fromfile" not in repr(opts) and "inurl" not in repr(opts)
    assert opts.shown == "redis://u:***@h:1/2"
    client = sync_client(opts, timeout=0.3)
    kw = client.connection_pool.connection_kwargs
    assert (kw["username"], kw["password"], kw["db"], kw["socket_timeout"]) == (
        "u", "fromfile", 2, 0.3)


async def test_sentinel_urls_make_sentinel_clients_with_the_same_credentials() -> None:
    opts = RedisOptions(url="redis+sentinel://u:pw@127.0.0.1:1,127.0.0.1:2/main/5")
    aclient = async_client(opts, timeout=0.3)
    pool = aclient.connection_pool
    assert isinstance(pool, asentinel.SentinelConnectionPool)
    assert pool.service_name == "main"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (5, "pw")
    for s in pool.sentinel_manager.sentinels:
        assert s.connection_pool.connection_kwargs["password"] == "pw"
        # Asked in turn, the two sentinels and then the master share the call's deadline.
        assert s.connection_pool.connection_kwargs["socket_timeout"] == pytest.approx(0.1)
        assert s.connection_pool.connection_kwargs["socket_connect_timeout"] == pytest.approx(0.1)
    await aclient.aclose()
    sclient = sync_client(opts, timeout=0.3)
    assert isinstance(sclient.connection_pool, redis.sentinel.SentinelConnectionPool)
    sclient.close()
