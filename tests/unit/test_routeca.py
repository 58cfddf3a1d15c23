"""The steps of a route CA rotation on a stack's certificates (``unibus.stack.routeca``):
what the nodes trust and what they present at each."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from unibus.core.errors import ConfigError
from unibus.stack.certs import CertificateAuthority, CertLayout, NodeSpec, init_certs
from unibus.stack.rotation import Phase
from unibus.stack.routeca import phase, retire, stage, switch

NODES = (NodeSpec.parse("n1=10.0.0.1"), NodeSpec.parse("n2=10.0.0.2"))


def _bundle(layout: CertLayout) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(layout.route_ca_cert.read_bytes())


def _route(layout: CertLayout, node: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(layout.route_cert(node).read_bytes())


@pytest.fixture
def layout(tmp_path: Path) -> CertLayout:
    return init_certs(tmp_path / "certs", NODES)


def test_stage_switch_retire_trust_both_then_issue_from_the_new_then_trust_it_alone(
    layout: CertLayout,
) -> None:
    (old,) = _bundle(layout)
    client_ca = layout.client_ca_cert.read_bytes()

    assert stage(layout).phase is Phase.STAGED
    first, new = _bundle(layout)
    assert first == old  # the issuing CA first: leaves are still issued by it
    _route(layout, "n1").verify_directly_issued_by(old)

    assert switch(layout).phase is Phase.SWITCHED
    assert _bundle(layout) == [new, old]
    for node in ("n1", "n2"):
        _route(layout, node).verify_directly_issued_by(new)
    issuing = CertificateAuthority.load(layout.route_ca_cert, layout.route_ca_key)
    assert issuing.cert == new
    assert layout.client_ca_cert.read_bytes() == client_ca

    assert retire(layout).phase is Phase.STEADY
    assert _bundle(layout) == [new]
    assert phase(layout) is Phase.STEADY


def test_a_step_out_of_order_is_refused_saying_what_to_run(layout: CertLayout) -> None:
    with pytest.raises(ConfigError, match="route-ca stage"):
        switch(layout)
    with pytest.raises(ConfigError, match="route-ca stage"):
        retire(layout)
    stage(layout)
    with pytest.raises(ConfigError, match="route-ca switch"):
        stage(layout)
