"""TLS settings, the ssl contexts and the guarded listener speaking TLS, in-process: certificates
from trustme (ddg_testkit.certs), real sockets, no node process."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from ddg.errors import ConfigError
from ddg.local.tools import Tool
from ddg.net.server.limits import ServerLimits
from ddg.net.server.listener import GuardedServer, serve
from ddg.net.tls import TlsConfig, client_context, peer_names, peer_verified
from ddg.node.config import NodeConfig
from ddg_testkit import tools
from ddg_testkit.certs import Pki
from ddg_testkit.docblocks import block
from ddg_testkit.wait import wait_until_async

pytestmark = pytest.mark.timeout(30)
HOST = "127.0.0.1"
DAY = datetime.timedelta(days=1)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# ---- settings ----------------------------------------------------------------------------


def test_cert_without_key(pki: Pki) -> None:
    cert, _ = pki.issue("n1")
    with pytest.raises(ConfigError, match="--tls-cert needs --tls-key"):
        TlsConfig(cert=cert)


def test_key_without_cert(pki: Pki) -> None:
    _, key = pki.issue("n1")
    with pytest.raises(ConfigError, match="--tls-key needs --tls-cert"):
        TlsConfig(key=key)


def test_client_auth_without_ca(pki: Pki) -> None:
    cert, key = pki.issue("n1")
    with pytest.raises(ConfigError, match="--tls-client-auth needs --tls-ca"):
        TlsConfig(cert=cert, key=key, client_auth=True)


def test_missing_and_unreadable_files(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("n1")
    with pytest.raises(ConfigError, match=r"cannot read the TLS certificate .*nope\.crt"):
        TlsConfig(cert=tmp_path / "nope.crt", key=key)
    with pytest.raises(ConfigError, match="cannot read the TLS key"):
        TlsConfig(cert=cert, key=tmp_path)  # a directory
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        TlsConfig(cert=garbage, key=key)
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        TlsConfig(cert=cert, key=garbage)


def test_key_of_another_certificate(pki: Pki) -> None:
    cert, _ = pki.issue("n1")
    _, other_key = pki.issue("n2")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        TlsConfig(cert=cert, key=other_key)


def test_expired_and_future_certificates(pki: Pki) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = pki.issue("old", not_before=now - 10 * DAY, not_after=now - DAY)
    with pytest.raises(ConfigError, match="expired on"):
        TlsConfig(cert=cert, key=key)
    cert, key = pki.issue("new", not_before=now + DAY, not_after=now + 10 * DAY)
    with pytest.raises(ConfigError, match="is not valid before"):
        TlsConfig(cert=cert, key=key)


def test_node_config_with_tls(pki: Pki, tmp_path: Path) -> None:
    mtls = pki.tls("n1")
    c = NodeConfig(name="n1", port=4001, data_dir=tmp_path, tls=mtls)
    assert c.address == "https://127.0.0.1:4001" and c.security == "mtls" and c.authenticated
    # mutual TLS alone may bind off loopback, like a secret alone; TLS without it may not
    NodeConfig(name="n1", host="0.0.0.0", port=4001, data_dir=tmp_path, tls=mtls,
               advertise_url="https://10.0.0.5:4001")
    plain_tls = pki.tls("n1", client_auth=False)
    with pytest.raises(ConfigError, match="mutual TLS"):
        NodeConfig(name="n1", host="10.0.0.5", port=4001, data_dir=tmp_path, tls=plain_tls)
    c = NodeConfig(name="n1", host="10.0.0.5", port=4001, data_dir=tmp_path, tls=plain_tls,
                   secret=b"s3cret-for-tests")
    assert c.address == "https://10.0.0.5:4001" and c.security == "hmac"
    with pytest.raises(ConfigError, match="use https://"):
        NodeConfig(name="n1", port=4001, data_dir=tmp_path, tls=mtls,
                   advertise_url="http://127.0.0.1:4001")
    with pytest.raises(ConfigError, match="use http://"):
        NodeConfig(name="n1", port=4001, data_dir=tmp_path,
                   advertise_url="https://127.0.0.1:4001")
    with pytest.raises(ConfigError, match="--advertise-url https://"):
        NodeConfig(name="n1", host="0.0.0.0", port=4001, data_dir=tmp_path, tls=mtls)


def test_with_client_auth_a_node_certificate_must_name_the_node(pki: Pki,
                                                                 tmp_path: Path) -> None:
    """Its certificate is its client certificate, and peers take a message only from one
    that names its sender: a node whose own does not would be silently unheard."""
    n1 = pki.tls("n1")
    assert n1.cert_names() == {"n1", "localhost"}
    with pytest.raises(ConfigError, match=r"does not name this node 'n2' \(it has DNS:localhost, "
                                          r"DNS:n1\).*subjectAltName DNS:n2"):
        NodeConfig(name="n2", port=4001, data_dir=tmp_path, tls=n1)
    cert, key = pki.issue("bare", "127.0.0.1")  # an IP, no DNS name at all
    bare = TlsConfig(cert=cert, key=key, ca=pki.ca_file, client_auth=True)
    assert bare.cert_names() == frozenset()
    with pytest.raises(ConfigError, match="it has no DNS name"):
        NodeConfig(name="n1", port=4001, data_dir=tmp_path, tls=bare)
    # without client certificates nothing is taken by name: any certificate serves
    NodeConfig(name="n2", port=4001, data_dir=tmp_path, tls=pki.tls("n1", client_auth=False),
               secret=b"s3cret-for-tests")


def test_peer_names_are_the_dns_names_of_a_verified_certificate() -> None:
    cert = {"subject": ((("commonName", "n9"),),),
            "subjectAltName": (("DNS", "n1"), ("IP Address", "127.0.0.1"), ("DNS", "n1.lan"),
                               ("URI", "spiffe://n2"))}
    assert peer_names(cert) == {"n1", "n1.lan"}  # not the CN, an IP or a URI
    assert peer_names({}) == peer_names(None) == frozenset()  # unverified: nobody


# ---- contexts and the listener -----------------------------------------------------------


def test_contexts(pki: Pki) -> None:
    tls = pki.tls("n1")
    server = tls.server_context()
    assert server.verify_mode is ssl.CERT_OPTIONAL  # asked for, not demanded: GET / is public
    client = client_context(tls)
    assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname
    assert peer_verified({"subject": ()}) and not peer_verified({}) and not peer_verified(None)


async def _peer_app() -> web.Application:
    async def root(request: web.Request) -> web.Response:
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        return web.Response(text="verified" if peer_verified(cert) else "anonymous")

    app = web.Application()
    app.router.add_get("/", root)
    return app


async def test_https_with_and_without_a_client_certificate(pki: Pki, tmp_path: Path) -> None:
    tls = pki.tls("n1")
    server = await serve(await _peer_app(), HOST, 0, ssl=tls.server_context())
    url = f"https://{HOST}:{server.port}/"
    try:
        async with httpx.AsyncClient(verify=client_context(tls), timeout=5) as http:
            assert (await http.get(url)).text == "verified"
        anonymous = TlsConfig(ca=pki.ca_file)
        async with httpx.AsyncClient(verify=client_context(anonymous), timeout=5) as http:
            assert (await http.get(url)).text == "anonymous"
        # a certificate from another CA is refused in the handshake
        other = Pki(tmp_path / "other", "other-ca")
        cert, key = other.issue("impostor")
        impostor = TlsConfig(cert=cert, key=key, ca=pki.ca_file)
        async with httpx.AsyncClient(verify=client_context(impostor), timeout=5) as http:
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await http.get(url)
        # and a client that trusts only that other CA does not trust the node
        async with httpx.AsyncClient(verify=client_context(TlsConfig(ca=other.ca_file)),
                                     timeout=5) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(url)
    finally:
        await server.close()


async def test_a_handshake_that_never_completes_frees_its_slot(pki: Pki) -> None:
    limits = ServerLimits(header_timeout=0.3, keepalive_timeout=1.0, lingering_time=0.2,
                          shutdown_timeout=1.0, max_connections=2)
    server = await serve(await _peer_app(), HOST, 0, limits=limits,
                         ssl=pki.tls("n1").server_context())
    try:
        async with asyncio.timeout(3):
            reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        await wait_until_async(lambda: server.stats.open == 1, timeout=3,
                               what="the connection holds a slot", interval=0.01)
        await wait_until_async(lambda: server.stats.open == 0, timeout=3,
                               what="the stalled handshake is dropped", interval=0.01)
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # closed by the node
        writer.close()
        # the slot is free again: a real client gets through
        async with httpx.AsyncClient(verify=client_context(pki.tls("n2")), timeout=5) as http:
            assert (await http.get(f"https://{HOST}:{server.port}/")).text == "verified"
    finally:
        await server.close()


async def capped_tls_server(pki: Pki, *, cap: int, idle: float) -> GuardedServer:
    """n1's HTTPS server with CAP connections at most; IDLE s for a head and keep-alive."""
    limits = ServerLimits(header_timeout=idle, keepalive_timeout=idle,
                          max_connections=cap)
    return await serve(await _peer_app(), HOST, 0, limits=limits,
                       ssl=pki.tls("n1").server_context())


