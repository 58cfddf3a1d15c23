"""The API is served in clear only on a single loopback node; anything else needs TLS.

A signed request carries no secret, but the answers do (the allowlist, rooms, sealed
keys, blobs) and a client pins the API's CA only over TLS: the settings refuse at start,
naming what to set, to serve plain HTTP on an address others can reach or on a node of
a cluster (whose API is reached from the other nodes' clients).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import unibus.controlplane.__main__ as controlplane_main
from tests.unit.controlplane.harness import identity_files, settings_from_env
from unibus.controlplane.settings import Settings
from unibus.core import envnames
from unibus.core.errors import ConfigError, PostureError


def _tls_files(tmp_path: Path) -> dict[str, str]:
    """Certificate and key settings pointing to files that exist (nothing reads them here)."""
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    cert.write_text("unused\n")
    key.write_text("unused\n")
    return {envnames.API_TLS_CERT: str(cert), envnames.API_TLS_KEY: str(key)}


def _assert_refused_for_plain_http(refused: pytest.ExceptionInfo[ConfigError]) -> None:
    assert isinstance(refused.value, PostureError)
    assert refused.value.setting == envnames.API_TLS_CERT
    message = str(refused.value)
    assert "plain HTTP" in message
    assert envnames.API_TLS_CERT in message
    assert envnames.API_TLS_KEY in message


@pytest.mark.parametrize(
    "addr",
    [
        "0.0.0.0:8470",
        "[::]:8470",
        "10.0.0.5:8470",
        "192.168.1.20:8470",
        "[2001:db8::1]:8470",
        "api.example.com:8470",
        "localhost.example.com:8470",
        "127.1:8470",  # not an address Python reads as loopback: refused, not guessed
    ],
)
def test_plain_http_on_an_address_off_loopback_is_refused_naming_the_tls_settings(
    tmp_path: Path, addr: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_env(tmp_path, {envnames.API_ADDR: addr})

    _assert_refused_for_plain_http(refused)


@pytest.mark.parametrize("addr", ["127.0.0.1:8470", "[::1]:8470", "localhost:8470"])
def test_plain_http_on_a_loopback_node_of_a_cluster_is_refused(tmp_path: Path, addr: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_env(tmp_path, {envnames.API_ADDR: addr, envnames.CLUSTER_SIZE: "3"})

    _assert_refused_for_plain_http(refused)


def test_a_cluster_is_recognised_from_its_nats_urls_when_its_size_is_not_given(
    tmp_path: Path,
) -> None:
    urls = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"

    with pytest.raises(ConfigError) as refused:
        settings_from_env(tmp_path, {envnames.NATS_URLS: urls})

    _assert_refused_for_plain_http(refused)


@pytest.mark.parametrize(
    ("addr", "host"),
    [
        ("127.0.0.1:8470", "127.0.0.1"),
        ("127.0.0.2:8470", "127.0.0.2"),
        ("[::1]:8470", "::1"),
        ("localhost:8470", "localhost"),
        ("LOCALHOST:8470", "LOCALHOST"),
    ],
)
def test_plain_http_is_allowed_on_a_single_loopback_node(
    tmp_path: Path, addr: str, host: str
) -> None:
    settings = settings_from_env(tmp_path, {envnames.API_ADDR: addr})

    assert settings.host == host
    assert settings.cluster_size == 1
    assert not settings.tls


def test_the_default_address_is_loopback_and_so_serves_a_single_node_in_clear(
    tmp_path: Path,
) -> None:
    settings = settings_from_env(tmp_path)

    assert settings.host == "127.0.0.1"
    assert not settings.tls


@pytest.mark.parametrize("addr", ["0.0.0.0:8470", "[::]:8470", "10.0.0.5:8470"])
def test_tls_lets_the_api_listen_off_loopback_in_a_cluster(tmp_path: Path, addr: str) -> None:
    env = {envnames.API_ADDR: addr, envnames.CLUSTER_SIZE: "3", **_tls_files(tmp_path)}

    settings = settings_from_env(tmp_path, env)

    assert settings.tls
    assert settings.cluster_size == 3


@pytest.mark.parametrize("given", [envnames.API_TLS_CERT, envnames.API_TLS_KEY])
def test_half_a_tls_configuration_is_refused_even_on_loopback(tmp_path: Path, given: str) -> None:
    env = {given: _tls_files(tmp_path)[given]}

    with pytest.raises(ConfigError) as refused:
        settings_from_env(tmp_path, env)

    assert refused.value.setting == envnames.API_TLS_CERT
    assert "set both UNIBUS_API_TLS_CERT and UNIBUS_API_TLS_KEY, or neither" in str(refused.value)


def test_the_controlplane_refuses_to_start_in_clear_off_loopback_and_serves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The service's own entry point: settings are read from the environment before any
    # socket is opened; a refusal exits 2 with one line naming the setting.
    env = {
        **identity_files(tmp_path, envnames.INTERNAL_SEED_FILE, envnames.SYSTEM_SEED_FILE),
        envnames.NATS_URLS: "nats://127.0.0.1:4222",
        envnames.API_ADDR: "0.0.0.0:8470",
    }
    for name in [n for n in os.environ if n.startswith(envnames.PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    served: list[Settings] = []

    async def serve(settings: Settings, stop: asyncio.Event) -> None:
        served.append(settings)

    monkeypatch.setattr(controlplane_main, "serve", serve)

    status = controlplane_main.main()

    assert status == 2
    assert served == []
    err = capsys.readouterr().err
    assert err.startswith("unibus-controlplane: configuration error: plain HTTP")
    assert envnames.API_TLS_CERT in err
