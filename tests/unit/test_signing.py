"""Signed control-plane requests: canonical form, signing, verification, refusals, fuzz.

The known-answer test builds the canonical string by hand and signs it with PyNaCl
directly, so it does not trust the module's own canonicalisation.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import random
import string
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import nacl.signing
import pytest

from unibus.core import signing
from unibus.core.errors import IdentityError
from unibus.core.nkeys import KeyPair, Prefix, user_key_ed25519
from unibus.core.signing import (
    DEFAULT_SKEW,
    HEADER_CONTENT_SHA256,
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    REASONS,
    SIGNED_HEADERS,
    RequestSignatureError,
    VerifiedRequest,
    body_digest,
    canonical_query,
    canonical_request,
    check_body,
    check_digest,
    sign_request,
    verify_request,
)

NOW = 1_700_000_000
ALICE = KeyPair(Prefix.USER, bytes(range(32)))
BOB = KeyPair(Prefix.USER, bytes(range(32, 64)))
NONCE = "n0nce-Value_0123456789"
BODY = b'{"handle": "alice"}'
BODY_SHA = hashlib.sha256(BODY).hexdigest()
EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PATH = "/v1/rooms/r1/members"
QUERY = "limit=10&after=U%2Bx&tag=a&tag=b"


def _sign(
    method: str = "POST",
    path: str = PATH,
    query: str = QUERY,
    digest: str = BODY_SHA,
    *,
    signer: KeyPair = ALICE,
    now: float = NOW,
    nonce: str = NONCE,
) -> dict[str, str]:
    return sign_request(signer, method, path, query, digest, now=now, nonce=nonce)


def _verify(
    headers: Mapping[str, str],
    method: str = "POST",
    path: str = PATH,
    query: str = QUERY,
    *,
    now: float = NOW,
    skew: float = DEFAULT_SKEW,
) -> VerifiedRequest:
    return verify_request(method, path, query, headers, now=now, skew=skew)


def _reason(
    headers: Mapping[str, str],
    method: str = "POST",
    path: str = PATH,
    query: str = QUERY,
    *,
    now: float = NOW,
    skew: float = DEFAULT_SKEW,
) -> str:
    with pytest.raises(RequestSignatureError) as caught:
        _verify(headers, method, path, query, now=now, skew=skew)
    return caught.value.reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


# -- round trip ---------------------------------------------------------------------------


def test_round_trip_returns_the_caller_nonce_timestamp_and_digest() -> None:
    verified = _verify(_sign())
    assert verified == VerifiedRequest(
        caller=ALICE.public_key, nonce=NONCE, timestamp=NOW, content_sha256=BODY_SHA
    )
    check_body(verified, BODY)


def test_round_trip_without_query_and_body() -> None:
    headers = sign_request(ALICE, "GET", "/v1/rooms", "", body_digest(b""), now=NOW)
    verified = verify_request("GET", "/v1/rooms", "", headers, now=NOW)
    assert verified.content_sha256 == EMPTY_SHA
    check_body(verified, b"")


def test_sign_returns_exactly_the_scheme_headers_in_order() -> None:
    headers = _sign()
    assert tuple(headers) == SIGNED_HEADERS
    assert headers[HEADER_KEY] == ALICE.public_key
    assert headers[HEADER_TIMESTAMP] == str(NOW)
    assert headers[HEADER_NONCE] == NONCE
    assert headers[HEADER_CONTENT_SHA256] == BODY_SHA
    assert len(headers[HEADER_SIGNATURE]) == 86
    assert "=" not in headers[HEADER_SIGNATURE]


def test_header_names_are_the_documented_ones() -> None:
    assert SIGNED_HEADERS == (
        "X-Unibus-Key",
        "X-Unibus-Timestamp",
        "X-Unibus-Nonce",
        "X-Unibus-Content-SHA256",
        "X-Unibus-Signature",
    )
    assert DEFAULT_SKEW == 60.0


def test_known_answer_signature_over_a_hand_built_canonical_string() -> None:
    expected = (
        "unibus-request-v1\n"
        "POST\n"
        "/v1/rooms/r1/members\n"
        "after=U%2Bx&limit=10&tag=a&tag=b\n"
        "1700000000\n"
        f"{NONCE}\n"
        f"{BODY_SHA}"
    ).encode("ascii")
    assert canonical_request("post", PATH, QUERY, NOW, NONCE, BODY_SHA) == expected
    signature = nacl.signing.SigningKey(bytes(range(32))).sign(expected).signature
    assert _sign()[HEADER_SIGNATURE] == _b64url(signature)


def test_default_nonce_is_fresh_random_and_kv_safe() -> None:
    nonces = {
        sign_request(ALICE, "GET", "/v1/rooms", "", EMPTY_SHA, now=NOW)[HEADER_NONCE]
        for _ in range(50)
    }
    assert len(nonces) == 50
    for nonce in nonces:
        assert len(nonce) == 32
        assert set(nonce) <= set(string.ascii_letters + string.digits + "-_")


def test_default_clock_is_the_wall_clock() -> None:
    headers = sign_request(ALICE, "GET", "/v1/rooms", "", EMPTY_SHA)
    verify_request("GET", "/v1/rooms", "", headers, now=time.time())


def test_fractional_now_is_rounded_down_to_whole_seconds() -> None:
    headers = _sign(now=NOW + 0.999)
    assert headers[HEADER_TIMESTAMP] == str(NOW)
    assert _verify(headers).timestamp == NOW


def test_body_digest_is_lowercase_hex_sha256() -> None:
    assert body_digest(b"") == EMPTY_SHA
    assert body_digest(BODY) == BODY_SHA


def test_module_doctests_pass() -> None:
    result = doctest.testmod(signing)
    assert result.failed == 0
    assert result.attempted > 0


def test_error_is_an_identity_error_with_a_stable_reason() -> None:
    error = RequestSignatureError("skew")
    assert isinstance(error, IdentityError)
    assert error.reason == "skew"
    assert set(REASONS) == {
        "missing_header",
        "bad_key",
        "bad_timestamp",
        "skew",
        "bad_nonce",
        "bad_digest",
        "bad_signature",
        "bad_request",
    }


# -- tampering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        pytest.param("PUT", PATH, QUERY, id="method"),
        pytest.param("DELETE", PATH, QUERY, id="method-delete"),
        pytest.param("POST", "/v1/rooms/r2/members", QUERY, id="path"),
        pytest.param("POST", "/v1/rooms/r1/members/", QUERY, id="path-trailing-slash"),
        pytest.param("POST", "/v1/rooms/%72%31/members", QUERY, id="path-percent-encoded"),
        pytest.param("POST", PATH, "limit=11&after=U%2Bx&tag=a&tag=b", id="query-limit"),
        pytest.param("POST", PATH, "limit=10&after=U+x&tag=a&tag=b", id="query-after"),
        pytest.param("POST", PATH, "limit=10&after=U%2Bx&tag=a&tag=c", id="query-tag"),
        pytest.param("POST", PATH, "limit=10&after=U%2Bx&tag=a", id="query-drop-repeat"),
        pytest.param("POST", PATH, "limit=10&after=U%2Bx&tag=a&tag=b&x=", id="query-add"),
        pytest.param("POST", PATH, "limit=10&after=U%2Bx&tag=a&tags=b", id="query-rename"),
        pytest.param("POST", PATH, "", id="query-removed"),
    ],
)
def test_tampered_request_line_fails_with_bad_signature(method: str, path: str, query: str) -> None:
    assert _reason(_sign(), method, path, query) == "bad_signature"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param(HEADER_CONTENT_SHA256, hashlib.sha256(b"other").hexdigest(), id="digest"),
        pytest.param(HEADER_TIMESTAMP, str(NOW + 1), id="timestamp"),
        pytest.param(HEADER_NONCE, NONCE + "x", id="nonce"),
        pytest.param(HEADER_KEY, BOB.public_key, id="key-swap"),
    ],
)
def test_tampered_header_fails_with_bad_signature(header: str, value: str) -> None:
    headers = _sign()
    headers[header] = value
    assert _reason(headers) == "bad_signature"


def test_signature_of_another_request_does_not_transfer() -> None:
    headers = _sign()
    headers[HEADER_SIGNATURE] = _sign(path="/v1/users")[HEADER_SIGNATURE]
    assert _reason(headers) == "bad_signature"


def test_every_flipped_signature_byte_fails() -> None:
    raw = base64.urlsafe_b64decode(_sign()[HEADER_SIGNATURE] + "==")
    for index in range(len(raw)):
        headers = _sign()
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        headers[HEADER_SIGNATURE] = _b64url(bytes(flipped))
        assert _reason(headers) == "bad_signature"


def test_another_valid_key_signing_its_own_request_verifies_as_that_key() -> None:
    assert _verify(_sign(signer=BOB)).caller == BOB.public_key


def test_body_other_than_the_signed_one_fails_check_body() -> None:
    verified = _verify(_sign())
    with pytest.raises(RequestSignatureError) as caught:
        check_body(verified, BODY + b" ")
    assert caught.value.reason == "bad_digest"


def test_check_digest_for_streamed_bodies() -> None:
    verified = _verify(_sign())
    hasher = hashlib.sha256()
    for chunk in (BODY[:5], BODY[5:]):
        hasher.update(chunk)
    check_digest(verified, hasher.hexdigest())
    for wrong in (EMPTY_SHA, "", "zz", "é" * 64):
        with pytest.raises(RequestSignatureError) as caught:
            check_digest(verified, wrong)
        assert caught.value.reason == "bad_digest"


# -- skew -----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-DEFAULT_SKEW, -1.0, 0.0, 0.5, 1.0, DEFAULT_SKEW])
def test_timestamp_within_skew_is_accepted_boundary_included(offset: float) -> None:
    assert _verify(_sign(), now=NOW + offset).timestamp == NOW


@pytest.mark.parametrize("offset", [-DEFAULT_SKEW - 0.001, -3600.0, DEFAULT_SKEW + 0.001, 86400.0])
def test_timestamp_beyond_skew_is_refused_in_both_directions(offset: float) -> None:
    assert _reason(_sign(), now=NOW + offset) == "skew"


def test_custom_skew_is_honoured() -> None:
    headers = _sign()
    _verify(headers, now=NOW + 5, skew=5)
    assert _reason(headers, now=NOW + 6, skew=5) == "skew"
    assert _reason(headers, now=NOW - 6, skew=5) == "skew"


@pytest.mark.parametrize(
    ("now", "skew"),
    [(float("nan"), DEFAULT_SKEW), (NOW, float("nan")), (NOW, -1.0), (float("inf"), DEFAULT_SKEW)],
)
def test_nonsense_clock_or_skew_refuses(now: float, skew: float) -> None:
    assert _reason(_sign(), now=now, skew=skew) == "skew"


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", SIGNED_HEADERS)
def test_missing_header_is_refused(header: str) -> None:
    headers = _sign()
    del headers[header]
    assert _reason(headers) == "missing_header"


def test_no_headers_at_all_is_missing_header() -> None:
    assert _reason({}) == "missing_header"


@pytest.mark.parametrize("case", [str.lower, str.upper, str.swapcase])
def test_header_names_are_case_insensitive(case: Any) -> None:
    headers = {case(name): value for name, value in _sign().items()}
    assert _verify(headers).caller == ALICE.public_key


def test_unrelated_headers_are_ignored() -> None:
    headers = {"content-type": "application/json", "x-unibus-other": "1", **_sign()}
    _verify(headers)


class _MultiHeaders(Mapping[str, str]):
    """A multi-dict like Starlette's Headers: items() shows repeated names."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def __getitem__(self, key: str) -> str:
        for name, value in self._pairs:
            if name == key.lower():
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return list(self._pairs)


