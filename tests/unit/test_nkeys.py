"""nkeys codec, Ed25519 key pairs, user-key canonicalisation and seed files.

Reference values come from outside this code base: the NATS docs' user pair, the
nats-io/nkeys.py test suite, a real nats-py CONNECT signature observed by the callout
spike, and an independent bit-by-bit CRC-16 / encoder written in this file.
"""

from __future__ import annotations

import base64
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unibus.core import nkeys
from unibus.core.errors import NkeyError
from unibus.core.nkeys import (
    KeyPair,
    Prefix,
    canonical_user_key,
    decode_public,
    decode_seed,
    encode_public,
    encode_seed,
    read_seed_file,
    user_key_ed25519,
    verify,
    write_seed_file,
)

# nats.docs "NKey authentication": `nk -gen user -pubout`
DOCS_USER_SEED = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
DOCS_USER_PUBLIC = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
# nats-io/nkeys.py tests/nkeys_test.py
NKEYS_PY_SEED = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
NKEYS_PY_PUBLIC = "UCK5N7N66OBOINFXAYC2ACJQYFSOD4VYNU6APEJTAVFZB2SVHLKGEW7L"
NKEYS_PY_NONCE = b"PXoWU7zWAMt75FY"
NKEYS_PY_SIG_B64 = (
    "ZaAiVDgB5CeYoXoQ7cBCmq+ZllzUnGUoDVb8C7PilWvCs8XKfUchAUhz2P4BYAF++Dg3w05CqyQFRDiGL6LrDw=="
)
# callout spike results.txt A2: nats-py 2.16 signed the INFO nonce, nats-server 2.15.1 forwarded it
ALICE_PUBLIC = "UDHI33LF6I3QCLGBLC7BE6KBRAC2FG4R2CMLG3X35C75L3HTVR7F4FQ7"
ALICE_NONCE = b"ugLABPMjS6_TVNM"
ALICE_SIG_B64 = (
    "DVfNmybbaMN3cAdx9+UkxITc19N4hG5qNaMzewg1yJwFfNmvWd+0C9JDRh5q8Snojbu5g+4XshArMhyx2HkVCw=="
)
# The account key from the notes' config examples (authcallout.md 1.5).
NOTES_ACCOUNT_PUBLIC = "ACKLDEV3JQQXD27QS7Z4PG5GDCUSQDDJLU34BPXZKWHNHN4WJKPJKKDW"

PUBLIC_PREFIXES = [
    Prefix.SERVER,
    Prefix.CLUSTER,
    Prefix.OPERATOR,
    Prefix.ACCOUNT,
    Prefix.USER,
    Prefix.CURVE,
]
SIGNING_PREFIXES = [p for p in PUBLIC_PREFIXES if p != Prefix.CURVE]
LETTERS = {
    Prefix.SERVER: "N",
    Prefix.CLUSTER: "C",
    Prefix.OPERATOR: "O",
    Prefix.ACCOUNT: "A",
    Prefix.USER: "U",
    Prefix.CURVE: "X",
}


# -- an independent reference implementation ---------------------------------------------


def ref_crc16(data: bytes) -> int:
    """CRC-16/XMODEM one bit at a time, straight from the definition."""
    crc = 0
    for byte in data:
        for bit in range(7, -1, -1):
            top = (crc >> 15) & 1
            crc = (crc << 1) & 0xFFFF
            if top ^ ((byte >> bit) & 1):
                crc ^= 0x1021
    return crc


