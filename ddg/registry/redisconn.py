"""The one way to connect to Redis: a URL plus options, parsed once, as a sync or async client.

URL forms (docs/operations.md, "Redis"):
  redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]        plain TCP (port 6379, db 0 by default)
  rediss://[[USER]:PASSWORD@]HOST[:PORT][/DB]       TLS; a private CA with ca_file
  unix://[[USER]:PASSWORD@]/PATH[?db=DB]            a Unix socket
  redis+sentinel://[[USER]:PASSWORD@]HOST:PORT,HOST:PORT/MASTER[/DB]
                                                    the master Sentinel names MASTER, found
                                                    again on every reconnection

Credentials (in the URL, or the password from options, which wins) are sent to the master and,
with Sentinel, to the sentinels too: one user for the whole Redis deployment.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from ddg.errors import ConfigError

# No CLIENT SETINFO on connect: one round trip less, and no command outside the node's ACL.
# redis-py 7.1 replaced lib_name/lib_version (deprecated since) with driver_info.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None} if importlib.util.find_spec("redis.driver_info") is not None
    else {"lib_name": None, "lib_version": None})

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
DEFAULT_SENTINEL_PORT = 26379


def mask_url(url: str) -> str:
    """URL with any password replaced by ***, for logs, /status and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """Where a URL points, parsed: one server (host/port or a socket path) or a Sentinel set."""

    host: str | None = None
    port: int = 6379
    path: str | None = None  # unix://
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None  # the service name Sentinel knows the master by
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"redis URL {mask_url(url)!r} {why}")


