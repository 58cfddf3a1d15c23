"""Streamed blobs in the JetStream object store, with memory independent of the blob size.

nats-py's ``ObjectStore`` reads a whole object into memory and writes only from a sync
file object, so this module speaks the object-store protocol directly on JetStream
primitives, in the layout nats.go and nats-py readers and writers share:

* chunks are messages on ``$O.<bucket>.C.<nuid>``, a fresh nuid per upload;
* the object becomes visible only when its meta record (the ObjectInfo JSON) is published
  on ``$O.<bucket>.M.<base64url(name)>`` with ``Nats-Rollup: sub``.

Uploads publish one chunk at a time and wait for its ack (the backpressure), so a
client that sends faster than the cluster stores simply waits. A failed upload (error,
size limit, digest mismatch, cancellation) never publishes a meta record and purges its
chunks: it is never visible. The meta record is committed by compare-and-set on the meta
subject's last sequence, so of two concurrent writers of one name each knows exactly
which object it replaced and purges that object's chunks after its own meta commits.

Downloads read the chunks one message at a time (``STREAM.MSG.GET`` ``next_by_subj``,
served by the stream leader) with one read-ahead, hash them as they go and withhold the
final chunk until size and digest match the meta record: a consumer that streams the
chunks out never emits a complete body that does not match its digest.

Backend failures surface as ``StoreUnavailableError`` (``AssetMissingError`` when the
bucket is missing), the ``UnibusError`` the API turns into 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.nuid import NUID

from unibus.core import naming
from unibus.core.errors import (
    AssetMissingError,
    InvalidNameError,
    StoreError,
    StoreUnavailableError,
)
from unibus.core.log import get_logger

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_NAME_LENGTH",
    "BlobDigestMismatch",
    "BlobInfo",
    "BlobNotFound",
    "BlobTooLarge",
    "delete_blob",
    "open_blob",
    "put_blob",
]

DEFAULT_CHUNK_SIZE: Final = 128 * 1024
"""nats-py's and nats.go's default chunk size."""
MAX_NAME_LENGTH: Final = 255

_BUCKET: Final = naming.BLOBS_BUCKET
_STREAM: Final = naming.object_stream(_BUCKET)
_NAME_RE: Final = re.compile(r"[-/_=.A-Za-z0-9]+")
"""nats-py's object name alphabet; unibus names are ``<room_id>.<blob_id>``."""
_HEX_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_DIGEST_PREFIX: Final = "SHA-256="
_ROLLUP: Final = "Nats-Rollup"
_ROLLUP_SUBJECT: Final = "sub"
_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_ERR_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_ERR_STREAM_NOT_FOUND: Final = 10059
_CAS_ATTEMPTS: Final = 8
_EMPTY_SHA256: Final = hashlib.sha256(b"").digest()
_ZERO_TIME: Final = "0001-01-01T00:00:00Z"

_log = get_logger("unibus.controlplane.objectstore")
_nuid = NUID()


