"""Room message envelopes: round trips, one targeted forgery per refusal, replay, fuzz.

The forgery classes run against both wire versions (the ``wire`` fixture): v2 is what a
Sealer writes, v1 is what history may still hold.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
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
    VERSION,
    Envelope,
    EnvelopeError,
    EnvelopeV1,
    Opened,
    Opener,
    Sealer,
    decode_envelope,
    encode_envelope,
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


WIRE = VERSION
"""The wire version the helpers seal with (the ``wire`` fixture sets it per test)."""
V1_FIXTURE = json.loads((Path(__file__).parent / "envelope_v1.json").read_text())


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys.modules[__name__], "WIRE", request.param)
    version: int = request.param
    return version


def new_sealer(identity: KeyPair = ALICE, room_id: str = ROOM) -> Sealer:
    return Sealer(identity, room_id, version=WIRE)


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
    sealer = sealer or new_sealer()
    texts = [f"message {i}".encode() for i in range(n)]
    return sealer.seal_batch(texts, epoch=epoch, key_id=key_id, room_key=KEYS[(epoch, key_id)])


def raw(data: bytes) -> Envelope:
    """Decode (a genuine envelope, of either version), to build forgeries from."""
    return decode_envelope(data)


def tamper(data: bytes, **changes: Any) -> bytes:
    """``data`` with some fields changed, encoded again in its own version."""
    return encode_envelope(msgspec.structs.replace(raw(data), **changes))


def splice(data: bytes, at: int, value: bytes) -> bytes:
    """``data`` with ``value`` written over its bytes from ``at`` (v2 layouts)."""
    return data[:at] + value + data[at + len(value) :]


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
            room_id, epoch, key_id, claimed.public_key, session, first_seq + i, v=WIRE
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
        v=WIRE,
    )
    return [encode_envelope(env) for env in envelopes]


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("wire")
class TestRoundTrip:
    @pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1024])
    @pytest.mark.parametrize("order", ["in-order", "shuffled"])
    def test_batch_opens_in_any_order(self, size: int, order: str) -> None:
        sealer = new_sealer()
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
                envmod._associated_data(
                    ROOM, e.epoch, e.key_id, e.sender, e.session, e.seq, v=WIRE
                ),
                e.nonce,
                e.ciphertext,
                v=WIRE,
            )
            for e in envs
        ]
        assert len(nodes) == 2 * size - 1  # every node of the tree, each under one name
        for name, digest in nodes.items():
            start, end = divmod(name, envmod._SPAN)
            assert digest == envmod._merkle(leaves[start:end], v=WIRE)[0]
        assert nodes[size] == envmod._merkle(leaves, v=WIRE)[0]  # the root: leaves 0..size

    def test_path_lengths_match_the_tree(self) -> None:
        for size in range(1, 130):
            _, paths = envmod._merkle([bytes([i % 256]) * 32 for i in range(size)])
            assert [len(p) for p in paths] == [envmod._path_length(i, size) for i in range(size)]
        assert max(envmod._path_length(i, MAX_BATCH) for i in range(MAX_BATCH)) == 10

    def test_empty_and_largest_messages(self) -> None:
        sealer = new_sealer()
        big = os.urandom(MAX_PLAINTEXT_BYTES)
        batch = sealer.seal_batch([b"", big], epoch=1, key_id="key1", room_key=KEY1)
        assert len(batch[1]) <= MAX_ENVELOPE_BYTES
        opener = Opener(ROOM)
        assert open_one(opener, batch[0]).plaintext == b""
        assert open_one(opener, batch[1]).plaintext == big

    def test_sequence_numbers_continue_across_batches(self) -> None:
        sealer = new_sealer()
        opener = Opener(ROOM)
        seqs = [open_one(opener, d).seq for _ in range(3) for d in seal(5, sealer=sealer)]
        assert seqs == list(range(1, 16))

    def test_each_sealer_has_its_own_session(self) -> None:
        sessions = {new_sealer().session for _ in range(32)}
        assert len(sessions) == 32
        assert all(len(s) == 16 for s in sessions)

    def test_ids_returned_with_the_envelopes(self) -> None:
        sealer = new_sealer()
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
            ROOM, 1, "key1", ALICE.public_key, b"s" * 16, 1, 1, b"r" * 32, v=WIRE
        )
        assert message.startswith(
            b"unibus-msg-batch-v1\n\x99" if WIRE == 1 else b"unibus-msg-batch-v2\n\xff"
        )
        with pytest.raises(UnicodeDecodeError):
            message.decode("utf-8")

    def test_envelope_layout(self) -> None:
        """v1: a msgpack array; v2: the fixed head, key id, path and ciphertext."""
        [data] = seal(1)
        if WIRE == 1:
            assert data[0] == 0x90 | len(EnvelopeV1.__struct_fields__)
            assert isinstance(msgspec.msgpack.decode(data), list)
        else:
            raw_alice = envmod._raw_key(ALICE.public_key)
            assert data[:5] == b"\x02" + envmod._room_tag(ROOM)
            assert data[13:45] == raw_alice
            assert len(data) == 162 + len("key1") + len(b"message 0") + 16

    def test_other_members_open_each_others_messages(self) -> None:
        opener = Opener(ROOM)
        for who in (ALICE, BOB, MALLORY):
            [data] = new_sealer(who).seal_batch([b"hi"], epoch=1, key_id="key1", room_key=KEY1)
            assert open_one(opener, data).sender == who.public_key


# -- publisher refusals and sequence safety ------------------------------------------------------


class TestSealer:
    @pytest.mark.parametrize("count", [0, MAX_BATCH + 1])
    def test_batch_size_bounds(self, count: int) -> None:
        with pytest.raises(ValueError, match="batch holds"):
            new_sealer().seal_batch([b"x"] * count, epoch=1, key_id="key1", room_key=KEY1)

    def test_oversized_message(self) -> None:
        with pytest.raises(ValueError, match="at most"):
            new_sealer().seal_batch(
                [b"x" * (MAX_PLAINTEXT_BYTES + 1)], epoch=1, key_id="key1", room_key=KEY1
            )

    def test_message_must_be_bytes(self) -> None:
        with pytest.raises(TypeError):
            new_sealer().seal_batch(["text"], epoch=1, key_id="key1", room_key=KEY1)  # type: ignore[list-item]

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
            new_sealer().seal_batch([b"x"], epoch=epoch, key_id=key_id, room_key=key)

    def test_needs_a_user_key_pair_and_a_room_id(self) -> None:
        with pytest.raises(ValueError, match="user key"):
            Sealer(KeyPair.generate(Prefix.ACCOUNT), ROOM)
        with pytest.raises(ValueError, match="room"):
            Sealer(ALICE, "Not-A-Room")

    def test_refused_batch_consumes_no_sequence_numbers(self) -> None:
        sealer = new_sealer()
        with pytest.raises(ValueError, match="room key"):
            sealer.seal_batch([b"x"], epoch=1, key_id="key1", room_key=b"short")
        assert raw(seal(1, sealer=sealer)[0]).seq == 1

    def test_cannot_be_copied_or_pickled(self) -> None:
        """A copy would publish a second message under the same (session, seq)."""
        sealer = new_sealer()
        for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="never repeat"):
                duplicate(sealer)

    def test_concurrent_batches_never_share_a_sequence_number(self) -> None:
        sealer = new_sealer()
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

    @pytest.mark.usefixtures("wire")
    def test_unknown_version(self) -> None:
        [data] = seal(1)
        assert refusal(Opener(ROOM), tamper(data, v=3)) == "malformed"
        assert refusal(Opener(ROOM), b"\x00" + data[1:]) == "malformed"

    def test_v1_array_claiming_another_version(self) -> None:
        data = seal(1, sealer=Sealer(ALICE, ROOM, version=1))[0]
        fields = list(msgspec.msgpack.decode(data))
        for version in (0, 2):
            fields[0] = version
            assert refusal(Opener(ROOM), msgspec.msgpack.encode(fields)) == "malformed"

    @pytest.mark.usefixtures("wire")
    def test_version_swapped_keeping_every_field(self) -> None:
        """A v2 envelope re-encoded as v1 (or the reverse) proves nothing: the versions hash,
        and sign, different bytes (and v1 has no 16-byte nodes)."""
        data = seal(4)[1]
        other = 2 if WIRE == 1 else 1
        env = raw(data)
        path = [node[:16] for node in env.path] if other == 2 else [n * 2 for n in env.path]
        swapped = tamper(data, v=other, room_id=ROOM, path=path)
        assert refusal(Opener(ROOM), swapped) in {"malformed", "bad_signature"}

    def test_seq_that_disagrees_with_index(self) -> None:
        """v1 carries the batch's first seq; v2 derives it (seq - index), see TestWireV2."""
        data = seal(4, sealer=Sealer(ALICE, ROOM, version=1))[1]
        assert refusal(Opener(ROOM), tamper(data, seq=raw(data).seq + 1)) == "malformed"

    def test_index_that_disagrees_with_seq(self) -> None:
        data = seal(4, sealer=Sealer(ALICE, ROOM, version=1))[1]
        assert refusal(Opener(ROOM), tamper(data, index=2)) == "malformed"

    @pytest.mark.usefixtures("wire")
    def test_index_outside_the_batch(self) -> None:
        data = seal(4)[3]
        assert refusal(Opener(ROOM), tamper(data, batch_size=3)) == "malformed"

    @pytest.mark.parametrize("change", ["drop", "add"])
    def test_path_of_the_wrong_length(self, change: str) -> None:
        data = seal(8, sealer=Sealer(ALICE, ROOM, version=1))[5]
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
        data = seal(4, sealer=Sealer(ALICE, ROOM, version=1))[2]
        fields = list(msgspec.msgpack.decode(data))
        fields[EnvelopeV1.__struct_fields__.index(field)] = value
        assert refusal(Opener(ROOM), msgspec.msgpack.encode(fields)) == "malformed"

    def test_extra_or_missing_fields(self) -> None:
        [data] = seal(1, sealer=Sealer(ALICE, ROOM, version=1))
        fields = list(msgspec.msgpack.decode(data))
        opener = Opener(ROOM)
        assert refusal(opener, msgspec.msgpack.encode([*fields, b"extra"])) == "malformed"
        assert refusal(opener, msgspec.msgpack.encode(fields[:-1])) == "malformed"
        assert open_one(opener, data).plaintext == b"message 0"


