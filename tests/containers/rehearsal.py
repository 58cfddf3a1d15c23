"""A rehearsal of the three-VPS deployment: `deploy render`'s per-host output, run as three
compose projects with their own addresses (issue 13).

On three VPS each host runs its own ``compose.yaml`` (``unibus deploy render``): the node
publishes 4222 on the host's public and private address and 6222 on the route address,
the API 8470 on the public one; the services reach their own node by container name and
the peers at their route addresses. Here, on one Docker engine:

* two bridge networks per rehearsal stand for the internet and the private network, each
  on a subnet chosen free at run time; the topology gives every host a static address in
  each (one network only when routes run over the public addresses);
* each host's rendered directory runs as its own compose project, unedited, with an
  override file (compose ``-f`` a second file) that adds a ``vps`` container holding the
  host's addresses and puts every service of the host into its network namespace. The
  real files publish ports on the host's addresses; here no such address exists on the
  engine's machine (publishing on it fails), and the node and its services listen in the
  ``vps`` namespace instead, which is what publishing on a VPS amounts to: the address
  answers on 4222, 6222 and 8470 (and the metrics ports). The override therefore resets
  ``ports``. One difference
  remains: a VPS publishes 6222 on the route address only; here the route port answers on
  both (a firewall matter, outside what the rehearsal proves);
* the test process reaches the public addresses directly (bridge networks are routed on
  the engine's machine), so ``OUT/_material/stack.json`` works as an operator's copy does.

Every network, container and volume carries the ``unibus-ct-`` prefix and is removed by
:meth:`Rehearsal.down`.
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers.harness import DOCKER, IMAGES, PROJECT_PREFIX, docker, eventually
from unibus.client.profile import StackInfo, read_stack_info
from unibus.stack.deploy import MATERIAL_DIR, Topology
from unibus.stack.drivers import ComposeNode
from unibus.stack.topology import SERVICES

HOSTS = ("n1", "n2", "n3")
# Private /24s are picked from here, skipping what the engine or the machine already
# routes; away from Docker's default pools (172.17-31/16, 192.168/16).
_SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
_NETWORK_ATTEMPTS = 24
_UP_TIMEOUT = 420.0
"""Cold start of all three projects: provisioning waits for a majority of nodes."""
# The vps container only holds the network namespace; it exits at once on SIGTERM.
_HOLD = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"


class _Reset:
    """Compose's ``!reset`` tag: an override that removes a list instead of extending it."""


class _OverrideDumper(yaml.SafeDumper):
    pass


_OverrideDumper.add_representer(
    _Reset, lambda dumper, _value: dumper.represent_sequence("!reset", [])
)


@dataclass(frozen=True)
class Network:
    role: str
    """``public`` or ``private``."""
    name: str
    subnet: ipaddress.IPv4Network

    def address(self, index: int) -> str:
        # .1 is the gateway (the engine's machine); hosts from .11 up.
        return str(self.subnet.network_address + 11 + index)


