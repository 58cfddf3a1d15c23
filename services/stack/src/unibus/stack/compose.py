"""Material and rendered configuration for the containerized stack (compose, per-host deploy).

One directory holds everything a containerized cluster needs, generated on the machine
that runs ``unibus compose init`` (or ``unibus deploy render``), never inside a server:

* identities (nkey seeds, mode 0600), the route secret, the certificates (two CAs, per
  node a route and a server certificate whose SANs are the container host name, the
  given addresses, ``localhost`` and ``127.0.0.1``);
* each node's nats-server config, rendered from the project's one template with the
  paths the containers see (the posture validator runs here, before any server starts);
* one env file per service and node, holding only file paths and addresses: secrets
  reach a container only as mounted files, never as variables or arguments;
* ``stack.json`` with the published loopback ports, so ``unibus user ... --dir`` and
  ``unibus clientcheck --dir`` work from the host against the containers.

A one-shot ``stage`` step of the compose stack copies this material into per-role
volumes (:func:`stage_material`): the nats nodes get their configs and certificates,
the callout its seeds, the API its certificate and two seeds; each role sees only what
it needs, owned by the user it runs as. The nats image is a scratch image with no shell,
so the copy runs in the unibus image.

>>> spec = ComposeSpec()
>>> [n.name for n in spec.nodes()]
['n1', 'n2', 'n3']
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from unibus.client.profile import NodeInfo, StackInfo, write_stack_info
from unibus.core.errors import ConfigError
from unibus.core.files import make_private_dirs, write_private
from unibus.stack import monitoring, topology
from unibus.stack.certs import CertLayout, NodeSpec
from unibus.stack.layout import StackLayout, stack_info
from unibus.stack.material import ADMIN_PUB, ClientCa, auth_identities, ensure_material
from unibus.stack.natsconf import (
    AuthIdentities,
    NatsToggles,
    NodeConfig,
    render_node_config,
    write_node_config,
)
from unibus.stack.topology import (
    CONTAINER_SERVICES,
    MetricsPlacement,
    NodePlacement,
    RoutePlacement,
    ServicePlacement,
)

__all__ = [
    "API_METRICS_PORT",
    "API_PORT",
    "CALLOUT_METRICS_PORT",
    "CLIENT_PORT",
    "CONTAINER_ROOT",
    "DEFAULT_COMPOSE_DIR",
    "EXPORTER_PORT",
    "HOST_ROLES",
    "MONITORING_DIR",
    "MONITOR_PORT",
    "NODE_NAMES",
    "OPTIONAL_FILES",
    "PROMETHEUS_ROOT",
    "PROMETHEUS_UID",
    "ROLE_FILES",
    "ROUTE_PORT",
    "SERVICE_UID",
    "ComposeSpec",
    "NodeAddresses",
    "compose_env",
    "compose_monitoring",
    "node_config",
    "present_optional_files",
    "render_compose_dir",
    "render_configs",
    "role_files",
    "service_env",
    "stage_material",
]

DEFAULT_COMPOSE_DIR: Final = Path(".unibus-compose")
CONTAINER_ROOT: Final = Path("/etc/unibus")
"""Where every container mounts its role's material (read-only)."""
CONTAINER_CERTS: Final = CertLayout.at(CONTAINER_ROOT / "certs")
STORE_DIR: Final = Path("/data/jetstream")
CLIENT_PORT: Final = 4222
ROUTE_PORT: Final = 6222
API_PORT: Final = 8470
MONITOR_PORT: Final = 8222
CALLOUT_METRICS_PORT: Final = monitoring.AUTHCALLOUT_METRICS_PORT
API_METRICS_PORT: Final = monitoring.CONTROLPLANE_METRICS_PORT
EXPORTER_PORT: Final = monitoring.NATS_EXPORTER_PORT
"""Metrics and monitoring listen on every interface inside a container, over HTTPS with
the node's server certificate; they are never published on the client or public
address: a scraper reads them on the compose network (or a host's private address)."""
_ANY: Final = "0.0.0.0"  # noqa: S104 - inside the container; publishing decides exposure
MONITORING_DIR: Final = "monitoring"
"""Beside the material: Prometheus' rendered directory (``unibus.stack.monitoring``)."""
MONITORING_FILES: Final = (monitoring.CONFIG_FILE, monitoring.RULES_FILE, monitoring.CONSOLE_FILE)
PROMETHEUS_ROOT: Final = "/etc/prometheus"
"""Where the Prometheus container mounts the monitoring role's volume."""
PROMETHEUS_UID: Final = 65534
"""The user the Prometheus image runs as (nobody, as the official image)."""
SERVICE_UID: Final = 10001
"""The unprivileged user of the unibus image (``images/unibus/Dockerfile``)."""
NODE_NAMES: Final = ("n1", "n2", "n3")
CLUSTER_NAME: Final = "unibus"


