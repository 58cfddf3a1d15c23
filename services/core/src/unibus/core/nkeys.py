"""NATS nkeys: the string codec for public keys and seeds, Ed25519 key pairs, seed files.

Wire format (nats-io/nkeys ``strkey.go``): a public key is
``base32(prefix || key32 || crc16_le)``, 56 characters whose first letter names the
role (``U`` user, ``A`` account, ``N`` server, ``X`` curve, ...). A seed packs the
``S`` prefix and the role into two bytes: ``base32(b1 || b2 || seed32 || crc16_le)``,
58 characters (``SU...``, ``SA...``, ``SX...``). Base32 is the standard alphabet
without padding; the checksum is CRC-16/XMODEM, little-endian.

Curve (``X``) keys are encoded here too, but their key pair lives in
:mod:`unibus.core.xkeys`.

>>> kp = KeyPair.generate(Prefix.USER)
>>> kp.public_key.startswith("U")
True
>>> verify(kp.public_key, b"nonce", kp.sign(b"nonce"))
True
>>> canonical_user_key("00" * 32)
'UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABET7'
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import nacl.bindings
import nacl.exceptions
import nacl.signing

from unibus.core.errors import NkeyError
from unibus.core.files import PrivateFileError, read_private, write_private

__all__ = [
    "KeyPair",
    "Prefix",
    "canonical_user_key",
    "decode_public",
    "decode_seed",
    "encode_public",
    "encode_seed",
    "read_seed_file",
    "user_key_ed25519",
    "verify",
    "write_seed_file",
]

_B32_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class Prefix(enum.IntEnum):
    """The nkeys prefix bytes; the first base32 letter of a key is ``_B32_ALPHABET[v >> 3]``."""

    SEED = 18 << 3  # 'S'
    PRIVATE = 15 << 3  # 'P'
    SERVER = 13 << 3  # 'N'
    CLUSTER = 2 << 3  # 'C'
    OPERATOR = 14 << 3  # 'O'
    ACCOUNT = 0  # 'A'
    USER = 20 << 3  # 'U'
    CURVE = 23 << 3  # 'X'

    @property
    def letter(self) -> str:
        """The first character of a public key with this prefix, e.g. ``'U'``."""
        return _B32_ALPHABET[self.value >> 3]


_PUBLIC_PREFIXES: Final = frozenset(
    {Prefix.SERVER, Prefix.CLUSTER, Prefix.OPERATOR, Prefix.ACCOUNT, Prefix.USER, Prefix.CURVE}
)
_SIGNING_PREFIXES: Final = _PUBLIC_PREFIXES - {Prefix.CURVE}

_KEY_LEN: Final = 32
_SIGNATURE_LEN: Final = 64
_PUBLIC_CHARS: Final = 56  # base32 of 1 + 32 + 2 bytes
_SEED_CHARS: Final = 58  # base32 of 2 + 32 + 2 bytes
_B32_RE: Final = re.compile(r"[A-Z2-7]+")
_HEX_KEY_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_USER_KEY_FORMS: Final = (
    "accepted forms: a user nkey (56 characters starting with 'U') "
    "or a 64-digit hex Ed25519 public key"
)
_SEED_FILE_MAX: Final = 4096
_Pair = TypeVar("_Pair")


def _make_crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE: Final = _make_crc16_table()


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0), as nkeys ``crc16.go``."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _with_checksum(body: bytes) -> str:
    raw = body + _crc16(body).to_bytes(2, "little")
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def _checked_body(text: str, chars: int, what: str) -> bytes:
    """Base32-decode ``text`` of exactly ``chars`` characters and verify its checksum."""
    if len(text) != chars or not _B32_RE.fullmatch(text):
        raise NkeyError(f"not a {what}: expected {chars} characters of upper-case base32")
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except binascii.Error:
        raise NkeyError(f"not a {what}: invalid base32") from None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if _crc16(body) != crc:
        raise NkeyError(f"{what} checksum mismatch")
    return body


def _looks_like_seed(text: str) -> bool:
    return len(text) == _SEED_CHARS and text.startswith("S")


def _describe(prefix: Prefix) -> str:
    return f"{prefix.name.lower()} key ({prefix.letter}...)"


def encode_public(prefix: Prefix, raw: bytes) -> str:
    """Encode 32 raw key bytes as a public nkey string of the given role."""
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError(f"{prefix.name} is not a public key prefix")
    if len(raw) != _KEY_LEN:
        raise NkeyError(f"a public key has {_KEY_LEN} bytes, got {len(raw)}")
    return _with_checksum(bytes([prefix]) + bytes(raw))


def decode_public(key: str, expected: Prefix | None = None) -> tuple[Prefix, bytes]:
    """Decode a public nkey into its role and 32 raw bytes.

    Raises:
        NkeyError: wrong length or alphabet, checksum mismatch, unknown role, or a
            role other than ``expected``.
    """
    if not isinstance(key, str):
        raise NkeyError("a public nkey must be a string")
    prefix, raw = _decoded_public(key)
    if expected is not None and prefix != expected:
        raise NkeyError(f"expected a {_describe(expected)}, got a {_describe(prefix)}")
    return prefix, raw


@functools.lru_cache(maxsize=4096)
def _decoded_public(key: str) -> tuple[Prefix, bytes]:
    """The checked decoding of one key string (pure: cached, as the callout decodes the
    same server, issuer and user keys several times per decision; errors are not cached)."""
    if _looks_like_seed(key):
        raise NkeyError("expected a public nkey but got what looks like a seed (a secret)")
    body = _checked_body(key, _PUBLIC_CHARS, "public nkey")
    try:
        prefix = Prefix(body[0])
    except ValueError:
        raise NkeyError("public nkey has an unknown prefix") from None
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError("public nkey has an unknown prefix")
    return prefix, body[1:]


def encode_seed(prefix: Prefix, raw: bytes) -> str:
    """Encode 32 raw seed bytes as an ``S?...`` seed string of the given role."""
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError(f"{prefix.name} is not a seed role")
    if len(raw) != _KEY_LEN:
        raise NkeyError(f"a seed has {_KEY_LEN} bytes, got {len(raw)}")
    head = bytes([Prefix.SEED | (prefix >> 5), (prefix & 0x1F) << 3])
    return _with_checksum(head + bytes(raw))


def decode_seed(seed: str) -> tuple[Prefix, bytes]:
    """Decode a seed string into its role and 32 raw seed bytes.

    Error messages never contain the seed.
    """
    if not isinstance(seed, str):
        raise NkeyError("a seed must be a string")
    body = _checked_body(seed, _SEED_CHARS, "seed")
    b1, b2 = body[0], body[1]
    # The low three bits of b2 are always zero in a seed nkeys wrote; refusing
    # anything else keeps exactly one string per seed.
    if b1 & 0xF8 != Prefix.SEED or b2 & 0x07:
        raise NkeyError("not a seed: bad seed prefix")
    role = ((b1 & 0x07) << 5) | (b2 >> 3)
    if role not in _PUBLIC_PREFIXES:
        raise NkeyError("seed has an unknown role")
    return Prefix(role), body[2:]


def _seed_text(seed: str | bytes | bytearray) -> str:
    if isinstance(seed, bytes | bytearray):
        try:
            seed = bytes(seed).decode("ascii")
        except UnicodeDecodeError:
            raise NkeyError("not a seed: contains non-ASCII bytes") from None
    if not isinstance(seed, str):
        raise NkeyError("a seed must be str or bytes")
    return seed.strip()


def _verify_raw(raw: bytes, data: bytes, signature: bytes) -> bool:
    if len(signature) != _SIGNATURE_LEN or len(raw) != _KEY_LEN:
        return False
    try:
        # What VerifyKey(raw).verify(data, signature) runs, without building a key object.
        nacl.bindings.crypto_sign_open(bytes(signature) + bytes(data), bytes(raw))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        # libsodium also refuses small-order and non-canonical keys here.
        return False
    return True


class KeyPair:
    """An Ed25519 nkey (user, account, server, operator or cluster).

    Build one with :meth:`generate` or :meth:`from_seed`; the constructor takes the
    role and the 32 raw seed bytes. The seed is never part of ``repr``.
    """

    __slots__ = ("_prefix", "_public_key", "_seed", "_signing_key")

    def __init__(self, prefix: Prefix, raw_seed: bytes) -> None:
        if prefix not in _SIGNING_PREFIXES:
            raise NkeyError(
                f"{prefix.name} is not an Ed25519 role"
                + ("; use unibus.core.xkeys.CurveKeyPair" if prefix == Prefix.CURVE else "")
            )
        if len(raw_seed) != _KEY_LEN:
            raise NkeyError(f"a seed has {_KEY_LEN} bytes, got {len(raw_seed)}")
        self._prefix = prefix
        self._signing_key = nacl.signing.SigningKey(bytes(raw_seed))
        self._seed = encode_seed(prefix, raw_seed)
        self._public_key = encode_public(prefix, bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls, prefix: Prefix) -> KeyPair:
        """A fresh random key pair of the given role (not ``CURVE``)."""
        return cls(prefix, secrets.token_bytes(_KEY_LEN))

    @classmethod
    def from_seed(cls, seed: str | bytes) -> KeyPair:
        """Load a key pair from an ``S?...`` seed; surrounding whitespace is ignored."""
        prefix, raw = decode_seed(_seed_text(seed))
        return cls(prefix, raw)

    @property
    def prefix(self) -> Prefix:
        return self._prefix

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def seed(self) -> str:
        """The seed string. It is the private key: never log it."""
        return self._seed

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return bytes(self._signing_key.sign(data).signature)

    def verify(self, data: bytes, signature: bytes) -> bool:
        return _verify_raw(bytes(self._signing_key.verify_key), data, signature)

    def __repr__(self) -> str:
        return f"KeyPair({self._public_key})"


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature made by the owner of ``public_key``.

    Returns False for a wrong or malformed signature; raises NkeyError when the key
    itself is malformed or is a curve key.
    """
    prefix, raw = decode_public(public_key)
    if prefix == Prefix.CURVE:
        raise NkeyError("a curve key cannot verify signatures")
    return _verify_raw(raw, data, signature)


