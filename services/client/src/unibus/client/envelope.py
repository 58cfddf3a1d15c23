"""End-to-end encrypted room messages: the envelope, the publisher's Sealer, the receiver's Opener.

A publisher seals messages in batches of 1 to 1024. Each message is encrypted on its own
with XChaCha20-Poly1305-IETF under the room key of its epoch, with a fresh random 24-byte
nonce and, as associated data, the room, epoch, key id, sender, session and seq.
Authorship is one Ed25519 signature per batch over the root of a Merkle tree whose leaves
are the messages. Every envelope carries its ciphertext, its index in the batch, its
authentication path and the root signature, so it can be checked alone, in any order. A
receiver verifies each batch signature once and caches the authenticated tree nodes, so a
message then costs one AEAD decryption and one to a few SHA-256 calls.

Two wire versions (``docs/security/envelope.md`` has the argument for both):

* **v2** (what a Sealer writes): fixed binary fields, the sender as its 32 raw key bytes,
  the room as a 4-byte tag (the associated data binds the whole id), no batch start (it is
  ``seq - index``), tree nodes of 16 bytes (SHA-256 truncated)::

      ad     = "unibus-msg-ad-v2\n" || u8 len(room) || room || u8 len(key_id) || key_id
               || u64 epoch || sender[32] || session[16] || u64 seq
      leaf   = SHA-256(0x00 || ad || nonce || ciphertext)[:16]
      node   = SHA-256(0x01 || left || right)[:16]       # RFC 9162 tree shape
      signed = "unibus-msg-batch-v2\n" 0xff || u8 len(room) || room || u8 len(key_id)
               || key_id || u64 epoch || sender[32] || session[16] || u64 first || u16 n
               || root[16]

* **v1** (still read, written only on request): a msgpack array with the room id, the
  sender's ``U...`` nkey string, 32-byte nodes and msgpack-encoded associated data.

``session`` is 16 random bytes per Sealer; ``seq`` starts at 1 and grows by one per
message of that session. ``(sender, session, seq)`` names a message for replay detection;
:func:`msg_id` is the JetStream ``Nats-Msg-Id`` of its publish.

>>> from unibus.core.naming import new_room_id
>>> from unibus.core.nkeys import KeyPair, Prefix
>>> from unibus.client.crypto import new_room_key
>>> alice, room, key = KeyPair.generate(Prefix.USER), new_room_id(), new_room_key()
>>> [data] = Sealer(alice, room).seal_batch([b"hi"], epoch=1, key_id="k1", room_key=key)
>>> Opener(room).open(data, room_key=lambda e, k: key, is_member=lambda u, e: True).plaintext
b'hi'
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Annotated, Any, Final, NoReturn

import msgspec
import nacl.bindings
import nacl.exceptions

from unibus.client.errors import EnvelopeError
from unibus.core import limits
from unibus.core.errors import InvalidNameError, NkeyError
from unibus.core.naming import check_room_id
from unibus.core.nkeys import KeyPair, Prefix, decode_public, encode_public, verify

__all__ = [
    "MAX_BATCH",
    "MAX_ENVELOPE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "REASONS",
    "VERSION",
    "VERSIONS",
    "Envelope",
    "EnvelopeError",
    "Opened",
    "Opener",
    "Sealer",
    "decode_envelope",
    "encode_envelope",
    "msg_id",
]

VERSION: Final = 2
"""The wire version a Sealer writes unless told otherwise."""
VERSIONS: Final = (1, 2)
"""The wire versions an Opener reads."""
MAX_BATCH: Final = 1024
MAX_ENVELOPE_BYTES: Final = limits.MAX_ENVELOPE_BYTES
"""The largest envelope a receiver decodes: nats-server's default ``max_payload``."""
MAX_PLAINTEXT_BYTES: Final = MAX_ENVELOPE_BYTES - 4096
"""The largest message a Sealer accepts; the rest is room for the envelope's fields."""
REASONS: Final = frozenset(
    {
        "malformed",
        "wrong_room",
        "unknown_epoch",
        "not_member",
        "bad_signature",
        "decrypt_failed",
        "replay",
    }
)

_MAX_SEQ: Final = (1 << 63) - 1
_SESSION_BYTES: Final = 16
_NONCE_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_KEY_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
_TAG_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
_SIGNATURE_BYTES: Final = 64
_SENDER_BYTES: Final = 32
_MAX_PATH: Final = (MAX_BATCH - 1).bit_length()  # 10: the deepest leaf of a 1024-leaf tree
_USER_KEY_CHARS: Final = 56
_KEY_ID_RE: Final = re.compile(r"[-_=A-Za-z0-9]{1,64}")
_HASH_BYTES: Final = {1: 32, 2: 16}
"""Bytes of a Merkle node (and leaf) per wire version: v2 truncates SHA-256 to 128 bits."""

_AD_DOMAIN: Final = b"unibus-msg-ad-v1\n"
_BATCH_DOMAIN: Final = b"unibus-msg-batch-v1\n"
_AD2_DOMAIN: Final = b"unibus-msg-ad-v2\n"
_BATCH2_DOMAIN: Final = b"unibus-msg-batch-v2\n\xff"  # 0xff: never UTF-8 (see the docs)
_ROOM_TAG_DOMAIN: Final = b"unibus-room-tag-v2\n"
_LEAF_TAG: Final = b"\x00"
_NODE_TAG: Final = b"\x01"
_SPAN: Final = MAX_BATCH + 1  # a tree node's key: start * _SPAN + end of its leaf range