def ref_encode(body: bytes) -> str:
    return base64.b32encode(body + ref_crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def ref_public(prefix_byte: int, raw: bytes) -> str:
    return ref_encode(bytes([prefix_byte]) + raw)


def ref_seed(role_byte: int, raw: bytes) -> str:
    return ref_encode(bytes([0x90 | (role_byte >> 5), (role_byte & 0x1F) << 3]) + raw)


def flip_char(text: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    replacement = alphabet[(alphabet.index(text[index]) + 1) % 32]
    return text[:index] + replacement + text[index + 1 :]


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240521)


# -- checksum and codec ---------------------------------------------------------------------


def test_reference_crc16_matches_the_xmodem_check_value() -> None:
    assert ref_crc16(b"123456789") == 0x31C3


def test_crc16_matches_bitwise_reference_on_random_inputs(rng: random.Random) -> None:
    for length in range(64):
        data = rng.randbytes(length)
        assert nkeys._crc16(data) == ref_crc16(data)


@pytest.mark.parametrize("prefix", PUBLIC_PREFIXES, ids=lambda p: p.name)
def test_encode_public_matches_reference_encoder_and_letter(
    prefix: Prefix, rng: random.Random
) -> None:
    raw = rng.randbytes(32)
    key = encode_public(prefix, raw)
    assert key == ref_public(prefix.value, raw)
    assert len(key) == 56
    assert key[0] == LETTERS[prefix] == prefix.letter


@pytest.mark.parametrize("prefix", PUBLIC_PREFIXES, ids=lambda p: p.name)
def test_public_key_round_trips_for_every_prefix(prefix: Prefix, rng: random.Random) -> None:
    raw = rng.randbytes(32)
    assert decode_public(encode_public(prefix, raw)) == (prefix, raw)
    assert decode_public(encode_public(prefix, raw), prefix) == (prefix, raw)


@pytest.mark.parametrize("prefix", PUBLIC_PREFIXES, ids=lambda p: p.name)
def test_seed_round_trips_for_every_prefix(prefix: Prefix, rng: random.Random) -> None:
    raw = rng.randbytes(32)
    seed = encode_seed(prefix, raw)
    assert seed == ref_seed(prefix.value, raw)
    assert len(seed) == 58
    assert seed[:2] == "S" + LETTERS[prefix]
    assert decode_seed(seed) == (prefix, raw)


def test_prefix_values_are_the_nkeys_bytes() -> None:
    assert {p.name: p.value for p in Prefix} == {
        "SEED": 144,
        "PRIVATE": 120,
        "SERVER": 104,
        "CLUSTER": 16,
        "OPERATOR": 112,
        "ACCOUNT": 0,
        "USER": 160,
        "CURVE": 184,
    }


def test_decode_public_accepts_a_known_account_key() -> None:
    prefix, raw = decode_public(NOTES_ACCOUNT_PUBLIC, Prefix.ACCOUNT)
    assert prefix == Prefix.ACCOUNT
    assert encode_public(prefix, raw) == NOTES_ACCOUNT_PUBLIC


@pytest.mark.parametrize("index", [0, 1, 30, 54, 55])
def test_decode_public_with_flipped_character_raises(index: int) -> None:
    with pytest.raises(NkeyError):
        decode_public(flip_char(DOCS_USER_PUBLIC, index))


def test_decode_public_with_flipped_checksum_raises() -> None:
    raw = bytearray(base64.b32decode(DOCS_USER_PUBLIC))
    raw[-1] ^= 0x01
    with pytest.raises(NkeyError, match="checksum"):
        decode_public(base64.b32encode(bytes(raw)).decode().rstrip("="))


def test_decode_public_with_unexpected_prefix_names_both_roles() -> None:
    with pytest.raises(NkeyError, match=r"expected a user key \(U\.\.\.\), got an? account key"):
        decode_public(NOTES_ACCOUNT_PUBLIC, Prefix.USER)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        DOCS_USER_PUBLIC[:-1],
        DOCS_USER_PUBLIC + "A",
        DOCS_USER_PUBLIC.lower(),
        DOCS_USER_PUBLIC[:-2] + "==",
        " " + DOCS_USER_PUBLIC,
        DOCS_USER_PUBLIC[:-1] + "1",
        "U" * 56,
    ],
    ids=["empty", "short", "long", "lowercase", "padded", "whitespace", "digit1", "junk"],
)
def test_decode_public_rejects_malformed_strings(bad: str) -> None:
    with pytest.raises(NkeyError):
        decode_public(bad)


@pytest.mark.parametrize("prefix_byte", [Prefix.SEED.value, Prefix.PRIVATE.value, 8, 255])
def test_decode_public_rejects_non_public_prefix_bytes(prefix_byte: int) -> None:
    with pytest.raises(NkeyError, match="prefix"):
        decode_public(ref_public(prefix_byte, bytes(32)))


def test_decode_public_rejects_non_string_input() -> None:
    with pytest.raises(NkeyError):
        decode_public(DOCS_USER_PUBLIC.encode())  # type: ignore[arg-type]


def test_decode_public_given_a_seed_refuses_without_echoing_it() -> None:
    with pytest.raises(NkeyError, match="seed") as info:
        decode_public(DOCS_USER_SEED)
    assert DOCS_USER_SEED not in str(info.value)


def test_encode_public_rejects_wrong_length_and_seed_prefix() -> None:
    with pytest.raises(NkeyError):
        encode_public(Prefix.USER, bytes(31))
    with pytest.raises(NkeyError):
        encode_public(Prefix.SEED, bytes(32))
    with pytest.raises(NkeyError):
        encode_seed(Prefix.PRIVATE, bytes(32))
    with pytest.raises(NkeyError):
        encode_seed(Prefix.USER, bytes(33))