def user_key_ed25519(key: str) -> bytes:
    """The 32 raw Ed25519 bytes of a user key given as ``U...`` or as 64 hex digits."""
    if not isinstance(key, str):
        raise NkeyError(f"a user key must be a string; {_USER_KEY_FORMS}")
    text = key.strip()
    if _HEX_KEY_RE.fullmatch(text):
        return bytes.fromhex(text)
    if _looks_like_seed(text):
        raise NkeyError(f"that looks like a seed (a secret), not a public key; {_USER_KEY_FORMS}")
    try:
        _, raw = decode_public(text, Prefix.USER)
    except NkeyError as exc:
        raise NkeyError(f"invalid user key: {exc}; {_USER_KEY_FORMS}") from None
    return raw


def canonical_user_key(key: str) -> str:
    """The canonical ``U...`` form of a user key given as ``U...`` or as 64 hex digits.

    Hex may be upper or lower case; surrounding whitespace is ignored. Checksum and
    role of a ``U...`` key are verified.
    """
    return encode_public(Prefix.USER, user_key_ed25519(key))


# -- seed files ---------------------------------------------------------------------------


def write_seed_file(path: Path, seed: str, *, overwrite: bool = False) -> None:
    """Write ``seed`` (plus a newline) to a new file readable only by its owner.

    Without ``overwrite`` an existing file is refused. With it, the seed goes to a
    temporary file in the same directory that then replaces ``path`` atomically, so a
    crash leaves either the old or the new seed, never a torn file. The directory must
    exist already.

    Raises:
        NkeyError: malformed seed, existing file, or the file could not be written.
    """
    decode_seed(seed)  # never persist something that cannot be loaded back
    try:
        write_private(Path(path), (seed + "\n").encode("ascii"), overwrite=overwrite, parents=False)
    except PrivateFileError as exc:
        raise NkeyError(f"seed file {exc}") from None


def _load_seed_file(path: Path, load: Callable[[str], _Pair]) -> _Pair:
    """Read a seed file that only its owner can access and ``load`` the seed in it.

    Shared with :func:`unibus.core.xkeys.read_curve_seed_file`. Symlinks are followed
    (Kubernetes secret mounts); the checks apply to the file read.
    """
    try:
        data = read_private(Path(path), max_size=_SEED_FILE_MAX)
    except PrivateFileError as exc:
        raise NkeyError(f"seed file {exc}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise NkeyError(f"seed file {path} does not contain a seed") from None
    try:
        return load(text)
    except NkeyError as exc:
        raise NkeyError(f"seed file {path}: {exc}") from None


def read_seed_file(path: Path) -> KeyPair:
    """Load an Ed25519 key pair from a seed file that only its owner can access.

    Raises:
        NkeyError: missing or unreadable file, group/other permissions (the message
            says which ``chmod`` fixes it), or content that is not an Ed25519 seed.
    """
    return _load_seed_file(path, KeyPair.from_seed)