@pytest.mark.usefixtures("wire")
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
        moved = tamper(data, room_id=OTHER_ROOM, room_tag=envmod._room_tag(OTHER_ROOM))
        assert refusal(Opener(OTHER_ROOM), moved) == "bad_signature"

    def test_room_tag_that_collides_proves_nothing(self) -> None:
        """The 4-byte tag only routes: two rooms with one tag still bind different ids."""
        [data] = seal(1)
        opener = Opener(OTHER_ROOM)
        opener._tag = envmod._room_tag(ROOM)  # as if the two ids hashed to the same tag
        expected = "wrong_room" if WIRE == 1 else "bad_signature"  # v1 compares the full id
        assert refusal(opener, data) == expected


@pytest.mark.usefixtures("wire")
class TestNotMember:
    def test_outsider(self) -> None:
        [data] = new_sealer(OUTSIDER).seal_batch([b"hi"], epoch=1, key_id="key1", room_key=KEY1)
        assert refusal(Opener(ROOM), data) == "not_member"

    def test_removed_member_with_a_leaked_new_key(self) -> None:
        """Even holding the epoch-2 key, a member removed at epoch 2 cannot post in it."""
        [data] = new_sealer(MALLORY).seal_batch([b"hi"], epoch=2, key_id="key2", room_key=KEY2)
        assert refusal(Opener(ROOM), data) == "not_member"

    def test_membership_is_asked_for_the_sender_and_epoch(self) -> None:
        asked: list[tuple[str, int]] = []

        def recording(user: str, epoch: int) -> bool:
            asked.append((user, epoch))
            return False

        [data] = seal(1, epoch=2, key_id="key2")
        assert refusal(Opener(ROOM), data, is_member=recording) == "not_member"
        assert asked == [(ALICE.public_key, 2)]


