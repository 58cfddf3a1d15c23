"""What makes a cluster healthy enough to touch, and how a rollout orders and names its work."""

from __future__ import annotations

import dataclasses

from unibus.core.health import NodeStatus
from unibus.core.provisioning import AssetKind, AssetStatus
from unibus.stack.clusterstate import ClusterState
from unibus.stack.drivers import ComposeDriver, ComposeNode
from unibus.stack.rollout import RolloutRefusedError, order_nodes


def _node(name: str, *, routes: int = 2, meta: str | None = "n1", tls: bool = True) -> NodeStatus:
    return NodeStatus(
        name=name,
        server_id=f"id-{name}",
        routes=routes,
        route_tls=tls,
        pool_size=3,
        meta_leader=meta,
        jetstream=True,
        tls_required=True,
        auth_required=True,
        version="2.15.1",
    )


def _asset(
    name: str, *, leader: str | None = "n1", current: int = 2, replicas: int = 3
) -> AssetStatus:
    return AssetStatus(
        name=name,
        kind=AssetKind.KV,
        replicas=replicas,
        leader=leader,
        followers_current=current,
        followers=replicas - 1,
        messages=0,
        degraded=leader is None or current < replicas - 1 or replicas < 3,
    )


def _healthy() -> ClusterState:
    return ClusterState(
        expected=3,
        nodes=(_node("n1"), _node("n2"), _node("n3")),
        assets=(_asset("users", leader="n2"), _asset("rooms", leader="n3")),
    )


def test_a_whole_cluster_is_healthy_and_knows_its_meta_leader_and_leaderships() -> None:
    state = _healthy()
    assert state.problems() == []
    assert state.healthy
    assert state.meta_leader == "n1"
    assert state.leaderships("n2") == ["users"]


def test_a_missing_node_a_broken_mesh_and_a_lagging_asset_are_each_named() -> None:
    state = dataclasses.replace(
        _healthy(),
        nodes=(_node("n1"), _node("n2", routes=0)),
        assets=(_asset("users", current=1), _asset("rooms", leader=None)),
    )
    problems = state.problems()
    assert "2 of 3 nodes answer" in problems
    assert "n2: 0 of 2 routes up" in problems
    assert any(p.startswith("users:") and "DEGRADED" in p for p in problems)
    assert any(p.startswith("rooms:") and "leader=-" in p for p in problems)
    assert not state.healthy


def test_routes_without_mutual_tls_and_no_meta_leader_are_problems() -> None:
    state = dataclasses.replace(
        _healthy(), nodes=(_node("n1", tls=False), _node("n2", meta=None), _node("n3"))
    )
    assert state.problems() == [
        "n1: routes without mutual TLS",
        "n2: sees no JetStream meta leader",
    ]


def test_a_node_on_a_nats_server_older_than_the_floor_is_a_problem() -> None:
    old = dataclasses.replace(_node("n3"), version="2.14.3")
    state = dataclasses.replace(_healthy(), nodes=(_node("n1"), _node("n2"), old))
    assert state.problems() == [
        "n3: nats-server 2.14.3 is older than 2.14.4 (it lacks auth-callout fixes): upgrade it"
    ]


def test_an_asset_led_by_a_node_that_does_not_answer_is_a_problem() -> None:
    state = dataclasses.replace(
        _healthy(),
        nodes=(_node("n1"), _node("n2")),
        expected=2,
    )
    assert "rooms: led by n3, which does not answer" in state.problems()


def test_the_meta_leader_rolls_last_and_every_node_once() -> None:
    assert order_nodes(["n1", "n2", "n3"], "n2") == ["n1", "n3", "n2"]
    assert order_nodes(["n1", "n2", "n3"], None) == ["n1", "n2", "n3"]


def test_a_refusal_names_every_problem_and_what_to_run() -> None:
    error = RolloutRefusedError(["2 of 3 nodes answer", "users: DEGRADED"])
    assert "2 of 3 nodes answer; users: DEGRADED" in str(error)
    assert "unibus status" in str(error)


def test_a_remote_node_is_stopped_and_started_through_ssh_with_its_own_compose() -> None:
    compose = ("docker", "compose", "-p", "unibus", "-f", "/opt/unibus/compose.yaml")
    driver = ComposeDriver(
        [
            ComposeNode(
                name=name,
                compose=compose,
                node_service=name,
                services=("authcallout", "controlplane"),
                ssh=f"root@203.0.113.{10 + i}",
            )
            for i, name in enumerate(("n1", "n2", "n3"))
        ]
    )
    steps = driver.steps("n2")
    assert steps[0] == (
        "ssh -o BatchMode=yes root@203.0.113.11 "
        "'docker compose -p unibus -f /opt/unibus/compose.yaml stop n2'"
    )
    assert steps[-1].endswith("up -d --no-deps n2 authcallout controlplane'")
    # every host stages its own material once
    assert len(driver.prepare_steps()) == 3
    assert all("run --rm --no-deps stage" in step for step in driver.prepare_steps())


def test_nodes_of_one_compose_project_stage_once() -> None:
    compose = ("docker", "compose", "-f", "compose.yaml")
    driver = ComposeDriver(
        [
            ComposeNode(name=n, compose=compose, node_service=n, services=(f"authcallout-{n}",))
            for n in ("n1", "n2", "n3")
        ]
    )
    assert driver.prepare_steps() == ["docker compose -f compose.yaml run --rm --no-deps stage"]
    assert driver.steps("n1")[1] == "docker compose -f compose.yaml stop authcallout-n1"