def test_decode_seed_with_flipped_checksum_raises_without_echoing_it() -> None:
    bad = flip_char(DOCS_USER_SEED, 40)
    with pytest.raises(NkeyError, match="checksum") as info:
        decode_seed(bad)
    assert bad not in str(info.value)
    assert DOCS_USER_SEED[2:20] not in str(info.value)


def test_decode_seed_rejects_a_public_key() -> None:
    with pytest.raises(NkeyError):
        decode_seed(DOCS_USER_PUBLIC)


def test_decode_seed_rejects_unknown_role_and_non_canonical_role_bits() -> None:
    with pytest.raises(NkeyError, match="role"):
        decode_seed(ref_seed(8, bytes(32)))  # 'B' is no nkeys role
    canonical = bytes([0x90 | (Prefix.USER >> 5), (Prefix.USER & 0x1F) << 3])
    with pytest.raises(NkeyError):
        decode_seed(ref_encode(bytes([canonical[0], canonical[1] | 0x01]) + bytes(32)))
    with pytest.raises(NkeyError):  # first byte is not 'S'
        decode_seed(ref_encode(bytes([0x80, canonical[1]]) + bytes(32)))


# -- key pairs ------------------------------------------------------------------------------


def test_docs_user_seed_yields_the_documented_public_key() -> None:
    assert KeyPair.from_seed(DOCS_USER_SEED).public_key == DOCS_USER_PUBLIC


def test_nkeys_py_seed_yields_its_public_key_and_signature() -> None:
    kp = KeyPair.from_seed(NKEYS_PY_SEED)
    assert kp.public_key == NKEYS_PY_PUBLIC
    assert kp.prefix == Prefix.USER
    assert kp.seed == NKEYS_PY_SEED
    assert kp.sign(NKEYS_PY_NONCE) == base64.b64decode(NKEYS_PY_SIG_B64)


def test_verify_accepts_a_real_nats_py_connect_signature() -> None:
    assert verify(ALICE_PUBLIC, ALICE_NONCE, base64.b64decode(ALICE_SIG_B64))
    assert not verify(ALICE_PUBLIC, ALICE_NONCE + b"x", base64.b64decode(ALICE_SIG_B64))


@pytest.mark.parametrize("prefix", SIGNING_PREFIXES, ids=lambda p: p.name)
def test_generated_key_pair_round_trips_through_its_seed(prefix: Prefix) -> None:
    kp = KeyPair.generate(prefix)
    assert kp.prefix == prefix
    assert kp.public_key[0] == LETTERS[prefix]
    assert kp.seed[:2] == "S" + LETTERS[prefix]
    again = KeyPair.from_seed(kp.seed)
    assert again.public_key == kp.public_key
    signature = kp.sign(b"payload")
    assert len(signature) == 64
    assert again.verify(b"payload", signature)
    assert verify(kp.public_key, b"payload", signature)


def test_generate_refuses_curve_and_seed_prefixes() -> None:
    with pytest.raises(NkeyError, match="CurveKeyPair"):
        KeyPair.generate(Prefix.CURVE)
    with pytest.raises(NkeyError):
        KeyPair.generate(Prefix.SEED)


def test_from_seed_refuses_a_curve_seed() -> None:
    with pytest.raises(NkeyError, match="CURVE"):
        KeyPair.from_seed(encode_seed(Prefix.CURVE, bytes(32)))


def test_from_seed_accepts_bytes_and_surrounding_whitespace() -> None:
    kp = KeyPair.from_seed(b"  " + DOCS_USER_SEED.encode() + b"\n")
    assert kp.public_key == DOCS_USER_PUBLIC


def test_from_seed_rejects_non_ascii_bytes_and_other_types() -> None:
    with pytest.raises(NkeyError):
        KeyPair.from_seed(DOCS_USER_SEED.encode() + b"\xff")
    with pytest.raises(NkeyError):
        KeyPair.from_seed(None)  # type: ignore[arg-type]


def test_key_pair_repr_shows_the_public_key_and_never_the_seed() -> None:
    kp = KeyPair.from_seed(DOCS_USER_SEED)
    assert DOCS_USER_PUBLIC in repr(kp)
    assert DOCS_USER_SEED not in repr(kp)
    assert DOCS_USER_SEED not in str(kp)


