"""`unibus user add|list|revoke|reinstate|promote|demote` in child processes on a 3-node cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.harness import StackFactory, eventually, run_cli
from unibus.client.profile import write_stack_info
from unibus.core import naming
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Role, Status, UserRecord, Versioned
from unibus.core.nkeys import KeyPair, Prefix, decode_public
from unibus.stack.launcher import LocalStack

USERS_STREAM = naming.kv_stream(naming.USERS_BUCKET)


def _user_key() -> str:
    return KeyPair.generate(Prefix.USER).public_key


async def _stack(stacks: StackFactory) -> tuple[LocalStack, list[str]]:
    """A provisioned 3-node stack with its stack.json, and the ``--dir`` arguments for it."""
    stack = await stacks.start(nodes=3)
    write_stack_info(stack.layout.root, stack.info())
    return stack, ["--dir", str(stack.layout.root)]


async def _store(stacks: StackFactory, stack: LocalStack) -> JetStreamStore:
    nc = await stacks.connect(stack)
    return await eventually(lambda: JetStreamStore.open(nc), until=bool, what="store open")


async def _stored(store: JetStreamStore, key: str) -> Versioned[UserRecord]:
    return await eventually(lambda: store.get_user(key), until=bool, what=f"user {key}")


async def _user_cli(*args: str) -> tuple[int, str, str]:
    return await run_cli("user", *args, timeout=120.0)


def _one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unibus user: error: ")
    return lines[0]


async def test_add_list_and_revoke_through_the_cli(stacks: StackFactory) -> None:
    stack, where = await _stack(stacks)
    key = _user_key()

    code, out, err = await _user_cli("add", "--handle", "ada", "--key", key, *where, "--json")

    assert code == 0, err
    added: dict[str, Any] = json.loads(out)
    assert added["result"] == "added"
    assert added["user"]["key"] == key
    assert added["user"]["role"] == "member"
    assert added["user"]["status"] == "active"
    replication = added["replication"]
    assert replication["name"] == naming.USERS_BUCKET
    assert replication["leader"] in stack.spec.node_names
    assert replication["replicas"] == 3
    assert replication["messages"] >= 2  # the first admin and ada

    code, out, err = await _user_cli("list", *where, "--json")

    assert code == 0, err
    listed = {u["key"]: u for u in json.loads(out)}
    assert listed[key]["handle"] == "ada"
    assert listed[key]["status"] == "active"
    assert listed[stack.info().admin_key]["role"] == "admin"

    code, out, err = await _user_cli("list", *where)

    assert code == 0, err
    assert out.splitlines()[0].split() == ["KEY", "HANDLE", "ROLE", "STATUS"]
    assert [key, "ada", "member", "active"] in [line.split() for line in out.splitlines()]

    code, out, err = await _user_cli("revoke", key, *where)

    assert code == 0, err
    assert out.startswith(f"revoked {key}")
    assert f"{naming.USERS_BUCKET}: R3 leader=" in out
    assert "followers_current=" in out
    assert "msgs=" in out
    store = await _store(stacks, stack)
    revoked = await _stored(store, key)
    assert revoked.value.status is Status.REVOKED
    assert revoked.value.role is Role.MEMBER

    code, out, err = await _user_cli("revoke", key, *where, "--json")

    assert code == 0, err
    again = json.loads(out)
    assert again["result"] == "already revoked"
    assert again["changed"] is False
    assert again["user"]["status"] == "revoked"
    assert (await _stored(store, key)).revision == revoked.revision

    code, out, err = await _user_cli("list", *where, "--json")

    assert code == 0, err
    assert {u["key"]: u["status"] for u in json.loads(out)}[key] == "revoked"


async def test_promote_demote_revoke_and_reinstate_through_the_cli(stacks: StackFactory) -> None:
    stack, where = await _stack(stacks)
    key = _user_key()
    code, _, err = await _user_cli("add", "--handle", "ada", "--key", key, *where)
    assert code == 0, err
    store = await _store(stacks, stack)

    code, out, err = await _user_cli("promote", key, *where, "--json")

    assert code == 0, err
    promoted = json.loads(out)
    assert (promoted["result"], promoted["changed"]) == ("promoted", True)
    assert (promoted["user"]["role"], promoted["user"]["status"]) == ("admin", "active")
    assert promoted["replication"]["name"] == naming.USERS_BUCKET
    stored = await _stored(store, key)
    assert stored.value.role is Role.ADMIN
    assert stored.revision == promoted["revision"]

    code, out, err = await _user_cli("promote", key, *where)

    assert code == 0, err
    assert out.startswith(f"{key} (handle 'ada', role admin, active) was already admin")
    assert "nothing changed" in out
    assert (await _stored(store, key)).revision == stored.revision

    for verb, line in (
        ("revoke", f"revoked {key} (handle 'ada', role admin, revoked)"),
        ("demote", f"demoted {key} (handle 'ada', role member, revoked)"),
        ("reinstate", f"reinstated {key} (handle 'ada', role member, active)"),
    ):
        code, out, err = await _user_cli(verb, key, *where)
        assert code == 0, err
        assert out.startswith(line), out
        assert f"{naming.USERS_BUCKET}: R3 leader=" in out

    final = (await _stored(store, key)).value
    assert (final.role, final.status) == (Role.MEMBER, Status.ACTIVE)


async def test_the_last_active_admin_is_neither_demoted_nor_revoked_by_the_cli(
    stacks: StackFactory,
) -> None:
    stack, where = await _stack(stacks)
    root = stack.info().admin_key
    store = await _store(stacks, stack)
    before = await _stored(store, root)

    for verb in ("demote", "revoke"):
        code, out, err = await _user_cli(verb, root, *where)

        line = _one_line_error(code, err)
        assert f"cannot {verb} user {root}: it is the last active admin" in line
        assert "promote another user first" in line
        assert out == ""
    assert await _stored(store, root) == before

    key = _user_key()
    code, _, err = await _user_cli(
        "add", "--handle", "two", "--key", key, "--role", "admin", *where
    )
    assert code == 0, err
    code, _, err = await _user_cli("demote", root, *where)
    assert code == 0, err
    code, _, err = await _user_cli("revoke", key, *where)

    assert "last active admin" in _one_line_error(code, err)
    assert (await _stored(store, key)).value.is_active


async def test_a_64_hex_key_is_stored_in_canonical_form_and_explicit_flags_work(
    stacks: StackFactory,
) -> None:
    stack, _ = await _stack(stacks)
    pair = KeyPair.generate(Prefix.USER)
    hex_key = decode_public(pair.public_key)[1].hex().upper()
    explicit = [
        *(arg for node in stack.spec.node_names for arg in ("--nats-url", stack.client_url(node))),
        "--ca",
        str(stack.layout.certs.client_ca_cert),
        "--identity",
        str(stack.layout.identity("internal")),
    ]

    code, out, err = await _user_cli(
        "add", "--handle", "legacy", "--key", hex_key, "--role", "admin", *explicit
    )

    assert code == 0, err
    assert out.startswith(f"added {pair.public_key}")
    stored = await _stored(await _store(stacks, stack), pair.public_key)
    assert stored.value.key == pair.public_key
    assert stored.value.role is Role.ADMIN

    code, out, err = await _user_cli("revoke", hex_key.lower(), *explicit, "--json")

    assert code == 0, err
    assert json.loads(out)["user"]["key"] == pair.public_key


async def test_a_re_add_exits_1_and_never_changes_the_stored_role(stacks: StackFactory) -> None:
    stack, where = await _stack(stacks)
    key = _user_key()
    code, _, err = await _user_cli("add", "--handle", "bob", "--key", key, *where)
    assert code == 0, err
    store = await _store(stacks, stack)
    before = await _stored(store, key)

    code, out, err = await _user_cli(
        "add", "--handle", "bob", "--key", key, "--role", "admin", *where
    )

    line = _one_line_error(code, err)
    assert f"user {key} already exists (role member)" in line
    assert "never changes a role" in line
    assert out == ""
    after = await _stored(store, key)
    assert after == before
    assert after.value.role is Role.MEMBER


async def test_revoking_an_unknown_key_exits_1(stacks: StackFactory) -> None:
    _, where = await _stack(stacks)
    key = _user_key()

    code, out, err = await _user_cli("revoke", key, *where)

    line = _one_line_error(code, err)
    assert f"no user {key}" in line
    assert out == ""


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--handle", "eve", "--key", "not-a-key"], "invalid user key"),
        (["--handle", "eve", "--key", "ab" * 31], "invalid user key"),
        (["--handle", "eve", "--key", "<seed>"], "seed"),
        (["--handle", "eve", "--key", "<key>", "--role", "root"], "--role must be one of"),
        (["--handle", "", "--key", "<key>"], "--handle must not be empty"),
        (["--handle", "e\tve", "--key", "<key>"], "printable"),
        (["--handle", "e" * 65, "--key", "<key>"], "at most 64"),
    ],
)
async def test_invalid_input_exits_1_before_anything_is_written(
    stacks: StackFactory, args: list[str], reason: str
) -> None:
    stack, where = await _stack(stacks)
    pair = KeyPair.generate(Prefix.USER)
    args = [{"<key>": pair.public_key, "<seed>": pair.seed}.get(a, a) for a in args]
    js = (await stacks.connect(stack)).jetstream(timeout=3.0)
    before = await eventually(lambda: js.stream_info(USERS_STREAM), until=bool, what="info")

    code, out, err = await _user_cli("add", *args, *where)

    line = _one_line_error(code, err)
    assert reason in line
    assert pair.seed not in line
    assert out == ""
    after = await eventually(lambda: js.stream_info(USERS_STREAM), until=bool, what="info")
    assert after.state.last_seq == before.state.last_seq


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_user_add_succeeds_with_the_users_bucket_leader_stopped(
    stacks: StackFactory, kill: bool
) -> None:
    stack, where = await _stack(stacks)
    js = (await stacks.connect(stack)).jetstream(timeout=3.0)
    info = await eventually(
        lambda: js.stream_info(USERS_STREAM),
        until=lambda i: i.cluster is not None and i.cluster.leader is not None,
        what="users stream leader",
    )
    assert info.cluster is not None
    leader = info.cluster.leader
    assert leader in stack.spec.node_names
    stack.stop_node(leader, kill=kill)
    key = _user_key()

    code, out, err = await _user_cli(
        "add", "--handle", "carol", "--key", key, "--role", "admin", *where, "--json"
    )

    assert code == 0, err
    result = json.loads(out)
    assert result["user"]["key"] == key
    replication = result["replication"]
    assert replication["leader"] in stack.spec.node_names
    assert replication["leader"] != leader
    assert replication["followers"] == 2
    survivors = tuple(n for n in stack.spec.node_names if n != leader)
    nc = await stacks.connect(stack, nodes=survivors)
    store = await eventually(lambda: JetStreamStore.open(nc), until=bool, what="store open")
    stored = await _stored(store, key)
    assert stored.value.role is Role.ADMIN
    assert stored.value.status is Status.ACTIVE
    assert stored.value.created_at == result["user"]["created_at"]

    code, out, err = await _user_cli("list", *where, "--json")

    assert code == 0, err
    assert key in {u["key"] for u in json.loads(out)}


async def test_without_a_quorum_user_add_gives_up_within_its_timeout_with_one_line(
    stacks: StackFactory,
) -> None:
    stack, where = await _stack(stacks)
    for name in stack.spec.node_names[1:]:
        stack.stop_node(name)

    code, out, err = await run_cli(
        "user",
        "add",
        "--handle",
        "dan",
        "--key",
        _user_key(),
        *where,
        "--timeout",
        "6",
        timeout=60.0,
    )

    line = _one_line_error(code, err)
    assert "gave up" in line
    assert "majority of nodes" in line
    assert out == ""