def test_multidict_headers_verify() -> None:
    pairs = [(name.lower(), value) for name, value in _sign().items()]
    _verify(_MultiHeaders(pairs))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (HEADER_KEY, "bad_key"),
        (HEADER_TIMESTAMP, "bad_timestamp"),
        (HEADER_NONCE, "bad_nonce"),
        (HEADER_CONTENT_SHA256, "bad_digest"),
        (HEADER_SIGNATURE, "bad_signature"),
    ],
)
def test_repeated_header_is_refused_with_its_reason(header: str, reason: str) -> None:
    signed = _sign()
    other = _sign(signer=BOB, nonce="another-nonce-value")
    pairs = [(name.lower(), value) for name, value in signed.items()]
    # The repeat comes second, so a first-value-wins lookup would have verified.
    pairs.append((header.lower(), other[header]))
    assert _reason(_MultiHeaders(pairs)) == reason
    # A plain dict can repeat a name only by letter case.
    both = {**signed, header.upper(): other[header]}
    assert _reason(both) == reason


def test_non_string_header_value_is_refused() -> None:
    headers: dict[str, Any] = _sign()
    headers[HEADER_NONCE] = NONCE.encode()
    assert _reason(headers) == "bad_nonce"


# -- malformed values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1.5e9",
        "1700000000.5",
        "-1700000000",
        "+1700000000",
        " 1700000000",
        "1700000000\n",
        "01700000000",
        "1_700_000_000",
        "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
        "0x6553f100",
        "100000000000",  # 10**11: beyond the supported range
        "9" * 5000,  # huge: must not reach int()
    ],
)
def test_malformed_timestamp_is_bad_timestamp(value: str) -> None:
    headers = _sign()
    headers[HEADER_TIMESTAMP] = value
    assert _reason(headers) == "bad_timestamp"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 15,
        "x" * 65,
        "nonce-with.dot-0123",
        "nonce/with/slash/0",
        "nonce with spaces 0",
        "nonce=padding======",
        "nonce-\u00e9-0123456789",
        "nonce-0123456789ab\n",
    ],
)
def test_malformed_nonce_is_bad_nonce(value: str) -> None:
    headers = _sign()
    headers[HEADER_NONCE] = value
    assert _reason(headers) == "bad_nonce"