def _server_files(node: str) -> tuple[str, ...]:
    return (f"certs/nodes/{node}/server.pem", f"certs/nodes/{node}/server-key.pem")


def _node_files(node: str) -> tuple[str, ...]:
    return (
        f"certs/nodes/{node}/route.pem",
        f"certs/nodes/{node}/route-key.pem",
        *_server_files(node),
    )


def role_files(role: str, nodes: Sequence[str]) -> tuple[str, ...]:
    """Paths (relative to the material directory) a role's volume receives."""
    if role == "nats":
        files = ["certs/route-ca.pem"]
        for node in nodes:
            files += [f"nodes/{node}/nats-server.conf", *_node_files(node)]
        return tuple(files)
    if role == "callout":
        # the node's server certificate: its metrics listener serves HTTPS with it
        return (
            "certs/client-ca.pem",
            *(f"identities/{name}.seed" for name in ("callout", "issuer", "xkey")),
            *(f"identities/{name}.seed" for name in ("internal", "system")),
            *(f for node in nodes for f in _server_files(node)),
        )
    if role == "monitoring":
        # Prometheus (the `monitoring` profile): its rendered directory and the CA it
        # verifies every target with; no key of any kind
        return ("certs/client-ca.pem", *(f"{MONITORING_DIR}/{f}" for f in MONITORING_FILES))
    if role == "exporter":
        # no identity at all: it reads the node's monitoring endpoint over HTTPS
        return ("certs/client-ca.pem", *(f for node in nodes for f in _server_files(node)))
    if role == "tools":
        # provision and migrate: the internal identity, no TLS key at all
        return ("certs/client-ca.pem", "identities/internal.seed", f"identities/{ADMIN_PUB}")
    if role == "api":
        files = [
            "certs/client-ca.pem",
            "identities/internal.seed",
            "identities/system.seed",
            f"identities/{ADMIN_PUB}",
        ]
        for node in nodes:
            files += _server_files(node)
        return tuple(files)
    raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLE_FILES)}")


HOST_ROLES: Final = ("nats", "callout", "api", "exporter", "tools")
"""The roles beside every node: what a host of the per-host deployment receives."""
ROLE_FILES: Final = (*HOST_ROLES, "monitoring")
"""Every role, Prometheus' too: on one machine the compose stack stages them all."""
OPTIONAL_FILES: Final[dict[str, tuple[str, ...]]] = {
    "callout": tuple(
        f"identities/{key}.{generation}.seed"
        for generation in ("next", "previous")
        for key in ("issuer", "xkey")
    ),
}
"""What a role receives only while it exists: the callout's other key generations during a
rotation (``unibus identities``)."""


def present_optional_files(source: Path, role: str) -> tuple[str, ...]:
    """The optional files of ``role`` that ``source`` holds now."""
    return tuple(f for f in OPTIONAL_FILES.get(role, ()) if (source / f).is_file())


"""The roles (the CA keys and the admin seed are never staged for any)."""
PER_NODE_ROLES: Final = frozenset({"nats", "callout", "api", "exporter"})
"""Staged into one volume per node (``<role>-<node>``): a node's TLS private keys reach only
the containers of that node."""


