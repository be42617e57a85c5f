"""The ddg-node command line: one-line errors and non-zero exits, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ddg.local.embedded import free_port
from ddg_testkit import LocalCluster
from ddg_testkit.cli import ddg, one_line_error

Make = Callable[..., LocalCluster]


@pytest.mark.parametrize(("args", "needle"), [
    (["--port", "abc"], "invalid int value"),
    ([], "--port (or DDG_HTTP_PORT) is required"),
    (["--port", "70000"], "port must be 1-65535"),
    (["--port", "4001", "--election-timeout-ms", "300-100"], "election timeout"),
    (["--port", "4001", "--election-timeout-ms", "fast"], "MIN-MAX"),
    (["--port", "4001", "--heartbeat-ms", "100", "--election-timeout-ms", "150-300"],
     "at least twice the heartbeat"),
    (["--port", "4001", "--redis-url", "http://x"], "must start with redis://"),
    (["--port", "4001", "--name", "bad name!"], "node name"),
    (["--port", "4001", "--cluster", ""], "cluster name"),
    (["--port", "4001", "--log-level", "LOUD"], "log level"),
    (["--port", "4001", "--cluster-secret", "short"], "at least 8 bytes"),
    (["--port", "4001", "--timing", "warp"], "invalid choice: 'warp'"),
    (["--port", "4001", "--lease-ms", "40"], "lease must be longer than the heartbeat"),
    (["--port", "4001", "--timing", "fast", "--lease-ms", "60"], "at most the minimum election"),
    (["remove"], "the following arguments are required: name"),
    (["remove", "x", "--redis-url", "mysql://x"], "must start with redis://"),
])
@pytest.mark.integration
def test_bad_flags(args: list[str], needle: str) -> None:
    assert needle in one_line_error(ddg(*args))


@pytest.mark.integration
def test_env_timing_must_be_a_known_one() -> None:
    error = one_line_error(ddg("--port", "4001", env={"DDG_TIMING": "warp"}))
    assert "timing 'warp' must be one of default, fast" in error


def test_timing_presets_and_overrides() -> None:
    from ddg.cli.args import timing_from_args
    from ddg.cli.node import run_parser
    from ddg.election.timing import TIMINGS, Timing

    def timing(*args: str) -> Timing:
        return timing_from_args(run_parser().parse_args(["--port", "4001", *args]))

    assert timing() == TIMINGS["default"] == Timing()
    assert timing("--timing", "fast") == TIMINGS["fast"]
    # a changed part keeps the rest of the preset; the lease follows what changed
    t = timing("--timing", "fast", "--heartbeat-ms", "10")
    assert (t.heartbeat_ms, t.election_timeout_min_ms, t.lease_ms) == (10, 60, None)
    assert t.lease == pytest.approx(0.01 + 0.06 / 5)
    assert timing("--lease-ms", "100").lease == pytest.approx(0.1)


@pytest.mark.integration
def test_env_port_must_be_a_number() -> None:
    assert "DDG_HTTP_PORT='x'" in one_line_error(ddg(env={"DDG_HTTP_PORT": "x"}))


@pytest.mark.integration
def test_help_explains_subcommands() -> None:
    result = ddg("--help")
    assert result.returncode == 0
    for needle in ("ddg-node remove NAME", "ddg-node status", "DDG_HTTP_PORT", "--data-dir"):
        assert needle in result.stdout


@pytest.mark.integration
def test_redis_unreachable_is_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert "cannot reach Redis" in one_line_error(ddg("remove", "n1", "--redis-url", url))
    assert "cannot reach Redis" in one_line_error(ddg("status", "--redis-url", url))


@pytest.mark.integration
def test_status_remove_and_startup_errors(make_cluster: Make, tmp_path: Path) -> None:
    c = make_cluster()
    names = c.start(3)
    goose = c.wait_goose(timeout=8)
    c.wait_for(lambda: all((s := c.status(n)) and len(s.members) == 3 for n in names),
               timeout=5, what="3 members")
    url = c.redis_url
    assert url is not None
    table = ddg("status", "--redis-url", url)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.strip().splitlines()
    assert rows[-1] == "timing: default (epoch 1)"  # the cluster's, under the table
    rows = rows[:-1]
    assert rows[0].split() == ["NAME", "ADDRESS", "ROLE", "TERM", "GOOSE", "ERROR"]
    assert sorted(r.split()[0] for r in rows[1:]) == names
    assert sum(r.split()[2] == "goose" for r in rows[1:]) == 1
    assert all(r.split()[4] == goose for r in rows[1:])

    # the name is taken at another address
    port = free_port()
    err = one_line_error(ddg("--name", names[0], "--port", str(port), "--redis-url", url,
                             "--data-dir", str(tmp_path / "x")))
    assert "already registered to a live node" in err and "choose another --name" in err
    assert "ddg-node remove" not in err, "never suggest removing a node that answers"
    # the data dir is locked by a running node
    err = one_line_error(ddg("--name", "other", "--port", str(port), "--redis-url", url,
                             "--data-dir", str(c.base_dir / "data" / names[0])))
    assert "in use by another ddg-node" in err
    # the port is taken
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        err = one_line_error(ddg("--name", "other", "--port", str(taken), "--redis-url", url,
                                 "--data-dir", str(tmp_path / "y")))
    assert "cannot listen" in err
    # none of the failed starts registered anything
    members = ddg("status", "--redis-url", url, "--json")
    assert '"other"' not in members.stdout

    ghost = ddg("remove", "ghost", "--redis-url", url)
    assert (ghost.returncode, ghost.stdout) == (1, "")
    assert ghost.stderr == "ghost is not a member of cluster ddg: nothing to remove\n"
    # one prefix for every error, subcommands included
    assert one_line_error(ddg("remove")).startswith("ddg-node: error: remove: ")

    # a reader that leaves early is no error: no BrokenPipeError traceback
    piped = subprocess.run(
        f"{sys.executable} -m ddg status --json --redis-url {url} | head -c 5",
        shell=True, capture_output=True, text=True, timeout=30)
    assert piped.stdout == "{\n  \"" and piped.stderr == "", piped.stderr

    # a member that does not answer: the name conflict and status both say how to remove it
    dead = names[0]
    c.kill(dead)
    c.wait(dead, 5)
    err = one_line_error(ddg("--name", dead, "--port", str(free_port()), "--redis-url", url,
                             "--data-dir", str(tmp_path / "z")))
    assert "does not answer" in err and f"ddg-node remove {dead}" in err
    table = ddg("status", "--redis-url", url)
    assert f"{dead} does not answer; if it is gone for good: ddg-node remove {dead}" \
        in table.stdout


@pytest.mark.integration
def test_env_fallbacks(make_cluster: Make, tmp_path: Path) -> None:
    c = make_cluster(cluster="envtest")
    assert c.redis_url is not None
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddg"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "DDG_HTTP_PORT": str(port), "DDG_NODE_NAME": "solo",
             "DDG_REDIS_URL": c.redis_url, "DDG_CLUSTER": "envtest",
             "DDG_DATA_DIR": str(tmp_path / "solo"), "DDG_BOOTSTRAP": "1"},
    )
    try:
        def goose() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5).text == "goose"
            except httpx.HTTPError:
                return False

        c.wait_for(goose, timeout=10, what="a cluster of one elects itself")
        st = httpx.get(f"http://127.0.0.1:{port}/status").json()
        assert st["name"] == "solo" and st["cluster"] == "envtest" and st["quorum"] == 1
    finally:
        proc.terminate()
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, "SIGTERM must stop a node cleanly"
