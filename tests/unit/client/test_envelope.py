"""Room message envelopes: round trips, one targeted forgery per refusal, replay, fuzz."""

from __future__ import annotations

import copy
import os
import pickle
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest

from unibus.client import envelope as envmod
from unibus.client.crypto import new_room_key
from unibus.client.envelope import (
    MAX_BATCH,
    MAX_ENVELOPE_BYTES,
    MAX_PLAINTEXT_BYTES,
    REASONS,
    Envelope,
    EnvelopeError,
    Opened,
    Opener,
    Sealer,
    decode_envelope,
    msg_id,
)
from unibus.core.errors import IdentityError
from unibus.core.naming import new_room_id
from unibus.core.nkeys import KeyPair, Prefix

ALICE = KeyPair.generate(Prefix.USER)
BOB = KeyPair.generate(Prefix.USER)
MALLORY = KeyPair.generate(Prefix.USER)  # a member who knows the room key and turns bad
OUTSIDER = KeyPair.generate(Prefix.USER)
ROOM = new_room_id()
OTHER_ROOM = new_room_id()
KEY1, KEY1B, KEY2 = new_room_key(), new_room_key(), new_room_key()
KEYS = {(1, "key1"): KEY1, (1, "key1b"): KEY1B, (2, "key2"): KEY2}
MEMBERS = {
    1: {ALICE.public_key, BOB.public_key, MALLORY.public_key},
    2: {ALICE.public_key, BOB.public_key},  # Mallory was removed at epoch 2
}


def room_key(epoch: int, key_id: str) -> bytes | None:
    return KEYS.get((epoch, key_id))


def is_member(user: str, epoch: int) -> bool:
    return user in MEMBERS.get(epoch, set())


def open_one(opener: Opener, data: bytes) -> Opened:
    return opener.open(data, room_key=room_key, is_member=is_member)


def refusal(opener: Opener, data: Any, **callbacks: Any) -> str:
    with pytest.raises(EnvelopeError) as info:
        opener.open(
            data,
            room_key=callbacks.get("room_key", room_key),
            is_member=callbacks.get("is_member", is_member),
        )
    assert info.value.reason in REASONS
    return info.value.reason


def seal(
    n: int, *, sealer: Sealer | None = None, epoch: int = 1, key_id: str = "key1"
) -> list[bytes]:
    sealer = sealer or Sealer(ALICE, ROOM)
    texts = [f"message {i}".encode() for i in range(n)]
    return sealer.seal_batch(texts, epoch=epoch, key_id=key_id, room_key=KEYS[(epoch, key_id)])


def raw(data: bytes) -> Envelope:
    """Decode without the shape checks, to build forgeries."""
    return msgspec.msgpack.decode(data, type=Envelope)


def tamper(data: bytes, **changes: Any) -> bytes:
    return msgspec.msgpack.encode(msgspec.structs.replace(raw(data), **changes))


def flip(value: bytes, position: int = 0) -> bytes:
    out = bytearray(value)
    out[position] ^= 0x01
    return bytes(out)


def forge_batch(
    plaintexts: Sequence[bytes],
    *,
    claimed: KeyPair,
    signer: KeyPair,
    session: bytes | None = None,
    first_seq: int = 1,
    epoch: int = 1,
    key_id: str = "key1",
    room_id: str = ROOM,
    ciphertext: Callable[[bytes, bytes, bytes], bytes] | None = None,
) -> list[bytes]:
    """A batch built like a Sealer does, but claiming ``claimed`` and signed by ``signer``.

    ``ciphertext(plaintext, ad, nonce)`` replaces honest encryption with the room key.
    """
    session = session if session is not None else os.urandom(16)
    key = KEYS[(epoch, key_id)]
    sealed = []
    for i, plaintext in enumerate(plaintexts):
        ad = envmod._associated_data(
            room_id, epoch, key_id, claimed.public_key, session, first_seq + i
        )
        nonce = os.urandom(24)
        ct = (
            ciphertext(plaintext, ad, nonce)
            if ciphertext
            else envmod._aead_encrypt(plaintext, ad, nonce, key)
        )
        sealed.append((nonce, ct))
    envelopes = envmod._assemble(
        room_id=room_id,
        epoch=epoch,
        key_id=key_id,
        sender=claimed.public_key,
        session=session,
        first_seq=first_seq,
        sealed=sealed,
        sign=signer.sign,
    )
    return [msgspec.msgpack.encode(env) for env in envelopes]


