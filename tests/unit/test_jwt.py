"""NATS JWT v2 encode/decode/check_times, including hostile input."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import pytest

from unibus.core import jwt
from unibus.core.errors import JWTError
from unibus.core.jwt import DEFAULT_MAX_SIZE, HEADER, check_times, decode, encode
from unibus.core.nkeys import KeyPair, Prefix, encode_public, verify

NOW = 1_795_388_940
NOTES_ACCOUNT = "ACKLDEV3JQQXD27QS7Z4PG5GDCUSQDDJLU34BPXZKWHNHN4WJKPJKKDW"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def forge(header: Any, payload: Any, signer: KeyPair) -> str:
    """A token signed correctly over arbitrary header/payload JSON, built without jwt.py."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{b64(signer.sign(signing_input.encode()))}"


H = b64json(dict(HEADER))


ISS_ONLY = json.dumps({"iss": NOTES_ACCOUNT}).encode()


def with_payload(payload: bytes) -> str:
    return f"{H}.{b64(payload)}.AA"


@pytest.fixture
def account() -> KeyPair:
    return KeyPair.generate(Prefix.ACCOUNT)


@pytest.fixture
def token(account: KeyPair) -> str:
    return encode(
        {"sub": "UABC", "aud": "APP", "exp": NOW + 60, "nats": {"type": "user", "version": 2}},
        account,
        now=NOW,
    )


# -- encode ---------------------------------------------------------------------------------


def test_encode_then_decode_round_trips(account: KeyPair, token: str) -> None:
    claims = decode(token, issuer_prefix=Prefix.ACCOUNT)
    assert claims["iss"] == account.public_key
    assert claims["iat"] == NOW
    assert claims["sub"] == "UABC"
    assert claims["nats"] == {"type": "user", "version": 2}
    assert len(claims["jti"]) == 52


def test_encode_writes_the_nats_header_and_unpadded_segments(token: str) -> None:
    header, payload, signature = token.split(".")
    assert json.loads(unb64(header)) == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert dict(HEADER) == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert "=" not in token
    assert b" " not in unb64(payload)  # compact JSON
    assert len(unb64(signature)) == 64


def test_encode_signs_header_dot_payload_verifiable_with_plain_ed25519(
    account: KeyPair, token: str
) -> None:
    header, payload, signature = token.split(".")
    assert verify(account.public_key, f"{header}.{payload}".encode(), unb64(signature))
    assert not verify(account.public_key, payload.encode(), unb64(signature))


def test_encode_overrides_given_iss_iat_and_jti(account: KeyPair) -> None:
    token = encode({"sub": "U", "iss": "evil", "iat": 1, "jti": "mine"}, account, now=NOW + 0.9)
    claims = decode(token)
    assert claims["iss"] == account.public_key
    assert claims["iat"] == NOW
    assert claims["jti"] != "mine"


def test_encode_puts_standard_claims_first_in_go_order(account: KeyPair) -> None:
    token = encode({"nats": {}, "sub": "U", "name": "n", "aud": "A", "exp": NOW}, account, now=NOW)
    payload = json.loads(unb64(token.split(".")[1]))
    assert list(payload) == ["aud", "exp", "jti", "iat", "iss", "name", "sub", "nats"]


def test_encode_uses_the_clock_when_now_is_omitted(account: KeyPair) -> None:
    claims = decode(encode({"sub": "U"}, account))
    assert claims["iat"] > NOW - 10**8


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": 5},
        {"aud": ["APP"]},
        {"name": None, "exp": 1.5},
        {"nbf": "soon"},
        {"exp": True},
        {"x": object()},
        {"x": "\ud800"},
    ],
    ids=["sub-int", "aud-list", "exp-float", "nbf-str", "exp-bool", "object", "surrogate"],
)
def test_encode_refuses_claims_it_cannot_represent(account: KeyPair, claims: Any) -> None:
    with pytest.raises(JWTError):
        encode(claims, account, now=NOW)


def test_encode_and_decode_keep_unicode_and_html_characters(account: KeyPair) -> None:
    claims = decode(encode({"sub": "U", "name": "Zoë <&> \u2028 ✓"}, account, now=NOW))
    assert claims["name"] == "Zoë <&> \u2028 ✓"


