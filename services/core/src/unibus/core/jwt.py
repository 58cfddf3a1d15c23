"""NATS JWT v2: the ``ed25519-nkey`` tokens of nats-io/jwt, as nats-server reads and writes them.

A token is ``b64url(header) "." b64url(payload) "." b64url(signature)`` without
padding; the signature is Ed25519, by the nkey named in ``iss``, over the ASCII bytes
of ``"<b64 header>.<b64 payload>"`` (jwt/v2 ``claims.go``, ``decoder.go``).

:func:`decode` verifies structure and signature only; expiry is a separate
:func:`check_times`, and everything about the claims' meaning belongs to the caller.

>>> from unibus.core.nkeys import KeyPair, Prefix
>>> issuer = KeyPair.generate(Prefix.ACCOUNT)
>>> user_claims = {"sub": "UABC", "nats": {"type": "user", "version": 2}}
>>> token = encode(user_claims, issuer, now=1_700_000_000)
>>> claims = decode(token, issuer_prefix=Prefix.ACCOUNT)
>>> claims["iss"] == issuer.public_key, claims["iat"]
(True, 1700000000)
>>> check_times(claims, now=1_700_000_000)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import msgspec

from unibus.core.errors import JWTError, NkeyError
from unibus.core.nkeys import KeyPair, Prefix, decode_public, verify

__all__ = ["DEFAULT_MAX_SIZE", "HEADER", "check_times", "decode", "encode"]

HEADER: Final[Mapping[str, str]] = MappingProxyType({"typ": "JWT", "alg": "ed25519-nkey"})
"""The header of every token :func:`encode` writes."""

DEFAULT_MAX_SIZE: Final = 256 * 1024
"""Tokens longer than this are refused before any decoding."""

# jwt/v2 header.go accepts the v1 name too (case-insensitively) when reading.
_ACCEPTED_ALGORITHMS: Final = frozenset({"ed25519-nkey", "ed25519"})
# ClaimsData in jwt/v2 claims.go, in Go field order; these are what jti hashes.
_STANDARD_CLAIMS: Final = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")
_STRING_CLAIMS: Final = ("aud", "name", "sub")
_INTEGER_CLAIMS: Final = ("exp", "nbf")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
# Go's encoding/json escapes these for HTML safety; jti hashes Go's bytes.
_GO_JSON_ESCAPES: Final = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


_GO_ESCAPED_RE: Final = re.compile(b"|".join(re.escape(raw) for raw, _ in _GO_JSON_ESCAPES))
_STD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> bytes:
    """Unpadded base64url, as bytes (one pass of the encoder, one of the translation)."""
    return binascii.b2a_base64(data, newline=False).translate(_STD_TO_URL).rstrip(b"=")


def _b64decode(segment: str, what: str) -> bytes:
    """Strict base64url: only the URL alphabet, optional correct-length padding."""
    body = segment.rstrip("=")
    padding = len(segment) - len(body)
    if padding and (padding > 2 or len(segment) % 4):
        raise JWTError(f"{what} is not base64url")
    if len(body) % 4 == 1 or not _B64URL_RE.fullmatch(body):
        raise JWTError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error:
        raise JWTError(f"{what} is not base64url") from None


def _go_json(value: Any) -> bytes:
    """Compact JSON with Go's HTML escapes, so jti matches what jwt/v2 computes."""
    try:
        data = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        # ValueError covers UnicodeEncodeError from lone surrogates.
        raise JWTError("claims are not JSON-serializable") from None
    if _GO_ESCAPED_RE.search(data) is None:  # one pass instead of five, mostly a miss
        return data
    for raw, escaped in _GO_JSON_ESCAPES:
        data = data.replace(raw, escaped)
    return data


_HEADER_B64: Final = _b64url(_go_json(dict(HEADER)))


