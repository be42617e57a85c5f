"""What a ddg-node process imports, and the event loop it runs on.

A node's memory is mostly the modules it imports (README, "Performance"): the HTTP client
(httpx, and the rich/click/pygments of its command line), cryptography's x509 (only for TLS
certificates) and the console (Textual) are no part of a running node without TLS, and must
not creep back in through a top-level import."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ddg_testkit import LocalCluster

# cryptography's top package is imported by redis-py itself (redis.utils checks it is there:
# a few kB); its x509 and Rust bindings are the megabytes, and only TLS needs them.
NEVER = ("httpx", "textual", "rich", "click", "pygments", "ddg_tui", "ddg.client.http",
         "cryptography.x509", "cryptography.hazmat.bindings._rust")

# What `ddg-node --port ...` loads before it serves: its entry module, the node, its config.
NODE_START = """
import json, sys
from ddg.cli.node import config_from_args, run_parser
import ddg.node.node
config_from_args(run_parser().parse_args(["--port", "4001"] + sys.argv[1:]))
print(json.dumps(sorted(sys.modules)))
"""


def modules(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", NODE_START, *args], capture_output=True,
                         text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


@pytest.mark.integration
def test_a_node_without_tls_imports_no_client_console_or_x509() -> None:
    loaded = modules()
    assert "aiohttp" in loaded and "ddg.node.node" in loaded  # it did load the node
    assert not loaded & set(NEVER), sorted(loaded & set(NEVER))


@pytest.mark.integration
def test_tls_loads_x509_where_it_reads_certificates(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("n1", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "n1.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "n1.key"))
    loaded = modules("--name", "n1", "--tls-cert", str(tmp_path / "n1.pem"), "--tls-key",
                     str(tmp_path / "n1.key"), "--tls-ca", str(tmp_path / "ca.pem"))
    assert "cryptography.x509" in loaded  # the certificate's dates were checked


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cluster_elects_on_each_event_loop(make_cluster: Callable[..., LocalCluster],
                                              loop: str) -> None:
    """--loop chooses the loop (the node's `started` line names it); a cluster of nodes on
    the other loop works with it: the wire does not depend on it."""
    pytest.importorskip("uvloop")
    other = "uvloop" if loop == "asyncio" else "asyncio"
    c = make_cluster(log_level="INFO")
    names = [c.add(extra_args=["--loop", loop]).name,
             c.add(extra_args=["--loop", other]).name,
             c.add(env={"DDG_LOOP": loop}).name]
    goose = c.wait_goose(timeout=30)
    assert goose in names
    for name, want in zip(names, (loop, other, loop), strict=True):
        assert c.wait_for(lambda n=name, w=want: f"event loop {w}" in c.log_tail(n, 200),
                          timeout=10, what=f"{name}'s started line")
    c.kill(goose)  # and a failover happens on them
    assert c.wait_goose(among=[n for n in names if n != goose], timeout=30) != goose


@pytest.mark.integration
def test_an_unknown_loop_is_a_one_line_error() -> None:
    out = subprocess.run([sys.executable, "-m", "ddg", "--port", "4001", "--loop", "trio"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "invalid choice: 'trio'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ddg", "--port", "4001"],
                         capture_output=True, text=True, timeout=30,
                         env={"DDG_LOOP": "trio", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "DDG_LOOP" in out.stderr and "trio" in out.stderr


def test_asyncio_is_the_default_and_auto_takes_uvloop_when_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ddg.cli.node import loop_factory, run_parser

    monkeypatch.delenv("DDG_LOOP", raising=False)
    assert run_parser().parse_args(["--port", "4001"]).loop == "asyncio"
    assert loop_factory("asyncio") is None
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop


@pytest.mark.integration
def test_a_bad_flag_is_refused_before_the_node_is_imported() -> None:
    """`ddg-node --port abc` (and every refused flag or value) answers before the node, its
    HTTP stack and its peers are loaded: half the time of a full import."""
    probe = ("import json, sys\nfrom ddg.cli.node import main\n"
             "try:\n    main(['--port', '4001', '--heartbeat-ms', '100', "
             "'--election-timeout-ms', '150-300'])\n"
             "except SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert "at least twice the heartbeat" in out.stderr, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "ddg.cli.node" in loaded
    assert not loaded & {"ddg.node.node", "aiohttp"}, sorted(loaded & {"ddg.node.node",
                                                                      "aiohttp"})
