"""Per-host compose files for a cluster of three VPS, from one topology file (SPEC §9).

``render`` writes, under one output directory:

* ``_material/`` — everything, kept on the operator's machine: both CA keys, every
  identity (the first admin's seed too), the route secret, and ``stack.json`` pointing at
  the hosts' public addresses (``unibus user list --dir OUT/_material``);
* ``<host>/`` — what that host receives and nothing more: ``compose.yaml`` (its nats
  node, its authcallout and controlplane, the stage and provision one-shots, restart
  policies), ``env/`` (paths and addresses only) and ``material/`` (its node's config and
  certificates, the CA certificates, the service identities; never a CA key or the
  admin seed);
* ``monitoring/`` — one Prometheus for the three hosts (config, alert rules, dashboard,
  the client CA, a compose file): it scrapes every host's exporter (which reads its
  node's monitoring endpoint), callout and API metrics on the private address, over
  HTTPS, and runs on any machine of the private network. Without one (``routes = "public"``) those
  endpoints are not published and nothing is rendered here.

Routes run between the private addresses with mutual TLS; clients and the API use the
public address. Each node's certificates carry its name, public and private IP,
hostname, ``localhost`` and ``127.0.0.1``. Hosts without a private network (the seeds'
own deployment) set ``cluster.routes = "public"``: routes, the services' connections to
peer nodes and the published route port then use the public address, and
``private_ip`` may be left out.

A topology is refused before anything is rendered when it still holds the example's
placeholders (documentation addresses, ``example.org`` names) or when two hosts share a
name, an address or a hostname; every message names the host and the field to fix.

``plan`` lists the commands that ship a rendered directory to its host and start it;
``unibus deploy apply`` prints them, and runs them only with ``--yes``.

Images: one per role, as ``images/unibus/Dockerfile`` builds them. The topology's
``cluster.image`` keeps its meaning: the image with the ``unibus`` CLI (the tools image),
which runs the ``stage`` and ``provision`` one-shots. The services run
``cluster.authcallout_image``, ``cluster.controlplane_image`` and
``cluster.natsexporter_image``, all optional: when
absent, each is derived from ``cluster.image`` with the same registry, namespace and tag
and the repository named after the role, so ``unibus/unibus:local`` gives
``unibus/authcallout:local`` and ``registry.example.org/ops/unibus:1.4`` gives
``registry.example.org/ops/controlplane:1.4``. A topology written before the split thus
needs no edit. A digest-pinned ``cluster.image`` derives nothing: those fields are then
required. ``plan`` ships exactly the images the host compose files name (no migrate image:
the migration runs from the operator's machine, ``unibus migrate``).

The example's placeholders are refused (only tests and these examples allow them):

>>> Topology.parse(EXAMPLE_TOPOLOGY)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
unibus.core.errors.ConfigError: topology: hosts[0] (n1): public_ip 203.0.113.10 is a placeholder...

>>> topology = Topology.parse(EXAMPLE_TOPOLOGY, allow_placeholders=True)
>>> sorted(topology.images().items())  # doctest: +NORMALIZE_WHITESPACE
[('authcallout', 'unibus/authcallout:local'), ('controlplane', 'unibus/controlplane:local'),
 ('natsexporter', 'unibus/natsexporter:local'), ('tools', 'unibus/unibus:local')]
>>> [host.name for host in topology.hosts]
['n1', 'n2', 'n3']
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from unibus.client.profile import NodeInfo, StackInfo, write_stack_info
from unibus.core.errors import CertificateError, ConfigError
from unibus.stack.certs import NodeSpec, issue_leaves
from unibus.stack.compose import (
    API_METRICS_PORT,
    API_PORT,
    CALLOUT_METRICS_PORT,
    CLIENT_PORT,
    EXPORTER_PORT,
    HOST_ROLES,
    MONITOR_PORT,
    MONITORING_DIR,
    PROMETHEUS_ROOT,
    ROUTE_PORT,
    NodeAddresses,
    present_optional_files,
    render_configs,
    role_files,
)
from unibus.stack.containers import (
    API_HEALTH,
    CALLOUT_HEALTH,
    EXPORTER_HEALTH,
    NATS_STOP_GRACE,
    NATS_STOP_SIGNAL,
    SERVICE_COMMANDS,
    health_test,
)
from unibus.stack.drivers import ComposeNode
from unibus.stack.layout import StackLayout, stack_info
from unibus.stack.material import ClientCa, auth_identities, ensure_material
from unibus.stack.monitoring import (
    PROMETHEUS_PORT,
    MonitoringSpec,
    NodeTargets,
    ScrapeTLS,
    prometheus_args,
    write_monitoring,
)
from unibus.stack.natsconf import NatsToggles
from unibus.stack.topology import CONTAINER_SERVICES

__all__ = [
    "EXAMPLE_TOPOLOGY",
    "Host",
    "Step",
    "Topology",
    "format_plan",
    "migrate_plan",
    "plan",
    "render",
    "renew_host_certificates",
    "role_image",
    "rollout_nodes",
]

CLUSTER_SIZE: Final = 3
MATERIAL_DIR: Final = "_material"
LEGACY_DIR: Final = "legacy"
"""Beside a host's compose.yaml: where `deploy migrate` puts the legacy SQLite file."""
LEGACY_DB_NAME: Final = "membershipd.db"
LEGACY_DIR_ENV: Final = "UNIBUS_LEGACY_DIR"
LEGACY_DB_ENV: Final = "UNIBUS_LEGACY_DB"
DEFAULT_IMAGE: Final = "unibus/unibus:local"  # the tools image (cluster.image)
SERVICE_ROLES: Final = ("authcallout", "controlplane", "natsexporter")
NATS_IMAGE: Final = "nats:2.15.1"
PROMETHEUS_IMAGE: Final = "unibus/prometheus:local"
EXAMPLE_TOPOLOGY: Final = """
[cluster]
ssh_user = "root"
remote_dir = "/opt/unibus"

[[hosts]]
name = "n1"
public_ip = "203.0.113.10"
private_ip = "10.0.0.10"
hostname = "n1.example.org"

[[hosts]]
name = "n2"
public_ip = "203.0.113.11"
private_ip = "10.0.0.11"
hostname = "n2.example.org"

[[hosts]]
name = "n3"
public_ip = "203.0.113.12"
private_ip = "10.0.0.12"
hostname = "n3.example.org"
"""


