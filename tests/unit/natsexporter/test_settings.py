"""The exporter's settings fail fast, naming the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from unibus.core import envnames
from unibus.core.errors import ConfigError, PostureError
from unibus.core.metricsserver import MetricsTLS
from unibus.natsexporter.settings import MonitoredServer, Settings
from unibus.stack.certs import CertificateAuthority, write_pem_pair

LOCAL = {envnames.NATSEXPORTER_SERVERS: "n1=http://127.0.0.1:8222"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MetricsTLS]:
    """A CA file and a certificate and key it issued."""
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("ca")
    (root / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    cert, key = ca.issue("n1", ips=["10.0.0.5"], dns_names=["n1"])
    write_pem_pair(cert, key, root / "cert.pem", root / "key.pem")
    return root / "ca.pem", MetricsTLS(cert=root / "cert.pem", key=root / "key.pem")


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env(LOCAL)

    assert settings.servers == (MonitoredServer("n1", "http://127.0.0.1:8222"),)
    assert (settings.host, settings.port, settings.tls) == ("127.0.0.1", 7777, None)
    assert settings.timeout == 3.0
    assert settings.ca_file is None


def test_servers_are_read_in_order_with_their_base_paths(pki: tuple[Path, MetricsTLS]) -> None:
    ca_file, _ = pki
    settings = Settings.from_env(
        {
            envnames.NATSEXPORTER_SERVERS: (
                " n1=https://n1:8222/ , n2=https://10.0.0.6:8222/nats, n-3.x=http://[::1]:8222"
            ),
            envnames.NATSEXPORTER_CA: str(ca_file),
        }
    )

    assert settings.servers == (
        MonitoredServer("n1", "https://n1:8222"),
        MonitoredServer("n2", "https://10.0.0.6:8222/nats"),
        MonitoredServer("n-3.x", "http://[::1]:8222"),
    )
    assert settings.ca_file == ca_file


def test_the_servers_are_required() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({})

    assert caught.value.setting == envnames.NATSEXPORTER_SERVERS
    assert "n1=https://n1:8222" in str(caught.value)


@pytest.mark.parametrize(
    "servers",
    [
        "n1",
        "=http://127.0.0.1:8222",
        "n 1=http://127.0.0.1:8222",
        "n1=127.0.0.1:8222",
        "n1=ftp://127.0.0.1:8222",
        "n1=http://:8222",
        "n1=http://127.0.0.1:port",
        "n1=http://127.0.0.1:99999",
        "n1=http://127.0.0.1:0",
        "n1=http://user:pw@127.0.0.1:8222",
        "n1=http://127.0.0.1:8222/varz?x=1",
        "n1=http://127.0.0.1:8222#top",
        "n1=http://127.0.0.1:8222,,n2=http://127.0.0.1:8223",
        "n1=http://127.0.0.1:8222,n1=http://127.0.0.1:8223",
    ],
)
def test_a_malformed_server_list_is_refused_naming_the_variable(servers: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({envnames.NATSEXPORTER_SERVERS: servers})

    assert caught.value.setting == envnames.NATSEXPORTER_SERVERS


@pytest.mark.parametrize("url", ["http://n1:8222", "http://10.0.0.5:8222", "http://0.0.0.0:8222"])
def test_plain_http_monitoring_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(PostureError) as caught:
        Settings.from_env({envnames.NATSEXPORTER_SERVERS: f"n1={url}"})

    assert caught.value.setting == envnames.NATSEXPORTER_SERVERS
    assert "https://" in str(caught.value)


def test_https_monitoring_needs_the_ca() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({envnames.NATSEXPORTER_SERVERS: "n1=https://n1:8222"})

    assert caught.value.setting == envnames.NATSEXPORTER_CA


@pytest.mark.parametrize("content", ["", "not a certificate\n"])
def test_a_ca_file_that_does_not_load_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "ca.pem").write_text(content)

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                envnames.NATSEXPORTER_SERVERS: "n1=https://n1:8222",
                envnames.NATSEXPORTER_CA: str(tmp_path / "ca.pem"),
            }
        )

    assert caught.value.setting == envnames.NATSEXPORTER_CA


def test_the_listener_off_loopback_needs_tls(pki: tuple[Path, MetricsTLS]) -> None:
    _, tls = pki
    with pytest.raises(PostureError) as caught:
        Settings.from_env({**LOCAL, envnames.NATSEXPORTER_ADDR: "0.0.0.0:7777"})
    assert caught.value.setting == envnames.NATSEXPORTER_ADDR

    settings = Settings.from_env(
        {
            **LOCAL,
            envnames.NATSEXPORTER_ADDR: "0.0.0.0:7777",
            envnames.NATSEXPORTER_TLS_CERT: str(tls.cert),
            envnames.NATSEXPORTER_TLS_KEY: str(tls.key),
        }
    )
    assert (settings.host, settings.port, settings.tls) == ("0.0.0.0", 7777, tls)  # noqa: S104


@pytest.mark.parametrize("timeout", ["0", "0.05", "31", "soon"])
def test_a_timeout_out_of_range_is_refused(timeout: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**LOCAL, envnames.NATSEXPORTER_TIMEOUT: timeout})

    assert caught.value.setting == envnames.NATSEXPORTER_TIMEOUT


def test_a_timeout_in_range_is_taken() -> None:
    assert Settings.from_env({**LOCAL, envnames.NATSEXPORTER_TIMEOUT: "1.5"}).timeout == 1.5