@pytest.mark.usefixtures("wire")
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


@pytest.mark.usefixtures("wire")
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
        sealer = new_sealer()
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
        sealer = new_sealer()
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
        # v2: 32 raw bytes always name some U... key; the zero point verifies nothing
        forged = tamper(data, sender="U" + "A" * 55) if WIRE == 1 else splice(data, 13, bytes(32))
        assert refusal(Opener(ROOM), forged, is_member=lambda u, e: True) == "bad_signature"


@pytest.mark.usefixtures("wire")
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
            v=WIRE,
        )
        assert refusal(Opener(ROOM), encode_envelope(resigned[0])) == "decrypt_failed"


@pytest.mark.usefixtures("wire")
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
        sealer = new_sealer()
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
        sealer = new_sealer()
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


@pytest.mark.usefixtures("wire")
class TestFailuresAreNotRecorded:
    """A message that fails any check is never recorded: a forged copy cannot block the genuine."""

    def test_tampered_copy_first_then_the_genuine(self) -> None:
        [data] = seal(1)
        opener = Opener(ROOM)
        bad = tamper(data, ciphertext=flip(raw(data).ciphertext))
        assert refusal(opener, bad) == "bad_signature"
        assert open_one(opener, data).plaintext == b"message 0"

    def test_impersonation_with_the_next_seq_first(self) -> None:
        sealer = new_sealer()
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
        sealer = new_sealer()
        genuine = seal(4, sealer=sealer)
        opener = Opener(ROOM)
        open_one(opener, genuine[0])
        forged = forge_batch(
            [b"w", b"x", b"y", b"z"], claimed=ALICE, signer=MALLORY, session=sealer.session
        )
        assert refusal(opener, forged[1]) == "bad_signature"
        assert open_one(opener, genuine[1]).plaintext == b"message 1"


