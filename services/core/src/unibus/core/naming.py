"""Every name unibus puts on the wire or in JetStream: accounts, subjects, buckets, keys.

The callout computes permissions from these functions and the SDK publishes and
subscribes with the same functions, so the two can never disagree about a subject.

>>> room_subject("r0abc")
'unibus.room.r0abc.msg'
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Final, NamedTuple

from unibus.core.errors import InvalidNameError

# -- accounts (SPEC §3) -------------------------------------------------------------------
BUS_ACCOUNT: Final = "UNIBUS"
"""The KV buckets, the history stream and the object store; only trusted identities connect."""
MEMBER_ACCOUNT: Final = "MEMBERS"
"""Every callout-admitted user. It holds no JetStream asset: see ``MEMBER_SERVICES``."""
CALLOUT_ACCOUNT: Final = "AUTH"
"""Only the callout service connects here; the server publishes auth requests into it."""
SYSTEM_ACCOUNT: Final = "SYS"

CALLOUT_SUBJECT: Final = "$SYS.REQ.USER.AUTH"
CALLOUT_QUEUE: Final = "unibus-authcallout"

_JS_API: Final = "$JS.API"

# -- JetStream assets (SPEC §4) -------------------------------------------------------------
USERS_BUCKET: Final = "UNIBUS_users"
ROOMS_BUCKET: Final = "UNIBUS_rooms"
MEMBERS_BUCKET: Final = "UNIBUS_members"
ROOMS_BY_MEMBER_BUCKET: Final = "UNIBUS_rooms_by_member"
ROOM_KEYS_BUCKET: Final = "UNIBUS_room_keys"
NONCES_BUCKET: Final = "UNIBUS_nonces"
KV_BUCKETS: Final = (
    USERS_BUCKET,
    ROOMS_BUCKET,
    MEMBERS_BUCKET,
    ROOMS_BY_MEMBER_BUCKET,
    ROOM_KEYS_BUCKET,
    NONCES_BUCKET,
)
MESSAGES_STREAM: Final = "UNIBUS_messages"
BLOBS_BUCKET: Final = "UNIBUS_blobs"


def kv_stream(bucket: str) -> str:
    """The JetStream stream backing a KV bucket."""
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    """The JetStream stream backing an object store."""
    return f"OBJ_{bucket}"


# -- rooms ------------------------------------------------------------------------------------
ROOM_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
ROOM_ID_LENGTH: Final = 20
_ROOM_ID_RE: Final = re.compile(rf"[{ROOM_ID_ALPHABET}]{{{ROOM_ID_LENGTH}}}")
ROOM_SUBJECT_PREFIX: Final = "unibus.room"
ROOM_MESSAGES_FILTER: Final = f"{ROOM_SUBJECT_PREFIX}.*.msg"
"""What the history stream captures."""


class MemberService(NamedTuple):
    """One subject the bus account exports to the member account."""

    subject: str
    streamed: bool = False
    """Answered by many messages (a pull request: a batch, then a status), not one."""
    jetstream_api: bool = False
    """Served by the JetStream API, which must learn that the request came through the
    bus account's export (the import shares the request's origin)."""


def _member_services() -> tuple[MemberService, ...]:
    stream = MESSAGES_STREAM
    return (
        MemberService(ROOM_MESSAGES_FILTER),
        MemberService(f"{_JS_API}.CONSUMER.CREATE.{stream}.>", jetstream_api=True),
        MemberService(f"{_JS_API}.CONSUMER.DELETE.{stream}.*", jetstream_api=True),
        MemberService(f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.*", streamed=True, jetstream_api=True),
        MemberService(f"$JS.ACK.{stream}.>"),
        MemberService(f"$JS.ACK.*.*.{stream}.>"),
        # No member may publish it, but an account that imports it is not given the
        # server's own "JetStream not enabled" responder, which would answer every
        # member's JetStream request first, with a 503.
        MemberService(f"{_JS_API}.INFO", jetstream_api=True),
    )


MEMBER_SERVICES: Final = _member_services()
"""What the bus account exports to the member account, and nothing else.

