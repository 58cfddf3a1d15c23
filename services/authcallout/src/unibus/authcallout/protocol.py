"""The nats-server auth-callout wire protocol, as pure functions (no I/O, no clock).

One request, start to finish (notes/authcallout.md §2-§4)::

    payload, headers --open_request--> AuthRequest --verify_client--> U... key
    decide (store, rooms) --> user_jwt --> allow_response  |  deny_response --> reply bytes

Two ways to fail, kept apart because the service must treat them differently:

* :class:`Dropped`: the request cannot be answered. A response needs the fresh
  ``user_nkey`` and server id from a verified request, sealed to a verified server key;
  without them nothing useful can be sent. The server times out and denies.
* :class:`Denial`: the request is genuine but the client is refused; the server gets a
  signed error response naming the reason code.

Callers pass ``now`` explicitly so tests and replays are deterministic.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from unibus.authcallout.permissions import Permissions
from unibus.authcallout.reasons import Reason
from unibus.core import jwt, limits, naming
from unibus.core.errors import JWTError, NkeyError, XKeyError
from unibus.core.nkeys import KeyPair, Prefix, decode_public, encode_public, verify
from unibus.core.xkeys import CurveKeyPair

__all__ = [
    "MAX_REQUEST_BYTES",
    "AuthRequest",
    "Denial",
    "Dropped",
    "allow_response",
    "deny_response",
    "open_request",
    "open_request_with",
    "user_jwt",
    "verify_client",
]

MAX_REQUEST_BYTES: Final = limits.MAX_CALLOUT_REQUEST_BYTES
"""Larger payloads are dropped unread: a client can inflate ``connect_opts`` at will."""

XKEY_HEADER: Final = "Nats-Server-Xkey"
REQUEST_AUDIENCE: Final = "nats-authorization-request"
REQUEST_TYPE: Final = "authorization_request"
RESPONSE_TYPE: Final = "authorization_response"
CLAIMS_VERSION: Final = 2

_EXPIRY_LEEWAY: Final = 1.0  # seconds of clock skew between server and callout
_MAX_EXP: Final = 2**53  # a larger exp cannot be a real deadline, nor an exact float
_MAX_CID: Final = 2**64 - 1  # the server's cid is a uint64
_SIGNATURE_BYTES: Final = 64
_MAX_SIG_CHARS: Final = 128  # 64 bytes are 86-88 characters of base64
_STD_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]*")
_URL_B64_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_URL_TO_STD: Final = str.maketrans("-_", "+/")
_SUPPORTED_KIND: Final = "Client"
_SUPPORTED_TYPE: Final = "nats"
_KEY_HINT_CHARS: Final = 8


class Dropped(Exception):
    """The request cannot be answered: no reply is sent, the server times out and denies.

    ``detail`` is for a debug log; it never contains request values.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Denial(Exception):
    """The client is refused with a signed error response carrying ``reason``.

    ``detail`` is for the service log; it never contains secrets, and shows at most the
    first 8 characters of a presented key.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AuthRequest:
    """The verified facts of one authorization request.

    ``server_*`` and ``user_nkey`` are proven (the JWT is signed by the server's key and
    sealed with the server's curve key); ``client_*`` and ``nonce`` are what the client
    and server reported, and ``client_key`` is not yet proven: see :func:`verify_client`.
    """

    server_id: str
    server_name: str
    server_xkey: str | None
    user_nkey: str
    client_id: int
    client_kind: str
    client_type: str
    client_key: str | None
    client_sig: str | None
    nonce: str | None
    expires: float


# -- opening a request ----------------------------------------------------------------------


def _malformed(detail: str) -> Dropped:
    return Dropped(Reason.DROPPED_MALFORMED, detail)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(parent: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _malformed(f"{key} is not an object")
    return value


def _required(parent: Mapping[str, Any], key: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise _malformed(f"{key} is missing or not a string")
    return value


def _optional(parent: Mapping[str, Any], key: str) -> str | None:
    """An optional string; Go's ``omitempty`` makes an absent and an empty string the same."""
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _malformed(f"{key} is not a string")
    return value or None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Header lookup ignoring case (header names are case-insensitive on the wire)."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next(
            (v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted), None
        )
    if value is not None and not isinstance(value, str):
        raise _malformed(f"{name} header is not text")
    return value