@pytest.mark.usefixtures("wire")
class TestVerifiedBatchCache:
    def test_signature_checked_once_per_batch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        real_verify = envmod.verify

        def counting(key: str, data: bytes, signature: bytes) -> bool:
            calls.append(key)
            return real_verify(key, data, signature)

        def counting_raw(key: bytes, data: bytes, signature: bytes) -> bool:
            calls.append(key.hex())
            return real_verify_raw(key, data, signature)

        real_verify_raw = envmod._verify_raw
        monkeypatch.setattr(envmod, "verify", counting)
        monkeypatch.setattr(envmod, "_verify_raw", counting_raw)
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
        node = len(env.path[0])
        garbled = tamper(batch[1], path=[env.path[0], bytes(node), bytes(node)])
        assert open_one(opener, garbled).seq == 2

    def test_bounded_by_batches_and_by_nodes(self) -> None:
        opener = Opener(ROOM, max_verified_batches=3, max_cached_nodes=2 * MAX_BATCH)
        sealer = new_sealer()
        batches = [seal(size, sealer=sealer) for size in (1, 2, 3, 5, 600, 700, 1)]
        for batch in batches:
            for data in batch:
                open_one(opener, data)
                assert len(opener._batches) <= 3
                assert opener._cached_nodes <= 2 * MAX_BATCH
                assert opener._cached_nodes == sum(len(n) for n in opener._batches.values())

    def test_evicted_batch_verifies_again(self) -> None:
        sealer = new_sealer()
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


# -- wire versions -------------------------------------------------------------------------------


def _head(data: bytes, **fields: int) -> bytes:
    """A v2 envelope with numeric head fields rewritten (no re-signing)."""
    offsets = {"epoch": (5, 8), "seq": (61, 8), "size": (69, 2), "index": (71, 2), "kid": (161, 1)}
    for name, value in fields.items():
        at, width = offsets[name]
        data = splice(data, at, value.to_bytes(width, "big"))
    return data