@pytest.mark.parametrize("nonce", ["a" * 16, "Z" * 64, "-_" * 8])
def test_nonce_length_boundaries_are_accepted(nonce: str) -> None:
    assert _verify(_sign(nonce=nonce)).nonce == nonce


@pytest.mark.parametrize(
    "value",
    [
        "",
        BODY_SHA[:-1],
        BODY_SHA + "0",
        BODY_SHA.upper(),
        "g" * 64,
        base64.b64encode(hashlib.sha256(BODY).digest()).decode(),
        f"sha256={BODY_SHA}",
    ],
)
def test_malformed_digest_is_bad_digest(value: str) -> None:
    headers = _sign()
    headers[HEADER_CONTENT_SHA256] = value
    assert _reason(headers) == "bad_digest"


def _noncanonical_signature(canonical: str) -> str:
    # The last of 86 characters carries 2 signature bits and 4 zero padding bits.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(canonical[-1])
    return canonical[:-1] + alphabet[last | 0x01]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: s[:-1], id="85-chars"),
        pytest.param(lambda s: s + "A", id="87-chars"),
        pytest.param(lambda s: s + "==", id="padded"),
        pytest.param(lambda s: s.replace("-", "+").replace("_", "/") + "==", id="std-alphabet"),
        pytest.param(lambda s: "!" + s[1:], id="bad-char"),
        pytest.param(lambda s: _b64url(b"\x00" * 63), id="63-bytes"),
        pytest.param(lambda s: _b64url(b"\x00" * 65), id="65-bytes"),
        pytest.param(lambda s: _b64url(b"\x00" * 64), id="zero-signature"),
        pytest.param(_noncanonical_signature, id="non-canonical-padding-bits"),
        pytest.param(lambda s: base64.b16encode(b"\x01" * 64).decode(), id="hex"),
    ],
)
def test_malformed_signature_is_bad_signature(mutate: Any) -> None:
    headers = _sign()
    headers[HEADER_SIGNATURE] = mutate(headers[HEADER_SIGNATURE])
    assert _reason(headers) == "bad_signature"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "U" * 56,
        ALICE.public_key[:-1],
        ALICE.public_key.lower(),
        KeyPair(Prefix.ACCOUNT, bytes(range(32))).public_key,
        KeyPair(Prefix.OPERATOR, bytes(range(32))).public_key,
        ALICE.seed,
        "00" * 31,
        "zz" * 32,
    ],
)
def test_malformed_or_non_user_key_is_bad_key(value: str) -> None:
    headers = _sign()
    headers[HEADER_KEY] = value
    assert _reason(headers) == "bad_key"


