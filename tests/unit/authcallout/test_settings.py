"""The callout's settings fail fast, naming the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from unibus.authcallout.settings import Settings
from unibus.core.errors import ConfigError
from unibus.core.metricsserver import MetricsTLS
from unibus.stack.certs import CertificateAuthority, write_pem_pair


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("CALLOUT", "ISSUER", "XKEY", "INTERNAL", "SYSTEM"):
        path = tmp_path / f"{name.lower()}.seed"
        path.write_text("x\n")
        files[f"UNIBUS_{name}_SEED_FILE"] = str(path)
    return {"UNIBUS_NATS_URLS": "tls://127.0.0.1:4222,tls://127.0.0.1:4223", **files}


def test_defaults_are_the_documented_ones(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)

    assert settings.nats_urls == ("tls://127.0.0.1:4222", "tls://127.0.0.1:4223")
    assert settings.jwt_ttl == 300  # minutes, not an hour: the backstop of a missed kick
    assert settings.max_rooms == 256
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9471)
    assert settings.metrics_tls is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UNIBUS_NATS_URLS", ""),
        ("UNIBUS_JWT_TTL", "0"),
        ("UNIBUS_JWT_TTL", "soon"),
        ("UNIBUS_MAX_ROOMS", "0"),
        ("UNIBUS_AUTHCALLOUT_METRICS_ADDR", "9471"),
        ("UNIBUS_AUTHCALLOUT_METRICS_ADDR", "127.0.0.1:http"),
        ("UNIBUS_VIEW_MAX_STALENESS", "0.1"),
        ("UNIBUS_LOG_JSON", "maybe"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    env: dict[str, str], name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, name: value})
    assert caught.value.setting == name


def test_a_missing_identity_file_is_refused_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "UNIBUS_ISSUER_SEED_FILE": "/nonexistent/issuer.seed"})
    assert caught.value.setting == "UNIBUS_ISSUER_SEED_FILE"


def test_metrics_off_loopback_without_tls_are_refused_naming_the_address(
    env: dict[str, str],
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "UNIBUS_AUTHCALLOUT_METRICS_ADDR": "0.0.0.0:9471"})

    assert caught.value.setting == "UNIBUS_AUTHCALLOUT_METRICS_ADDR"
    assert "UNIBUS_AUTHCALLOUT_METRICS_TLS_CERT" in str(caught.value)


def test_metrics_off_loopback_are_served_with_the_certificate_and_key_given(
    env: dict[str, str], tmp_path: Path
) -> None:
    cert, key = CertificateAuthority.create("ca").issue("m", ips=["10.0.0.5"], dns_names=[])
    write_pem_pair(cert, key, tmp_path / "metrics.pem", tmp_path / "metrics.key")

    settings = Settings.from_env(
        {
            **env,
            "UNIBUS_AUTHCALLOUT_METRICS_ADDR": "10.0.0.5:9471",
            "UNIBUS_AUTHCALLOUT_METRICS_TLS_CERT": str(tmp_path / "metrics.pem"),
            "UNIBUS_AUTHCALLOUT_METRICS_TLS_KEY": str(tmp_path / "metrics.key"),
        }
    )

    assert (settings.metrics_host, settings.metrics_port) == ("10.0.0.5", 9471)
    assert settings.metrics_tls == MetricsTLS(tmp_path / "metrics.pem", tmp_path / "metrics.key")
