"""A metrics listener serves over HTTPS, verified with a CA, and one stuck client does not
stop it answering others (``unibus.core.metricsserver``)."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry, Gauge

from unibus.core.metricsserver import CONNECTION_TIMEOUT, MetricsTLS, serve_metrics
from unibus.stack.certs import CertificateAuthority, write_pem_pair


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[MetricsTLS, Path]:
    root = tmp_path_factory.mktemp("metrics-tls")
    ca = CertificateAuthority.create("metrics test CA")
    cert, key = ca.issue("metrics", ips=["127.0.0.1"], dns_names=["localhost"])
    write_pem_pair(cert, key, root / "cert.pem", root / "key.pem")
    (root / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    return MetricsTLS(cert=root / "cert.pem", key=root / "key.pem"), root / "ca.pem"


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("unibus_test_answer", "A value to find.", registry=registry).set(42)
    return registry


def _get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> str:
    # Only this test's own listener, on loopback.
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
        return str(response.read().decode())


def test_a_tls_listener_serves_the_registry_to_a_client_that_pins_its_ca(
    material: tuple[MetricsTLS, Path],
) -> None:
    tls, ca_file = material
    port = serve_metrics(_registry(), "127.0.0.1", 0, tls)

    text = _get(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context(cafile=ca_file))

    assert "unibus_test_answer 42.0" in text


def test_a_tls_listener_is_refused_by_a_client_that_does_not_trust_its_ca(
    material: tuple[MetricsTLS, Path],
) -> None:
    tls, _ = material
    port = serve_metrics(_registry(), "127.0.0.1", 0, tls)

    with pytest.raises(urllib.error.URLError) as caught:
        _get(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context())
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_a_tls_listener_does_not_answer_plain_http(material: tuple[MetricsTLS, Path]) -> None:
    tls, _ = material
    port = serve_metrics(_registry(), "127.0.0.1", 0, tls)

    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"http://127.0.0.1:{port}/metrics")


def test_a_client_that_connects_and_says_nothing_does_not_hold_up_the_next_scrape(
    material: tuple[MetricsTLS, Path],
) -> None:
    """prometheus_client's own server handshakes in its accepting thread without a
    timeout: one silent connection left every later scrape unanswered."""
    tls, ca_file = material
    port = serve_metrics(_registry(), "127.0.0.1", 0, tls)
    context = ssl.create_default_context(cafile=ca_file)

    with socket.create_connection(("127.0.0.1", port)):
        began = time.monotonic()
        text = _get(f"https://127.0.0.1:{port}/metrics", context, timeout=3.0)

    assert "unibus_test_answer 42.0" in text
    assert time.monotonic() - began < CONNECTION_TIMEOUT


def test_a_loopback_listener_without_tls_serves_plain_http() -> None:
    port = serve_metrics(_registry(), "127.0.0.1", 0, None)

    assert "unibus_test_answer 42.0" in _get(f"http://127.0.0.1:{port}/metrics")
