"""One ddg-node child process: what it is started with (NodeSpec) and the handle on it
(NodeProcess). `ddg.supervisor.Supervisor` owns many of these; use it unless a test needs a
process the supervisor must not know about (an impostor under a taken name, say)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import ConfigError, DdgError


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSpec:
    """What is needed to (re)start one node process with the same identity."""

    name: str
    port: int
    redis_url: str
    cluster: str
    data_dir: Path
    host: str = "127.0.0.1"
    secret: str | None = None
    allow_fault_injection: bool = False
    bootstrap: bool = False  # create the cluster if Redis holds none
    heartbeat_ms: int | None = None
    election_timeout_ms: str | None = None
    log_level: str = "INFO"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a node needs a name")
        if not 0 < self.port < 65536:
            raise ConfigError(f"node {self.name}: port must be 1-65535, got {self.port}")
        if not self.cluster:
            raise ConfigError(f"node {self.name}: the cluster name is empty")

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "ddg", "--name", self.name, "--host", self.host,
                "--port", str(self.port), "--redis-url", self.redis_url,
                "--cluster", self.cluster, "--data-dir", str(self.data_dir),
                "--log-level", self.log_level]
        if self.heartbeat_ms is not None:
            args += ["--heartbeat-ms", str(self.heartbeat_ms)]
        if self.election_timeout_ms is not None:
            args += ["--election-timeout-ms", self.election_timeout_ms]
        if self.allow_fault_injection:
            args.append("--allow-fault-injection")
        if self.bootstrap:
            args.append("--bootstrap")
        return args + list(self.extra_args)


class NodeProcess:
    """One ddg-node child process. Never blocks except in wait()."""

    def __init__(self, spec: NodeSpec, *, log_path: Path | None = None,
                 preexec_fn: Callable[[], object] | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._preexec = preexec_fn
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def start(self) -> None:
        if self.running:
            raise DdgError(f"node {self.spec.name} is already running (pid {self.pid})")
        env = dict(os.environ)
        env.pop("DDG_CLUSTER_SECRET", None)
        if self.spec.secret is not None:
            env["DDG_CLUSTER_SECRET"] = self.spec.secret
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        try:
            self.proc = subprocess.Popen(
                self.spec.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=self._preexec,
            )
        except BaseException:
            self.close_log()
            raise

    def signal(self, sig: int) -> bool:
        """Send SIG; False if the process is not running."""
        if not self.running:
            return False
        assert self.proc is not None
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> bool:
        return self.signal(signal.SIGKILL)

    def terminate(self) -> bool:
        return self.signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (after SIGCONT, in case it is frozen), then SIGKILL if it lingers."""
        if self.running:
            self.signal(signal.SIGCONT)
            self.terminate()
            if self.wait(timeout) is None:
                self.kill()
                self.wait(timeout)
        self.close_log()

    def close_log(self) -> None:
        if self._log is not None and not self.running:
            self._log.close()
            self._log = None
