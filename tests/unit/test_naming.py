"""Subject, consumer and KV key naming: the one module callout and SDK share (SPEC §4-§5)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest

from unibus.core import naming
from unibus.core.errors import InvalidNameError
from unibus.core.nkeys import KeyPair, Prefix

ROOM = "r0abcdefghijklmnopq9"
OTHER_ROOM = "zz0123456789abcdefgh"
# nats.docs "NKey authentication": `nk -gen user -pubout`
DOCS_USER = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
_SUBJECT_TOKEN_UNSAFE = re.compile(r"[.*>\s]")

BAD_ROOM_IDS = [
    pytest.param("R0ABCDEFGHIJKLMNOPQ9", id="upper-case"),
    pytest.param("r0abcdefghijklmnopQ9", id="one-upper-case"),
    pytest.param(ROOM[:-1], id="too-short"),
    pytest.param(ROOM + "a", id="too-long"),
    pytest.param("", id="empty"),
    pytest.param("r0abcdefghijklmnop.9", id="dot"),
    pytest.param("r0abcdefghijklmnop*9", id="star"),
    pytest.param("r0abcdefghijklmnop>9", id="gt"),
    pytest.param("r0abcdefghijklmnop 9", id="space"),
    pytest.param("r0abcdefghijklmnop-9", id="dash"),
    pytest.param("r0abcdefghijklmnopq\n", id="trailing-newline"),
    pytest.param(ROOM + "\n", id="valid-plus-newline"),
    pytest.param("r0abcdefghijklmnopqé", id="non-ascii"),
]

UNSAFE_TOKENS = [
    pytest.param("", id="empty"),
    pytest.param("a.b", id="dot"),
    pytest.param("*", id="star"),
    pytest.param(">", id="gt"),
    pytest.param("a*", id="trailing-star"),
    pytest.param("a b", id="space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("ab\n", id="trailing-newline"),
    pytest.param("a/b", id="slash"),
    pytest.param("x" * 129, id="129-chars"),
]


def _user() -> str:
    return KeyPair.generate(Prefix.USER).public_key


# -- room ids -------------------------------------------------------------------------------


def test_room_id_alphabet_is_lower_case_alphanumeric() -> None:
    assert set(naming.ROOM_ID_ALPHABET) == set("abcdefghijklmnopqrstuvwxyz0123456789")


def test_new_room_id_uses_only_the_alphabet_and_fixed_length() -> None:
    for _ in range(200):
        room_id = naming.new_room_id()
        assert len(room_id) == naming.ROOM_ID_LENGTH
        assert set(room_id) <= set(naming.ROOM_ID_ALPHABET)
        assert naming.is_room_id(room_id)
        assert naming.check_room_id(room_id) == room_id


def test_new_room_ids_are_distinct() -> None:
    ids = {naming.new_room_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_is_room_id_accepts_a_well_formed_id() -> None:
    assert naming.is_room_id(ROOM)


@pytest.mark.parametrize("bad", BAD_ROOM_IDS)
def test_is_room_id_rejects_malformed_id(bad: str) -> None:
    assert not naming.is_room_id(bad)


@pytest.mark.parametrize("bad", BAD_ROOM_IDS)
def test_check_room_id_raises_invalid_name_for_malformed_id(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        naming.check_room_id(bad)


# -- subjects -------------------------------------------------------------------------------


def test_room_subject_is_the_room_msg_subject() -> None:
    assert naming.room_subject(ROOM) == f"unibus.room.{ROOM}.msg"


def test_room_wildcard_covers_everything_under_the_room() -> None:
    assert naming.room_wildcard(ROOM) == f"unibus.room.{ROOM}.>"


def test_room_subject_is_captured_by_the_history_stream_filter() -> None:
    filter_tokens = naming.ROOM_MESSAGES_FILTER.split(".")
    subject_tokens = naming.room_subject(ROOM).split(".")
    assert len(filter_tokens) == len(subject_tokens)
    assert all(f in ("*", s) for f, s in zip(filter_tokens, subject_tokens, strict=True))


def test_room_subject_rejects_upper_case_room_id() -> None:
    with pytest.raises(InvalidNameError):
        naming.room_subject(ROOM.upper())


@pytest.mark.parametrize("bad", BAD_ROOM_IDS)
@pytest.mark.parametrize("builder", [naming.room_subject, naming.room_wildcard])
def test_room_subject_builders_reject_malformed_room_id(
    builder: Callable[[str], str], bad: str
) -> None:
    with pytest.raises(InvalidNameError):
        builder(bad)


def test_room_subjects_of_two_rooms_differ() -> None:
    assert naming.room_subject(ROOM) != naming.room_subject(OTHER_ROOM)
    assert naming.room_wildcard(ROOM) != naming.room_wildcard(OTHER_ROOM)


def test_jetstream_asset_stream_names() -> None:
    assert naming.kv_stream(naming.USERS_BUCKET) == "KV_UNIBUS_users"
    assert naming.object_stream(naming.BLOBS_BUCKET) == "OBJ_UNIBUS_blobs"
    assert len(set(naming.KV_BUCKETS)) == len(naming.KV_BUCKETS) == 6


# -- user tokens and inboxes ----------------------------------------------------------------


def test_user_token_is_16_chars_of_lower_base32() -> None:
    for _ in range(50):
        assert re.fullmatch(r"[a-z2-7]{16}", naming.user_token(_user()))


def test_user_token_is_stable_across_calls() -> None:
    key = _user()
    assert naming.user_token(key) == naming.user_token(key)


def test_user_token_is_truncated_lower_base32_of_sha256() -> None:
    digest = hashlib.sha256(DOCS_USER.encode("ascii")).digest()
    expected = base64.b32encode(digest).decode("ascii").lower()[:16]
    assert naming.user_token(DOCS_USER) == expected


def test_user_token_of_a_known_key_never_changes_between_releases() -> None:
    # Consumer names and inbox prefixes embed this token: changing the derivation would
    # orphan every existing history consumer and break older SDKs' permissions.
    assert naming.user_token(DOCS_USER) == "c5ypvvwhgbrsrba2"
    assert naming.history_consumer(ROOM, DOCS_USER, 0) == f"h-{ROOM}-c5ypvvwhgbrsrba2-0"
    assert naming.inbox_prefix(DOCS_USER) == "_INBOX_c5ypvvwhgbrsrba2"


def test_user_tokens_of_distinct_users_differ() -> None:
    keys = {_user() for _ in range(300)}
    assert len({naming.user_token(k) for k in keys}) == len(keys)


def test_inbox_prefix_is_one_subject_token() -> None:
    prefix = naming.inbox_prefix(_user())
    assert prefix.startswith("_INBOX_")
    assert not _SUBJECT_TOKEN_UNSAFE.search(prefix)


def test_inbox_prefix_embeds_the_user_token() -> None:
    key = _user()
    assert naming.inbox_prefix(key) == f"_INBOX_{naming.user_token(key)}"


def test_inbox_prefixes_of_distinct_users_differ() -> None:
    keys = [_user() for _ in range(100)]
    prefixes = {naming.inbox_prefix(k) for k in keys}
    assert len(prefixes) == len(keys)


def test_inbox_prefix_is_not_the_shared_default_inbox() -> None:
    # "_INBOX.>" is the nats-py default every client shares; a per-user prefix must differ
    # in its first token, or a permission on it would cover other users' replies.
    assert naming.inbox_prefix(_user()).split(".")[0] != "_INBOX"


# -- history consumers ----------------------------------------------------------------------


def test_history_consumer_pins_room_user_token_and_slot() -> None:
    key = _user()
    name = naming.history_consumer(ROOM, key, 1)
    assert name == f"h-{ROOM}-{naming.user_token(key)}-1"


def test_history_consumer_name_is_a_single_safe_subject_token() -> None:
    for slot in range(naming.HISTORY_SLOTS):
        name = naming.history_consumer(ROOM, _user(), slot)
        assert not _SUBJECT_TOKEN_UNSAFE.search(name)
        assert re.fullmatch(r"[-a-z0-9]+", name)


def test_history_consumer_is_deterministic() -> None:
    key = _user()
    assert naming.history_consumer(ROOM, key, 0) == naming.history_consumer(ROOM, key, 0)


def test_history_consumers_of_two_users_never_share_a_name() -> None:
    users = [_user() for _ in range(100)]
    names = {
        naming.history_consumer(ROOM, user, slot)
        for user in users
        for slot in range(naming.HISTORY_SLOTS)
    }
    assert len(names) == len(users) * naming.HISTORY_SLOTS


def test_history_consumers_of_two_slots_of_one_user_differ() -> None:
    key = _user()
    names = {naming.history_consumer(ROOM, key, slot) for slot in range(naming.HISTORY_SLOTS)}
    assert len(names) == naming.HISTORY_SLOTS >= 2


def test_history_consumers_of_two_rooms_differ() -> None:
    key = _user()
    assert naming.history_consumer(ROOM, key, 0) != naming.history_consumer(OTHER_ROOM, key, 0)


@pytest.mark.parametrize("slot", [-1, naming.HISTORY_SLOTS, naming.HISTORY_SLOTS + 5, 100])
def test_history_consumer_rejects_slot_out_of_bounds(slot: int) -> None:
    with pytest.raises(InvalidNameError):
        naming.history_consumer(ROOM, _user(), slot)


@pytest.mark.parametrize("bad", BAD_ROOM_IDS)
def test_history_consumer_rejects_malformed_room_id(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        naming.history_consumer(bad, _user(), 0)


# -- consumer API subjects ------------------------------------------------------------------


def test_consumer_create_subject_carries_the_room_subject_as_filter() -> None:
    consumer = naming.history_consumer(ROOM, _user(), 0)
    subject = naming.consumer_create_subject(ROOM, consumer)
    prefix = f"$JS.API.CONSUMER.CREATE.{naming.MESSAGES_STREAM}.{consumer}."
    assert subject == prefix + naming.room_subject(ROOM)


def test_consumer_create_subject_rejects_malformed_room_id() -> None:
    with pytest.raises(InvalidNameError):
        naming.consumer_create_subject("UPPER", "h-x-y-0")


def test_consumer_create_subjects_for_two_rooms_differ() -> None:
    key = _user()
    a = naming.consumer_create_subject(ROOM, naming.history_consumer(ROOM, key, 0))
    b = naming.consumer_create_subject(OTHER_ROOM, naming.history_consumer(OTHER_ROOM, key, 0))
    assert a != b


@pytest.mark.parametrize(
    ("builder", "verb"),
    [
        (naming.consumer_next_subject, "MSG.NEXT"),
        (naming.consumer_info_subject, "INFO"),
        (naming.consumer_delete_subject, "DELETE"),
    ],
)
def test_consumer_api_subjects_name_stream_and_consumer(
    builder: Callable[[str], str], verb: str
) -> None:
    consumer = naming.history_consumer(ROOM, _user(), 1)
    assert builder(consumer) == f"$JS.API.CONSUMER.{verb}.UNIBUS_messages.{consumer}"


# -- KV keys --------------------------------------------------------------------------------


def test_member_key_is_room_then_user() -> None:
    key = _user()
    assert naming.member_key(ROOM, key) == f"{ROOM}.{key}"
    assert naming.member_key(ROOM, key).startswith(naming.member_prefix(ROOM))


def test_room_index_key_is_user_then_room() -> None:
    key = _user()
    assert naming.room_index_key(key, ROOM) == f"{key}.{ROOM}"
    assert naming.room_index_key(key, ROOM).startswith(naming.room_index_prefix(key))


def test_sealed_key_key_names_room_epoch_key_id_and_user() -> None:
    key = _user()
    assert naming.sealed_key_key(ROOM, 3, "kid", key) == f"{ROOM}.3.kid.{key}"
    assert naming.sealed_key_key(ROOM, 3, "kid", key).startswith(naming.sealed_keys_prefix(ROOM))


def test_sealed_key_keys_of_two_attempts_of_one_epoch_differ() -> None:
    key = _user()
    assert naming.sealed_key_key(ROOM, 2, "aaa", key) != naming.sealed_key_key(ROOM, 2, "bbb", key)


@pytest.mark.parametrize("epoch", [0, -1])
def test_sealed_key_key_rejects_epoch_below_one(epoch: int) -> None:
    with pytest.raises(InvalidNameError):
        naming.sealed_key_key(ROOM, epoch, "kid", _user())


def test_nonce_key_is_caller_then_nonce() -> None:
    key = _user()
    assert naming.nonce_key(key, "n-1_2=") == f"{key}.n-1_2="


def test_kv_token_accepts_128_chars_and_the_documented_alphabet() -> None:
    longest = "x" * 128
    assert naming.nonce_key(longest, "-_=AZaz09") == f"{longest}.-_=AZaz09"


def test_kv_prefixes_of_a_room_do_not_match_a_longer_room_id() -> None:
    # The trailing dot keeps "room" from matching "room2..." in a prefix scan.
    assert naming.member_prefix(ROOM).endswith(".")
    assert naming.sealed_keys_prefix(ROOM).endswith(".")
    assert naming.room_index_prefix(_user()).endswith(".")


_KV_BUILDERS_TAKING_A_TOKEN: list[tuple[str, Callable[[str], str]]] = [
    ("member_key.user", lambda bad: naming.member_key(ROOM, bad)),
    ("room_index_key.user", lambda bad: naming.room_index_key(bad, ROOM)),
    ("room_index_prefix.user", naming.room_index_prefix),
    ("sealed_key_key.key_id", lambda bad: naming.sealed_key_key(ROOM, 1, bad, DOCS_USER)),
    ("sealed_key_key.user", lambda bad: naming.sealed_key_key(ROOM, 1, "kid", bad)),
    ("nonce_key.caller", lambda bad: naming.nonce_key(bad, "nonce")),
    ("nonce_key.nonce", lambda bad: naming.nonce_key(DOCS_USER, bad)),
]


@pytest.mark.parametrize("bad", UNSAFE_TOKENS)
@pytest.mark.parametrize(
    "builder",
    [pytest.param(b, id=name) for name, b in _KV_BUILDERS_TAKING_A_TOKEN],
)
def test_kv_key_builders_refuse_unsafe_tokens(builder: Callable[[str], str], bad: str) -> None:
    with pytest.raises(InvalidNameError):
        builder(bad)


_KV_BUILDERS_TAKING_A_ROOM: list[tuple[str, Callable[[str], str]]] = [
    ("member_key", lambda bad: naming.member_key(bad, DOCS_USER)),
    ("member_prefix", naming.member_prefix),
    ("room_index_key", lambda bad: naming.room_index_key(DOCS_USER, bad)),
    ("sealed_key_key", lambda bad: naming.sealed_key_key(bad, 1, "kid", DOCS_USER)),
    ("sealed_keys_prefix", naming.sealed_keys_prefix),
]


@pytest.mark.parametrize("bad", ["UPPERCASEROOMID00000", "a.b", "*", ">", "", "short"])
@pytest.mark.parametrize(
    "builder",
    [pytest.param(b, id=name) for name, b in _KV_BUILDERS_TAKING_A_ROOM],
)
def test_kv_key_builders_refuse_malformed_room_id(builder: Callable[[str], str], bad: str) -> None:
    with pytest.raises(InvalidNameError):
        builder(bad)


def test_new_key_id_is_a_safe_distinct_kv_token() -> None:
    ids = {naming.new_key_id() for _ in range(500)}
    assert len(ids) == 500
    for key_id in ids:
        assert re.fullmatch(r"[a-z0-9]{12}", key_id)
        naming.sealed_key_key(ROOM, 1, key_id, DOCS_USER)


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "", "x" * 65])
def test_consumer_subject_builders_refuse_names_that_widen_a_permission(bad: str) -> None:
    for build in (
        naming.consumer_next_subject,
        naming.consumer_info_subject,
        naming.consumer_delete_subject,
    ):
        with pytest.raises(InvalidNameError):
            build(bad)
    with pytest.raises(InvalidNameError):
        naming.consumer_create_subject(naming.new_room_id(), bad)