def test_bad_key_message_does_not_echo_a_seed() -> None:
    headers = _sign()
    headers[HEADER_KEY] = ALICE.seed
    with pytest.raises(RequestSignatureError) as caught:
        _verify(headers)
    assert ALICE.seed not in str(caught.value)


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_legacy_hex_key_is_accepted_and_canonicalised(case: Any) -> None:
    headers = _sign()
    headers[HEADER_KEY] = case(user_key_ed25519(ALICE.public_key).hex())
    assert _verify(headers).caller == ALICE.public_key


def test_legacy_hex_key_of_someone_else_fails_the_signature() -> None:
    headers = _sign()
    headers[HEADER_KEY] = user_key_ed25519(BOB.public_key).hex()
    assert _reason(headers) == "bad_signature"


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("", PATH, QUERY),
        ("PO ST", PATH, QUERY),
        ("POST\n", PATH, QUERY),
        ("PÖST", PATH, QUERY),
        ("POST", "", QUERY),
        ("POST", "v1/rooms", QUERY),
        ("POST", "/v1/rooms\n", QUERY),
        ("POST", "/v1/ro oms", QUERY),
        ("POST", "/v1/rooms?x=1", QUERY),
        ("POST", "/v1/rooms#frag", QUERY),
        ("POST", "/v1/r\u00e9oms", QUERY),
        ("POST", PATH, "a"),
        ("POST", PATH, "a=1&&b=2"),
        ("POST", PATH, "&a=1"),
        ("POST", PATH, "a=%FF"),
        ("POST", PATH, "a=1\nb=2"),
        ("POST", PATH, "a=\u00e9"),
        ("POST", PATH, "a=1#frag"),
    ],
)
def test_request_line_without_canonical_form_is_bad_request(
    method: str, path: str, query: str
) -> None:
    assert _reason(_sign(), method, path, query) == "bad_request"
    with pytest.raises(RequestSignatureError) as caught:
        _sign(method, path, query)
    assert caught.value.reason == "bad_request"