def _payload_bytes(payload: object) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise _malformed("payload is not bytes")
    if len(payload) > MAX_REQUEST_BYTES:
        raise _malformed(f"payload larger than {MAX_REQUEST_BYTES} bytes")
    return bytes(payload)


def _expiry(claims: Mapping[str, Any], now: float) -> int:
    exp = claims.get("exp")
    if not _is_int(exp) or not 0 < exp < _MAX_EXP:
        raise _malformed("exp is missing or not a plausible unix time")
    if now > exp + _EXPIRY_LEEWAY:
        raise Dropped(Reason.DROPPED_EXPIRED, "the server has already given up on this request")
    return int(exp)


def _user_nkey(nats: Mapping[str, Any]) -> str:
    user_nkey = _required(nats, "user_nkey")
    try:
        decode_public(user_nkey, Prefix.USER)
    except NkeyError:
        raise _malformed("user_nkey is not a user key") from None
    return user_nkey


def _client_id(client_info: Mapping[str, Any]) -> int:
    cid = client_info.get("id")
    if not _is_int(cid) or not 0 <= cid <= _MAX_CID:
        raise _malformed("client_info.id is not a client id")
    return int(cid)


def open_request(
    payload: bytes, headers: Mapping[str, str] | None, xkey: CurveKeyPair, *, now: float
) -> AuthRequest:
    """One request opened with one curve key (see :func:`open_request_with`)."""
    request, _ = open_request_with(payload, headers, (xkey,), now=now)
    return request


def open_request_with(
    payload: bytes,
    headers: Mapping[str, str] | None,
    xkeys: Sequence[CurveKeyPair],
    *,
    now: float,
) -> tuple[AuthRequest, int]:
    """Decrypt, verify and type-check one ``$SYS.REQ.USER.AUTH`` request.

    Our servers always encrypt (``auth_callout.xkey`` is mandatory in the rendered
    config), so a plaintext request did not come from one of them. The signed
    ``server_id.xkey`` must equal the header key the box opened with: the JWT signer and
    the box sealer are then provably the same server, and the response goes back to a key
    that server vouched for.

    ``xkeys`` are the callout's curve keys (more than one while they are rotated): the
    request opens with the one its server was configured with, whose index is returned
    with it, so the answer is signed by the issuer of the same generation.

    Raises:
        Dropped: on every failure (nothing else escapes), with ``DROPPED_EXPIRED`` once
            ``now`` is more than a second past the request's ``exp`` and
            ``DROPPED_MALFORMED`` otherwise.
    """
    data = _payload_bytes(payload)
    server_xkey = _header(headers, XKEY_HEADER)
    if not server_xkey:
        raise _malformed(f"no {XKEY_HEADER} header: plaintext requests are not accepted")
    token, opened_with = _open_box(data, server_xkey, xkeys)
    try:
        claims = jwt.decode(token, issuer_prefix=Prefix.SERVER, max_size=MAX_REQUEST_BYTES)
    except JWTError as exc:
        raise _malformed(f"request JWT refused: {exc}") from None
    if claims.get("aud") != REQUEST_AUDIENCE:
        raise _malformed("aud is not an authorization request")
    nats = _object(claims, "nats")
    if nats.get("type") != REQUEST_TYPE:
        raise _malformed("nats.type is not authorization_request")
    server = _object(nats, "server_id")
    server_id = _required(server, "id")
    if server_id != claims.get("iss"):
        raise _malformed("server_id.id differs from the signer")
    if _optional(server, "xkey") != server_xkey:
        raise _malformed("server_id.xkey differs from the header key")
    server_name = _required(server, "name")
    expires = _expiry(claims, now)
    user_nkey = _user_nkey(nats)
    client_info = _object(nats, "client_info")
    connect_opts = _object(nats, "connect_opts", required=False)
    request = AuthRequest(
        server_id=server_id,
        server_name=server_name,
        server_xkey=server_xkey,
        user_nkey=user_nkey,
        client_id=_client_id(client_info),
        client_kind=_optional(client_info, "kind") or "",
        client_type=_optional(client_info, "type") or "",
        client_key=_optional(connect_opts, "nkey"),
        client_sig=_optional(connect_opts, "sig"),
        nonce=_optional(client_info, "nonce"),
        expires=float(expires),
    )
    return request, opened_with


