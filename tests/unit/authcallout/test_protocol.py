"""The auth-callout wire protocol against requests built the way nats-server builds them."""

from __future__ import annotations

import base64
import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from unibus.authcallout.permissions import Permissions, permissions_for
from unibus.authcallout.protocol import (
    MAX_REQUEST_BYTES,
    AuthRequest,
    Denial,
    Dropped,
    allow_response,
    deny_response,
    open_request,
    open_request_with,
    user_jwt,
    verify_client,
)
from unibus.authcallout.reasons import Reason
from unibus.core import jwt, naming
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.xkeys import CurveKeyPair

NOW = 1_795_388_940
TIMEOUT = 2  # authorization.timeout: the server sets exp = now + timeout
NONCE = "4q7BzP2yCQ5KO8k"
ROOM = "r" * 20
XKEY_HEADER = "Nats-Server-Xkey"


# -- a nats-server, as far as the callout can see one -------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(payload: Any, signer: KeyPair) -> bytes:
    """A JWT signed correctly over arbitrary claims JSON (jwt.encode refuses odd types)."""
    header = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode()))}".encode()


@dataclass
class Server:
    """One nats-server process: its identity nkey and its per-process curve key."""

    key: KeyPair
    curve: CurveKeyPair
    name: str = "n2"

    @classmethod
    def generate(cls) -> Server:
        return cls(KeyPair.generate(Prefix.SERVER), CurveKeyPair.generate())

    def claims(self, client: KeyPair | None, *, issuer: str, nonce: str = NONCE) -> dict[str, Any]:
        """Request claims as in notes §2.2, for a nats-py nkey client (std padded sig)."""
        connect_opts: dict[str, Any] = {
            "name": "alice-app",
            "lang": "python3",
            "version": "2.16.0",
            "protocol": 1,
        }
        client_info: dict[str, Any] = {
            "host": "127.0.0.1",
            "id": 24,
            "name": "alice-app",
            "kind": "Client",
            "type": "nats",
        }
        if client is not None:
            connect_opts["nkey"] = client.public_key
            connect_opts["sig"] = base64.b64encode(client.sign(nonce.encode())).decode()
            client_info["user"] = client.public_key
            client_info["nonce"] = nonce
        return {
            "aud": "nats-authorization-request",
            "exp": NOW + TIMEOUT,
            "jti": "N4WG3T7E4FZ7GWXDW3SMDNJE7CIALG7FSU2IOHC24BLMX7JXNG7A",
            "iat": NOW,
            "iss": self.key.public_key,
            "sub": issuer,
            "nats": {
                "server_id": {
                    "name": self.name,
                    "host": "127.0.0.1",
                    "id": self.key.public_key,
                    "version": "2.15.1",
                    "cluster": "C1",
                    "xkey": self.curve.public_key,
                },
                "user_nkey": KeyPair.generate(Prefix.USER).public_key,
                "client_info": client_info,
                "connect_opts": connect_opts,
                "type": "authorization_request",
                "version": 2,
            },
        }

    def send(
        self, claims: Any, callout_xkey: str, *, signer: KeyPair | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """Sign, seal to the callout's xkey and add the header, as auth_callout.go does."""
        token = forge(claims, signer or self.key)
        return self.curve.seal(token, callout_xkey), {XKEY_HEADER: self.curve.public_key}


@pytest.fixture
def server() -> Server:
    return Server.generate()


@pytest.fixture
def callout() -> CurveKeyPair:
    return CurveKeyPair.generate()


@pytest.fixture
def issuer() -> KeyPair:
    return KeyPair.generate(Prefix.ACCOUNT)


@pytest.fixture
def client() -> KeyPair:
    return KeyPair.generate(Prefix.USER)


@pytest.fixture
def claims(server: Server, client: KeyPair, issuer: KeyPair) -> dict[str, Any]:
    return server.claims(client, issuer=issuer.public_key)


@pytest.fixture
def request_(server: Server, callout: CurveKeyPair, claims: dict[str, Any]) -> AuthRequest:
    payload, headers = server.send(claims, callout.public_key)
    return open_request(payload, headers, callout, now=NOW)


def expect_dropped(
    payload: bytes,
    headers: dict[str, str] | None,
    callout: CurveKeyPair,
    *,
    now: float = NOW,
    reason: Reason = Reason.DROPPED_MALFORMED,
) -> Dropped:
    with pytest.raises(Dropped) as caught:
        open_request(payload, headers, callout, now=now)
    assert caught.value.reason is reason
    return caught.value


# -- open_request: the happy path -----------------------------------------------------------------


def test_a_valid_request_opens_with_every_field(
    server: Server, callout: CurveKeyPair, client: KeyPair, claims: dict[str, Any]
) -> None:
    payload, headers = server.send(claims, callout.public_key)
    request = open_request(payload, headers, callout, now=NOW)
    assert request == AuthRequest(
        server_id=server.key.public_key,
        server_name="n2",
        server_xkey=server.curve.public_key,
        user_nkey=claims["nats"]["user_nkey"],
        client_id=24,
        client_kind="Client",
        client_type="nats",
        client_key=client.public_key,
        client_sig=claims["nats"]["connect_opts"]["sig"],
        nonce=NONCE,
        expires=float(NOW + TIMEOUT),
    )


def test_a_request_opens_whatever_the_case_of_the_header_name(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, _ = server.send(claims, callout.public_key)
    request = open_request(payload, {"nats-server-xkey": server.curve.public_key}, callout, now=NOW)
    assert request.server_xkey == server.curve.public_key


def test_a_request_without_credentials_opens_with_empty_client_fields(
    server: Server, callout: CurveKeyPair, issuer: KeyPair
) -> None:
    payload, headers = server.send(
        server.claims(None, issuer=issuer.public_key), callout.public_key
    )
    request = open_request(payload, headers, callout, now=NOW)
    assert (request.client_key, request.client_sig, request.nonce) == (None, None, None)


def test_a_request_is_still_answered_within_a_second_of_its_expiry(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, headers = server.send(claims, callout.public_key)
    assert open_request(payload, headers, callout, now=NOW + TIMEOUT + 1).client_id == 24


# -- open_request: everything that cannot be answered ------------------------------------------


def test_garbage_bytes_are_dropped(callout: CurveKeyPair, server: Server) -> None:
    expect_dropped(b"\x00\xff garbage", {XKEY_HEADER: server.curve.public_key}, callout)
    expect_dropped(b"", {XKEY_HEADER: server.curve.public_key}, callout)


def test_a_plaintext_request_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    token = forge(claims, server.key)
    expect_dropped(token, None, callout)
    expect_dropped(token, {}, callout)
    expect_dropped(token, {XKEY_HEADER: server.curve.public_key}, callout)


def test_an_oversized_payload_is_dropped_before_it_is_read(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    claims["nats"]["connect_opts"]["name"] = "x" * MAX_REQUEST_BYTES
    payload, headers = server.send(claims, callout.public_key)
    assert len(payload) > MAX_REQUEST_BYTES
    assert "larger" in expect_dropped(payload, headers, callout).detail


def test_a_payload_that_is_not_bytes_is_dropped(server: Server, callout: CurveKeyPair) -> None:
    expect_dropped("text", {XKEY_HEADER: server.curve.public_key}, callout)  # type: ignore[arg-type]


def test_a_header_naming_another_servers_key_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, _ = server.send(claims, callout.public_key)
    expect_dropped(payload, {XKEY_HEADER: CurveKeyPair.generate().public_key}, callout)


@pytest.mark.parametrize(
    "value", ["", "XNOTAKEY", "SXAAAA", KeyPair.generate(Prefix.USER).public_key]
)
def test_a_header_that_is_not_a_curve_key_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any], value: str
) -> None:
    payload, _ = server.send(claims, callout.public_key)
    expect_dropped(payload, {XKEY_HEADER: value}, callout)


def test_a_request_sealed_for_another_callout_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, headers = server.send(claims, CurveKeyPair.generate().public_key)
    expect_dropped(payload, headers, callout)


def test_a_header_key_differing_from_the_signed_server_xkey_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    # A box that opens, but the signing server vouched for another curve key.
    claims["nats"]["server_id"]["xkey"] = CurveKeyPair.generate().public_key
    payload, headers = server.send(claims, callout.public_key)
    assert "xkey" in expect_dropped(payload, headers, callout).detail


def test_a_request_without_a_signed_server_xkey_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    del claims["nats"]["server_id"]["xkey"]
    payload, headers = server.send(claims, callout.public_key)
    expect_dropped(payload, headers, callout)


@pytest.mark.parametrize("position", [0, 4, 30, -1])
def test_a_tampered_box_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any], position: int
) -> None:
    payload, headers = server.send(claims, callout.public_key)
    tampered = bytearray(payload)
    tampered[position] ^= 0x01
    expect_dropped(bytes(tampered), headers, callout)


