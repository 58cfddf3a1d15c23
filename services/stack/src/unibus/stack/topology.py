"""One description of a node and its services, for every way unibus runs.

The local launcher (processes on this machine), the compose stack (containers on one
machine) and the per-host deployment (containers on three hosts) differ only in where
things are: addresses, ports, and the directory a process sees its material under. Each
of them states that as a :class:`NodePlacement` / :class:`ServicePlacement`; the nats-server
configuration and the services' environments are built from it here, once, with the
variable names the services' settings read (``unibus.core.envnames``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unibus.core import envnames
from unibus.core.errors import ConfigError
from unibus.stack.certs import CertLayout
from unibus.stack.natsconf import AuthIdentities, ClientTLS, ClusterConfig, NodeConfig, RouteTLS

__all__ = [
    "CONTAINER_SERVICES",
    "SERVICES",
    "MetricsPlacement",
    "NodePlacement",
    "RoutePlacement",
    "ServicePlacement",
    "node_config",
    "service_env",
]

SERVICES: Final = ("authcallout", "controlplane")
"""The services that run beside every node."""
CONTAINER_SERVICES: Final = (*SERVICES, "natsexporter")
"""In containers also the node's exporter: its monitoring endpoint in Prometheus form."""


@dataclass(frozen=True)
class RoutePlacement:
    """How a node joins its cluster: its route listener and the routes to every peer."""

    cluster_name: str
    listen_host: str
    listen_port: int
    advertise: str
    """``host:port`` the peers dial for this node."""
    routes: tuple[str, ...]
    """``host:port`` of every node's route listener, this node's own included."""
    secret_file: Path


@dataclass(frozen=True)
class NodePlacement:
    """Where one nats-server node listens and keeps its state, as that process sees it."""

    name: str
    listen_host: str
    client_port: int
    store_dir: Path
    certs: CertLayout
    route: RoutePlacement | None
    """``None`` for a single node, which has no cluster."""
    monitor_port: int = 8222
    monitor_host: str | None = None
    """Where monitoring is always served (see ``NodeConfig.monitor_host``)."""
    log_file: Path | None = None
    pid_file: Path | None = None


def node_config(placement: NodePlacement, auth: AuthIdentities) -> NodeConfig:
    """The node's nats-server configuration: client TLS and route TLS from its certificates."""
    certs, name = placement.certs, placement.name
    cluster = None
    if placement.route is not None:
        route = placement.route
        cluster = ClusterConfig(
            name=route.cluster_name,
            listen_host=route.listen_host,
            listen_port=route.listen_port,
            advertise=route.advertise,
            routes=route.routes,
            secret_file=route.secret_file,
            tls=RouteTLS(
                cert_file=certs.route_cert(name),
                key_file=certs.route_key(name),
                ca_file=certs.route_ca_cert,
            ),
        )
    return NodeConfig(
        server_name=name,
        listen_host=placement.listen_host,
        listen_port=placement.client_port,
        store_dir=placement.store_dir,
        client_tls=ClientTLS(cert_file=certs.server_cert(name), key_file=certs.server_key(name)),
        auth=auth,
        cluster=cluster,
        monitor_port=placement.monitor_port,
        monitor_host=placement.monitor_host,
        log_file=placement.log_file,
        pid_file=placement.pid_file,
    )


@dataclass(frozen=True)
class MetricsPlacement:
    """Metrics a scraper on a private network reads: every listener serves HTTPS with the
    node's server certificate (client CA), and the exporter reads the node's monitoring
    endpoint."""

    exporter_addr: str
    monitor_url: str
    """The node's monitoring endpoint as the exporter dials it (``https://n1:8222``)."""


@dataclass(frozen=True)
class ServicePlacement:
    """Where one node's services reach the bus, listen, and find their material.

    Paths are as the service's process sees them (a host path for the launcher, a mount
    path in a container). Services get file paths only, never a secret's value.
    """

    node: str
    nats_urls: Sequence[str]
    """Every node's client URL, this node's first (it is tried first)."""
    certs: CertLayout
    identities: Path
    """The directory holding ``<name>.seed`` for each identity a service uses."""
    cluster_size: int
    api_addr: str
    api_metrics_addr: str
    callout_metrics_addr: str
    metrics: MetricsPlacement | None = None
    """Off loopback: how the metrics listeners serve a scraper (``None`` on loopback)."""


def _identity(placement: ServicePlacement, name: str) -> str:
    return str(placement.identities / f"{name}.seed")


def _metrics_tls(placement: ServicePlacement, cert: str, key: str) -> dict[str, str]:
    if placement.metrics is None:
        return {}
    return {
        cert: str(placement.certs.server_cert(placement.node)),
        key: str(placement.certs.server_key(placement.node)),
    }


def service_env(service: str, placement: ServicePlacement) -> dict[str, str]:
    """The environment ``service`` (one of :data:`CONTAINER_SERVICES`) starts with."""
    if service == "natsexporter":
        if placement.metrics is None:
            raise ConfigError("the exporter runs only where metrics are placed off loopback")
        return {
            envnames.NATSEXPORTER_SERVERS: f"{placement.node}={placement.metrics.monitor_url}",
            envnames.NATSEXPORTER_CA: str(placement.certs.client_ca_cert),
            envnames.NATSEXPORTER_ADDR: placement.metrics.exporter_addr,
            **_metrics_tls(
                placement, envnames.NATSEXPORTER_TLS_CERT, envnames.NATSEXPORTER_TLS_KEY
            ),
        }
    common = {
        envnames.NATS_URLS: ",".join(placement.nats_urls),
        envnames.CA_FILE: str(placement.certs.client_ca_cert),
        envnames.INTERNAL_SEED_FILE: _identity(placement, "internal"),
        envnames.SYSTEM_SEED_FILE: _identity(placement, "system"),
        envnames.NODE_NAME: placement.node,
    }
    if service == "authcallout":
        return {
            **common,
            envnames.CALLOUT_SEED_FILE: _identity(placement, "callout"),
            envnames.ISSUER_SEED_FILE: _identity(placement, "issuer"),
            envnames.XKEY_SEED_FILE: _identity(placement, "xkey"),
            envnames.AUTHCALLOUT_METRICS_ADDR: placement.callout_metrics_addr,
            **_metrics_tls(
                placement,
                envnames.AUTHCALLOUT_METRICS_TLS_CERT,
                envnames.AUTHCALLOUT_METRICS_TLS_KEY,
            ),
        }
    if service == "controlplane":
        return {
            **common,
            envnames.CLUSTER_SIZE: str(placement.cluster_size),
            envnames.API_ADDR: placement.api_addr,
            envnames.API_METRICS_ADDR: placement.api_metrics_addr,
            envnames.API_TLS_CERT: str(placement.certs.server_cert(placement.node)),
            envnames.API_TLS_KEY: str(placement.certs.server_key(placement.node)),
            **_metrics_tls(placement, envnames.API_METRICS_TLS_CERT, envnames.API_METRICS_TLS_KEY),
        }
    raise ConfigError(f"unknown service {service!r}: one of {', '.join(CONTAINER_SERVICES)}")
