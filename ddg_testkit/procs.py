"""Whether a process the tests started is still there, one way for every test.

A zombie counts as gone: it runs nothing and holds no port, and in a container whose PID 1
does not reap, an orphan's zombie may linger."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state first), or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def node_name(argv: list[str]) -> str | None:
    """The --name of a ddg-node command line (ARGV as /proc/PID/cmdline splits it), or None if
    it is none: the console script (`python .../ddg-node`, as nodes are started) or `-m ddg`."""
    if "--name" not in argv[:-1]:
        return None
    at = argv.index("--name")
    if not any(a == "ddg" or Path(a).name == "ddg-node" for a in argv[:at]):
        return None
    return argv[at + 1]


def gone(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def alive(pid: int) -> bool:
    return not gone(pid)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGCONT (a frozen process cannot act on SIGTERM) and SIGTERM; SIGKILL after TIMEOUT
    seconds. Reaps it either way."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