# -- signing refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [Prefix.ACCOUNT, Prefix.OPERATOR, Prefix.SERVER])
def test_sign_refuses_non_user_keys(prefix: Prefix) -> None:
    with pytest.raises(RequestSignatureError) as caught:
        _sign(signer=KeyPair.generate(prefix))
    assert caught.value.reason == "bad_key"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"nonce": "short"}, "bad_nonce"),
        ({"nonce": "x" * 65}, "bad_nonce"),
        ({"digest": BODY_SHA.upper()}, "bad_digest"),
        ({"digest": ""}, "bad_digest"),
        ({"now": -1.0}, "bad_timestamp"),
        ({"now": float("nan")}, "bad_timestamp"),
        ({"now": float("inf")}, "bad_timestamp"),
        ({"now": 1e11}, "bad_timestamp"),
    ],
)
def test_sign_refuses_malformed_components(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(RequestSignatureError) as caught:
        _sign(**kwargs)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "timestamp", [-1, 10**11, 10**5000, True], ids=["neg", "1e11", "huge", "bool"]
)
def test_canonical_request_refuses_out_of_range_timestamps(timestamp: int) -> None:
    with pytest.raises(RequestSignatureError) as caught:
        canonical_request("GET", "/", "", timestamp, NONCE, EMPTY_SHA)
    assert caught.value.reason == "bad_timestamp"


