"""Signed requests for the control-plane HTTP API (SPEC §6).

Every request except ``/healthz`` and the OpenAPI document carries five headers: the
caller's user key, an integer unix timestamp, a random nonce, the SHA-256 of the body,
and an Ed25519 signature by that key over the canonical request::

    unibus-request-v1\\n
    METHOD\\n
    /raw/path/as/sent\\n
    canonical_query\\n
    timestamp\\n
    nonce\\n
    content_sha256

The signature covers everything that changes a request's meaning (method, path,
query, body) and the replay fields (timestamp, nonce). The key is not in the string:
it is bound because the signature verifies with it and with no other key. The CLI, the
SDK and the API server all use this one module.

**Path.** The raw, percent-encoded path exactly as it goes on the wire, without the
query: a printable-ASCII string starting with ``/`` that contains no ``?`` or ``#``. It
is signed byte for byte, not normalised, so the client must sign what its HTTP library
actually sends (with httpx: build the request, then sign
``request.url.raw_path.partition(b"?")``), and the server must verify the raw path it
received (Starlette: ``scope["raw_path"]``), not the decoded one.

**Query.** The raw query string (without ``?``) is parsed like the server parses it
(``parse_qsl``, ``&``-separated, blank values kept) but strictly: every field needs an
``=``, empty fields (``a=1&&b=2``) and percent-escapes that are not UTF-8 are refused.
Each name and value is re-encoded with ``quote(safe="-_.~")`` and the *pairs* are
sorted, so ``?a=1&b=2`` and ``?b=2&a=1`` sign the same, and so do ``?a=1&a=2`` and
``?a=2&a=1``: the API must never give meaning to the order of query parameters,
repeated ones included. Different values (``?a=1`` vs ``?a=2``), a missing or an extra
parameter always change the canonical string. ``+`` and ``%20`` are both a space,
as for the server.

**Domain separation.** The canonical string starts with ``unibus-request-v1`` and
contains newlines; a NATS server nonce (which the same user key signs on CONNECT) and a
JWT signing input never do, so a signature of one kind is never valid as another.

**What the server still has to do** after :func:`verify_request` returned:

1. check the body against :attr:`VerifiedRequest.content_sha256` — a buffered body with
   :func:`check_body`; a streamed body by hashing it while streaming and calling
   :func:`check_digest` at the end, before anything it wrote becomes visible;
2. claim :attr:`VerifiedRequest.nonce` with a create-only write into the nonce store
   (kept at least twice the skew window plus clock drift); a conflict is a replay.

Neither happens here: this module does no I/O. Error messages never contain the
signature or any other header value.

>>> from unibus.core.nkeys import KeyPair, Prefix
>>> alice = KeyPair.generate(Prefix.USER)
>>> body = b'{"name": "ops"}'
>>> headers = sign_request(alice, "POST", "/v1/rooms", "", body_digest(body), now=1_700_000_000)
>>> verified = verify_request("POST", "/v1/rooms", "", headers, now=1_700_000_030)
>>> verified.caller == alice.public_key, verified.timestamp
(True, 1700000000)
>>> check_body(verified, body)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

from unibus.core.errors import IdentityError, NkeyError
from unibus.core.nkeys import KeyPair, Prefix, canonical_user_key, verify

__all__ = [
    "DEFAULT_SKEW",
    "HEADER_CONTENT_SHA256",
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "REASONS",
    "SIGNED_HEADERS",
    "RequestSignatureError",
    "VerifiedRequest",
    "body_digest",
    "canonical_query",
    "canonical_request",
    "check_body",
    "check_digest",
    "sign_request",
    "verify_request",
]

HEADER_KEY: Final = "X-Unibus-Key"
"""The caller's user key, ``U...`` (a 64-hex legacy key is accepted and canonicalised)."""
HEADER_TIMESTAMP: Final = "X-Unibus-Timestamp"
"""Integer unix seconds, decimal, no sign and no leading zeros."""
HEADER_NONCE: Final = "X-Unibus-Nonce"
"""16 to 64 characters of ``[A-Za-z0-9_-]`` (safe as a KV key), random per request."""
HEADER_CONTENT_SHA256: Final = "X-Unibus-Content-SHA256"
"""Lowercase hex SHA-256 of the body (of ``b""`` when there is none)."""
HEADER_SIGNATURE: Final = "X-Unibus-Signature"
"""The 64-byte Ed25519 signature, base64url without padding (86 characters)."""

