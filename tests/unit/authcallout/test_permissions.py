"""The permission set of a user: exactly its rooms, its inbox and its own history consumers."""

from __future__ import annotations

import itertools

import pytest

from unibus.authcallout.permissions import Permissions, permissions_for
from unibus.authcallout.protocol import AuthRequest, allow_response, user_jwt
from unibus.core import naming
from unibus.core.errors import InvalidNameError, NkeyError
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.xkeys import CurveKeyPair

ROOM = "room0000000000000001"
OTHER_ROOM = "room0000000000000002"
STREAM = "UNIBUS_messages"
ROOM_CAP = 256  # SPEC §5 default
MAX_PAYLOAD = 1024 * 1024  # nats-server default max_payload: the response must fit in one message


def user() -> str:
    return KeyPair.generate(Prefix.USER).public_key


def rooms(count: int) -> list[str]:
    return [f"room{i:016d}" for i in range(count)]


def overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (``*`` one token, ``>`` the rest)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in itertools.zip_longest(ta, tb):
        if x is None or y is None:
            return False
        if x == ">" or y == ">":
            return True
        if "*" not in (x, y) and x != y:
            return False
    return True


def test_overlap_helper_follows_nats_wildcard_rules() -> None:
    assert overlap("a.*.c", "a.b.c")
    assert overlap("a.>", "a.b.c.d")
    assert overlap("a.*.*", "*.b.>")
    assert not overlap("a.>", "a")
    assert not overlap("a.*", "a.b.c")
    assert not overlap("a.b", "a.c")


# -- the exact set --------------------------------------------------------------------------------


def test_one_user_in_one_room_gets_exactly_this_set() -> None:
    key = user()
    tok = naming.user_token(key)
    history = []
    for slot in range(naming.HISTORY_SLOTS):
        consumer = f"h-{ROOM}-{tok}-{slot}"
        history += [
            f"$JS.API.CONSUMER.CREATE.{STREAM}.{consumer}.unibus.room.{ROOM}.msg",
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer}",
            f"$JS.API.CONSUMER.DELETE.{STREAM}.{consumer}",
            f"$JS.ACK.{STREAM}.{consumer}.*.*.*.*.*",
            f"$JS.ACK.*.*.{STREAM}.{consumer}.*.*.*.*.>",
        ]
    assert permissions_for(key, [ROOM]) == Permissions(
        pub_allow=tuple(sorted([f"unibus.room.{ROOM}.>", *history])),
        sub_allow=tuple(sorted([f"unibus.room.{ROOM}.>", f"_INBOX_{tok}.>"])),
    )
    assert naming.HISTORY_SLOTS == 2


def test_the_set_is_sorted_without_duplicates_whatever_the_room_order() -> None:
    key = user()
    forward = permissions_for(key, [ROOM, OTHER_ROOM, ROOM])
    assert forward == permissions_for(key, [OTHER_ROOM, ROOM])
    for allow in (forward.pub_allow, forward.sub_allow):
        assert list(allow) == sorted(set(allow))


def test_a_user_without_rooms_may_only_read_its_inbox() -> None:
    key = user()
    assert permissions_for(key, []) == Permissions(
        pub_allow=(), sub_allow=(f"{naming.inbox_prefix(key)}.>",)
    )


# -- nothing wider than the rooms -------------------------------------------------------------


# Subjects (or whole namespaces) no user permission may match.
FORBIDDEN = [
    "$JS.API.CONSUMER.CREATE.UNIBUS_messages",  # legacy create: any config in the body
    "$JS.API.CONSUMER.CREATE.UNIBUS_messages.x",  # unfiltered named create
    f"$JS.API.CONSUMER.CREATE.UNIBUS_messages.x.unibus.room.{ROOM}.msg",  # someone's name
    "$JS.API.CONSUMER.DURABLE.CREATE.UNIBUS_messages.x",
    "$JS.API.CONSUMER.MSG.NEXT.UNIBUS_messages.x",
    "$JS.API.CONSUMER.INFO.UNIBUS_messages.x",
    "$JS.API.CONSUMER.DELETE.UNIBUS_messages.x",
    "$JS.API.CONSUMER.LIST.UNIBUS_messages",
    "$JS.API.CONSUMER.NAMES.UNIBUS_messages",
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.MSG.GET.UNIBUS_messages",
    "$JS.API.DIRECT.GET.UNIBUS_messages",
    "$JS.API.STREAM.INFO.UNIBUS_messages",
    "$JS.API.STREAM.PURGE.UNIBUS_messages",
    "$KV.UNIBUS_users.x",
    "$O.UNIBUS_blobs.>",
    "$SYS.>",
    "_INBOX.>",
    "$JS.FC.>",
    f"unibus.room.{OTHER_ROOM}.msg",
    "unibus.rooms",
]


