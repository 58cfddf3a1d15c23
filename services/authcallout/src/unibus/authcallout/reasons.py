"""The stable reason codes of every authorization decision (SPEC §5).

Each decision is logged and counted under one of these codes; dashboards and alerts key
on them, so a value never changes meaning once released. The client never sees them (it
only learns "Authorization Violation"); the server logs the code of an answered denial
at WRN, because the code is the whole error text the callout sends.

Two families:

* answered: ``allowed`` and the denials; the server gets a signed response.
* dropped (``dropped_*``): the request cannot be answered at all (not decryptable, not
  signed by a server, already expired); no reply is sent and the server times out,
  which denies as well.
"""

from __future__ import annotations

import enum

__all__ = ["Reason"]


class Reason(enum.StrEnum):
    ALLOWED = "allowed"
    UNKNOWN_KEY = "unknown_key"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad_signature"
    BAD_REQUEST = "bad_request"
    STORE_UNAVAILABLE = "store_unavailable"
    NO_CREDENTIALS = "no_credentials"
    UNSUPPORTED_CLIENT = "unsupported_client"
    # No answer is possible (or useful): the server times out and denies.
    DROPPED_MALFORMED = "dropped_malformed"
    DROPPED_EXPIRED = "dropped_expired"

    @property
    def answered(self) -> bool:
        """Whether a decision with this reason gets a response at all."""
        return self not in (Reason.DROPPED_MALFORMED, Reason.DROPPED_EXPIRED)

    @property
    def admits(self) -> bool:
        return self is Reason.ALLOWED
