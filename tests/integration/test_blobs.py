"""Streamed blobs in the object store: round trips, nats-py interop, failed uploads that
leave nothing behind, replacement, deletion and memory independent of the blob size."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import sys
from collections.abc import AsyncIterator, Iterable

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from tests.integration.harness import StackFactory, bounded
from unibus.controlplane.objectstore import (
    DEFAULT_CHUNK_SIZE,
    BlobDigestMismatch,
    BlobInfo,
    BlobNotFound,
    BlobTooLarge,
    delete_blob,
    open_blob,
    put_blob,
)
from unibus.core import naming
from unibus.core.errors import InvalidNameError

MiB = 1024 * 1024
CHUNK = DEFAULT_CHUNK_SIZE
STREAM = naming.object_stream(naming.BLOBS_BUCKET)
CHUNKS_FILTER = f"$O.{naming.BLOBS_BUCKET}.C.>"


def _name() -> str:
    return f"{naming.new_room_id()}.{naming.new_room_id()}"


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def _pieces(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    """``data`` in pieces of the given sizes (cycled), as an HTTP body would arrive."""
    view = memoryview(data)
    sizes = list(sizes)
    i = 0
    while view:
        n = sizes[i % len(sizes)]
        yield bytes(view[:n])
        view = view[n:]
        i += 1


async def _read(chunks: AsyncIterator[bytes], *, into: list[bytes] | None = None) -> bytes:
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if into is not None:
            into.append(chunk)
    return bytes(out)


async def _js(stacks: StackFactory) -> tuple[NATS, JetStreamContext]:
    stack = await stacks.start(nodes=1)
    nc = await stacks.connect(stack)
    return nc, nc.jetstream(timeout=10.0)


async def _chunk_subjects(js: JetStreamContext) -> dict[str, int]:
    info = await js.stream_info(STREAM, subjects_filter=CHUNKS_FILTER)
    return dict(info.state.subjects or {})


async def _assert_invisible(js: JetStreamContext, name: str) -> None:
    with pytest.raises(BlobNotFound):
        await open_blob(js, name)
    obs = await js.object_store(naming.BLOBS_BUCKET)
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await obs.get(name)
    assert await _chunk_subjects(js) == {}


async def test_round_trips_of_every_size_class_reproduce_the_bytes_and_digest(
    stacks: StackFactory,
) -> None:
    _, js = await _js(stacks)
    obs = await js.object_store(naming.BLOBS_BUCKET)
    cases = [
        (0, [1]),
        (1, [1]),
        (CHUNK, [CHUNK]),
        (CHUNK, [1000, 7]),
        (CHUNK + 1, [CHUNK + 1]),
        (5 * CHUNK + 17, [3 * CHUNK + 5, 1]),
        (7 * CHUNK - 3, [65536, 10_000, 1]),
        (20 * MiB + 12345, [256 * 1024 + 3]),
    ]
    async with bounded(120):
        for seed, (size, pieces) in enumerate(cases):
            data = _data(size, seed)
            name = _name()
            sha = hashlib.sha256(data).hexdigest()

            stored = await put_blob(
                js, name, _pieces(data, pieces), max_bytes=size, expected_sha256=sha
            )
            info, chunks = await open_blob(js, name)

            assert stored == info == BlobInfo(name=name, size=size, sha256=sha)
            assert await _read(chunks) == data, size
            meta = await obs.get_info(name)
            assert meta.chunks == -(-size // CHUNK)
            assert meta.size == size
            assert not meta.deleted


async def test_chunks_arrive_at_the_configured_chunk_size(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    data = _data(10_000, 3)
    name = _name()
    await put_blob(js, name, _pieces(data, [999]), max_bytes=len(data), chunk_size=4096)

    _, chunks = await open_blob(js, name)
    assert [len(c) async for c in chunks] == [4096, 4096, 1808]
    assert sum((await _chunk_subjects(js)).values()) == 3


async def test_a_blob_we_write_is_read_by_nats_py_and_one_it_writes_is_read_by_us(
    stacks: StackFactory,
) -> None:
    _, js = await _js(stacks)
    obs = await js.object_store(naming.BLOBS_BUCKET)
    for seed, size in enumerate((0, 1, CHUNK, 3 * CHUNK + 11)):
        data = _data(size, seed)
        ours, theirs = _name(), _name()

        await put_blob(js, ours, _pieces(data, [5000]), max_bytes=size)
        result = await obs.get(ours)
        assert result.data == data
        assert result.info.size == size
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        assert result.info.digest == f"SHA-256={digest}"

        await obs.put(theirs, io.BytesIO(data))
        info, chunks = await open_blob(js, theirs)
        assert info == BlobInfo(name=theirs, size=size, sha256=hashlib.sha256(data).hexdigest())
        assert await _read(chunks) == data

    # Deletes interoperate too: each side's tombstone hides the object from the other.
    name = _name()
    await put_blob(js, name, _pieces(b"x" * 10, [10]), max_bytes=10)
    await delete_blob(js, name)
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await obs.get(name)
    other = _name()
    await obs.put(other, b"y" * 10)
    await obs.delete(other)
    with pytest.raises(BlobNotFound):
        await open_blob(js, other)


async def test_a_body_over_the_limit_stops_early_and_leaves_nothing(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    name = _name()
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        piece = _data(50_000)
        while True:
            consumed += len(piece)
            yield piece

    async with bounded(30):
        with pytest.raises(BlobTooLarge) as raised:
            await put_blob(js, name, endless(), max_bytes=4 * CHUNK)

    assert raised.value.limit == 4 * CHUNK
    assert consumed <= 4 * CHUNK + 50_000
    await _assert_invisible(js, name)
    state = (await js.stream_info(STREAM)).state
    assert state.messages == 0


async def test_a_body_exactly_at_the_limit_is_accepted(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    data = _data(2 * CHUNK + 5)
    name = _name()
    await put_blob(js, name, _pieces(data, [CHUNK]), max_bytes=len(data))
    with pytest.raises(BlobTooLarge):
        await put_blob(js, _name(), _pieces(data, [CHUNK]), max_bytes=len(data) - 1)
    _, chunks = await open_blob(js, name)
    assert await _read(chunks) == data


async def test_a_digest_mismatch_commits_nothing_and_purges_the_chunks(
    stacks: StackFactory,
) -> None:
    _, js = await _js(stacks)
    data = _data(3 * CHUNK + 1)
    name = _name()
    wrong = hashlib.sha256(data + b"!").hexdigest()

    with pytest.raises(BlobDigestMismatch):
        await put_blob(js, name, _pieces(data, [CHUNK]), max_bytes=len(data), expected_sha256=wrong)
    await _assert_invisible(js, name)

    with pytest.raises(BlobDigestMismatch):
        await put_blob(js, name, _pieces(data, [CHUNK]), max_bytes=len(data), expected_sha256="zz")
    await _assert_invisible(js, name)

    # The expected digest is compared case-insensitively as hex.
    upper = hashlib.sha256(data).hexdigest().upper()
    info = await put_blob(
        js, name, _pieces(data, [CHUNK]), max_bytes=len(data), expected_sha256=upper
    )
    assert info.sha256 == upper.lower()


async def test_a_failing_or_cancelled_body_leaves_nothing(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    name = _name()

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield _data(CHUNK)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await put_blob(js, name, broken(), max_bytes=100 * MiB)
    await _assert_invisible(js, name)

    sent = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield _data(CHUNK)
        sent.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover - never reached

    async with bounded(30):
        upload = asyncio.create_task(put_blob(js, name, stalled(), max_bytes=100 * MiB))
        await sent.wait()
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
    await _assert_invisible(js, name)


async def test_replacing_a_blob_keeps_only_the_new_chunks(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    name = _name()
    old, new = _data(4 * CHUNK, 1), _data(2 * CHUNK + 9, 2)

    await put_blob(js, name, _pieces(old, [CHUNK]), max_bytes=len(old))
    before = await _chunk_subjects(js)
    await put_blob(js, name, _pieces(new, [CHUNK]), max_bytes=len(new))
    after = await _chunk_subjects(js)

    assert list(before.values()) == [4]
    assert list(after.values()) == [3]
    assert set(before).isdisjoint(after)
    info, chunks = await open_blob(js, name)
    assert info.size == len(new)
    assert await _read(chunks) == new
    obs = await js.object_store(naming.BLOBS_BUCKET)
    assert (await obs.get(name)).data == new

    # A failed replacement leaves the old object exactly as it was.
    with pytest.raises(BlobTooLarge):
        await put_blob(js, name, _pieces(old, [CHUNK]), max_bytes=CHUNK)
    assert await _chunk_subjects(js) == after
    _, chunks = await open_blob(js, name)
    assert await _read(chunks) == new


async def test_concurrent_writers_of_one_name_leave_one_object_and_no_orphans(
    stacks: StackFactory,
) -> None:
    _, js = await _js(stacks)
    name = _name()
    bodies = [_data(3 * CHUNK + i, i) for i in range(4)]

    results = await asyncio.gather(
        *(put_blob(js, name, _pieces(b, [CHUNK]), max_bytes=len(b)) for b in bodies)
    )

    info, chunks = await open_blob(js, name)
    assert info in results
    assert await _read(chunks) in bodies
    assert list((await _chunk_subjects(js)).values()) == [4]


async def test_missing_and_deleted_blobs_are_not_found(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    name = _name()
    with pytest.raises(BlobNotFound):
        await open_blob(js, name)
    with pytest.raises(BlobNotFound):
        await delete_blob(js, name)

    data = _data(2 * CHUNK)
    await put_blob(js, name, _pieces(data, [CHUNK]), max_bytes=len(data))
    await delete_blob(js, name)

    await _assert_invisible(js, name)
    with pytest.raises(BlobNotFound):
        await delete_blob(js, name)
    # The name can be used again after a delete.
    await put_blob(js, name, _pieces(b"again", [5]), max_bytes=5)
    _, chunks = await open_blob(js, name)
    assert await _read(chunks) == b"again"


async def test_stored_chunks_that_do_not_match_their_digest_fail_before_the_last_chunk(
    stacks: StackFactory,
) -> None:
    _, js = await _js(stacks)
    name = _name()
    data = _data(3 * CHUNK)
    await put_blob(js, name, _pieces(data, [CHUNK]), max_bytes=len(data))
    (subject,) = await _chunk_subjects(js)
    # Corrupt the object behind the API's back: replace its last chunk with other bytes.
    last = await js.get_last_msg(STREAM, subject)
    assert last.seq is not None
    await js.delete_msg(STREAM, last.seq)
    await js.publish(subject, b"\0" * CHUNK)

    _, chunks = await open_blob(js, name)
    received: list[bytes] = []
    with pytest.raises(BlobDigestMismatch):
        await _read(chunks, into=received)
    assert len(received) == 2

    # Chunks that vanished (purged behind our back) are reported the same way.
    await js.purge_stream(STREAM, subject=subject)
    _, chunks = await open_blob(js, name)
    with pytest.raises(BlobDigestMismatch):
        await _read(chunks)


async def test_blobs_round_trip_on_a_three_node_cluster(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3)
    js = (await stacks.connect(stack)).jetstream(timeout=10.0)
    obs = await js.object_store(naming.BLOBS_BUCKET)
    name = _name()
    old, new = _data(3 * CHUNK + 7, 1), _data(2 * CHUNK + 1, 2)

    async with bounded(60):
        await put_blob(js, name, _pieces(old, [50_000]), max_bytes=len(old))
        await put_blob(js, name, _pieces(new, [50_000]), max_bytes=len(new))
        info, chunks = await open_blob(js, name)
        assert info.sha256 == hashlib.sha256(new).hexdigest()
        assert await _read(chunks) == new
        assert (await obs.get(name)).data == new
        assert list((await _chunk_subjects(js)).values()) == [3]
        await delete_blob(js, name)
        await _assert_invisible(js, name)


async def test_names_outside_the_object_alphabet_are_refused(stacks: StackFactory) -> None:
    _, js = await _js(stacks)
    for bad in ("", "a b", "a*", "x" * 256, "a>b"):
        with pytest.raises(InvalidNameError):
            await open_blob(js, bad)


_MEMORY_PROBE = """
import asyncio, hashlib, json, random, re, resource, sys
from pathlib import Path

