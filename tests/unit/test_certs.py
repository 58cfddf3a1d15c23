"""Certificate tooling: two CAs, per-node route and server certificates, safe file writes."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from unibus.core.errors import CertificateError
from unibus.stack.certs import (
    CertificateAuthority,
    CertLayout,
    NodeSpec,
    init_certs,
    issue_leaves,
    self_signed_leaf,
    write_pem_pair,
)

NODES = (
    NodeSpec.parse("n1=10.0.0.5,203.0.113.7,n1.example.org"),
    NodeSpec.parse("n2=10.0.0.6"),
    NodeSpec.parse("n3=10.0.0.7,2001:db8::7"),
)


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    # File modes are asserted exactly; pin the umask so a developer's 077 does not matter.
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def layout(tmp_path: Path) -> CertLayout:
    return init_certs(tmp_path / "certs", NODES)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips, set(san.get_values_for_type(x509.DNSName))


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, InvalidSignature):
        return False
    return True


def _public_der(key: ec.EllipticCurvePublicKey | object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(root: Path) -> dict[Path, tuple[bytes, int, int]]:
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns, _mode(p)) for p in root.rglob("*") if p.is_file()
    }


# -- NodeSpec -------------------------------------------------------------------------------


def test_node_spec_parse_classifies_ips_and_dns_names() -> None:
    spec = NodeSpec.parse("n1=10.0.0.5,203.0.113.7,n1.example.org")
    assert spec == NodeSpec("n1", ("10.0.0.5", "203.0.113.7"), ("n1.example.org",))


def test_node_spec_parse_normalizes_ipv6_dns_case_and_whitespace() -> None:
    spec = NodeSpec.parse(" n1 = 2001:DB8:0::1 , N1.Example.ORG. ")
    assert spec.ips == ("2001:db8::1",)
    assert spec.dns_names == ("n1.example.org",)


def test_node_spec_accepts_dns_names_before_ips() -> None:
    assert NodeSpec.parse("n1=n1.example.org,10.0.0.5").ips == ("10.0.0.5",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no '='"),
        ("n1", "no '='"),
        ("=10.0.0.5", "node name is empty"),
        ("N1=10.0.0.5", "node name 'N1' is invalid"),
        ("-n1=10.0.0.5", "node name '-n1' is invalid"),
        ("n_1=10.0.0.5", "node name 'n_1' is invalid"),
        ("n1.example=10.0.0.5", "node name 'n1.example' is invalid"),
        ("a" * 64 + "=10.0.0.5", "is invalid: use 1-63"),
        ("n1=", "empty address"),
        ("n1=10.0.0.5,", "empty address"),
        ("n1=10.0.0.5,,10.0.0.6", "empty address"),
        ("n1=10.0.0.256", "'10.0.0.256' is neither a valid IP address nor a valid DNS name"),
        ("n1=10.0.0.5,bad_name", "'bad_name' is neither"),
        ("n1=10.0.0.5,-bad.example", "'-bad.example' is neither"),
        ("n1=10.0.0.5,*.example.org", "'*.example.org' is neither"),
        ("n1=10.0.0.5," + "a" * 64 + ".org", "is neither"),
        ("n1=n1.example.org", "needs at least one IP address"),
        ("n1=10.0.0.5,10.0.0.5", "10.0.0.5 is listed twice"),
        ("n1=10.0.0.5,a.org,A.org", "a.org is listed twice"),
    ],
)
def test_node_spec_parse_refuses_bad_values_with_clear_message(value: str, message: str) -> None:
    with pytest.raises(CertificateError, match=message.replace("*", r"\*").replace(".", r"\.")):
        NodeSpec.parse(value)


def test_node_spec_constructor_validates_like_parse() -> None:
    with pytest.raises(CertificateError, match="not a valid IP address"):
        NodeSpec("n1", ("n1.example.org",))


# -- layout ---------------------------------------------------------------------------------


def test_layout_places_files_as_documented(tmp_path: Path) -> None:
    layout = CertLayout.at(tmp_path)
    assert layout.client_ca_cert == tmp_path / "client-ca.pem"
    assert layout.client_ca_key == tmp_path / "client-ca-key.pem"
    assert layout.route_ca_cert == tmp_path / "route-ca.pem"
    assert layout.route_ca_key == tmp_path / "route-ca-key.pem"
    assert layout.route_cert("n1") == tmp_path / "nodes/n1/route.pem"
    assert layout.route_key("n1") == tmp_path / "nodes/n1/route-key.pem"
    assert layout.server_cert("n1") == tmp_path / "nodes/n1/server.pem"
    assert layout.server_key("n1") == tmp_path / "nodes/n1/server-key.pem"


def test_layout_refuses_node_names_that_would_escape_the_directory(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="is invalid"):
        CertLayout.at(tmp_path).route_key("../../etc")


# -- init_certs: what is issued -------------------------------------------------------------


def test_init_writes_every_file_of_the_layout(layout: CertLayout) -> None:
    files = layout.files(n.name for n in NODES)
    assert len(files) == 4 + 4 * len(NODES)
    assert all(p.is_file() for p in files)
    assert {p for p in layout.root.rglob("*") if p.is_file()} == set(files)


def test_route_cert_sans_are_node_ips_name_and_loopback(layout: CertLayout) -> None:
    ips, dns = _sans(_cert(layout.route_cert("n2")))
    assert ips == {"10.0.0.6", "127.0.0.1"}
    assert dns == {"n2", "localhost"}


def test_server_cert_sans_are_node_ips_name_extra_dns_and_loopback(layout: CertLayout) -> None:
    ips, dns = _sans(_cert(layout.server_cert("n1")))
    assert ips == {"10.0.0.5", "203.0.113.7", "127.0.0.1"}
    assert dns == {"n1", "n1.example.org", "localhost"}


def test_ipv6_node_addresses_are_ip_sans(layout: CertLayout) -> None:
    ips, _ = _sans(_cert(layout.server_cert("n3")))
    assert "2001:db8::7" in ips


def test_loopback_given_explicitly_is_not_duplicated(tmp_path: Path) -> None:
    layout = init_certs(tmp_path, [NodeSpec("n1", ("127.0.0.1",), ("localhost",))])
    san = _cert(layout.route_cert("n1")).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert len(list(san.value)) == 3  # 127.0.0.1, n1, localhost


def test_route_cert_is_for_server_and_client_auth(layout: CertLayout) -> None:
    assert _ekus(_cert(layout.route_cert("n1"))) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }


def test_server_cert_is_for_server_auth_only(layout: CertLayout) -> None:
    assert _ekus(_cert(layout.server_cert("n1"))) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_route_certs_chain_to_route_ca_and_not_to_client_ca(layout: CertLayout) -> None:
    route_ca, client_ca = _cert(layout.route_ca_cert), _cert(layout.client_ca_cert)
    for node in NODES:
        route = _cert(layout.route_cert(node.name))
        assert _issued_by(route, route_ca)
        assert not _issued_by(route, client_ca)


def test_server_certs_chain_to_client_ca_and_not_to_route_ca(layout: CertLayout) -> None:
    route_ca, client_ca = _cert(layout.route_ca_cert), _cert(layout.client_ca_cert)
    for node in NODES:
        server = _cert(layout.server_cert(node.name))
        assert _issued_by(server, client_ca)
        assert not _issued_by(server, route_ca)


def test_route_and_client_cas_are_distinct_keys(layout: CertLayout) -> None:
    assert _public_der(_cert(layout.route_ca_cert).public_key()) != _public_der(
        _cert(layout.client_ca_cert).public_key()
    )


def test_each_key_file_matches_its_certificate(layout: CertLayout) -> None:
    pairs = [
        (layout.client_ca_cert, layout.client_ca_key),
        (layout.route_ca_cert, layout.route_ca_key),
        *((layout.route_cert(n.name), layout.route_key(n.name)) for n in NODES),
        *((layout.server_cert(n.name), layout.server_key(n.name)) for n in NODES),
    ]
    for cert_file, key_file in pairs:
        key = _key(key_file)
        assert isinstance(key.curve, ec.SECP256R1)
        assert _public_der(key.public_key()) == _public_der(_cert(cert_file).public_key())


def test_cas_are_p256_sha256_leaf_signing_only(layout: CertLayout) -> None:
    for path in (layout.client_ca_cert, layout.route_ca_cert):
        ca = _cert(path)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca
        assert constraints.value.path_length == 0
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign
        assert usage.crl_sign
        assert ca.signature_hash_algorithm is not None
        assert ca.signature_hash_algorithm.name == "sha256"
        lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
        assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3651)


def test_leaves_are_not_cas_and_sign_only_digitally(layout: CertLayout) -> None:
    for path in (layout.route_cert("n1"), layout.server_cert("n1")):
        leaf = _cert(path)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature
        assert not usage.key_cert_sign
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=826)


def test_leaf_authority_key_id_names_the_issuing_ca(layout: CertLayout) -> None:
    for leaf_path, ca_path in (
        (layout.route_cert("n1"), layout.route_ca_cert),
        (layout.server_cert("n1"), layout.client_ca_cert),
    ):
        leaf, ca = _cert(leaf_path), _cert(ca_path)
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        leaf_ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert leaf_ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())


def test_validity_periods_are_configurable(tmp_path: Path) -> None:
    layout = init_certs(tmp_path, NODES[:1], ca_days=100, leaf_days=10)
    ca, leaf = _cert(layout.route_ca_cert), _cert(layout.route_cert("n1"))
    assert ca.not_valid_after_utc - ca.not_valid_before_utc < dt.timedelta(days=101)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=11)


def test_leaf_never_outlives_its_ca() -> None:
    ca = CertificateAuthority.create("short CA", days=30)
    cert, _ = ca.issue("n1", ips=["10.0.0.5"], dns_names=["n1"], days=825)
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_issue_without_any_extended_key_usage_is_refused() -> None:
    ca = CertificateAuthority.create("CA")
    with pytest.raises(CertificateError, match="serverAuth, clientAuth or both"):
        ca.issue("n1", ips=["10.0.0.5"], dns_names=[], server=False, client=False)


def test_self_signed_leaf_is_trusted_by_no_ca(layout: CertLayout) -> None:
    cert, key = self_signed_leaf("rogue", ips=["127.0.0.1"], dns_names=["localhost"])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _public_der(cert.public_key()) == _public_der(key.public_key())
    for ca_path in (layout.client_ca_cert, layout.route_ca_cert):
        assert not _issued_by(cert, _cert(ca_path))


def test_ca_repr_shows_no_key_material() -> None:
    assert "PRIVATE" not in repr(CertificateAuthority.create("CA"))


# -- init_certs: file safety ----------------------------------------------------------------


def test_private_keys_are_0600_and_certs_0644(layout: CertLayout) -> None:
    for path in layout.files(n.name for n in NODES):
        expected = 0o600 if path.name.endswith("-key.pem") else 0o644
        assert _mode(path) == expected, path


def test_created_directories_are_0700(tmp_path: Path) -> None:
    layout = init_certs(tmp_path / "a" / "certs", NODES[:1])
    for directory in (tmp_path / "a", layout.root, layout.root / "nodes", layout.node_dir("n1")):
        assert _mode(directory) == 0o700, directory


def test_existing_parent_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    init_certs(tmp_path, NODES[:1])
    assert _mode(tmp_path) == 0o755


def test_keys_are_private_from_creation_not_chmodded_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod after creation leaves a window where the key is readable")

    monkeypatch.setattr(os, "chmod", forbidden)
    monkeypatch.setattr(os, "fchmod", forbidden)
    monkeypatch.setattr(Path, "chmod", forbidden)
    os.umask(0)  # even with a permissive umask the key is never group/world readable
    layout = init_certs(tmp_path / "certs", NODES[:1])
    assert _mode(layout.route_key("n1")) == 0o600
    assert _mode(layout.client_ca_key) == 0o600


def test_refusal_without_force_leaves_every_file_byte_identical(layout: CertLayout) -> None:
    before = _snapshot(layout.root)
    with pytest.raises(CertificateError, match="pass --force to replace them") as excinfo:
        init_certs(layout.root, NODES)
    assert str(layout.client_ca_key) in str(excinfo.value)
    assert str(layout.server_cert("n3")) in str(excinfo.value)
    assert _snapshot(layout.root) == before


def test_refusal_when_one_file_exists_writes_nothing_else(tmp_path: Path) -> None:
    layout = CertLayout.at(tmp_path / "certs")
    stray = layout.server_cert("n2")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"keep me")
    with pytest.raises(CertificateError) as excinfo:
        init_certs(layout.root, NODES)
    assert str(stray) in str(excinfo.value)
    assert str(layout.client_ca_cert) not in str(excinfo.value)
    assert [p for p in layout.root.rglob("*") if p.is_file()] == [stray]
    assert stray.read_bytes() == b"keep me"


def test_force_replaces_every_file_with_new_material(layout: CertLayout) -> None:
    before = _snapshot(layout.root)
    old_client_ca = _cert(layout.client_ca_cert)
    init_certs(layout.root, NODES, force=True)
    after = _snapshot(layout.root)
    assert after.keys() == before.keys()
    assert all(after[p][0] != before[p][0] for p in before)
    assert _public_der(_cert(layout.client_ca_cert).public_key()) != _public_der(
        old_client_ca.public_key()
    )
    assert _mode(layout.server_key("n1")) == 0o600
    assert _issued_by(_cert(layout.server_cert("n1")), _cert(layout.client_ca_cert))
    assert not [p for p in layout.root.rglob("*.tmp")]


def test_duplicate_node_names_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="node name n1 is given twice"):
        init_certs(tmp_path / "certs", [NodeSpec.parse("n1=10.0.0.5")] * 2)
    assert not (tmp_path / "certs").exists()


def test_no_nodes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no nodes given"):
        init_certs(tmp_path, [])


def test_write_pem_pair_refuses_existing_without_overwrite(tmp_path: Path) -> None:
    cert, key = self_signed_leaf("x", ips=["127.0.0.1"], dns_names=[])
    cert_file, key_file = tmp_path / "x.pem", tmp_path / "x-key.pem"
    cert_file.write_bytes(b"old")
    with pytest.raises(CertificateError, match="pass --force"):
        write_pem_pair(cert, key, cert_file, key_file)
    assert not key_file.exists()
    assert cert_file.read_bytes() == b"old"
    write_pem_pair(cert, key, cert_file, key_file, overwrite=True)
    assert _cert(cert_file) == cert
    assert _mode(key_file) == 0o600


# -- importing a client CA ------------------------------------------------------------------


@pytest.fixture
def existing_ca(tmp_path: Path) -> tuple[Path, Path, CertificateAuthority]:
    ca = CertificateAuthority.create("existing client CA")
    cert_file, key_file = tmp_path / "old" / "ca.pem", tmp_path / "old" / "ca-key.pem"
    write_pem_pair(ca.cert, ca.key, cert_file, key_file)
    return cert_file, key_file, ca


def test_import_keeps_the_client_ca_and_server_certs_chain_to_it(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    cert_file, key_file, ca = existing_ca
    layout = init_certs(tmp_path / "certs", NODES, client_ca_cert=cert_file, client_ca_key=key_file)
    copied = _cert(layout.client_ca_cert)
    assert copied == ca.cert
    assert _public_der(copied.public_key()) == _public_der(ca.key.public_key())
    assert _public_der(_key(layout.client_ca_key).public_key()) == _public_der(ca.key.public_key())
    assert _mode(layout.client_ca_key) == 0o600
    for node in NODES:
        assert _issued_by(_cert(layout.server_cert(node.name)), ca.cert)
        assert not _issued_by(_cert(layout.route_cert(node.name)), ca.cert)


def test_import_accepts_der_files(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    _, _, ca = existing_ca
    cert_der, key_der = tmp_path / "ca.der", tmp_path / "ca-key.der"
    cert_der.write_bytes(ca.cert.public_bytes(serialization.Encoding.DER))
    key_der.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    layout = init_certs(
        tmp_path / "certs", NODES[:1], client_ca_cert=cert_der, client_ca_key=key_der
    )
    assert _cert(layout.client_ca_cert) == ca.cert


def test_import_of_a_non_ca_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed_leaf("leaf", ips=["10.0.0.5"], dns_names=[])
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf-key.pem"
    write_pem_pair(cert, key, cert_file, key_file)
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        init_certs(tmp_path / "certs", NODES, client_ca_cert=cert_file, client_ca_key=key_file)
    assert not (tmp_path / "certs").exists()


def test_import_with_a_mismatched_key_is_refused(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    cert_file, _, _ = existing_ca
    other = CertificateAuthority.create("other")
    other_cert, other_key = tmp_path / "o.pem", tmp_path / "o-key.pem"
    write_pem_pair(other.cert, other.key, other_cert, other_key)
    with pytest.raises(CertificateError, match="is not the private key of"):
        init_certs(tmp_path / "certs", NODES, client_ca_cert=cert_file, client_ca_key=other_key)
    assert not (tmp_path / "certs").exists()


def test_import_needs_both_certificate_and_key(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    cert_file, _, _ = existing_ca
    with pytest.raises(CertificateError, match="needs both"):
        init_certs(tmp_path / "certs", NODES, client_ca_cert=cert_file)


def test_import_of_unreadable_or_garbage_files_is_refused(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    cert_file, key_file, _ = existing_ca
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="cannot read certificate"):
        CertificateAuthority.load(tmp_path / "missing.pem", key_file)
    with pytest.raises(CertificateError, match=r"not a PEM or DER X\.509 certificate"):
        CertificateAuthority.load(garbage, key_file)
    with pytest.raises(CertificateError, match="not a readable PEM or DER private key"):
        CertificateAuthority.load(cert_file, garbage)


def test_import_of_an_encrypted_key_says_to_decrypt_it(
    tmp_path: Path, existing_ca: tuple[Path, Path, CertificateAuthority]
) -> None:
    cert_file, _, ca = existing_ca
    encrypted = tmp_path / "enc-key.pem"
    encrypted.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CertificateError, match="encrypted private key; decrypt it first"):
        CertificateAuthority.load(cert_file, encrypted)


def test_import_of_an_expired_ca_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("expired", days=0)
    cert_file, key_file = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    write_pem_pair(ca.cert, ca.key, cert_file, key_file)
    with pytest.raises(CertificateError, match="expired on"):
        CertificateAuthority.load(cert_file, key_file)


def test_reinit_with_force_can_keep_the_layouts_own_client_ca(layout: CertLayout) -> None:
    ca_bytes = layout.client_ca_cert.read_bytes()
    init_certs(
        layout.root,
        NODES,
        client_ca_cert=layout.client_ca_cert,
        client_ca_key=layout.client_ca_key,
        force=True,
    )
    assert layout.client_ca_cert.read_bytes() == ca_bytes
    assert _issued_by(_cert(layout.server_cert("n1")), _cert(layout.client_ca_cert))


# -- issue_leaves: new leaves from the same CAs ----------------------------------------------


def test_issue_leaves_keeps_fitting_leaves_and_both_cas_byte_identical(layout: CertLayout) -> None:
    before = {p: p.read_bytes() for p in layout.files(n.name for n in NODES)}

    assert issue_leaves(layout.root, NODES) == []

    assert {p: p.read_bytes() for p in before} == before


def test_a_node_with_a_new_address_gets_new_leaves_from_the_same_cas(layout: CertLayout) -> None:
    cas = [layout.client_ca_cert, layout.route_ca_cert, layout.client_ca_key, layout.route_ca_key]
    kept = {p: p.read_bytes() for p in cas}
    others = {p: p.read_bytes() for n in ("n1", "n2") for p in layout.files([n])[4:]}
    moved = NodeSpec.parse("n3=10.9.0.7,2001:db8::7")

    issued = issue_leaves(layout.root, [*NODES[:2], moved])

    assert issued == ["n3 route", "n3 server"]
    assert {p: p.read_bytes() for p in cas} == kept
    assert {p: p.read_bytes() for p in others} == others
    server = _cert(layout.server_cert("n3"))
    server.verify_directly_issued_by(_cert(layout.client_ca_cert))
    _cert(layout.route_cert("n3")).verify_directly_issued_by(_cert(layout.route_ca_cert))
    assert _sans(server)[0] == {"10.9.0.7", "2001:db8::7", "127.0.0.1"}


def test_a_missing_a_foreign_or_a_mismatched_leaf_is_issued_again(
    layout: CertLayout, tmp_path: Path
) -> None:
    layout.route_key("n1").unlink()
    other = init_certs(tmp_path / "other", NODES)
    layout.server_cert("n2").write_bytes(other.server_cert("n2").read_bytes())  # another CA
    layout.server_key("n2").write_bytes(other.server_key("n2").read_bytes())

    issued = issue_leaves(layout.root, NODES)

    assert issued == ["n1 route", "n2 server"]
    _cert(layout.server_cert("n2")).verify_directly_issued_by(_cert(layout.client_ca_cert))
    key = _key(layout.route_key("n1")).public_key()
    assert _public_der(key) == _public_der(_cert(layout.route_cert("n1")).public_key())


def test_renew_issues_the_named_nodes_leaves_anew_and_keeps_the_cas(layout: CertLayout) -> None:
    ca = layout.route_ca_cert.read_bytes()
    old = {n: layout.route_key(n).read_bytes() for n in ("n1", "n2")}

    issued = issue_leaves(layout.root, NODES, renew={"n1"})

    assert issued == ["n1 route", "n1 server"]
    assert layout.route_ca_cert.read_bytes() == ca
    assert layout.route_key("n1").read_bytes() != old["n1"], "the same key again"
    assert layout.route_key("n2").read_bytes() == old["n2"]