# -- canonical query ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("a=1&b=2", "b=2&a=1"),
        ("a=1&a=2", "a=2&a=1"),
        ("a=x+y", "a=x%20y"),
        ("a=%41", "a=A"),
        ("a=%7e", "a=~"),
        ("a=%c3%a9", "a=%C3%A9"),
        ("q=%2F", "q=/"),
        ("k%20ey=v", "k+ey=v"),
        ("", ""),
    ],
)
def test_equivalent_queries_sign_the_same(left: str, right: str) -> None:
    assert canonical_query(left) == canonical_query(right)
    _verify(_sign(query=left), query=right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("a=1", "a=2"),
        ("a=1", "a=1&a=1"),
        ("a=1", "a=1&b="),
        ("a=", ""),
        ("a=1&b=2", "a=1%26b%3D2"),
        ("a=1;b=2", "a=1&b=2"),
        ("a=%2B", "a=+"),
        ("a=1", "A=1"),
        ("ab=1", "a=b1"),
    ],
)
def test_different_queries_sign_differently(left: str, right: str) -> None:
    assert canonical_query(left) != canonical_query(right)
    assert _reason(_sign(query=left), query=right) == "bad_signature"


def test_canonical_query_encodes_everything_but_unreserved_and_sorts_pairs() -> None:
    assert canonical_query("b=2&a=x+y&a=%C3%A9") == "a=%C3%A9&a=x%20y&b=2"
    assert canonical_query("z=-_.~&y=!*'()") == "y=%21%2A%27%28%29&z=-_.~"
    assert canonical_query("k==v") == "k=%3Dv"
    assert canonical_query("=v") == "=v"


def test_canonical_query_is_idempotent() -> None:
    rng = random.Random(4242)
    alphabet = string.ascii_letters + string.digits + "-_.~!*'()/:@,;+ %\u00e9\u4e2d"
    for _ in range(300):
        pairs = [
            (
                "".join(rng.choices(alphabet, k=rng.randint(0, 6))),
                "".join(rng.choices(alphabet, k=rng.randint(0, 6))),
            )
            for _ in range(rng.randint(0, 5))
        ]
        query = urlencode(pairs)
        once = canonical_query(query)
        assert canonical_query(once) == once
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        assert canonical_query(urlencode(shuffled)) == once


# -- error hygiene and fuzz -----------------------------------------------------------------


def test_error_messages_never_echo_the_signature() -> None:
    headers = _sign()
    signature = headers[HEADER_SIGNATURE]
    failures: list[RequestSignatureError] = []
    for now in (NOW, NOW + 3600):
        for method in ("POST", "PUT", "P T"):
            try:
                verify_request(method, PATH, QUERY, headers, now=now)
            except RequestSignatureError as exc:
                failures.append(exc)
    duplicated = {**headers, HEADER_SIGNATURE.lower(): signature}
    with pytest.raises(RequestSignatureError) as caught:
        _verify(duplicated)
    failures.append(caught.value)
    assert len(failures) == 6
    for failure in failures:
        assert signature not in str(failure)
        assert signature not in repr(failure)
        assert failure.reason in REASONS


