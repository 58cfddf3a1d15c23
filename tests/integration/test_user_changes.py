"""Users over time on a real 3-node cluster: promote, demote, revoke, reinstate (issue 14).

Through the signed API as an administrator would, with the callout kicking live
connections; and straight on the replicated store, two connections on two nodes, for the
compare-and-set under concurrent writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from tests.integration.harness import StackFactory, bounded, eventually, user_record
from unibus.authcallout.kicks import Kicker, parse_connection_name
from unibus.client.api import ApiClient, ApiError
from unibus.client.connection import AccessDeniedError, BusConnection
from unibus.core.apimodels import UserView
from unibus.core.errors import ConflictError, LastAdminError
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Role, Status
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.userchanges import ChangeResult, UserChange, change_user
from unibus.stack.launcher import LocalStack


@dataclass
class Bus:
    """A 3-node stack with its services, its first admin's API client and the store."""

    stack: LocalStack
    stacks: StackFactory
    store: JetStreamStore
    admin_key: KeyPair
    admin: ApiClient
    clients: list[ApiClient] = field(default_factory=list)
    connections: list[BusConnection] = field(default_factory=list)

    def api(self, who: KeyPair, *, node: str | None = None) -> ApiClient:
        nodes = (node,) if node else self.stack.spec.node_names
        client = ApiClient(
            [self.stack.api_url(n) for n in nodes],
            who,
            ca_file=self.stack.layout.certs.client_ca_cert,
        )
        self.clients.append(client)
        return client

    async def member(self, handle: str) -> KeyPair:
        pair = KeyPair.generate(Prefix.USER)
        await self.admin.add_user(pair.public_key, handle)
        return pair

    async def connect(self, who: KeyPair) -> BusConnection:
        conn = await BusConnection.connect(
            [self.stack.client_url(n) for n in self.stack.spec.node_names],
            who,
            ca_file=self.stack.layout.certs.client_ca_cert,
            name="unibus-test-client",
            connect_budget=10.0,
        )
        self.connections.append(conn)
        return conn

    async def admitted(self, who: KeyPair) -> BusConnection:
        """Connected, once the callout's view has the user (it follows the KV by a watch)."""
        return await eventually(
            lambda: self.connect(who), until=lambda c: c.is_connected, what="admitted"
        )

    async def stamps_of(self, who: KeyPair) -> list[int]:
        """The users revision each of ``who``'s live connections was authorized at."""
        kicker = Kicker(await self.stacks.connect(self.stack, "system"), expected_servers=3)
        parsed = [parse_connection_name(c.name) for c in await kicker.connections()]
        return [p[1].users for p in parsed if p is not None and p[0] == who.public_key]


@pytest_asyncio.fixture
async def bus(stacks: StackFactory) -> AsyncIterator[Bus]:
    stack = await stacks.start(nodes=3, services=True)
    nc = await stacks.connect(stack)
    store = await eventually(lambda: JetStreamStore.open(nc), until=bool, what="store open")
    admin_key = read_seed_file(stack.layout.identity("admin"))
    admin = ApiClient(
        [stack.api_url(n) for n in stack.spec.node_names],
        admin_key,
        ca_file=stack.layout.certs.client_ca_cert,
    )
    found = Bus(stack, stacks, store, admin_key, admin, clients=[admin])
    try:
        yield found
    finally:
        for conn in found.connections:
            await conn.close()
        for client in found.clients:
            await client.aclose()


async def _change(client: ApiClient, key: str, change: UserChange) -> UserView:
    """The SDK's method for ``change``."""
    methods = {
        UserChange.PROMOTE: client.promote_user,
        UserChange.DEMOTE: client.demote_user,
        UserChange.REVOKE: client.revoke_user,
        UserChange.REINSTATE: client.reinstate_user,
    }
    return await methods[change](key)


