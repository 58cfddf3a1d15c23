"""``unibus user``: argument validation and output, without a bus (no sockets)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from unibus.cli import users
from unibus.cli.main import main as cli_main
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
    verbs = ("add", "list", "revoke", "reinstate", "promote", "demote")
    for argv in (["user"], *(["user", verb] for verb in verbs)):
        with pytest.raises(SystemExit) as excinfo:
            _parser().parse_args([*argv, "--help"])
        assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for option in ("--handle", "--key", "--role", "--dir", "--nats-url", "--ca", "--identity"):
        assert option in out
    assert out.count("--json") >= len(verbs)
    assert "last active admin cannot be demoted" in out
    assert "last active admin cannot be revoked" in out


def test_user_without_subverb_and_add_without_key_are_usage_errors() -> None:
    for argv in (
        ["user"],
        ["user", "add", "--handle", "ada"],
        *(["user", verb] for verb in ("revoke", "reinstate", "promote", "demote")),
    ):
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
        ["user", "reinstate", "nope"],
        ["user", "promote", "nope"],
        ["user", "demote", _key(), "--timeout", "-1"],
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


# -- changes on a legacy file (--db: offline, no bus) ---------------------------------------------
def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    assert cli_main(["user", *argv, "--json"]) == 0, capsys.readouterr().err
    found: dict[str, object] = json.loads(capsys.readouterr().out)
    return found


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert cli_main(["user", *argv]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("unibus user: error: ")
    return lines[0]


def _list_out(capsys: pytest.CaptureFixture[str], db: str) -> str:
    capsys.readouterr()
    assert cli_main(["user", "list", "--db", db, "--json"]) == 0
    return capsys.readouterr().out


def _add(db: str, handle: str, key: str, role: str = "member") -> None:
    assert (
        cli_main(["user", "add", "--db", db, "--handle", handle, "--key", key, "--role", role]) == 0
    )


def test_revoke_and_reinstate_on_a_legacy_file_report_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "legacy.db")
    ada = _key()
    _add(db, "ada", ada)

    revoked = _cli_json(capsys, "revoke", "--db", db, ada)
    reinstated = _cli_json(capsys, "reinstate", "--db", db, ada)
    again = _cli_json(capsys, "reinstate", "--db", db, ada)

    assert (revoked["result"], revoked["changed"]) == ("revoked", True)
    assert (reinstated["result"], reinstated["changed"]) == ("reinstated", True)
    user = reinstated["user"]
    assert isinstance(user, dict)
    assert (user["status"], user["role"]) == ("active", "member")
    assert (again["result"], again["changed"]) == ("already active", False)
    assert cli_main(["user", "reinstate", "--db", db, ada]) == 0
    assert f"{ada} (handle 'ada', role member, active) was already active" in (
        capsys.readouterr().out
    )


def test_the_last_active_admin_of_a_legacy_file_cannot_be_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "legacy.db")
    root, second = _key(), _key()
    _add(db, "root", root, "admin")

    line = _cli_error(capsys, "revoke", "--db", db, root)

    assert f"cannot revoke user {root}: it is the last active admin" in line
    assert "promote another user first" in line
    _add(db, "two", second, "admin")
    assert _cli_json(capsys, "revoke", "--db", db, root)["changed"] is True
    assert "last active admin" in _cli_error(capsys, "revoke", "--db", db, second)


@pytest.mark.parametrize("verb", ["promote", "demote"])
def test_a_role_change_on_a_legacy_file_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    db = str(tmp_path / "legacy.db")
    key = _key()
    role = "admin" if verb == "demote" else "member"
    _add(db, "a", _key(), "admin")
    _add(db, "b", key, role)

    line = _cli_error(capsys, verb, "--db", db, key)

    assert "is a legacy file, which cannot change a role" in line
    assert f"{verb} the user in the live bucket (without --db)" in line
    listed = {u["key"]: u for u in json.loads(_list_out(capsys, db))}
    assert listed[key]["role"] == role


def test_changing_an_unknown_user_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "legacy.db")
    key = _key()
    _add(db, "a", _key())

    line = _cli_error(capsys, "reinstate", "--db", db, key)

    assert f"no user {key} in {db}; nothing to reinstate" in line