def test_no_subject_reaches_beyond_the_users_rooms() -> None:
    key = user()
    perms = permissions_for(key, [ROOM, "room0000000000000003"])
    for subject in perms.pub_allow + perms.sub_allow:
        assert subject not in (">", "$JS.API.>", "_INBOX.>")
        assert not subject.startswith("$SYS")
        for forbidden in FORBIDDEN:
            assert not overlap(subject, forbidden), (subject, forbidden)
        tokens = subject.split(".")
        if subject.startswith("unibus.room."):
            assert len(tokens) == 4
            assert tokens[3] == ">"
            assert naming.is_room_id(tokens[2])
        elif subject.startswith("$JS.API."):
            assert "*" not in tokens
            assert ">" not in tokens
        elif subject.startswith("$JS.ACK."):
            consumer = tokens[3] if tokens[2] == STREAM else tokens[5]
            assert consumer.startswith("h-")
            assert naming.user_token(key) in consumer
        else:
            assert subject == f"{naming.inbox_prefix(key)}.>"


def ack_subscriptions(consumer: str) -> list[str]:
    """What a 2.14+ server subscribes for every consumer, whatever js_ack_fc_v2 says."""
    return [
        f"$JS.ACK.{STREAM}.{consumer}.*.*.*.*.*",
        f"$JS.ACK._.Fe6kvyRx.{STREAM}.{consumer}.*.*.*.*.>",
        f"$JS.ACK.mydomain.Fe6kvyRx.{STREAM}.{consumer}.*.*.*.*.>",
    ]


def test_ack_permissions_reach_no_other_consumers_ack_subscription() -> None:
    alice, bob = user(), user()
    victims = [naming.history_consumer(ROOM, bob, s) for s in range(naming.HISTORY_SLOTS)]
    victims += ["KV_watcher", naming.history_consumer(ROOM, alice, 0)[:-1] + "9"]
    alice_acks = [s for s in permissions_for(alice, [ROOM]).pub_allow if s.startswith("$JS.ACK")]
    assert len(alice_acks) == 2 * naming.HISTORY_SLOTS
    for pattern, victim in itertools.product(alice_acks, victims):
        for subscription in ack_subscriptions(victim):
            assert not overlap(pattern, subscription), (pattern, subscription)
    # Alice's own consumers do receive her acks, in both layouts.
    own = naming.history_consumer(ROOM, alice, 0)
    for subscription in ack_subscriptions(own):
        assert any(overlap(pattern, subscription) for pattern in alice_acks)


def test_an_open_ended_v2_ack_pattern_would_reach_another_consumer() -> None:
    # Why the ack patterns pin their token count: this 9-token subject matches the
    # looser v2 pattern and lands on bob's v1 ack subscription, where a "+NXT" body
    # would pull bob's next message into alice's inbox.
    alice, bob = user(), user()
    mine = naming.history_consumer(ROOM, alice, 0)
    theirs = naming.history_consumer(ROOM, bob, 0)
    loose = f"$JS.ACK.*.*.{STREAM}.{mine}.>"
    attack = f"$JS.ACK.{STREAM}.{theirs}.{STREAM}.{mine}.1.1.1"
    assert overlap(loose, attack)
    assert overlap(ack_subscriptions(theirs)[0], attack)
    assert not any(overlap(p, attack) for p in permissions_for(alice, [ROOM]).pub_allow)


