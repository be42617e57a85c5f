"""TLS for node endpoints: the settings (checked when made, so a bad file is a one-line error
at start, not a cluster whose peers all refuse this node) and the one place ssl contexts are
built, for the node's listener, its peer transport and every client of node endpoints.

Mutual TLS: a node serving with a CA asks every client for a certificate but does not demand
one (ssl.CERT_OPTIONAL), so `GET /`, /status, /metrics and /watch stay readable by anyone who
trusts the CA; with client_auth the node itself refuses /raft/* and /admin/* to a client
without a verified certificate (ddg.node). A certificate presented but not signed by the CA
fails the handshake.

Identity: a certificate speaks for the members its subjectAltName names as DNS entries
(`DNS:node1`), exactly as written, and for no other (etcd's --peer-cert-allowed-cn admits one
name for every peer; here each sender needs a certificate of its own name).
With client_auth a node takes a peer message or a crash-hint stream only from a certificate
that names its sender; one that names no member (the console's) may use /admin/*, never
/raft/*. A node's own certificate is also its client certificate towards its peers, so it must
name the node (NodeConfig checks that at start).
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from ddg.errors import ConfigError

# The start of a node's 403 reason on /raft/* and /admin/* without a verified client certificate.
CLIENT_CERT_REQUIRED = "client certificate required"
# The start of its 403 reason on /raft/* when the certificate does not name the sender.
CERT_DOES_NOT_NAME = "the client certificate does not name"


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: "
                          f"{exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"the TLS {what} {path} is empty")
    return data


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise ConfigError("encrypted keys are not supported: store the key without a passphrase, "
                      "readable by this user only")


def _check_dates(path: Path, pem: bytes, *, now: datetime.datetime) -> None:
    # Here, not at the top: cryptography costs a node ~9 MiB of RSS, paid only with TLS on.
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"the TLS certificate {path} holds no PEM certificate") from None
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(no subject)"
        if cert.not_valid_after_utc < now:
            raise ConfigError(f"the TLS certificate {path} ({subject}) expired on "
                              f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if cert.not_valid_before_utc > now:
            raise ConfigError(f"the TLS certificate {path} ({subject}) is not valid before "
                              f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


@dataclass(frozen=True, kw_only=True, slots=True)
class TlsConfig:
    """CERT and KEY: this process's certificate (PEM, leaf first, then any intermediates) and
    its key; a node serves HTTPS with them and presents them to peers, a client (status, the
    console) presents them where nodes demand a client certificate. CA: the certificates
    trusted for peers and nodes (without one, the system's). CLIENT_AUTH: /raft/* and
    /admin/* only for clients with a certificate signed by CA."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    client_auth: bool = False

    def __post_init__(self) -> None:
        if self.cert is not None and self.key is None:
            raise ConfigError("--tls-cert needs --tls-key (the certificate's private key)")
        if self.key is not None and self.cert is None:
            raise ConfigError("--tls-key needs --tls-cert (the certificate of that key)")
        if self.client_auth and self.ca is None:
            raise ConfigError("--tls-client-auth needs --tls-ca: the CA whose signature a "
                              "client certificate must carry")
        if self.client_auth and self.cert is None:
            raise ConfigError("--tls-client-auth needs --tls-cert and --tls-key: the node "
                              "serves HTTPS and presents them to its peers")
        now = datetime.datetime.now(datetime.UTC)
        if self.ca is not None:
            _check_dates(self.ca, _read(self.ca, "CA file"), now=now)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_verify_locations(cafile=self.ca)
            except ssl.SSLError as exc:
                raise ConfigError(f"the TLS CA file {self.ca} is not a PEM certificate "
                                  f"bundle: {exc.reason or exc}") from None
        if self.cert is not None and self.key is not None:
            _check_dates(self.cert, _read(self.cert, "certificate"), now=now)
            _read(self.key, "key")
            self._load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))

    def cert_names(self) -> frozenset[str]:
        """The DNS names in CERT's subjectAltName (the leaf's): the members it speaks for."""
        if self.cert is None:
            return frozenset()
        from cryptography import x509  # only with TLS on (see _check_dates)

        leaf = x509.load_pem_x509_certificates(_read(self.cert, "certificate"))[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return frozenset()
        return frozenset(san.get_values_for_type(x509.DNSName))

    @property
    def serving(self) -> bool:
        """Whether a node with these settings serves HTTPS."""
        return self.cert is not None

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        assert self.cert is not None and self.key is not None
        try:
            ctx.load_cert_chain(self.cert, self.key, password=_no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(f"the TLS key {self.key} does not belong to the certificate "
                                  f"{self.cert}") from None
            raise ConfigError(f"cannot load the TLS certificate {self.cert} with the key "
                              f"{self.key}: {exc.reason or exc}") from None

    def server_context(self) -> ssl.SSLContext:
        """For a node's listener: its certificate; client certificates asked for (not
        demanded) and verified against CA when there is one."""
        if self.cert is None:
            raise ConfigError("serving HTTPS needs --tls-cert and --tls-key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(ctx)
        if self.ca is not None:
            ctx.load_verify_locations(cafile=self.ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def client_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """For anything that calls nodes (peers, CLI, console): verifies the node's certificate
    and name against TLS's CA (else the system's), and presents TLS's certificate if any."""
    ca = None if tls is None else tls.ca
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=None if ca is None else str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.cert is not None:
        tls._load_chain(ctx)
    return ctx


def peer_verified(peercert: object) -> bool:
    """Whether a connection's peer certificate (the transport's 'peercert') was verified:
    ssl gives a non-empty dict only for a certificate that passed verification."""
    return isinstance(peercert, dict) and bool(peercert)


def peer_names(peercert: object) -> frozenset[str]:
    """The DNS names in a verified peer certificate's subjectAltName: the members it speaks
    for (none for an unverified one)."""
    if not isinstance(peercert, dict) or not peercert:
        return frozenset()
    san = peercert.get("subjectAltName", ())
    return frozenset(value for kind, value in san if kind == "DNS" and isinstance(value, str))