async def _refused(status: int, code: str, call: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    assert (caught.value.status, caught.value.code) == (status, code), caught.value
    return caught.value


async def _kicked_and_back(conn: BusConnection, reconnects: int) -> None:
    await eventually(
        lambda: asyncio.sleep(0, conn.reconnects),
        until=lambda n: n > reconnects,
        timeout=15,
        what="kicked",
    )
    await conn.wait_connected(timeout=15)


# -- (a) role changes reach live connections ------------------------------------------------------
async def test_a_promoted_user_is_kicked_and_may_then_administer_and_a_demoted_one_may_not(
    bus: Bus,
) -> None:
    ada = await bus.member("ada")
    ada_api = bus.api(ada)
    conn = await bus.admitted(ada)
    await _refused(403, "forbidden", ada_api.list_users())
    reconnects = conn.reconnects

    promoted = await _change(bus.admin, ada.public_key, UserChange.PROMOTE)

    assert (promoted.role, promoted.status) == (Role.ADMIN, Status.ACTIVE)
    await _kicked_and_back(conn, reconnects)
    revision = (await bus.store.get_user(ada.public_key)).revision
    stamps = await eventually(
        lambda: bus.stamps_of(ada),
        until=lambda found: bool(found) and min(found) >= revision,
        what="ada re-authorized after the promotion",
    )
    assert min(stamps) >= revision
    newcomer = KeyPair.generate(Prefix.USER).public_key
    added = await ada_api.add_user(newcomer, "added-by-ada")
    assert added.key == newcomer
    reconnects = conn.reconnects

    demoted = await _change(bus.admin, ada.public_key, UserChange.DEMOTE)

    assert demoted.role is Role.MEMBER
    await _kicked_and_back(conn, reconnects)
    await _refused(403, "forbidden", ada_api.list_users())
    await _refused(403, "forbidden", _change(ada_api, newcomer, UserChange.REVOKE))
    assert (await bus.store.get_user(newcomer)).value.is_active


async def test_promoting_an_admin_or_demoting_a_member_answers_200_and_writes_nothing(
    bus: Bus,
) -> None:
    ada = await bus.member("ada")
    root = bus.admin_key.public_key
    before = {key: await bus.store.get_user(key) for key in (ada.public_key, root)}

    demoted = await _change(bus.admin, ada.public_key, UserChange.DEMOTE)
    promoted = await _change(bus.admin, root, UserChange.PROMOTE)

    assert (demoted.role, promoted.role) == (Role.MEMBER, Role.ADMIN)
    # Nothing written: the callout sees no change, so nobody is kicked.
    assert {key: await bus.store.get_user(key) for key in before} == before


# -- (b) a reinstated key -------------------------------------------------------------------------
async def test_a_reinstated_key_is_admitted_again_at_its_next_connect(bus: Bus) -> None:
    ada = await bus.member("ada")
    conn = await bus.admitted(ada)
    await conn.close()

    await _change(bus.admin, ada.public_key, UserChange.REVOKE)

    async with bounded(30):
        with pytest.raises(AccessDeniedError):
            await bus.connect(ada)
    await _refused(401, "caller_revoked", bus.api(ada).my_rooms())

    reinstated = await _change(bus.admin, ada.public_key, UserChange.REINSTATE)

    assert (reinstated.status, reinstated.role) == (Status.ACTIVE, Role.MEMBER)
    # No eventually: the callout catches up with the stream before it decides.
    back = await bus.connect(ada)
    assert back.is_connected
    assert await bus.api(ada).my_rooms() == []


# -- (c) never without an admin -------------------------------------------------------------------
async def test_the_last_active_admin_can_be_neither_demoted_nor_revoked(bus: Bus) -> None:
    root = bus.admin_key.public_key
    before = await bus.store.get_user(root)

    for change in (UserChange.DEMOTE, UserChange.REVOKE):
        refused = await _refused(409, "last_admin", _change(bus.admin, root, change))
        assert "last active admin" in refused.message
    assert await bus.store.get_user(root) == before

    ada = await bus.member("ada")
    await _change(bus.admin, ada.public_key, UserChange.PROMOTE)
    ada_api = bus.api(ada)
    # With a second admin, either may go; then the one left may not.
    await _change(ada_api, root, UserChange.DEMOTE)
    await _refused(409, "last_admin", _change(ada_api, ada.public_key, UserChange.DEMOTE))
    await _refused(409, "last_admin", _change(ada_api, ada.public_key, UserChange.REVOKE))

    admins = [u for u in await ada_api.list_users() if u.role is Role.ADMIN]
    assert [(u.key, u.status) for u in admins] == [(ada.public_key, Status.ACTIVE)]


# -- (d) concurrent changes -----------------------------------------------------------------------
async def test_concurrent_changes_through_different_nodes_lose_no_update(bus: Bus) -> None:
    members = [await bus.member(f"m{i}") for i in range(4)]
    via_n1, via_n2 = bus.api(bus.admin_key, node="n1"), bus.api(bus.admin_key, node="n2")

    await asyncio.gather(
        *(_change(via_n1, m.public_key, UserChange.PROMOTE) for m in members),
        *(_change(via_n2, m.public_key, UserChange.REVOKE) for m in members),
    )

    for member in members:
        final = (await bus.store.get_user(member.public_key)).value
        assert (final.role, final.status) == (Role.ADMIN, Status.REVOKED), member.public_key


async def test_two_admins_demoting_each_other_at_once_never_both_succeed(bus: Bus) -> None:
    ada = await bus.member("ada")
    root = bus.admin_key.public_key
    root_api, ada_api = bus.api(bus.admin_key, node="n1"), bus.api(ada, node="n2")

    for _ in range(3):
        await _change(bus.admin, ada.public_key, UserChange.PROMOTE)
        await _change(ada_api, root, UserChange.PROMOTE)

        outcomes = await asyncio.gather(
            _change(root_api, ada.public_key, UserChange.DEMOTE),
            _change(ada_api, root, UserChange.DEMOTE),
            return_exceptions=True,
        )

        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert refused, "both admins were demoted"
        # 409: the change saw it would take the last admin (or kept losing the race);
        # 403: the other demotion landed before this caller was authenticated.
        assert all(isinstance(o, ApiError) and o.status in (403, 409) for o in refused), refused
        roles = {k: (await bus.store.get_user(k)).value.role for k in (root, ada.public_key)}
        assert Role.ADMIN in roles.values()
        # Whoever is left admin restores the other for the next round.
        if roles[root] is not Role.ADMIN:
            await _change(ada_api, root, UserChange.PROMOTE)


async def test_the_replicated_store_keeps_an_admin_under_racing_writers_on_two_nodes(
    bus: Bus, stacks: StackFactory
) -> None:
    other = await JetStreamStore.open(await stacks.connect(bus.stack, nodes=("n2",)))
    keys = [KeyPair.generate(Prefix.USER).public_key for _ in range(3)]
    for i, key in enumerate(keys):
        await bus.store.add_user(user_record(key, f"a{i}", Role.ADMIN))
    root = bus.admin_key.public_key
    await change_user(bus.store, root, UserChange.DEMOTE)  # leave only the three racing

    for _ in range(5):
        outcomes = await asyncio.gather(
            *(
                change_user(store, key, change)
                for store in (bus.store, other)
                for key, change in zip(keys, (UserChange.DEMOTE, UserChange.REVOKE), strict=False)
            ),
            change_user(other, keys[2], UserChange.DEMOTE),
            return_exceptions=True,
        )

        assert all(isinstance(o, ChangeResult | ConflictError) for o in outcomes), outcomes
        admins = [u for u in await bus.store.list_users() if u.role is Role.ADMIN and u.is_active]
        assert admins, f"no active admin left: {outcomes}"
        if any(isinstance(o, LastAdminError) for o in outcomes):
            assert len(admins) == 1
        for key in keys:
            await change_user(bus.store, key, UserChange.PROMOTE)
            await change_user(bus.store, key, UserChange.REINSTATE)

    stale = await bus.store.get_user(keys[0])
    await other.update_user(stale, stale.value)
    with pytest.raises(ConflictError):
        await bus.store.update_user(stale, stale.value)
