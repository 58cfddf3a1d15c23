"""A certificate about to expire is visible: read live from each server (VARZ), a warning
under 30 days, a problem once expired, for ``unibus status``, the rollout gate and
``/healthz``."""

from __future__ import annotations

import dataclasses
import time

from unibus.core.health import NodeStatus, certificate_expiry
from unibus.stack.clusterstate import ClusterState

DAY = 86_400.0


def _node(name: str, expires: float | None) -> NodeStatus:
    return NodeStatus(
        name=name,
        server_id=f"id-{name}",
        routes=2,
        route_tls=True,
        pool_size=3,
        meta_leader="n1",
        jetstream=True,
        tls_required=True,
        auth_required=True,
        version="2.15.1",
        certificate_expires=expires,
    )


def test_the_earliest_of_the_client_and_route_certificates_is_the_nodes_expiry() -> None:
    varz = {
        "tls_cert_not_after": "2029-03-11T01:25:46Z",
        "cluster": {"tls_cert_not_after": "2028-01-01T00:00:00Z"},
    }
    assert certificate_expiry(varz) == 1_830_297_600.0  # 2028-01-01
    assert certificate_expiry({"tls_cert_not_after": "2029-03-11T01:25:46Z"}) == 1_867_886_746.0
    assert certificate_expiry({}) is None
    assert certificate_expiry({"tls_cert_not_after": "not a time"}) is None


def test_a_certificate_within_30_days_is_a_warning_and_an_expired_one_a_problem() -> None:
    now = time.time()
    state = ClusterState(
        expected=3,
        nodes=(_node("n1", now + 400 * DAY), _node("n2", now + 12.5 * DAY), _node("n3", None)),
        assets=(),
    )
    assert state.problems() == []
    (warning,) = state.warnings(now)
    assert warning.startswith("n2: its certificate expires in 12 day(s)")
    assert "unibus certs renew" in warning

    expired = dataclasses.replace(state, nodes=(*state.nodes[:2], _node("n3", now - DAY)))
    assert any(p.startswith("n3: its certificate has expired") for p in expired.problems())
    assert all(not w.startswith("n3") for w in expired.warnings(now))


def test_status_json_lists_the_warnings() -> None:
    now = time.time()
    state = ClusterState(expected=1, nodes=(_node("n1", now + 3 * DAY),), assets=())
    report = state.to_json()
    assert report["warnings"]
    assert report["warnings"][0].startswith("n1: its certificate")
    assert report["nodes"][0]["certificate_expires"] == now + 3 * DAY
