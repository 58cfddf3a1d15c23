"""The view's bookkeeping: what a KV entry changes, and what a decision is stamped with."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Final, cast

import nats.errors

from unibus.authcallout.kicks import connection_name, is_affected, parse_connection_name
from unibus.authcallout.reasons import Reason
from unibus.authcallout.view import Change, DirectoryView, Stamp, grant_digest
from unibus.core import naming
from unibus.core.bootstrap import FIRST_ADMIN_CLAIM
from unibus.core.kvfollow import KvEntry
from unibus.core.kvstore import BARRIER_KEY
from unibus.core.models import EpochRef, Role, RoomRecord, Status, UserRecord, encode
from unibus.core.nkeys import KeyPair, Prefix

ALICE = KeyPair.generate(Prefix.USER).public_key
BOB = KeyPair.generate(Prefix.USER).public_key
ROOM = naming.new_room_id()


class _Connection:
    """Stands in for the NATS connection: its JetStream context, and requests to the API."""

    def __init__(self, js: Any = None) -> None:
        self._js = js

    def jetstream(self, **_: object) -> object:
        return self._js

    async def request(self, subject: str, body: bytes, timeout: float) -> Any:
        return await self._js.request(subject, body, timeout)


def _view() -> DirectoryView:
    view = DirectoryView(cast(Any, _Connection()), max_staleness=2.0)
    view._confirmed = dict.fromkeys(view._confirmed, time.monotonic())  # proven fresh now
    return view


def _entry(
    bucket: str, key: str, value: bytes | None, revision: int, op: str | None = None
) -> KvEntry:
    del bucket  # the view is told the bucket beside the entry
    return KvEntry(
        key=key, value=value or b"", revision=revision, operation=op, created=None, pending=0
    )


def _user(key: str, status: Status = Status.ACTIVE) -> bytes:
    return encode(
        UserRecord(key=key, handle="h", role=Role.MEMBER, status=status, created_at=0, updated_at=0)
    )


def _room(*members: str) -> bytes:
    return encode(
        RoomRecord(
            room_id=ROOM,
            owner=members[0],
            members=tuple(sorted(members)),
            epochs=(EpochRef(epoch=1, key_id="k"),),
            created_at=0,
            updated_at=0,
        )
    )


def test_lookup_admits_an_active_user_with_its_rooms_and_the_applied_stamp() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 3))
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 7))

    found = view.lookup(ALICE)

    assert found.reason is Reason.ALLOWED
    assert found.rooms == (ROOM,)
    assert found.stamp == Stamp(users=3, rooms=7, grant=grant_digest([ROOM]))


def test_a_stamp_round_trips_with_and_without_its_grant() -> None:
    for stamp in (Stamp(3, 7), Stamp(3, 7, grant_digest(["r"]))):
        assert Stamp.parse(stamp.encode()) == stamp
    assert Stamp.parse("3.7.not-a-digest") is None


def test_a_connection_keeps_its_grant_only_while_the_state_gives_the_same() -> None:
    """What a callout that starts judges every live connection by (the start-up sweep)."""
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 3))
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 7))
    granted = view.lookup(ALICE).stamp
    assert view.still_grants(ALICE, granted)
    assert not view.still_grants(BOB, granted)  # bob has no user record: unknown

    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(BOB), 8))
    assert not view.still_grants(ALICE, granted)  # removed from the room meanwhile

    view.apply(
        naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE, Status.REVOKED), 9)
    )
    assert not view.still_grants(ALICE, view.lookup(ALICE).stamp)
    assert not view.still_grants(ALICE, Stamp(3, 7))  # an old stamp: the record changed


def test_lookup_denies_unknown_and_revoked_users() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, BOB, _user(BOB, Status.REVOKED), 1))

    assert view.lookup(ALICE).reason is Reason.UNKNOWN_KEY
    assert view.lookup(BOB).reason is Reason.REVOKED


def test_lookup_fails_closed_while_the_view_is_not_proven_fresh() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 1))
    view.mark_disconnected()

    assert view.lookup(ALICE).reason is Reason.STORE_UNAVAILABLE
    assert not view.is_fresh


def test_an_undecodable_user_record_denies_that_user() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 1))
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, b"{not json", 2))

    assert view.lookup(ALICE).reason is Reason.UNKNOWN_KEY


def test_revocation_is_a_change_for_that_user_only() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 1))

    change = view.apply(
        naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE, Status.REVOKED), 2)
    )

    assert change is not None
    assert change.users == frozenset({ALICE})
    assert change.revoked
    assert change.revision == 2


def test_a_new_user_and_an_unchanged_rewrite_are_not_changes() -> None:
    view = _view()
    assert (
        view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 1)) is None
    )
    assert (
        view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 2)) is None
    )


def test_membership_changes_name_the_added_and_removed_members() -> None:
    view = _view()
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE), 1))

    added = view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 2))
    removed = view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE), 3))

    assert added is not None
    assert added.users == frozenset({BOB})
    assert not added.revoked
    assert removed is not None
    assert removed.users == frozenset({BOB})
    assert removed.revoked
    assert view.lookup(BOB).rooms == ()


def test_barrier_entries_advance_the_applied_revision_without_changing_anything() -> None:
    view = _view()
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 1))

    change = view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, BARRIER_KEY, b"", 9))

    assert change is None
    assert view.lookup(ALICE).stamp.users == 9


def test_the_first_admin_claim_is_a_marker_not_a_user_record() -> None:
    view = _view()

    # Whatever it holds, even a valid record, it never becomes a user.
    change = view.apply(
        naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, FIRST_ADMIN_CLAIM, _user(ALICE), 1)
    )

    assert change is None
    assert view.lookup(FIRST_ADMIN_CLAIM).reason is Reason.UNKNOWN_KEY
    assert view.lookup(ALICE).stamp.users == 1


def test_a_deleted_room_removes_its_members_access() -> None:
    view = _view()
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 1))
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, BOB, _user(BOB), 1))

    change = view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, None, 2, "DEL"))

    assert change is not None
    assert change.users == frozenset({ALICE, BOB})
    assert view.lookup(BOB).rooms == ()


# -- kick targeting -------------------------------------------------------------------------------
def _change(bucket: str, revision: int, *users: str) -> Change:
    return Change(bucket, revision, frozenset(users), True, None)


def test_connection_names_round_trip_user_and_stamp() -> None:
    name = connection_name(ALICE, Stamp(4, 9))
    assert parse_connection_name(name) == (ALICE, Stamp(4, 9))
    assert parse_connection_name("no-stamp") is None
    assert parse_connection_name(f"{ALICE}@x.y") is None


def test_only_connections_authorized_before_the_change_are_affected() -> None:
    change = _change(naming.USERS_BUCKET, 10, ALICE)

    assert is_affected(connection_name(ALICE, Stamp(9, 50)), change)
    assert not is_affected(connection_name(ALICE, Stamp(10, 0)), change)
    assert not is_affected(connection_name(BOB, Stamp(1, 1)), change)
    assert not is_affected("garbage", change)


def test_room_changes_compare_the_rooms_revision() -> None:
    change = _change(naming.ROOMS_BUCKET, 20, BOB)

    assert is_affected(connection_name(BOB, Stamp(99, 19)), change)
    assert not is_affected(connection_name(BOB, Stamp(0, 20)), change)


async def test_until_fresh_returns_as_soon_as_the_view_is_proven_again() -> None:
    view = _view()
    view.mark_disconnected()

    async def confirm_later() -> None:
        await asyncio.sleep(0.05)
        view._confirmed = dict.fromkeys(view._confirmed, time.monotonic())
        view._confirmation.set()

    confirmer = asyncio.create_task(confirm_later())
    assert await view.until_fresh(5.0)
    await confirmer


async def test_until_fresh_gives_up_after_its_grace_so_the_request_is_denied() -> None:
    view = _view()
    view.mark_disconnected()

    assert not await view.until_fresh(0.05)
    assert view.lookup(ALICE).reason is Reason.STORE_UNAVAILABLE


def _reply(body: dict[str, Any]) -> Any:
    return type("Reply", (), {"data": json.dumps(body).encode()})()


_NOTHING_AFTER: Final = {
    "error": {"code": 404, "err_code": 10037, "description": "no message found"}
}


class _Tails:
    """Stands in for the stream leaders: each stream's last message (a barrier), and who
    asked what when."""

    def __init__(self, users: int, rooms: int, *, fail: bool = False) -> None:
        self.last = {f"KV_{naming.USERS_BUCKET}": users, f"KV_{naming.ROOMS_BUCKET}": rooms}
        self.fail = fail
        self.reads: list[float] = []
        self.infos = 0
        self.release = asyncio.Event()
        self.release.set()

    async def request(self, subject: str, body: bytes, timeout: float) -> Any:
        """``$JS.API.STREAM.INFO.<stream>``, answered with the stream's state, or
        ``$JS.API.STREAM.MSG.GET.<stream>``, answered with the last message if asked from
        at or before it."""
        del timeout
        self.reads.append(time.monotonic())
        await self.release.wait()
        if self.fail:
            raise nats.errors.TimeoutError
        stream = subject.rsplit(".", 1)[1]
        last = self.last[stream]
        if ".STREAM.INFO." in subject:
            self.infos += 1
            return _reply({"state": {"last_seq": last}})
        if json.loads(body)["seq"] > last:
            return _reply(_NOTHING_AFTER)
        bucket = stream.removeprefix("KV_")
        return _reply({"message": {"subject": f"$KV.{bucket}.{BARRIER_KEY}", "seq": last}})


def _view_on(tails: _Tails) -> DirectoryView:
    view = DirectoryView(cast(Any, _Connection(tails)), max_staleness=2.0)
    view._confirmed = dict.fromkeys(view._confirmed, time.monotonic())
    return view


async def test_a_decision_waits_until_the_view_applied_what_the_streams_held_on_arrival() -> None:
    tails = _Tails(users=5, rooms=9)
    view = _view_on(tails)
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 5))
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 7))

    waiting = asyncio.create_task(view.until_current(time.monotonic(), 5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "decided before the view caught up with the rooms stream"
    # Alice is removed at revision 9, which another callout may already have acted on.
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(BOB), 9))

    assert await asyncio.wait_for(waiting, 1.0)
    assert view.lookup(ALICE).rooms == ()


async def test_a_view_holding_the_last_revisions_is_shown_current_without_a_stream_info() -> None:
    tails = _Tails(users=5, rooms=9)
    view = _view_on(tails)
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 5))
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 9))

    assert await view.until_current(time.monotonic(), 1.0)
    # One "nothing after" per stream: the leader is not asked to build a stream info.
    assert (len(tails.reads), tails.infos) == (2, 0)


async def test_a_view_that_does_not_catch_up_in_time_or_cannot_read_the_tails_denies() -> None:
    view = _view_on(_Tails(users=5, rooms=9))
    assert not await view.until_current(time.monotonic(), 0.05)

    unreadable = _view_on(_Tails(users=0, rooms=0, fail=True))
    assert not await unreadable.until_current(time.monotonic(), 1.0)


async def test_requests_share_a_tail_read_only_if_it_started_after_they_arrived() -> None:
    tails = _Tails(users=0, rooms=0)
    view = _view_on(tails)
    tails.release.clear()
    early = time.monotonic()
    first = asyncio.create_task(view.until_current(early, 5.0))
    second = asyncio.create_task(view.until_current(early, 5.0))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(view.until_current(time.monotonic(), 5.0))
    await asyncio.sleep(0.02)
    tails.release.set()

    assert list(await asyncio.gather(first, second, late)) == [True, True, True]
    # One read (two streams) for the two early requests, one more for the late one.
    assert len(tails.reads) == 4
    assert min(tails.reads[2:]) > max(tails.reads[:2])


class _Stream:
    """Stands in for the connection: the tails, and the messages the stream leader returns."""

    def __init__(
        self, tails: _Tails, messages: dict[int, tuple[str, bytes]], *, unreadable: bool = False
    ) -> None:
        self.tails = tails
        self.messages = messages
        self.unreadable = unreadable
        self.gets: list[int] = []

    def jetstream(self, **_: object) -> object:
        return self.tails

    async def request(self, subject: str, body: bytes, timeout: float) -> Any:
        if ".STREAM.INFO." in subject:
            return await self.tails.request(subject, body, timeout)
        asked = json.loads(body)
        self.gets.append(asked["seq"])
        if self.unreadable:
            return _reply({"error": {"code": 503, "err_code": 10008, "description": "busy"}})
        stream = subject.rsplit(".", 1)[1]
        bucket = stream.removeprefix("KV_")
        later = sorted(seq for seq in self.messages if seq >= asked["seq"])
        if not later:
            reply = _NOTHING_AFTER
        else:
            key, value = self.messages[later[0]]
            reply = {
                "message": {
                    "subject": f"$KV.{bucket}.{key}",
                    "seq": later[0],
                    "data": base64.b64encode(value).decode(),
                    "time": "2026-12-07T04:32:20.5Z",
                }
            }
        return type("Reply", (), {"data": json.dumps(reply).encode()})()


async def test_what_the_watch_does_not_deliver_is_read_from_the_stream_and_announced() -> None:
    """A watch whose consumer was lost with its node must not hold decisions up: the view
    reads the missing revisions from the stream leader, in order, and kicks for them."""
    changes: list[Change] = []

    async def on_change(change: Change) -> None:
        changes.append(change)

    stream = _Stream(_Tails(users=5, rooms=9), {8: (BARRIER_KEY, b""), 9: (ROOM, _room(BOB))})
    view = DirectoryView(cast(Any, stream), max_staleness=2.0, on_change=on_change)
    view._confirmed = dict.fromkeys(view._confirmed, time.monotonic())
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 5))
    view.apply(naming.ROOMS_BUCKET, _entry(naming.ROOMS_BUCKET, ROOM, _room(ALICE, BOB), 7))

    assert await view.until_current(time.monotonic(), 2.0)
    assert view.lookup(ALICE).rooms == ()
    assert stream.gets[-2:] == [8, 9], "not read in order"
    assert [(c.revision, c.users, c.revoked) for c in changes] == [(9, {ALICE}, True)]
    await view.stop()


async def test_a_stream_that_cannot_be_read_leaves_the_decision_denied() -> None:
    stream = _Stream(_Tails(users=5, rooms=9), {}, unreadable=True)
    view = DirectoryView(cast(Any, stream), max_staleness=2.0)
    view._confirmed = dict.fromkeys(view._confirmed, time.monotonic())
    view.apply(naming.USERS_BUCKET, _entry(naming.USERS_BUCKET, ALICE, _user(ALICE), 5))

    assert not await view.until_current(time.monotonic(), 0.5)
    await view.stop()


class _BarriersAcrossAReconnect:
    """The JetStream context of a connection lost and regained: the first barrier sent is
    never acknowledged (it went out on the lost connection); later ones are committed, and
    the watch delivers them at once."""

    def __init__(self) -> None:
        self.view: DirectoryView | None = None
        self.sent = 0
        self.first_sent = asyncio.Event()
        self.revision = 100

    async def publish(self, subject: str, payload: bytes, timeout: float) -> Any:
        del payload, timeout
        self.sent += 1
        if self.sent == 1:
            self.first_sent.set()
            await asyncio.Event().wait()  # its answer was lost with the connection
        self.revision += 1
        bucket = subject.split(".")[1]
        assert self.view is not None
        self.view.apply(bucket, _entry(bucket, BARRIER_KEY, None, self.revision))
        return type("Ack", (), {"seq": self.revision})()


async def test_a_reconnected_view_is_proven_again_without_waiting_out_a_lost_barrier() -> None:
    """A barrier in flight when the connection dropped is never answered: waiting out its
    timeout left the view unproven, every decision waiting and then denied, for
    ``max_staleness`` (clients refused after a node's death, even with the view on the
    next node within milliseconds)."""
    barriers = _BarriersAcrossAReconnect()
    view = DirectoryView(cast(Any, _Connection(barriers)), max_staleness=2.0, heartbeat=0.5)
    barriers.view = view
    for loaded in view._loaded.values():
        loaded.set()
    heartbeat = asyncio.create_task(view._heartbeat_forever())
    try:
        await asyncio.wait_for(barriers.first_sent.wait(), 1.0)  # the first round, at once
        view.mark_disconnected()
        view.confirm_now()
        assert await view.until_fresh(0.5)
    finally:
        heartbeat.cancel()
        await asyncio.wait({heartbeat})