def test_a_truncated_box_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, headers = server.send(claims, callout.public_key)
    expect_dropped(payload[:40], headers, callout)


def test_a_box_around_something_else_than_a_jwt_is_dropped(
    server: Server, callout: CurveKeyPair
) -> None:
    payload = server.curve.seal(b'{"not":"a jwt"}', callout.public_key)
    expect_dropped(payload, {XKEY_HEADER: server.curve.public_key}, callout)


def test_a_request_with_a_bad_jwt_signature_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    head, body, _ = forge(claims, server.key).split(b".")
    other = forge(claims, KeyPair.generate(Prefix.SERVER)).split(b".")[2]
    payload = server.curve.seal(b".".join([head, body, other]), callout.public_key)
    assert "JWT" in expect_dropped(payload, {XKEY_HEADER: server.curve.public_key}, callout).detail


def test_a_request_whose_signer_is_not_the_named_server_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    impostor = KeyPair.generate(Prefix.SERVER)
    claims["iss"] = impostor.public_key
    payload, headers = server.send(claims, callout.public_key, signer=impostor)
    assert "signer" in expect_dropped(payload, headers, callout).detail


def test_a_request_signed_by_a_non_server_key_is_dropped(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    account = KeyPair.generate(Prefix.ACCOUNT)
    claims["iss"] = claims["nats"]["server_id"]["id"] = account.public_key
    payload, headers = server.send(claims, callout.public_key, signer=account)
    expect_dropped(payload, headers, callout)


def test_an_expired_request_is_dropped_as_expired(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    payload, headers = server.send(claims, callout.public_key)
    expect_dropped(
        payload, headers, callout, now=NOW + TIMEOUT + 1.01, reason=Reason.DROPPED_EXPIRED
    )


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(claims: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = claims
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(claims: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = claims
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "wrong-aud": _set("aud", "nats-authorization-response"),
    "aud-list": _set("aud", ["nats-authorization-request"]),
    "no-aud": _delete("aud"),
    "wrong-type": _set("nats.type", "authorization_response"),
    "no-type": _delete("nats.type"),
    "nats-not-object": _set("nats", "authorization_request"),
    "no-nats": _delete("nats"),
    "server-id-not-object": _set("nats.server_id", "n2"),
    "server-id-id-int": _set("nats.server_id.id", 7),
    "server-id-xkey-list": _set("nats.server_id.xkey", ["X"]),
    "server-name-missing": _delete("nats.server_id.name"),
    "server-name-int": _set("nats.server_id.name", 2),
    "no-exp": _delete("exp"),
    "exp-str": _set("exp", str(NOW + TIMEOUT)),
    "exp-float": _set("exp", NOW + TIMEOUT + 0.5),
    "exp-bool": _set("exp", True),
    "exp-huge": _set("exp", 10**30),
    "exp-negative": _set("exp", -5),
    "no-user-nkey": _delete("nats.user_nkey"),
    "user-nkey-empty": _set("nats.user_nkey", ""),
    "user-nkey-garbage": _set("nats.user_nkey", "UNOTAKEY"),
    "user-nkey-account": _set("nats.user_nkey", KeyPair.generate(Prefix.ACCOUNT).public_key),
    "user-nkey-int": _set("nats.user_nkey", 5),
    "client-info-missing": _delete("nats.client_info"),
    "client-info-list": _set("nats.client_info", []),
    "cid-missing": _delete("nats.client_info.id"),
    "cid-str": _set("nats.client_info.id", "24"),
    "cid-float": _set("nats.client_info.id", 24.0),
    "cid-bool": _set("nats.client_info.id", True),
    "cid-negative": _set("nats.client_info.id", -1),
    "cid-over-uint64": _set("nats.client_info.id", 2**64),
    "kind-int": _set("nats.client_info.kind", 1),
    "type-list": _set("nats.client_info.type", ["nats"]),
    "nonce-int": _set("nats.client_info.nonce", 12345),
    "connect-opts-list": _set("nats.connect_opts", ["nkey"]),
    "nkey-int": _set("nats.connect_opts.nkey", 1),
    "sig-object": _set("nats.connect_opts.sig", {"sig": "x"}),
}


@pytest.mark.parametrize("mutate", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_request_with_a_malformed_field_is_dropped(
    server: Server,
    callout: CurveKeyPair,
    claims: dict[str, Any],
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    sig = claims["nats"]["connect_opts"]["sig"]
    mutate(claims)
    payload, headers = server.send(claims, callout.public_key)
    assert sig not in str(expect_dropped(payload, headers, callout))


def test_a_dropped_detail_never_repeats_request_values(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    claims["nats"]["connect_opts"]["pass"] = "hunter2"
    claims["nats"]["user_nkey"] = "U-hunter2"
    payload, headers = server.send(claims, callout.public_key)
    assert "hunter2" not in str(expect_dropped(payload, headers, callout))


# -- open_request + verify_client under fuzzing ------------------------------------------------


def _random_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            0,
            -1,
            2**64,
            1.5,
            "",
            "x" * rng.randint(1, 300),
            "\u00e9\u2028",
            [],
            [1, "a"],
            {},
            {"id": 1},
            KeyPair.generate(Prefix.USER).public_key,
            NONCE,
        ]
    )


def _mutate_structure(claims: dict[str, Any], rng: random.Random) -> None:
    """Replace, delete or add one field somewhere in the claims tree."""
    node: Any = claims
    while isinstance(node, dict) and node and rng.random() < 0.7:
        child = node[rng.choice(list(node))]
        if not isinstance(child, dict):
            break
        node = child
    if not isinstance(node, dict):
        return
    action = rng.random()
    if node and action < 0.4:
        node[rng.choice(list(node))] = _random_value(rng)
    elif node and action < 0.7:
        del node[rng.choice(list(node))]
    else:
        node[rng.choice(["id", "nkey", "sig", "nonce", "kind", "xkey", "extra"])] = _random_value(
            rng
        )


def test_fuzzed_requests_only_ever_raise_dropped_or_denial(
    server: Server, callout: CurveKeyPair, claims: dict[str, Any]
) -> None:
    rng = random.Random(20260905)
    valid, _ = server.send(claims, callout.public_key)
    plain = forge(claims, server.key)
    outcomes = {"opened": 0, "dropped": 0, "verified": 0, "denied": 0}
    dropped: set[Reason] = set()
    denied: set[Reason] = set()
    for _ in range(3000):
        roll = rng.random()
        headers: dict[str, str] | None = {XKEY_HEADER: server.curve.public_key}
        if roll < 0.3:  # flip, cut or extend the sealed bytes
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = (
                bytes(data[: rng.randint(0, len(data))]) if rng.random() < 0.2 else bytes(data)
            )
        elif roll < 0.45:  # a well-sealed box around a damaged token
            data = bytearray(plain)
            data[rng.randrange(len(data))] = rng.randrange(256)
            payload = server.curve.seal(bytes(data), callout.public_key)
        elif roll < 0.55:  # random headers
            payload = valid
            headers = rng.choice([None, {}, {XKEY_HEADER: "".join(rng.choices("XAB2=", k=56))}])
        else:  # a correctly signed and sealed request with odd contents
            mutated = copy.deepcopy(claims)
            for _ in range(rng.randint(1, 3)):
                _mutate_structure(mutated, rng)
            payload, headers = server.send(mutated, callout.public_key)
        try:
            request = open_request(payload, headers, callout, now=NOW)
        except Dropped as exc:
            dropped.add(exc.reason)
            outcomes["dropped"] += 1
            continue
        outcomes["opened"] += 1
        try:
            verify_client(request)
        except Denial as exc:
            denied.add(exc.reason)
            outcomes["denied"] += 1
        else:
            outcomes["verified"] += 1
    # The loop reached every branch, so it proved something about each.
    assert all(outcomes.values()), outcomes
    assert dropped <= {Reason.DROPPED_MALFORMED, Reason.DROPPED_EXPIRED}
    assert denied <= {r for r in Reason if r.answered and not r.admits}


# -- verify_client ------------------------------------------------------------------------------


def _with_sig(request: AuthRequest, sig: str | None) -> AuthRequest:
    return replace(request, client_sig=sig)


def _raw_sig(client: KeyPair, nonce: str = NONCE) -> bytes:
    return client.sign(nonce.encode())


@pytest.mark.parametrize(
    "encode",
    [
        lambda raw: base64.b64encode(raw).decode(),
        lambda raw: base64.b64encode(raw).decode().rstrip("="),
        lambda raw: base64.urlsafe_b64encode(raw).decode(),
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ],
    ids=["std-padded-nats-py", "std-raw", "url-padded", "url-raw-nats-go"],
)
def test_verify_client_accepts_std_and_url_base64_signatures(
    request_: AuthRequest, client: KeyPair, encode: Callable[[bytes], str]
) -> None:
    sigs = []
    for i in range(16):  # several signatures, so the alphabets' special characters show up
        nonce = f"{NONCE}{i}"
        sigs.append(encode(_raw_sig(client, nonce)))
        request = replace(request_, nonce=nonce, client_sig=sigs[-1])
        assert verify_client(request) == client.public_key
    assert set("".join(sigs)) & set("+/-_")


def expect_denial(request: AuthRequest, reason: Reason) -> Denial:
    with pytest.raises(Denial) as caught:
        verify_client(request)
    assert caught.value.reason is reason
    return caught.value


def test_a_client_without_an_nkey_is_denied_for_no_credentials(request_: AuthRequest) -> None:
    expect_denial(replace(request_, client_key=None, client_sig=None), Reason.NO_CREDENTIALS)


def test_a_forged_signature_is_denied_as_bad_signature(
    request_: AuthRequest, client: KeyPair
) -> None:
    # The attack the server lets through (notes §3): someone else's key, 64 zero bytes.
    forged = _with_sig(request_, base64.b64encode(bytes(64)).decode())
    denial = expect_denial(forged, Reason.BAD_SIGNATURE)
    assert client.public_key[:8] in denial.detail
    assert client.public_key not in denial.detail


def test_a_signature_by_another_key_is_denied_as_bad_signature(request_: AuthRequest) -> None:
    other = KeyPair.generate(Prefix.USER)
    expect_denial(
        _with_sig(request_, base64.b64encode(_raw_sig(other)).decode()), Reason.BAD_SIGNATURE
    )


def test_a_signature_over_another_nonce_is_denied_as_bad_signature(
    request_: AuthRequest, client: KeyPair
) -> None:
    replayed = base64.b64encode(_raw_sig(client, "an-older-nonce1")).decode()
    expect_denial(_with_sig(request_, replayed), Reason.BAD_SIGNATURE)


def test_an_account_key_presented_as_client_key_is_denied_as_bad_request(
    request_: AuthRequest,
) -> None:
    account = KeyPair.generate(Prefix.ACCOUNT)
    request = replace(
        request_,
        client_key=account.public_key,
        client_sig=base64.b64encode(_raw_sig(account)).decode(),
    )
    expect_denial(request, Reason.BAD_REQUEST)


@pytest.mark.parametrize("key", ["UNOTAKEY", "U" + "A" * 55, "00" * 32])
def test_a_malformed_client_key_is_denied_as_bad_request(request_: AuthRequest, key: str) -> None:
    denial = expect_denial(replace(request_, client_key=key), Reason.BAD_REQUEST)
    assert key not in denial.detail or len(key) <= 8


@pytest.mark.parametrize(
    ("kind", "type_"),
    [
        ("Leafnode", "nats"),
        ("Client", "websocket"),
        ("Client", "mqtt"),
        ("", ""),
        ("client", "nats"),
    ],
)
def test_connections_other_than_plain_nats_clients_are_unsupported(
    request_: AuthRequest, kind: str, type_: str
) -> None:
    expect_denial(replace(request_, client_kind=kind, client_type=type_), Reason.UNSUPPORTED_CLIENT)


@pytest.mark.parametrize(
    "sig",
    [
        "!!!!",
        "a",
        "abc=====",
        "ab=c",
        base64.b64encode(bytes(63)).decode(),
        base64.b64encode(bytes(65)).decode(),
        base64.b64encode(bytes(64)).decode() + "=",
        "A" * 300,
        "+" * 43 + "-" * 43,  # both alphabets at once
        "é" * 86,
    ],
    ids=[
        "symbols",
        "one-char",
        "over-padded",
        "inner-padding",
        "63-bytes",
        "65-bytes",
        "bad-padding-length",
        "too-long",
        "mixed-alphabets",
        "non-ascii",
    ],
)
def test_a_malformed_signature_is_denied_as_bad_request(request_: AuthRequest, sig: str) -> None:
    expect_denial(_with_sig(request_, sig), Reason.BAD_REQUEST)


@pytest.mark.parametrize(
    "changes",
    [{"client_sig": None}, {"nonce": None}, {"nonce": "nönce"}],
    ids=["no-sig", "no-nonce", "non-ascii-nonce"],
)
def test_an_nkey_without_a_usable_nonce_signature_is_denied_as_bad_request(
    request_: AuthRequest, changes: dict[str, Any]
) -> None:
    expect_denial(replace(request_, **changes), Reason.BAD_REQUEST)


# -- responses ------------------------------------------------------------------------------------


def open_response(server: Server, callout: CurveKeyPair, data: bytes) -> dict[str, Any]:
    """What auth_callout.go does with our reply: open with its key, decode, check the issuer."""
    return jwt.decode(server.curve.open(data, callout.public_key), issuer_prefix=Prefix.ACCOUNT)


@pytest.fixture
def permissions(client: KeyPair) -> Permissions:
    return permissions_for(client.public_key, [ROOM])


def test_an_allow_response_carries_a_user_jwt_for_the_member_account(
    server: Server,
    callout: CurveKeyPair,
    issuer: KeyPair,
    client: KeyPair,
    request_: AuthRequest,
    permissions: Permissions,
) -> None:
    token = user_jwt(
        issuer, request_, user_key=client.public_key, permissions=permissions, ttl=3600, now=NOW
    )
    response = open_response(
        server, callout, allow_response(issuer, request_, callout, token, now=NOW)
    )
    assert response["iss"] == issuer.public_key
    assert response["sub"] == request_.user_nkey
    assert response["aud"] == server.key.public_key
    assert response["nats"] == {"jwt": token, "type": "authorization_response", "version": 2}

    user = jwt.decode(response["nats"]["jwt"], issuer_prefix=Prefix.ACCOUNT)
    jwt.check_times(user, now=NOW + 3599)
    assert user["iss"] == issuer.public_key
    assert user["sub"] == request_.user_nkey
    assert user["aud"] == "MEMBERS" == naming.MEMBER_ACCOUNT
    assert user["name"] == client.public_key
    assert (user["iat"], user["exp"]) == (NOW, NOW + 3600)
    assert "issuer_account" not in user
    assert user["nats"] == {
        "pub": {"allow": list(permissions.pub_allow)},
        "sub": {"allow": list(permissions.sub_allow)},
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }


def test_a_user_without_rooms_is_denied_every_publish_explicitly(
    issuer: KeyPair, client: KeyPair, request_: AuthRequest
) -> None:
    # An empty allow list means "no restriction" to NATS.
    token = user_jwt(
        issuer,
        request_,
        user_key=client.public_key,
        permissions=permissions_for(client.public_key, []),
        ttl=60,
        now=NOW,
    )
    nats = jwt.decode(token)["nats"]
    assert nats["pub"] == {"deny": [">"]}
    assert nats["sub"] == {"allow": [f"{naming.inbox_prefix(client.public_key)}.>"]}
    empty = Permissions(pub_allow=(), sub_allow=())
    nats = jwt.decode(
        user_jwt(issuer, request_, user_key=client.public_key, permissions=empty, ttl=60, now=NOW)
    )["nats"]
    assert nats["pub"] == nats["sub"] == {"deny": [">"]}


@pytest.mark.parametrize(
    "reason", [r for r in Reason if r.answered and not r.admits], ids=lambda r: r.value
)
def test_a_deny_response_names_only_the_reason_code(
    server: Server, callout: CurveKeyPair, issuer: KeyPair, request_: AuthRequest, reason: Reason
) -> None:
    response = open_response(
        server, callout, deny_response(issuer, request_, callout, reason, now=NOW)
    )
    assert response["sub"] == request_.user_nkey
    assert response["aud"] == server.key.public_key
    assert response["iat"] == NOW
    assert response["nats"] == {
        "error": reason.value,
        "type": "authorization_response",
        "version": 2,
    }


@pytest.mark.parametrize(
    "reason", [Reason.ALLOWED, Reason.DROPPED_MALFORMED, Reason.DROPPED_EXPIRED]
)
def test_a_deny_response_refuses_reasons_that_are_not_denials(
    callout: CurveKeyPair, issuer: KeyPair, request_: AuthRequest, reason: Reason
) -> None:
    with pytest.raises(ValueError, match="not a denial"):
        deny_response(issuer, request_, callout, reason, now=NOW)


def test_responses_are_sealed_to_the_requesting_server_only(
    callout: CurveKeyPair, issuer: KeyPair, request_: AuthRequest
) -> None:
    data = deny_response(issuer, request_, callout, Reason.REVOKED, now=NOW)
    assert data.startswith(b"xkv1")
    with pytest.raises(Exception, match="did not open"):
        CurveKeyPair.generate().open(data, callout.public_key)


def test_a_request_without_a_server_xkey_gets_a_plaintext_response(
    callout: CurveKeyPair, issuer: KeyPair, request_: AuthRequest
) -> None:
    data = deny_response(
        issuer, replace(request_, server_xkey=None), callout, Reason.REVOKED, now=NOW
    )
    assert jwt.decode(data)["nats"]["error"] == "revoked"


def test_responses_must_be_signed_by_an_account_key(
    callout: CurveKeyPair, client: KeyPair, request_: AuthRequest, permissions: Permissions
) -> None:
    user_key = KeyPair.generate(Prefix.USER)
    with pytest.raises(ValueError, match="account key"):
        deny_response(user_key, request_, callout, Reason.REVOKED, now=NOW)
    with pytest.raises(ValueError, match="account key"):
        allow_response(user_key, request_, callout, "a.b.c", now=NOW)
    with pytest.raises(ValueError, match="account key"):
        user_jwt(
            user_key, request_, user_key=client.public_key, permissions=permissions, ttl=60, now=NOW
        )


@pytest.mark.parametrize("ttl", [0, 0.5, -60, float("nan"), float("inf")])
def test_a_user_jwt_needs_a_ttl_of_at_least_a_second(
    issuer: KeyPair, client: KeyPair, request_: AuthRequest, permissions: Permissions, ttl: float
) -> None:
    with pytest.raises(ValueError, match="ttl"):
        user_jwt(
            issuer, request_, user_key=client.public_key, permissions=permissions, ttl=ttl, now=NOW
        )


def test_a_user_jwt_is_only_issued_for_a_user_key(
    issuer: KeyPair, request_: AuthRequest, permissions: Permissions
) -> None:
    with pytest.raises(Exception, match="user key"):
        user_jwt(
            issuer,
            request_,
            user_key=issuer.public_key,
            permissions=permissions,
            ttl=60,
            now=NOW,
        )


# -- key generations (a rotation: unibus identities) -------------------------------------------


def test_a_request_opens_with_the_generation_its_server_uses_and_says_which(
    server: Server, claims: dict[str, Any]
) -> None:
    current, following = CurveKeyPair.generate(), CurveKeyPair.generate()
    for index, sealed_to in enumerate((current, following)):
        payload, headers = server.send(claims, sealed_to.public_key)
        request, opened_with = open_request_with(payload, headers, (current, following), now=NOW)
        assert opened_with == index
        assert request.server_name == "n2"


def test_a_request_sealed_to_a_retired_xkey_is_dropped(
    server: Server, claims: dict[str, Any]
) -> None:
    retired, current = CurveKeyPair.generate(), CurveKeyPair.generate()
    payload, headers = server.send(claims, retired.public_key)
    with pytest.raises(Dropped) as caught:
        open_request_with(payload, headers, (current,), now=NOW)
    assert caught.value.reason is Reason.DROPPED_MALFORMED