def _compute_jti(claims: Mapping[str, Any]) -> str:
    """jwt/v2 ``ClaimsData.hash``: SHA-512/256 of the standard claims, base32 unpadded.

    Go marshals ClaimsData with ``jti`` cleared and ``omitempty`` on every field, so
    empty strings and zero integers drop out.
    """
    data = {
        key: claims[key]
        for key in _STANDARD_CLAIMS
        if key != "jti" and claims.get(key) not in (None, "", 0)
    }
    digest = hashlib.new("sha512_256", _go_json(data)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    for key in _STRING_CLAIMS:
        if claims.get(key) is not None and not isinstance(claims[key], str):
            raise JWTError(f"claim {key!r} must be a string")
    for key in _INTEGER_CLAIMS:
        if claims.get(key) is not None and not _is_int(claims[key]):
            raise JWTError(f"claim {key!r} must be an integer")


def encode(claims: Mapping[str, Any], signer: KeyPair, *, now: float | None = None) -> str:
    """Sign ``claims`` as a v2 JWT.

    Sets ``iss`` to the signer's public key, ``iat`` to ``now`` (default: the clock)
    and ``jti`` to the jwt/v2 hash of the standard claims, overriding any given
    values. The standard claims come first, in Go's order.

    Raises:
        JWTError: ``aud``/``name``/``sub`` not strings, ``exp``/``nbf`` not integers,
            or a value JSON cannot represent.
    """
    body = {key: value for key, value in claims.items() if key not in ("iss", "iat", "jti")}
    body["iss"] = signer.public_key
    body["iat"] = int(time.time() if now is None else now)
    _check_claim_types(body)
    body["jti"] = _compute_jti(body)
    ordered: dict[str, Any] = {key: body[key] for key in _STANDARD_CLAIMS if key in body}
    ordered.update((key, value) for key, value in body.items() if key not in ordered)
    # Bytes throughout: a user JWT with hundreds of rooms is ~0.3 MB, each copy counts.
    signing_input = b"%s.%s" % (_HEADER_B64, _b64url(_go_json(ordered)))
    signature = signer.sign(signing_input)
    return (b"%s.%s" % (signing_input, _b64url(signature))).decode("ascii")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # ValueError: invalid UTF-8; RecursionError: absurdly deep nesting.
        raise JWTError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise JWTError(f"{what} is not a JSON object")
    return value


def _check_header(header: Mapping[str, Any]) -> None:
    typ, alg = header.get("typ"), header.get("alg")
    if not isinstance(typ, str) or not typ.isascii() or typ.upper() != "JWT":
        raise JWTError("unsupported token type")
    if not isinstance(alg, str) or not alg.isascii() or alg.lower() not in _ACCEPTED_ALGORITHMS:
        raise JWTError("unsupported algorithm")


def _check_issuer(claims: Mapping[str, Any], expected: Prefix | None) -> str:
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise JWTError("issuer missing")
    try:
        prefix, _ = decode_public(issuer)
    except NkeyError:
        raise JWTError("issuer is not a valid nkey") from None
    if prefix == Prefix.CURVE:
        raise JWTError("issuer is not a signing key")
    if expected is not None and prefix != expected:
        raise JWTError(f"issuer has the wrong key type (expected {expected.letter})")
    return issuer


def _token_text(token: object, max_size: int) -> str:
    if isinstance(token, bytes | bytearray):
        if len(token) > max_size:
            raise JWTError("token too large")
        try:
            return bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise JWTError("token is not ASCII") from None
    if isinstance(token, str):
        if len(token) > max_size:
            raise JWTError("token too large")
        if not token.isascii():
            raise JWTError("token is not ASCII")
        return token
    raise JWTError("token must be str or bytes")


def decode(
    token: str | bytes,
    *,
    issuer_prefix: Prefix | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> dict[str, Any]:
    """Verify a v2 JWT and return its claims.

    Checks, in order: size (before any parsing), three base64url segments (padded or
    not), a JSON-object header with ``typ`` JWT and ``alg`` ``ed25519-nkey`` (or the
    older ``ed25519``), a JSON-object payload whose ``iss`` is a valid signing nkey of
    ``issuer_prefix`` (if given), and the Ed25519 signature over header and payload.
    Times are not checked here; see :func:`check_times`.

    Raises:
        JWTError: on every failure, with a short stable reason; no other exception
            escapes, whatever the input.
    """
    text = _token_text(token, max_size)
    segments = text.split(".")
    if len(segments) != 3:
        raise JWTError("expected 3 segments")
    header_b64, payload_b64, signature_b64 = segments
    _check_header(_json_object(_b64decode(header_b64, "header"), "header"))
    claims = _json_object(_b64decode(payload_b64, "payload"), "payload")
    issuer = _check_issuer(claims, issuer_prefix)
    signature = _b64decode(signature_b64, "signature")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    if not verify(issuer, signing_input, signature):
        raise JWTError("signature verification failed")
    return claims


def check_times(claims: Mapping[str, Any], *, now: float, leeway: float = 1.0) -> None:
    """Refuse claims whose ``exp`` has passed or whose ``nbf`` lies in the future.

    Both are optional; ``leeway`` seconds of clock skew are tolerated either way.
    Unlike Go's ``omitempty`` reading, an explicit ``exp`` of 0 counts as expired.

    Raises:
        JWTError: expired, not yet valid, or ``exp``/``nbf`` not an integer.
    """
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if exp is not None:
        if not _is_int(exp):
            raise JWTError("exp is not an integer")
        # Compare without adding to exp: int + float overflows for huge ints.
        if exp < now - leeway:
            raise JWTError("token expired")
    if nbf is not None:
        if not _is_int(nbf):
            raise JWTError("nbf is not an integer")
        if nbf > now + leeway:
            raise JWTError("token not yet valid")
