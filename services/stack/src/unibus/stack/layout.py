"""Where a local stack keeps its state, and how its ``stack.json`` profile is built.

Everything lives under one directory (default ``./.unibus``) so state survives restarts
and ``--dir`` is all another command needs to find the stack.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unibus.client.profile import NodeInfo, StackInfo, profile_path
from unibus.core.errors import ConfigError
from unibus.core.nkeys import read_seed_file
from unibus.stack.certs import CertLayout

DEFAULT_DIR: Final = Path(".unibus")
DEFAULT_BASE_PORT: Final = 4222


@dataclass(frozen=True)
class NodePorts:
    client: int
    route: int
    monitor: int
    callout_metrics: int
    api: int
    api_metrics: int


@dataclass(frozen=True)
class StackSpec:
    """The shape of a local stack: how many nodes, on which address and ports."""

    ports: tuple[NodePorts, ...]
    bind: str = "127.0.0.1"
    cluster_name: str = "unibus"

    def __post_init__(self) -> None:
        if len(self.ports) not in (1, 3):
            raise ConfigError("a local stack has 1 or 3 nodes", setting="--nodes")
        if self.bind in ("0.0.0.0", "::", ""):  # noqa: S104 - refusing wildcards, not binding
            raise ConfigError(
                "--bind needs the concrete address peers and clients reach this machine on "
                "(for example the LAN address), not a wildcard",
                setting="--bind",
            )

    @classmethod
    def from_base_port(cls, nodes: int, base_port: int, bind: str = "127.0.0.1") -> StackSpec:
        """Clients at base+i; routes +10, monitoring +20, callout metrics +30, API +40,
        API metrics +50."""
        if not 1 <= base_port <= 65535 - 60:
            raise ConfigError(f"--base-port {base_port} leaves no room for 60 ports")
        return cls(
            ports=tuple(
                NodePorts(
                    client=base_port + i,
                    route=base_port + 10 + i,
                    monitor=base_port + 20 + i,
                    callout_metrics=base_port + 30 + i,
                    api=base_port + 40 + i,
                    api_metrics=base_port + 50 + i,
                )
                for i in range(nodes)
            ),
            bind=bind,
        )

    @classmethod
    def with_free_ports(cls, nodes: int, bind: str = "127.0.0.1") -> StackSpec:
        """Ports the OS reports free right now (for tests)."""
        per_node = len(dataclasses.fields(NodePorts))
        free = free_ports(per_node * nodes, host=bind)
        return cls(
            ports=tuple(NodePorts(*free[per_node * i : per_node * (i + 1)]) for i in range(nodes)),
            bind=bind,
        )

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"n{i + 1}" for i in range(len(self.ports)))

    @property
    def size(self) -> int:
        return len(self.ports)


def free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class StackLayout:
    """Every path of a local stack, derived from its directory."""

    root: Path

    @classmethod
    def at(cls, root: Path) -> StackLayout:
        return cls(root.expanduser().absolute())

    @property
    def stack_file(self) -> Path:
        return profile_path(self.root)

    @property
    def certs(self) -> CertLayout:
        return CertLayout.at(self.root / "certs")

    @property
    def identities(self) -> Path:
        return self.root / "identities"

    def identity(self, name: str) -> Path:
        return self.identities / f"{name}.seed"

    @property
    def route_secret(self) -> Path:
        return self.identities / "route-secret"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def node_config(self, node: str) -> Path:
        return self.node_dir(node) / "nats-server.conf"

    def node_store(self, node: str) -> Path:
        return self.node_dir(node) / "jetstream"

    def node_log(self, node: str) -> Path:
        return self.node_dir(node) / "nats-server.log"

    def node_pid(self, node: str) -> Path:
        return self.node_dir(node) / "nats-server.pid"

    def service_log(self, service: str, node: str) -> Path:
        return self.node_dir(node) / f"{service}.log"

    def service_pid(self, service: str, node: str) -> Path:
        return self.node_dir(node) / f"{service}.pid"

    @property
    def up_pid(self) -> Path:
        return self.root / "up.pid"

    def ensure(self) -> None:
        for path in (self.root, self.identities, self.root / "nodes"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)


def stack_info(
    layout: StackLayout, nodes: Sequence[NodeInfo], api_urls: Sequence[str], *, replicas: int
) -> StackInfo:
    """``stack.json`` for a stack whose identities live in ``layout``: nodes in order."""
    return StackInfo(
        nats_urls=[node.client_url for node in nodes],
        api_urls=list(api_urls),
        ca_file=str(layout.certs.client_ca_cert),
        admin_seed_file=str(layout.identity("admin")),
        admin_key=read_seed_file(layout.identity("admin")).public_key,
        internal_id_file=str(layout.identity("internal")),
        sys_id_file=str(layout.identity("system")),
        replicas=replicas,
        nodes=list(nodes),
    )
