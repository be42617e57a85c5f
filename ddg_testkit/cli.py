"""`ddg-node` as a user runs it, for the tests: `python -m ddg ARGS` in a child process, with
none of this process's DDG_* settings, the environment for a demo of its own, and the check
that a refusal is one line."""

from __future__ import annotations

import os
import subprocess
import sys


def ddg(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m ddg ARGS` with ENV over this environment less its DDG_* variables."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DDG_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "ddg", *args], capture_output=True, text=True,
                          timeout=timeout, input=stdin, env=full)


# The variables that point a console or demo at the caller's cluster.
CALLER_CLUSTER = ("DDG_REDIS_URL", "DDG_CLUSTER", "DDG_CLUSTER_SECRET", "DDG_REDIS_PASSWORD")


def own_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's cluster, plus EXTRA: for a console or demo that
    starts its own. Other DDG_* settings stay (DDG_LOCAL_PORTS: a worker's slice of ports)."""
    return {k: v for k, v in os.environ.items() if k not in CALLER_CLUSTER} | extra


def one_line_error(result: subprocess.CompletedProcess[str], *, code: int | None = None
                   ) -> str:
    """The one line RESULT printed on stderr when it failed (with exit CODE, if given): no
    traceback, one `ddg-node: error: ` line, after argparse's usage lines for a bad flag."""
    assert result.returncode != 0 if code is None else result.returncode == code, (
        result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ddg-node: error: "), result.stderr
    usage = lines[:-1]
    assert not usage or (usage[0].startswith("usage:")
                         and all(ln.startswith(" ") for ln in usage[1:])), result.stderr
    return lines[-1]