# v2 layout: the fixed head, then the key id, the path and the ciphertext.
#   0 version (u8)  1 room tag (4)  5 epoch (u64)  13 sender (32)  45 session (16)
#   61 seq (u64)  69 batch size (u16)  71 index (u16)  73 nonce (24)  97 signature (64)
#   161 key id length (u8)  162 key id  ... path (16 each)  ... ciphertext (the rest)
_V2_HEAD: Final = struct.Struct(">B4sQ32s16sQHH24s64sB")
_V2_FIXED: Final = _V2_HEAD.size  # 162
_V2_BOUND: Final = slice(5, 69)  # epoch, sender, session, seq: the ad's fixed tail
_V2_IDENTITY: Final = struct.Struct(">Q32s16sQ")
_V2_SHAPE: Final = struct.Struct(">HH")
_V2_FIRST: Final = struct.Struct(">Q32s16sQH")

_sha256 = hashlib.sha256


def _load_sodium() -> tuple[Any, Any, Any] | None:
    """libsodium's cffi module and its byte-array type, resolved once (not per message)."""
    try:
        sodium = importlib.import_module("nacl._sodium")
    except ImportError:  # pragma: no cover - PyNaCl always ships its cffi module
        return None
    return sodium.ffi, sodium.lib, sodium.ffi.typeof("unsigned char[]")


_SODIUM: Final = _load_sodium()


def _aead_encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF encryption, straight through libsodium.

    ``nacl.bindings`` wraps the same call with Python checks that cost more than the
    cipher itself on a 1 KiB message; the callers here check every length first.
    """
    if len(nonce) != _NONCE_BYTES or len(key) != _KEY_BYTES:  # C reads fixed sizes from these
        raise ValueError("wrong nonce or key size")
    if _SODIUM is None:  # pragma: no cover
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    ffi, lib, uchars = _SODIUM
    size = len(plaintext) + _TAG_BYTES
    out = ffi.new(uchars, size)
    lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, ffi.NULL, plaintext, len(plaintext), ad, len(ad), ffi.NULL, nonce, key
    )
    return ffi.buffer(out, size)[:]  # type: ignore[no-any-return]


def _aead_decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes | None:
    """XChaCha20-Poly1305-IETF decryption; ``None`` when the tag does not verify."""
    if len(nonce) != _NONCE_BYTES or len(key) != _KEY_BYTES or len(ciphertext) < _TAG_BYTES:
        return None
    if _SODIUM is None:  # pragma: no cover
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, ad, nonce, key
            )
        except nacl.exceptions.CryptoError:
            return None
    ffi, lib, uchars = _SODIUM
    size = len(ciphertext) - _TAG_BYTES
    out = ffi.new(uchars, size)
    rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, ffi.NULL, ffi.NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
    )
    if rc != 0:
        return None
    return ffi.buffer(out, size)[:]  # type: ignore[no-any-return]


def _verify_raw(sender: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification with a raw 32-byte key (what ``nkeys.verify`` does after decoding)."""
    try:
        nacl.bindings.crypto_sign_open(signature + message, sender)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False  # libsodium also refuses small-order and non-canonical keys
    return True


def _fail(reason: str, message: str) -> NoReturn:
    raise EnvelopeError(reason, message)


def _member_key(
    sender: str,
    epoch: int,
    key_id: str,
    room_key: Callable[[int, str], bytes | None],
    is_member: Callable[[str, int], bool],
) -> bytes:
    """The room key that opens a message of ``sender`` at ``epoch``, once ``sender`` is known
    to be a member then (both envelope versions check the same, in this order)."""
    if not is_member(sender, epoch):
        _fail("not_member", f"the sender is not a member of the room at epoch {epoch}")
    key = room_key(epoch, key_id)
    if not isinstance(key, bytes | bytearray) or len(key) != _KEY_BYTES:
        _fail("unknown_epoch", f"no room key for epoch {epoch}, key id {key_id}")
    return bytes(key)