def _routed_subnets() -> list[ipaddress.IPv4Network]:
    """Subnets the engine's networks and the machine's routes already use."""
    used: list[ipaddress.IPv4Network] = []
    ids = docker("network", "ls", "-q").stdout.split()
    if ids:
        inspect = docker("network", "inspect", *ids)
        for network in json.loads(inspect.stdout or "[]"):
            for config in (network.get("IPAM") or {}).get("Config") or []:
                subnet = ipaddress.ip_network(config.get("Subnet", ""), strict=False)
                if isinstance(subnet, ipaddress.IPv4Network):
                    used.append(subnet)
    ip = shutil.which("ip")
    routes = ""
    if ip is not None:
        routes = subprocess.run(
            [ip, "-4", "route", "show"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    for line in routes.splitlines():
        target = line.split(" ", 1)[0]
        if target != "default":
            try:
                used.append(ipaddress.IPv4Network(target, strict=False))
            except ValueError:
                continue
    return used


def create_network(name: str, role: str) -> Network:
    """A bridge network on a free /24; another run may take the same subnet between the
    look and the create, so an overlap is retried with another candidate."""
    candidates = list(_SUBNET_POOL.subnets(new_prefix=24))
    random.shuffle(candidates)
    used = _routed_subnets()
    errors: list[str] = []
    for subnet in [c for c in candidates if not any(c.overlaps(u) for u in used)][
        :_NETWORK_ATTEMPTS
    ]:
        gateway = str(subnet.network_address + 1)
        result = docker(
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            str(subnet),
            "--gateway",
            gateway,
            name,
        )
        if result.returncode == 0:
            return Network(role=role, name=name, subnet=subnet)
        errors.append(result.stderr.strip())
        if "overlap" not in result.stderr:
            break
    pytest.fail(f"could not create network {name}: {errors[-3:]}")


def _topology_text(routes: str, networks: dict[str, Network]) -> str:
    lines = [
        "[cluster]",
        f'routes = "{routes}"',
        f'image = "{IMAGES["tools"]}"',
        f'authcallout_image = "{IMAGES["authcallout"]}"',
        f'controlplane_image = "{IMAGES["controlplane"]}"',
    ]
    for index, host in enumerate(HOSTS):
        lines += ["", "[[hosts]]", f'name = "{host}"']
        lines.append(f'public_ip = "{networks["public"].address(index)}"')
        if "private" in networks:
            lines.append(f'private_ip = "{networks["private"].address(index)}"')
        lines.append(f'hostname = "{host}.rehearsal.test"')
    return "\n".join(lines) + "\n"


def _remove_networks(prefix: str) -> list[str]:
    """Remove the rehearsal's networks; returns those that would not go."""
    found = docker("network", "ls", "-q", "--filter", f"name={prefix}-").stdout.split()
    return [network for network in found if docker("network", "rm", network).returncode != 0]


@dataclass
class Rehearsal:
    """Three hosts' rendered directories, each running as its own compose project."""

    root: Path
    prefix: str
    networks: dict[str, Network]
    topology: Topology
    up_seconds: float = 0.0

    # -- setup ------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, *, routes: str = "private") -> Rehearsal:
        """Networks, a topology on them, ``unibus deploy render`` and one override per host.

        Nothing is left behind when this fails: the networks made so far are removed.
        """
        prefix = PROJECT_PREFIX + secrets.token_hex(4)
        roles = ("public", "private") if routes == "private" else ("public",)
        try:
            networks = {role: create_network(f"{prefix}-{role}", role) for role in roles}
            topology_file = root / "topology.toml"
            topology_file.write_text(_topology_text(routes, networks))
            rehearsal = cls(
                root=root, prefix=prefix, networks=networks, topology=Topology.load(topology_file)
            )
            render = rehearsal.cli(
                "deploy", "render", "--topology", str(topology_file), "--out", str(rehearsal.out)
            )
            assert render.returncode == 0, f"deploy render failed: {render.stderr[-2000:]}"
            for host in HOSTS:
                rehearsal.override_file(host).write_text(
                    yaml.dump(rehearsal.override(host), Dumper=_OverrideDumper, sort_keys=False)
                )
        except BaseException:
            _remove_networks(prefix)
            raise
        return rehearsal

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def material(self) -> Path:
        """The operator's copy: CA keys, admin seed, ``stack.json`` (public addresses)."""
        return self.out / MATERIAL_DIR

    def project(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def override_file(self, host: str) -> Path:
        # Beside the host directories, not in them: OUT/<host>/ stays what `render` wrote.
        return self.root / f"rehearsal-{host}.yaml"

    def override(self, host: str) -> dict[str, Any]:
        """The compose override of one host: its addresses, held by a ``vps`` container."""
        spec = next(h for h in self.topology.hosts if h.name == host)
        addresses = {"public": spec.public_ip, "private": spec.private_ip}

        def joined(**extra: Any) -> dict[str, Any]:
            return {"network_mode": "service:vps", **extra}

        return {
            "services": {
                "vps": {
                    "image": IMAGES["tools"],
                    "command": ["python", "-c", _HOLD],
                    "restart": "unless-stopped",
                    "networks": {role: {"ipv4_address": addresses[role]} for role in self.networks},
                    # The services dial their own node by its container name, as on a VPS
                    # (there through the project network); here the node shares their
                    # namespace, so the name is the loopback.
                    "extra_hosts": [f"{host}:127.0.0.1"],
                },
                host: joined(ports=_Reset()),
                "provision": joined(),
                "migrate": joined(),
                "authcallout": joined(ports=_Reset()),
                "controlplane": joined(ports=_Reset()),
                "natsexporter": joined(ports=_Reset()),
            },
            "networks": {
                role: {"name": network.name, "external": True}
                for role, network in self.networks.items()
            },
        }

    # -- docker compose ---------------------------------------------------------------------
    def compose_argv(self, host: str) -> tuple[str, ...]:
        """``docker compose`` selecting one host's project: its rendered file, the override."""
        directory = self.out / host
        return (
            DOCKER,
            "compose",
            "--project-directory",
            str(directory),
            "-f",
            str(directory / "compose.yaml"),
            "-f",
            str(self.override_file(host)),
            "-p",
            self.project(host),
        )

    def compose(
        self, host: str, *args: str, timeout: float = 240.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose_argv(host), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def compose_nodes(self) -> list[ComposeNode]:
        """Each host's node as :class:`ComposeDriver` drives it: its own project, locally."""
        return [
            ComposeNode(
                name=host, compose=self.compose_argv(host), node_service=host, services=SERVICES
            )
            for host in HOSTS
        ]

    def up(self) -> None:
        """Start the three projects at once, as three VPS coming up: each one's
        provisioning waits for a majority of the nodes, so one at a time would never end."""
        began = time.monotonic()
        started = {
            host: subprocess.Popen(
                [
                    *self.compose_argv(host),
                    "up",
                    "-d",
                    "--no-build",
                    "--wait",
                    "--wait-timeout",
                    str(int(_UP_TIMEOUT - 30)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host in HOSTS
        }
        deadline = began + _UP_TIMEOUT
        failures: list[str] = []
        for host, process in started.items():
            try:
                _, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
                failures.append(f"{host}: up did not finish within {_UP_TIMEOUT:g}s")
                continue
            if process.returncode != 0:
                logs = self.compose(host, "logs", "--no-color", "--tail", "25").stdout
                failures.append(f"{host}: {err[-1500:]}\n{logs[-4000:]}")
        if failures:
            pytest.fail("the rehearsal did not start:\n" + "\n".join(failures))
        self.up_seconds = time.monotonic() - began

    def down(self) -> None:
        """Remove every container, volume and network of the rehearsal, whatever state it
        is in; a failure here is reported, never left silently behind."""
        for host in HOSTS:
            self.compose(host, "down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)
            label = f"label=com.docker.compose.project={self.project(host)}"
            containers = docker("ps", "-aq", "--filter", label).stdout.split()
            if containers:
                docker("rm", "-f", "-v", *containers)
            volumes = docker("volume", "ls", "-q", "--filter", label).stdout.split()
            if volumes:
                docker("volume", "rm", "-f", *volumes)
        leftovers = _remove_networks(self.prefix)
        if leftovers:
            pytest.fail(f"rehearsal networks left behind: {leftovers}")

    # -- the operator's view ----------------------------------------------------------------
    @property
    def info(self) -> StackInfo:
        return read_stack_info(self.material)

    def cli(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """The ``unibus`` command of the host venv, as the operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "unibus.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--dir", str(self.material), "--json", timeout=30)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def wait_healthy(self, *, timeout: float = 120.0) -> dict[str, Any]:
        return eventually(
            self.status,
            until=lambda s: bool(s["healthy"]),
            timeout=timeout,
            interval=1.0,
            what=f"rehearsal {self.prefix} healthy (3 nodes routed, every asset R3 and current)",
        )