SIGNED_HEADERS: Final[tuple[str, ...]] = (
    HEADER_KEY,
    HEADER_TIMESTAMP,
    HEADER_NONCE,
    HEADER_CONTENT_SHA256,
    HEADER_SIGNATURE,
)
"""Every header of the scheme, in the order :func:`sign_request` returns them."""

DEFAULT_SKEW: Final = 60.0
"""Seconds a timestamp may differ from the verifier's clock, in either direction."""

REASONS: Final[tuple[str, ...]] = (
    "missing_header",
    "bad_key",
    "bad_timestamp",
    "skew",
    "bad_nonce",
    "bad_digest",
    "bad_signature",
    "bad_request",
)
"""Every :attr:`RequestSignatureError.reason`."""

_VERSION: Final = "unibus-request-v1"
_SIGNATURE_LEN: Final = 64
_SIGNATURE_CHARS: Final = 86  # base64 of 64 bytes, unpadded
_NONCE_BYTES: Final = 24  # 32 characters of base64url

# Explicit ASCII classes: \d and str.isdigit() accept other scripts' digits.
_METHOD_RE: Final = re.compile(r"[A-Za-z]{1,16}")
_PATH_RE: Final = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")  # printable, no ? or #
_QUERY_RE: Final = re.compile(r"[\x21-\x22\x24-\x7e]*")  # printable ASCII, no #
_TIMESTAMP_RE: Final = re.compile(r"0|[1-9][0-9]{0,10}")
_TIMESTAMP_LIMIT: Final = 10**11  # year 5138; keeps the header short and the int small
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_DIGEST_RE: Final = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{{_SIGNATURE_CHARS}}}")

_MESSAGES: Final[Mapping[str, str]] = {
    "missing_header": "request signature header missing",
    "bad_key": f"{HEADER_KEY} is not a user key (U... or 64 hex digits)",
    "bad_timestamp": f"{HEADER_TIMESTAMP} is not an integer unix time in seconds",
    "skew": f"{HEADER_TIMESTAMP} is too far from the server's clock",
    "bad_nonce": f"{HEADER_NONCE} must be 16 to 64 characters of [A-Za-z0-9_-]",
    "bad_digest": f"{HEADER_CONTENT_SHA256} is not the lowercase hex SHA-256 of the body",
    "bad_signature": "request signature does not verify",
    "bad_request": "method, path or query cannot be signed",
}
# Which reason a malformed or repeated header gets.
_HEADER_REASONS: Final[Mapping[str, str]] = {
    HEADER_KEY.lower(): "bad_key",
    HEADER_TIMESTAMP.lower(): "bad_timestamp",
    HEADER_NONCE.lower(): "bad_nonce",
    HEADER_CONTENT_SHA256.lower(): "bad_digest",
    HEADER_SIGNATURE.lower(): "bad_signature",
}


class RequestSignatureError(IdentityError):
    """A request signature is missing, malformed, stale or wrong, or cannot be made.

    :attr:`reason` is a stable code from :data:`REASONS`:

    * ``missing_header`` — one of :data:`SIGNED_HEADERS` is absent;
    * ``bad_key`` — the key header is not a user key (or a signer is not a user key);
    * ``bad_timestamp`` — not a decimal integer below ``10**11``;
    * ``skew`` — farther from the verifier's clock than the allowed skew;
    * ``bad_nonce`` — not 16 to 64 characters of ``[A-Za-z0-9_-]``;
    * ``bad_digest`` — not 64 lowercase hex digits, or the body does not match it;
    * ``bad_signature`` — not 86 characters of canonical base64url, or does not verify;
    * ``bad_request`` — the method, path or query has no canonical form (non-ASCII,
      control characters, a path not starting with ``/``, a query field without ``=``,
      ...), so no valid signature over it can exist.

    A header that appears twice (in any letter case) gets that header's ``bad_*``
    reason. The message never contains a header value.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES.get(reason, reason))
        self.reason = reason


@dataclass(frozen=True)
class VerifiedRequest:
    """What :func:`verify_request` established. The body and the nonce are still unchecked."""

    caller: str
    """The caller's canonical ``U...`` key."""
    nonce: str
    """To claim create-only in the nonce store; a conflict means replay."""
    timestamp: int
    content_sha256: str
    """The lowercase hex SHA-256 the body must have (:func:`check_body`)."""