class EnvelopeV1(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A v1 envelope as it travels (a msgpack array, in this field order)."""

    v: Annotated[int, msgspec.Meta(ge=0, le=255)]
    room_id: Annotated[str, msgspec.Meta(max_length=64)]
    epoch: Annotated[int, msgspec.Meta(ge=1, le=_MAX_SEQ)]
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    sender: Annotated[str, msgspec.Meta(min_length=_USER_KEY_CHARS, max_length=_USER_KEY_CHARS)]
    session: Annotated[bytes, msgspec.Meta(min_length=_SESSION_BYTES, max_length=_SESSION_BYTES)]
    seq: Annotated[int, msgspec.Meta(ge=1, le=_MAX_SEQ)]
    nonce: Annotated[bytes, msgspec.Meta(min_length=_NONCE_BYTES, max_length=_NONCE_BYTES)]
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=_TAG_BYTES)]
    batch_first_seq: Annotated[int, msgspec.Meta(ge=1, le=_MAX_SEQ)]
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH)]
    index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_BATCH)]
    path: Annotated[
        list[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]],
        msgspec.Meta(max_length=_MAX_PATH),
    ]
    root_signature: Annotated[
        bytes, msgspec.Meta(min_length=_SIGNATURE_BYTES, max_length=_SIGNATURE_BYTES)
    ]


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One envelope decoded, whatever its wire version (:func:`decode_envelope`).

    ``room_id`` is on the wire in v1 only (``""`` for v2, whose ``room_tag`` stands for
    it); ``sender`` is the ``U...`` key in both.
    """

    v: int
    room_id: str
    room_tag: bytes
    epoch: int
    key_id: str
    sender: str
    session: bytes
    seq: int
    nonce: bytes
    ciphertext: bytes
    batch_first_seq: int
    batch_size: int
    index: int
    path: list[bytes]
    root_signature: bytes


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER_V1: Final = msgspec.msgpack.Decoder(EnvelopeV1)


def msg_id(envelope: Envelope) -> str:
    """The envelope's JetStream ``Nats-Msg-Id``: ``<session hex>-<seq>-<nonce prefix>``.

    Unique per publisher session, so a retried publish (the same bytes) is deduplicated by
    the stream. The random nonce part makes the next id unpredictable: otherwise another
    member could publish first under a victim's next id and have the stream drop the
    genuine message as a duplicate. Only ``(sender, msg_id)`` is unique among
    authenticated messages.
    """
    return _msg_id(envelope.session, envelope.seq, envelope.nonce)


def _msg_id(session: bytes, seq: int, nonce: bytes) -> str:
    return f"{session.hex()}-{seq}-{nonce[:8].hex()}"


class Opened(msgspec.Struct, frozen=True, gc=False):
    """A message that passed every check (a Struct: built once per message received)."""

    plaintext: bytes
    sender: str
    room_id: str
    epoch: int
    key_id: str
    seq: int
    msg_id: str


# -- the construction shared by both sides ----------------------------------------------------


@lru_cache(maxsize=1024)
def _room_tag(room_id: str) -> bytes:
    """The 4 bytes a v2 envelope names its room by (a routing hint: the ad binds the id)."""
    return _sha256(_ROOM_TAG_DOMAIN + room_id.encode()).digest()[:4]


@lru_cache(maxsize=1024)
def _room_field(room_id: str) -> bytes:
    data = room_id.encode()
    return bytes([len(data)]) + data


@lru_cache(maxsize=4096)
def _user_key(raw: bytes) -> str:
    """The ``U...`` string of a raw sender key (cached: one per sender, not per message)."""
    return encode_public(Prefix.USER, raw)


@lru_cache(maxsize=4096)
def _raw_key(key: str) -> bytes:
    _, raw = decode_public(key, Prefix.USER)
    return raw


_key_ids: dict[bytes, str] = {}
"""Key ids met on the wire, decoded (a room has one per epoch; bounded below)."""


def _decode_key_id(data: bytes) -> str:
    try:
        key_id = data.decode("ascii")
    except UnicodeDecodeError:
        _fail("malformed", "a key id is ASCII")
    if len(_key_ids) >= 4096:
        _key_ids.clear()
    _key_ids[data] = key_id
    return key_id


def _key_id_field(key_id: str) -> bytes:
    data = key_id.encode()
    return bytes([len(data)]) + data


def _associated_data(
    room_id: str,
    epoch: int,
    key_id: str,
    sender: str,
    session: bytes,
    seq: int,
    *,
    v: int = VERSION,
) -> bytes:
    """The AEAD associated data of one message (either version)."""
    if v == 1:
        return _AD_DOMAIN + _ENCODER.encode((1, room_id, epoch, key_id, sender, session, seq))
    return (
        _AD2_DOMAIN
        + _room_field(room_id)
        + _key_id_field(key_id)
        + _V2_IDENTITY.pack(epoch, _raw_key(sender), session, seq)
    )


def _leaf_hash(ad: bytes, nonce: bytes, ciphertext: bytes, *, v: int = VERSION) -> bytes:
    # ad is self-delimiting (a msgpack array in v1; fixed or length-prefixed fields in
    # v2) and the nonce has a fixed size: injective.
    digest = _sha256(_LEAF_TAG + ad + nonce + ciphertext).digest()
    return digest if v == 1 else digest[:16]


def _node_hash(left: bytes, right: bytes, *, v: int = VERSION) -> bytes:
    digest = _sha256(_NODE_TAG + left + right).digest()
    return digest if v == 1 else digest[:16]


def _merkle(leaves: Sequence[bytes], *, v: int = VERSION) -> tuple[bytes, list[list[bytes]]]:
    """The root of the RFC 9162 tree over ``leaves`` and each leaf's path, leaf level first.

    The left subtree holds the largest power of two below the leaf count; an odd node is
    carried up unchanged, never duplicated, so no two leaf lists share a tree.
    """
    if len(leaves) == 1:
        return leaves[0], [[]]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    left_root, left_paths = _merkle(leaves[:split], v=v)
    right_root, right_paths = _merkle(leaves[split:], v=v)
    for path in left_paths:
        path.append(right_root)
    for path in right_paths:
        path.append(left_root)
    return _node_hash(left_root, right_root, v=v), left_paths + right_paths


@lru_cache(maxsize=8192)
def _path_length(index: int, size: int) -> int:
    """How many siblings the path of leaf ``index`` in a tree of ``size`` leaves has."""
    fn, sn, length = index, size - 1, 0
    while sn:
        if fn == sn:
            while not fn & 1:
                fn >>= 1
                sn >>= 1
        length += 1
        fn >>= 1
        sn >>= 1
    return length


def _batch_message(
    room_id: str,
    epoch: int,
    key_id: str,
    sender: str,
    session: bytes,
    first_seq: int,
    size: int,
    root: bytes,
    *,
    v: int = VERSION,
) -> bytes:
    """The bytes a publisher signs for one batch (domain-separated from every other signature)."""
    if v == 1:
        return _BATCH_DOMAIN + _ENCODER.encode(
            (1, room_id, epoch, key_id, sender, session, first_seq, size, root)
        )
    return (
        _BATCH2_DOMAIN
        + _room_field(room_id)
        + _key_id_field(key_id)
        + _V2_FIRST.pack(epoch, _raw_key(sender), session, first_seq, size)
        + root
    )


def _assemble(
    *,
    room_id: str,
    epoch: int,
    key_id: str,
    sender: str,
    session: bytes,
    first_seq: int,
    sealed: Sequence[tuple[bytes, bytes]],
    sign: Callable[[bytes], bytes],
    v: int = VERSION,
) -> list[Envelope]:
    """Envelopes for already encrypted ``(nonce, ciphertext)`` pairs, signed by ``sign``."""
    size = len(sealed)
    leaves = [
        _leaf_hash(
            _associated_data(room_id, epoch, key_id, sender, session, first_seq + i, v=v),
            nonce,
            ct,
            v=v,
        )
        for i, (nonce, ct) in enumerate(sealed)
    ]
    root, paths = _merkle(leaves, v=v)
    signature = sign(
        _batch_message(room_id, epoch, key_id, sender, session, first_seq, size, root, v=v)
    )
    return [
        Envelope(
            v=v,
            room_id=room_id if v == 1 else "",
            room_tag=_room_tag(room_id),
            epoch=epoch,
            key_id=key_id,
            sender=sender,
            session=session,
            seq=first_seq + i,
            nonce=nonce,
            ciphertext=ct,
            batch_first_seq=first_seq,
            batch_size=size,
            index=i,
            path=paths[i],
            root_signature=signature,
        )
        for i, (nonce, ct) in enumerate(sealed)
    ]


def encode_envelope(env: Envelope) -> bytes:
    """The wire bytes of ``env`` in its version (no checks: tools and tests build with it).

    A v1 envelope needs its ``room_id``; a v2 one its ``room_tag`` and a sender that is a
    ``U...`` key. ``batch_first_seq`` is not on the v2 wire (it is ``seq - index``).
    """
    if env.v == 1:
        return _ENCODER.encode(
            EnvelopeV1(
                v=env.v,
                room_id=env.room_id,
                epoch=env.epoch,
                key_id=env.key_id,
                sender=env.sender,
                session=env.session,
                seq=env.seq,
                nonce=env.nonce,
                ciphertext=env.ciphertext,
                batch_first_seq=env.batch_first_seq,
                batch_size=env.batch_size,
                index=env.index,
                path=env.path,
                root_signature=env.root_signature,
            )
        )
    return b"".join(
        (
            _V2_HEAD.pack(
                env.v,
                env.room_tag,
                env.epoch,
                _raw_key(env.sender),
                env.session,
                env.seq,
                env.batch_size,
                env.index,
                env.nonce,
                env.root_signature,
                len(env.key_id.encode()),
            ),
            env.key_id.encode(),
            *env.path,
            env.ciphertext,
        )
    )


def _check_size(data: Any) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail("malformed", "an envelope is bytes")
    if len(data) > MAX_ENVELOPE_BYTES:
        _fail("malformed", f"an envelope has at most {MAX_ENVELOPE_BYTES} bytes")


def _decode_v1(data: bytes) -> Envelope:
    try:
        wire = _DECODER_V1.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError) as exc:
        # ValueError: msgspec lets UnicodeDecodeError out of a str field with bad UTF-8.
        raise EnvelopeError("malformed", f"not an envelope: {exc}") from None
    if wire.v != 1:
        _fail("malformed", f"unsupported envelope version {wire.v}")
    if wire.index >= wire.batch_size or wire.seq != wire.batch_first_seq + wire.index:
        _fail("malformed", "the envelope's seq, index and batch do not agree")
    if wire.batch_first_seq + wire.batch_size - 1 > _MAX_SEQ:
        _fail("malformed", "the batch runs past the last sequence number")
    if len(wire.path) != _path_length(wire.index, wire.batch_size):
        _fail("malformed", "the authentication path has the wrong length")
    return Envelope(
        v=1,
        room_id=wire.room_id,
        room_tag=_room_tag(wire.room_id),
        epoch=wire.epoch,
        key_id=wire.key_id,
        sender=wire.sender,
        session=wire.session,
        seq=wire.seq,
        nonce=wire.nonce,
        ciphertext=wire.ciphertext,
        batch_first_seq=wire.batch_first_seq,
        batch_size=wire.batch_size,
        index=wire.index,
        path=wire.path,
        root_signature=wire.root_signature,
    )


