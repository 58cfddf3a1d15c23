"""The unibus client SDK: one identity, the bus, the signed API, and its rooms.

>>> # async with await Client.open(identity=KeyPair.from_seed(...), nats_urls=[...],
>>> #                              api_urls=[...], ca_file=Path("ca.pem")) as client:
>>> #     room = await client.create_room(members=[bob_key])
>>> #     await room.publish(b"hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from unibus.client.api import ApiClient
from unibus.client.blobs import (
    BlobOpener,
    BlobRef,
    Progress,
    new_blob_key,
    open_blob,
    seal_file,
    sealed_size,
)
from unibus.client.connection import BusConnection
from unibus.client.errors import BlobError
from unibus.client.heads import HeadMemory
from unibus.client.profile import read_stack_info
from unibus.client.room import Room, create_room
from unibus.core.nkeys import KeyPair, read_seed_file

__all__ = ["BlobError", "BlobRef", "Client", "heads_file_for"]


def heads_file_for(identity_file: Path) -> Path:
    """Where a device keeps its room memory: beside the identity it belongs to."""
    return identity_file.with_name(f"{identity_file.name}.rooms.json")


class Client:
    def __init__(
        self,
        identity: KeyPair,
        api: ApiClient,
        bus: BusConnection,
        *,
        nats_urls: Sequence[str] = (),
        api_urls: Sequence[str] = (),
        ca_file: Path | None = None,
        heads: HeadMemory | None = None,
    ) -> None:
        self.identity = identity
        self.heads = heads if heads is not None else HeadMemory()
        """What this device verified of each room's chain (``unibus.client.heads``)."""
        self.api = api
        self.bus = bus
        self.nats_urls = tuple(nats_urls)
        self.api_urls = tuple(api_urls)
        self.ca_file = ca_file
        self._rooms: dict[str, Room] = {}

    @classmethod
    async def open(
        cls,
        *,
        identity: KeyPair,
        nats_urls: Sequence[str],
        api_urls: Sequence[str],
        ca_file: Path | None,
        name: str = "unibus-client",
        heads_file: Path | None = None,
    ) -> Client:
        """Connect as ``identity``.

        ``heads_file`` keeps what this device verified of each room's chain across
        processes, so a server cannot roll a room back on it (``unibus.client.heads``);
        without it the memory lasts as long as this object.
        """
        heads = HeadMemory(heads_file)
        bus = await BusConnection.connect(nats_urls, identity, ca_file=ca_file, name=name)
        api = ApiClient(api_urls, identity, ca_file=ca_file)
        return cls(
            identity,
            api,
            bus,
            nats_urls=nats_urls,
            api_urls=api_urls,
            ca_file=ca_file,
            heads=heads,
        )

    @classmethod
    async def from_stack(cls, stack_dir: Path, identity_file: Path) -> Client:
        """Connect to a local stack (its stack.json) as the identity in ``identity_file``."""
        info = read_stack_info(stack_dir)
        return await cls.open(
            identity=read_seed_file(identity_file),
            nats_urls=info.nats_urls,
            api_urls=info.api_urls,
            ca_file=Path(info.ca_file),
            heads_file=heads_file_for(identity_file),
        )

    async def close(self) -> None:
        await self.bus.close()
        await self.api.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def key(self) -> str:
        return self.identity.public_key

    async def create_room(self, members: Iterable[str] = ()) -> Room:
        room = await create_room(self.identity, self.api, self.bus, members, heads=self.heads)
        self._rooms[room.room_id] = room
        return room

    async def room(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = Room(room_id, self.identity, self.api, self.bus, heads=self.heads)
            self._rooms[room_id] = room
        await room.refresh()
        return room

    async def rooms(self) -> list[str]:
        return await self.api.my_rooms()

    # -- blobs ------------------------------------------------------------------------------------
    async def put_blob(
        self,
        room: Room,
        source: bytes | Path,
        *,
        name: str = "",
        progress: Progress | None = None,
    ) -> BlobRef:
        """Encrypt with a fresh key, upload, and announce key + hash in an encrypted message.

        A file is encrypted into a private temporary file first (the request's signature
        covers the body's hash), then streamed: memory stays flat whatever its size.
        """
        key = new_blob_key()
        loop = asyncio.get_running_loop()

        def report(phase: str, done: int, total: int) -> None:
            if progress is not None:  # called on the event loop, whatever thread reports
                loop.call_soon_threadsafe(progress, phase, done, total)

        with contextlib.ExitStack() as cleanup:
            plain: BinaryIO
            if isinstance(source, Path):
                plain = cleanup.enter_context(source.open("rb"))
                total = os.fstat(plain.fileno()).st_size
            else:
                plain, total = io.BytesIO(source), len(source)
            spool = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="unibus-blob-"))
            sealed_path = Path(spool) / "sealed"
            with sealed_path.open("xb") as sink:
                # In a worker thread: encrypting a large file must not stall the bus.
                sealed = await asyncio.to_thread(
                    seal_file, plain, sink, key, total=total, progress=report
                )
            view = await self.api.upload_blob_file(
                room.room_id,
                sealed_path,
                sha256=sealed.sha256,
                progress=lambda done, size: report("upload", done, size),
            )
        if view.sha256 != sealed.sha256 or view.size != sealed.sealed_size:
            raise BlobError("the server stored different bytes than were sent")
        ref = BlobRef(
            blob_id=view.blob_id, key=key, sha256=sealed.sha256, size=sealed.size, name=name
        )
        await room.publish(ref.encode())
        return ref

    async def get_blob(self, room: Room, ref: BlobRef) -> bytes:
        """Download, check and decrypt a blob into memory (see :meth:`save_blob` for files)."""
        return open_blob(await self.api.download_blob(room.room_id, ref.blob_id), ref)

    async def save_blob(
        self, room: Room, ref: BlobRef, dest: Path, *, progress: Progress | None = None
    ) -> int:
        """Stream a blob into ``dest``, decrypting as it arrives; returns its size.

        The plaintext goes to a private temporary file beside ``dest``, which replaces
        ``dest`` only once the whole blob opened and matched its announced hash and size:
        a failed or forged download never leaves a file behind.
        """
        opener = BlobOpener(ref)
        received, expected = 0, sealed_size(ref.size)
        fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent or Path())
        try:
            with os.fdopen(fd, "wb") as out:
                async for piece in self.api.stream_blob(room.room_id, ref.blob_id):
                    out.write(opener.feed(piece))
                    received += len(piece)
                    if progress is not None:
                        progress("download", received, expected)
                out.write(opener.finish())
            os.replace(partial, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        return ref.size