def test_verify_returns_false_for_tampered_data_and_signature() -> None:
    kp = KeyPair.generate(Prefix.USER)
    signature = kp.sign(b"nonce")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(kp.public_key, b"nonce!", signature)
    assert not verify(kp.public_key, b"nonce", flipped)
    assert not verify(kp.public_key, b"nonce", signature[:63])
    assert not verify(kp.public_key, b"nonce", b"")
    assert not verify(KeyPair.generate(Prefix.USER).public_key, b"nonce", signature)
    assert not kp.verify(b"nonce", flipped)


def test_verify_raises_for_malformed_or_curve_key() -> None:
    with pytest.raises(NkeyError):
        verify("UNOTAKEY", b"x", bytes(64))
    with pytest.raises(NkeyError, match="curve"):
        verify(encode_public(Prefix.CURVE, bytes(32)), b"x", bytes(64))


def test_verify_returns_false_for_an_all_zero_public_key() -> None:
    # A small-order point: libsodium refuses it instead of accepting forgeries.
    assert not verify(encode_public(Prefix.USER, bytes(32)), b"x", bytes(64))


# -- user keys ------------------------------------------------------------------------------


def test_canonical_user_key_converts_lower_and_upper_hex() -> None:
    raw = decode_public(DOCS_USER_PUBLIC)[1]
    assert canonical_user_key(raw.hex()) == DOCS_USER_PUBLIC
    assert canonical_user_key(raw.hex().upper()) == DOCS_USER_PUBLIC


def test_canonical_user_key_strips_surrounding_whitespace() -> None:
    raw = decode_public(DOCS_USER_PUBLIC)[1]
    assert canonical_user_key(f" \t{raw.hex()}\n") == DOCS_USER_PUBLIC
    assert canonical_user_key(f"  {DOCS_USER_PUBLIC}\n") == DOCS_USER_PUBLIC


def test_canonical_user_key_keeps_a_valid_u_key() -> None:
    assert canonical_user_key(DOCS_USER_PUBLIC) == DOCS_USER_PUBLIC


def test_user_key_ed25519_returns_the_same_bytes_for_both_forms() -> None:
    raw = decode_public(DOCS_USER_PUBLIC)[1]
    assert user_key_ed25519(DOCS_USER_PUBLIC) == raw
    assert user_key_ed25519(raw.hex()) == raw
    assert len(raw) == 32


@pytest.mark.parametrize(
    "bad",
    [
        "ab" * 31 + "a",  # 63 hex digits
        "ab" * 32 + "a",  # 65 hex digits
        "g" + "a" * 63,  # non-hex digit
        "0x" + "a" * 62,
        "aa " * 21 + "a",  # inner whitespace
        "",
        "   ",
        NOTES_ACCOUNT_PUBLIC,  # an account key given as a user key
        flip_char(DOCS_USER_PUBLIC, 20),
        DOCS_USER_PUBLIC.lower(),
    ],
    ids=[
        "hex63",
        "hex65",
        "nonhex",
        "0x",
        "inner-space",
        "empty",
        "blank",
        "account-key",
        "flipped-checksum",
        "lowercase-u",
    ],
)
def test_canonical_user_key_refuses_and_names_accepted_forms(bad: str) -> None:
    with pytest.raises(NkeyError, match="accepted forms") as info:
        canonical_user_key(bad)
    assert "64-digit hex" in str(info.value)
    with pytest.raises(NkeyError):
        user_key_ed25519(bad)


def test_canonical_user_key_given_a_seed_warns_without_echoing_it() -> None:
    with pytest.raises(NkeyError, match="seed") as info:
        canonical_user_key(DOCS_USER_SEED)
    assert DOCS_USER_SEED not in str(info.value)


def test_canonical_user_key_refuses_non_strings() -> None:
    with pytest.raises(NkeyError, match="accepted forms"):
        canonical_user_key(None)  # type: ignore[arg-type]


# -- seed files -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask of 0 shows the mode the code asked for, not one the umask trimmed."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_write_seed_file_creates_mode_0600_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    write_seed_file(path, DOCS_USER_SEED)
    assert _mode(path) == 0o600
    assert path.read_text() == DOCS_USER_SEED + "\n"
    assert read_seed_file(path).public_key == DOCS_USER_PUBLIC