# -- jti (jwt/v2 ClaimsData.hash) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (  # callout spike results.txt A2, request signed by nats-server 2.15.1
            {
                "aud": "nats-authorization-request",
                "exp": 1795389274,
                "iat": 1795389271,
                "iss": "NDJDI2OVZS4YPAFM5LZQRV4QKSIGOODMRKDBS3DJMTCPIY45JFRCJ4WR",
                "sub": NOTES_ACCOUNT,
                "nats": {"ignored": True},
            },
            "2OA3KTEYCURWXOSJJD4TZGY7PLA7T3SMNLU4HDTMZJ5QDEZGXGDQ",
        ),
        (  # authcallout.md 2.2, another real request
            {
                "sub": NOTES_ACCOUNT,
                "iss": "NCNKETHXK55VSHU4FRQOKMKDVHP6YWISKHD4YFX4SG342E2RQR72DNO2",
                "iat": 1795388940,
                "exp": 1795388943,
                "aud": "nats-authorization-request",
                "jti": "ignored",
            },
            "N4WG3T7E4FZ7GWXDW3SMDNJE7CIALG7FSU2IOHC24BLMX7JXNG7A",
        ),
    ],
)
def test_jti_matches_what_nats_server_computed(claims: dict[str, Any], expected: str) -> None:
    assert jwt._compute_jti(claims) == expected


def test_jti_hashes_go_escaped_json_and_omits_empty_values() -> None:
    claims = {"name": "<a&b>", "aud": "", "exp": 0, "nbf": None, "sub": "U"}
    go_bytes = b'{"name":"\\u003ca\\u0026b\\u003e","sub":"U"}'
    expected = base64.b32encode(hashlib.new("sha512_256", go_bytes).digest()).decode().rstrip("=")
    assert jwt._compute_jti(claims) == expected


# -- decode ---------------------------------------------------------------------------------


def test_decode_accepts_bytes(token: str) -> None:
    assert decode(token.encode())["sub"] == "UABC"


def test_decode_accepts_padded_segments(account: KeyPair) -> None:
    header = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ed25519-nkey"}').decode()
    payload = base64.urlsafe_b64encode(
        json.dumps({"iss": account.public_key, "sub": "Ux"}).encode()
    ).decode()
    assert header.endswith("=") or payload.endswith("=")
    signing_input = f"{header}.{payload}"
    signature = base64.urlsafe_b64encode(account.sign(signing_input.encode())).decode()
    assert decode(f"{signing_input}.{signature}")["sub"] == "Ux"


@pytest.mark.parametrize(
    "header",
    [
        {"typ": "JWT", "alg": "ed25519"},
        {"typ": "jwt", "alg": "ED25519-NKEY"},
        {"alg": "Ed25519-Nkey", "typ": "Jwt", "kid": "extra"},
    ],
)
def test_decode_accepts_header_variants_nats_io_jwt_accepts(
    account: KeyPair, header: dict[str, str]
) -> None:
    assert decode(forge(header, {"iss": account.public_key}, account))["iss"]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"typ": "JWT", "alg": "none"}, "unsupported algorithm"),
        ({"typ": "JWT", "alg": "HS256"}, "unsupported algorithm"),
        ({"typ": "JWT", "alg": "ed25519-nkeys"}, "unsupported algorithm"),
        ({"typ": "JWT"}, "unsupported algorithm"),
        ({"typ": "JWT", "alg": ["ed25519-nkey"]}, "unsupported algorithm"),
        ({"typ": "JWS", "alg": "ed25519-nkey"}, "unsupported token type"),
        ({"alg": "ed25519-nkey"}, "unsupported token type"),
        ({"typ": None, "alg": "ed25519-nkey"}, "unsupported token type"),
        (["JWT", "ed25519-nkey"], "header is not a JSON object"),
        ("JWT", "header is not a JSON object"),
    ],
)
def test_decode_rejects_bad_headers(account: KeyPair, header: Any, reason: str) -> None:
    with pytest.raises(JWTError, match=reason):
        decode(forge(header, {"iss": account.public_key}, account))


def test_decode_rejects_a_tampered_payload(token: str) -> None:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims["aud"] = "SYS"
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(f"{header}.{b64json(claims)}.{signature}")


def test_decode_rejects_a_tampered_header(token: str) -> None:
    _, payload, signature = token.split(".")
    header = b64json({"alg": "ed25519-nkey", "typ": "JWT"})  # same meaning, other bytes
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(f"{header}.{payload}.{signature}")


def test_decode_rejects_a_tampered_signature(token: str) -> None:
    header, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[10] ^= 0x01
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(f"{header}.{payload}.{b64(bytes(raw))}")
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(f"{header}.{payload}.{b64(bytes(raw[:63]))}")
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(f"{header}.{payload}.")


def test_decode_rejects_a_token_signed_by_someone_other_than_iss(account: KeyPair) -> None:
    other = KeyPair.generate(Prefix.ACCOUNT)
    with pytest.raises(JWTError, match="signature verification failed"):
        decode(forge(dict(HEADER), {"iss": account.public_key, "sub": "U"}, other))