def staged_volumes(nodes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each staged volume (``nats-n1``, ``api-n1``, …, ``callout``, ``tools``) and its files."""
    volumes: dict[str, tuple[str, ...]] = {}
    for role in ROLE_FILES:
        if role in PER_NODE_ROLES:
            for node in nodes:
                volumes[f"{role}-{node}"] = role_files(role, [node])
        else:
            volumes[role] = role_files(role, nodes)
    return volumes


@dataclass(frozen=True)
class NodeAddresses:
    """One node of a containerized cluster and the addresses its certificates carry.

    ``route_host`` is what peers dial for routes and what the node advertises
    (``cluster.advertise``): the container name on one machine, the private address
    across VPS.
    """

    name: str
    route_host: str
    ips: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()

    def cert_spec(self) -> NodeSpec:
        # NodeSpec puts the node name, localhost and 127.0.0.1 in every certificate.
        return NodeSpec(name=self.name, ips=self.ips or ("127.0.0.1",), dns_names=self.dns_names)


def _split_sans(values: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ips: list[str] = []
    names: list[str] = []
    for value in values:
        try:
            ips.append(str(ipaddress.ip_address(value)))
        except ValueError:
            names.append(value.lower())
    return tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class ComposeSpec:
    """The single-machine compose stack: three nodes on one Docker network.

    Client and API ports are published on ``publish_host`` (loopback by default); routes
    stay on the Docker network.
    """

    publish_host: str = "127.0.0.1"
    nats_ports: tuple[int, ...] = (4222, 4223, 4224)
    api_ports: tuple[int, ...] = (8470, 8471, 8472)
    extra_sans: tuple[str, ...] = ()
    node_names: tuple[str, ...] = field(default=NODE_NAMES)
    prometheus_port: int = monitoring.PROMETHEUS_PORT
    """The ``monitoring`` profile's Prometheus, published on loopback only."""

    def __post_init__(self) -> None:
        count = len(self.node_names)
        if len(self.nats_ports) != count or len(self.api_ports) != count:
            raise ConfigError(f"give {count} NATS ports and {count} API ports")
        ports = [*self.nats_ports, *self.api_ports, self.prometheus_port]
        if any(not 1 <= p <= 65535 for p in ports) or len(set(ports)) != len(ports):
            raise ConfigError("published ports must be distinct integers in 1..65535")
        try:
            ipaddress.ip_address(self.publish_host)
        except ValueError:
            raise ConfigError(
                f"--publish-host {self.publish_host!r} must be an IP address "
                "(127.0.0.1 keeps the stack on this machine)",
                setting="--publish-host",
            ) from None

    @property
    def client_host(self) -> str:
        """The address the host's clients dial (loopback when published on a wildcard)."""
        return (
            "127.0.0.1"
            if ipaddress.ip_address(self.publish_host).is_unspecified
            else (self.publish_host)
        )

    def nodes(self) -> tuple[NodeAddresses, ...]:
        ips, names = _split_sans(self.extra_sans)
        if not ipaddress.ip_address(self.publish_host).is_unspecified:
            ips = tuple(dict.fromkeys((self.publish_host, *ips)))
        return tuple(
            NodeAddresses(name=name, route_host=name, ips=ips, dns_names=names)
            for name in self.node_names
        )


# -- material -------------------------------------------------------------------------------


def node_config(
    node: NodeAddresses,
    nodes: Sequence[NodeAddresses],
    *,
    auth: AuthIdentities,
    route_secret_file: Path,
) -> NodeConfig:
    """One node's config with the paths its container sees.

    ``route_secret_file`` is the host path: the secret is read at render time and only
    the rendered config (mounted read-only) carries it.
    """
    placement = NodePlacement(
        name=node.name,
        listen_host="0.0.0.0",  # noqa: S104 - inside the container; publishing decides exposure
        client_port=CLIENT_PORT,
        store_dir=STORE_DIR,
        certs=CONTAINER_CERTS,
        route=RoutePlacement(
            cluster_name=CLUSTER_NAME,
            listen_host="0.0.0.0",  # noqa: S104 - the route port is published to peers only
            listen_port=ROUTE_PORT,
            advertise=f"{node.route_host}:{ROUTE_PORT}",
            routes=tuple(f"{peer.route_host}:{ROUTE_PORT}" for peer in nodes),
            secret_file=route_secret_file,
        ),
        monitor_port=MONITOR_PORT,
        monitor_host=_ANY,
    )
    return topology.node_config(placement, auth)


def service_env(
    service: str, node: str, nats_hosts: Mapping[str, str], *, cluster_size: int
) -> dict[str, str]:
    """A service's environment: file paths and addresses only, never a secret value.

    ``nats_hosts`` maps node name to the host a service dials for it; the service's own
    node comes first (it is tried first).
    """
    own_first = [node, *(n for n in nats_hosts if n != node)]
    placement = ServicePlacement(
        node=node,
        nats_urls=[f"tls://{nats_hosts[n]}:{CLIENT_PORT}" for n in own_first],
        certs=CONTAINER_CERTS,
        identities=CONTAINER_ROOT / "identities",
        cluster_size=cluster_size,
        api_addr=f"{_ANY}:{API_PORT}",
        api_metrics_addr=f"{_ANY}:{API_METRICS_PORT}",
        callout_metrics_addr=f"{_ANY}:{CALLOUT_METRICS_PORT}",
        # the node's own container name: its certificate carries it, and the exporter
        # runs on the same host as its node in every deployment
        metrics=MetricsPlacement(
            exporter_addr=f"{_ANY}:{EXPORTER_PORT}",
            monitor_url=f"https://{node}:{MONITOR_PORT}",
        ),
    )
    return topology.service_env(service, placement)


def _env_text(env: Mapping[str, str]) -> str:
    header = "# Generated by unibus: file paths and addresses only (secrets are mounted files).\n"
    return header + "".join(f"{key}={value}\n" for key, value in env.items())


def render_configs(
    layout: StackLayout,
    nodes: Sequence[NodeAddresses],
    toggles: NatsToggles,
    nats_hosts: Mapping[str, str],
) -> None:
    """Render every node's nats config and every service's env file into ``layout``."""
    auth = auth_identities(layout)
    for node in nodes:
        text = render_node_config(
            node_config(node, nodes, auth=auth, route_secret_file=layout.route_secret), toggles
        )
        write_node_config(layout.node_config(node.name), text)
        for service in CONTAINER_SERVICES:
            env = service_env(service, node.name, nats_hosts, cluster_size=len(nodes))
            path = layout.root / "env" / f"{service}-{node.name}.env"
            path.parent.mkdir(mode=0o755, exist_ok=True)
            path.write_text(_env_text(env))


def compose_monitoring(node_names: Sequence[str]) -> monitoring.MonitoringSpec:
    """What the compose stack's Prometheus scrapes: every container on the compose network,
    over HTTPS verified with the client CA it finds in its own volume."""
    return monitoring.MonitoringSpec(
        nodes=[monitoring.NodeTargets.in_compose(name) for name in node_names],
        tls=monitoring.ScrapeTLS(ca_file=f"{PROMETHEUS_ROOT}/certs/client-ca.pem"),
    )


def compose_env(layout: StackLayout, spec: ComposeSpec) -> dict[str, str]:
    """The variables ``compose.yaml`` reads (``docker compose --env-file DIR/compose.env``)."""
    env = {
        "UNIBUS_COMPOSE_DIR": str(layout.root),
        "UNIBUS_PUBLISH_HOST": spec.publish_host,
    }
    for index, name in enumerate(spec.node_names):
        env[f"UNIBUS_{name.upper()}_NATS_PORT"] = str(spec.nats_ports[index])
        env[f"UNIBUS_{name.upper()}_API_PORT"] = str(spec.api_ports[index])
    env["UNIBUS_PROMETHEUS_PORT"] = str(spec.prometheus_port)
    return env


def compose_stack_info(layout: StackLayout, spec: ComposeSpec) -> StackInfo:
    host = spec.client_host
    if ":" in host:
        host = f"[{host}]"
    nodes = [
        NodeInfo(
            name=name,
            client_url=f"tls://{host}:{port}",
            route_url=f"nats-route://{name}:{ROUTE_PORT}",
            monitor_port=MONITOR_PORT,
        )
        for name, port in zip(spec.node_names, spec.nats_ports, strict=True)
    ]
    api_urls = [f"https://{host}:{port}" for port in spec.api_ports]
    return stack_info(layout, nodes, api_urls, replicas=min(3, len(spec.node_names)))


def render_compose_dir(
    root: Path,
    spec: ComposeSpec,
    *,
    toggles: NatsToggles,
    force: bool = False,
    client_ca: ClientCa | None = None,
) -> tuple[StackLayout, list[str]]:
    """``unibus compose init``: material if missing, then configs, env files, stack.json.

    Rendering is repeated on every call (cheap), so toggles and ports take effect;
    material is kept unless ``force``.
    """
    layout = StackLayout.at(root)
    nodes = spec.nodes()
    created = ensure_material(
        layout, [node.cert_spec() for node in nodes], force=force, client_ca=client_ca
    )
    render_configs(layout, nodes, toggles, {n.name: n.name for n in nodes})
    monitoring.write_monitoring(layout.root / MONITORING_DIR, compose_monitoring(spec.node_names))
    env = compose_env(layout, spec)
    (layout.root / "compose.env").write_text(
        "# Generated by `unibus compose init`: docker compose --env-file this-file ...\n"
        + "".join(f"{key}={value}\n" for key, value in env.items())
    )
    write_stack_info(layout.root, compose_stack_info(layout, spec))
    return layout, created


# -- staging into volumes (runs inside the stage container) --------------------------------------


def _copy(source: Path, target: Path, *, owner: tuple[int, int] | None) -> None:
    data = source.read_bytes()
    make_private_dirs(target.parent)
    private = source.stat().st_mode & 0o077 == 0
    write_private(target, data, mode=0o600 if private else 0o644, overwrite=True)
    if owner is not None:
        os.chown(target, *owner)


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def stage_material(
    source: Path,
    target: Path,
    *,
    nodes: Sequence[str],
    owners: Mapping[str, tuple[int, int] | None],
) -> dict[str, int]:
    """Copy each volume's files (``staged_volumes``) from ``source`` into ``target/<volume>``,
    replacing what is there.

    Secret files stay 0600, directories 0700, everything owned by the role's user
    (``owners`` by role: the nats image runs as root; the unibus services as
    :data:`SERVICE_UID`).

    Raises:
        ConfigError: ``source`` lacks a file (``unibus compose init`` has not run).
    """
    wanted = staged_volumes(nodes)
    if not (source / MONITORING_DIR).is_dir():
        # A host of the per-host deployment: its Prometheus runs elsewhere.
        wanted.pop("monitoring")
    missing = sorted({f for files in wanted.values() for f in files if not (source / f).is_file()})
    if missing:
        raise ConfigError(
            f"{source} lacks {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}: run "
            "`uv run unibus compose init` (or ./scripts/up) on the host first"
        )
    counts: dict[str, int] = {}
    for role, listed in wanted.items():
        files = (*listed, *present_optional_files(source, role.partition("-")[0]))
        volume = target / role
        volume.mkdir(parents=True, exist_ok=True)
        _clear(volume)
        owner = owners.get(role.partition("-")[0])
        for relative in files:
            _copy(source / relative, volume / relative, owner=owner)
        if owner is not None:
            for directory in [volume, *(p for p in volume.rglob("*") if p.is_dir())]:
                os.chown(directory, *owner)
                directory.chmod(0o700)
        counts[role] = len(files)
    return counts