def test_write_seed_file_opens_exclusively_with_0600_and_never_chmods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, int, int]] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        calls.append((path, flags, mode))
        return real_open(path, flags, mode, **kwargs)

    def no_chmod(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("chmod after write leaves a window with a readable seed")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    write_seed_file(tmp_path / "a.nk", DOCS_USER_SEED)
    write_seed_file(tmp_path / "a.nk", NKEYS_PY_SEED, overwrite=True)
    creates = [c for c in calls if c[1] & os.O_CREAT]
    assert len(creates) == 2
    for _, flags, mode in creates:
        assert flags & os.O_EXCL
        assert mode == 0o600


def test_write_seed_file_refuses_an_existing_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    path.write_text("keep me")
    with pytest.raises(NkeyError, match="--force") as info:
        write_seed_file(path, DOCS_USER_SEED)
    assert "remove" in str(info.value)
    assert DOCS_USER_SEED not in str(info.value)
    assert path.read_text() == "keep me"


def test_write_seed_file_refuses_a_symlink_even_if_dangling(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "user.nk"
    link.symlink_to(target)
    with pytest.raises(NkeyError):
        write_seed_file(link, DOCS_USER_SEED)
    assert not target.exists()


@pytest.mark.usefixtures("permissive_umask")
def test_write_seed_file_with_overwrite_replaces_atomically_with_mode_0600(
    tmp_path: Path,
) -> None:
    path = tmp_path / "user.nk"
    path.write_text("old")
    path.chmod(0o644)
    write_seed_file(path, DOCS_USER_SEED, overwrite=True)
    assert path.read_text() == DOCS_USER_SEED + "\n"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.nk"]


def test_write_seed_file_refuses_a_malformed_seed_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    bad = flip_char(DOCS_USER_SEED, 30)
    with pytest.raises(NkeyError) as info:
        write_seed_file(path, bad)
    assert bad not in str(info.value)
    assert not path.exists()


def test_write_seed_file_into_a_missing_directory_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "user.nk"
    with pytest.raises(NkeyError, match="missing"):
        write_seed_file(path, DOCS_USER_SEED)
    with pytest.raises(NkeyError, match="missing"):
        write_seed_file(path, DOCS_USER_SEED, overwrite=True)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_read_seed_file_refuses_group_or_other_access_with_chmod_hint(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "user.nk"
    path.write_text(DOCS_USER_SEED + "\n")
    path.chmod(mode)
    with pytest.raises(NkeyError, match="chmod 600") as info:
        read_seed_file(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert DOCS_USER_SEED not in str(info.value)


def test_read_seed_file_accepts_owner_read_only(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    write_seed_file(path, DOCS_USER_SEED)
    path.chmod(0o400)
    assert read_seed_file(path).public_key == DOCS_USER_PUBLIC


def test_read_seed_file_missing_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.nk"
    with pytest.raises(NkeyError, match="does not exist") as info:
        read_seed_file(path)
    assert str(path) in str(info.value)


def test_read_seed_file_refuses_a_directory_and_a_fifo(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(NkeyError, match="regular file"):
        read_seed_file(directory)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(NkeyError, match="regular file"):
        read_seed_file(fifo)  # must not block waiting for a writer


def test_read_seed_file_with_junk_does_not_echo_the_content(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    secret_junk = "SUPERSECRETVALUE-not-a-seed"
    path.write_text(secret_junk)
    path.chmod(0o600)
    with pytest.raises(NkeyError) as info:
        read_seed_file(path)
    assert secret_junk not in str(info.value)
    path.write_bytes(b"\xff\xfe" + DOCS_USER_SEED.encode())
    with pytest.raises(NkeyError):
        read_seed_file(path)


def test_read_seed_file_refuses_an_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "user.nk"
    path.write_text(DOCS_USER_SEED + " " * 5000)
    path.chmod(0o600)
    with pytest.raises(NkeyError, match="too large"):
        read_seed_file(path)


def test_read_seed_file_refuses_a_curve_seed(tmp_path: Path) -> None:
    path = tmp_path / "x.nk"
    write_seed_file(path, encode_seed(Prefix.CURVE, bytes(32)))
    with pytest.raises(NkeyError, match=str(path)):
        read_seed_file(path)


# -- cross-check against PyPI nkeys (nats-io/nkeys.py), an independent implementation ------


@pytest.mark.parametrize("prefix", SIGNING_PREFIXES, ids=lambda p: p.name)
def test_pypi_nkeys_agrees_on_public_key_and_signatures(prefix: Prefix) -> None:
    reference = pytest.importorskip("nkeys")
    for _ in range(5):
        ours = KeyPair.generate(prefix)
        theirs = reference.from_seed(bytearray(ours.seed.encode()))
        assert theirs.public_key.decode() == ours.public_key
        message = os.urandom(40)
        assert theirs.sign(message) == ours.sign(message)  # Ed25519 is deterministic
        assert theirs.verify(message, ours.sign(message))
        assert verify(ours.public_key, message, theirs.sign(message))
