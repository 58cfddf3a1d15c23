"""The callout's view over a real cluster, when it carries on over another connection
(the callout brings its view back to its own node once that node is up again)."""

from __future__ import annotations

import time

from tests.integration.harness import StackFactory, eventually, user_record
from unibus.authcallout.reasons import Reason
from unibus.authcallout.view import Change, DirectoryView
from unibus.core.connect import connect
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair, Prefix


async def test_a_moved_view_announces_each_change_once_and_proves_itself_over_the_new_node(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    store = await JetStreamStore.open(await stacks.connect(stack))
    users = [KeyPair.generate(Prefix.USER).public_key for _ in range(7)]
    for number, key in enumerate(users):
        await store.add_user(user_record(key, f"moved{number}"))
    away = await connect(stack.target(nodes=("n2",)), name="unibus-test-view-away")
    home = await stacks.connect(stack, nodes=("n1",))
    announced: list[Change] = []

    async def record(change: Change) -> None:
        announced.append(change)

    view = DirectoryView(away, on_change=record)
    await view.start()
    try:
        assert await view.until_loaded(10.0)
        for key in users[:3]:
            await store.set_user_status(key, Status.REVOKED)
        assert await view.move_to(home)  # the first revocations may still be on their way
        for key in users[3:6]:
            await store.set_user_status(key, Status.REVOKED)
        moved_at = time.monotonic()
        await away.close()
        await store.set_user_status(users[6], Status.REVOKED)  # last: nothing may follow it

        def revoked_users() -> list[str]:
            return [user for change in announced for user in change.users]

        async def seen() -> list[str]:
            return revoked_users()

        await eventually(seen, until=lambda seen: users[6] in seen, what="the last revocation")
        assert sorted(revoked_users()) == sorted(users)
        assert all(change.revoked for change in announced)

        async def proven_since_the_move() -> bool:
            return time.monotonic() - view.staleness > moved_at

        await eventually(proven_since_the_move, until=bool, what="a proof over the new node")
        assert {view.lookup(key).reason for key in users} == {Reason.REVOKED}
    finally:
        await view.stop()


async def test_a_view_stays_on_its_connection_when_the_new_one_cannot_reach_the_streams(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=1)
    current = await stacks.connect(stack)
    broken = await connect(stack.target(), name="unibus-test-view-broken")
    await broken.close()
    view = DirectoryView(current)
    await view.start()
    try:
        assert await view.until_loaded(10.0)
        assert not await view.move_to(broken)
        assert view.connection is current
        assert await view.until_fresh(5.0)
    finally:
        await view.stop()
