"""The API's errors, and the one place library errors become HTTP statuses.

Every error reaches the caller as ``{"error": code, "message": text}``; no input yields a
500 or a traceback.
"""

from __future__ import annotations

from unibus.core.errors import (
    AssetMissingError,
    ConflictError,
    IdentityError,
    InvalidNameError,
    LastAdminError,
    NotFoundError,
    StoreUnavailableError,
    UnibusError,
    UnsupportedError,
)
from unibus.core.models import RecordError
from unibus.core.roomchain import ChainError

__all__ = [
    "HttpError",
    "bad_request",
    "conflict",
    "forbidden",
    "from_library",
    "not_found",
    "over_quota",
    "too_large",
    "unauthorized",
    "unavailable",
]


class HttpError(UnibusError):
    """A refusal the API sends as is: an HTTP ``status``, a stable ``code``, a message.

    Raised by handlers and by ``from_library``; the SDK's ``unibus.client.ApiError`` is
    what a caller receives for it.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> HttpError:
    return HttpError(400, code, message)


def unauthorized(message: str, code: str = "unauthorized") -> HttpError:
    return HttpError(401, code, message)


def forbidden(message: str) -> HttpError:
    return HttpError(403, "forbidden", message)


def not_found(message: str) -> HttpError:
    return HttpError(404, "not_found", message)


def conflict(message: str) -> HttpError:
    return HttpError(409, "conflict", message)


def too_large(message: str) -> HttpError:
    return HttpError(413, "too_large", message)


def over_quota(message: str) -> HttpError:
    return HttpError(429, "quota", message)


def unavailable(message: str) -> HttpError:
    return HttpError(503, "store_unavailable", message)


def from_library(exc: UnibusError) -> HttpError:
    """Translate a library error; unknown ones are a store problem, never a 500."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, NotFoundError):
        return not_found(str(exc))
    if isinstance(exc, LastAdminError):
        return HttpError(409, "last_admin", str(exc))
    if isinstance(exc, ConflictError):
        return conflict(str(exc))
    if isinstance(exc, ChainError):
        status = 403 if exc.reason == "not_allowed" else 400
        return HttpError(status, f"chain_{exc.reason}", str(exc))
    if isinstance(exc, InvalidNameError | IdentityError):
        return bad_request(str(exc))
    if isinstance(exc, UnsupportedError):
        # Not a 503: that tells the SDK to send it again, and no retry can help.
        return HttpError(501, "not_implemented", str(exc))
    if isinstance(exc, StoreUnavailableError | AssetMissingError | RecordError):
        return unavailable("the store is unavailable; retry, or check `unibus status`")
    return unavailable(str(exc))
