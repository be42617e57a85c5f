"""TLS with real redis-server and real ddg-node processes: a mutual-TLS cluster elects and
fails over; clients without a certificate from the cluster's CA read the public endpoints and
change nothing; `ddg-node status` reads https:// members; bad TLS flags are one-line errors."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ddg.local.embedded import free_port
from ddg.net.tls import CLIENT_CERT_REQUIRED, TlsConfig, client_context
from ddg_testkit import LocalCluster
from ddg_testkit.certs import Pki
from ddg_testkit.cli import ddg, one_line_error

Make = Callable[..., LocalCluster]
SECRET = "s3cret-for-tests"


# ---- one-line errors at start ------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def start(tmp_path: Path, *tls: str, env: dict[str, str] | None = None) -> str:
    """A node started with TLS flags that must not start: its one-line error."""
    return one_line_error(ddg("--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                              "--redis-url", f"redis://127.0.0.1:{free_port()}/0", *tls,
                              env=env))


@pytest.mark.integration
def test_missing_cert_file(pki: Pki, tmp_path: Path) -> None:
    _, key = pki.issue("n1")
    err = start(tmp_path, "--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key))
    assert "cannot read the TLS certificate" in err and "No such file" in err


@pytest.mark.integration
def test_unreadable_key_file(pki: Pki, tmp_path: Path) -> None:
    cert, _ = pki.issue("n1")
    err = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(tmp_path))  # a directory
    assert "cannot read the TLS key" in err


@pytest.mark.integration
def test_key_that_does_not_match(pki: Pki, tmp_path: Path) -> None:
    cert, _ = pki.issue("n1")
    _, key = pki.issue("n2")
    err = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    assert "does not belong to the certificate" in err


@pytest.mark.integration
def test_expired_cert(pki: Pki, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = pki.issue("n1", not_before=now - datetime.timedelta(days=30),
                          not_after=now - datetime.timedelta(days=1))
    assert "expired on" in start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.mark.integration
def test_client_auth_without_ca(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("n1")
    err = start(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-auth")
    assert "--tls-client-auth needs --tls-ca" in err


@pytest.mark.integration
def test_cert_without_key(pki: Pki, tmp_path: Path) -> None:
    cert, _ = pki.issue("n1")
    assert "--tls-cert needs --tls-key" in start(tmp_path, "--tls-cert", str(cert))


@pytest.mark.integration
def test_client_auth_with_a_certificate_that_does_not_name_the_node(pki: Pki,
                                                                      tmp_path: Path) -> None:
    n1 = pki.tls("n1")
    err = start(tmp_path, "--name", "n2", "--tls-cert", str(n1.cert), "--tls-key", str(n1.key),
                "--tls-ca", str(pki.ca_file), "--tls-client-auth")
    assert "does not name this node 'n2'" in err and "subjectAltName DNS:n2" in err


@pytest.mark.integration
def test_env_fallbacks_are_read(pki: Pki, tmp_path: Path) -> None:
    cert, _ = pki.issue("n1")
    err = start(tmp_path, env={"DDG_TLS_CERT": str(cert), "DDG_TLS_CLIENT_AUTH": "1"})
    assert "--tls-cert needs --tls-key" in err


# ---- a real mutual-TLS cluster -----------------------------------------------------------


@pytest.mark.integration
def test_mtls_cluster_with_secret_elects_and_fails_over(make_cluster: Make,
                                                         tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    c = make_cluster(tls=pki.client(), node_tls=pki.tls, secret=SECRET)
    names = c.start(3)
    goose = c.wait_goose(timeout=10)
    st = c.wait_for(lambda: (s := c.status(goose)) and len(s.members) == 3 and s,
                    timeout=5, what="the goose sees 3 members")
    assert st.address.startswith("https://") and st.security == "hmac"
    c.kill(goose)
    c.wait(goose, 5)
    new = c.wait_goose(among=names, exclude=[goose])
    assert c.status(new).term > st.term


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Pki]]:
    """Mutual TLS and no secret: the client certificate is all that keeps strangers out."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    c = LocalCluster(tls=pki.client(), node_tls=pki.tls, allow_fault_injection=True)
    try:
        c.start_redis()
        names = c.start(3)
        c.wait_followed(names, timeout=20)
        yield c, pki
    finally:
        c.close()


def _terms(c: LocalCluster, names: list[str]) -> dict[str, tuple[int, str | None]]:
    out = {}
    for n in names:
        st = c.status(n)
        assert st is not None, f"{n} does not answer"
        out[n] = (st.term, st.goose)
    return out


@pytest.mark.integration
def test_without_a_client_certificate_public_endpoints_only(
        mtls: tuple[LocalCluster, Pki]) -> None:
    c, pki = mtls
    names = c.names[:3]
    goose = c.wait_goose(among=names)
    before = _terms(c, names)
    duck = next(n for n in names if n != goose)
    url = c.address(duck)
    anonymous = client_context(TlsConfig(ca=pki.ca_file))
    with httpx.Client(verify=anonymous, timeout=5) as http:
        assert http.get(url + "/").text == "duck"
        for path in ("/status", "/healthz", "/metrics"):
            assert http.get(url + path).status_code == 200, path
        # a vote request with a huge term from a member's name, and an admin call
        for path, body in (("/raft/vote", {"term": 10_000, "sender": goose, "version": 1}),
                           ("/admin/partition", {"peers": [goose]})):
            resp = http.post(url + path, json=body)
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["error"].startswith(CLIENT_CERT_REQUIRED)
    after = _terms(c, names)
    assert after == before or all(term == before[goose][0] for term, _ in after.values()), after
    assert c.status(duck).isolated_from == ()