def _db(url: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 100_000:
        raise _bad(url, f"has database {text!r}: use a number, e.g. /0")
    return int(text)


def _port(url: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad(url, f"has port {text!r}: use 1-65535")
    return int(text)


def _credentials(netloc: str) -> tuple[str, str | None, str | None]:
    """Split USER:PASSWORD@ off NETLOC; returns the hosts part, user and password."""
    if "@" not in netloc:
        return netloc, None, None
    auth, hosts = netloc.rsplit("@", 1)
    user, sep, password = auth.partition(":")
    return hosts, unquote(user) or None, unquote(password) if sep else None


def _host_port(url: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:PORT
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(url, f"has host {text!r}: write an IPv6 address as [ADDR]:PORT")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise _bad(url, "names no host")
    return host, _port(url, port) if port else default_port


def parse_redis_url(url: str) -> Target:
    """Parse and check URL; ConfigError (one line, password masked) if it is not one of the
    forms in the module docstring."""
    if not url.startswith(SCHEMES):
        raise _bad(url, "must start with redis://, rediss://, unix:// or redis+sentinel://")
    scheme, rest = url.split("://", 1)
    netloc, _, tail = rest.partition("/")
    if scheme == "unix":
        hosts, user, password = _credentials(netloc)
        path, _, query = tail.partition("?")
        if hosts or not path:
            raise _bad(url, "must look like unix:///PATH/TO/redis.sock[?db=N]")
        db = parse_qs(query).get("db", ["0"])[-1]
        return Target(path="/" + path, db=_db(url, db), username=user, password=password)
    if "?" in tail or "#" in tail or "?" in netloc:
        raise _bad(url, "has a query string: Redis options are ddg flags (--redis-ca, ...)")
    hosts, user, password = _credentials(netloc)
    if scheme == "redis+sentinel":
        if not hosts:
            raise _bad(url, "names no sentinel: use redis+sentinel://HOST:PORT,.../MASTER/DB")
        sentinels = tuple(_host_port(url, h, DEFAULT_SENTINEL_PORT) for h in hosts.split(","))
        master, _, db = tail.partition("/")
        if not master:
            raise _bad(url, "names no master: use redis+sentinel://HOST:PORT,.../MASTER/DB")
        return Target(sentinels=sentinels, master=master, db=_db(url, db) if db else 0,
                      username=user, password=password)
    if "," in hosts:
        raise _bad(url, "names several hosts: that is the redis+sentinel:// form")
    host, port = _host_port(url, hosts, 6379)
    return Target(host=host, port=port, db=_db(url, tail) if tail else 0, username=user,
                  password=password, tls=scheme == "rediss")


def check_redis_url(url: str) -> str:
    parse_redis_url(url)
    return url


def _file(what: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise ConfigError(f"the Redis {what} {path} is not a readable file")


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class RedisOptions:
    """A Redis URL and what does not fit in one. PASSWORD (from DDG_REDIS_PASSWORD or
    --redis-password-file, kept out of `ps`) overrides one in the URL; the TLS files go with
    rediss:// only."""

    url: str
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # the CA that signed the server's certificate
    cert_file: Path | None = None  # a client certificate, for servers that ask for one
    key_file: Path | None = None
    target: Target = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        target = parse_redis_url(self.url)
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if not target.tls and any(f is not None for f in tls_files):
            raise ConfigError(f"a Redis CA, certificate or key file goes with a rediss:// URL, "
                              f"not {mask_url(self.url)}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a Redis client certificate needs its key, and a key its "
                              "certificate (--redis-cert and --redis-key)")
        _file("CA file", self.ca_file)
        _file("certificate file", self.cert_file)
        _file("key file", self.key_file)
        if self.password == "":
            raise ConfigError("the Redis password is empty")
        object.__setattr__(self, "target", target)

    @classmethod
    def from_env(cls, url: str) -> RedisOptions:
        """URL with the password and TLS files from the environment, as a node reads them."""
        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value) if value else None
        return cls(url=url, password=os.environ.get("DDG_REDIS_PASSWORD") or None,
                   ca_file=path("DDG_REDIS_CA"), cert_file=path("DDG_REDIS_CERT"),
                   key_file=path("DDG_REDIS_KEY"))

    def __repr__(self) -> str:
        return (f"RedisOptions(url={self.shown!r}, ca_file={self.ca_file!r}, "
                f"cert_file={self.cert_file!r}, key_file={self.key_file!r})")

    @property
    def shown(self) -> str:
        """The only form of the URL that may be shown: its password masked."""
        return mask_url(self.url)

    @property
    def sentinel(self) -> bool:
        return self.target.master is not None

    def _kwargs(self, timeout: float) -> dict[str, Any]:
        t = self.target
        kw: dict[str, Any] = {
            "db": t.db, "username": t.username,
            "password": self.password if self.password is not None else t.password,
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "health_check_interval": 0,
            **_NO_SETINFO,
        }
        if t.tls:
            kw.update(ssl=True, ssl_ca_certs=_str(self.ca_file),
                      ssl_certfile=_str(self.cert_file), ssl_keyfile=_str(self.key_file))
        if t.path is not None:
            kw["unix_socket_path"] = t.path
        elif t.host is not None:
            kw.update(host=t.host, port=t.port)
        return kw

    def _sentinel_kwargs(self, kw: dict[str, Any]) -> dict[str, Any]:
        """The sentinels' share of a call's deadline: a lookup asks them in turn, so one that
        never answers (a host down, not refusing) must cost a fraction of the deadline, or
        the lookup never reaches the next sentinel and every call times out."""
        share = kw["socket_timeout"] / (len(self.target.sentinels) + 1)
        return {"username": kw["username"], "password": kw["password"],
                "socket_timeout": share, "socket_connect_timeout": share}


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def async_client(options: RedisOptions, *, timeout: float) -> aioredis.Redis:
    """An asyncio client that never retries by itself (callers own their backoff) and connects
    within TIMEOUT s; with Sentinel it finds the master on every new connection.

    Its commands have no socket timeout of their own: the caller bounds each call with
    asyncio.timeout (as Registry does). redis-py enforces a socket timeout on every write with
    asyncio.wait_for, which on Python 3.11 drops a cancellation that lands in the loop pass
    where the write completes: a node's registry task then ran on after SIGTERM, and the node
    never exited."""
    kw = options._kwargs(timeout)
    kw["retry"] = AsyncRetry(NoBackoff(), 0)
    sentinel_kwargs = options._sentinel_kwargs(kw) if options.sentinel else {}
    kw["socket_timeout"] = None
    if options.sentinel:
        # The sentinels keep their share of TIMEOUT: a lookup must move on from one that never
        # answers.
        sent = AsyncSentinel(list(options.target.sentinels),
                             sentinel_kwargs={**sentinel_kwargs,
                                              "retry": AsyncRetry(NoBackoff(), 0)}, **kw)
        assert options.target.master is not None
        return sent.master_for(options.target.master)
    return aioredis.Redis(**kw)


def sync_client(options: RedisOptions, *, timeout: float) -> redis.Redis:
    """The blocking twin of async_client, for tools that run no event loop."""
    kw = options._kwargs(timeout)
    kw["retry"] = Retry(NoBackoff(), 0)
    if options.sentinel:
        sent = Sentinel(list(options.target.sentinels),
                        sentinel_kwargs={**options._sentinel_kwargs(kw),
                                         "retry": Retry(NoBackoff(), 0)}, **kw)
        assert options.target.master is not None
        return sent.master_for(options.target.master)
    return redis.Redis(**kw)


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