_V2Fields = tuple[
    bytes, int, bytes, bytes, int, int, int, bytes, bytes, int, str, list[bytes], bytes
]


def _parse_v2(data: bytes) -> _V2Fields:
    """The fields of a v2 envelope, shape-checked: ``(tag, epoch, sender, session, seq,
    size, index, nonce, signature, key id end, key id, path, ciphertext)``."""
    if len(data) < _V2_FIXED + 1 + _TAG_BYTES:
        _fail("malformed", "too short for a v2 envelope")
    _, tag, epoch, sender, session, seq, size, index, nonce, signature, kid_len = (
        _V2_HEAD.unpack_from(data)
    )
    if not (1 <= epoch <= _MAX_SEQ and 1 <= seq <= _MAX_SEQ and 1 <= kid_len <= 64):
        _fail("malformed", "an epoch, seq or key id out of range")
    if not 1 <= size <= MAX_BATCH or index >= size or seq <= index:
        _fail("malformed", "the envelope's seq, index and batch do not agree")
    if seq - index + size - 1 > _MAX_SEQ:
        _fail("malformed", "the batch runs past the last sequence number")
    kid_end = _V2_FIXED + kid_len
    key_id = _decode_key_id(data[_V2_FIXED:kid_end])
    path_end = kid_end + 16 * _path_length(index, size)
    if len(data) - path_end < _TAG_BYTES:
        _fail("malformed", "the authentication path has the wrong length")
    path = [data[at : at + 16] for at in range(kid_end, path_end, 16)]
    return (
        tag,
        epoch,
        sender,
        session,
        seq,
        size,
        index,
        nonce,
        signature,
        kid_end,
        key_id,
        path,
        data[path_end:],
    )