from unibus.controlplane.objectstore import open_blob, put_blob
from unibus.core.connect import NatsTarget, connect

SIZE = 64 * 1024 * 1024
PIECE = 64 * 1024


def ru_maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def hwm_kib():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))


def reset_hwm():
    # Linux: writing 5 to clear_refs resets this process's peak RSS to its current RSS.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def body(size, expected):
    rng = random.Random(11)
    for _ in range(size // PIECE):
        piece = rng.randbytes(PIECE)
        expected.update(piece)
        yield piece


async def main():
    spec = json.loads(sys.argv[1])
    target = NatsTarget(
        urls=tuple(spec["urls"]),
        ca_file=Path(spec["ca"]) if spec["ca"] else None,
        identity_file=Path(spec["identity"]),
    )
    nc = await connect(target, name="unibus-blob-memory")
    js = nc.jetstream(timeout=30.0)
    # Warm up every code path on a small blob first, so the baseline includes them.
    warm = hashlib.sha256()
    await put_blob(js, "warm.up", body(4 * PIECE, warm), max_bytes=SIZE)
    _, chunks = await open_blob(js, "warm.up")
    async for _ in chunks:
        pass
    report = {"reset": reset_hwm()}

    report["ru_before"], report["hwm_before"] = ru_maxrss_kib(), hwm_kib()
    sent = hashlib.sha256()
    info = await put_blob(js, "big.blob", body(SIZE, sent), max_bytes=SIZE)
    report["ru_put"], report["hwm_put"] = ru_maxrss_kib(), hwm_kib()

    reset_hwm()
    report["hwm_before_get"] = hwm_kib()
    info2, chunks = await open_blob(js, "big.blob")
    got = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        got.update(chunk)
        size += len(chunk)
    report["ru_get"], report["hwm_get"] = ru_maxrss_kib(), hwm_kib()
    await nc.close()
    report.update(
        size=size, info_size=info.size, info2_size=info2.size,
        sent=sent.hexdigest(), got=got.hexdigest(), stored=info.sha256,
    )
    print(json.dumps(report))


asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB and /proc are Linux's")
async def test_a_64_mib_blob_moves_through_in_bounded_memory(stacks: StackFactory) -> None:
    # ru_maxrss is a process-wide high-water mark: whatever earlier tests in this process
    # allocated would hide growth here, so the probe runs in a fresh interpreter.
    stack = await stacks.start(nodes=1)
    target = stack.target("internal")
    spec = {
        "urls": list(target.urls),
        "ca": str(target.ca_file) if target.ca_file else None,
        "identity": str(target.identity_file),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _MEMORY_PROBE,
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with bounded(240):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-4000:]
    report = json.loads(out.decode().strip().splitlines()[-1])

    assert report["size"] == report["info_size"] == report["info2_size"] == 64 * MiB
    assert report["sent"] == report["got"] == report["stored"]
    kib = 1024
    # ru_maxrss never falls: it is the process's peak, floored by what the parent had when
    # it spawned us. VmHWM after a clear_refs reset is the peak of this operation alone.
    assert (report["ru_put"] - report["ru_before"]) * kib < 24 * MiB, report
    assert (report["ru_get"] - report["ru_before"]) * kib < 24 * MiB, report
    if report["reset"]:
        assert (report["hwm_put"] - report["hwm_before"]) * kib < 24 * MiB, report
        assert (report["hwm_get"] - report["hwm_before_get"]) * kib < 24 * MiB, report
