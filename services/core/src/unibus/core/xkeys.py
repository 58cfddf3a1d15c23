"""NATS xkeys: X25519 curve key pairs and the ``xkv1`` sealed-box format.

Byte layout (nats-io/nkeys ``xkeys.go`` ``Seal``/``Open``; nats-server auth callout)::

    b"xkv1" || nonce (24 bytes) || crypto_box(plaintext)   # box = 16-byte MAC || ciphertext

``crypto_box`` is X25519 + XSalsa20-Poly1305 between the sender's private key and the
recipient's public key. The X25519 private key is the 32 raw bytes of the ``SX...`` seed.

>>> server, callout = CurveKeyPair.generate(), CurveKeyPair.generate()
>>> box = server.seal(b"request", callout.public_key)
>>> callout.open(box, server.public_key)
b'request'
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Final

import nacl.exceptions
import nacl.public

from unibus.core.errors import NkeyError, XKeyError
from unibus.core.nkeys import (
    Prefix,
    _load_seed_file,
    _seed_text,
    decode_public,
    decode_seed,
    encode_public,
    encode_seed,
)

__all__ = ["VERSION_TAG", "CurveKeyPair", "read_curve_seed_file"]

VERSION_TAG: Final = b"xkv1"
_KEY_LEN: Final = 32
_NONCE_LEN: Final = nacl.public.Box.NONCE_SIZE
_MAC_LEN: Final = 16
_MIN_SEALED_LEN: Final = len(VERSION_TAG) + _NONCE_LEN + _MAC_LEN  # an empty plaintext
_BOX_CACHE_MAX: Final = 64


class CurveKeyPair:
    """An X25519 nkey (``X...`` public key, ``SX...`` seed) that seals and opens ``xkv1`` boxes.

    The shared key of each peer is computed once and cached (up to 64 peers), because
    a callout talks to the same few servers for thousands of requests. The seed is
    never part of ``repr``.
    """

    __slots__ = ("_boxes", "_private_key", "_public_key", "_seed")

    def __init__(self, raw_seed: bytes) -> None:
        if len(raw_seed) != _KEY_LEN:
            raise NkeyError(f"a curve seed has {_KEY_LEN} bytes, got {len(raw_seed)}")
        self._private_key = nacl.public.PrivateKey(bytes(raw_seed))
        self._seed = encode_seed(Prefix.CURVE, raw_seed)
        self._public_key = encode_public(Prefix.CURVE, bytes(self._private_key.public_key))
        self._boxes: dict[bytes, nacl.public.Box] = {}

    @classmethod
    def generate(cls) -> CurveKeyPair:
        return cls(secrets.token_bytes(_KEY_LEN))

    @classmethod
    def from_seed(cls, seed: str | bytes) -> CurveKeyPair:
        """Load from an ``SX...`` seed; surrounding whitespace is ignored.

        Raises:
            NkeyError: malformed seed, or a seed of another role (``SU...``, ``SA...``).
        """
        prefix, raw = decode_seed(_seed_text(seed))
        if prefix != Prefix.CURVE:
            raise NkeyError(f"expected a curve seed (SX...), got a {prefix.name.lower()} seed")
        return cls(raw)

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def seed(self) -> str:
        """The seed string. It is the private key: never log it."""
        return self._seed

    def _box(self, peer: str, role: str) -> nacl.public.Box:
        try:
            _, raw = decode_public(peer, Prefix.CURVE)
        except NkeyError as exc:
            raise XKeyError(f"{role} is not a valid curve key: {exc}") from None
        box = self._boxes.get(raw)
        if box is None:
            if len(self._boxes) >= _BOX_CACHE_MAX:
                self._boxes.clear()
            box = nacl.public.Box(self._private_key, nacl.public.PublicKey(raw))
            self._boxes[raw] = box
        return box

    def seal(self, plaintext: bytes, recipient: str) -> bytes:
        """Encrypt and authenticate ``plaintext`` for ``recipient`` (an ``X...`` key).

        Raises:
            XKeyError: ``recipient`` is not a valid curve public key.
        """
        box = self._box(recipient, "recipient")
        nonce = secrets.token_bytes(_NONCE_LEN)
        # PyNaCl returns nonce || MAC || ciphertext, which is exactly what follows
        # the version tag in nkeys' format.
        return VERSION_TAG + bytes(box.encrypt(bytes(plaintext), nonce))

    def open(self, data: bytes, sender: str) -> bytes:
        """Decrypt an ``xkv1`` box that ``sender`` (an ``X...`` key) sealed for this key.

        Raises:
            XKeyError: too short, wrong version tag, bad sender key, or the MAC does not
                verify (tampered data, wrong sender or wrong recipient).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise XKeyError("sealed data must be bytes")
        data = bytes(data)
        if len(data) < _MIN_SEALED_LEN:
            raise XKeyError("sealed data is too short to be an xkv1 box")
        if data[: len(VERSION_TAG)] != VERSION_TAG:
            raise XKeyError("sealed data does not start with the xkv1 version tag")
        box = self._box(sender, "sender")
        try:
            return bytes(box.decrypt(data[len(VERSION_TAG) :]))
        except (nacl.exceptions.CryptoError, ValueError):
            raise XKeyError("xkv1 box did not open: wrong keys or tampered data") from None

    def __repr__(self) -> str:
        return f"CurveKeyPair({self._public_key})"


def read_curve_seed_file(path: Path) -> CurveKeyPair:
    """Load a curve key pair from an ``SX...`` seed file that only its owner can access.

    Same checks as :func:`unibus.core.nkeys.read_seed_file`.

    Raises:
        NkeyError: missing or unreadable file, group/other permissions, or content
            that is not a curve seed.
    """
    return _load_seed_file(path, CurveKeyPair.from_seed)