class TestHistoryStoredUnderV1:
    """What v1 publishers stored stays readable after the switch to v2."""

    @staticmethod
    def opener_and_callbacks() -> tuple[Opener, dict[str, Any]]:
        fx = V1_FIXTURE
        key = bytes.fromhex(fx["room_key"])
        callbacks = {
            "room_key": lambda e, k: key if (e, k) == (fx["epoch"], fx["key_id"]) else None,
            "is_member": lambda u, e: (u, e) == (fx["sender"], fx["epoch"]),
        }
        return Opener(fx["room_id"]), callbacks

    def test_envelopes_written_by_the_v1_sealer_open(self) -> None:
        opener, callbacks = self.opener_and_callbacks()
        fx = V1_FIXTURE
        for i, data in enumerate(bytes.fromhex(e) for e in fx["envelopes"]):
            assert data[0] == 0x9E  # a 14-item msgpack array: v1
            opened = opener.open(data, **callbacks)
            assert opened.plaintext == fx["plaintexts"][i].encode()
            assert (opened.sender, opened.epoch, opened.key_id, opened.seq) == (
                fx["sender"],
                fx["epoch"],
                fx["key_id"],
                i + 1,
            )
            assert opened.msg_id == msg_id(decode_envelope(data))
            assert opener.attest(data).sender == fx["sender"]

    def test_v1_replay_and_tampering_still_refused(self) -> None:
        opener, callbacks = self.opener_and_callbacks()
        data = bytes.fromhex(V1_FIXTURE["envelopes"][1])
        env = raw(data)
        with pytest.raises(EnvelopeError) as info:
            opener.open(tamper(data, ciphertext=flip(env.ciphertext)), **callbacks)
        assert info.value.reason == "bad_signature"
        opener.open(data, **callbacks)
        with pytest.raises(EnvelopeError) as info:
            opener.open(data, **callbacks)
        assert info.value.reason == "replay"
        with pytest.raises(EnvelopeError) as info:
            Opener(ROOM).open(data, **callbacks)
        assert info.value.reason == "wrong_room"

    def test_the_v1_sealer_writes_what_the_fixture_holds(self) -> None:
        """The v1 code path is kept (``Sealer(version=1)``), byte-compatible with v1."""
        [data] = seal(1, sealer=Sealer(ALICE, ROOM, version=1))
        assert data[0] == 0x9E
        assert msgspec.msgpack.decode(data, type=EnvelopeV1).v == 1
        assert open_one(Opener(ROOM), data).plaintext == b"message 0"

    def test_v1_and_v2_interleave_in_one_opener(self) -> None:
        opener = Opener(ROOM)
        old, new = Sealer(ALICE, ROOM, version=1), Sealer(ALICE, ROOM)
        for _ in range(3):
            for sealer in (old, new, old):
                for data in seal(3, sealer=sealer):
                    assert open_one(opener, data).sender == ALICE.public_key

    def test_same_header_in_both_versions_is_two_batches(self) -> None:
        """The batch cache is keyed by version too: a v1 batch's nodes prove no v2 leaf."""
        old, new = Sealer(ALICE, ROOM, version=1), Sealer(ALICE, ROOM)
        new._session = old.session  # an honest Sealer never does this; headers now equal
        opener = Opener(ROOM, max_sessions=4)
        open_one(opener, seal(4, sealer=old)[0])
        opener._streams.clear()  # the same (session, seq) again: only the cache is tested
        for data in seal(4, sealer=new):
            assert open_one(opener, data).sender == ALICE.public_key
        assert {header[0] for header in opener._batches} == {1, 2}


