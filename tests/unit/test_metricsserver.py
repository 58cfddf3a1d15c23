"""Where a metrics listener may serve plain HTTP: loopback only; TLS anywhere else.

The rule is checked when the settings are read, so a service configured to expose its
metrics on the network without TLS stops at start, naming the variable to fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unibus.core.errors import ConfigError, PostureError
from unibus.core.metricsserver import MetricsListener, MetricsTLS, read_metrics_listener
from unibus.core.settings import EnvReader
from unibus.stack.certs import CertificateAuthority, write_pem_pair

ADDR, CERT, KEY = "X_METRICS_ADDR", "X_METRICS_TLS_CERT", "X_METRICS_TLS_KEY"


def _read(env: dict[str, str]) -> MetricsListener:
    return read_metrics_listener(
        EnvReader(env), addr=ADDR, cert=CERT, key=KEY, default="127.0.0.1:9471"
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> MetricsTLS:
    root = tmp_path_factory.mktemp("metrics-tls")
    cert, key = CertificateAuthority.create("ca").issue("m", ips=["10.0.0.5"], dns_names=[])
    write_pem_pair(cert, key, root / "cert.pem", root / "key.pem")
    return MetricsTLS(cert=root / "cert.pem", key=root / "key.pem")


def test_the_default_is_plain_http_on_loopback() -> None:
    assert _read({}) == MetricsListener(host="127.0.0.1", port=9471, tls=None)


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "127.0.0.2:9471", "localhost:9471", "[::1]:9471"])
def test_a_loopback_listener_may_be_plain(addr: str) -> None:
    assert _read({ADDR: addr}).tls is None


@pytest.mark.parametrize(
    "addr", ["0.0.0.0:9471", "[::]:9471", "10.0.0.5:9471", "metrics.internal:9471"]
)
def test_a_listener_off_loopback_without_tls_is_refused_naming_what_to_set(addr: str) -> None:
    with pytest.raises(PostureError) as caught:
        _read({ADDR: addr})

    assert caught.value.setting == ADDR
    assert CERT in str(caught.value)
    assert KEY in str(caught.value)


@pytest.mark.parametrize("addr", ["0.0.0.0:9471", "10.0.0.5:9471", "127.0.0.1:9471"])
def test_a_listener_with_a_certificate_and_its_key_is_accepted_anywhere(
    pair: MetricsTLS, addr: str
) -> None:
    listener = _read({ADDR: addr, CERT: str(pair.cert), KEY: str(pair.key)})

    assert listener.tls == pair


@pytest.mark.parametrize(("given", "missing"), [(CERT, KEY), (KEY, CERT)])
def test_half_a_pair_is_refused_naming_the_missing_half(
    pair: MetricsTLS, given: str, missing: str
) -> None:
    path = pair.cert if given == CERT else pair.key
    with pytest.raises(ConfigError) as caught:
        _read({ADDR: "10.0.0.5:9471", given: str(path)})

    assert caught.value.setting == missing


def test_a_certificate_file_that_does_not_exist_is_refused(pair: MetricsTLS) -> None:
    with pytest.raises(ConfigError) as caught:
        _read({CERT: "/nonexistent/cert.pem", KEY: str(pair.key)})

    assert caught.value.setting == CERT


def test_a_key_that_is_not_the_certificates_is_refused_at_start(
    pair: MetricsTLS, tmp_path: Path
) -> None:
    cert, key = CertificateAuthority.create("other").issue("m", ips=["10.0.0.5"], dns_names=[])
    write_pem_pair(cert, key, tmp_path / "cert.pem", tmp_path / "key.pem")

    with pytest.raises(ConfigError) as caught:
        _read({CERT: str(tmp_path / "cert.pem"), KEY: str(pair.key)})

    assert caught.value.setting == CERT
    assert not isinstance(caught.value, PostureError)


def test_a_certificate_file_that_is_not_pem_is_refused_at_start(
    pair: MetricsTLS, tmp_path: Path
) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")

    with pytest.raises(ConfigError) as caught:
        _read({CERT: str(tmp_path / "cert.pem"), KEY: str(pair.key)})

    assert caught.value.setting == CERT