@pytest.mark.integration
def test_a_certificate_from_another_ca_is_refused(mtls: tuple[LocalCluster, Pki],
                                                  tmp_path: Path) -> None:
    c, pki = mtls
    names = c.names[:3]
    before = _terms(c, names)
    other = Pki(tmp_path / "other", "other-ca")
    cert, key = other.issue("impostor")
    impostor = client_context(TlsConfig(cert=cert, key=key, ca=pki.ca_file))
    with httpx.Client(verify=impostor, timeout=5) as http:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            http.post(c.address(names[0]) + "/raft/vote",
                      json={"term": 10_000, "sender": names[1], "version": 1})
    assert _terms(c, names) == before


@pytest.mark.integration
def test_status_cli_over_https(mtls: tuple[LocalCluster, Pki]) -> None:
    c, pki = mtls
    url = c.redis_url
    assert url is not None
    table = ddg("status", "--redis-url", url, "--cluster", c.cluster, "--tls-ca",
                str(pki.ca_file))
    assert table.returncode == 0, table.stderr
    rows = [r.split() for r in table.stdout.strip().splitlines()[1:]
            if not r.startswith("timing: ")]  # the cluster's timing, under the table
    assert sorted(r[0] for r in rows) == sorted(c.names[:3])
    assert all(r[1].startswith("https://") for r in rows)
    assert sum(r[2] == "goose" for r in rows) == 1
    # without the CA, the system's trust store does not know the nodes' certificates: no goose
    # seen (4), and the fix is the CA, never removing the members
    table = ddg("status", "--redis-url", url, "--cluster", c.cluster)
    assert table.returncode == 4 and "CERTIFICATE_VERIFY_FAILED" in table.stdout
    assert "pass the cluster's CA with --tls-ca FILE" in table.stdout
    assert "remove" not in table.stdout


@pytest.mark.integration
def test_a_name_held_by_a_live_https_member_is_refused_as_live(
        mtls: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    """Another data dir claiming a member's name asks the holder with the node's own TLS
    settings: a live holder is named live, never "does not answer ... ddg-node remove"."""
    c, _ = mtls
    name = c.names[0]
    tls = c.spec(name).tls
    assert tls is not None and tls.cert and tls.key and tls.ca and c.redis_url
    claim = ddg("--name", name, "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                "--redis-url", c.redis_url, "--cluster", c.cluster, "--tls-cert", str(tls.cert),
                "--tls-key", str(tls.key), "--tls-ca", str(tls.ca), "--tls-client-auth")
    assert claim.returncode == 1, claim.stderr
    assert f"name {name!r} is already registered to a live node at https://" in claim.stderr
    assert "ddg-node remove" not in claim.stderr


@pytest.mark.integration
def test_a_node_of_another_ca_changes_nothing_and_is_logged_once(
        mtls: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    """A node whose certificate and CA are another's joins the registry (Redis is not guarded
    by TLS) but no message crosses: the cluster keeps its goose; the goose (it heartbeats the
    stranger) and the stranger (it campaigns) say why once per peer."""
    c, _ = mtls
    names = c.names[:3]
    goose = c.wait_goose(among=names)
    other = Pki(tmp_path / "other", "other-ca").tls("stranger")
    c.add("stranger", extra_args=("--tls-cert", str(other.cert), "--tls-key", str(other.key),
                                  "--tls-ca", str(other.ca)))
    try:
        c.wait_for(lambda: all("stranger" in (c.status(n) or NoStatus).members for n in names),
                   timeout=5, what="the members see the stranger")
        # the goose fails to reach it at every heartbeat, the stranger fails to reach each
        # member at every campaign: each says so once per peer, with the reason
        said = {goose: ["TLS with stranger"], "stranger": [f"TLS with {n} " for n in names]}
        c.wait_for(lambda: all(line in c.log_tail(who, 200) for who, lines in said.items()
                               for line in lines),
                   timeout=10, what="the goose and the stranger log the TLS failures")
        # (one goose followed by all; not one look at GET /: a lease may lapse for a moment)
        assert c.wait_followed(names) == goose
        for who, lines in said.items():
            log = c.log_path(who).read_text()
            for line in lines:
                assert log.count(line) == 1, log
            assert "CERTIFICATE_VERIFY_FAILED" in log
    finally:
        c.kill("stranger")
        c.wait("stranger", 5)
        assert c.remove("stranger").returncode == 0


class NoStatus:
    members: tuple[str, ...] = ()


@pytest.mark.integration
async def test_console_reads_https_nodes_and_isolates_with_a_client_cert(
        mtls: tuple[LocalCluster, Pki]) -> None:
    from ddg_tui.cli import parse_config
    from ddg_tui.poller import LiveSource

    c, pki = mtls
    url = c.redis_url
    assert url is not None
    name = c.names[0]
    address = c.address(name)
    anonymous = parse_config(["--redis-url", url, "--cluster", c.cluster,
                              "--tls-ca", str(pki.ca_file)])
    assert anonymous.tls is not None and anonymous.tls.cert is None
    cert, key = pki.issue("console")
    with_cert = parse_config(["--redis-url", url, "--cluster", c.cluster, "--tls-ca",
                              str(pki.ca_file), "--tls-cert", str(cert), "--tls-key", str(key)])
    for config, admitted in ((anonymous, False), (with_cert, True)):
        source = LiveSource(redis_url=url, cluster=config.cluster, timeout=2.0,
                            tls=config.tls)
        try:
            assert name in (await source.read()).members
            reply = await source.status(address)
            assert reply.status is not None and reply.status.security == "mtls", reply.error
            result = await source.admin(name, address, "/admin/heal", {"peers": []})
            assert result.ok is admitted, result.message
            if not admitted:
                assert result.status_code == 403 and "--tls-cert" in result.message
        finally:
            await source.close()