def test_decode_with_wrong_issuer_prefix_raises(token: str) -> None:
    with pytest.raises(JWTError, match=r"wrong key type \(expected N\)"):
        decode(token, issuer_prefix=Prefix.SERVER)
    user = KeyPair.generate(Prefix.USER)
    with pytest.raises(JWTError, match="wrong key type"):
        decode(encode({"sub": "U"}, user, now=NOW), issuer_prefix=Prefix.ACCOUNT)


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        (None, "issuer missing"),
        ("", "issuer missing"),
        (42, "issuer missing"),
        (["A"], "issuer missing"),
        ("ANOTAKEY", "issuer is not a valid nkey"),
        (NOTES_ACCOUNT.lower(), "issuer is not a valid nkey"),
        (encode_public(Prefix.CURVE, bytes(32)), "issuer is not a signing key"),
    ],
)
def test_decode_rejects_bad_issuers(account: KeyPair, issuer: Any, reason: str) -> None:
    payload = {"sub": "U"} if issuer is None else {"sub": "U", "iss": issuer}
    with pytest.raises(JWTError, match=reason):
        decode(forge(dict(HEADER), payload, account))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "expected 3 segments"),
        ("a.b", "expected 3 segments"),
        ("a.b.c.d", "expected 3 segments"),
        ("...", "expected 3 segments"),
        ("..", "header is not JSON"),
        ("eyJ+.e30.AA", "header is not base64url"),
        ("eyJ/.e30.AA", "header is not base64url"),
        ("e===.e30.AA", "header is not base64url"),
        ("eyJ==.e30.AA", "header is not base64url"),
        ("eyJ=.e30.AA", "header is not JSON"),
        ("abcde.e30.AA", "header is not base64url"),
        (f"{H}.e30=x.AA", "payload is not base64url"),
        (with_payload(b"[1]"), "payload is not a JSON object"),
        (with_payload(b"{"), "payload is not JSON"),
        (with_payload(b"{}x"), "payload is not JSON"),
        (with_payload(b'{"a":NaN}'), "payload is not JSON"),
        (with_payload(b'{"a":"\xff"}'), "payload is not JSON"),
        (with_payload(b'{"a":1e999}'), "payload is not JSON"),
        (with_payload(b"{" * 10 + b"}"), "payload is not JSON"),
        (with_payload(b"{}"), "issuer missing"),
        (f"{with_payload(ISS_ONLY)[:-3]}.A", "signature is not base64url"),
        (f"{with_payload(ISS_ONLY)[:-3]}.A*", "signature is not base64url"),
    ],
)
def test_decode_rejects_structural_garbage_with_a_stable_reason(token: str, reason: str) -> None:
    with pytest.raises(JWTError, match=f"^{reason}$"):
        decode(token)


def test_decode_rejects_deeply_nested_json_without_recursion_error() -> None:
    deep = b64(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    with pytest.raises(JWTError, match="payload is not JSON"):
        decode(f"{H}.{deep}.AA", max_size=10**7)
    arrays = b64(b"[" * 150_000)
    with pytest.raises(JWTError):
        decode(f"{H}.{arrays}.AA")


def test_decode_rejects_an_oversized_token_before_parsing(account: KeyPair) -> None:
    big = encode({"sub": "U", "pad": "x" * DEFAULT_MAX_SIZE}, account, now=NOW)
    with pytest.raises(JWTError, match=r"^token too large$"):
        decode(big)
    with pytest.raises(JWTError, match=r"^token too large$"):
        decode(big.encode())
    assert decode(big, max_size=len(big))["sub"] == "U"
    with pytest.raises(JWTError, match=r"^token too large$"):
        decode("x" * (DEFAULT_MAX_SIZE + 1))


def test_decode_accepts_a_token_just_under_the_limit(account: KeyPair) -> None:
    small = encode({"sub": "U"}, account, now=NOW)
    assert decode(small, max_size=len(small))["sub"] == "U"
    with pytest.raises(JWTError, match="too large"):
        decode(small, max_size=len(small) - 1)


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        42,
        3.5,
        ["a", "b", "c"],
        {"typ": "JWT"},
        object(),
    ],
)
def test_decode_rejects_non_text_input(garbage: Any) -> None:
    with pytest.raises(JWTError, match="token must be str or bytes"):
        decode(garbage)


NASTY = [
    "\x00",
    "\x00.\x00.\x00",
    "é.é.é",
    "\uff45\uff59\uff2a.\uff45\uff59\uff2a.\uff21\uff21",  # full-width "eyJ.eyJ.AA"
    "eyJ0eXAiOiJKV1QifQ.eyJ0eXAiOiJKV1QifQ.eyJ0eXAiOiJKV1QifQ",
    "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
    "null.null.null",
    ". . ",
    "\n.\n.\n",
    "=.=.=",
    "====.====.====",
    "\ud800.\udfff.x",
    "🙂.🙂.🙂",
    "e30.e30.e30",
    "W10.W10.W10",
    "bnVsbA.bnVsbA.bnVsbA",  # "null" JSON in every segment
    "MQ.MQ.MQ",  # "1"
    "IiI.IiI.IiI",  # '""'
    "e30" * 10_000 + ".e30.e30",
]