def _open_box(data: bytes, server_xkey: str, xkeys: Sequence[CurveKeyPair]) -> tuple[bytes, int]:
    for index, xkey in enumerate(xkeys):
        try:
            return xkey.open(data, server_xkey), index
        except XKeyError:
            continue
    raise _malformed("the request box does not open with the header key")


# -- proving the client's key -----------------------------------------------------------------


def _key_hint(key: str) -> str:
    return f"{key[:_KEY_HINT_CHARS]}..."


def _signature(text: str) -> bytes:
    """Decode a nonce signature sent in the std or URL base64 alphabet, padded or not.

    nats-py sends std padded, nats.go raw URL; the server itself tries raw URL then std.
    Mixed alphabets and wrong padding are refused rather than guessed at.
    """
    if len(text) > _MAX_SIG_CHARS:
        raise Denial(Reason.BAD_REQUEST, "nonce signature is too long")
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding and (padding > 2 or len(text) % 4):
        raise Denial(Reason.BAD_REQUEST, "nonce signature has bad base64 padding")
    if len(body) % 4 == 1:
        raise Denial(Reason.BAD_REQUEST, "nonce signature is not base64")
    if _URL_B64_RE.fullmatch(body):
        body = body.translate(_URL_TO_STD)
    elif not _STD_B64_RE.fullmatch(body):
        raise Denial(Reason.BAD_REQUEST, "nonce signature is not base64")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Denial(Reason.BAD_REQUEST, "nonce signature is not base64") from None
    if len(raw) != _SIGNATURE_BYTES:
        raise Denial(Reason.BAD_REQUEST, "nonce signature is not 64 bytes")
    return raw


def verify_client(request: AuthRequest) -> str:
    """Prove the client holds the private key of the ``U...`` key it presented.

    The server does not check signatures of nkeys missing from its config, so without
    this check anyone could connect as anyone by naming their public key. The signature
    is Ed25519 over the ASCII bytes of the nonce string the server sent in INFO.

    Only plain NATS client connections are admitted: leaf nodes, websocket and MQTT
    clients are not part of the product, and the server does not enforce connection
    types for callout users itself.

    Returns:
        The canonical ``U...`` key, proven.

    Raises:
        Denial: on every failure (nothing else escapes).
    """
    if request.client_kind != _SUPPORTED_KIND or request.client_type != _SUPPORTED_TYPE:
        raise Denial(
            Reason.UNSUPPORTED_CLIENT,
            f"connection kind {request.client_kind[:16]!r} type {request.client_type[:16]!r}",
        )
    key = request.client_key
    if not key:
        raise Denial(Reason.NO_CREDENTIALS, "the client presented no nkey")
    try:
        _, raw_key = decode_public(key, Prefix.USER)
    except NkeyError:
        hint = _key_hint(key)
        raise Denial(Reason.BAD_REQUEST, f"presented nkey {hint} is not a user key") from None
    canonical = encode_public(Prefix.USER, raw_key)
    nonce, sig = request.nonce, request.client_sig
    if not nonce or not sig:
        raise Denial(Reason.BAD_REQUEST, f"nkey {_key_hint(key)} sent without nonce signature")
    if not nonce.isascii():
        raise Denial(Reason.BAD_REQUEST, "the nonce is not ASCII")
    signature = _signature(sig)
    if not verify(canonical, nonce.encode("ascii"), signature):
        raise Denial(Reason.BAD_SIGNATURE, f"nonce signature invalid for {_key_hint(key)}")
    return canonical