def body_digest(body: bytes) -> str:
    """The lowercase hex SHA-256 of ``body``; use ``body_digest(b"")`` when there is none."""
    return hashlib.sha256(body).hexdigest()


def check_digest(verified: VerifiedRequest, content_sha256: str) -> None:
    """Compare the hex SHA-256 of the body actually received with the signed one.

    For streamed bodies: hash while streaming, call this at the end, and discard what
    was received if it raises.

    Raises:
        RequestSignatureError: ``bad_digest`` on mismatch.
    """
    if not (
        isinstance(content_sha256, str)
        and content_sha256.isascii()
        and hmac.compare_digest(content_sha256.lower(), verified.content_sha256)
    ):
        raise RequestSignatureError("bad_digest")


def check_body(verified: VerifiedRequest, body: bytes) -> None:
    """Check a buffered body against the signed digest.

    Raises:
        RequestSignatureError: ``bad_digest`` when the body was not the one signed.
    """
    check_digest(verified, body_digest(body))


def canonical_query(query: str) -> str:
    """The canonical form of a raw query string (without the ``?``).

    Pairs are decoded as the server decodes them, re-encoded with
    ``quote(safe="-_.~")`` and sorted by (name, value); see the module docstring.

    >>> canonical_query("b=2&a=x+y&a=%C3%A9")
    'a=%C3%A9&a=x%20y&b=2'

    Raises:
        RequestSignatureError: ``bad_request`` for a query with no canonical form.
    """
    if not isinstance(query, str) or not _QUERY_RE.fullmatch(query):
        raise RequestSignatureError("bad_request", "query contains characters that cannot be sent")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
    except ValueError:  # includes UnicodeDecodeError
        raise RequestSignatureError(
            "bad_request", "query has an empty field, a field without '=' or non-UTF-8 escapes"
        ) from None
    encoded = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _check_method(method: str) -> str:
    if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
        raise RequestSignatureError("bad_request", "method must be 1 to 16 ASCII letters")
    return method.upper()


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not _PATH_RE.fullmatch(path):
        raise RequestSignatureError(
            "bad_request",
            "path must be the raw path as sent: printable ASCII starting with '/', "
            "without '?' or '#'",
        )
    return path