@pytest.mark.parametrize("garbage", NASTY)
def test_decode_of_fixed_nasty_strings_raises_only_jwt_error(garbage: str) -> None:
    with pytest.raises(JWTError):
        decode(garbage)
    try:
        encoded = garbage.encode("utf-8", "surrogatepass")
    except UnicodeEncodeError:  # pragma: no cover - surrogatepass always encodes
        return
    with pytest.raises(JWTError):
        decode(encoded)


def test_decode_of_random_garbage_raises_only_jwt_error() -> None:
    rng = random.Random(0xC0FFEE)
    alphabet = 'ABCxyz019-_+/=.\x00é{}[]":,'
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            candidate: str | bytes = rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            candidate = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 120)))
        else:
            parts = [rng.randbytes(rng.randrange(0, 40)) for _ in range(3)]
            candidate = ".".join(b64(part) for part in parts)
        with pytest.raises(JWTError):
            decode(candidate)


def test_decode_of_random_json_segments_raises_only_jwt_error(account: KeyPair) -> None:
    rng = random.Random(7)
    values: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "JWT", [], {}, {"typ": "JWT"}]
    for _ in range(1500):
        header = rng.choice([dict(HEADER), rng.choice(values), {"typ": rng.choice(values)}])
        payload = rng.choice(
            [
                {"iss": rng.choice([*values, account.public_key])},
                {"iss": account.public_key, "nats": rng.choice(values)},
                rng.choice(values),
            ]
        )
        try:
            claims = decode(forge(header, payload, account))
        except JWTError:
            continue
        assert claims == payload  # only a fully valid token may decode


def test_decode_of_mutated_valid_tokens_raises_only_jwt_error_or_returns_the_claims(
    token: str,
) -> None:
    original = decode(token)
    rng = random.Random(99)
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"
    for _ in range(3000):
        mutated = list(token)
        for _ in range(rng.randrange(1, 4)):
            operation = rng.randrange(3)
            position = rng.randrange(len(mutated))
            if operation == 0:
                mutated[position] = rng.choice(chars)
            elif operation == 1:
                mutated.insert(position, rng.choice(chars))
            else:
                del mutated[position]
        try:
            claims = decode("".join(mutated))
        except JWTError:
            continue
        # Only the signature's final character carries ignorable padding bits.
        assert claims == original


# -- check_times ----------------------------------------------------------------------------


def test_check_times_accepts_claims_without_exp_or_nbf() -> None:
    check_times({}, now=NOW)
    check_times({"exp": None, "nbf": None}, now=NOW)


def test_check_times_accepts_a_valid_window() -> None:
    check_times({"exp": NOW + 10, "nbf": NOW - 10}, now=NOW)


def test_check_times_with_passed_exp_raises() -> None:
    with pytest.raises(JWTError, match=r"^token expired$"):
        check_times({"exp": NOW - 2}, now=NOW)
    with pytest.raises(JWTError, match=r"^token expired$"):
        check_times({"exp": 0}, now=NOW)


def test_check_times_tolerates_exp_within_leeway() -> None:
    check_times({"exp": NOW - 1}, now=NOW)
    check_times({"exp": NOW - 5}, now=NOW, leeway=5)
    with pytest.raises(JWTError, match="expired"):
        check_times({"exp": NOW - 1}, now=NOW + 0.5, leeway=1)
    with pytest.raises(JWTError, match="expired"):
        check_times({"exp": NOW - 1}, now=NOW, leeway=0)


def test_check_times_with_future_nbf_raises() -> None:
    with pytest.raises(JWTError, match=r"^token not yet valid$"):
        check_times({"nbf": NOW + 2}, now=NOW)
    check_times({"nbf": NOW + 1}, now=NOW)


@pytest.mark.parametrize("value", [1.5, float(NOW + 100), "1795388999", True, [NOW], {"t": NOW}])
@pytest.mark.parametrize("field", ["exp", "nbf"])
def test_check_times_with_non_integer_times_raises(field: str, value: Any) -> None:
    with pytest.raises(JWTError, match=f"^{field} is not an integer$"):
        check_times({field: value}, now=NOW)


def test_check_times_handles_huge_integers_without_overflow() -> None:
    check_times({"exp": 10**400, "nbf": -(10**400)}, now=NOW)
    with pytest.raises(JWTError, match="expired"):
        check_times({"exp": -(10**400)}, now=NOW)
    with pytest.raises(JWTError, match="not yet valid"):
        check_times({"nbf": 10**400}, now=NOW)


def test_decoded_claims_feed_check_times(account: KeyPair, token: str) -> None:
    claims = decode(token)
    check_times(claims, now=NOW + 60)
    with pytest.raises(JWTError, match="expired"):
        check_times(claims, now=NOW + 62)