# -- building responses -----------------------------------------------------------------------


def _permission(allow: tuple[str, ...]) -> dict[str, list[str]]:
    # NATS reads an absent or empty allow list as "no restriction": refuse everything
    # explicitly instead, or a user with no rooms could publish anywhere.
    return {"allow": list(allow)} if allow else {"deny": [">"]}


def user_jwt(
    issuer: KeyPair,
    request: AuthRequest,
    *,
    user_key: str,
    permissions: Permissions,
    ttl: float,
    now: float,
    connection_name: str | None = None,
) -> str:
    """The user JWT that places the connection in the bus account with ``permissions``.

    ``sub`` is the server's fresh ``user_nkey`` for this attempt (the server checks it);
    ``name`` is ``connection_name`` (default: the user's own key), which must begin with
    the user's key; the server shows it as the connection's user, so CONNZ and connect
    events can find a user's connections for KICK. The server
    disconnects at ``exp``. ``subs``/``data``/``payload`` are the Go defaults (-1); the
    server does not enforce them for callout users in config mode.

    Raises:
        ValueError: ``issuer`` is not an account key, or ``ttl`` is under one second or
            infinite.
        NkeyError: ``user_key`` is not a ``U...`` key.
        ValueError: ``connection_name`` does not begin with ``user_key``.
    """
    if issuer.prefix != Prefix.ACCOUNT:
        raise ValueError("the callout issuer must be an account key (A...)")
    if not (ttl >= 1 and math.isfinite(ttl)):
        raise ValueError("ttl must be a finite number of seconds, at least one")
    decode_public(user_key, Prefix.USER)
    name = user_key if connection_name is None else connection_name
    if not name.startswith(user_key):
        raise ValueError("a connection name must begin with the user's key")
    claims = {
        "sub": request.user_nkey,
        "aud": naming.MEMBER_ACCOUNT,
        "name": name,
        "exp": int(now + ttl),
        "nats": {
            "pub": _permission(permissions.pub_allow),
            "sub": _permission(permissions.sub_allow),
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": CLAIMS_VERSION,
        },
    }
    return jwt.encode(claims, issuer, now=now)


def _response(
    issuer: KeyPair, request: AuthRequest, xkey: CurveKeyPair, body: dict[str, str], now: float
) -> bytes:
    if issuer.prefix != Prefix.ACCOUNT:
        raise ValueError("the callout issuer must be an account key (A...)")
    claims = {
        "sub": request.user_nkey,
        "aud": request.server_id,
        "nats": {**body, "type": RESPONSE_TYPE, "version": CLAIMS_VERSION},
    }
    token = jwt.encode(claims, issuer, now=now).encode("ascii")
    if request.server_xkey is None:
        # Only a hand-built request lacks the key; the server accepts plaintext too.
        return token
    return xkey.seal(token, request.server_xkey)


def allow_response(
    issuer: KeyPair, request: AuthRequest, xkey: CurveKeyPair, user_jwt: str, *, now: float
) -> bytes:
    """The reply admitting the connection with ``user_jwt``, sealed to the server's key.

    Raises:
        ValueError: ``issuer`` is not an account key.
    """
    return _response(issuer, request, xkey, {"jwt": user_jwt}, now)


def deny_response(
    issuer: KeyPair, request: AuthRequest, xkey: CurveKeyPair, reason: Reason, *, now: float
) -> bytes:
    """The reply refusing the connection, sealed to the server's key.

    The error text is the reason code alone: the server logs it at WRN, and the detail
    belongs in our own log where it cannot leak to other operators' log pipelines.

    Raises:
        ValueError: ``reason`` is ``allowed`` or a dropped reason, or ``issuer`` is not an
            account key.
    """
    if reason.admits or not reason.answered:
        raise ValueError(f"{reason} is not a denial")
    return _response(issuer, request, xkey, {"error": reason.value}, now)