# -- round trips ----------------------------------------------------------------------------------


class TestRoundTrip:
    @pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1024])
    @pytest.mark.parametrize("order", ["in-order", "shuffled"])
    def test_batch_opens_in_any_order(self, size: int, order: str) -> None:
        sealer = Sealer(ALICE, ROOM)
        texts = [os.urandom(i % 50) + f"#{i}".encode() for i in range(size)]
        batch = sealer.seal_batch(texts, epoch=1, key_id="key1", room_key=KEY1)
        assert len(batch) == size
        indices = list(range(size))
        if order == "shuffled":
            random.Random(size).shuffle(indices)
        opener = Opener(ROOM)
        for i in indices:
            opened = open_one(opener, batch[i])
            assert opened == Opened(
                plaintext=texts[i],
                sender=ALICE.public_key,
                room_id=ROOM,
                epoch=1,
                key_id="key1",
                seq=i + 1,
                msg_id=msg_id(decode_envelope(batch[i])),
            )
            assert opened.msg_id.startswith(f"{sealer.session.hex()}-{i + 1}-")

    def test_every_leaf_of_every_small_tree_verifies_alone(self) -> None:
        """Each envelope proves itself from an empty cache: path + one signature check."""
        for size in range(1, 41):
            for data in seal(size):
                assert open_one(Opener(ROOM), data).sender == ALICE.public_key

    @pytest.mark.parametrize("size", [*range(1, 34), 64, 100, 1000, 1024])
    def test_cached_nodes_are_exactly_the_subtrees_they_name(self, size: int) -> None:
        """The receiver names nodes by leaf range; a wrong name would be a wrong proof."""
        batch = seal(size)
        opener = Opener(ROOM, max_cached_nodes=1 << 16)
        order = list(range(size))
        random.Random(7).shuffle(order)
        for i in order:
            open_one(opener, batch[i])
        [nodes] = opener._batches.values()
        envs = [raw(data) for data in batch]
        leaves = [
            envmod._leaf_hash(
                envmod._associated_data(ROOM, e.epoch, e.key_id, e.sender, e.session, e.seq),
                e.nonce,
                e.ciphertext,
            )
            for e in envs
        ]
        assert len(nodes) == 2 * size - 1  # every node of the tree, each under one name
        for name, digest in nodes.items():
            start, end = divmod(name, envmod._SPAN)
            assert digest == envmod._merkle(leaves[start:end])[0]
        assert nodes[size] == envmod._merkle(leaves)[0]  # the root: leaves 0..size

    def test_path_lengths_match_the_tree(self) -> None:
        for size in range(1, 130):
            _, paths = envmod._merkle([bytes([i % 256]) * 32 for i in range(size)])
            assert [len(p) for p in paths] == [envmod._path_length(i, size) for i in range(size)]
        assert max(envmod._path_length(i, MAX_BATCH) for i in range(MAX_BATCH)) == 10

    def test_empty_and_largest_messages(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        big = os.urandom(MAX_PLAINTEXT_BYTES)
        batch = sealer.seal_batch([b"", big], epoch=1, key_id="key1", room_key=KEY1)
        assert len(batch[1]) <= MAX_ENVELOPE_BYTES
        opener = Opener(ROOM)
        assert open_one(opener, batch[0]).plaintext == b""
        assert open_one(opener, batch[1]).plaintext == big

    def test_sequence_numbers_continue_across_batches(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        opener = Opener(ROOM)
        seqs = [open_one(opener, d).seq for _ in range(3) for d in seal(5, sealer=sealer)]
        assert seqs == list(range(1, 16))

    def test_each_sealer_has_its_own_session(self) -> None:
        sessions = {Sealer(ALICE, ROOM).session for _ in range(32)}
        assert len(sessions) == 32
        assert all(len(s) == 16 for s in sessions)

    def test_ids_returned_with_the_envelopes(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        pairs = sealer.seal_batch_with_ids([b"a", b"b"], epoch=1, key_id="key1", room_key=KEY1)
        for i, (ident, data) in enumerate(pairs, start=1):
            envelope = decode_envelope(data)
            expected = f"{sealer.session.hex()}-{i}-{envelope.nonce[:8].hex()}"
            assert ident == msg_id(envelope) == expected

    def test_epochs_and_key_ids_select_the_key(self) -> None:
        opener = Opener(ROOM)
        for epoch, key_id in KEYS:
            [data] = seal(1, epoch=epoch, key_id=key_id)
            opened = open_one(opener, data)
            assert (opened.epoch, opened.key_id) == (epoch, key_id)

    def test_signed_batch_bytes_are_never_text(self) -> None:
        """Clients sign the NATS connect nonce as UTF-8; a batch message can never be one."""
        message = envmod._batch_message(
            ROOM, 1, "key1", ALICE.public_key, b"s" * 16, 1, 1, b"r" * 32
        )
        assert message.startswith(b"unibus-msg-batch-v1\n\x99")
        with pytest.raises(UnicodeDecodeError):
            message.decode("utf-8")

    def test_envelope_is_a_msgpack_array(self) -> None:
        [data] = seal(1)
        assert data[0] == 0x90 | len(Envelope.__struct_fields__)
        assert isinstance(msgspec.msgpack.decode(data), list)

    def test_other_members_open_each_others_messages(self) -> None:
        opener = Opener(ROOM)
        for who in (ALICE, BOB, MALLORY):
            [data] = Sealer(who, ROOM).seal_batch([b"hi"], epoch=1, key_id="key1", room_key=KEY1)
            assert open_one(opener, data).sender == who.public_key


# -- publisher refusals and sequence safety ------------------------------------------------------


class TestSealer:
    @pytest.mark.parametrize("count", [0, MAX_BATCH + 1])
    def test_batch_size_bounds(self, count: int) -> None:
        with pytest.raises(ValueError, match="batch holds"):
            Sealer(ALICE, ROOM).seal_batch([b"x"] * count, epoch=1, key_id="key1", room_key=KEY1)

    def test_oversized_message(self) -> None:
        with pytest.raises(ValueError, match="at most"):
            Sealer(ALICE, ROOM).seal_batch(
                [b"x" * (MAX_PLAINTEXT_BYTES + 1)], epoch=1, key_id="key1", room_key=KEY1
            )

    def test_message_must_be_bytes(self) -> None:
        with pytest.raises(TypeError):
            Sealer(ALICE, ROOM).seal_batch(["text"], epoch=1, key_id="key1", room_key=KEY1)  # type: ignore[list-item]

    @pytest.mark.parametrize(
        ("epoch", "key_id", "key"),
        [
            (0, "key1", KEY1),
            (True, "key1", KEY1),
            (1, "", KEY1),
            (1, "a.b", KEY1),
            (1, "k" * 65, KEY1),
            (1, "key1", KEY1[:31]),
            (1, "key1", KEY1 + b"x"),
        ],
    )
    def test_bad_epoch_key_id_or_key(self, epoch: int, key_id: str, key: bytes) -> None:
        with pytest.raises(ValueError, match=r"epoch|key id|room key"):
            Sealer(ALICE, ROOM).seal_batch([b"x"], epoch=epoch, key_id=key_id, room_key=key)

    def test_needs_a_user_key_pair_and_a_room_id(self) -> None:
        with pytest.raises(ValueError, match="user key"):
            Sealer(KeyPair.generate(Prefix.ACCOUNT), ROOM)
        with pytest.raises(ValueError, match="room"):
            Sealer(ALICE, "Not-A-Room")

    def test_refused_batch_consumes_no_sequence_numbers(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        with pytest.raises(ValueError, match="room key"):
            sealer.seal_batch([b"x"], epoch=1, key_id="key1", room_key=b"short")
        assert raw(seal(1, sealer=sealer)[0]).seq == 1

    def test_cannot_be_copied_or_pickled(self) -> None:
        """A copy would publish a second message under the same (session, seq)."""
        sealer = Sealer(ALICE, ROOM)
        for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="never repeat"):
                duplicate(sealer)

    def test_concurrent_batches_never_share_a_sequence_number(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        results: list[list[bytes]] = []

        def work() -> None:
            for _ in range(10):
                results.append(seal(7, sealer=sealer))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seqs = sorted(raw(d).seq for batch in results for d in batch)
        assert seqs == list(range(1, 6 * 10 * 7 + 1))

    def test_nonces_are_fresh(self) -> None:
        nonces = {raw(d).nonce for d in seal(256)}
        assert len(nonces) == 256


# -- one targeted forgery per refusal -------------------------------------------------------------


class TestMalformed:
    @pytest.mark.parametrize(
        "data",
        [b"", b"\x00", b"\x90", b"\xc1", b"garbage" * 10, bytes(200)],
        ids=["empty", "zero", "empty-array", "reserved-byte", "text", "zeros"],
    )
    def test_garbage(self, data: bytes) -> None:
        assert refusal(Opener(ROOM), data) == "malformed"

    @pytest.mark.parametrize("value", [None, "text", 42, [b"x"]])
    def test_not_bytes(self, value: Any) -> None:
        assert refusal(Opener(ROOM), value) == "malformed"

    def test_oversized_data_is_refused_before_decoding(self) -> None:
        assert refusal(Opener(ROOM), b"\x00" * (MAX_ENVELOPE_BYTES + 1)) == "malformed"

    def test_wrong_version(self) -> None:
        [data] = seal(1)
        assert refusal(Opener(ROOM), tamper(data, v=2)) == "malformed"

    def test_seq_that_disagrees_with_index(self) -> None:
        data = seal(4)[1]
        assert refusal(Opener(ROOM), tamper(data, seq=raw(data).seq + 1)) == "malformed"

    def test_index_that_disagrees_with_seq(self) -> None:
        data = seal(4)[1]
        assert refusal(Opener(ROOM), tamper(data, index=2)) == "malformed"

    def test_index_outside_the_batch(self) -> None:
        data = seal(4)[3]
        assert refusal(Opener(ROOM), tamper(data, batch_size=3)) == "malformed"

    @pytest.mark.parametrize("change", ["drop", "add"])
    def test_path_of_the_wrong_length(self, change: str) -> None:
        data = seal(8)[5]
        path = raw(data).path
        path = path[:-1] if change == "drop" else [*path, path[0]]
        assert refusal(Opener(ROOM), tamper(data, path=path)) == "malformed"

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("session", bytes(15)),
            ("nonce", bytes(23)),
            ("root_signature", bytes(63)),
            ("path", [bytes(31), bytes(32)]),
            ("ciphertext", bytes(15)),
            ("sender", "U" * 10),
            ("epoch", 0),
            ("seq", 0),
            ("batch_size", MAX_BATCH + 1),
            ("path", [bytes(32)] * 11),
        ],
    )
    def test_field_of_the_wrong_shape(self, field: str, value: Any) -> None:
        data = seal(4)[2]
        fields = list(msgspec.msgpack.decode(data))
        fields[Envelope.__struct_fields__.index(field)] = value
        assert refusal(Opener(ROOM), msgspec.msgpack.encode(fields)) == "malformed"

    def test_extra_or_missing_fields(self) -> None:
        [data] = seal(1)
        fields = list(msgspec.msgpack.decode(data))
        opener = Opener(ROOM)
        assert refusal(opener, msgspec.msgpack.encode([*fields, b"extra"])) == "malformed"
        assert refusal(opener, msgspec.msgpack.encode(fields[:-1])) == "malformed"
        assert open_one(opener, data).plaintext == b"message 0"


class TestWrongRoom:
    def test_envelope_moved_to_another_room(self) -> None:
        """Checked before anything else: the callbacks are not even asked."""
        [data] = seal(1)

        def never(*args: Any) -> Any:
            raise AssertionError("consulted for another room's message")

        assert refusal(Opener(OTHER_ROOM), data, room_key=never, is_member=never) == "wrong_room"

    def test_room_field_rewritten_to_the_other_room(self) -> None:
        """The room is in the associated data and the signed batch: rewriting it breaks both."""
        [data] = seal(1)
        moved = tamper(data, room_id=OTHER_ROOM)
        assert refusal(Opener(OTHER_ROOM), moved) == "bad_signature"


class TestNotMember:
    def test_outsider(self) -> None:
        [data] = Sealer(OUTSIDER, ROOM).seal_batch([b"hi"], epoch=1, key_id="key1", room_key=KEY1)
        assert refusal(Opener(ROOM), data) == "not_member"

    def test_removed_member_with_a_leaked_new_key(self) -> None:
        """Even holding the epoch-2 key, a member removed at epoch 2 cannot post in it."""
        [data] = Sealer(MALLORY, ROOM).seal_batch([b"hi"], epoch=2, key_id="key2", room_key=KEY2)
        assert refusal(Opener(ROOM), data) == "not_member"

    def test_membership_is_asked_for_the_sender_and_epoch(self) -> None:
        asked: list[tuple[str, int]] = []

        def recording(user: str, epoch: int) -> bool:
            asked.append((user, epoch))
            return False

        [data] = seal(1, epoch=2, key_id="key2")
        assert refusal(Opener(ROOM), data, is_member=recording) == "not_member"
        assert asked == [(ALICE.public_key, 2)]


class TestUnknownEpoch:
    def test_unknown_key_then_refetch_and_retry(self) -> None:
        """The first attempt records nothing, so the retry after a key refetch succeeds."""
        [data] = seal(1)
        keys: dict[tuple[int, str], bytes] = {}
        opener = Opener(ROOM)
        assert refusal(opener, data, room_key=lambda e, k: keys.get((e, k))) == "unknown_epoch"
        keys[(1, "key1")] = KEY1
        opened = opener.open(data, room_key=lambda e, k: keys.get((e, k)), is_member=is_member)
        assert opened.plaintext == b"message 0"

    def test_unknown_key_id_in_a_known_epoch(self) -> None:
        [data] = seal(1)
        assert refusal(Opener(ROOM), tamper(data, key_id="nosuchkey")) == "unknown_epoch"

    def test_a_key_of_the_wrong_size_is_no_key(self) -> None:
        [data] = seal(1)
        assert refusal(Opener(ROOM), data, room_key=lambda e, k: b"short") == "unknown_epoch"


class TestBadSignature:
    @pytest.mark.parametrize(
        "change",
        [
            "ciphertext",
            "ciphertext-tag",
            "nonce",
            "epoch",
            "key_id",
            "sender",
            "session",
            "seq-and-batch",
            "index-and-seq",
            "batch_size",
            "swapped-path",
            "foreign-path-element",
            "root_signature",
            "signature-of-another-batch",
        ],
    )
    def test_tampered_field(self, change: str) -> None:
        batch = seal(6)
        data = batch[2]
        env = raw(data)
        changes: dict[str, Any] = {
            "ciphertext": {"ciphertext": flip(env.ciphertext)},
            "ciphertext-tag": {"ciphertext": flip(env.ciphertext, len(env.ciphertext) - 1)},
            "nonce": {"nonce": flip(env.nonce)},
            # an epoch, key id and sender the receiver accepts, so the signature decides
            "epoch": {"epoch": 2, "key_id": "key2"},
            "key_id": {"key_id": "key1b"},
            "sender": {"sender": BOB.public_key},
            "session": {"session": flip(env.session)},
            "seq-and-batch": {"seq": env.seq + 1, "batch_first_seq": env.batch_first_seq + 1},
            "index-and-seq": {"index": 3, "seq": env.seq + 1},
            "batch_size": {"batch_size": 7},  # same path length for index 2
            "swapped-path": {"path": [env.path[1], env.path[0], *env.path[2:]]},
            "foreign-path-element": {"path": [raw(batch[5]).path[0], *env.path[1:]]},
            "root_signature": {"root_signature": flip(env.root_signature, 5)},
            "signature-of-another-batch": {"root_signature": raw(seal(6)[2]).root_signature},
        }[change]
        assert refusal(Opener(ROOM), tamper(data, **changes)) == "bad_signature"

    def test_member_with_the_room_key_cannot_impersonate(self) -> None:
        """Mallory encrypts correctly and builds a perfect tree, but signs with her own key."""
        opener = Opener(ROOM)
        for data in forge_batch([b"pay mallory", b"twice"], claimed=ALICE, signer=MALLORY):
            assert refusal(opener, data) == "bad_signature"

    def test_impersonation_into_an_already_verified_batch(self) -> None:
        """Mallory reuses the header of a batch the receiver has verified and cached."""
        sealer = Sealer(ALICE, ROOM)
        genuine = seal(8, sealer=sealer)
        opener = Opener(ROOM)
        open_one(opener, genuine[0])
        forged = forge_batch(
            [f"forged {i}".encode() for i in range(8)],
            claimed=ALICE,
            signer=MALLORY,
            session=sealer.session,
        )
        for data in forged:
            assert refusal(opener, data) == "bad_signature"
        for data in genuine[1:]:
            assert open_one(opener, data).sender == ALICE.public_key

    def test_genuine_signature_copied_onto_forged_content(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        genuine = raw(seal(4, sealer=sealer)[1])
        forged = forge_batch(
            [b"a", b"b", b"c", b"d"], claimed=ALICE, signer=MALLORY, session=sealer.session
        )
        assert (
            refusal(Opener(ROOM), tamper(forged[1], root_signature=genuine.root_signature))
            == "bad_signature"
        )

    def test_envelope_of_another_position_with_its_path(self) -> None:
        """Leaf i with the index, seq and path of leaf j does not prove anything."""
        batch = seal(8)
        i, j = raw(batch[2]), raw(batch[5])
        moved = tamper(batch[2], index=j.index, seq=j.seq, path=j.path)
        assert i.ciphertext != j.ciphertext
        assert refusal(Opener(ROOM), moved) == "bad_signature"

    def test_sender_key_that_is_not_a_valid_nkey(self) -> None:
        """A member list could hold anything; a sender that is no key never verifies."""
        [data] = seal(1)
        bogus = "U" + "A" * 55
        assert (
            refusal(Opener(ROOM), tamper(data, sender=bogus), is_member=lambda u, e: True)
            == "bad_signature"
        )


class TestDecryptFailed:
    def test_receiver_holds_a_different_key(self) -> None:
        [data] = seal(1)
        assert refusal(Opener(ROOM), data, room_key=lambda e, k: KEY2) == "decrypt_failed"

    def test_sender_signs_ciphertexts_that_are_not_under_the_room_key(self) -> None:
        forged = forge_batch(
            [b"a", b"b"],
            claimed=MALLORY,
            signer=MALLORY,
            ciphertext=lambda p, ad, n: os.urandom(len(p) + 16),
        )
        assert refusal(Opener(ROOM), forged[0]) == "decrypt_failed"

    def test_member_cannot_claim_anothers_ciphertext_as_its_own(self) -> None:
        """The sender is associated data: re-signing Alice's ciphertext as Mallory's fails."""
        alice = raw(seal(1)[0])
        resigned = envmod._assemble(
            room_id=ROOM,
            epoch=1,
            key_id="key1",
            sender=MALLORY.public_key,
            session=os.urandom(16),
            first_seq=1,
            sealed=[(alice.nonce, alice.ciphertext)],
            sign=MALLORY.sign,
        )
        assert refusal(Opener(ROOM), msgspec.msgpack.encode(resigned[0])) == "decrypt_failed"


class TestReplay:
    def test_same_bytes_twice(self) -> None:
        [data] = seal(1)
        opener = Opener(ROOM)
        open_one(opener, data)
        assert refusal(opener, data) == "replay"

    def test_replayed_after_later_messages(self) -> None:
        batch = seal(10)
        opener = Opener(ROOM)
        for data in batch:
            open_one(opener, data)
        for data in batch:
            assert refusal(opener, data) == "replay"

    def test_duplicate_across_batches(self) -> None:
        """A publisher that reused (session, seq) in a second batch: the copy is refused."""
        sealer = Sealer(ALICE, ROOM)
        first = seal(4, sealer=sealer)
        sealer._next_seq = 3  # simulate a broken publisher: seqs 3 and 4 again
        second = seal(2, sealer=sealer)
        opener = Opener(ROOM)
        for data in first:
            open_one(opener, data)
        for data in second:
            assert refusal(opener, data) == "replay"

    def test_same_seq_in_another_session_is_a_new_message(self) -> None:
        opener = Opener(ROOM)
        for _ in range(3):
            [data] = seal(1)
            assert open_one(opener, data).seq == 1

    def test_same_session_and_seq_of_another_sender_is_a_new_message(self) -> None:
        """Replay state is per (sender, session): Mallory reusing Alice's session blocks nothing."""
        sealer = Sealer(ALICE, ROOM)
        [genuine] = seal(1, sealer=sealer)
        [mallory] = forge_batch([b"m"], claimed=MALLORY, signer=MALLORY, session=sealer.session)
        opener = Opener(ROOM)
        assert open_one(opener, mallory).sender == MALLORY.public_key
        assert open_one(opener, genuine).sender == ALICE.public_key

    def test_out_of_order_within_the_window(self) -> None:
        batch = seal(30)
        opener = Opener(ROOM, replay_window=8)
        open_one(opener, batch[19])  # seq 20: everything up to 12 is now outside the window
        assert refusal(opener, batch[11]) == "replay"  # seq 12
        assert refusal(opener, batch[0]) == "replay"  # seq 1
        assert open_one(opener, batch[12]).seq == 13
        assert refusal(opener, batch[12]) == "replay"
        assert open_one(opener, batch[20]).seq == 21
        assert open_one(opener, batch[15]).seq == 16

    @pytest.mark.parametrize("window", [1, 5, 64])
    def test_window_matches_a_reference_model(self, window: int) -> None:
        """Accept iff never accepted and newer than (highest accepted - window)."""
        rng = random.Random(window)
        stream = envmod._Stream()
        accepted: set[int] = set()
        top = 0
        for _ in range(4000):
            seq = max(1, top + rng.randint(-2 * window - 3, 3))
            expected = seq not in accepted and seq > top - window
            assert stream.is_new(seq) == expected, (seq, top)
            if expected:
                stream.record(seq, window)
                accepted.add(seq)
                top = max(top, seq)
            assert len(stream.seen) <= window

    def test_huge_jump_in_seq_is_cheap(self) -> None:
        stream = envmod._Stream()
        stream.record(1, 1 << 16)
        stream.record(3, 1 << 16)
        stream.record(1 << 62, 1 << 16)
        assert not stream.is_new(3)
        assert not stream.is_new((1 << 62) - (1 << 16))
        assert stream.is_new((1 << 62) - (1 << 16) + 1)

    def test_session_tracking_is_bounded(self) -> None:
        opener = Opener(ROOM, max_sessions=4)
        for _ in range(10):
            open_one(opener, seal(1)[0])
        assert len(opener._streams) == 4


class TestFailuresAreNotRecorded:
    """A message that fails any check is never recorded: a forged copy cannot block the genuine."""

    def test_tampered_copy_first_then_the_genuine(self) -> None:
        [data] = seal(1)
        opener = Opener(ROOM)
        bad = tamper(data, ciphertext=flip(raw(data).ciphertext))
        assert refusal(opener, bad) == "bad_signature"
        assert open_one(opener, data).plaintext == b"message 0"

    def test_impersonation_with_the_next_seq_first(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        opener = Opener(ROOM)
        open_one(opener, seal(1, sealer=sealer)[0])
        [forged] = forge_batch(
            [b"forged"], claimed=ALICE, signer=MALLORY, session=sealer.session, first_seq=2
        )
        assert refusal(opener, forged) == "bad_signature"
        assert open_one(opener, seal(1, sealer=sealer)[0]).seq == 2

    def test_undecryptable_copy_first(self) -> None:
        [data] = seal(1)
        opener = Opener(ROOM)
        assert refusal(opener, data, room_key=lambda e, k: KEY2) == "decrypt_failed"
        assert open_one(opener, data).seq == 1

    def test_forgery_into_a_cached_batch_first(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        genuine = seal(4, sealer=sealer)
        opener = Opener(ROOM)
        open_one(opener, genuine[0])
        forged = forge_batch(
            [b"w", b"x", b"y", b"z"], claimed=ALICE, signer=MALLORY, session=sealer.session
        )
        assert refusal(opener, forged[1]) == "bad_signature"
        assert open_one(opener, genuine[1]).plaintext == b"message 1"


class TestVerifiedBatchCache:
    def test_signature_checked_once_per_batch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        real_verify = envmod.verify

        def counting(key: str, data: bytes, signature: bytes) -> bool:
            calls.append(key)
            return real_verify(key, data, signature)

        monkeypatch.setattr(envmod, "verify", counting)
        opener = Opener(ROOM)
        for _ in range(3):
            for data in seal(64):
                open_one(opener, data)
        assert len(calls) == 3

    def test_leaf_proven_by_a_cached_node_needs_no_more_path(self) -> None:
        """Once a batch is verified, a leaf that hashes up to a proven node is proven.

        Path elements above that node are not used, so garbling them changes nothing.
        """
        batch = seal(8)
        opener = Opener(ROOM)
        open_one(opener, batch[0])
        env = raw(batch[1])
        garbled = tamper(batch[1], path=[env.path[0], bytes(32), bytes(32)])
        assert open_one(opener, garbled).seq == 2

    def test_bounded_by_batches_and_by_nodes(self) -> None:
        opener = Opener(ROOM, max_verified_batches=3, max_cached_nodes=2 * MAX_BATCH)
        sealer = Sealer(ALICE, ROOM)
        batches = [seal(size, sealer=sealer) for size in (1, 2, 3, 5, 600, 700, 1)]
        for batch in batches:
            for data in batch:
                open_one(opener, data)
                assert len(opener._batches) <= 3
                assert opener._cached_nodes <= 2 * MAX_BATCH
                assert opener._cached_nodes == sum(len(n) for n in opener._batches.values())

    def test_evicted_batch_verifies_again(self) -> None:
        sealer = Sealer(ALICE, ROOM)
        old = seal(4, sealer=sealer)
        opener = Opener(ROOM, max_verified_batches=1)
        open_one(opener, old[0])
        open_one(opener, seal(1, sealer=sealer)[0])  # evicts the first batch
        assert open_one(opener, old[1]).seq == 2

    def test_constructor_bounds(self) -> None:
        with pytest.raises(ValueError, match="max_cached_nodes"):
            Opener(ROOM, max_cached_nodes=2 * MAX_BATCH - 1)
        with pytest.raises(ValueError, match="replay window"):
            Opener(ROOM, replay_window=0)
        with pytest.raises(ValueError, match="room"):
            Opener("NOT A ROOM")


# -- fuzz -----------------------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 1:
        return rng.choice(["", ROOM, ALICE.public_key, "key1", "x" * rng.randrange(100)])
    if kind == 2:
        return rng.randbytes(rng.choice([0, 16, 24, 32, 64, rng.randrange(200)]))
    if kind == 3:
        return rng.choice([None, True, False, 1.5])
    if kind == 4:
        return rng.randrange(4)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(12))]
    return {str(rng.randrange(5)): _random_value(rng, depth + 1)}


class TestFuzz:
    """Whatever arrives, only EnvelopeError comes out; the callbacks say yes to everything."""

    @staticmethod
    def check(opener: Opener, data: Any) -> None:
        with pytest.raises(EnvelopeError) as info:
            opener.open(data, room_key=lambda e, k: KEY1, is_member=lambda u, e: True)
        assert info.value.reason in REASONS

    def test_random_bytes(self) -> None:
        rng = random.Random(1)
        opener = Opener(ROOM)
        for _ in range(2000):
            self.check(opener, rng.randbytes(rng.randrange(600)))

    def test_random_msgpack_values(self) -> None:
        rng = random.Random(2)
        opener = Opener(ROOM)
        for _ in range(2000):
            count = rng.choice([14, 14, 14, rng.randrange(20)])
            self.check(opener, msgspec.msgpack.encode([_random_value(rng) for _ in range(count)]))

    def test_random_field_substitutions(self) -> None:
        rng = random.Random(3)
        template = list(msgspec.msgpack.decode(seal(5)[3]))
        opener = Opener(ROOM)
        for _ in range(1500):
            fields = list(template)
            for _ in range(rng.randint(1, 3)):
                fields[rng.randrange(len(fields))] = _random_value(rng)
            if fields != template:
                self.check(opener, msgspec.msgpack.encode(fields))

    def test_mutations_of_a_genuine_envelope(self) -> None:
        """Flipped, truncated, extended and spliced bytes; a fresh receiver each time."""
        rng = random.Random(4)
        batch = seal(5)
        genuine = batch[3]
        for _ in range(600):
            data = bytearray(genuine)
            kind = rng.randrange(4)
            if kind == 0:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del data[rng.randrange(len(data)) :]
            elif kind == 2:
                data[rng.randrange(len(data)) : rng.randrange(len(data))] = rng.randbytes(
                    rng.randint(1, 40)
                )
            else:
                other = batch[rng.randrange(5)]
                cut = rng.randrange(len(data))
                data = data[:cut] + other[cut:]
            if bytes(data) != genuine and bytes(data) not in batch:
                self.check(Opener(ROOM), bytes(data))


class TestErrors:
    def test_envelope_error_is_an_identity_error_with_a_reason(self) -> None:
        assert issubclass(EnvelopeError, IdentityError)
        expected = {
            "malformed",
            "wrong_room",
            "unknown_epoch",
            "not_member",
            "bad_signature",
            "decrypt_failed",
            "replay",
        }
        assert expected == REASONS

    def test_decode_envelope_refuses_like_open(self) -> None:
        with pytest.raises(EnvelopeError) as info:
            decode_envelope(b"\x91\x01")
        assert info.value.reason == "malformed"