class TestWireV2:
    def test_default_version_is_2(self) -> None:
        assert VERSION == 2
        assert Sealer(ALICE, ROOM).version == 2
        with pytest.raises(ValueError, match="wire version"):
            Sealer(ALICE, ROOM, version=3)

    def test_smaller_than_v1(self) -> None:
        """A 64-message batch: 286 bytes of envelope per message (v1: about 435)."""
        texts = [bytes(1024)] * 64
        v1 = Sealer(ALICE, ROOM, version=1).seal_batch(
            texts, epoch=1, key_id="k" * 12, room_key=KEY1
        )
        v2 = Sealer(ALICE, ROOM).seal_batch(texts, epoch=1, key_id="k" * 12, room_key=KEY1)
        assert max(len(d) for d in v2) - 1024 == 162 + 12 + 6 * 16 + 16 == 286
        assert all(len(a) - len(b) >= 140 for a, b in zip(v1, v2, strict=True))

    def test_encode_is_the_inverse_of_decode(self) -> None:
        for data in seal(7):
            assert encode_envelope(decode_envelope(data)) == data

    @pytest.mark.parametrize(
        "change",
        [
            {"epoch": 0},
            {"seq": 0},
            {"seq": 1 << 63},
            {"size": 0},
            {"size": MAX_BATCH + 1},
            {"index": 4},  # a batch of 4
            {"kid": 0},
            {"kid": 65},
        ],
        ids=str,
    )
    def test_head_out_of_range(self, change: dict[str, int]) -> None:
        data = seal(4)[2]
        assert refusal(Opener(ROOM), _head(data, **change)) == "malformed"

    def test_seq_not_after_its_index(self) -> None:
        """seq - index is the batch's first seq, which is at least 1."""
        data = seal(4)[2]  # seq 3, index 2
        assert refusal(Opener(ROOM), _head(data, seq=2)) == "malformed"

    def test_batch_running_past_the_last_seq(self) -> None:
        data = seal(4)[2]
        assert refusal(Opener(ROOM), _head(data, seq=(1 << 63) - 1)) == "malformed"

    def test_key_id_that_is_not_ascii(self) -> None:
        data = seal(1)[0]
        assert refusal(Opener(ROOM), splice(data, 162, b"\xff")) == "malformed"

    @pytest.mark.parametrize("cut", [1, 16, 17, 100])
    def test_truncated(self, cut: int) -> None:
        """Too short for the path its (index, size) needs plus a tag, or for the head."""
        data = seal(8)[5]
        short = data[: len(data) - len(b"message 5") - cut]
        assert refusal(Opener(ROOM), short) == "malformed"

    def test_a_path_one_node_short_is_read_from_the_ciphertext(self) -> None:
        """The path length is implied: dropping a node shifts bytes, which then do not hash."""
        data = seal(8, sealer=Sealer(ALICE, ROOM))[5]
        env = raw(data)
        short = tamper(data, path=env.path[:-1], ciphertext=env.ciphertext + bytes(16))
        assert refusal(Opener(ROOM), short) == "bad_signature"

    def test_every_byte_is_checked(self) -> None:
        """Flip each byte of a genuine envelope alone: refused each time, by a fresh reader."""
        data = seal(3)[1]
        for at in range(len(data)):
            assert refusal(Opener(ROOM), splice(data, at, bytes([data[at] ^ 0x40]))) in REASONS

    def test_epoch_and_room_moved_together(self) -> None:
        """A message replayed into another epoch or room, to a receiver that would accept
        the sender and has a key there: the signature (and the ad) bind both."""
        data = seal(2)[0]
        anyone: dict[str, Any] = {"room_key": lambda e, k: KEY1, "is_member": lambda u, e: True}
        assert refusal(Opener(ROOM), _head(data, epoch=2), **anyone) == "bad_signature"
        moved = splice(data, 1, envmod._room_tag(OTHER_ROOM))
        assert refusal(Opener(OTHER_ROOM), moved, **anyone) == "bad_signature"

    def test_reordered_batches_of_two_senders(self) -> None:
        """Interleaved and reversed across senders and batches: all open once, then replays."""
        batches = [seal(5, sealer=Sealer(who, ROOM)) for who in (ALICE, BOB, ALICE)]
        everything = [data for batch in batches for data in batch]
        order = list(range(len(everything)))
        random.Random(11).shuffle(order)
        opener = Opener(ROOM)
        for i in order:
            open_one(opener, everything[i])
        for data in everything:
            assert refusal(opener, data) == "replay"


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
        template = list(msgspec.msgpack.decode(seal(5, sealer=Sealer(ALICE, ROOM, version=1))[3]))
        opener = Opener(ROOM)
        for _ in range(1500):
            fields = list(template)
            for _ in range(rng.randint(1, 3)):
                fields[rng.randrange(len(fields))] = _random_value(rng)
            if fields != template:
                self.check(opener, msgspec.msgpack.encode(fields))

    def test_random_bytes_with_the_v2_version_byte(self) -> None:
        rng = random.Random(5)
        opener = Opener(ROOM)
        for _ in range(2000):
            self.check(opener, b"\x02" + rng.randbytes(rng.randrange(600)))

    @pytest.mark.usefixtures("wire")
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