def _decode_v2(data: bytes) -> Envelope:
    tag, epoch, sender, session, seq, size, index, nonce, signature, _, key_id, path, ct = (
        _parse_v2(data)
    )
    return Envelope(
        v=2,
        room_id="",
        room_tag=tag,
        epoch=epoch,
        key_id=key_id,
        sender=_user_key(sender),
        session=session,
        seq=seq,
        nonce=nonce,
        ciphertext=ct,
        batch_first_seq=seq - index,
        batch_size=size,
        index=index,
        path=path,
        root_signature=signature,
    )


def decode_envelope(data: bytes) -> Envelope:
    """Decode and shape-check one envelope of either version (no cryptography).

    Raises:
        EnvelopeError: ``malformed``.
    """
    _check_size(data)
    data = bytes(data)
    if data[:1] == b"\x02":
        return _decode_v2(data)
    return _decode_v1(data)


# -- publisher ----------------------------------------------------------------------------------


class Sealer:
    """Seals one publisher's messages to one room.

    Each Sealer draws a fresh random session and numbers its messages 1, 2, 3, ... under
    a lock, so no ``(session, seq)`` is ever used twice, even when a batch fails halfway.
    A Sealer cannot be copied or pickled (a copy would reuse sequence numbers).
    ``version`` 1 writes the old wire format, for readers that know no other.
    """

    def __init__(self, identity: KeyPair, room_id: str, *, version: int = VERSION) -> None:
        if not isinstance(identity, KeyPair) or identity.prefix != Prefix.USER:
            raise ValueError("a Sealer needs a user key pair (U...)")
        try:
            self._room_id = check_room_id(room_id)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        if version not in VERSIONS:
            raise ValueError(f"a Sealer writes wire version 1 or 2, not {version!r}")
        self._version = version
        self._identity = identity
        self._sender = identity.public_key
        self._sender_raw = _raw_key(self._sender)
        self._session = os.urandom(_SESSION_BYTES)
        self._next_seq = 1
        self._lock = threading.Lock()

    @property
    def room_id(self) -> str:
        return self._room_id

    @property
    def sender(self) -> str:
        return self._sender

    @property
    def session(self) -> bytes:
        return self._session

    @property
    def version(self) -> int:
        return self._version

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Sealer cannot be copied or pickled: (session, seq) must never repeat")

    def _reserve(self, count: int) -> int:
        with self._lock:
            first = self._next_seq
            if first + count - 1 > _MAX_SEQ:
                raise ValueError(
                    "this session has used all its sequence numbers; make a new Sealer"
                )
            self._next_seq = first + count
        return first

    def seal_batch_with_ids(
        self, plaintexts: Sequence[bytes], *, epoch: int, key_id: str, room_key: bytes
    ) -> list[tuple[str, bytes]]:
        """Like :meth:`seal_batch`, each encoded envelope paired with its :func:`msg_id`."""
        count = len(plaintexts)
        if not 1 <= count <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} messages, got {count}")
        for plaintext in plaintexts:
            if not isinstance(plaintext, bytes | bytearray | memoryview):
                raise TypeError("messages are bytes")
            if len(plaintext) > MAX_PLAINTEXT_BYTES:
                raise ValueError(f"a message has at most {MAX_PLAINTEXT_BYTES} bytes")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= _MAX_SEQ:
            raise ValueError("an epoch is a positive integer")
        if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
            raise ValueError("a key id is 1 to 64 characters of [-_=A-Za-z0-9]")
        if not isinstance(room_key, bytes | bytearray) or len(room_key) != _KEY_BYTES:
            raise ValueError(f"a room key has {_KEY_BYTES} bytes")
        key = bytes(room_key)
        first = self._reserve(count)
        if self._version == 2:
            return self._seal_v2(plaintexts, epoch, key_id, key, first)
        room_id, sender, session = self._room_id, self._sender, self._session
        sealed = []
        for i, plaintext in enumerate(plaintexts):
            ad = _associated_data(room_id, epoch, key_id, sender, session, first + i, v=1)
            nonce = os.urandom(_NONCE_BYTES)
            sealed.append((nonce, _aead_encrypt(bytes(plaintext), ad, nonce, key)))
        envelopes = _assemble(
            room_id=room_id,
            epoch=epoch,
            key_id=key_id,
            sender=sender,
            session=session,
            first_seq=first,
            sealed=sealed,
            sign=self._identity.sign,
            v=1,
        )
        return [(msg_id(env), encode_envelope(env)) for env in envelopes]

    def _seal_v2(
        self, plaintexts: Sequence[bytes], epoch: int, key_id: str, key: bytes, first: int
    ) -> list[tuple[str, bytes]]:
        """The v2 batch: the same construction as :func:`_assemble`, with fewer steps."""
        count = len(plaintexts)
        session, sender = self._session, self._sender_raw
        ad_prefix = _AD2_DOMAIN + _room_field(self._room_id) + _key_id_field(key_id)
        nonces = os.urandom(_NONCE_BYTES * count)
        identity = _V2_IDENTITY.pack
        sealed: list[tuple[bytes, bytes, bytes]] = []
        leaves: list[bytes] = []
        for i, plaintext in enumerate(plaintexts):
            bound = identity(epoch, sender, session, first + i)
            ad = ad_prefix + bound
            nonce = nonces[i * _NONCE_BYTES : (i + 1) * _NONCE_BYTES]
            ct = _aead_encrypt(bytes(plaintext), ad, nonce, key)
            sealed.append((bound, nonce, ct))
            leaves.append(_sha256(_LEAF_TAG + ad + nonce + ct).digest()[:16])
        root, paths = _merkle(leaves, v=2)
        signature = self._identity.sign(
            _BATCH2_DOMAIN
            + _room_field(self._room_id)
            + _key_id_field(key_id)
            + _V2_FIRST.pack(epoch, sender, session, first, count)
            + root
        )
        tag = b"\x02" + _room_tag(self._room_id)
        tail = signature + _key_id_field(key_id)
        shape = _V2_SHAPE.pack
        session_hex = session.hex()
        return [
            (
                f"{session_hex}-{first + i}-{nonce[:8].hex()}",
                b"".join((tag, bound, shape(count, i), nonce, tail, *paths[i], ct)),
            )
            for i, (bound, nonce, ct) in enumerate(sealed)
        ]

    def seal_batch(
        self, plaintexts: Sequence[bytes], *, epoch: int, key_id: str, room_key: bytes
    ) -> list[bytes]:
        """Encrypt and sign ``plaintexts`` (1 to 1024) as one batch; one encoded envelope each.

        The envelopes get consecutive sequence numbers in the order given.

        Raises:
            ValueError: an empty or oversized batch or message, a bad epoch, key id or key.
        """
        pairs = self.seal_batch_with_ids(plaintexts, epoch=epoch, key_id=key_id, room_key=room_key)
        return [data for _, data in pairs]


