"""Every error the SDK raises on purpose, in one place.

Catch ``ClientError`` for anything the SDK refused or could not do; catch a leaf to act on
it. Errors that carry a ``reason`` give a stable code to branch on, never text to parse.

* UnibusError (unibus.core.errors)
  + ClientError
    - AccessDeniedError      the bus refuses this identity: revoked, or not on the allowlist
    - BusUnavailableError    no node reachable within the budget, or the connection closed
    - ApiError               the control plane answered with an error (``status``, ``code``)
      . ApiUnavailableError  no API node answered at all (``status`` 0, ``code`` "unreachable")
    - RoomError              the room's chain, keys or membership do not allow it
      . RollbackError        the server presents an older room state than this device saw
      . RoomAwaitingAdoptionError  a room migrated from the legacy store, not yet adopted
    - BlobError              a blob that does not open or does not match its announcement
    - HeadMemoryError        the device's room memory cannot be read
    - CryptoError            a room key that cannot be sealed or opened (``reason``)
    - EnvelopeError          a message that was refused (``reason``: envelope.REASONS)
  + IdentityError (unibus.core.errors): CryptoError and EnvelopeError are identity errors too

Transport errors of the libraries underneath (httpx, nats-py) do not cross the SDK's
surface: a call that cannot reach the bus raises ``BusUnavailableError`` or
``ApiUnavailableError``.

``AccessDenied`` and ``BusUnavailable`` are the earlier names of two of these; they stay
importable as aliases for one release.
"""

from __future__ import annotations

from unibus.core.errors import IdentityError, UnibusError

__all__ = [
    "AccessDenied",
    "AccessDeniedError",
    "ApiError",
    "ApiUnavailableError",
    "BlobError",
    "BusUnavailable",
    "BusUnavailableError",
    "ClientError",
    "CryptoError",
    "EnvelopeError",
    "HeadMemoryError",
    "RollbackError",
    "RoomAwaitingAdoptionError",
    "RoomError",
]


class ClientError(UnibusError):
    """Base of every error the SDK raises on purpose."""


class AccessDeniedError(ClientError):
    """The bus refuses this identity: its key is revoked or not on the allowlist."""


class BusUnavailableError(ClientError):
    """No node of the bus could be reached within the budget, or the connection was closed."""


class ApiError(ClientError):
    """The API answered with an error: ``status`` and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message


class ApiUnavailableError(ApiError):
    """No API node answered within the retry budget: nothing was processed."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class RoomError(ClientError):
    """The room's chain, keys or membership do not allow what was asked."""


class RoomAwaitingAdoptionError(RoomError):
    """The room was migrated from the legacy store and has no signed chain yet: nothing in
    it can be trusted or sent until its owner adopts it. The message says who and how."""

    def __init__(self, room_id: str, owner: str) -> None:
        super().__init__(
            f"room {room_id} was migrated from the legacy store and awaits adoption by its "
            f"owner {owner}: the owner runs `unibus room adopt {room_id} --identity "
            "OWNER_SEED` (an administrator may, once that owner is revoked)"
        )
        self.room_id = room_id
        self.owner = owner


class RollbackError(RoomError):
    """The server presents an older chain than this device verified or than the room's
    signed traffic shows: a rollback (or a server still lagging). Nothing is published
    under the older epoch, whose key a removed member may hold."""


class BlobError(ClientError):
    """A blob that does not open, or does not match its announcement."""


class HeadMemoryError(ClientError):
    """The device's room memory cannot be read; starting without it would forget it."""


class CryptoError(ClientError, IdentityError):
    """A room key that cannot be sealed or opened; ``reason`` is a stable code.

    Reasons: ``bad_room_key`` (not 32 bytes), ``bad_recipient`` (not a usable user key),
    ``bad_identity`` (not an Ed25519 key pair), ``malformed`` (a sealed box of the wrong
    size), ``open_failed`` (not sealed to this identity, or tampered with).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EnvelopeError(ClientError, IdentityError):
    """A message that was refused; ``reason`` is one of ``envelope.REASONS``.

    ``unknown_epoch`` means "no key for that epoch and key id": refetch keys once and retry.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


AccessDenied = AccessDeniedError
"""Earlier name of :class:`AccessDeniedError`, kept for one release."""
BusUnavailable = BusUnavailableError
"""Earlier name of :class:`BusUnavailableError`, kept for one release."""