def canonical_request(
    method: str, path: str, query: str, timestamp: int, nonce: str, content_sha256: str
) -> bytes:
    """The exact bytes the Ed25519 signature covers (see the module docstring).

    Every component is validated so that none can smuggle a newline into the string.

    Raises:
        RequestSignatureError: with the reason of the first malformed component.
    """
    canonical_method = _check_method(method)
    canonical_path = _check_path(path)
    query_text = canonical_query(query)
    if (
        not isinstance(timestamp, int)
        or isinstance(timestamp, bool)
        or not 0 <= timestamp < _TIMESTAMP_LIMIT
    ):
        raise RequestSignatureError("bad_timestamp")
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise RequestSignatureError("bad_nonce")
    if not isinstance(content_sha256, str) or not _DIGEST_RE.fullmatch(content_sha256):
        raise RequestSignatureError("bad_digest")
    text = "\n".join(
        (
            _VERSION,
            canonical_method,
            canonical_path,
            query_text,
            str(timestamp),
            nonce,
            content_sha256,
        )
    )
    return text.encode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def sign_request(
    signer: KeyPair,
    method: str,
    path: str,
    query: str,
    body_sha256: str,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The five headers that sign one request; add them to it unchanged.

    ``path`` and ``query`` must be exactly what goes on the wire (see the module
    docstring); ``body_sha256`` is :func:`body_digest` of the body (``body_digest(b"")``
    when there is none). ``now`` defaults to the wall clock and is rounded down to whole
    seconds; ``nonce`` defaults to 32 fresh random characters and must never be reused.

    Raises:
        RequestSignatureError: ``bad_key`` when ``signer`` is not a user key, or the
            reason of a malformed component.
    """
    if not isinstance(signer, KeyPair) or signer.prefix != Prefix.USER:
        raise RequestSignatureError("bad_key", "requests are signed with a user key (U...)")
    instant = time.time() if now is None else now
    if not math.isfinite(instant) or instant < 0:
        raise RequestSignatureError("bad_timestamp")
    timestamp = math.floor(instant)
    if nonce is None:
        nonce = secrets.token_urlsafe(_NONCE_BYTES)
    message = canonical_request(method, path, query, timestamp, nonce, body_sha256)
    return {
        HEADER_KEY: signer.public_key,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_CONTENT_SHA256: body_sha256,
        HEADER_SIGNATURE: _b64url(signer.sign(message)),
    }


def _scheme_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The scheme's headers by lower-case name; refuses one that appears twice.

    Iterates ``items()`` so that a multi-dict (Starlette ``Headers``) shows repeats.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            continue
        lower = name.lower()
        reason = _HEADER_REASONS.get(lower)
        if reason is None:
            continue
        if lower in found or not isinstance(value, str):
            raise RequestSignatureError(reason, f"{name} must appear once, as text")
        found[lower] = value
    for name in SIGNED_HEADERS:
        if name.lower() not in found:
            raise RequestSignatureError("missing_header", f"{name} header missing")
    return found


def _decode_signature(text: str) -> bytes:
    if not _SIGNATURE_RE.fullmatch(text):
        raise RequestSignatureError("bad_signature")
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        raise RequestSignatureError("bad_signature") from None
    # Refuse the non-canonical spellings (non-zero padding bits) of the same bytes.
    if len(raw) != _SIGNATURE_LEN or _b64url(raw) != text:
        raise RequestSignatureError("bad_signature")
    return raw


def verify_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    *,
    now: float,
    skew: float = DEFAULT_SKEW,
) -> VerifiedRequest:
    """Verify a request's signature headers against its method, raw path and raw query.

    Header names are matched case-insensitively; each must appear exactly once. The
    timestamp is accepted when ``now - skew <= timestamp <= now + skew``.

    This does **not** check the body or the nonce: the caller must then (1) compare
    the body with :attr:`VerifiedRequest.content_sha256` (:func:`check_body` for a
    buffered body; hash a streamed one while streaming and :func:`check_digest` at the
    end) and (2) claim :attr:`VerifiedRequest.nonce` create-only in the nonce store,
    refusing the request as a replay when it already exists.

    Raises:
        RequestSignatureError: on every failure, with a stable :attr:`reason`; no other
            exception escapes, whatever the input.
    """
    found = _scheme_headers(headers)

    try:
        caller = canonical_user_key(found[HEADER_KEY.lower()])
    except NkeyError:
        raise RequestSignatureError("bad_key") from None

    timestamp_text = found[HEADER_TIMESTAMP.lower()]
    if not _TIMESTAMP_RE.fullmatch(timestamp_text):
        raise RequestSignatureError("bad_timestamp")
    timestamp = int(timestamp_text)
    # Written so that a NaN clock or skew refuses.
    if not (now - skew <= timestamp <= now + skew):
        raise RequestSignatureError("skew")

    nonce = found[HEADER_NONCE.lower()]
    if not _NONCE_RE.fullmatch(nonce):
        raise RequestSignatureError("bad_nonce")
    content_sha256 = found[HEADER_CONTENT_SHA256.lower()]
    if not _DIGEST_RE.fullmatch(content_sha256):
        raise RequestSignatureError("bad_digest")
    signature = _decode_signature(found[HEADER_SIGNATURE.lower()])

    message = canonical_request(method, path, query, timestamp, nonce, content_sha256)
    try:
        valid = verify(caller, message, signature)
    except NkeyError:  # unreachable: caller is canonical; kept so nothing else escapes
        raise RequestSignatureError("bad_key") from None
    if not valid:
        raise RequestSignatureError("bad_signature")
    return VerifiedRequest(
        caller=caller, nonce=nonce, timestamp=timestamp, content_sha256=content_sha256
    )
