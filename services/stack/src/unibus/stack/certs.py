"""Certificate material for a unibus cluster: two CAs and two certificates per node.

Two trust roots, on purpose:

* the **client CA** is the data-plane root that clients pin; it signs each node's
  *server* certificate (client port, EKU serverAuth only);
* the **route CA** signs each node's *route* certificate (cluster port, mutual TLS,
  EKU serverAuth + clientAuth). Because the route port trusts only the route CA, a
  certificate issued for the data plane can never be presented on a route.

Everything is ECDSA P-256 signed with SHA-256. Private keys are created with mode 0600
(``O_CREAT | O_EXCL``), so there is no moment at which key material is readable by
anyone else, and nothing is overwritten unless the caller asks for it explicitly.

>>> NodeSpec.parse("n1=10.0.0.5,n1.example.org")
NodeSpec(name='n1', ips=('10.0.0.5',), dns_names=('n1.example.org',))
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from unibus.core.errors import CertificateError
from unibus.core.files import PRIVATE_MODE, PrivateFileError, write_private

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "LOOPBACK_DNS",
    "LOOPBACK_IP",
    "CertLayout",
    "CertificateAuthority",
    "NodeSpec",
    "init_certs",
    "issue_leaves",
    "renew_leaves",
    "self_signed_leaf",
    "write_pem_pair",
]

CA_DAYS: Final = 3650
"""Default CA lifetime: ten years, because replacing a pinned root touches every client."""
LEAF_DAYS: Final = 825
"""Default leaf lifetime (about two years and three months, the usual TLS server ceiling)."""
LOOPBACK_IP: Final = "127.0.0.1"
LOOPBACK_DNS: Final = "localhost"
ORGANIZATION: Final = "unibus"

_NODE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Issued certificates start slightly in the past so a peer whose clock runs a little
# behind does not reject a certificate made seconds ago.
_BACKDATE: Final = dt.timedelta(minutes=5)
_CERT_MODE: Final = 0o644


# -- names ----------------------------------------------------------------------------------


def _check_node_name(name: str) -> str:
    if not name:
        raise CertificateError("node name is empty; use NAME=IP[,IP|DNS...], e.g. n1=10.0.0.5")
    if not _NODE_NAME_RE.fullmatch(name):
        raise CertificateError(
            f"node name {name!r} is invalid: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


def _normalize_ip(value: str, *, node: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise CertificateError(f"node {node}: {value!r} is not a valid IP address") from None


def _normalize_dns(value: str, *, node: str) -> str:
    name = value.lower().removesuffix(".")
    labels = name.split(".")
    valid = (
        0 < len(name) <= 253
        and all(_DNS_LABEL_RE.fullmatch(label) for label in labels)
        # An all-numeric last label is what a mistyped IPv4 address looks like.
        and not labels[-1].isdigit()
    )
    if not valid:
        raise CertificateError(
            f"node {node}: {value!r} is neither a valid IP address nor a valid DNS name"
        )
    return name


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class NodeSpec:
    """One cluster node: its name and the addresses its certificates must be valid for.

    The name doubles as a DNS name in the certificates (the container or host name),
    so it follows hostname rules. Construction validates and normalizes the addresses
    (``::0001`` becomes ``::1``, DNS names are lowercased).
    """

    name: str
    ips: tuple[str, ...]
    dns_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_node_name(self.name)
        # Validate every item before demanding an IP: a mistyped IP is classified as a
        # DNS name, and "not a valid IP or DNS name" is the message that helps there.
        ips = tuple(_normalize_ip(ip, node=self.name) for ip in self.ips)
        dns_names = tuple(_normalize_dns(dns, node=self.name) for dns in self.dns_names)
        if not ips:
            raise CertificateError(
                f"node {self.name}: needs at least one IP address, e.g. {self.name}=10.0.0.5"
            )
        for values in (ips, dns_names):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise CertificateError(f"node {self.name}: {value} is listed twice")
                seen.add(value)
        # Frozen dataclass: normalizing in place is the documented escape hatch.
        object.__setattr__(self, "ips", ips)
        object.__setattr__(self, "dns_names", dns_names)

    @classmethod
    def parse(cls, value: str) -> NodeSpec:
        """Parse ``NAME=IP[,IP|DNS...]``; each item after ``=`` is an IP or a DNS name."""
        name, sep, rest = value.strip().partition("=")
        name = name.strip()
        if not sep:
            raise CertificateError(
                f"node {value!r} has no '=': use NAME=IP[,IP|DNS...], e.g. n1=10.0.0.5"
            )
        _check_node_name(name)
        items = [item.strip() for item in rest.split(",")]
        if any(not item for item in items):
            raise CertificateError(
                f"node {name}: empty address in {value!r}; use NAME=IP[,IP|DNS...]"
            )
        ips = tuple(item for item in items if _is_ip(item))
        dns_names = tuple(item for item in items if not _is_ip(item))
        return cls(name=name, ips=ips, dns_names=dns_names)

    def route_names(self) -> tuple[list[str], list[str]]:
        """``(ips, dns_names)`` for the route certificate.

        Extra DNS names are included too, so routes may be configured by host name.
        """
        return (
            _unique([*self.ips, LOOPBACK_IP]),
            _unique([self.name, *self.dns_names, LOOPBACK_DNS]),
        )

    def server_names(self) -> tuple[list[str], list[str]]:
        """``(ips, dns_names)`` for the data-plane server certificate."""
        return (
            _unique([*self.ips, LOOPBACK_IP]),
            _unique([self.name, *self.dns_names, LOOPBACK_DNS]),
        )


# -- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertLayout:
    """Where every file lives under one certificate directory."""

    root: Path
    client_ca_cert: Path
    client_ca_key: Path
    route_ca_cert: Path
    route_ca_key: Path

    @classmethod
    def at(cls, root: Path) -> CertLayout:
        return cls(
            root=root,
            client_ca_cert=root / "client-ca.pem",
            client_ca_key=root / "client-ca-key.pem",
            route_ca_cert=root / "route-ca.pem",
            route_ca_key=root / "route-ca-key.pem",
        )

    def node_dir(self, node: str) -> Path:
        # Validated so a crafted name can never point outside ``root/nodes``.
        return self.root / "nodes" / _check_node_name(node)

    def route_cert(self, node: str) -> Path:
        return self.node_dir(node) / "route.pem"

    def route_key(self, node: str) -> Path:
        return self.node_dir(node) / "route-key.pem"

    def server_cert(self, node: str) -> Path:
        return self.node_dir(node) / "server.pem"

    def server_key(self, node: str) -> Path:
        return self.node_dir(node) / "server-key.pem"

    def files(self, nodes: Iterable[str]) -> list[Path]:
        """Every file ``init_certs`` writes for these nodes, CAs first."""
        paths = [self.client_ca_cert, self.client_ca_key, self.route_ca_cert, self.route_ca_key]
        for node in nodes:
            paths += [
                self.route_cert(node),
                self.route_key(node),
                self.server_cert(node),
                self.server_key(node),
            ]
        return paths


# -- issuing --------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(ips: Sequence[str], dns_names: Sequence[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in _unique(ips)
    ]
    general += [x509.DNSName(name) for name in _unique(dns_names)]
    return x509.SubjectAlternativeName(general)


def _leaf_builder(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    ips: Sequence[str],
    dns_names: Sequence[str],
    server: bool,
    client: bool,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    if not (server or client):
        raise CertificateError(f"certificate {common_name!r}: needs serverAuth, clientAuth or both")
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # ECDHE-ECDSA only ever signs with the leaf key; nothing else is allowed.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ips or dns_names:
        builder = builder.add_extension(_san(ips, dns_names), critical=False)
    return builder


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class CertificateAuthority:
    """A CA certificate with its private key, able to issue leaf certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    def __repr__(self) -> str:
        # Never let the key object end up in a log line.
        return f"CertificateAuthority({self.cert.subject.rfc4514_string()!r})"

    @classmethod
    def create(cls, common_name: str, *, days: int = CA_DAYS) -> CertificateAuthority:
        """A new self-signed CA that may sign leaves only (``path_length=0``)."""
        key = _new_key()
        now = _now()
        name = _name(common_name)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """Load an existing CA (PEM or DER); refuse anything that cannot sign leaves."""
        cert = _load_cert(cert_file)
        key = _load_key(key_file)
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateError(
                f"{cert_file} is not a CA certificate (basic constraints do not say CA:TRUE)"
            )
        with contextlib.suppress(x509.ExtensionNotFound):
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.key_cert_sign:
                raise CertificateError(
                    f"{cert_file} is a CA certificate whose key usage forbids signing "
                    "certificates (keyCertSign missing)"
                )
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise CertificateError(f"{key_file} is not the private key of {cert_file}")
        if cert.not_valid_after_utc <= _now():
            raise CertificateError(
                f"{cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "create a new CA instead of importing it"
            )
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        *,
        ips: Sequence[str],
        dns_names: Sequence[str],
        server: bool = True,
        client: bool = False,
        days: int = LEAF_DAYS,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new key and a leaf certificate for it, signed by this CA.

        The SANs are exactly ``ips`` and ``dns_names`` (deduplicated); callers add
        loopback names themselves. The leaf never outlives the CA.
        """
        not_after = min(_now() + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        if not_after <= _now():
            raise CertificateError(
                f"CA {self.cert.subject.rfc4514_string()} has expired; it cannot issue"
            )
        key = _new_key()
        builder = _leaf_builder(
            common_name,
            key,
            ips=ips,
            dns_names=dns_names,
            server=server,
            client=client,
            not_after=not_after,
        )
        cert = (
            builder.issuer_name(self.cert.subject)
            .add_extension(self._authority_key_identifier(), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        # An imported CA may carry its own SKI computed differently; the AKI must echo it.
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def self_signed_leaf(
    common_name: str,
    *,
    ips: Sequence[str],
    dns_names: Sequence[str],
    server: bool = True,
    client: bool = True,
    days: int = LEAF_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed, non-CA leaf: a certificate no unibus trust root accepts (for tests)."""
    key = _new_key()
    builder = _leaf_builder(
        common_name,
        key,
        ips=ips,
        dns_names=dns_names,
        server=server,
        client=client,
        not_after=_now() + dt.timedelta(days=days),
    )
    cert = (
        builder.issuer_name(_name(common_name))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


# -- files ----------------------------------------------------------------------------------


def _public_der(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_cert(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{path} is not a PEM or DER X.509 certificate") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError for "password required"; the message would
        # otherwise read like a programming error.
        raise CertificateError(
            f"{path} is an encrypted private key; decrypt it first "
            "(openssl pkey -in KEY -out PLAIN)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{path} is not a readable PEM or DER private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(
            f"{path} is a {type(key).__name__.lstrip('_')} key; unibus CAs use ECDSA keys"
        )
    return key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem_pair(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    cert_file: Path,
    key_file: Path,
    *,
    overwrite: bool = False,
) -> None:
    """Write a certificate (0644) and its unencrypted PKCS#8 key (0600) as PEM.

    Missing parent directories are created 0700. Both targets are checked before either
    is written, so a refusal leaves the disk untouched.
    """
    if not overwrite:
        existing = [p for p in (cert_file, key_file) if p.exists() or p.is_symlink()]
        if existing:
            raise CertificateError(
                f"{', '.join(map(str, existing))} already exist(s); pass --force to replace"
            )
    # Key first: a certificate without its key is useless, the reverse is merely incomplete.
    try:
        write_private(key_file, _key_pem(key), mode=PRIVATE_MODE, overwrite=overwrite)
        write_private(cert_file, _cert_pem(cert), mode=_CERT_MODE, overwrite=overwrite)
    except PrivateFileError as exc:
        raise CertificateError(str(exc)) from None


# -- the whole directory --------------------------------------------------------------------


def init_certs(
    root: Path,
    nodes: Sequence[NodeSpec],
    *,
    client_ca_cert: Path | None = None,
    client_ca_key: Path | None = None,
    force: bool = False,
    ca_days: int = CA_DAYS,
    leaf_days: int = LEAF_DAYS,
) -> CertLayout:
    """Create (or re-create with ``force``) all certificate material under ``root``.

    With ``client_ca_cert``/``client_ca_key`` the existing client CA is imported (and
    copied into the layout) instead of generated, so clients that already pin it keep
    trusting the bus. The route CA is always new. Every input is validated and every
    certificate is issued in memory before the first file is written.
    """
    if not nodes:
        raise CertificateError("no nodes given; pass --node NAME=IP[,IP|DNS...] at least once")
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise CertificateError(f"node name {node.name} is given twice; node names must differ")
        seen.add(node.name)
    if (client_ca_cert is None) != (client_ca_key is None):
        raise CertificateError(
            "importing a client CA needs both --client-ca-cert and --client-ca-key"
        )

    layout = CertLayout.at(root)
    targets = layout.files(node.name for node in nodes)
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        listing = ", ".join(str(p) for p in existing)
        raise CertificateError(
            f"refusing to overwrite existing certificate material ({listing}); "
            "pass --force to replace them"
        )

    if client_ca_cert is not None and client_ca_key is not None:
        client_ca = CertificateAuthority.load(client_ca_cert, client_ca_key)
    else:
        client_ca = CertificateAuthority.create("unibus client CA", days=ca_days)
    route_ca = CertificateAuthority.create("unibus route CA", days=ca_days)

    pairs: list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]] = [
        (client_ca.cert, client_ca.key, layout.client_ca_cert, layout.client_ca_key),
        (route_ca.cert, route_ca.key, layout.route_ca_cert, layout.route_ca_key),
    ]
    for node in nodes:
        route_ips, route_dns = node.route_names()
        cert, key = route_ca.issue(
            node.name, ips=route_ips, dns_names=route_dns, server=True, client=True, days=leaf_days
        )
        pairs.append((cert, key, layout.route_cert(node.name), layout.route_key(node.name)))
        server_ips, server_dns = node.server_names()
        cert, key = client_ca.issue(
            node.name, ips=server_ips, dns_names=server_dns, server=True, days=leaf_days
        )
        pairs.append((cert, key, layout.server_cert(node.name), layout.server_key(node.name)))

    for cert, key, cert_file, key_file in pairs:
        write_pem_pair(cert, key, cert_file, key_file, overwrite=force)
    return layout


def _names_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """The IP addresses and DNS names a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips, set(san.get_values_for_type(x509.DNSName))


def _leaf_fits(
    cert_file: Path, key_file: Path, ca: CertificateAuthority, names: tuple[list[str], list[str]]
) -> bool:
    """Whether the leaf exists, is signed by ``ca``, names exactly ``names``, is for its
    key and has not expired."""
    if not (cert_file.exists() and key_file.exists()):
        return False
    cert = _load_cert(cert_file)
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if _public_der(_load_key(key_file).public_key()) != _public_der(cert.public_key()):
        return False
    ips, dns_names = names
    if _names_of(cert) != ({str(ipaddress.ip_address(ip)) for ip in ips}, set(dns_names)):
        return False
    return cert.not_valid_after_utc > _now()


def issue_leaves(
    root: Path,
    nodes: Sequence[NodeSpec],
    *,
    renew: Collection[str] = (),
    leaf_days: int = LEAF_DAYS,
) -> list[str]:
    """Issue the nodes' route and server certificates from the CAs under ``root``, which
    are kept (clients and peers go on trusting them).

    A leaf is issued anew when it is missing, not signed by its CA, not for its key,
    expired, or for other addresses than the node's now (a node moved to a new host, a
    stack bound to a new address), and always for the nodes named in ``renew`` (a host
    replaced: new keys, the old ones stayed on its disk). Returns what was issued
    (``"n3 route"``, ``"n3 server"``); every leaf is issued before the first is written.
    """
    layout = CertLayout.at(root)
    route_ca = CertificateAuthority.load(layout.route_ca_cert, layout.route_ca_key)
    client_ca = CertificateAuthority.load(layout.client_ca_cert, layout.client_ca_key)
    pairs: list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]] = []
    issued: list[str] = []
    for node in nodes:
        wanted = (
            ("route", route_ca, node.route_names(), layout.route_cert, layout.route_key, True),
            (
                "server",
                client_ca,
                node.server_names(),
                layout.server_cert,
                layout.server_key,
                False,
            ),
        )
        for kind, ca, names, cert_path, key_path, client in wanted:
            cert_file, key_file = cert_path(node.name), key_path(node.name)
            if node.name not in renew and _leaf_fits(cert_file, key_file, ca, names):
                continue
            ips, dns_names = names
            cert, key = ca.issue(
                node.name, ips=ips, dns_names=dns_names, server=True, client=client, days=leaf_days
            )
            pairs.append((cert, key, cert_file, key_file))
            issued.append(f"{node.name} {kind}")
    for cert, key, cert_file, key_file in pairs:
        write_pem_pair(cert, key, cert_file, key_file, overwrite=True)
    return issued


def _spec_of(layout: CertLayout, node: str) -> NodeSpec:
    """The node as its current server certificate names it (for a renewal in place)."""
    path = layout.server_cert(node)
    if not path.is_file():
        raise CertificateError(f"{path} is missing: node {node} has no certificate to renew")
    ips, dns_names = _names_of(_load_cert(path))
    return NodeSpec(name=node, ips=tuple(sorted(ips)), dns_names=tuple(sorted(dns_names)))


def renew_leaves(root: Path, nodes: Sequence[str] = (), *, leaf_days: int = LEAF_DAYS) -> list[str]:
    """New route and server certificates, with new keys, for the nodes under ``root``
    (all of them when ``nodes`` is empty), valid for the same names as before and signed
    by the same CAs, which are kept: clients and peers go on trusting the nodes, which
    pick the new files up when they restart (``unibus rollout``). Returns what was issued.
    """
    layout = CertLayout.at(root)
    names = list(nodes) or sorted(p.name for p in (root / "nodes").iterdir() if p.is_dir())
    if not names:
        raise CertificateError(f"no node certificates under {root}: nothing to renew")
    specs = [_spec_of(layout, name) for name in names]
    return issue_leaves(root, specs, renew=set(names), leaf_days=leaf_days)
