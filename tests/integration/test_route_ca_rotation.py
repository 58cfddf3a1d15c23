"""Rotating the route CA on a running stack (issue 15): stage, switch and retire, each
followed by a rollout, while a client connects every 200 ms. No connect is refused and the
cluster is whole after every rollout (a rollout only goes on with a full mesh); at the end
every node presents a route certificate from the new CA and trusts it alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.harness import (
    admin_target,
    bounded,
    connect_once,
    probing,
    run_cli,
    running_up,
)
from unibus.stack.layout import StackLayout

pytestmark = pytest.mark.timeout(1200)


def _bundle(layout: StackLayout) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(layout.certs.route_ca_cert.read_bytes())


async def test_a_route_ca_rotation_keeps_the_cluster_whole_and_refuses_no_connect(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root):
        target = admin_target(root)

        (old,) = _bundle(layout)
        phases = []
        async with bounded(1100), probing(lambda: connect_once(target), every=0.2) as outcomes:
            for step in ("stage", "switch", "retire"):
                code, out, err = await run_cli("route-ca", step, "--dir", str(root), "--json")
                assert code == 0, err
                phases.append(json.loads(out)["phase"])
                code, _, err = await run_cli("rollout", "--dir", str(root), timeout=600)
                assert code == 0, f"rollout after {step}: {err[-2000:]}"

        assert phases == ["staged", "switched", "steady"]
        refused = [repr(e) for _, e in outcomes if e is not None]
        assert len(outcomes) > 50, "the probe barely ran"
        assert refused == [], f"connects refused during the rotation: {refused[:5]}"
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