class BlobTooLarge(Exception):
    """The body grew past ``limit`` bytes; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a blob is at most {limit} bytes")
        self.limit = limit


class BlobNotFound(Exception):
    """No such object, or it was deleted."""


class BlobDigestMismatch(Exception):
    """The body did not hash to the expected value (upload), or the stored chunks do not
    reproduce the size and digest their meta record names (download)."""


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    sha256: str
    """Lowercase hex."""


@dataclass(frozen=True)
class _Meta:
    """One meta record as stored, with the stream sequence it is at."""

    seq: int
    nuid: str
    size: int
    digest: bytes | None
    deleted: bool
    link: bool
    raw: dict[str, Any]


# -- names and formats --------------------------------------------------------------------------
def _check_name(name: str) -> str:
    if not (0 < len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name)):
        raise InvalidNameError(f"not a blob name: use 1-{MAX_NAME_LENGTH} of [-/_=.A-Za-z0-9]")
    return name


def _meta_subject(name: str) -> str:
    encoded = base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")
    return f"$O.{_BUCKET}.M.{encoded}"


def _chunk_subject(nuid: str) -> str:
    return f"$O.{_BUCKET}.C.{nuid}"


def _encode_digest(digest: bytes) -> str:
    return _DIGEST_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii")


def _decode_digest(value: object) -> bytes | None:
    """The raw SHA-256 from ``SHA-256=<base64url>``; None if absent or unreadable."""
    if not isinstance(value, str) or value[: len(_DIGEST_PREFIX)].upper() != _DIGEST_PREFIX:
        return None
    text = value[len(_DIGEST_PREFIX) :].rstrip("=").replace("+", "-").replace("/", "_")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == hashlib.sha256().digest_size else None


def _mtime() -> str:
    # RFC 3339 in UTC, which Go's time.Time and Python's fromisoformat both read.
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _object_info(
    name: str, nuid: str, *, size: int, chunks: int, digest: str, chunk_size: int, deleted: bool
) -> bytes:
    info: dict[str, Any] = {
        "name": name,
        "bucket": _BUCKET,
        "nuid": nuid,
        "size": size,
        "mtime": _mtime(),
        "chunks": chunks,
        "digest": digest,
        "deleted": deleted,
        "options": {"max_chunk_size": chunk_size},
    }
    return json.dumps(info, separators=(",", ":")).encode()


# -- backend calls ------------------------------------------------------------------------------
@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map a JetStream failure onto the Store's errors (the API answers 503)."""
    try:
        yield
    except StoreError:
        raise
    except nats.js.errors.APIError as exc:
        if exc.err_code == _ERR_STREAM_NOT_FOUND:
            raise AssetMissingError(_BUCKET) from None
        raise StoreUnavailableError(f"{_BUCKET}: {what}: {exc.description}") from None
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise StoreUnavailableError(f"{_BUCKET}: {what}: {type(exc).__name__}") from None


def _is_no_message(exc: nats.js.errors.NotFoundError) -> bool:
    return exc.err_code != _ERR_STREAM_NOT_FOUND


async def _read_meta(js: JetStreamContext, name: str) -> _Meta | None:
    """The current meta record of ``name`` (deleted ones included), from the stream leader."""
    with _translated("read meta"):
        try:
            msg = await js.get_msg(_STREAM, subject=_meta_subject(name), direct=False)
        except nats.js.errors.NotFoundError as exc:
            if _is_no_message(exc):
                return None
            raise
    return _parse_meta(msg.seq or 0, msg.data or b"")


def _parse_meta(seq: int, data: bytes) -> _Meta:
    def unreadable(why: str) -> StoreUnavailableError:
        return StoreUnavailableError(f"{_BUCKET}: unreadable meta record ({why})")

    try:
        raw = json.loads(data)
    except ValueError:
        raise unreadable("not JSON") from None
    if not isinstance(raw, dict):
        raise unreadable("not an object")
    options = raw.get("options") or {}
    size = raw.get("size") or 0
    nuid = raw.get("nuid") or ""
    if not isinstance(size, int) or size < 0 or not isinstance(nuid, str):
        raise unreadable("bad size or nuid")
    return _Meta(
        seq=seq,
        nuid=nuid,
        size=size,
        digest=_decode_digest(raw.get("digest")),
        deleted=bool(raw.get("deleted")),
        link=isinstance(options, dict) and options.get("link") is not None,
        raw=raw,
    )


