"""The unibus client SDK: one identity, the bus, the signed API, and its rooms.

>>> # async with await Client.open(identity=KeyPair.from_seed(...), nats_urls=[...],
>>> #                              api_urls=[...], ca_file=Path("ca.pem")) as client:
>>> #     room = await client.create_room(members=[bob_key])
>>> #     await room.publish(b"hello")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.utils

from unibus.client.api import ApiClient
from unibus.client.connection import BusConnection
from unibus.client.room import Room, RoomError, create_room
from unibus.core.nkeys import KeyPair, read_seed_file
from unibus.stack.layout import read_stack_info

BLOB_KIND = "unibus.blob.v1"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class BlobRef:
    """What travels inside an encrypted room message: enough to fetch and open a blob."""

    blob_id: str
    key: bytes
    sha256: str
    """Of the encrypted bytes as stored; checked before decrypting."""
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
        try:
            value = json.loads(data)
            if not isinstance(value, dict) or value.get("kind") != BLOB_KIND:
                return None
            return cls(
                blob_id=str(value["blob_id"]),
                key=bytes.fromhex(value["key"]),
                sha256=str(value["sha256"]),
                size=int(value["size"]),
                name=str(value.get("name", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def encrypt_blob(data: bytes, key: bytes) -> bytes:
    """secretstream (XChaCha20-Poly1305) in 64 KiB chunks: truncation and reordering fail."""
    state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
    header = nacl.bindings.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    out = [header]
    chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
    for index, chunk in enumerate(chunks):
        tag = (
            nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if index == len(chunks) - 1
            else nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        out.append(
            nacl.bindings.crypto_secretstream_xchacha20poly1305_push(state, chunk, None, tag)
        )
    return b"".join(out)


def decrypt_blob(data: bytes, key: bytes) -> bytes:
    header_len = nacl.bindings.crypto_secretstream_xchacha20poly1305_HEADERBYTES
    chunk_len = _CHUNK + nacl.bindings.crypto_secretstream_xchacha20poly1305_ABYTES
    state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
    try:
        nacl.bindings.crypto_secretstream_xchacha20poly1305_init_pull(state, data[:header_len], key)
        out = []
        body = data[header_len:]
        final = False
        for start in range(0, len(body), chunk_len):
            chunk, tag = nacl.bindings.crypto_secretstream_xchacha20poly1305_pull(
                state, body[start : start + chunk_len], None
            )
            out.append(chunk)
            final = tag == nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_FINAL
    except Exception as exc:  # noqa: BLE001 - any libsodium failure means "not authentic"
        raise RoomError(f"the blob does not decrypt ({type(exc).__name__})") from None
    if not final:
        raise RoomError("the blob is truncated")
    return b"".join(out)


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
    ) -> None:
        self.identity = identity
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
    ) -> Client:
        bus = await BusConnection.connect(nats_urls, identity, ca_file=ca_file, name=name)
        api = ApiClient(api_urls, identity, ca_file=ca_file)
        return cls(identity, api, bus, nats_urls=nats_urls, api_urls=api_urls, ca_file=ca_file)

    @classmethod
    async def from_stack(cls, stack_dir: Path, identity_file: Path) -> Client:
        """Connect to a local stack (its stack.json) as the identity in ``identity_file``."""
        info = read_stack_info(stack_dir)
        return await cls.open(
            identity=read_seed_file(identity_file),
            nats_urls=info.nats_urls,
            api_urls=info.api_urls,
            ca_file=Path(info.ca_file),
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
        room = await create_room(self.identity, self.api, self.bus, members)
        self._rooms[room.room_id] = room
        return room

    async def room(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = Room(room_id, self.identity, self.api, self.bus)
            self._rooms[room_id] = room
        await room.refresh()
        return room

    async def rooms(self) -> list[str]:
        return await self.api.my_rooms()

    # -- blobs ------------------------------------------------------------------------------------
    async def put_blob(self, room: Room, data: bytes, *, name: str = "") -> BlobRef:
        """Encrypt with a fresh key, upload, and announce key + hash in an encrypted message."""
        key = nacl.utils.random(nacl.bindings.crypto_secretstream_xchacha20poly1305_KEYBYTES)
        sealed = encrypt_blob(data, key)
        view = await self.api.upload_blob(room.room_id, sealed)
        if view.sha256 != hashlib.sha256(sealed).hexdigest():
            raise RoomError("the server stored different bytes than were sent")
        ref = BlobRef(blob_id=view.blob_id, key=key, sha256=view.sha256, size=len(data), name=name)
        await room.publish(ref.encode())
        return ref

    async def get_blob(self, room: Room, ref: BlobRef) -> bytes:
        sealed = await self.api.download_blob(room.room_id, ref.blob_id)
        if hashlib.sha256(sealed).hexdigest() != ref.sha256:
            raise RoomError("the blob's hash does not match its announcement; refusing it")
        data = decrypt_blob(sealed, ref.key)
        if len(data) != ref.size:
            raise RoomError("the blob's size does not match its announcement")
        return data
