"""Tools of the adversarial tests (tests/*/: hostile peers, bad registry data, limits):
observing every node's role from a thread, raw requests, silent listeners, a Redis with a
password, ghost members. Each test that uses them runs real nodes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis

from ddg.client import NodeStatus
from ddg.local.embedded import find_redis_server, free_port
from ddg.net import auth
from ddg.registry import records as ddg_registry
from ddg_testkit.cluster import LocalCluster
from ddg_testkit.wait import wait_until

Make = Callable[..., LocalCluster]
Sample = Mapping[str, str | None]  # one c.roles() answer

MAX_MEMBERS: int = getattr(ddg_registry, "MAX_MEMBERS", 100)
MAX_TERM = 2**53 - 1
NONCE_HEADER: str = getattr(auth, "NONCE_HEADER", "X-DDG-Nonce")



# ---- helpers --------------------------------------------------------------------------------


def keys(c: LocalCluster) -> tuple[str, str, str, str]:
    p = f"ddg:{c.cluster}:"
    return p + "members", p + "version", p + "events", p + "id"


def rclient(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def geese_in(sample: Sample) -> list[str]:
    return sorted(n for n, r in sample.items() if r == "goose")


def double_geese(samples: list[Sample]) -> list[Sample]:
    """The samples (one parallel c.roles() call each) in which two nodes answered `goose`."""
    return [s for s in samples if len(geese_in(s)) > 1]


def watch(c: LocalCluster, seconds: float, names: list[str] | None = None,
          interval: float = 0.015) -> list[Sample]:
    """Sample every node's answer for SECONDS (an observation, not a synchronization)."""
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(c.roles(names))
        time.sleep(interval)
    return samples


class RoleSampler:
    """Polls c.roles() from a thread every ~15 ms for as long as the with-block runs, so that
    the test can act (and wait_for) while the whole convergence is observed."""

    def __init__(self, c: LocalCluster, interval: float = 0.015) -> None:
        self.c = c
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="role-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.c.roles())
            except Exception:  # a poller hiccup must not end the observation
                pass
            self._stop.wait(self.interval)  # pacing of the poller, not a synchronization

    def __enter__(self) -> RoleSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def log_path(c: LocalCluster, name: str) -> Path:
    return c.log_path(name)


def log_text(c: LocalCluster, name: str) -> str:
    try:
        return log_path(c, name).read_text(errors="replace")
    except OSError:
        return ""


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def everyone_sees(c: LocalCluster, names: list[str]) -> bool:
    want = sorted(names)
    return all((st := c.status(n)) is not None and list(st.members) == want for n in names)


def converged(c: LocalCluster, names: list[str]) -> bool:
    """Every node lists exactly NAMES as members and exactly one of them answers `goose`."""
    if not all(c.running(n) for n in names):
        return False
    statuses = c.statuses(names)
    want = sorted(names)
    if not all(st is not None and list(st.members) == want for st in statuses.values()):
        return False
    return len(geese_in(c.roles(names))) == 1


def registry_problem(st: NodeStatus | None) -> str | None:
    return None if st is None else st.redis.problem


def run_ddg(args: list[str], *, timeout: float, env: dict[str, str] | None = None
            ) -> tuple[int | None, str, float]:
    """Run `python -m ddg ARGS`; (exit code or None if still running at TIMEOUT, output, s)."""
    full_env = dict(os.environ)
    full_env.pop("DDG_CLUSTER_SECRET", None)
    full_env.update(env or {})
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ddg", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out, time.monotonic() - t0


def check_cli_output(rc: int | None, out: str) -> list[str]:
    """`ddg-node status`: a table (exit 0) or a one-line error, never a traceback."""
    problems = []
    if rc is None:
        problems.append(f"`ddg-node status` did not finish: {out[-500:]!r}")
    if "Traceback" in out:
        problems.append(f"`ddg-node status` printed a traceback:\n{out[-1500:]}")
    elif rc not in (None, 0) and len(nonblank_lines(out)) != 1:
        problems.append(f"`ddg-node status` failed (rc {rc}) without a one-line error: {out!r}")
    return problems


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections (in the kernel) and never answers anything."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(4096)
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def redis_with_password(password: str) -> Iterator[int]:
    """A private redis-server with requirepass, on a free port; yields the port."""
    binary = find_redis_server()
    port = free_port()
    tmp = tempfile.TemporaryDirectory(prefix="ddg-redis-pw-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp.name, "--requirepass", password, "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = rclient(f"redis://:{password}@127.0.0.1:{port}/0")

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server with a password exited on {port}")
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, timeout=10, what=f"redis-server with a password on {port}")
        client.close()
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        tmp.cleanup()


def post_raw(address: str, path: str, body: bytes, headers: dict[str, Any] | None = None,
             timeout: float = 2.0) -> httpx.Response:
    h: dict[str, Any] = {"Content-Type": "application/json"}
    h.update(headers or {})
    return httpx.post(address + path, content=body, headers=h, timeout=timeout, trust_env=False)


def is_json_error(resp: httpx.Response) -> bool:
    try:
        return isinstance(resp.json(), dict) and "error" in resp.json()
    except ValueError:
        return False


def started_cluster(make_cluster: Make, n: int = 3, **kwargs: Any) -> tuple[LocalCluster,
                                                                           list[str], str]:
    c = make_cluster(**kwargs)
    names = c.start(n)
    goose = c.wait_goose(timeout=8)
    c.wait_for(lambda: everyone_sees(c, names), timeout=5, what=f"{n} members everywhere")
    return c, names, goose



def _add_ghosts(c: LocalCluster, r: redis.Redis, count: int, port: int) -> int:
    mk, vk, ek, _ik = keys(c)
    entry = json.dumps({"address": f"http://127.0.0.1:{port}", "joined_at": 0.0})
    r.hset(mk, mapping={f"ghost{i:04d}": entry for i in range(count)})
    version = int(r.incr(vk))
    r.publish(ek, json.dumps({"op": "join", "name": "ghost0000", "version": version}))
    return version


