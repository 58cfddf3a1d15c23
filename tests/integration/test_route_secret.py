"""Rotating the route secret (issue 15): a new secret, every node reloaded at once. The
routes re-authenticate (a route may be made again within moments) and the full mesh is
back; clients go on (a connection the reload closes is made again, never refused, and
publishing goes on); a node that presents the old secret afterwards is refused by its
peers, and one that presents the new one joins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import (
    bounded,
    connect_once,
    eventually,
    probing,
    run_cli,
    running_up,
)
from unibus.core.files import write_private
from unibus.core.sysreq import server_ping
from unibus.stack.routesecret import new_route_secret

pytestmark = pytest.mark.timeout(600)


async def test_a_rotated_route_secret_keeps_routes_and_clients_and_refuses_the_old_one(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    sys_nc = await deployment.stacks.connect(stack, "system")

    async def routes() -> dict[str, int]:
        replies = await server_ping(sys_nc, "ROUTEZ", expected=3, timeout=2.0)
        return {r["server"]["name"]: int(r["data"]["num_routes"]) for r in replies}

    member = await deployment.member("alice")
    room = await member.create_room()
    await room.wait_admitted()
    target = stack.target("internal")

    old = stack.layout.route_secret.read_bytes()
    async with bounded(120), probing(lambda: connect_once(target), every=0.2) as outcomes:
        new_route_secret(stack.layout)
        assert sorted(stack.reload_nodes()) == ["n1", "n2", "n3"]
        await eventually(routes, until=lambda r: r == {"n1": 2, "n2": 2, "n3": 2}, timeout=30)
        await room.publish(b"still routed")

    assert [e for _, e in outcomes if e is not None] == []
    assert member.bus.is_connected
    await room.publish(b"and after it")
    assert stack.layout.route_secret.read_bytes() != old

    # A node presenting the old secret is refused; presenting the new one, it joins.
    new = stack.layout.route_secret.read_bytes()
    stack.stop_node("n2")
    stack.layout.route_secret.unlink()
    write_private(stack.layout.route_secret, old)
    stack.start_node("n2")
    refused = await eventually(
        routes, until=lambda r: r.get("n1") == 1 and r.get("n2", 0) == 0, timeout=30
    )
    assert refused["n3"] == 1
    stack.stop_node("n2")
    stack.layout.route_secret.unlink()
    write_private(stack.layout.route_secret, new)
    stack.start_node("n2")
    await eventually(routes, until=lambda r: r == {"n1": 2, "n2": 2, "n3": 2}, timeout=60)


async def test_unibus_route_secret_rotate_on_a_local_stack_leaves_it_whole(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    async with running_up(root):
        secret = (root / "identities" / "route-secret").read_bytes()

        code, out, err = await run_cli("route-secret", "rotate", "--dir", str(root), "--json")

        assert code == 0, err
        assert json.loads(out) == {"rotated": True, "healthy": True}
        assert (root / "identities" / "route-secret").read_bytes() != secret
        assert "reloaded n1, n2, n3" in err