def test_two_users_in_one_room_share_the_room_and_nothing_else() -> None:
    alice, bob = user(), user()
    a, b = permissions_for(alice, [ROOM]), permissions_for(bob, [ROOM])
    room = f"unibus.room.{ROOM}.>"
    a_private = [s for s in a.pub_allow + a.sub_allow if s != room]
    b_private = [s for s in b.pub_allow + b.sub_allow if s != room]
    assert a_private
    assert b_private
    for mine, theirs in itertools.product(a_private, b_private):
        assert not overlap(mine, theirs), (mine, theirs)
    assert naming.inbox_prefix(alice) != naming.inbox_prefix(bob)
    assert a.sub_allow != b.sub_allow


def test_each_history_slot_has_its_own_consumer() -> None:
    key = user()
    pub = permissions_for(key, [ROOM]).pub_allow
    consumers = {naming.history_consumer(ROOM, key, s) for s in range(naming.HISTORY_SLOTS)}
    assert len(consumers) == naming.HISTORY_SLOTS
    for consumer in consumers:
        assert naming.consumer_next_subject(consumer) in pub
        assert naming.consumer_create_subject(ROOM, consumer) in pub
    one = permissions_for(key, [ROOM], slots=1).pub_allow
    assert naming.consumer_next_subject(naming.history_consumer(ROOM, key, 0)) in one
    assert naming.consumer_next_subject(naming.history_consumer(ROOM, key, 1)) not in one
    assert permissions_for(key, [ROOM], slots=0).pub_allow == (f"unibus.room.{ROOM}.>",)


@pytest.mark.parametrize("slots", [-1, naming.HISTORY_SLOTS + 1])
def test_slots_beyond_the_named_consumers_are_refused(slots: int) -> None:
    with pytest.raises(ValueError, match="slots"):
        permissions_for(user(), [ROOM], slots=slots)


@pytest.mark.parametrize("room", ["ROOM0000000000000001", "room.0000000000000001", "*", ">", ""])
def test_a_malformed_room_id_is_refused(room: str) -> None:
    with pytest.raises(InvalidNameError):
        permissions_for(user(), [ROOM, room])


def test_rooms_given_as_one_string_are_refused() -> None:
    with pytest.raises(TypeError):
        permissions_for(user(), ROOM)


@pytest.mark.parametrize(
    "key",
    [
        "00" * 32,  # the legacy hex form hashes to another token: canonicalize first
        " " + KeyPair.generate(Prefix.USER).public_key,
        KeyPair.generate(Prefix.ACCOUNT).public_key,
        "*",
    ],
)
def test_only_a_canonical_user_key_gets_permissions(key: str) -> None:
    with pytest.raises(NkeyError):
        permissions_for(key, [ROOM])


# -- size at the room cap ------------------------------------------------------------------------


def test_a_full_user_jwt_at_the_room_cap_stays_well_under_max_payload() -> None:
    key = user()
    perms = permissions_for(key, rooms(ROOM_CAP))
    assert len(perms.pub_allow) == ROOM_CAP * (1 + 5 * naming.HISTORY_SLOTS)
    assert len(perms.sub_allow) == ROOM_CAP + 1

    issuer, server_xkey, callout = (
        KeyPair.generate(Prefix.ACCOUNT),
        CurveKeyPair.generate(),
        CurveKeyPair.generate(),
    )
    request = AuthRequest(
        server_id=KeyPair.generate(Prefix.SERVER).public_key,
        server_name="n1",
        server_xkey=server_xkey.public_key,
        user_nkey=user(),
        client_id=1,
        client_kind="Client",
        client_type="nats",
        client_key=key,
        client_sig=None,
        nonce=None,
        expires=0.0,
    )
    token = user_jwt(issuer, request, user_key=key, permissions=perms, ttl=3600, now=0)
    response = allow_response(issuer, request, callout, token, now=0)
    # Measured: allow lists ~249 KB of JSON, user JWT ~339 KB, sealed response ~470 KB.
    # The response carries the user JWT base64-encoded once more, so it is what must fit
    # into one NATS message.
    assert len(token) < 400_000
    assert len(response) < MAX_PAYLOAD // 2
