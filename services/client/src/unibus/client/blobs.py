"""Encrypted blobs: the per-blob cipher, its announcement, and streaming in both directions.

A blob is encrypted on the client with a fresh random key, as a libsodium secretstream
(XChaCha20-Poly1305) of 64 KiB chunks, the last one tagged final: a chunk changed, dropped,
reordered or cut off fails to open. The server stores only ciphertext. The key and the
SHA-256 of the stored ciphertext travel in a :class:`BlobRef` inside an encrypted room
message, so only members can fetch and open the blob, and a server that swaps it is caught
by the hash before anything is decrypted for use.

Neither direction holds the blob in memory: :func:`seal_file` encrypts from a file into
a file (the request signature needs the body's hash before the first byte is sent), and
:class:`BlobOpener` decrypts chunk by chunk as a download arrives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

import nacl.bindings
import nacl.exceptions
import nacl.utils

from unibus.client.errors import BlobError

__all__ = [
    "BLOB_KIND",
    "CHUNK",
    "KEY_BYTES",
    "BlobError",
    "BlobOpener",
    "BlobRef",
    "Progress",
    "Sealed",
    "new_blob_key",
    "open_blob",
    "seal_file",
    "sealed_size",
]

BLOB_KIND: Final = "unibus.blob.v1"
CHUNK: Final = 64 * 1024
"""Plaintext bytes per secretstream chunk."""
KEY_BYTES: Final = nacl.bindings.crypto_secretstream_xchacha20poly1305_KEYBYTES
_HEADER: Final = nacl.bindings.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_ABYTES: Final = nacl.bindings.crypto_secretstream_xchacha20poly1305_ABYTES
_SEALED_CHUNK: Final = CHUNK + _ABYTES
_TAG_MESSAGE: Final = nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL: Final = nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_FINAL

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)`` in bytes; phases ``encrypt``, ``upload``, ``download``."""


def new_blob_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


def sealed_size(size: int) -> int:
    """Bytes of ciphertext for ``size`` bytes of plaintext (an empty blob is one chunk)."""
    chunks = max(1, -(-size // CHUNK))
    return _HEADER + size + chunks * _ABYTES


@dataclass(frozen=True)
class BlobRef:
    """What travels inside an encrypted room message: enough to fetch and open a blob."""

    blob_id: str
    key: bytes
    sha256: str
    """Of the encrypted bytes as stored; checked before a download is accepted."""
    size: int
    name: str = ""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "kind": BLOB_KIND,
                "blob_id": self.blob_id,
                "key": self.key.hex(),
                "sha256": self.sha256,
                "size": self.size,
                "name": self.name,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> BlobRef | None:
        """The announcement in a room message, or ``None`` if it is not one."""
        try:
            value = json.loads(data)
            if not isinstance(value, dict) or value.get("kind") != BLOB_KIND:
                return None
            key = bytes.fromhex(value["key"])
            if len(key) != KEY_BYTES:
                return None
            return cls(
                blob_id=str(value["blob_id"]),
                key=key,
                sha256=str(value["sha256"]),
                size=int(value["size"]),
                name=str(value.get("name", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Sealed:
    """What :func:`seal_file` wrote: plaintext size, ciphertext size and its SHA-256."""

    size: int
    sealed_size: int
    sha256: str


def _chunks(source: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, is_last)`` over ``source``, reading one chunk ahead to know the last."""
    current = source.read(CHUNK)
    while True:
        following = source.read(CHUNK) if len(current) == CHUNK else b""
        yield current, not following
        if not following:
            return
        current = following


def seal_file(
    source: BinaryIO,
    sink: BinaryIO,
    key: bytes,
    *,
    total: int = 0,
    progress: Progress | None = None,
) -> Sealed:
    """Encrypt ``source`` into ``sink`` chunk by chunk, hashing what is written."""
    state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
    header = nacl.bindings.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    digest = hashlib.sha256(header)
    sink.write(header)
    size, written = 0, len(header)
    for chunk, last in _chunks(source):
        sealed = nacl.bindings.crypto_secretstream_xchacha20poly1305_push(
            state, chunk, None, _TAG_FINAL if last else _TAG_MESSAGE
        )
        sink.write(sealed)
        digest.update(sealed)
        size += len(chunk)
        written += len(sealed)
        if progress is not None:
            progress("encrypt", size, max(total, size))
    return Sealed(size=size, sealed_size=written, sha256=digest.hexdigest())


class BlobOpener:
    """Decrypts a blob as its ciphertext arrives, in pieces of any size, and hashes it.

    Feed pieces to :meth:`feed`, which returns the plaintext that became available; then
    :meth:`finish` checks that the stream ended with its final chunk and that the
    ciphertext has the announced hash and size.
    """

    def __init__(self, ref: BlobRef) -> None:
        self._ref = ref
        self._state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
        self._started = False
        self._pending = bytearray()
        self._digest = hashlib.sha256()
        self._final = False
        self._size = 0

    def feed(self, piece: bytes) -> bytes:
        self._digest.update(piece)
        self._pending += piece
        out: list[bytes] = []
        if not self._started:
            if len(self._pending) < _HEADER:
                return b""
            self._init(bytes(self._pending[:_HEADER]))
            del self._pending[:_HEADER]
        while len(self._pending) >= _SEALED_CHUNK:
            out.append(self._pull(bytes(self._pending[:_SEALED_CHUNK])))
            del self._pending[:_SEALED_CHUNK]
        return b"".join(out)

    def finish(self) -> bytes:
        """The last plaintext; raises :class:`BlobError` unless everything checked out."""
        if not self._started:
            raise BlobError("the blob is truncated (no stream header)")
        tail = self._pull(bytes(self._pending)) if self._pending else b""
        self._pending.clear()
        if not self._final:
            raise BlobError("the blob is truncated")
        if self._digest.hexdigest() != self._ref.sha256:
            raise BlobError("the blob's hash does not match its announcement; refusing it")
        if self._size != self._ref.size:
            raise BlobError("the blob's size does not match its announcement")
        return tail

    def _init(self, header: bytes) -> None:
        try:
            nacl.bindings.crypto_secretstream_xchacha20poly1305_init_pull(
                self._state, header, self._ref.key
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BlobError(f"the blob does not decrypt ({type(exc).__name__})") from None
        self._started = True

    def _pull(self, sealed: bytes) -> bytes:
        if self._final:
            raise BlobError("the blob has data after its final chunk")
        try:
            chunk, tag = nacl.bindings.crypto_secretstream_xchacha20poly1305_pull(
                self._state, sealed, None
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise BlobError(f"the blob does not decrypt ({type(exc).__name__})") from None
        self._final = tag == _TAG_FINAL
        self._size += len(chunk)
        return chunk


def open_blob(data: bytes, ref: BlobRef) -> bytes:
    """Check and decrypt a whole blob held in memory: the hash first, then the cipher."""
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise BlobError("the blob's hash does not match its announcement; refusing it")
    opener = BlobOpener(ref)
    return opener.feed(data) + opener.finish()
