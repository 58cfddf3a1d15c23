"""When a node may be replaced (rebuilt empty by its peers), and what a replacement runs."""

from __future__ import annotations

import dataclasses

from unibus.core.health import NodeStatus
from unibus.core.provisioning import AssetKind, AssetStatus
from unibus.stack.clusterstate import ClusterState
from unibus.stack.drivers import ComposeDriver, ComposeNode, compose_nodes
from unibus.stack.replace import ReplaceRefusedError, replace_refusals


def _node(name: str, *, meta: str | None = "n1", routes: int = 2) -> NodeStatus:
    return NodeStatus(
        name=name,
        server_id=f"id-{name}",
        routes=routes,
        route_tls=True,
        pool_size=3,
        meta_leader=meta,
        jetstream=True,
        tls_required=True,
        auth_required=True,
        version="2.15.1",
    )


def _asset(name: str, *, leader: str | None = "n1", current: int = 2) -> AssetStatus:
    return AssetStatus(
        name=name,
        kind=AssetKind.STREAM,
        replicas=3,
        leader=leader,
        followers_current=current,
        followers=2,
        messages=7,
        degraded=leader is None or current < 2,
    )


def _whole() -> ClusterState:
    return ClusterState(
        expected=3,
        nodes=(_node("n1"), _node("n2"), _node("n3")),
        assets=(_asset("history", leader="n2"), _asset("users", leader="n1")),
    )


def _without_n3(*assets: AssetStatus) -> ClusterState:
    """n3 lost: the others see one route each, its replicas not current."""
    return ClusterState(
        expected=3,
        nodes=(_node("n1", routes=1), _node("n2", routes=1)),
        assets=assets or (_asset("history", leader="n2", current=1), _asset("users", current=1)),
    )


def test_a_lost_node_is_replaceable_when_the_two_others_lead_every_asset_with_a_current_copy() -> (
    None
):
    state = _without_n3()
    assert state.problems(), "a cluster missing a node is degraded"
    assert replace_refusals(state, "n3", wipe=False) == []
    assert replace_refusals(state, "n3", wipe=True) == []


def test_a_node_that_answers_is_not_lost_and_is_replaced_only_when_asked_to_wipe() -> None:
    refusals = replace_refusals(_whole(), "n3", wipe=False)
    assert len(refusals) == 1
    assert refusals[0].startswith("n3 answers: it is not lost")
    assert "unibus rollout" in refusals[0]
    assert "--wipe" in refusals[0]
    assert replace_refusals(_whole(), "n3", wipe=True) == []


def test_wiping_a_running_node_needs_a_healthy_cluster_or_it_could_take_quorum_with_it() -> None:
    lagging = dataclasses.replace(_whole(), assets=(_asset("history", current=1),))
    refusals = replace_refusals(lagging, "n3", wipe=True)
    assert len(refusals) == 1
    assert refusals[0].startswith("with n3 running, the cluster must be healthy first: history")


def test_with_only_one_other_node_answering_nothing_can_be_rebuilt() -> None:
    state = ClusterState(expected=3, nodes=(_node("n1", routes=0),), assets=())
    refusals = replace_refusals(state, "n3", wipe=True)
    assert any("only 1 of the other 2 nodes answer" in r for r in refusals), refusals
    assert any("restore from a backup" in r for r in refusals), refusals


def test_an_asset_without_a_leader_or_a_current_copy_refuses_the_replacement() -> None:
    state = _without_n3(
        _asset("history", leader=None, current=0),
        _asset("users", leader="n3"),
        _asset("rooms", leader="n1", current=0),
    )
    refusals = replace_refusals(state, "n3", wipe=False)
    assert any(r.startswith("history:") for r in refusals), refusals
    assert "users: led by n3, which does not answer" in refusals
    assert any(r.startswith("too few current replicas to rebuild from: rooms") for r in refusals)


def test_a_node_that_sees_no_meta_leader_refuses_the_replacement() -> None:
    state = dataclasses.replace(_without_n3(), nodes=(_node("n1", meta=None), _node("n2")))
    assert replace_refusals(state, "n3", wipe=False) == ["n1: sees no JetStream meta leader"]


def test_a_single_node_has_no_peers_to_rebuild_from() -> None:
    state = ClusterState(expected=1, nodes=(), assets=())
    (refusal,) = replace_refusals(state, "n1", wipe=True)
    assert "no peers to rebuild n1 from" in refusal


def test_a_refusal_says_nothing_was_done() -> None:
    error = ReplaceRefusedError("n3", ["n1: sees no JetStream meta leader"])
    assert str(error) == (
        "refusing to replace n3: n1: sees no JetStream meta leader. Nothing was done"
    )


def test_a_compose_wipe_removes_the_node_container_then_its_own_data_volume_only() -> None:
    driver = ComposeDriver(compose_nodes(["docker", "compose", "-f", "compose.yaml"], ["n1", "n2"]))
    steps = driver.wipe_steps("n2")
    assert steps[0] == "docker compose -f compose.yaml rm --stop --force n2"
    assert steps[1].startswith("docker volume rm the project's 'n2-data' volume")
    assert steps[1].endswith("on this machine")


def test_a_remote_wipe_and_staging_run_on_the_node_host_only() -> None:
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
    assert driver.wipe_steps("n3")[0] == (
        "ssh -o BatchMode=yes root@203.0.113.12 "
        "'docker compose -p unibus -f /opt/unibus/compose.yaml rm --stop --force n3'"
    )
    assert "'nats-data' volume" in driver.wipe_steps("n3")[1]
    assert driver.wipe_steps("n3")[1].endswith("on root@203.0.113.12")
    (stage,) = driver.prepare_steps(("n3",))
    assert stage.startswith("ssh -o BatchMode=yes root@203.0.113.12 ")
    assert stage.endswith("run --rm --no-deps stage'")