ROUTES: Final = ("private", "public")
"""``cluster.routes``: which of each host's addresses the routes and peer connections use."""
PLACEHOLDER_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
"""Documentation addresses (RFC 5737, RFC 3849): the example's, never a real host's."""
PLACEHOLDER_DOMAINS: Final = ("example.org", "example.com", "example.net", "example")
"""Documentation names (RFC 2606): the example's ``n1.example.org``, never a real host's."""


@dataclass(frozen=True)
class Host:
    name: str
    public_ip: str
    private_ip: str | None
    """None only with ``cluster.routes = "public"`` (no private network)."""
    hostname: str


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    ssh_user: str = "root"
    remote_dir: str = "/opt/unibus"
    image: str = DEFAULT_IMAGE
    authcallout_image: str | None = None
    controlplane_image: str | None = None
    natsexporter_image: str | None = None
    routes: str = "private"
    """``private``: routes and peer connections over the private addresses; ``public``:
    over the public ones (hosts without a private network)."""

    def images(self) -> dict[str, str]:
        """The image of each role on a host: ``tools`` (stage, provision) and the services."""
        explicit = {
            "authcallout": self.authcallout_image,
            "controlplane": self.controlplane_image,
            "natsexporter": self.natsexporter_image,
        }
        return {
            "tools": self.image,
            **{role: explicit[role] or role_image(self.image, role) for role in SERVICE_ROLES},
        }

    def route_ip(self, host: Host) -> str:
        """The address peers dial for ``host``: its routes, and its client port from the
        services and provisioning of the other hosts."""
        if self.routes == "public":
            return host.public_ip
        if host.private_ip is None:
            raise ConfigError(
                f'{host.name} has no private_ip: set it, or cluster.routes = "public"'
            )
        return host.private_ip

    def node_addresses(self, host: Host) -> NodeAddresses:
        """What ``host``'s node advertises, and every address its certificates carry."""
        ips = (host.public_ip,) if host.private_ip is None else (host.public_ip, host.private_ip)
        return NodeAddresses(
            name=host.name,
            route_host=self.route_ip(host),
            ips=ips,
            dns_names=(host.hostname,),
        )

    @classmethod
    def load(cls, path: Path) -> Topology:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the topology {path}: {exc.strerror}; start from "
                "deploy/topology.example.toml"
            ) from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(
        cls, text: str, *, source: str = "topology", allow_placeholders: bool = False
    ) -> Topology:
        """Parse and validate; every problem names the host and the field to fix.

        ``allow_placeholders`` admits the example's documentation addresses and names:
        for tests and examples only, since no real host has them.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        cluster = data.get("cluster", {})
        routes = _string(cluster, "routes", "private", f"{source}: cluster")
        if routes not in ROUTES:
            raise ConfigError(
                f'{source}: cluster.routes must be "private" (routes over the private '
                'network) or "public" (hosts without one), not ' + json.dumps(routes)
            )
        raw_hosts = data.get("hosts", [])
        if not isinstance(raw_hosts, list) or len(raw_hosts) != CLUSTER_SIZE:
            raise ConfigError(
                f"{source} must list exactly {CLUSTER_SIZE} [[hosts]] (one per VPS), "
                f"found {len(raw_hosts) if isinstance(raw_hosts, list) else 0}"
            )
        hosts = tuple(
            _host(entry, index, source, routes=routes) for index, entry in enumerate(raw_hosts)
        )
        if not allow_placeholders:
            for index, host in enumerate(hosts):
                _refuse_placeholders(host, f"{source}: hosts[{index}] ({host.name})")
        _refuse_shared_addresses(hosts, source, routes=routes)
        remote_dir = _string(cluster, "remote_dir", "/opt/unibus", source)
        if not remote_dir.startswith("/") or any(c in remote_dir for c in " '\"$`\\;&|"):
            raise ConfigError(f"{source}: cluster.remote_dir must be a plain absolute path")
        ssh_user = _string(cluster, "ssh_user", "root", source)
        if not ssh_user.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{source}: cluster.ssh_user must be a plain user name")
        role_images = {
            role: _string(cluster, f"{role}_image", None, source)
            for role in SERVICE_ROLES
            if f"{role}_image" in cluster
        }
        topology = cls(
            hosts=hosts,
            ssh_user=ssh_user,
            remote_dir=remote_dir,
            image=_string(cluster, "image", DEFAULT_IMAGE, source),
            authcallout_image=role_images.get("authcallout"),
            controlplane_image=role_images.get("controlplane"),
            natsexporter_image=role_images.get("natsexporter"),
            routes=routes,
        )
        try:
            topology.images()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return topology


def role_image(tools_image: str, role: str) -> str:
    """The image of ``role`` beside ``tools_image``: same registry, namespace and tag.

    >>> role_image("unibus/unibus:local", "authcallout")
    'unibus/authcallout:local'
    >>> role_image("localhost:5000/unibus", "controlplane")
    'localhost:5000/controlplane'
    """
    if "@" in tools_image:
        raise ConfigError(
            f"cluster.image {tools_image!r} is pinned by digest, so the service images cannot "
            f"be derived from it: set cluster.{role}_image"
        )
    slash = tools_image.rfind("/")
    colon = tools_image.rfind(":")
    tag = tools_image[colon:] if colon > slash else ""
    return f"{tools_image[: slash + 1]}{role}{tag}"


def _string(table: Mapping[str, Any], key: str, default: str | None, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _ip(entry: Mapping[str, Any], field: str, where: str) -> str:
    value = _string(entry, field, None, where)
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{where}: {field} {value!r} is not an IP") from None
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        raise ConfigError(f"{where}: {field} {value} is not a host's address: put the host's own")
    return str(ip)  # one spelling per address, so duplicates are found


def _host(entry: Any, index: int, source: str, *, routes: str) -> Host:
    where = f"{source}: hosts[{index}]"
    fields = "name, public_ip, private_ip, hostname"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table with {fields}")
    if routes == "private" and "private_ip" not in entry:
        raise ConfigError(
            f"{where}: private_ip is missing; routes run over the private network. A host "
            'without one: set cluster.routes = "public" (routes over the public addresses)'
        )
    host = Host(
        name=_string(entry, "name", None, where),
        public_ip=_ip(entry, "public_ip", where),
        private_ip=_ip(entry, "private_ip", where) if "private_ip" in entry else None,
        hostname=_string(entry, "hostname", None, where).lower().removesuffix("."),
    )
    try:
        NodeSpec(name=host.name, ips=(host.public_ip,), dns_names=(host.hostname,))
    except CertificateError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return host


def _refuse_placeholders(host: Host, where: str) -> None:
    """The unedited example must not render: its addresses belong to no host."""
    for field in ("public_ip", "private_ip"):
        value = getattr(host, field)
        if value is not None and any(
            ipaddress.ip_address(value) in network for network in PLACEHOLDER_NETWORKS
        ):
            raise ConfigError(
                f"{where}: {field} {value} is a placeholder (a documentation address, as in "
                f"deploy/topology.example.toml): put the host's real {field}"
            )
    if any(host.hostname == d or host.hostname.endswith(f".{d}") for d in PLACEHOLDER_DOMAINS):
        raise ConfigError(
            f"{where}: hostname {host.hostname} is a placeholder (a documentation name, as in "
            "deploy/topology.example.toml): put the host's real DNS name"
        )


def _refuse_shared_addresses(hosts: Sequence[Host], source: str, *, routes: str) -> None:
    """Every name, address and hostname belongs to one host, in one role.

    A shared address would send routes or clients to the wrong node, and a certificate
    would vouch for two nodes at once.
    """
    owners: dict[str, str] = {}
    for index, host in enumerate(hosts):
        label = f"hosts[{index}] ({host.name})"
        claims = [("name", host.name), ("hostname", host.hostname), ("public_ip", host.public_ip)]
        if host.private_ip is not None:
            claims.append(("private_ip", host.private_ip))
        mine: dict[str, str] = {}
        for field, value in claims:
            # A host's own name as its hostname is one name, not a conflict.
            if value in mine and {field, mine[value]} != {"name", "hostname"}:
                hint = (
                    'with one address per host, set cluster.routes = "public" and leave '
                    "private_ip out"
                    if routes == "private"
                    else "leave private_ip out"
                )
                raise ConfigError(
                    f"{source}: {label}: private_ip {value} is also its public_ip; {hint}"
                )
            mine.setdefault(value, field)
            if value in owners:
                raise ConfigError(
                    f"{source}: {label}: {field} {value} is already {owners[value]}; every "
                    "name, address and hostname belongs to one host: correct one of them"
                )
        owners.update({value: f"{label}'s {field}" for value, field in mine.items()})


# -- rendering ----------------------------------------------------------------------------------


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML emitter: mappings and lists in block style, scalars as JSON."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:")
                lines += _yaml(item, indent + 1)
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, Mapping | list) and item:
                nested = _yaml(item, indent + 1)
                lines.append(f"{pad}- {nested[0].strip()}")
                lines += nested[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(value)


def _healthcheck(code: str) -> dict[str, Any]:
    # Slower than compose.yaml's: a host may wait minutes for its peers to come up.
    return {
        "test": health_test(code),
        "interval": "10s",
        "timeout": "5s",
        "start_period": "120s",
        "retries": 3,
    }


def host_compose(host: Host, topology: Topology) -> dict[str, Any]:
    """The compose document of one host (its node, services and one-shots)."""
    node = host.name
    peers = [h for h in topology.hosts if h.name != node]
    urls = [f"--nats-url=tls://{node}:{CLIENT_PORT}"]
    urls += [f"--nats-url=tls://{topology.route_ip(h)}:{CLIENT_PORT}" for h in peers]
    # The peers' services and provisioning dial this node's client port at its route
    # address; clients at its public one. The route port only at the route address.
    route_ip = topology.route_ip(host)
    node_ports = [
        f"{ip}:{CLIENT_PORT}:{CLIENT_PORT}" for ip in dict.fromkeys((host.public_ip, route_ip))
    ]
    node_ports.append(f"{route_ip}:{ROUTE_PORT}:{ROUTE_PORT}")
    # Monitoring and metrics (HTTPS, the node's certificate) on the private address only,
    # for one Prometheus on the private network; never on the public one. Without a
    # private network (routes = "public") they stay unpublished: scrape through a tunnel.
    private = [route_ip] if topology.routes == "private" else []

    def metrics_ports(port: int) -> dict[str, list[str]]:
        return {"ports": [f"{ip}:{port}:{port}" for ip in private]} if private else {}

    node_ports += [f"{ip}:{MONITOR_PORT}:{MONITOR_PORT}" for ip in private]
    images = topology.images()
    service = {
        "restart": "unless-stopped",
        "depends_on": {"provision": {"condition": "service_completed_successfully"}},
    }
    return {
        "services": {
            "stage": {
                "image": images["tools"],
                "user": "0:0",
                "network_mode": "none",
                "restart": "no",
                "command": [
                    "unibus",
                    "compose",
                    "stage",
                    "--source=/source",
                    "--target=/stage",
                    f"--node={node}",
                ],
                "volumes": [
                    "./material:/source:ro",
                    f"material-nats:/stage/nats-{node}",
                    f"material-callout:/stage/callout-{node}",
                    f"material-api:/stage/api-{node}",
                    f"material-exporter:/stage/exporter-{node}",
                    "material-tools:/stage/tools",
                ],
            },
            node: {
                "image": NATS_IMAGE,
                "restart": "unless-stopped",
                "stop_signal": NATS_STOP_SIGNAL,
                "stop_grace_period": NATS_STOP_GRACE,
                "command": ["--config", f"/etc/unibus/nodes/{node}/nats-server.conf"],
                "ports": node_ports,
                "volumes": ["material-nats:/etc/unibus:ro", "nats-data:/data"],
                "depends_on": {"stage": {"condition": "service_completed_successfully"}},
            },
            "provision": {
                "image": images["tools"],
                # Retried: the peers may come up minutes after this host.
                "restart": "on-failure",
                "command": [
                    "unibus",
                    "provision",
                    *urls,
                    "--ca=/etc/unibus/certs/client-ca.pem",
                    "--identity=/etc/unibus/identities/internal.seed",
                    "--first-admin-file=/etc/unibus/identities/admin.pub",
                    f"--replicas={CLUSTER_SIZE}",
                    "--budget=600",
                ],
                "volumes": ["material-tools:/etc/unibus:ro"],
                "depends_on": {
                    "stage": {"condition": "service_completed_successfully"},
                    node: {"condition": "service_started"},
                },
            },
            # One-shot, on demand: `docker compose --profile migrate run --rm migrate`
            # copies the legacy SQLite file ./legacy/membershipd.db (UNIBUS_LEGACY_DIR,
            # UNIBUS_LEGACY_DB) into the KV; `unibus deploy migrate` ships the file and runs
            # it. The tools image (it holds the migration) rather than the migrate one: one
            # image fewer to ship to every host. Root only to write the backup (VACUUM INTO)
            # next to the file.
            "migrate": {
                "image": images["tools"],
                "profiles": ["migrate"],
                "user": "0:0",
                "restart": "no",
                "entrypoint": [
                    "unibus",
                    "migrate-to-kv",
                    f"--db=/legacy/${{{LEGACY_DB_ENV}:-{LEGACY_DB_NAME}}}",
                    *urls,
                    "--ca=/etc/unibus/certs/client-ca.pem",
                    "--identity=/etc/unibus/identities/internal.seed",
                    f"--replicas={CLUSTER_SIZE}",
                    "--json",  # one summary a scheduler reads, progress as JSON lines
                ],
                "command": [],
                "volumes": [
                    "material-tools:/etc/unibus:ro",
                    f"${{{LEGACY_DIR_ENV}:-./{LEGACY_DIR}}}:/legacy",
                ],
                "depends_on": {"stage": {"condition": "service_completed_successfully"}},
            },
            "authcallout": {
                "image": images["authcallout"],
                **service,
                "command": list(SERVICE_COMMANDS["authcallout"]),
                "env_file": [f"env/authcallout-{node}.env"],
                **metrics_ports(CALLOUT_METRICS_PORT),
                "volumes": ["material-callout:/etc/unibus:ro"],
                "healthcheck": _healthcheck(CALLOUT_HEALTH),
            },
            "controlplane": {
                "image": images["controlplane"],
                **service,
                "command": list(SERVICE_COMMANDS["controlplane"]),
                "env_file": [f"env/controlplane-{node}.env"],
                "ports": [
                    f"{host.public_ip}:{API_PORT}:{API_PORT}",
                    *(f"{ip}:{API_METRICS_PORT}:{API_METRICS_PORT}" for ip in private),
                ],
                "volumes": ["material-api:/etc/unibus:ro"],
                "healthcheck": _healthcheck(API_HEALTH),
            },
            "natsexporter": {
                "image": images["natsexporter"],
                "restart": "unless-stopped",
                "command": list(SERVICE_COMMANDS["natsexporter"]),
                "env_file": [f"env/natsexporter-{node}.env"],
                **metrics_ports(EXPORTER_PORT),
                "volumes": ["material-exporter:/etc/unibus:ro"],
                "healthcheck": _healthcheck(EXPORTER_HEALTH),
                "depends_on": {"stage": {"condition": "service_completed_successfully"}},
            },
        },
        "volumes": {
            "material-nats": {},
            "material-callout": {},
            "material-api": {},
            "material-exporter": {},
            "material-tools": {},
            "nats-data": {},
        },
    }


def _copy_into(source: StackLayout, target: Path, relative: str) -> None:
    origin = source.root / relative
    destination = target / relative
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy2(origin, destination)


def render(
    topology: Topology,
    out: Path,
    *,
    toggles: NatsToggles,
    force: bool = False,
    client_ca: ClientCa | None = None,
) -> list[Path]:
    """Write ``out/_material`` and one directory per host; returns the host directories."""
    out = out.expanduser().absolute()
    layout = StackLayout.at(out / MATERIAL_DIR)
    nodes = [topology.node_addresses(host) for host in topology.hosts]
    ensure_material(layout, [node.cert_spec() for node in nodes], force=force, client_ca=client_ca)
    auth_identities(layout)  # fails early on a damaged identity
    written: list[Path] = []
    for host in topology.hosts:
        nats_hosts = {h.name: h.name if h is host else topology.route_ip(h) for h in topology.hosts}
        render_configs(layout, nodes, toggles, nats_hosts)
        host_dir = out / host.name
        material = host_dir / "material"
        if material.exists():
            shutil.rmtree(material)
        files = {f for role in HOST_ROLES for f in role_files(role, [host.name])}
        files |= {f for role in HOST_ROLES for f in present_optional_files(layout.root, role)}
        for relative in sorted(files):
            _copy_into(layout, material, relative)
        env_dir = host_dir / "env"
        env_dir.mkdir(parents=True, exist_ok=True)
        for service in CONTAINER_SERVICES:
            name = f"{service}-{host.name}.env"
            shutil.copy2(layout.root / "env" / name, env_dir / name)
        text = "\n".join(
            [
                f"# unibus on {host.name} ({host.hostname}), generated by `unibus deploy "
                "render`: do not edit, re-render.",
                *_yaml(host_compose(host, topology)),
            ]
        )
        (host_dir / "compose.yaml").write_text(text + "\n")
        written.append(host_dir)
    # The operator's copy renders every node's env with its own node first; nothing on the
    # hosts depends on what is left in _material/env.
    write_stack_info(layout.root, _stack_info(layout, topology))
    render_monitoring_dir(topology, layout, out / MONITORING_DIR)
    return written


def host_monitoring(topology: Topology) -> MonitoringSpec | None:
    """One Prometheus on the private network scraping every host's private address (each
    endpoint verified with the client CA against its node's name); ``None`` without a
    private network, where the endpoints are not published."""
    if topology.routes != "private":
        return None
    return MonitoringSpec(
        nodes=[
            NodeTargets.on_host(host.name, topology.route_ip(host), server_name=host.name)
            for host in topology.hosts
        ],
        tls=ScrapeTLS(ca_file=f"{PROMETHEUS_ROOT}/certs/client-ca.pem"),
    )


def render_monitoring_dir(topology: Topology, layout: StackLayout, target: Path) -> None:
    """``OUT/monitoring``: the Prometheus of the deployment, to run on any machine of the
    private network (``docker compose up -d`` there): its config, rules, dashboard, the
    client CA and a compose file publishing its web port on that machine's loopback."""
    spec = host_monitoring(topology)
    if target.exists():
        shutil.rmtree(target)
    if spec is None:
        return
    rendered = target / MONITORING_DIR
    write_monitoring(rendered, spec)
    ca = target / "certs" / "client-ca.pem"
    ca.parent.mkdir(mode=0o755, parents=True)
    shutil.copyfile(layout.certs.client_ca_cert, ca)
    ca.chmod(0o644)
    document = {
        "services": {
            "prometheus": {
                "image": PROMETHEUS_IMAGE,
                "restart": "unless-stopped",
                "command": prometheus_args(config_dir=f"{PROMETHEUS_ROOT}/{MONITORING_DIR}"),
                "ports": [f"127.0.0.1:{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
                "volumes": [f".:{PROMETHEUS_ROOT}:ro", "prometheus-data:/prometheus"],
            }
        },
        "volumes": {"prometheus-data": {}},
    }
    text = "\n".join(
        [
            "# The deployment's Prometheus, generated by `unibus deploy render`: run it on a",
            "# machine of the private network (`docker compose up -d` in this directory); the",
            "# dashboard is http://127.0.0.1:9090/consoles/unibus.html there.",
            *_yaml(document),
        ]
    )
    (target / "compose.yaml").write_text(text + "\n")


def renew_host_certificates(topology: Topology, out: Path, host_name: str) -> list[str]:
    """New route and server certificates, with new keys, for one host only: into the
    operator's material and that host's directory (``render``'s output).

    For a host being replaced: its old keys stayed on a disk that is out of the operator's
    hands now. Both CAs and every other host's files are kept. Returns what was issued.
    """
    out = out.expanduser().absolute()
    host = next((h for h in topology.hosts if h.name == host_name), None)
    if host is None:
        names = ", ".join(h.name for h in topology.hosts)
        raise ConfigError(f"no host {host_name!r} in the topology: the hosts are {names}")
    layout = StackLayout.at(out / MATERIAL_DIR)
    host_material = out / host.name / "material"
    if not (layout.certs.route_ca_key.is_file() and host_material.is_dir()):
        raise ConfigError(
            f"{out} holds no rendered deployment: run `unibus deploy render --topology FILE "
            f"--out {out}` first"
        )
    spec = topology.node_addresses(host).cert_spec()
    issued = issue_leaves(layout.certs.root, [spec], renew={host.name})
    prefix = f"certs/nodes/{host.name}/"
    for role in HOST_ROLES:
        for relative in role_files(role, [host.name]):
            if relative.startswith(prefix):
                _copy_into(layout, host_material, relative)
    return issued


def _stack_info(layout: StackLayout, topology: Topology) -> StackInfo:
    def host_ip(host: Host) -> str:
        ip = ipaddress.ip_address(host.public_ip)
        return f"[{ip}]" if ip.version == 6 else str(ip)

    nodes = [
        NodeInfo(
            name=h.name,
            client_url=f"tls://{host_ip(h)}:{CLIENT_PORT}",
            route_url=f"nats-route://{topology.route_ip(h)}:{ROUTE_PORT}",
            monitor_port=8222,
        )
        for h in topology.hosts
    ]
    api_urls = [f"https://{host_ip(h)}:{API_PORT}" for h in topology.hosts]
    return stack_info(layout, nodes, api_urls, replicas=CLUSTER_SIZE)


# -- shipping -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command of a deploy; ``pipe_to`` receives its standard output."""

    host: str
    what: str
    argv: tuple[str, ...]
    pipe_to: tuple[str, ...] = ()

    def shell(self) -> str:
        text = shlex.join(self.argv)
        return f"{text} | {shlex.join(self.pipe_to)}" if self.pipe_to else text


def plan(
    topology: Topology, out: Path, *, ship_images: bool = True, start: bool = True
) -> list[Step]:
    """The commands that copy each host's directory and start its stack, host by host.

    ``start=False`` ships only: a running cluster is then updated by a rollout, one node
    at a time, never by starting every host at once (which could drop it below quorum).
    """
    out = out.expanduser().absolute()
    steps: list[Step] = []
    remote = topology.remote_dir
    for host in topology.hosts:
        destination = f"{topology.ssh_user}@{host.public_ip}"
        host_dir = out / host.name
        if not (host_dir / "compose.yaml").is_file():
            raise ConfigError(
                f"{host_dir}/compose.yaml is missing: run `unibus deploy render "
                f"--topology FILE --out {out}` first"
            )
        steps.append(
            Step(host.name, "create the directory", ("ssh", destination, f"mkdir -p {remote}"))
        )
        steps.append(
            Step(
                host.name,
                "copy compose.yaml, env/ and material/ (modes kept)",
                (
                    "scp",
                    "-rp",
                    str(host_dir / "compose.yaml"),
                    str(host_dir / "env"),
                    str(host_dir / "material"),
                    f"{destination}:{remote}/",
                ),
            )
        )
        if ship_images:
            steps.append(
                Step(
                    host.name,
                    "load the images",
                    ("docker", "save", NATS_IMAGE, *dict.fromkeys(topology.images().values())),
                    ("ssh", destination, "docker load"),
                )
            )
        if not start:
            continue
        steps.append(
            Step(
                host.name,
                "start (restart policies keep it up)",
                (
                    "ssh",
                    destination,
                    f"docker compose --project-directory {remote} -f {remote}/compose.yaml "
                    "-p unibus up -d",
                ),
            )
        )
    return steps


def rollout_nodes(topology: Topology) -> list[ComposeNode]:
    """Each host's node as ``unibus rollout`` drives it: its compose project over ssh."""
    remote = topology.remote_dir
    compose = (
        "docker",
        "compose",
        "--project-directory",
        remote,
        "-f",
        f"{remote}/compose.yaml",
        "-p",
        "unibus",
    )
    return [
        ComposeNode(
            name=host.name,
            compose=compose,
            node_service=host.name,
            services=CONTAINER_SERVICES,
            ssh=f"{topology.ssh_user}@{host.public_ip}",
        )
        for host in topology.hosts
    ]


def migrate_plan(
    topology: Topology, out: Path, db: Path, host_name: str, *, extra: Sequence[str] = ()
) -> list[Step]:
    """Copy the legacy SQLite file to one host (beside its compose.yaml) and run the
    migration there, in its compose project: `unibus deploy migrate`.

    ``extra`` goes to the migration (``--force``, ``--json``).
    """
    host = next((h for h in topology.hosts if h.name == host_name), None)
    if host is None:
        names = ", ".join(h.name for h in topology.hosts)
        raise ConfigError(f"no host {host_name!r} in the topology: the hosts are {names}")
    db = db.expanduser().absolute()
    if not db.is_file():
        raise ConfigError(f"{db} is not a file: pass the legacy membershipd SQLite file")
    if not (out.expanduser().absolute() / host.name / "compose.yaml").is_file():
        raise ConfigError(
            f"{out}/{host.name}/compose.yaml is missing: run `unibus deploy render` and "
            "`unibus deploy apply` first"
        )
    destination = f"{topology.ssh_user}@{host.public_ip}"
    remote = topology.remote_dir
    compose = (
        f"docker compose --project-directory {remote} -f {remote}/compose.yaml -p unibus "
        "--profile migrate run --rm migrate"
    )
    return [
        Step(
            host.name,
            "create the legacy directory (mode 0700)",
            ("ssh", destination, f"install -d -m 0700 {remote}/{LEGACY_DIR}"),
        ),
        Step(
            host.name,
            "copy the legacy SQLite file (mode kept)",
            ("scp", "-p", str(db), f"{destination}:{remote}/{LEGACY_DIR}/{LEGACY_DB_NAME}"),
        ),
        Step(
            host.name,
            "migrate it into the KV (backup beside it, parity verified)",
            ("ssh", destination, " ".join([compose, *(shlex.quote(a) for a in extra)])),
        ),
    ]


def format_plan(steps: Sequence[Step]) -> list[str]:
    return [f"[{step.host}] {step.what}:\n    {step.shell()}" for step in steps]