# -- receiver -----------------------------------------------------------------------------------


class _Stream:
    """Seen sequence numbers of one ``(sender, session)``.

    Every seq up to ``floor`` counts as seen (delivered, or fallen out of the window);
    ``seen`` holds the seqs above ``floor`` that arrived out of order.
    """

    __slots__ = ("floor", "seen", "top")

    def __init__(self) -> None:
        self.floor = 0
        self.top = 0
        self.seen: set[int] = set()

    def is_new(self, seq: int) -> bool:
        return seq > self.floor and seq not in self.seen

    def record(self, seq: int, window: int) -> None:
        if seq == self.floor + 1:
            self.floor = seq
        else:
            self.seen.add(seq)
        if seq > self.top:
            self.top = seq
        lowest = self.top - window
        if lowest > self.floor:
            if len(self.seen) < lowest - self.floor:
                self.seen = {s for s in self.seen if s > lowest}
            else:
                for s in range(self.floor + 1, lowest + 1):
                    self.seen.discard(s)
            self.floor = lowest
        seen = self.seen
        while seen and self.floor + 1 in seen:
            seen.remove(self.floor + 1)
            self.floor += 1


_BatchHeader = tuple[int, str, bytes, int, str, int, int]


class Opener:
    """Checks and decrypts the messages of one room, for one receiver (wire v1 and v2).

    Remembers verified batches (their authenticated tree nodes, at most
    ``max_verified_batches`` batches and ``max_cached_nodes`` nodes, least recently used
    first out) and the sequence numbers seen per ``(sender, session)`` (within
    ``replay_window`` of the newest, for at most ``max_sessions`` sessions). Not
    thread-safe: use one per consuming task.
    """

    def __init__(
        self,
        room_id: str,
        *,
        max_verified_batches: int = 4096,
        max_cached_nodes: int = 1 << 15,
        replay_window: int = 1 << 16,
        max_sessions: int = 1 << 16,
    ) -> None:
        try:
            self._room_id = check_room_id(room_id)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        if max_verified_batches < 1 or replay_window < 1 or max_sessions < 1:
            raise ValueError("cache sizes and the replay window must be positive")
        if max_cached_nodes < 2 * MAX_BATCH:
            raise ValueError(f"max_cached_nodes must be at least {2 * MAX_BATCH}")
        self._max_batches = max_verified_batches
        self._max_nodes = max_cached_nodes
        self._window = replay_window
        self._max_sessions = max_sessions
        self._batches: OrderedDict[_BatchHeader, dict[int, bytes]] = OrderedDict()
        self._cached_nodes = 0
        self._streams: OrderedDict[tuple[str, bytes], _Stream] = OrderedDict()
        self._tag = _room_tag(self._room_id)
        self._ad2_prefix = _AD2_DOMAIN + _room_field(self._room_id)

    @property
    def room_id(self) -> str:
        return self._room_id

    def open(
        self,
        data: bytes,
        *,
        room_key: Callable[[int, str], bytes | None],
        is_member: Callable[[str, int], bool],
    ) -> Opened:
        """Check one encoded envelope (v1 or v2) and return its plaintext.

        Checks, in order: shape (``malformed``), room (``wrong_room``),
        ``is_member(sender, epoch)`` (``not_member``), ``room_key(epoch, key_id)``
        (``None``: ``unknown_epoch``; refetch keys once and retry), the Merkle path and the
        batch signature (``bad_signature``), decryption (``decrypt_failed``), and whether
        this ``(sender, session, seq)`` was opened before or is older than the replay
        window (``replay``). Only a message that passes everything is recorded as seen.

        Raises:
            EnvelopeError: whatever ``data`` is. Exceptions of the two callbacks propagate.
        """
        if type(data) is not bytes:
            _check_size(data)
            data = bytes(data)
        if data[:1] != b"\x02":
            return self._open_v1(data, room_key, is_member)
        # v2, the hot path: _parse_v2's checks inlined, fields read in place.
        if not _V2_FIXED + 1 + _TAG_BYTES <= len(data) <= MAX_ENVELOPE_BYTES:
            _fail("malformed", "too short or too long for a v2 envelope")
        _, tag, epoch, raw, session, seq, size, index, nonce, signature, kid_len = (
            _V2_HEAD.unpack_from(data)
        )
        if not (1 <= epoch <= _MAX_SEQ and 1 <= seq <= _MAX_SEQ and 1 <= kid_len <= 64):
            _fail("malformed", "an epoch, seq or key id out of range")
        if not 1 <= size <= MAX_BATCH or index >= size or seq <= index:
            _fail("malformed", "the envelope's seq, index and batch do not agree")
        first = seq - index
        if first + size - 1 > _MAX_SEQ:
            _fail("malformed", "the batch runs past the last sequence number")
        kid_end = _V2_FIXED + kid_len
        path_end = kid_end + 16 * _path_length(index, size)
        if len(data) - path_end < _TAG_BYTES:
            _fail("malformed", "the authentication path has the wrong length")
        key_id = _key_ids.get(data[_V2_FIXED:kid_end])
        if key_id is None:
            key_id = _decode_key_id(data[_V2_FIXED:kid_end])
        if tag != self._tag:
            _fail("wrong_room", "the envelope belongs to another room")
        sender = _user_key(raw)
        key = _member_key(sender, epoch, key_id, room_key, is_member)
        ct = data[path_end:]
        ad = self._ad2_prefix + data[_V2_FIXED - 1 : kid_end] + data[_V2_BOUND]
        leaf = _sha256(_LEAF_TAG + ad + nonce + ct).digest()[:16]
        header = (2, sender, session, epoch, key_id, first, size)
        known = self._batches.get(header)
        if known is not None and known.get(index * _SPAN + index + 1) == leaf:
            self._batches.move_to_end(header)  # proven already (a sibling's path named it)
        else:
            path = [data[at : at + 16] for at in range(kid_end, path_end, 16)]
            self._authenticate(
                2, sender, raw, session, epoch, key_id, first, size, index, path, signature, leaf
            )
        plaintext = _aead_decrypt(ct, ad, nonce, key)
        if plaintext is None:
            _fail("decrypt_failed", "the message does not decrypt with the room key")
        self._record(sender, session, seq)
        return Opened(
            plaintext, sender, self._room_id, epoch, key_id, seq, _msg_id(session, seq, nonce)
        )

    def _open_v1(
        self,
        data: bytes,
        room_key: Callable[[int, str], bytes | None],
        is_member: Callable[[str, int], bool],
    ) -> Opened:
        env = decode_envelope(data)
        if env.room_id != self._room_id:
            _fail("wrong_room", "the envelope belongs to another room")
        sender, epoch = env.sender, env.epoch
        key = _member_key(sender, epoch, env.key_id, room_key, is_member)
        ad = _associated_data(self._room_id, epoch, env.key_id, sender, env.session, env.seq, v=1)
        self._authenticate_envelope(env, _leaf_hash(ad, env.nonce, env.ciphertext, v=1))
        plaintext = _aead_decrypt(env.ciphertext, ad, env.nonce, key)
        if plaintext is None:
            _fail("decrypt_failed", "the message does not decrypt with the room key")
        self._record(sender, env.session, env.seq)
        return Opened(
            plaintext=plaintext,
            sender=sender,
            room_id=self._room_id,
            epoch=epoch,
            key_id=env.key_id,
            seq=env.seq,
            msg_id=msg_id(env),
        )

    def _record(self, sender: str, session: bytes, seq: int) -> None:
        stream_key = (sender, session)
        stream = self._streams.get(stream_key)
        if stream is None:
            stream = self._new_stream(stream_key)
        elif not stream.is_new(seq):
            _fail("replay", "this message was seen before or is older than the replay window")
        else:
            self._streams.move_to_end(stream_key)
        stream.record(seq, self._window)

    def attest(self, data: bytes) -> Envelope:
        """Check shape, room and the sender's batch signature, nothing else.

        What a message proves without its key: that ``sender`` signed it under ``epoch``.
        A member of a newer chain than the one the server serves cannot have its epoch
        denied this way (``unibus.client.heads``). Nothing is recorded as seen.

        Raises:
            EnvelopeError: ``malformed``, ``wrong_room`` or ``bad_signature``.
        """
        env = decode_envelope(data)
        elsewhere = env.room_id != self._room_id if env.v == 1 else env.room_tag != self._tag
        if elsewhere:
            _fail("wrong_room", "the envelope belongs to another room")
        ad = _associated_data(
            self._room_id, env.epoch, env.key_id, env.sender, env.session, env.seq, v=env.v
        )
        self._authenticate_envelope(env, _leaf_hash(ad, env.nonce, env.ciphertext, v=env.v))
        return env

    def _new_stream(self, stream_key: tuple[str, bytes]) -> _Stream:
        stream = self._streams[stream_key] = _Stream()
        while len(self._streams) > self._max_sessions:
            self._streams.popitem(last=False)
        return stream

    def _authenticate_envelope(self, env: Envelope, leaf: bytes) -> None:
        raw = b"" if env.v == 1 else _raw_key(env.sender)
        self._authenticate(
            env.v,
            env.sender,
            raw,
            env.session,
            env.epoch,
            env.key_id,
            env.batch_first_seq,
            env.batch_size,
            env.index,
            env.path,
            env.root_signature,
            leaf,
        )

    def _authenticate(
        self,
        v: int,
        sender: str,
        sender_raw: bytes,
        session: bytes,
        epoch: int,
        key_id: str,
        first: int,
        size: int,
        index: int,
        path: Sequence[bytes],
        signature: bytes,
        leaf: bytes,
    ) -> None:
        """Prove ``leaf`` is in a batch ``sender`` signed, or raise ``bad_signature``.

        Walks the path from the leaf up (RFC 9162 §2.1.3.2), naming each node by the leaf
        range it covers. If the batch was verified before, the walk stops at the first node
        already authenticated: equal proves the leaf, different disproves it. Otherwise it
        ends at the root, whose signature is checked once. Only nodes proven by a signed
        root are remembered.
        """
        header = (v, sender, session, epoch, key_id, first, size)
        known = self._batches.get(header)
        cut = 32 if v == 1 else 16
        fn, sn, level = index, size - 1, 0
        start, end = fn, fn + 1
        node = leaf
        learned = [(start * _SPAN + end, node)]
        if known is not None:
            hit = known.get(start * _SPAN + end)
            if hit is not None:
                self._settle(header, known, learned, hit == node)
                return
        for sibling in path:
            if fn & 1 or fn == sn:
                while not fn & 1:  # the last node of a level is carried up to the next
                    fn >>= 1
                    sn >>= 1
                    level += 1
                width = 1 << level
                learned.append(((start - width) * _SPAN + start, sibling))
                start -= width
                node = _sha256(_NODE_TAG + sibling + node).digest()[:cut]
            else:
                sibling_end = min(end + (1 << level), size)
                learned.append((end * _SPAN + sibling_end, sibling))
                end = sibling_end
                node = _sha256(_NODE_TAG + node + sibling).digest()[:cut]
            fn >>= 1
            sn >>= 1
            level += 1
            learned.append((start * _SPAN + end, node))
            if known is not None:
                hit = known.get(start * _SPAN + end)
                if hit is not None:
                    self._settle(header, known, learned, hit == node)
                    return
        if known is not None or start != 0 or end != size:  # pragma: no cover - path length checked
            _fail("bad_signature", "the message is not in the batch its sender signed")
        if v == 1:
            signed = _batch_message(
                self._room_id, epoch, key_id, sender, session, first, size, node, v=1
            )
            try:
                valid = verify(sender, signed, signature)
            except NkeyError:
                valid = False
        else:
            signed = (
                _BATCH2_DOMAIN
                + _room_field(self._room_id)
                + _key_id_field(key_id)
                + _V2_FIRST.pack(epoch, sender_raw, session, first, size)
                + node
            )
            valid = _verify_raw(sender_raw, signed, signature)
        if not valid:
            _fail("bad_signature", "the batch signature does not verify for the sender")
        self._batches[header] = dict(learned)
        self._cached_nodes += len(learned)
        self._evict()

    def _settle(
        self,
        header: _BatchHeader,
        known: dict[int, bytes],
        learned: list[tuple[int, bytes]],
        proven: bool,
    ) -> None:
        if not proven:
            _fail("bad_signature", "the message is not in the batch its sender signed")
        before = len(known)
        known.update(learned)
        self._cached_nodes += len(known) - before
        self._batches.move_to_end(header)
        self._evict()

    def _evict(self) -> None:
        batches = self._batches
        while len(batches) > self._max_batches or self._cached_nodes > self._max_nodes:
            _, nodes = batches.popitem(last=False)
            self._cached_nodes -= len(nodes)
