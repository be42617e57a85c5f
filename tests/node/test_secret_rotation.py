"""Several cluster secrets (sign with the first, accept any) and SIGHUP re-reading
--cluster-secret-file: the parts a rotation without an outage is made of. The rotation itself,
walked from docs/operations.md on real nodes across hosts, is tests/docs/test_rotation.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ddg.errors import ConfigError
from ddg.net.auth import Verifier, parse_secrets, read_secrets, sign_headers
from ddg.node.config import NodeConfig
from ddg_testkit import LocalCluster
from ddg_testkit.cli import ddg, one_line_error
from ddg_testkit.wait import wait_until

OLD, NEW = b"old-secret-0123", b"new-secret-4567"
PATH, BODY = "/raft/heartbeat", b"{}"


def test_parse_secrets_in_order_each_checked() -> None:
    assert parse_secrets(" old-secret-0123 \n\nnew-secret-4567\r\n", separator="\n") == (OLD,
                                                                                         NEW)
    assert parse_secrets("old-secret-0123,new-secret-4567,old-secret-0123",
                         separator=",") == (OLD, NEW)
    with pytest.raises(ConfigError, match="no cluster secret"):
        parse_secrets(" , ", separator=",")
    with pytest.raises(ConfigError, match="cluster secret 2 of 2 must be at least 8 bytes"):
        parse_secrets("old-secret-0123\nshort", separator="\n")
    with pytest.raises(ConfigError, match="at most 4"):
        parse_secrets(",".join(f"secret-{i:04}" for i in range(5)), separator=",")


def test_read_secrets_names_the_file_never_a_secret(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("old-secret-0123\nshort7x\n")
    with pytest.raises(ConfigError) as exc:
        read_secrets(f)
    assert str(f) in str(exc.value) and "short7x" not in str(exc.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secrets(tmp_path / "missing")
    f.write_bytes(b"\xffsecret-bytes")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secrets(f)


def test_verifier_accepts_any_of_its_secrets_and_only_those() -> None:
    both = Verifier((OLD, NEW), recipient="n2")
    for secret in (OLD, NEW):
        assert both.check(sign_headers(secret, "POST", PATH, BODY, recipient="n2"), "POST",
                          PATH, BODY) is None
    assert both.check(sign_headers(b"other-secret-99", "POST", PATH, BODY, recipient="n2"),
                      "POST", PATH, BODY) == "bad signature"
    both.secrets = (NEW,)  # what a reload does
    assert both.check(sign_headers(OLD, "POST", PATH, BODY, recipient="n2"), "POST", PATH,
                      BODY) == "bad signature"
    with pytest.raises(ValueError):
        Verifier((), recipient="n2")


def test_node_config_signs_with_the_first() -> None:
    c = NodeConfig(name="n1", port=8001, data_dir=Path("/tmp/x"), secret=NEW,
                   extra_secrets=(OLD,))
    assert c.secrets == (NEW, OLD) and c.peer.secret == NEW
    with pytest.raises(ConfigError, match="at least 8 bytes"):
        NodeConfig(name="n1", port=8001, data_dir=Path("/tmp/x"), secret=NEW,
                   extra_secrets=(b"short",))
    with pytest.raises(ConfigError, match="without one to sign with"):
        NodeConfig(name="n1", port=8001, data_dir=Path("/tmp/x"), extra_secrets=(OLD,))


def test_cli_reads_a_list_from_env_flag_or_file(tmp_path: Path) -> None:
    from ddg.cli.node import config_from_args, run_parser

    def secrets(*args: str) -> tuple[bytes, ...]:
        return config_from_args(run_parser().parse_args(["--port", "4001", *args])).secrets

    f = tmp_path / "secrets"
    f.write_text("new-secret-4567\nold-secret-0123\n")
    assert secrets("--cluster-secret-file", str(f)) == (NEW, OLD)
    assert secrets("--cluster-secret", "old-secret-0123,new-secret-4567") == (OLD, NEW)
    assert secrets("--cluster-secret", "old-secret-0123") == (OLD,)


@pytest.mark.integration
@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--cluster-secret", "old-secret-0123,short"], {},
     "--cluster-secret: cluster secret 2 of 2 must be at least 8 bytes"),
    ([], {"DDG_CLUSTER_SECRET": "old-secret-0123,,short"},
     "DDG_CLUSTER_SECRET: cluster secret 2 of 2 must be at least 8 bytes"),
    (["--cluster-secret-file", "/nonexistent/secret"], {},
     "cannot read the cluster secret file /nonexistent/secret"),
])
def test_bad_secret_lists_are_one_line_errors(args: list[str], env: dict[str, str],
                                              needle: str) -> None:
    error = one_line_error(ddg("--port", "4001", *args, env=env))
    assert needle in error and "short" not in error.replace("shorter", "")


@pytest.mark.integration
def test_help_says_how_to_rotate() -> None:
    out = ddg("--help").stdout
    assert "signs with the first, accepts any" in " ".join(out.split())
    assert "SIGHUP" in out


@pytest.fixture
def files_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, dict[str, Path]]]:
    """Three real nodes on loopback, each reading its secrets from a file of its own."""
    files = {n: tmp_path / f"{n}.secret" for n in ("n1", "n2", "n3")}
    for f in files.values():
        f.write_text(OLD.decode() + "\n")
    with LocalCluster(cluster="rot", secret="unused-env-secret", base_dir=tmp_path) as c:
        for n, f in files.items():
            c.add(n, extra_args=["--cluster-secret-file", str(f)])
        c.wait_joined(files)
        c.wait_goose()
        yield c, files


def _log_lines(c: LocalCluster, name: str, needle: str) -> list[str]:
    return [ln for ln in c.log_path(name).read_text().splitlines() if needle in ln]


def _refused(c: LocalCluster, name: str, secret: bytes) -> bool:
    """Whether NAME refuses a message signed with SECRET for its signature."""
    body = json.dumps({}).encode()
    r = httpx.post(f"{c.address(name)}/raft/heartbeat", content=body, timeout=5,
                   headers=sign_headers(secret, "POST", "/raft/heartbeat", body,
                                        recipient=name) | {"Content-Type": "application/json"})
    return r.status_code == 401 and "bad signature" in r.text


@pytest.mark.integration
def test_sighup_reloads_the_file_and_a_bad_file_keeps_the_secrets(
        files_cluster: tuple[LocalCluster, dict[str, Path]]) -> None:
    c, files = files_cluster
    goose = c.wait_goose()
    term = c.status(goose).term  # type: ignore[union-attr]
    n1 = "n1"
    # a bad file: one line, the secrets in use kept (the old secret still works)
    files[n1].write_text("new-secret-4567\nshort\n")
    c.signal(n1, signal.SIGHUP)
    kept = wait_until(lambda: _log_lines(c, n1, "kept the") or None, timeout=10,
                      what="n1 to log that it kept its secrets")
    assert len(kept) == 1 and "cluster secret 2 of 2" in kept[0], kept
    assert "new-secret" not in c.log_path(n1).read_text()
    assert not _refused(c, n1, OLD) and _refused(c, n1, NEW)
    # the rotation, by SIGHUP on each node in turn: new second, new first, old gone
    for content in ("old-secret-0123\nnew-secret-4567\n", "new-secret-4567\nold-secret-0123\n",
                    "new-secret-4567\n"):
        for n, f in files.items():
            before = len(_log_lines(c, n, "cluster secrets reloaded"))
            f.write_text(content)
            c.signal(n, signal.SIGHUP)
            wait_until(lambda n=n, before=before: len(  # type: ignore[misc]
                _log_lines(c, n, "cluster secrets reloaded")) > before, timeout=10,
                what=f"{n} to reload its secrets")
    for n in files:
        assert _refused(c, n, OLD) and not _refused(c, n, NEW)
        assert all(c.running(n) for n in files)
        log = c.log_path(n).read_text()
        assert "secret-0123" not in log and "secret-4567" not in log
    last = _log_lines(c, n1, "cluster secrets reloaded")[-1]
    assert "1 (0 new, 1 dropped); signing with the same one" in last, last
    # no election: the same goose in the same term throughout
    st = c.status(goose)
    assert st is not None and st.role == "goose" and st.term == term, c.describe()



def test_the_console_signs_with_the_first_of_a_list() -> None:
    from ddg_tui.config import ConsoleConfig

    c = ConsoleConfig(demo=3, secret="new-secret-4567,old-secret-0123")
    assert c.secret == "new-secret-4567"
    with pytest.raises(ConfigError, match="at least 8 bytes"):
        ConsoleConfig(demo=3, secret="new-secret-4567,short")
