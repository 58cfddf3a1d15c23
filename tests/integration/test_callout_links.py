"""Where auth requests are answered: on the node that received them, by any instance.

A request a server sends across a route to a node that has died or hangs is lost, and the
client is refused once the server's callout timeout runs out. These tests stand in for such
a node with members of the callout's queue group that never answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import cast

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.integration.harness import (
    StackFactory,
    connect_once,
    eventually,
    probing,
    user_record,
)
from unibus.core import naming
from unibus.core.connect import NatsTarget
from unibus.core.kvstore import JetStreamStore
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file
from unibus.core.sysreq import server_ping
from unibus.stack.launcher import LocalStack
from unibus.stack.leadership import move_leaders

VIEW_CONNECTION = "unibus-authcallout-internal"
DECIDING_STREAMS = (naming.kv_stream(naming.USERS_BUCKET), naming.kv_stream(naming.ROOMS_BUCKET))


async def _member(stacks: StackFactory, stack: LocalStack, handle: str) -> KeyPair:
    store = await JetStreamStore.open(await stacks.connect(stack))
    member = KeyPair.generate(Prefix.USER)
    await store.add_user(user_record(member.public_key, handle))
    return member


def _target(stack: LocalStack, who: KeyPair, node: str) -> NatsTarget:
    path = stack.layout.root / f"{who.public_key[:12]}.seed"
    if not path.exists():
        write_seed_file(path, who.seed)
    return NatsTarget(
        urls=(stack.client_url(node),),
        ca_file=stack.layout.certs.client_ca_cert,
        identity_file=path,
    )


async def _admitted(target: NatsTarget) -> bool:
    try:
        await connect_once(target)
    except Exception:  # noqa: BLE001 - refused, or the view does not know the user yet
        return False
    return True


async def _views_per_node(system: NATS) -> dict[str, int]:
    """How many callout views are connected to each node (by server name)."""
    query = msgspec.json.encode({"acc": naming.BUS_ACCOUNT, "limit": 1000})
    replies = await server_ping(system, "CONNZ", expected=3, body=query)
    return {
        reply["server"]["name"]: sum(
            1 for conn in reply["data"]["connections"] if conn.get("name") == VIEW_CONNECTION
        )
        for reply in replies
    }


async def test_members_behind_a_route_never_receive_a_nodes_auth_requests(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    member = await _member(stacks, stack, "local")
    at_n1 = _target(stack, member, "n1")
    await eventually(lambda: _admitted(at_n1), until=bool, what="the member admitted")

    async def never_answer(msg: Msg) -> None:
        del msg  # what a dead or hung node does with the request

    for node in ("n2", "n3"):
        black_hole = await stacks.connect(stack, "callout", nodes=(node,))
        await black_hole.subscribe(
            naming.CALLOUT_SUBJECT, queue=naming.CALLOUT_QUEUE, cb=never_answer
        )
        await black_hole.flush()

    # A server picking among every member of the cluster would send about two in five of
    # these to a member that never answers.
    outcomes = await asyncio.gather(
        *(connect_once(at_n1) for _ in range(12)), return_exceptions=True
    )

    refused = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    assert refused == []


async def test_one_instance_serves_every_node_and_a_node_that_returns(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    member = await _member(stacks, stack, "served")
    for node in ("n2", "n3"):
        stack.stop_service("authcallout", node)

    for node in stack.spec.node_names:
        target = _target(stack, member, node)
        await eventually(lambda t=target: _admitted(t), until=bool, what=f"admitted on {node}")

    stack.stop_node("n2", kill=True)
    stack.start_node("n2")
    await stack.wait_ready(nodes=("n2",))
    at_n2 = _target(stack, member, "n2")
    await eventually(lambda: _admitted(at_n2), until=bool, what="admitted on the returned node")


@pytest.mark.parametrize(
    ("frozen", "within"),
    [(("nats",), 25.0), (("nats", "authcallout"), 90.0)],
    ids=["its-node", "its-node-and-callout"],
)
async def test_with_a_host_hung_the_others_admit_everyone_again(
    stacks: StackFactory, frozen: tuple[str, ...], within: float
) -> None:
    """A host that hangs or is cut off (SIGSTOP: connections stay open, nothing answers).

    Its node held one callout's view: that callout denies what it is asked until it
    leaves the requests to the others, once its pings show the node dead (~6 s) and the
    connection is closed (35 s in all while a TLS close waited for the silent peer). Its
    callout, when frozen too, holds links on the other nodes that take their share of
    the requests until the servers' pings drop them (~30 s).
    """
    stack = await stacks.start(nodes=3, services=True)
    member = await _member(stacks, stack, "steady")
    await move_leaders(await stacks.connect(stack), DECIDING_STREAMS, to="n1")
    targets = [_target(stack, member, node) for node in ("n1", "n2")]
    for target in targets:
        await eventually(lambda t=target: _admitted(t), until=bool, what="admitted")
    pids = [stack.pid("n3") if what == "nats" else stack.service_pid(what, "n3") for what in frozen]
    assert None not in pids

    async def refusals_in_three_rounds() -> list[str]:
        """Three rounds of connects in a row, stopping at the first that saw a refusal:
        one lucky round proves nothing while a frozen member still takes a share."""
        for _ in range(3):
            attempts = [connect_once(t) for t in targets for _ in range(6)]
            outcomes = await asyncio.gather(*attempts, return_exceptions=True)
            refused = [repr(o) for o in outcomes if isinstance(o, BaseException)]
            if refused:
                return refused
        return []

    for pid in pids:
        os.kill(cast(int, pid), signal.SIGSTOP)
    try:
        await eventually(
            refusals_in_three_rounds,
            until=lambda refused: not refused,
            timeout=within,
            interval=0.5,
            what="three rounds in a row with every connect admitted",
        )
    finally:
        for pid in pids:
            os.kill(cast(int, pid), signal.SIGCONT)


async def test_views_return_to_their_nodes_so_one_node_loss_never_stops_every_callout(
    stacks: StackFactory,
) -> None:
    """A callout steps aside while its view's connection is down. A view that failed over
    to another node used to stay there once its own node was back: the views came to share
    a node, and its loss made every callout step aside at once, leaving the survivors'
    auth requests to no one (measured: a reconnect storm of 500 clients, all refused)."""
    stack = await stacks.start(nodes=3, services=True)
    member = await _member(stacks, stack, "homed")
    for node in stack.spec.node_names:
        target = _target(stack, member, node)
        await eventually(lambda t=target: _admitted(t), until=bool, what=f"admitted on {node}")
    system = await stacks.connect(stack, "system")
    one_each = dict.fromkeys(stack.spec.node_names, 1)
    await eventually(
        lambda: _views_per_node(system), until=lambda v: v == one_each, what="a view per node"
    )

    stack.stop_node("n1", kill=True)
    stack.start_node("n1")
    await stack.wait_ready(nodes=("n1",))
    await eventually(
        lambda: _views_per_node(system),
        until=lambda v: v == one_each,
        timeout=20.0,
        what="every view back on its own node",
    )

    await move_leaders(await stacks.connect(stack), DECIDING_STREAMS, to="n1")
    at_n1, at_n3 = (_target(stack, member, node) for node in ("n1", "n3"))
    async with (
        probing(lambda: connect_once(at_n1)) as on_n1,
        probing(lambda: connect_once(at_n3)) as on_n3,
    ):
        stack.stop_node("n2", kill=True)

        async def probes_so_far() -> int:
            return min(len(on_n1), len(on_n3))

        await eventually(probes_so_far, until=lambda n: n >= 15, what="3 s of probes on each")
    assert [repr(e) for _, e in [*on_n1, *on_n3] if e is not None] == []


async def test_a_lone_callout_whose_view_node_dies_refuses_no_client_of_the_other_nodes(
    stacks: StackFactory,
) -> None:
    """The view is on the next node within milliseconds of its node's death. A callout
    that stepped aside at once left the requests of that moment to no one (no other
    instance was there to take them), and the servers refused those clients after
    their callout timeout."""
    stack = await stacks.start(nodes=3, services=True)
    member = await _member(stacks, stack, "alone")
    for node in ("n2", "n3"):
        stack.stop_service("authcallout", node)
    survivors = [_target(stack, member, node) for node in ("n2", "n3")]
    for target in survivors:
        await eventually(lambda t=target: _admitted(t), until=bool, what="admitted")
    # The streams are led elsewhere: this is about the view's node, not an election.
    await move_leaders(await stacks.connect(stack, nodes=("n3",)), DECIDING_STREAMS, to="n3")

    stack.stop_node("n1", kill=True)  # the lone callout's own node, where its view is
    outcomes: list[BaseException | None] = []
    for _ in range(3):  # clients arriving at the kill and just after, as a storm would
        outcomes += await asyncio.gather(
            *(connect_once(t) for t in survivors for _ in range(5)), return_exceptions=True
        )
    assert [repr(o) for o in outcomes if o is not None] == []
