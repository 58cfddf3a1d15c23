"""The control plane's settings fail fast, naming the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.controlplane.harness import settings_from_env
from unibus.core import envnames, limits
from unibus.core.errors import ConfigError
from unibus.core.metricsserver import MetricsTLS
from unibus.core.provisioning import Provisioning
from unibus.stack.certs import CertificateAuthority, write_pem_pair


def test_the_nonces_are_remembered_across_the_whole_window_of_the_largest_skew() -> None:
    # A request's first use and its replay may be twice the skew apart on clocks that differ by
    # the drift; the bucket is provisioned with the TTL the rule is checked against.
    assert 2 * limits.MAX_API_SKEW + limits.NONCE_CLOCK_DRIFT <= limits.NONCE_TTL
    assert Provisioning().nonce_ttl == limits.NONCE_TTL
    assert limits.MAX_API_SKEW == 290


def test_the_largest_skew_the_nonce_ttl_covers_is_accepted(tmp_path: Path) -> None:
    settings = settings_from_env(tmp_path, {envnames.API_SKEW: f"{limits.MAX_API_SKEW}"})

    assert settings.skew == limits.MAX_API_SKEW


def test_the_default_skew_is_sixty_seconds(tmp_path: Path) -> None:
    assert settings_from_env(tmp_path).skew == 60


@pytest.mark.parametrize("skew", ["290.5", "291", "600", "3600"])
def test_a_skew_the_nonce_ttl_cannot_cover_is_refused_naming_the_variable_and_the_maximum(
    tmp_path: Path, skew: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env(tmp_path, {envnames.API_SKEW: skew})

    assert caught.value.setting == envnames.API_SKEW
    message = str(caught.value)
    assert f"{envnames.API_SKEW}={float(skew):g} is above the maximum 290" in message
    assert f"set {envnames.API_SKEW} to at most 290" in message


@pytest.mark.parametrize("skew", ["0", "0.5", "soon", "nan"])
def test_a_skew_below_a_second_or_not_a_number_is_refused(tmp_path: Path, skew: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env(tmp_path, {envnames.API_SKEW: skew})

    assert caught.value.setting == envnames.API_SKEW


def test_metrics_default_to_plain_http_on_loopback(tmp_path: Path) -> None:
    settings = settings_from_env(tmp_path)

    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9470)
    assert settings.metrics_tls is None


def test_metrics_off_loopback_without_tls_are_refused_naming_the_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env(tmp_path, {envnames.API_METRICS_ADDR: "0.0.0.0:9470"})

    assert caught.value.setting == envnames.API_METRICS_ADDR
    assert envnames.API_METRICS_TLS_CERT in str(caught.value)


def test_metrics_off_loopback_are_served_with_the_certificate_and_key_given(
    tmp_path: Path,
) -> None:
    cert, key = CertificateAuthority.create("ca").issue("m", ips=["10.0.0.5"], dns_names=[])
    write_pem_pair(cert, key, tmp_path / "metrics.pem", tmp_path / "metrics.key")

    settings = settings_from_env(
        tmp_path,
        {
            envnames.API_METRICS_ADDR: "10.0.0.5:9470",
            envnames.API_METRICS_TLS_CERT: str(tmp_path / "metrics.pem"),
            envnames.API_METRICS_TLS_KEY: str(tmp_path / "metrics.key"),
        },
    )

    assert (settings.metrics_host, settings.metrics_port) == ("10.0.0.5", 9470)
    assert settings.metrics_tls == MetricsTLS(tmp_path / "metrics.pem", tmp_path / "metrics.key")