async def _publish_meta(js: JetStreamContext, name: str, payload: bytes, expected_seq: int) -> bool:
    """Commit a meta record over the one at ``expected_seq`` (0: none); False if it moved."""
    headers = {_ROLLUP: _ROLLUP_SUBJECT, _EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq)}
    with _translated("write meta"):
        try:
            await js.publish(_meta_subject(name), payload, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _ERR_WRONG_LAST_SEQUENCE:
                return False
            raise
    return True


async def _purge_chunks(js: JetStreamContext, nuid: str) -> None:
    with _translated("purge chunks"):
        await js.purge_stream(_STREAM, subject=_chunk_subject(nuid))


async def _purge_quietly(js: JetStreamContext, nuid: str, why: str) -> None:
    """Best-effort purge that outlives the caller's cancellation; failures are logged."""

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.warning("blob chunks not purged", nuid=nuid, why=why, error=str(task.exception()))

    task = asyncio.ensure_future(_purge_chunks(js, nuid))
    task.add_done_callback(report)
    # A failure is reported by the callback; the caller's own error is the one to raise.
    with suppress(Exception):
        await asyncio.shield(task)


# -- the API ------------------------------------------------------------------------------------
async def put_blob(
    js: JetStreamContext,
    name: str,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    expected_sha256: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> BlobInfo:
    """Store the body ``chunks`` yields as object ``name``, replacing any object of that name.

    Raises ``BlobTooLarge`` as soon as more than ``max_bytes`` arrived, and
    ``BlobDigestMismatch`` if ``expected_sha256`` (hex) is given and the body hashes to
    something else (or it is not a hex SHA-256 at all); in both cases, and on any other
    error or cancellation, no meta record was written and the chunks are purged.
    """
    _check_name(name)
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    expected = None
    if expected_sha256 is not None:
        expected = expected_sha256.lower()
        if not _HEX_SHA256_RE.fullmatch(expected):
            raise BlobDigestMismatch("the expected digest is not a hex SHA-256")

    nuid = _nuid.next().decode("ascii")
    writer = _ChunkWriter(js, nuid, chunk_size=chunk_size, max_bytes=max_bytes)
    committed = False
    try:
        async for piece in chunks:
            await writer.write(piece)
        await writer.flush()
        digest = writer.digest(expected)
        payload = _object_info(
            name,
            nuid,
            size=writer.size,
            chunks=writer.sent,
            digest=_encode_digest(digest),
            chunk_size=chunk_size,
            deleted=False,
        )
        replaced = await _commit(js, name, nuid, payload)
        committed = True
    except BaseException as exc:
        if not committed and not isinstance(exc, _Indeterminate):
            await _purge_quietly(js, nuid, "upload failed")
        raise

    # A tombstone's chunks are purged again too, in case its delete could not finish.
    if replaced is not None and replaced.nuid and replaced.nuid != nuid:
        await _purge_quietly(js, replaced.nuid, "replaced")
    return BlobInfo(name=name, size=writer.size, sha256=digest.hex())


class _ChunkWriter:
    """Re-chunks, counts and hashes a body, publishing each full chunk and awaiting its ack."""

    def __init__(self, js: JetStreamContext, nuid: str, *, chunk_size: int, max_bytes: int) -> None:
        self._js = js
        self._subject = _chunk_subject(nuid)
        self._chunk_size = chunk_size
        self._max_bytes = max_bytes
        self._hasher = hashlib.sha256()
        self._pending = bytearray()
        self.size = 0
        self.sent = 0

    async def _send(self, payload: bytes) -> None:
        with _translated("write chunk"):
            await self._js.publish(self._subject, payload)
        self.sent += 1

    async def write(self, piece: bytes) -> None:
        if not piece:
            return
        self.size += len(piece)
        if self.size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._hasher.update(piece)
        view = memoryview(piece)
        full = self._chunk_size
        if self._pending:
            take = full - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < full:
                return
            await self._send(bytes(self._pending))
            self._pending.clear()
        while len(view) >= full:
            await self._send(bytes(view[:full]))
            view = view[full:]
        self._pending += view

    async def flush(self) -> None:
        if self._pending:
            await self._send(bytes(self._pending))
            self._pending.clear()

    def digest(self, expected_hex: str | None) -> bytes:
        digest = self._hasher.digest()
        if expected_hex is not None and digest.hex() != expected_hex:
            raise BlobDigestMismatch("the body does not hash to the expected SHA-256")
        return digest


class _Indeterminate(StoreUnavailableError):
    """The meta publish failed and whether it was stored is unknown."""


async def _commit(js: JetStreamContext, name: str, nuid: str, payload: bytes) -> _Meta | None:
    """Publish the meta record by compare-and-set; the record it replaced, if any."""
    for _ in range(_CAS_ATTEMPTS):
        current = await _read_meta(js, name)
        try:
            done = await _publish_meta(js, name, payload, current.seq if current else 0)
        except StoreUnavailableError as exc:
            # The publish may have been stored although its ack never came back: if the
            # meta names our chunks they are committed, and must never be purged. If that
            # cannot be told, the chunks stay: an orphan is invisible, a committed object
            # without its chunks would not be.
            try:
                now = await _read_meta(js, name)
            except StoreError:
                _log.warning("blob commit indeterminate; chunks kept", nuid=nuid)
                raise _Indeterminate(str(exc)) from None
            if now is not None and now.nuid == nuid:
                return current
            raise
        if done:
            return current
    raise StoreUnavailableError(f"{_BUCKET}: {name} kept changing while it was written")


async def open_blob(js: JetStreamContext, name: str) -> tuple[BlobInfo, AsyncIterator[bytes]]:
    """The object's info and an iterator over its chunks (nothing is read until iterated).

    Raises ``BlobNotFound`` if there is no such object or it was deleted. The iterator
    raises ``BlobDigestMismatch`` (before yielding the final chunk) if the stored chunks do
    not reproduce the size and digest of the meta record, including when the object was
    replaced or deleted while it was being read.
    """
    _check_name(name)
    meta = await _read_meta(js, name)
    if meta is None or meta.deleted:
        raise BlobNotFound(f"no blob named {name}")
    if meta.link:
        raise BlobNotFound(f"{name} is a link, not a blob")
    if meta.digest is None or (meta.size > 0 and not meta.nuid):
        raise StoreUnavailableError(f"{_BUCKET}: the meta record of {name} is incomplete")
    info = BlobInfo(name=name, size=meta.size, sha256=meta.digest.hex())
    return info, _read_chunks(js, meta)


async def _next_chunk(js: JetStreamContext, subject: str, seq: int) -> api.RawStreamMsg | None:
    with _translated("read chunk"):
        try:
            return await js.get_msg(_STREAM, seq=seq, subject=subject, direct=False, next=True)
        except nats.js.errors.NotFoundError as exc:
            if _is_no_message(exc):
                return None
            raise


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _read_chunks(js: JetStreamContext, meta: _Meta) -> AsyncIterator[bytes]:
    expected = meta.digest
    if meta.size == 0:
        if expected != _EMPTY_SHA256:
            raise BlobDigestMismatch("the stored blob does not match its digest")
        return
    subject = _chunk_subject(meta.nuid)
    hasher = hashlib.sha256()
    size = 0
    ahead: asyncio.Task[api.RawStreamMsg | None] | None = asyncio.ensure_future(
        _next_chunk(js, subject, 1)
    )
    try:
        while ahead is not None:
            msg = await ahead
            ahead = None
            if msg is None:
                raise BlobDigestMismatch("the stored blob is incomplete")
            data = msg.data or b""
            size += len(data)
            hasher.update(data)
            if size > meta.size:
                raise BlobDigestMismatch("the stored blob is longer than its meta record says")
            if size < meta.size:
                # Read ahead by one chunk while the caller handles this one.
                ahead = asyncio.ensure_future(_next_chunk(js, subject, (msg.seq or 0) + 1))
            elif hasher.digest() != expected:
                raise BlobDigestMismatch("the stored blob does not match its digest")
            yield data
    finally:
        if ahead is not None:
            ahead.cancel()
            ahead.add_done_callback(_retrieve)


async def delete_blob(js: JetStreamContext, name: str) -> None:
    """Delete object ``name``: a tombstone meta record hides it, then its chunks are purged.

    Raises ``BlobNotFound`` if there is no such object (or it is already deleted; its
    chunks are purged again in case an earlier delete could not finish).
    """
    _check_name(name)
    for _ in range(_CAS_ATTEMPTS):
        current = await _read_meta(js, name)
        if current is None:
            raise BlobNotFound(f"no blob named {name}")
        if current.deleted:
            if current.nuid:
                await _purge_chunks(js, current.nuid)
            raise BlobNotFound(f"no blob named {name}")
        tombstone = dict(current.raw)
        # nats.go writes the zero time (and cannot read nats-py's empty string).
        tombstone.update(size=0, chunks=0, digest="", mtime=_ZERO_TIME, deleted=True)
        payload = json.dumps(tombstone, separators=(",", ":")).encode()
        if await _publish_meta(js, name, payload, current.seq):
            if current.nuid:
                await _purge_chunks(js, current.nuid)
            return
    raise StoreUnavailableError(f"{_BUCKET}: {name} kept changing while it was deleted")
