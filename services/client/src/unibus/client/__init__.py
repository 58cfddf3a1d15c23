"""The unibus SDK: end-to-end encrypted rooms, history and blobs over a unibus deployment.

>>> # from unibus.client import Client
>>> # async with await Client.from_stack(Path(".unibus"), Path("alice.seed")) as client:
>>> #     room = await client.create_room([bob_key])
>>> #     await room.publish(b"hello")

What is importable from here is the SDK's public surface; the modules under it
(``envelope``, ``crypto``, ``blobs``, ``changes``, ...) are its building blocks, stable
only as far as this package re-exports them. Errors: ``unibus.client.errors``.
"""

from __future__ import annotations

from unibus.client.api import ApiClient
from unibus.client.blobs import BlobRef
from unibus.client.errors import (
    AccessDeniedError,
    ApiError,
    ApiUnavailableError,
    BlobError,
    BusUnavailableError,
    ClientError,
    CryptoError,
    EnvelopeError,
    HeadMemoryError,
    RollbackError,
    RoomAwaitingAdoptionError,
    RoomError,
)
from unibus.client.profile import StackInfo, read_stack_info
from unibus.client.room import Message, Room, Undeliverable
from unibus.client.sdk import Client, heads_file_for

__all__ = [
    "AccessDeniedError",
    "ApiClient",
    "ApiError",
    "ApiUnavailableError",
    "BlobError",
    "BlobRef",
    "BusUnavailableError",
    "Client",
    "ClientError",
    "CryptoError",
    "EnvelopeError",
    "HeadMemoryError",
    "Message",
    "RollbackError",
    "Room",
    "RoomAwaitingAdoptionError",
    "RoomError",
    "StackInfo",
    "Undeliverable",
    "heads_file_for",
    "read_stack_info",
]