A member's publish with a reply subject of its choice reaches the bus account only
through one of these service imports, and an import always rewrites the reply to a
fresh ``_R_`` subject that routes the answer back into the member account. So no
subject a member names as a reply can reach a stream: JetStream's answer (a publish ack,
an API response) is delivered in the member account, which holds no stream, bucket or
object store. Per-user permissions still pin each subject to the user's rooms and
consumers; an import only makes a subject reachable at all.
"""


def new_room_id() -> str:
    """A fresh room id: lower-case alphanumeric, so it is safe as a subject token."""
    return "".join(secrets.choice(ROOM_ID_ALPHABET) for _ in range(ROOM_ID_LENGTH))


def is_room_id(value: str) -> bool:
    return _ROOM_ID_RE.fullmatch(value) is not None


def check_room_id(value: str) -> str:
    """Return ``value`` if it is a well-formed room id, else raise ``InvalidNameError``."""
    if not is_room_id(value):
        raise InvalidNameError(f"not a room id: expected {ROOM_ID_LENGTH} characters from [a-z0-9]")
    return value


def room_subject(room_id: str) -> str:
    """The subject room messages are published on (and captured by the history stream)."""
    return f"{ROOM_SUBJECT_PREFIX}.{check_room_id(room_id)}.msg"


def room_wildcard(room_id: str) -> str:
    """Everything a member may publish or subscribe to in one room."""
    return f"{ROOM_SUBJECT_PREFIX}.{check_room_id(room_id)}.>"


# -- per-user names ---------------------------------------------------------------------------
_USER_TOKEN_LENGTH: Final = 16


def user_token(user_key: str) -> str:
    """A short stable token derived from a ``U…`` key, safe in subjects and consumer names.

    80 bits of SHA-256: another user cannot choose a key that lands on the same token.
    """
    digest = hashlib.sha256(user_key.encode("ascii")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_USER_TOKEN_LENGTH]


def inbox_prefix(user_key: str) -> str:
    """The per-user inbox prefix: replies to one user are invisible to every other user."""
    return f"_INBOX_{user_token(user_key)}"


# -- history consumers ------------------------------------------------------------------------
HISTORY_SLOTS: Final = 2
"""Consumer names per user and room: one per concurrently reading device."""


def history_consumer(room_id: str, user_key: str, slot: int) -> str:
    """The pull consumer a user's device reads a room's history through.

    The name pins room, user and slot, so permissions can name it exactly: no user can
    create, read or delete a consumer that carries another user's token.
    """
    if not 0 <= slot < HISTORY_SLOTS:
        raise InvalidNameError(f"history slot must be in 0..{HISTORY_SLOTS - 1}")
    return f"h-{check_room_id(room_id)}-{user_token(user_key)}-{slot}"


_CONSUMER_RE: Final = re.compile(r"[-_A-Za-z0-9]{1,64}")


def _consumer(name: str) -> str:
    # A dot or wildcard in a consumer name would turn a permission for one consumer
    # into a permission for many.
    if not _CONSUMER_RE.fullmatch(name):
        raise InvalidNameError("a consumer name is 1-64 of [-_A-Za-z0-9]")
    return name


def consumer_create_subject(room_id: str, consumer: str) -> str:
    """The filtered create subject: the server refuses a body filter that differs from it."""
    return (
        f"{_JS_API}.CONSUMER.CREATE.{MESSAGES_STREAM}.{_consumer(consumer)}.{room_subject(room_id)}"
    )


def consumer_next_subject(consumer: str) -> str:
    return f"{_JS_API}.CONSUMER.MSG.NEXT.{MESSAGES_STREAM}.{_consumer(consumer)}"


def consumer_info_subject(consumer: str) -> str:
    return f"{_JS_API}.CONSUMER.INFO.{MESSAGES_STREAM}.{_consumer(consumer)}"


def consumer_delete_subject(consumer: str) -> str:
    return f"{_JS_API}.CONSUMER.DELETE.{MESSAGES_STREAM}.{_consumer(consumer)}"


# -- KV keys ----------------------------------------------------------------------------------
_KV_TOKEN_RE: Final = re.compile(r"[-_=A-Za-z0-9]{1,128}")


def _token(value: str, what: str) -> str:
    if not _KV_TOKEN_RE.fullmatch(value):
        raise InvalidNameError(f"{what} is not usable in a KV key: use 1-128 of [-_=A-Za-z0-9]")
    return value


def member_key(room_id: str, user_key: str) -> str:
    """Key in ``UNIBUS_members``: the signed statement that added a member."""
    return f"{check_room_id(room_id)}.{_token(user_key, 'user key')}"


def member_prefix(room_id: str) -> str:
    return f"{check_room_id(room_id)}."


def room_index_key(user_key: str, room_id: str) -> str:
    """Key in ``UNIBUS_rooms_by_member`` (the derived reverse index)."""
    return f"{_token(user_key, 'user key')}.{check_room_id(room_id)}"


def room_index_prefix(user_key: str) -> str:
    return f"{_token(user_key, 'user key')}."


def sealed_key_key(room_id: str, epoch: int, key_id: str, user_key: str) -> str:
    """Key in ``UNIBUS_room_keys``.

    ``key_id`` names one rekey attempt, so keys written by an attempt that lost its
    compare-and-set can never overwrite the keys of the attempt that won.
    """
    if epoch < 1:
        raise InvalidNameError("epoch must be >= 1")
    return (
        f"{check_room_id(room_id)}.{epoch}.{_token(key_id, 'key id')}."
        f"{_token(user_key, 'user key')}"
    )


def sealed_keys_prefix(room_id: str) -> str:
    return f"{check_room_id(room_id)}."


def nonce_key(caller_key: str, nonce: str) -> str:
    """Key in ``UNIBUS_nonces``: one per accepted signed request."""
    return f"{_token(caller_key, 'caller key')}.{_token(nonce, 'nonce')}"


def new_key_id() -> str:
    """A fresh id for one epoch's set of sealed keys."""
    return "".join(secrets.choice(ROOM_ID_ALPHABET) for _ in range(12))
