"""Route admission (secret, separate route CA, mutual TLS) and the monitoring toggle."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import StackFactory, eventually
from unibus.core.files import write_private
from unibus.stack.certs import CertificateAuthority, self_signed_leaf, write_pem_pair
from unibus.stack.launcher import LocalStack, nats_server_binary
from unibus.stack.layout import free_ports
from unibus.stack.natsconf import (
    ClientTLS,
    ClusterConfig,
    NatsToggles,
    NodeConfig,
    RouteTLS,
    render_node_config,
    write_node_config,
)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
        data: dict[str, Any] = json.loads(response.read())
        return data


async def _routes_of(monitor_port: int) -> int:
    data = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{monitor_port}/routez")
    return int(data.get("num_routes", 0))


@asynccontextmanager
async def extra_node(
    stack: LocalStack, tmp: Path, *, adjust: Callable[[ClusterConfig], ClusterConfig]
) -> AsyncIterator[int]:
    """A fourth nats-server pointed at the cluster's routes; yields its monitor port.

    ``adjust`` changes its cluster settings (secret, certificates) from a correct baseline.
    """
    client, route, monitor = free_ports(3)
    certs = stack.layout.certs
    baseline = ClusterConfig(
        name=stack.spec.cluster_name,
        listen_host="127.0.0.1",
        listen_port=route,
        advertise=f"127.0.0.1:{route}",
        routes=tuple(f"127.0.0.1:{p.route}" for p in stack.spec.ports),
        secret_file=stack.layout.route_secret,
        tls=RouteTLS(
            cert_file=certs.route_cert("n4"),
            key_file=certs.route_key("n4"),
            ca_file=certs.route_ca_cert,
        ),
    )
    node = NodeConfig(
        server_name="n4",
        listen_host="127.0.0.1",
        listen_port=client,
        store_dir=tmp / "n4" / "jetstream",
        client_tls=ClientTLS(cert_file=certs.server_cert("n1"), key_file=certs.server_key("n1")),
        auth=stack.auth_identities(),
        cluster=adjust(baseline),
        monitor_port=monitor,
        log_file=tmp / "n4" / "nats-server.log",
    )
    config = tmp / "n4" / "nats-server.conf"
    write_node_config(config, render_node_config(node, NatsToggles(monitor=True)))
    proc = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: _routes_of(monitor), until=lambda n: n >= 0, what="n4 monitor")
        yield monitor
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _issue_n4_route_cert(stack: LocalStack, ca_cert: Path, ca_key: Path) -> None:
    certs = stack.layout.certs
    cert, key = CertificateAuthority.load(ca_cert, ca_key).issue(
        "n4", ips=["127.0.0.1"], dns_names=["n4", "localhost"], server=True, client=True
    )
    write_pem_pair(cert, key, certs.route_cert("n4"), certs.route_key("n4"), overwrite=True)


async def _never_routes(monitor_port: int, *, window: float = 4.0) -> None:
    """Observe the node for ``window`` seconds (its route retries every second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while loop.time() < deadline:
        assert await _routes_of(monitor_port) == 0
        await asyncio.sleep(0.2)


async def test_a_correctly_configured_extra_node_does_form_routes(
    stacks: StackFactory, tmp_path: Path
) -> None:
    """Positive control: the refusals below are caused by what each test changes."""
    stack = await stacks.start(nodes=3, provision=False)
    certs = stack.layout.certs
    _issue_n4_route_cert(stack, certs.route_ca_cert, certs.route_ca_key)

    async with extra_node(stack, tmp_path, adjust=lambda c: c) as monitor:
        await eventually(lambda: _routes_of(monitor), until=lambda n: n == 3, what="3 routes")


async def test_a_node_with_the_wrong_route_secret_forms_no_route(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack = await stacks.start(nodes=3, provision=False)
    certs = stack.layout.certs
    _issue_n4_route_cert(stack, certs.route_ca_cert, certs.route_ca_key)
    wrong = tmp_path / "wrong-secret"
    write_private(wrong, b"this-is-not-the-cluster-secret-0123456789\n")

    async with extra_node(stack, tmp_path, adjust=lambda c: replace(c, secret_file=wrong)) as mon:
        await _never_routes(mon)


async def test_a_node_presenting_a_client_ca_certificate_on_the_route_port_forms_no_route(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack = await stacks.start(nodes=3, provision=False)
    certs = stack.layout.certs
    # Signed by the data-plane client CA: valid for clients, never for routes.
    _issue_n4_route_cert(stack, certs.client_ca_cert, certs.client_ca_key)

    async with extra_node(stack, tmp_path, adjust=lambda c: c) as monitor:
        await _never_routes(monitor)


async def test_a_node_with_a_self_signed_route_certificate_forms_no_route(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack = await stacks.start(nodes=3, provision=False)
    certs = stack.layout.certs
    cert, key = self_signed_leaf("n4", ips=["127.0.0.1"], dns_names=["n4"])
    write_pem_pair(cert, key, certs.route_cert("n4"), certs.route_key("n4"), overwrite=True)

    async with extra_node(stack, tmp_path, adjust=lambda c: c) as monitor:
        await _never_routes(monitor)


async def test_monitor_toggle_opens_varz_on_loopback_only(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3, provision=False, environ={"UNIBUS_NATS_MONITOR": "1"})

    for ports in stack.spec.ports:
        varz = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{ports.monitor}/varz")
        assert varz["http_host"] == "127.0.0.1"
        assert varz["http_port"] == ports.monitor
        assert varz["server_name"] in stack.spec.node_names


async def test_without_the_monitor_toggle_the_monitoring_port_is_closed(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, provision=False)

    for ports in stack.spec.ports:
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(_get_json, f"http://127.0.0.1:{ports.monitor}/varz")
