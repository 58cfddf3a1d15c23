"""The subjects one user may publish and subscribe to (SPEC §5; notes/authcallout.md §6).

A user reaches exactly: its rooms' subjects, its own inbox, and, per room and history
slot, the one pull consumer whose name carries its own user token. Every subject is
built by :mod:`unibus.core.naming`, which the SDK uses too, so the callout and the
clients cannot disagree about a name.

Why each JetStream entry is exact:

* create: only the filtered form ``$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>``;
  the server refuses a body filter that differs from the subject's (err 10131), so the
  permission is the filter ACL. The unfiltered and legacy create forms stay denied.
* next / info: the consumer name is pinned; ``MSG.NEXT.<stream>.*`` would let a user
  drain another user's consumer.
* acks: both reply layouts a 2.14+ server accepts, each pinned to its exact token count.
  Every consumer subscribes ``$JS.ACK.<stream>.<consumer>.*.*.*.*.*`` (v1, 9 tokens)
  and ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.*.*.*.*.>`` (v2, 11+ tokens),
  whatever ``js_ack_fc_v2`` says. A looser ``$JS.ACK.*.*.<stream>.<C>.>`` would also
  match the 9-token subject ``$JS.ACK.<stream>.<victim>.<stream>.<C>.x.y.z``, which
  lands on the *victim's* v1 ack subscription, and a ``+NXT`` body with the attacker's
  inbox as reply would pull the victim's messages. With the token counts fixed, a v1
  subject can only reach C's v1 subscription and a v2 subject only C's v2 one.

>>> from unibus.core.nkeys import KeyPair
>>> p = permissions_for(KeyPair.generate(Prefix.USER).public_key, ["a" * 20], slots=1)
>>> [s for s in p.pub_allow if s.startswith("unibus.")]
['unibus.room.aaaaaaaaaaaaaaaaaaaa.>']
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from unibus.core import naming
from unibus.core.nkeys import Prefix, decode_public

__all__ = ["Permissions", "permissions_for"]

_ACK_PREFIX = "$JS.ACK"
# Trailing tokens of an ack reply: delivered, stream seq, consumer seq, timestamp, pending.
_ACK_V1_TAIL = "*.*.*.*.*"  # exactly 9 tokens in all
_ACK_V2_TAIL = "*.*.*.*.>"  # 11 or more (a later server may append a token)
_CACHED_SETS = 256  # at most ~0.3 MB each (a member of 256 rooms)


@dataclass(frozen=True)
class Permissions:
    """Allow lists for the user JWT; sorted, without duplicates.

    An empty list does not mean "nothing": NATS reads a missing allow list as no
    restriction at all, so :func:`unibus.authcallout.protocol.user_jwt` turns an empty
    list into an explicit deny of everything.
    """

    pub_allow: tuple[str, ...]
    sub_allow: tuple[str, ...]


def _ack_subjects(consumer: str) -> tuple[str, str]:
    """The v1 and v2 ack reply patterns of one history consumer (see the module docstring)."""
    stream = naming.MESSAGES_STREAM
    return (
        f"{_ACK_PREFIX}.{stream}.{consumer}.{_ACK_V1_TAIL}",
        f"{_ACK_PREFIX}.*.*.{stream}.{consumer}.{_ACK_V2_TAIL}",
    )


def _history_subjects(room_id: str, user_key: str, slots: int) -> Iterable[str]:
    for slot in range(slots):
        consumer = naming.history_consumer(room_id, user_key, slot)
        yield naming.consumer_create_subject(room_id, consumer)
        yield naming.consumer_next_subject(consumer)
        # A device removes its own consumer when it is done (the name pins it to this user).
        # No CONSUMER.INFO: the create answers with the info, and at the room cap every
        # subject costs ~18 KB of the response the server must accept in one message.
        yield naming.consumer_delete_subject(consumer)
        yield from _ack_subjects(consumer)


def permissions_for(
    user_key: str, rooms: Sequence[str], *, slots: int = naming.HISTORY_SLOTS
) -> Permissions:
    """The complete permission set of ``user_key`` as a member of ``rooms``.

    ``slots`` history consumers per room (0 grants no history access). The room cap is
    the caller's: this function grants whatever it is given.

    Raises:
        NkeyError: ``user_key`` is not a canonical ``U...`` key (the per-user token is a
            hash of the key's text, so another spelling would name other consumers).
        InvalidNameError: a room id is malformed.
        ValueError: ``slots`` outside ``0..HISTORY_SLOTS``.
        TypeError: ``rooms`` is a single string.
    """
    decode_public(user_key, Prefix.USER)
    if isinstance(rooms, str):
        raise TypeError("rooms must be a sequence of room ids, not one string")
    if not 0 <= slots <= naming.HISTORY_SLOTS:
        raise ValueError(f"slots must be in 0..{naming.HISTORY_SLOTS}")
    return _permissions(user_key, frozenset(rooms), slots)


@functools.lru_cache(maxsize=_CACHED_SETS)
def _permissions(user_key: str, rooms: frozenset[str], slots: int) -> Permissions:
    """The set itself: a pure function of its arguments, so each user's set is built once
    per room set (a member of 256 rooms holds ~3,000 subjects: 3 ms to build), not on
    every connect. A malformed room id raises and is not cached."""
    pub: set[str] = set()
    sub: set[str] = {f"{naming.inbox_prefix(user_key)}.>"}
    for room_id in rooms:
        room = naming.room_wildcard(room_id)
        pub.add(room)
        sub.add(room)
        pub.update(_history_subjects(room_id, user_key, slots))
    return Permissions(pub_allow=tuple(sorted(pub)), sub_allow=tuple(sorted(sub)))
