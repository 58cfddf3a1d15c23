"""``unibus user``: argument validation and output, without a bus (no sockets)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from unibus.cli import users
from unibus.core.errors import ConfigError, NkeyError, StackError
from unibus.core.models import Role, Status, UserRecord
from unibus.core.nkeys import KeyPair, Prefix, decode_public
from unibus.core.provisioning import AssetKind, AssetStatus


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unibus")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    users.register(verbs)
    return parser


def _run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    result: int = args.handler(args)
    return result


def _key() -> str:
    return KeyPair.generate(Prefix.USER).public_key


def test_user_and_every_subverb_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["user"], ["user", "add"], ["user", "list"], ["user", "revoke"]):
        with pytest.raises(SystemExit) as excinfo:
            _parser().parse_args([*argv, "--help"])
        assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for option in ("--handle", "--key", "--role", "--dir", "--nats-url", "--ca", "--identity"):
        assert option in out
    assert out.count("--json") >= 3


def test_user_without_subverb_and_add_without_key_are_usage_errors() -> None:
    for argv in (["user"], ["user", "add", "--handle", "ada"], ["user", "revoke"]):
        with pytest.raises(SystemExit) as excinfo:
            _parser().parse_args(argv)
        assert excinfo.value.code == 2


def test_a_64_hex_key_becomes_its_canonical_u_key() -> None:
    pair = KeyPair.generate(Prefix.USER)
    raw = decode_public(pair.public_key)[1]

    lower = users.new_user(raw.hex(), "ada", "member", now=1.0)
    upper = users.new_user(raw.hex().upper(), "ada", "member", now=1.0)

    assert lower.key == upper.key == pair.public_key
    assert lower == UserRecord(
        key=pair.public_key,
        handle="ada",
        role=Role.MEMBER,
        status=Status.ACTIVE,
        created_at=1.0,
        updated_at=1.0,
    )


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not-a-key",
        "ab" * 31,
        KeyPair.generate(Prefix.ACCOUNT).public_key,
        KeyPair.generate(Prefix.USER).seed,
    ],
)
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(NkeyError):
        users.new_user(key, "ada", "member")


@pytest.mark.parametrize(
    ("handle", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\nb", "printable"),
        ("a\x1bb", "printable"),
        ("x" * 65, "at most 64"),
    ],
)
def test_a_bad_handle_is_refused_with_its_reason(handle: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        users.new_user(_key(), handle, "member")


def test_a_handle_is_trimmed_and_may_hold_64_printable_characters() -> None:
    assert users.check_handle("  Ada Lovelace  ") == "Ada Lovelace"
    assert users.check_handle("é" * 64) == "é" * 64


def test_roles_are_member_or_admin_only() -> None:
    assert users.check_role("admin") is Role.ADMIN
    assert users.check_role("Member") is Role.MEMBER
    for bad in ("", "root", "owner"):
        with pytest.raises(ConfigError, match="admin, member"):
            users.check_role(bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "add", "--handle", "ada", "--key", "nope"],
        ["user", "add", "--handle", "", "--key", _key()],
        ["user", "add", "--handle", "ada", "--key", _key(), "--role", "root"],
        ["user", "add", "--handle", "ada", "--key", _key(), "--timeout", "0"],
        ["user", "revoke", "nope"],
    ],
)
def test_validation_happens_before_the_stack_is_even_looked_up(
    tmp_path: Path, argv: list[str]
) -> None:
    # A missing stack would be a StackError: validation must fail first.
    with pytest.raises((NkeyError, ConfigError)):
        _run([*argv, "--dir", str(tmp_path / "absent")])


def test_valid_arguments_then_look_for_the_stack(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no stack"):
        _run(["user", "add", "--handle", "ada", "--key", _key(), "--dir", str(tmp_path)])


def test_a_re_add_counts_as_ours_only_when_it_is_exactly_the_record_written() -> None:
    written = users.new_user(_key(), "ada", "member", now=5.0)

    assert users.same_add(written, written)
    for change in (
        {"role": Role.ADMIN},
        {"handle": "bob"},
        {"created_at": 4.0},
        {"key": _key()},
    ):
        assert not users.same_add(msgspec.structs.replace(written, **change), written)


def test_the_table_aligns_columns_and_shows_every_user() -> None:
    ada = users.new_user(_key(), "ada", "admin", now=1.0)
    bob = msgspec.structs.replace(
        users.new_user(_key(), "bob the builder", "member", now=1.0), status=Status.REVOKED
    )

    lines = users.users_table([ada, bob]).splitlines()

    assert lines[0].split() == ["KEY", "HANDLE", "ROLE", "STATUS"]
    assert lines[1].split() == [ada.key, "ada", "admin", "active"]
    assert lines[2].startswith(bob.key)
    assert lines[2].endswith("member  revoked")
    assert lines[1].index("admin") == lines[0].index("ROLE") == lines[2].index("member")


def test_the_replication_line_has_leader_followers_and_messages() -> None:
    status = AssetStatus(
        name="UNIBUS_users",
        kind=AssetKind.KV,
        replicas=3,
        leader="n2",
        followers_current=2,
        followers=2,
        messages=7,
        degraded=False,
    )

    assert "leader=n2 followers_current=2/2 msgs=7" in users.replication_line(status)
    assert users.replication_json(status) is not None
    assert users.replication_json(None) is None
    assert "unknown" in users.replication_line(None)
