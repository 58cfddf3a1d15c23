"""Safety paths no other test reached (issue 14), each against real nats-server processes.

- the first administrator, when several control-plane replicas start at once on an empty
  allowlist (with one bootstrap key, or different ones): exactly one admin, nobody fails;
- the API client failing over across nodes: a stopped node, a node answering 503, and
  every node down (the budget, then the error);
- the migration's parity check: a target that diverged after the writes (a write lost,
  or a record changed by another writer before the verification) is never a success;
- a stack restarted on the same directory keeps its users and rooms, usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from tests.fixtures.legacy import build_legacy_db
from tests.integration.deployment import Deployment
from tests.integration.harness import (
    StackFactory,
    bounded,
    eventually,
    free_port_block,
    run_cli,
)
from unibus.client.api import DEFAULT_RETRY_BUDGET, ApiClient
from unibus.client.errors import ApiError, ApiUnavailableError
from unibus.client.profile import StackInfo, read_stack_info
from unibus.client.sdk import Client
from unibus.core import envnames, naming
from unibus.core.bootstrap import FIRST_ADMIN_CLAIM, ensure_first_admin
from unibus.core.errors import NotFoundError
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Role, Status, UserRecord
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.provisioning import Provisioning, provision
from unibus.core.retry import retry_until
from unibus.migrate.job import DivergedTargetError, MigrationError, MigrationOptions, migrate
from unibus.migrate.snapshot import export_sqlite
from unibus.stack.launcher import LocalStack
from unibus.stack.layout import StackLayout

REPLICAS = 6
"""Control-plane replicas racing for the first admin in each round (two per node)."""
ROUNDS = 5


# -- the first administrator -----------------------------------------------------------------------
async def _stack_without_admin(stacks: StackFactory) -> LocalStack:
    """A 3-node stack with every asset provisioned and an empty allowlist."""
    stack = await stacks.start(nodes=3, provision=False)
    nc = await stacks.connect(stack)
    await provision(nc.jetstream(timeout=5.0), Provisioning(replicas=3))
    return stack


async def _replica_stores(stacks: StackFactory, stack: LocalStack) -> list[JetStreamStore]:
    """One store per replica, each over a connection of its own to a node of its own."""
    names = stack.spec.node_names
    return [
        await JetStreamStore.open(await stacks.connect(stack, nodes=(names[i % len(names)],)))
        for i in range(REPLICAS)
    ]


async def _empty_the_allowlist(stacks: StackFactory, stack: LocalStack) -> None:
    js = (await stacks.connect(stack)).jetstream(timeout=5.0)
    await js.purge_stream(naming.kv_stream(naming.USERS_BUCKET))


async def _race(stores: Sequence[JetStreamStore], keys: Sequence[str]) -> list[bool]:
    """Every replica's first-admin step at once, as a starting control plane takes it
    (retried while the store answers "not now": a write of another replica in flight);
    none of them may fail."""

    def start(store: JetStreamStore, key: str) -> Awaitable[bool]:
        return retry_until("first admin", lambda: ensure_first_admin(store, key), budget=60.0)

    outcomes = await asyncio.gather(
        *(start(store, key) for store, key in zip(stores, keys, strict=True)),
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failed, f"a replica failed while starting: {failed!r}"
    return [o for o in outcomes if isinstance(o, bool)]


def _only_writer(wrote: Sequence[bool], keys: Sequence[str], admin: str) -> None:
    """At most one replica says it wrote the admin, and that one was given its key (maybe
    none does: a replica whose write was acknowledged too late retries and finds it done)."""
    assert wrote.count(True) <= 1, wrote
    assert all(key == admin for key, did in zip(keys, wrote, strict=True) if did)


def _admins(users: Iterable[UserRecord]) -> list[str]:
    return [u.key for u in users if u.role is Role.ADMIN and u.status is Status.ACTIVE]


async def test_replicas_starting_at_once_with_one_bootstrap_admin_write_it_exactly_once(
    stacks: StackFactory,
) -> None:
    stack = await _stack_without_admin(stacks)
    stores = await _replica_stores(stacks, stack)
    for _ in range(ROUNDS):
        await _empty_the_allowlist(stacks, stack)
        admin = KeyPair.generate(Prefix.USER).public_key

        wrote = await _race(stores, [admin] * REPLICAS)

        _only_writer(wrote, [admin] * REPLICAS, admin)
        users = await stores[0].list_users()
        assert [(u.key, u.role, u.status) for u in users] == [(admin, Role.ADMIN, Status.ACTIVE)]
        # A replica restarted later with the same key finds the admin and writes nothing.
        assert await _race(stores[:2], [admin] * 2) == [False, False]
        assert len(await stores[0].list_users()) == 1


async def test_replicas_racing_with_different_bootstrap_keys_make_one_admin_not_two(
    stacks: StackFactory,
) -> None:
    # The rule (core.bootstrap): the key whose replica creates the first-admin claim first
    # is the admin; a replica given another key writes nothing and starts all the same.
    stack = await _stack_without_admin(stacks)
    stores = await _replica_stores(stacks, stack)
    for _ in range(ROUNDS):
        await _empty_the_allowlist(stacks, stack)
        first, second = (KeyPair.generate(Prefix.USER).public_key for _ in range(2))
        keys = [first, second] * (REPLICAS // 2)

        wrote = await _race(stores, keys)

        users = await stores[0].list_users()
        assert len(users) == 1, users
        winner = users[0].key
        assert winner in (first, second)
        assert (users[0].role, users[0].status) == (Role.ADMIN, Status.ACTIVE)
        _only_writer(wrote, keys, winner)
        loser = second if winner == first else first
        # The losing key, started again later, is still not written.
        assert await _race(stores[:1], [loser]) == [False]
        assert _admins(await stores[0].list_users()) == [winner]


async def test_a_first_admin_claimed_by_a_replica_that_crashed_is_completed_only_with_its_key(
    stacks: StackFactory,
) -> None:
    stack = await _stack_without_admin(stacks)
    stores = await _replica_stores(stacks, stack)
    claimed, other = (KeyPair.generate(Prefix.USER).public_key for _ in range(2))
    # What a replica leaves when it dies between its claim and writing the user.
    assert await stores[0].claim_marker(FIRST_ADMIN_CLAIM, claimed) == claimed

    assert await _race(stores, [other] * REPLICAS) == [False] * REPLICAS
    assert await stores[0].list_users() == []

    wrote = await _race(stores, [claimed] * REPLICAS)
    _only_writer(wrote, [claimed] * REPLICAS, claimed)
    assert _admins(await stores[0].list_users()) == [claimed]


async def test_control_planes_started_at_once_with_different_admins_serve_with_one_admin(
    stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await _stack_without_admin(stacks)
    configured = read_seed_file(stack.layout.identity("admin"))
    stranger = KeyPair.generate(Prefix.USER)
    bootstrap = {"n1": configured, "n2": stranger, "n3": configured}
    service_env = LocalStack.service_env

    def per_node_admin(self: LocalStack, node: str) -> dict[str, str]:
        env = service_env(self, node)
        env[envnames.BOOTSTRAP_ADMIN] = bootstrap[node].public_key
        return env

    monkeypatch.setattr(LocalStack, "service_env", per_node_admin)
    for node in stack.spec.node_names:
        stack.start_service("controlplane", node)

    await stack.wait_services_ready(budget=90.0)

    assert stack.exited() == []
    store = await JetStreamStore.open(await stacks.connect(stack))
    users = await store.list_users()
    assert len(users) == 1
    assert _admins(users) == [users[0].key]
    winner = next(pair for pair in (configured, stranger) if pair.public_key == users[0].key)
    loser = stranger if winner is configured else configured
    ca = stack.layout.certs.client_ca_cert
    for node in stack.spec.node_names:
        async with ApiClient([stack.api_url(node)], winner, ca_file=ca) as api:
            assert [u.key for u in await api.list_users()] == [winner.public_key]
        async with ApiClient([stack.api_url(node)], loser, ca_file=ca) as api:
            with pytest.raises(ApiError) as refused:
                await api.list_users()
            assert refused.value.status == 401


# -- the API client failing over -------------------------------------------------------------------
class Unavailable:
    """A node answering every request 503, as an API whose store is electing a leader does
    (plain HTTP on a port the system picks: the client's failover does not look at TLS)."""

    BODY = b'{"error":"store_unavailable","message":"the store is electing a leader; retry"}'

    def __init__(self) -> None:
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Unavailable:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(self.BODY)}\r\n".encode()
                    + b"connection: close\r\n\r\n"
                    + self.BODY
                )
                await writer.drain()
        finally:
            writer.close()