_FUZZ_ATOMS: list[Any] = [
    "",
    " ",
    "\n",
    "\x00",
    "\r\n",
    "=",
    "==",
    "%",
    "%zz",
    "é",
    "\ud800",  # lone surrogate
    "9" * 5000,
    "x" * 10_000,
    "-1",
    "1e400",
    "nan",
    "inf",
    None,
    0,
    -1,
    10**100,
    1.5,
    float("nan"),
    b"bytes",
    [],
    {},
    object(),
]


def _fuzz_value(rng: random.Random, valid: str) -> Any:
    choice = rng.randrange(8)
    if choice == 0:
        return rng.choice(_FUZZ_ATOMS)
    if choice == 1:  # flip one character
        if not valid:
            return valid
        index = rng.randrange(len(valid))
        return valid[:index] + chr(rng.randrange(0x20, 0x250)) + valid[index + 1 :]
    if choice == 2:  # truncate or extend
        return valid[: rng.randrange(len(valid) + 1)] + "".join(
            rng.choices(string.printable, k=rng.randrange(3))
        )
    if choice == 3:  # random printable
        return "".join(rng.choices(string.printable, k=rng.randrange(100)))
    if choice == 4:  # random code points, including surrogates
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(40)))
    if choice == 5:
        return valid.upper() if rng.random() < 0.5 else valid.lower()
    return valid


def test_fuzzed_requests_only_ever_raise_request_signature_error() -> None:
    rng = random.Random(20260906)
    signed = _sign()
    outcomes: dict[str, int] = {}
    for _ in range(5000):
        headers: dict[Any, Any] = {}
        for name, value in signed.items():
            roll = rng.random()
            if roll < 0.08:
                continue  # drop it
            key: Any = name
            if rng.random() < 0.3:
                key = rng.choice([name.lower(), name.upper(), name.swapcase()])
            headers[key] = _fuzz_value(rng, value) if roll < 0.5 else value
            if rng.random() < 0.03:
                headers[name.lower() + ("" if key != name.lower() else " ")] = value
        if rng.random() < 0.1:
            headers[rng.choice(_FUZZ_ATOMS[:10])] = rng.choice(_FUZZ_ATOMS)
        if rng.random() < 0.02:
            headers[7] = "not a str key"
        method = _fuzz_value(rng, "POST") if rng.random() < 0.2 else "POST"
        path = _fuzz_value(rng, PATH) if rng.random() < 0.2 else PATH
        query = _fuzz_value(rng, QUERY) if rng.random() < 0.2 else QUERY
        now = rng.choice([NOW, NOW + rng.uniform(-120, 120), float("nan"), 0.0])
        error: RequestSignatureError | None = None
        try:
            verified = verify_request(method, path, query, headers, now=now)
        except RequestSignatureError as exc:
            error = exc
        if error is not None:
            assert error.reason in REASONS
            outcomes[error.reason] = outcomes.get(error.reason, 0) + 1
        else:
            # Only an unchanged request can verify (letter case of names aside).
            assert verified.caller == ALICE.public_key
            assert (verified.nonce, verified.timestamp) == (NONCE, NOW)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    # The loop reached every refusal and some successes.
    assert set(outcomes) == {*REASONS, "ok"}


def test_fuzzed_query_strings_only_ever_raise_request_signature_error() -> None:
    rng = random.Random(77)
    alphabet = string.printable + "é\u4e2d\ud800"
    for _ in range(3000):
        query = "".join(rng.choices(alphabet + "&&==%%", k=rng.randrange(60)))
        once: str | None = None
        reason = ""
        try:
            once = canonical_query(query)
        except RequestSignatureError as exc:
            reason = exc.reason
        if once is None:
            assert reason == "bad_request"
        else:
            assert canonical_query(once) == once
