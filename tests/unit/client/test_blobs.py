"""The blob cipher: streamed both ways, refusing whatever was cut, changed or swapped."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import pytest

from unibus.cli._common import TransferProgress
from unibus.client.blobs import (
    CHUNK,
    BlobError,
    BlobOpener,
    BlobRef,
    new_blob_key,
    open_blob,
    seal_file,
    sealed_size,
)

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17]


def _seal(data: bytes) -> tuple[bytes, BlobRef]:
    key = new_blob_key()
    sink = io.BytesIO()
    sealed = seal_file(io.BytesIO(data), sink, key, total=len(data))
    out = sink.getvalue()
    ref = BlobRef(blob_id="b", key=key, sha256=sealed.sha256, size=sealed.size)
    assert sealed.sealed_size == len(out) == sealed_size(len(data))
    assert sealed.sha256 == hashlib.sha256(out).hexdigest()
    return out, ref


def _stream_open(data: bytes, ref: BlobRef, piece: int) -> bytes:
    opener = BlobOpener(ref)
    out = [opener.feed(data[i : i + piece]) for i in range(0, len(data), piece)]
    out.append(opener.finish())
    return b"".join(out)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, CHUNK, 3 * CHUNK + 5])
def test_a_sealed_blob_opens_to_its_plaintext_whatever_the_pieces_it_arrives_in(
    size: int, piece: int
) -> None:
    data = os.urandom(size)
    sealed, ref = _seal(data)
    assert _stream_open(sealed, ref, piece) == data
    assert open_blob(sealed, ref) == data


@pytest.mark.parametrize("size", [CHUNK + 1, 2 * CHUNK + 3])
def test_a_blob_cut_after_a_whole_chunk_is_refused_as_truncated(size: int) -> None:
    sealed, ref = _seal(os.urandom(size))
    header = 24
    cut = sealed[: header + CHUNK + 17]  # the first chunk, whole, and nothing after
    with pytest.raises(BlobError, match="truncated"):
        _stream_open(cut, dataclasses.replace(ref, sha256=hashlib.sha256(cut).hexdigest()), 4096)


def test_a_changed_byte_is_refused_before_its_chunk_is_returned() -> None:
    sealed, ref = _seal(os.urandom(2 * CHUNK))
    changed = bytearray(sealed)
    changed[100] ^= 1
    opener = BlobOpener(dataclasses.replace(ref, sha256=hashlib.sha256(changed).hexdigest()))
    with pytest.raises(BlobError, match="does not decrypt"):
        opener.feed(bytes(changed))


def test_a_blob_whose_hash_differs_from_its_announcement_is_refused() -> None:
    sealed, ref = _seal(os.urandom(1000))
    wrong = dataclasses.replace(ref, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(BlobError, match="hash does not match"):
        open_blob(sealed, wrong)
    with pytest.raises(BlobError, match="hash does not match"):
        _stream_open(sealed, wrong, 100)


def test_another_blob_under_this_announcement_does_not_open() -> None:
    _, ref = _seal(os.urandom(1000))
    other, _ = _seal(os.urandom(1000))
    swapped = dataclasses.replace(ref, sha256=hashlib.sha256(other).hexdigest())
    with pytest.raises(BlobError, match="does not decrypt"):
        _stream_open(other, swapped, 100)


def test_data_after_the_final_chunk_is_refused() -> None:
    sealed, ref = _seal(os.urandom(CHUNK))  # one full chunk, the final one
    extended = sealed + sealed[24:]
    with pytest.raises(BlobError, match="after its final chunk"):
        _stream_open(
            extended, dataclasses.replace(ref, sha256=hashlib.sha256(extended).hexdigest()), 7
        )


def test_a_size_differing_from_the_announcement_is_refused() -> None:
    sealed, ref = _seal(os.urandom(10))
    with pytest.raises(BlobError, match="size"):
        _stream_open(sealed, dataclasses.replace(ref, size=11), 64)


def test_an_announcement_round_trips_and_anything_else_decodes_to_none() -> None:
    ref = BlobRef(blob_id="b1", key=new_blob_key(), sha256="ab" * 32, size=5, name="x.bin")
    assert BlobRef.decode(ref.encode()) == ref
    for other in (b"hello", b"{}", b'{"kind": "unibus.blob.v1"}', b"\xff", b"[1]"):
        assert BlobRef.decode(other) is None
    short_key = ref.encode().replace(ref.key.hex().encode(), b"abcd")
    assert BlobRef.decode(short_key) is None


def test_transfer_progress_prints_each_phase_and_its_end_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = TransferProgress(interval=3600)
    for done in (10, 20, 100, 100):
        report("encrypt", done, 100)
    report("upload", 0, 4 << 20)
    report("upload", 4 << 20, 4 << 20)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "encrypt: 10 B of 100 B (10%)",
        "encrypt: 100 B of 100 B (100%)",
        "upload: 0 B of 4.0 MiB (0%)",
        "upload: 4.0 MiB of 4.0 MiB (100%)",
    ]