async def test_stalled_handshakes_at_the_cap_are_evicted_not_a_lockout(pki: Pki) -> None:
    """A connection still in its TLS handshake has made no progress, like an idle one: at the
    cap a new client evicts it. (They held their slots for the whole header timeout, so a few
    sockets that never said hello locked every peer out of a TLS node.)"""
    server = await capped_tls_server(pki, cap=2, idle=30.0)
    stalled: list[asyncio.StreamWriter] = []
    try:
        for _ in range(4):
            async with asyncio.timeout(3):
                _, writer = await asyncio.open_connection(HOST, server.port)
            stalled.append(writer)
        stats = server.stats
        await wait_until_async(lambda: stats.accepted + stats.refused_over_cap == 4,
                               timeout=3, what="the stalled clients taken", interval=0.01)
        async with httpx.AsyncClient(verify=client_context(pki.tls("n2")), timeout=5) as http:
            for _ in range(3):
                assert (await http.get(f"https://{HOST}:{server.port}/")).text == "verified"
        assert stats.refused_over_cap == 0
        assert stats.evicted_idle >= 2 and stats.open <= 2
    finally:
        for writer in stalled:
            writer.close()
        await server.close()


async def handshake_but_the_last_flight(sock: socket.socket, address: tuple[str, int],
                                        ctx: ssl.SSLContext) -> bytes:
    """Run a TLS handshake by hand on SOCK, all but the client's last flight (returned): the
    server completes it when that is sent."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await loop.sock_connect(sock, address)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=HOST)
    while True:
        try:
            tls.do_handshake()
            return outgoing.read()
        except ssl.SSLWantReadError:
            if data := outgoing.read():
                await loop.sock_sendall(sock, data)
            incoming.write(await loop.sock_recv(sock, 65536))


async def test_a_connection_evicted_as_its_handshake_completes_leaves_no_stale_fd(
        pki: Pki) -> None:
    """A's handshake completes and B arrives in the same loop pass, at a cap of 1: B evicts A.
    Evicting A's set-up handle then closed A's socket under its live TLS transport; the loop
    kept a reader for that fd number, and C, given the number next, was never read (its
    handshake timed out). Found by an adversarial read."""
    loop = asyncio.get_running_loop()
    server = await capped_tls_server(pki, cap=1, idle=2.0)
    address, stats = (HOST, server.port), server.stats
    ctx = client_context(pki.tls("n2"))
    a, c = socket.socket(), socket.socket()  # C's made now: it must not take A's fd number
    b: socket.socket | None = None
    try:
        # A: the handshake by hand, all but the client's last flight
        last = await handshake_but_the_last_flight(a, address, ctx)
        await wait_until_async(lambda: stats.accepted == 1, timeout=3, what="A accepted")
        # With the loop not running: A's last flight, then B connects; one select sees both.
        a.setblocking(True)
        a.sendall(last)
        b = socket.create_connection(address, timeout=3)
        await wait_until_async(lambda: stats.evicted_idle == 1, timeout=3, what="A evicted")
        b.close()
        await wait_until_async(lambda: stats.open == 0, timeout=3, what="B gone")
        c.setblocking(False)
        async with asyncio.timeout(3):
            await loop.sock_connect(c, address)
            reader, writer = await asyncio.open_connection(sock=c, ssl=ctx,
                                                           server_hostname=HOST)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert stats.header_timeouts == 0
    finally:
        for sock in (a, b, c):
            if sock is not None:
                sock.close()
        await server.close()


async def test_a_connection_evicted_just_before_its_handshake_completes_is_closed(
        pki: Pki) -> None:
    """B arrives, then A's handshake completes, in one loop pass, at a cap of 1: B evicts A's
    set-up, then A connects anyway. It lived on without a slot (over the cap) until its header
    timeout, or 30 s of graceful TLS shutdown after a server close. Found by an adversarial
    read."""
    loop = asyncio.get_running_loop()
    server = await capped_tls_server(pki, cap=1, idle=10.0)
    address, stats = (HOST, server.port), server.stats
    ctx = client_context(pki.tls("n2"))
    a = socket.socket()
    b: socket.socket | None = None
    try:
        last = await handshake_but_the_last_flight(a, address, ctx)
        await wait_until_async(lambda: stats.accepted == 1, timeout=3, what="A accepted")
        # With the loop not running: B connects, then A's last flight; one select sees both.
        b = socket.create_connection(address, timeout=3)
        a.setblocking(True)
        a.sendall(last)
        await wait_until_async(lambda: stats.evicted_idle == 1, timeout=3, what="A evicted")
        a.setblocking(False)
        async with asyncio.timeout(2):  # not the 10 s header timeout
            while await loop.sock_recv(a, 65536):
                pass
        assert stats.open == 1 and stats.peak_open == 1 and stats.header_timeouts == 0
    finally:
        for sock in (a, b):
            if sock is not None:
                sock.close()
        await server.close()


# ---- the openssl recipe in docs/deploy.md -------------------------------------------------


OPENSSL = tools.optional(tools.openssl)  # DDG_OPENSSL, else openssl on PATH


@pytest.mark.integration
@pytest.mark.skipif(isinstance(OPENSSL, str), reason=str(OPENSSL))
async def test_the_documented_openssl_recipe_makes_working_certificates(tmp_path: Path) -> None:
    """The guide's CA, node1 and operator blocks, as written (they work in ~/ddg-pki), with
    the openssl the suite chose first on their PATH: node1's names node1, the operator's no
    one."""
    assert isinstance(OPENSSL, Tool)
    (tmp_path / "ddg-pki").mkdir()
    bin_dir = tools.linked(OPENSSL, tmp_path / "bin").parent
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for step in (block("ca"), block("node-cert"), block("operator-cert")):
        made = await asyncio.to_thread(subprocess.run, ["bash", "-e", "-c", step.script()],
                                       cwd=tmp_path, env=env, capture_output=True, text=True,
                                       timeout=60)
        assert made.returncode == 0, made.stderr
    pki = tmp_path / "ddg-pki"
    tls = TlsConfig(cert=pki / "node1.crt", key=pki / "node1.key", ca=pki / "ca.crt",
                    client_auth=True)
    assert tls.cert_names() == {"node1", "node1.example.net"}
    NodeConfig(name="node1", port=4001, data_dir=tmp_path / "d", tls=tls)  # it names node1
    operator = TlsConfig(cert=pki / "operator.crt", key=pki / "operator.key", ca=pki / "ca.crt")
    assert operator.cert_names() == frozenset()
    server = await serve(await _peer_app(), HOST, 0, ssl=tls.server_context())
    try:
        for client in (tls, operator):  # both verify as client certificates
            async with httpx.AsyncClient(verify=client_context(client), timeout=5) as http:
                assert (await http.get(f"https://{HOST}:{server.port}/")).text == "verified"
    finally:
        await server.close()


async def test_a_refused_client_certificate_is_logged_once_per_client(
        pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The client only sees the connection drop (TLS 1.3): the node says why, once."""
    server = await serve(await _peer_app(), HOST, 0, ssl=pki.tls("n1").server_context())
    cert, key = Pki(tmp_path / "other", "other-ca").issue("stranger")
    stranger = client_context(TlsConfig(cert=cert, key=key, ca=pki.ca_file))
    try:
        with caplog.at_level(logging.WARNING, logger="ddg.server"):
            for _ in range(3):
                async with httpx.AsyncClient(verify=stranger, timeout=5) as http:
                    with pytest.raises(httpx.TransportError):
                        await http.get(f"https://{HOST}:{server.port}/")
            await wait_until_async(lambda: caplog.records, timeout=3, what="a warning")
    finally:
        await server.close()
    lines = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines == [f"TLS handshake with {HOST} failed: CERTIFICATE_VERIFY_FAILED (unable to "
                     "get local issuer certificate)"], lines
