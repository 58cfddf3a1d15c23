"""xkeys: curve key pairs and the ``xkv1`` box format nats-server uses for auth callout."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.public
import pytest

from unibus.core.errors import NkeyError, XKeyError
from unibus.core.nkeys import KeyPair, Prefix, decode_public, decode_seed, write_seed_file
from unibus.core.xkeys import VERSION_TAG, CurveKeyPair, read_curve_seed_file

# nats.docs auth_callout.md "Encryption": `nsc generate nkey --curve`
DOCS_CURVE_SEED = "SXANPB47UINQR7EXT3BRP26A4LY2CMCDLTY2KX6BU3EGK2VZYREJ4IJRCE"
DOCS_CURVE_PUBLIC = "XAMHJVPKHHPYZQQM2IVWXKJH36KDDZZMSJ32QKSQBUODFX4I4HARO4GL"

HEADER_LEN = len(VERSION_TAG) + 24  # tag + nonce
OVERHEAD = HEADER_LEN + 16  # + Poly1305 MAC


@pytest.fixture
def sender() -> CurveKeyPair:
    return CurveKeyPair.generate()


@pytest.fixture
def recipient() -> CurveKeyPair:
    return CurveKeyPair.generate()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_docs_curve_seed_yields_the_documented_public_key() -> None:
    kp = CurveKeyPair.from_seed(DOCS_CURVE_SEED)
    assert kp.public_key == DOCS_CURVE_PUBLIC
    assert kp.seed == DOCS_CURVE_SEED


def test_generated_pair_round_trips_through_its_seed() -> None:
    kp = CurveKeyPair.generate()
    assert kp.public_key.startswith("X")
    assert kp.seed.startswith("SX")
    assert CurveKeyPair.from_seed(kp.seed).public_key == kp.public_key
    assert CurveKeyPair.from_seed(kp.seed.encode() + b"\n").public_key == kp.public_key


def test_public_key_is_x25519_of_the_raw_seed_bytes() -> None:
    kp = CurveKeyPair.generate()
    _, raw_seed = decode_seed(kp.seed)
    _, raw_public = decode_public(kp.public_key, Prefix.CURVE)
    assert bytes(nacl.public.PrivateKey(raw_seed).public_key) == raw_public


def test_from_seed_refuses_an_ed25519_seed() -> None:
    with pytest.raises(NkeyError, match="curve seed"):
        CurveKeyPair.from_seed(KeyPair.generate(Prefix.USER).seed)


def test_repr_shows_the_public_key_and_never_the_seed() -> None:
    kp = CurveKeyPair.from_seed(DOCS_CURVE_SEED)
    assert DOCS_CURVE_PUBLIC in repr(kp)
    assert DOCS_CURVE_SEED not in repr(kp)


@pytest.mark.parametrize("plaintext", [b"", b"x", b"eyJ0eXAiOiJKV1Qi", os.urandom(70_000)])
def test_seal_then_open_round_trips(
    sender: CurveKeyPair, recipient: CurveKeyPair, plaintext: bytes
) -> None:
    sealed = sender.seal(plaintext, recipient.public_key)
    assert sealed.startswith(b"xkv1")
    assert len(sealed) == OVERHEAD + len(plaintext)
    assert recipient.open(sealed, sender.public_key) == plaintext


def test_seal_uses_a_fresh_nonce_each_time(sender: CurveKeyPair, recipient: CurveKeyPair) -> None:
    first = sender.seal(b"same", recipient.public_key)
    second = sender.seal(b"same", recipient.public_key)
    assert first[len(VERSION_TAG) : HEADER_LEN] != second[len(VERSION_TAG) : HEADER_LEN]


def test_sealed_layout_is_tag_nonce_then_a_plain_nacl_box(
    sender: CurveKeyPair, recipient: CurveKeyPair
) -> None:
    """The nkeys wire format, checked with PyNaCl directly rather than through our code."""
    sealed = sender.seal(b"hello server", recipient.public_key)
    nonce, box = sealed[len(VERSION_TAG) : HEADER_LEN], sealed[HEADER_LEN:]
    raw_recipient = nacl.public.PrivateKey(decode_seed(recipient.seed)[1])
    raw_sender = nacl.public.PublicKey(decode_public(sender.public_key)[1])
    opened = nacl.public.Box(raw_recipient, raw_sender).decrypt(box, nonce)
    assert opened == b"hello server"


def test_open_accepts_a_box_built_independently_with_pynacl(recipient: CurveKeyPair) -> None:
    server = nacl.public.PrivateKey.generate()
    server_xkey = CurveKeyPair(bytes(server)).public_key
    raw_recipient = nacl.public.PublicKey(decode_public(recipient.public_key)[1])
    nonce = bytes(range(24))
    foreign = b"xkv1" + bytes(nacl.public.Box(server, raw_recipient).encrypt(b"req", nonce))
    assert recipient.open(foreign, server_xkey) == b"req"


def test_open_accepts_bytearray_and_memoryview(
    sender: CurveKeyPair, recipient: CurveKeyPair
) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    assert recipient.open(bytearray(sealed), sender.public_key) == b"data"  # type: ignore[arg-type]
    assert recipient.open(memoryview(sealed), sender.public_key) == b"data"  # type: ignore[arg-type]


def test_open_detects_a_flipped_byte_anywhere_after_the_tag(
    sender: CurveKeyPair, recipient: CurveKeyPair
) -> None:
    sealed = sender.seal(b"some plaintext", recipient.public_key)
    for index in range(len(VERSION_TAG), len(sealed)):
        with pytest.raises(XKeyError, match="did not open"):
            recipient.open(_flip(sealed, index), sender.public_key)


def test_open_with_wrong_version_tag_raises(sender: CurveKeyPair, recipient: CurveKeyPair) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    for bad in (b"xkv2" + sealed[4:], b"XKV1" + sealed[4:], _flip(sealed, 0)):
        with pytest.raises(XKeyError, match="version tag"):
            recipient.open(bad, sender.public_key)


def test_open_truncated_box_raises(sender: CurveKeyPair, recipient: CurveKeyPair) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    for length in (0, 3, 4, HEADER_LEN, OVERHEAD - 1):
        with pytest.raises(XKeyError, match="too short"):
            recipient.open(sealed[:length], sender.public_key)
    with pytest.raises(XKeyError, match="did not open"):
        recipient.open(sealed[:-1], sender.public_key)


def test_open_by_the_wrong_recipient_raises(sender: CurveKeyPair, recipient: CurveKeyPair) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    with pytest.raises(XKeyError, match="did not open"):
        CurveKeyPair.generate().open(sealed, sender.public_key)


def test_open_with_the_wrong_sender_key_raises(
    sender: CurveKeyPair, recipient: CurveKeyPair
) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    with pytest.raises(XKeyError, match="did not open"):
        recipient.open(sealed, CurveKeyPair.generate().public_key)


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "not a key",
        DOCS_CURVE_SEED,
        DOCS_CURVE_PUBLIC[:-1] + ("A" if DOCS_CURVE_PUBLIC[-1] != "A" else "B"),
        KeyPair.generate(Prefix.USER).public_key,
    ],
    ids=["empty", "junk", "seed", "checksum", "user-key"],
)
def test_bad_peer_keys_raise_xkey_error(
    sender: CurveKeyPair, recipient: CurveKeyPair, bad_key: str
) -> None:
    sealed = sender.seal(b"data", recipient.public_key)
    with pytest.raises(XKeyError) as info:
        recipient.open(sealed, bad_key)
    assert DOCS_CURVE_SEED not in str(info.value)
    with pytest.raises(XKeyError):
        sender.seal(b"data", bad_key)


def test_open_refuses_non_bytes(sender: CurveKeyPair, recipient: CurveKeyPair) -> None:
    with pytest.raises(XKeyError):
        recipient.open("xkv1" + "A" * 60, sender.public_key)  # type: ignore[arg-type]


def test_many_peers_still_seal_and_open_correctly(recipient: CurveKeyPair) -> None:
    """More peers than the shared-key cache holds: eviction must not mix keys up."""
    senders = [CurveKeyPair.generate() for _ in range(80)]
    for round_ in range(2):
        for index, peer in enumerate(senders):
            message = f"{round_}:{index}".encode()
            sealed = peer.seal(message, recipient.public_key)
            assert recipient.open(sealed, peer.public_key) == message
            assert peer.open(recipient.seal(message, peer.public_key), recipient.public_key) == (
                message
            )


def test_read_curve_seed_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "callout.xk"
    write_seed_file(path, DOCS_CURVE_SEED)
    assert read_curve_seed_file(path).public_key == DOCS_CURVE_PUBLIC


def test_read_curve_seed_file_refuses_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "callout.xk"
    path.write_text(DOCS_CURVE_SEED + "\n")
    path.chmod(0o640)
    with pytest.raises(NkeyError, match=f"chmod 600 {path}"):
        read_curve_seed_file(path)


def test_read_curve_seed_file_refuses_an_ed25519_seed(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    write_seed_file(path, KeyPair.generate(Prefix.USER).seed)
    with pytest.raises(NkeyError, match="curve seed"):
        read_curve_seed_file(path)


def test_read_curve_seed_file_missing_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.xk"
    with pytest.raises(NkeyError, match=str(path)):
        read_curve_seed_file(path)
