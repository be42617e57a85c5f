"""Certificates for the TLS tests: a CA and certificates it signs, made in memory by trustme
and written to a test's temp dir (no private key is ever checked in).

A node's certificate names the node (subjectAltName DNS:<name>): with mutual TLS its peers take
a message only from the certificate of its sender. A client's (the console's, an operator's)
names no node, so it can read and use /admin/*, never speak for a member."""

from __future__ import annotations

import datetime
from pathlib import Path

import trustme

from ddg.net.tls import TlsConfig

LOOPBACK = ("127.0.0.1", "localhost")


class Pki:
    """A CA of its own (two Pkis never trust each other's certificates) and its files in DIR."""

    def __init__(self, dir: Path, name: str = "ca") -> None:
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=f"ddg test {name}")
        self.ca_file = dir / f"{name}.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, name: str, *identities: str, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> tuple[Path, Path]:
        """A certificate for IDENTITIES (default: loopback) and its key: (cert file, key)."""
        leaf = self.ca.issue_cert(*(identities or LOOPBACK), common_name=name,
                                  not_before=not_before, not_after=not_after)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def tls(self, name: str, *addresses: str, client_auth: bool = True) -> TlsConfig:
        """Node NAME's settings: a certificate from this CA for DNS:NAME and ADDRESSES
        (default: loopback), this CA trusted. `LocalCluster(node_tls=pki.tls)`."""
        cert, key = self.issue(name, name, *(addresses or LOOPBACK))
        return TlsConfig(cert=cert, key=key, ca=self.ca_file, client_auth=client_auth)

    def client(self, name: str = "console") -> TlsConfig:
        """A client's settings (the console's, an operator's): a certificate from this CA that
        names no node (loopback only), this CA trusted."""
        cert, key = self.issue(name)
        return TlsConfig(cert=cert, key=key, ca=self.ca_file)
