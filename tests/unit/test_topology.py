"""One topology model: what the tooling writes is what the services read."""

from __future__ import annotations

from pathlib import Path

import pytest

from unibus.authcallout.settings import Settings as CalloutSettings
from unibus.controlplane.settings import Settings as ApiSettings
from unibus.core import envnames
from unibus.core.errors import ConfigError
from unibus.stack import compose, topology
from unibus.stack.certs import CertLayout

NAMES = {getattr(envnames, name) for name in envnames.__all__ if name != "PREFIX"}


def _placement(root: Path) -> topology.ServicePlacement:
    certs = CertLayout.at(root / "certs")
    identities = root / "identities"
    for path in (
        certs.client_ca_cert,
        certs.server_cert("n2"),
        certs.server_key("n2"),
        *(identities / f"{n}.seed" for n in ("internal", "system", "callout", "issuer", "xkey")),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return topology.ServicePlacement(
        node="n2",
        nats_urls=["tls://n2:4222", "tls://n1:4222", "tls://n3:4222"],
        certs=certs,
        identities=identities,
        cluster_size=3,
        api_addr="10.0.0.2:8470",
        api_metrics_addr="127.0.0.1:9470",
        callout_metrics_addr="127.0.0.1:9471",
    )


def test_the_callout_reads_back_every_setting_its_placement_writes(tmp_path: Path) -> None:
    placement = _placement(tmp_path)
    env = topology.service_env("authcallout", placement)
    assert set(env) <= NAMES
    settings = CalloutSettings.from_env(env)
    assert list(settings.nats_urls) == list(placement.nats_urls)
    assert settings.callout_seed == placement.identities / "callout.seed"
    assert settings.xkey_seed == placement.identities / "xkey.seed"
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9471)


def test_the_api_reads_back_every_setting_its_placement_writes(tmp_path: Path) -> None:
    placement = _placement(tmp_path)
    env = topology.service_env("controlplane", placement)
    assert set(env) <= NAMES
    settings = ApiSettings.from_env(env)
    assert (settings.host, settings.port) == ("10.0.0.2", 8470)
    assert settings.node == "n2"
    assert settings.cluster_size == 3
    assert settings.tls_cert == placement.certs.server_cert("n2")


def test_an_unknown_service_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown service 'migrate'"):
        topology.service_env("migrate", _placement_without_files())


def _placement_without_files() -> topology.ServicePlacement:
    return topology.ServicePlacement(
        node="n1",
        nats_urls=["tls://n1:4222"],
        certs=CertLayout.at(Path("/nonexistent/certs")),
        identities=Path("/nonexistent/identities"),
        cluster_size=1,
        api_addr="127.0.0.1:8470",
        api_metrics_addr="127.0.0.1:9470",
        callout_metrics_addr="127.0.0.1:9471",
    )


def test_compose_puts_each_services_own_node_first_and_container_paths_only() -> None:
    hosts = {"n1": "n1", "n2": "n2", "n3": "n3"}
    env = compose.service_env("controlplane", "n3", hosts, cluster_size=3)
    assert env[envnames.NATS_URLS].split(",")[0] == "tls://n3:4222"
    assert env[envnames.API_TLS_CERT] == "/etc/unibus/certs/nodes/n3/server.pem"
    callout = compose.service_env("authcallout", "n1", hosts, cluster_size=3)
    assert callout[envnames.ISSUER_SEED_FILE] == "/etc/unibus/identities/issuer.seed"
    assert all(value.startswith("/etc/unibus/") for key, value in callout.items() if "FILE" in key)
