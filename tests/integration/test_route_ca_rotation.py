"""Rotating the route CA on a running stack (issue 15): stage, switch and retire, each
followed by a rollout, while a client connects every 200 ms. No connect is refused and the
cluster is whole after every rollout (a rollout only goes on with a full mesh); at the end
every node presents a route certificate from the new CA and trusts it alone, and a route
certificate from the old CA is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.harness import (
    StackFactory,
    eventually,
    rotate_with_rollouts,
    run_cli,
    running_up,
)
from unibus.core.sysreq import server_ping
from unibus.stack.layout import StackLayout
from unibus.stack.routeca import retire, stage, switch

pytestmark = pytest.mark.timeout(1200)


def _bundle(layout: StackLayout) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(layout.certs.route_ca_cert.read_bytes())


async def test_a_route_ca_rotation_keeps_the_cluster_whole_and_refuses_no_connect(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root):
        (old,) = _bundle(layout)
        phases = await rotate_with_rollouts("route-ca", root)
        assert phases == ["staged", "switched", "steady"]
        (new,) = _bundle(layout)
        assert new != old
        for node in ("n1", "n2", "n3"):
            route = x509.load_pem_x509_certificate(layout.certs.route_cert(node).read_bytes())
            route.verify_directly_issued_by(new)
        code, out, err = await run_cli("status", "--dir", str(root), "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["healthy"] is True
        assert all(n["routes"] == 2 and n["route_tls"] for n in status["nodes"])


async def test_after_the_retire_a_route_certificate_from_the_old_ca_is_refused(
    stacks: StackFactory,
) -> None:
    """The same steps, each followed by a restart of every node one at a time; then a node
    presenting its route certificate from before, issued by the old CA, finds no route."""
    stack = await stacks.start(nodes=3)
    certs = stack.layout.certs
    old_route = (certs.route_cert("n2").read_bytes(), certs.route_key("n2").read_bytes())
    sys_nc = await stacks.connect(stack, "system")

    async def routes() -> dict[str, int]:
        replies = await server_ping(sys_nc, "ROUTEZ", expected=3, timeout=2.0)
        return {r["server"]["name"]: int(r["data"]["num_routes"]) for r in replies}

    async def restart_each() -> None:
        for node in stack.spec.node_names:
            stack.stop_node(node)
            stack.start_node(node)
            await eventually(routes, until=lambda r: r == {"n1": 2, "n2": 2, "n3": 2}, timeout=60)

    for step in (stage, switch, retire):
        step(certs)
        await restart_each()

    new_route = (certs.route_cert("n2").read_bytes(), certs.route_key("n2").read_bytes())
    stack.stop_node("n2")
    certs.route_cert("n2").write_bytes(old_route[0])
    certs.route_key("n2").write_bytes(old_route[1])
    stack.start_node("n2")
    refused = await eventually(
        routes, until=lambda r: r.get("n1") == 1 and r.get("n2", 0) == 0, timeout=30
    )
    assert refused["n3"] == 1
    stack.stop_node("n2")
    certs.route_cert("n2").write_bytes(new_route[0])
    certs.route_key("n2").write_bytes(new_route[1])
    stack.start_node("n2")
    await eventually(routes, until=lambda r: r == {"n1": 2, "n2": 2, "n3": 2}, timeout=60)
