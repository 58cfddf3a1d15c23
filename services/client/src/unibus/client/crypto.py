"""Room keys: making them, and sealing them to each member.

A room key is 32 random bytes per epoch. It reaches a member only as a sealed box
(``crypto_box_seal``: an ephemeral X25519 key, XSalsa20-Poly1305) addressed to the X25519
key derived from the member's Ed25519 ``U...`` key, so any member can seal to any user
whose ``U...`` key it knows, and only the holder of that user's seed can open it.
Who may seal, and which sealed key a client trusts, is the signed room chain's business
(:mod:`unibus.core.roomchain`), not this module's.

>>> from unibus.core.nkeys import KeyPair, Prefix
>>> alice = KeyPair.generate(Prefix.USER)
>>> key = new_room_key()
>>> open_room_key(seal_room_key(key, alice.public_key), alice) == key
True
"""

from __future__ import annotations

import secrets
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from unibus.client.errors import CryptoError
from unibus.core.errors import NkeyError
from unibus.core.nkeys import KeyPair, decode_seed, user_key_ed25519

__all__ = [
    "ROOM_KEY_BYTES",
    "SEALED_ROOM_KEY_BYTES",
    "CryptoError",
    "new_room_key",
    "open_room_key",
    "seal_room_key",
]

ROOM_KEY_BYTES: Final = 32
SEALED_ROOM_KEY_BYTES: Final = ROOM_KEY_BYTES + nacl.bindings.crypto_box_SEALBYTES


def new_room_key() -> bytes:
    """32 fresh random bytes: the key of one room epoch."""
    return secrets.token_bytes(ROOM_KEY_BYTES)


def seal_room_key(room_key: bytes, recipient_user_key: str) -> bytes:
    """Seal ``room_key`` to the user ``recipient_user_key`` (``U...``, or 64 hex digits).

    Raises:
        CryptoError: ``bad_room_key`` or ``bad_recipient``.
    """
    if not isinstance(room_key, bytes | bytearray) or len(room_key) != ROOM_KEY_BYTES:
        raise CryptoError("bad_room_key", f"a room key has {ROOM_KEY_BYTES} bytes")
    try:
        ed_public = user_key_ed25519(recipient_user_key)
        x_public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed_public)
    except NkeyError as exc:
        raise CryptoError("bad_recipient", f"cannot seal to that recipient: {exc}") from None
    except nacl.exceptions.CryptoError:
        # libsodium refuses points that are not on the curve or of small order.
        raise CryptoError(
            "bad_recipient", "cannot seal to that recipient: not a valid Ed25519 point"
        ) from None
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(x_public)).encrypt(bytes(room_key)))


def _curve_private_key(identity: KeyPair) -> nacl.public.PrivateKey:
    if not isinstance(identity, KeyPair):
        raise CryptoError("bad_identity", "opening a room key needs an Ed25519 KeyPair")
    _, raw_seed = decode_seed(identity.seed)
    return nacl.signing.SigningKey(raw_seed).to_curve25519_private_key()


def open_room_key(sealed: bytes, identity: KeyPair) -> bytes:
    """Open a room key sealed to ``identity``'s user key.

    Raises:
        CryptoError: ``malformed``, ``open_failed``, ``bad_room_key`` or ``bad_identity``.
    """
    if not isinstance(sealed, bytes | bytearray) or len(sealed) != SEALED_ROOM_KEY_BYTES:
        raise CryptoError("malformed", f"a sealed room key has {SEALED_ROOM_KEY_BYTES} bytes")
    box = nacl.public.SealedBox(_curve_private_key(identity))
    try:
        room_key = bytes(box.decrypt(bytes(sealed)))
    except nacl.exceptions.CryptoError:
        raise CryptoError(
            "open_failed", "the room key was not sealed to this identity or was tampered with"
        ) from None
    if len(room_key) != ROOM_KEY_BYTES:  # unreachable with the length check above
        raise CryptoError("bad_room_key", f"a room key has {ROOM_KEY_BYTES} bytes")
    return room_key
