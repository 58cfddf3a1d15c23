"""Room keys: sealing to a member's U... key and opening with its seed."""

from __future__ import annotations

import pytest

from unibus.client.crypto import (
    ROOM_KEY_BYTES,
    SEALED_ROOM_KEY_BYTES,
    CryptoError,
    new_room_key,
    open_room_key,
    seal_room_key,
)
from unibus.core.errors import IdentityError
from unibus.core.nkeys import KeyPair, Prefix

ALICE = KeyPair.generate(Prefix.USER)
BOB = KeyPair.generate(Prefix.USER)


def reason(exc_info: pytest.ExceptionInfo[CryptoError]) -> str:
    return exc_info.value.reason


class TestNewRoomKey:
    def test_is_32_fresh_random_bytes(self) -> None:
        keys = {new_room_key() for _ in range(64)}
        assert len(keys) == 64
        assert all(len(key) == ROOM_KEY_BYTES == 32 for key in keys)


class TestSealing:
    def test_round_trip(self) -> None:
        key = new_room_key()
        sealed = seal_room_key(key, ALICE.public_key)
        assert len(sealed) == SEALED_ROOM_KEY_BYTES == 80
        assert key not in sealed
        assert open_room_key(sealed, ALICE) == key

    def test_each_seal_is_a_new_box(self) -> None:
        """An ephemeral key per seal: two boxes of the same key share nothing visible."""
        key = new_room_key()
        first, second = seal_room_key(key, ALICE.public_key), seal_room_key(key, ALICE.public_key)
        assert first != second
        assert open_room_key(first, ALICE) == open_room_key(second, ALICE) == key

    def test_any_member_seals_to_any_user_key_it_knows(self) -> None:
        """Only the public U... key is needed to seal; only the recipient's seed opens."""
        key = new_room_key()
        for recipient in (ALICE, BOB):
            assert open_room_key(seal_room_key(key, recipient.public_key), recipient) == key

    def test_hex_user_key_is_accepted(self) -> None:
        from unibus.core.nkeys import user_key_ed25519

        key = new_room_key()
        hex_key = user_key_ed25519(ALICE.public_key).hex()
        assert open_room_key(seal_room_key(key, hex_key), ALICE) == key

    def test_identity_loaded_from_its_seed_opens(self) -> None:
        key = new_room_key()
        sealed = seal_room_key(key, ALICE.public_key)
        assert open_room_key(sealed, KeyPair.from_seed(ALICE.seed)) == key

    @pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
    def test_refuses_a_room_key_of_the_wrong_size(self, size: int) -> None:
        with pytest.raises(CryptoError) as info:
            seal_room_key(b"k" * size, ALICE.public_key)
        assert reason(info) == "bad_room_key"

    def test_refuses_a_room_key_that_is_not_bytes(self) -> None:
        with pytest.raises(CryptoError) as info:
            seal_room_key("k" * 32, ALICE.public_key)  # type: ignore[arg-type]
        assert reason(info) == "bad_room_key"

    @pytest.mark.parametrize(
        "recipient",
        [
            "",
            "not a key",
            ALICE.seed,
            KeyPair.generate(Prefix.ACCOUNT).public_key,
            ALICE.public_key[:-1] + ("A" if ALICE.public_key[-1] != "A" else "B"),
            "00" * 32,  # the identity point: small order, refused by libsodium
            "ff" * 32,  # not a point on the curve
        ],
        ids=["empty", "garbage", "seed", "account-key", "bad-checksum", "small-order", "off-curve"],
    )
    def test_refuses_an_unusable_recipient(self, recipient: str) -> None:
        with pytest.raises(CryptoError) as info:
            seal_room_key(new_room_key(), recipient)
        assert reason(info) == "bad_recipient"
        assert ALICE.seed not in str(info.value)


class TestOpeningRefusals:
    def test_another_identity_cannot_open(self) -> None:
        sealed = seal_room_key(new_room_key(), ALICE.public_key)
        with pytest.raises(CryptoError) as info:
            open_room_key(sealed, BOB)
        assert reason(info) == "open_failed"

    @pytest.mark.parametrize("length", [0, 1, 32, 48, 79, 81, 200])
    def test_wrong_length_is_malformed(self, length: int) -> None:
        sealed = seal_room_key(new_room_key(), ALICE.public_key)
        data = (sealed * 3)[:length]
        with pytest.raises(CryptoError) as info:
            open_room_key(data, ALICE)
        assert reason(info) == "malformed"

    def test_truncated_box_is_refused(self) -> None:
        sealed = seal_room_key(new_room_key(), ALICE.public_key)
        with pytest.raises(CryptoError) as info:
            open_room_key(sealed[:-1], ALICE)
        assert reason(info) == "malformed"

    def test_every_tampered_byte_is_refused(self) -> None:
        """The ephemeral key, the MAC and the ciphertext are all covered."""
        sealed = seal_room_key(new_room_key(), ALICE.public_key)
        for position in range(len(sealed)):
            tampered = bytearray(sealed)
            tampered[position] ^= 0x01
            with pytest.raises(CryptoError) as info:
                open_room_key(bytes(tampered), ALICE)
            assert reason(info) == "open_failed"

    def test_not_bytes_is_malformed(self) -> None:
        with pytest.raises(CryptoError) as info:
            open_room_key("x" * 80, ALICE)  # type: ignore[arg-type]
        assert reason(info) == "malformed"

    def test_identity_must_be_a_key_pair(self) -> None:
        sealed = seal_room_key(new_room_key(), ALICE.public_key)
        with pytest.raises(CryptoError) as info:
            open_room_key(sealed, ALICE.seed)  # type: ignore[arg-type]
        assert reason(info) == "bad_identity"

    def test_crypto_error_is_an_identity_error(self) -> None:
        assert issubclass(CryptoError, IdentityError)