def _admin_client(
    deployment: Deployment, urls: Sequence[str], *, retry_budget: float = DEFAULT_RETRY_BUDGET
) -> ApiClient:
    stack = deployment.stack
    return ApiClient(
        urls,
        read_seed_file(stack.layout.identity("admin")),
        ca_file=stack.layout.certs.client_ca_cert,
        retry_budget=retry_budget,
    )


async def test_an_admin_call_succeeds_through_another_node_when_one_api_is_stopped(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    urls = [stack.api_url(n) for n in stack.spec.node_names]
    stack.stop_service("controlplane", "n1")
    bob = KeyPair.generate(Prefix.USER).public_key

    async with bounded(60), _admin_client(deployment, urls) as api:
        added = await api.add_user(bob, "bob")
        listed = await api.list_users()

    assert (added.key, added.status) == (bob, Status.ACTIVE)
    assert bob in {u.key for u in listed}
    async with _admin_client(deployment, [stack.api_url("n3")]) as n3:
        assert (await n3.get_user(bob)).status is Status.ACTIVE


async def test_a_node_answering_503_is_passed_over_for_the_next(deployment: Deployment) -> None:
    stack = deployment.stack
    stack.stop_service("controlplane", "n1")
    carol = KeyPair.generate(Prefix.USER).public_key

    async with Unavailable() as electing:
        urls = [stack.api_url("n1"), electing.url, stack.api_url("n2")]
        async with bounded(60), _admin_client(deployment, urls) as api:
            added = await api.add_user(carol, "carol")

    assert added.key == carol
    assert electing.requests == 1
    async with _admin_client(deployment, [stack.api_url("n3")]) as n3:
        assert (await n3.get_user(carol)).status is Status.ACTIVE


async def test_with_every_api_down_a_call_gives_up_after_its_budget_and_never_lands(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    urls = [stack.api_url(n) for n in stack.spec.node_names]
    for node in stack.spec.node_names:
        stack.stop_service("controlplane", node)
    dave = KeyPair.generate(Prefix.USER).public_key

    async with _admin_client(deployment, urls, retry_budget=2.0) as api:
        began = time.monotonic()
        with pytest.raises(ApiUnavailableError):
            await api.add_user(dave, "dave")
        took = time.monotonic() - began
    # It kept trying for most of the budget (pauses of 0.25, 0.5, 1 s), then stopped.
    assert 1.5 <= took < 10, took

    # Every node answering 503 past the budget: the 503 is the answer, after several rounds.
    async with (
        Unavailable() as electing,
        Unavailable() as also_electing,
        _admin_client(deployment, [electing.url, also_electing.url], retry_budget=2.0) as api,
    ):
        with pytest.raises(ApiError) as unavailable:
            await api.add_user(dave, "dave")
    assert unavailable.value.status == 503
    assert electing.requests == also_electing.requests >= 3
    # Neither call did anything: a caller may send it again.
    with pytest.raises(NotFoundError):
        await (await deployment.store()).get_user(dave)

    # A call made while no node answers goes through once one comes back within its budget.
    async with _admin_client(deployment, urls, retry_budget=90.0) as api:
        call = asyncio.create_task(api.add_user(dave, "dave"))
        stack.start_service("controlplane", "n3")
        async with bounded(120):
            added = await call
    assert added.key == dave
    async with _admin_client(deployment, [stack.api_url("n3")]) as n3:
        assert (await n3.get_user(dave)).status is Status.ACTIVE


# -- the migration's parity check ------------------------------------------------------------------
async def _migration_target(stacks: StackFactory, tmp_path: Path) -> tuple[LocalStack, Path]:
    fixture = build_legacy_db(tmp_path / "membership.db", users=12, rooms=6, members_per_room=4)
    return await stacks.start(nodes=1), fixture.path


def _lose_one_sealed_key(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the store drop one sealed key while acknowledging it, as a lost write would."""
    lost: list[str] = []
    put_records = JetStreamStore.put_records

    async def dropping(
        self: JetStreamStore, bucket: str, records: Iterable[tuple[str, bytes]]
    ) -> int:
        records = list(records)
        if bucket == naming.ROOM_KEYS_BUCKET and records and not lost:
            key, _ = records.pop(0)
            lost.append(key)
            return await put_records(self, bucket, records) + 1
        return await put_records(self, bucket, records)

    monkeypatch.setattr(JetStreamStore, "put_records", dropping)
    return lost


async def test_a_write_lost_before_verification_fails_the_migration_instead_of_reporting_it(
    stacks: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, db = await _migration_target(stacks, tmp_path)
    options = MigrationOptions(db=db, target=stack.target("internal"), replicas=1, backup=False)
    lost = _lose_one_sealed_key(monkeypatch)

    with pytest.raises(MigrationError) as failed:
        await migrate(options)

    assert len(lost) == 1
    message = str(failed.value)
    assert message.startswith("parity check failed, the copy is partial or wrong: ")
    assert f"sealed key {lost[0]} missing" in message
    assert "re-run to resume" in message
    # As it says: the run after, with nothing lost, completes the copy and verifies it.
    monkeypatch.undo()
    resumed = await migrate(options)
    assert resumed.parity
    assert resumed.changed
    assert resumed.source_hash == resumed.target_hash


_LOSING_MIGRATION = """
import sys
from unibus.core import naming
from unibus.core.kvstore import JetStreamStore
from unibus.migrate.cli import main

put_records = JetStreamStore.put_records
lost = []

async def dropping(self, bucket, records):
    # One sealed key acknowledged but never stored, as a lost write would be.
    records = list(records)
    if bucket == naming.ROOM_KEYS_BUCKET and records and not lost:
        lost.append(records.pop(0)[0])
        return await put_records(self, bucket, records) + 1
    return await put_records(self, bucket, records)

JetStreamStore.put_records = dropping
status = main(sys.argv[1:])
print(f"lost: {lost[0]}", file=sys.stderr)
sys.exit(status)
"""


async def test_the_migration_command_exits_1_with_a_failure_summary_when_parity_fails(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack, db = await _migration_target(stacks, tmp_path)
    target = stack.target("internal")
    assert target.ca_file is not None
    assert target.identity_file is not None
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOSING_MIGRATION,
        "--db", str(db), "--replicas", "1", "--no-backup", "--json",
        "--ca", str(target.ca_file), "--internal-id-file", str(target.identity_file),
        *(arg for url in target.urls for arg in ("--nats-url", url)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with bounded(120):
        out, err = await command.communicate()

    text = err.decode()
    lost = text.rpartition("lost: ")[2].strip()
    assert command.returncode == 1, text
    # no report, only the failure's summary: nothing a script could take for a verified copy
    summary = json.loads(out)
    assert summary["outcome"] == "failed"
    assert "parity check failed" in summary["error"]
    assert "parity" not in summary
    assert "target_hash" not in summary
    assert "unibus-migrate: error: parity check failed" in text
    assert f"sealed key {lost} missing" in text


async def test_a_record_changed_between_the_writes_and_the_verification_fails_the_migration(
    stacks: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, db = await _migration_target(stacks, tmp_path)
    options = MigrationOptions(db=db, target=stack.target("internal"), replicas=1, backup=False)
    victim = (await export_sqlite(db)).users[0].key
    other_writer = await JetStreamStore.open(await stacks.connect(stack))
    changed: list[str] = []
    repair_index = JetStreamStore.repair_index

    async def then_another_writer(self: JetStreamStore) -> object:
        # The job rebuilds the index after its writes and before it verifies them: the
        # moment another writer changes a record the job just wrote.
        repaired = await repair_index(self)
        written = (await other_writer.get_user(victim)).value
        renamed = msgspec.structs.replace(written, handle="changed-meanwhile")
        await other_writer.put_records(
            naming.USERS_BUCKET, [(victim, msgspec.json.encode(renamed))]
        )
        changed.append(victim)
        return repaired

    monkeypatch.setattr(JetStreamStore, "repair_index", then_another_writer)

    with pytest.raises(MigrationError) as failed:
        await migrate(options)

    assert changed == [victim]
    assert str(failed.value).startswith("parity check failed")
    assert f"user {victim} differs" in str(failed.value)
    # Run again, the job finds the target contradicting the source and still claims nothing.
    monkeypatch.undo()
    with pytest.raises(DivergedTargetError) as diverged:
        await migrate(options)
    assert any(victim in d and "handle" in d for d in diverged.value.differences)
    assert (await other_writer.get_user(victim)).value.handle == "changed-meanwhile"


# -- a stack restarted on its directory ------------------------------------------------------------
@asynccontextmanager
async def _unibus_up(root: Path, base_port: int) -> AsyncIterator[StackInfo]:
    """``unibus up --dir root --base-port base_port`` until it wrote its stack file anew;
    stopped (``unibus down``, then by its PID) when the block ends."""
    stack_file = StackLayout.at(root).stack_file

    def written() -> tuple[int, int] | None:
        if not stack_file.exists():
            return None
        found = stack_file.stat()
        return (found.st_ino, found.st_mtime_ns)

    before = written()
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unibus.cli", "up", "--dir", str(root),
        "--base-port", str(base_port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def ready() -> bool:
            if up.returncode is not None:
                raise AssertionError(f"unibus up exited early ({up.returncode})")
            now = written()
            return now is not None and now != before

        await eventually(ready, until=bool, timeout=180, what="stack.json written")
        yield read_stack_info(root)
    finally:
        await run_cli("down", "--dir", str(root))
        if up.returncode is None:
            up.kill()
        await up.wait()


async def _device(info: StackInfo, identity: KeyPair, heads_file: Path) -> Client:
    """A client of ``identity``, once the bus admits it; it remembers its rooms' chains in
    ``heads_file`` (a rolled-back room is refused)."""

    async def attempt() -> Client:
        return await Client.open(
            identity=identity,
            nats_urls=info.nats_urls,
            api_urls=info.api_urls,
            ca_file=Path(info.ca_file),
            heads_file=heads_file,
        )

    return await eventually(attempt, until=lambda c: c.bus.is_connected, what="admitted")


async def _history(client: Client, room_id: str) -> list[bytes]:
    room = await client.room(room_id)
    return [m.data async for m in room.history()]


async def test_a_stack_restarted_on_its_directory_keeps_its_users_and_rooms_usable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    base_port = free_port_block(60)
    bob, carol = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    heads = {"admin": tmp_path / "admin.rooms.json", "bob": tmp_path / "bob.rooms.json"}

    async with _unibus_up(root, base_port) as info, contextlib.AsyncExitStack() as clients:
        admin_pair = read_seed_file(Path(info.admin_seed_file))
        admin = await clients.enter_async_context(await _device(info, admin_pair, heads["admin"]))
        await admin.api.add_user(bob.public_key, "bob")
        bob_client = await clients.enter_async_context(await _device(info, bob, heads["bob"]))
        room = await admin.create_room([bob.public_key])
        await room.publish(b"before the restart")
        room_id = room.room_id
        chain = (await admin.api.get_room(room_id)).chain
        assert await _history(bob_client, room_id) == [b"before the restart"]

    async with _unibus_up(root, base_port) as info, contextlib.AsyncExitStack() as clients:
        assert info.admin_key == admin_pair.public_key
        admin = await clients.enter_async_context(await _device(info, admin_pair, heads["admin"]))
        bob_client = await clients.enter_async_context(await _device(info, bob, heads["bob"]))
        users = {u.key: u for u in await admin.api.list_users()}
        assert users[bob.public_key].status is Status.ACTIVE
        assert users[bob.public_key].handle == "bob"
        assert [k for k, u in users.items() if u.role is Role.ADMIN] == [info.admin_key]

        # The room, its signed chain and its history, as they were (each device checks
        # the chain against what it verified before the restart).
        assert room_id in await bob_client.rooms()
        view = await bob_client.api.get_room(room_id)
        assert view.chain == chain
        room = await bob_client.room(room_id)
        assert set(room.members) == {info.admin_key, bob.public_key}
        assert room.state.epoch == 1
        assert await _history(bob_client, room_id) == [b"before the restart"]

        # And usable: bob writes, the admin reads it after the old message, the room
        # takes a new member, and the allowlist a new user.
        await room.publish(b"after the restart")
        expected = [b"before the restart", b"after the restart"]
        assert await _history(admin, room_id) == expected
        await admin.api.add_user(carol.public_key, "carol")
        await (await admin.room(room_id)).invite(carol.public_key)
        grown = await bob_client.api.get_room(room_id)
        assert grown.chain[: len(chain)] == chain
        assert len(grown.chain) == len(chain) + 1
        assert carol.public_key in grown.members
