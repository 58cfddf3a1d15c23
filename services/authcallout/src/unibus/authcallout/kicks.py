"""Disconnecting every live connection a change affects, on every node.

Connections are found through the system account (CONNZ is answered by every server)
and closed with ``$SYS.REQ.SERVER.<server_id>.KICK``. Each connection's name carries
the stamp it was authorized at (``<U key>@<users rev>.<rooms rev>``), so a change at
revision r kicks exactly the connections stamped below r: a client that already
reconnected with fresh permissions is left alone, whichever callout instance acts.

A node in lame duck answers no system request (nats-server stops its internal send loop
at lame-duck entry), so CONNZ cannot find its connections for the up to 30 s it takes to
close them, yet it still carries out a KICK it receives. So each instance also remembers
the connections it admitted (:class:`AdmittedConnections`: server, client id, stamp) and
kicks the affected ones among them directly, at once, beside what CONNZ finds. Each
server's CONNZ answer is acted on as it arrives: a node that cannot answer holds up only
its own share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from unibus.authcallout.view import Change, Stamp
from unibus.core import naming
from unibus.core.log import get_logger
from unibus.core.sysreq import server_ping, server_replies

_log = get_logger("unibus.authcallout.kicks")
_CONNZ_LIMIT = 10_000
_KICKS_IN_FLIGHT = 32
_REMEMBERED: Final = 100_000
"""Connections an instance remembers at most (the oldest are forgotten first: CONNZ still
finds them on any node that answers)."""


def connection_name(user_key: str, stamp: Stamp) -> str:
    return f"{user_key}@{stamp.encode()}"


def parse_connection_name(name: str) -> tuple[str, Stamp] | None:
    user, _, stamp_text = name.partition("@")
    stamp = Stamp.parse(stamp_text)
    return None if stamp is None else (user, stamp)


def is_affected(name: str, change: Change) -> bool:
    parsed = parse_connection_name(name)
    if parsed is None:
        return False
    user, stamp = parsed
    if user not in change.users:
        return False
    seen = stamp.users if change.bucket == naming.USERS_BUCKET else stamp.rooms
    return seen < change.revision


@dataclass(frozen=True, slots=True)
class Kicked:
    """What one change's kicks did."""

    count: int
    last_at: float | None
    """Wall-clock time the last of them was confirmed (None: no kick confirmed)."""


@dataclass(frozen=True, slots=True)
class Connection:
    server_id: str
    cid: int
    name: str


class AdmittedConnections:
    """The connections this instance admitted, for as long as their JWT can keep them.

    A (server id, client id) pair names one connection for good: a server takes a fresh
    id each time it starts, and never reuses a client id while it runs. They are indexed
    by user, so a change looks only at the connections of the users it names.
    """

    def __init__(self, lifetime: float, *, limit: int = _REMEMBERED) -> None:
        self._lifetime = lifetime
        self._limit = limit
        # Admission order, for forgetting the oldest first: (server id, cid) -> (user, at).
        self._admitted: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()
        self._by_user: dict[str, dict[tuple[str, int], str]] = {}

    def __len__(self) -> int:
        return len(self._admitted)

    def add(self, server_id: str, cid: int, name: str, *, now: float | None = None) -> None:
        parsed = parse_connection_name(name)
        if parsed is None:
            return
        at = time.monotonic() if now is None else now
        key = (server_id, cid)
        self._admitted[key] = (parsed[0], at)
        self._admitted.move_to_end(key)
        self._by_user.setdefault(parsed[0], {})[key] = name
        self._forget_expired(at)

    def affected_by(self, change: Change, *, now: float | None = None) -> list[Connection]:
        self._forget_expired(time.monotonic() if now is None else now)
        return [
            Connection(server_id, cid, name)
            for user in change.users
            for (server_id, cid), name in self._by_user.get(user, {}).items()
            if is_affected(name, change)
        ]

    def _forget_expired(self, now: float) -> None:
        # Oldest first (insertion order is admission order): an expired JWT has already
        # ended its connection, and the limit bounds what a flood of connects can hold.
        while self._admitted:
            key, (user, at) = next(iter(self._admitted.items()))
            if now - at <= self._lifetime and len(self._admitted) <= self._limit:
                return
            del self._admitted[key]
            connections = self._by_user[user]
            del connections[key]
            if not connections:
                del self._by_user[user]


class Kicker:
    """Finds and kicks affected connections through a system-account connection."""

    def __init__(
        self,
        sys_nc: NATS,
        *,
        expected_servers: int,
        timeout: float = 2.0,
        admitted: AdmittedConnections | None = None,
    ) -> None:
        self._nc = sys_nc
        self._expected = expected_servers
        self._timeout = timeout
        self._admitted = admitted

    async def connections(self) -> list[Connection]:
        replies = await server_ping(
            self._nc, "CONNZ", expected=self._expected, timeout=self._timeout, body=_CONNZ_BODY
        )
        return [conn for reply in replies for conn in _listed(reply)]

    async def kick(self, change: Change) -> Kicked:
        """Kick every connection authorized before ``change``."""
        slots = asyncio.Semaphore(_KICKS_IN_FLIGHT)
        kicks: list[asyncio.Task[float | None]] = []
        asked: set[tuple[str, int]] = set()

        def kick_all(found: list[Connection]) -> None:
            for conn in found:
                if is_affected(conn.name, change) and (conn.server_id, conn.cid) not in asked:
                    asked.add((conn.server_id, conn.cid))
                    kicks.append(asyncio.create_task(self._kick_one(conn, slots)))

        if self._admitted is not None:
            kick_all(self._admitted.affected_by(change))
        replies = server_replies(
            self._nc, "CONNZ", expected=self._expected, timeout=self._timeout, body=_CONNZ_BODY
        )
        async with contextlib.aclosing(replies):
            async for reply in replies:
                kick_all(_listed(reply))
        confirmed = [at for at in await asyncio.gather(*kicks) if at is not None]
        return Kicked(len(confirmed), max(confirmed, default=None))

    async def sweep(self, still_grants: Callable[[str, Stamp], bool]) -> int:
        """Kick every connection the state no longer grants what it holds; returns how many.

        For a callout that starts: changes committed while no callout ran were never seen
        as changes, and their users would keep their connections until the JWT expires. A
        connection whose name carries no stamp is kicked too: it was not authorized by
        this service, so nothing vouches for it.
        """

        def forbidden(conn: Connection) -> bool:
            parsed = parse_connection_name(conn.name)
            return parsed is None or not still_grants(*parsed)

        # In parallel (bounded): one after the other, the last of a user's 100 sessions
        # waited for 99 round trips to the servers before it was closed.
        slots = asyncio.Semaphore(_KICKS_IN_FLIGHT)
        affected = [conn for conn in await self.connections() if forbidden(conn)]
        kicked = await asyncio.gather(*(self._kick_one(conn, slots) for conn in affected))
        return sum(1 for at in kicked if at is not None)

    async def _kick_one(self, conn: Connection, slots: asyncio.Semaphore) -> float | None:
        """When the server said it closed the connection (wall clock), or None: a server
        in lame duck closes it without a word, and one that no longer has it says so."""
        subject = f"$SYS.REQ.SERVER.{conn.server_id}.KICK"
        async with slots:
            try:
                reply = await self._nc.request(
                    subject, msgspec.json.encode({"cid": conn.cid}), timeout=self._timeout
                )
            except nats.errors.TimeoutError:
                return None
            except nats.errors.Error as exc:
                _log.warning("kick failed", server=conn.server_id, error=type(exc).__name__)
                return None
        answered_at = time.time()
        with contextlib.suppress(msgspec.DecodeError):
            if _KICK_REPLY.decode(reply.data).error is None:
                return answered_at
        return None


class _KickReply(msgspec.Struct):
    error: dict[str, Any] | None = None


_KICK_REPLY: Final = msgspec.json.Decoder(_KickReply)
_CONNZ_BODY: Final = msgspec.json.encode(
    {"acc": naming.MEMBER_ACCOUNT, "auth": True, "limit": _CONNZ_LIMIT}
)


def _listed(reply: dict[str, Any]) -> list[Connection]:
    """The member connections one server's CONNZ answer lists."""
    server_id = str((reply.get("server") or {}).get("id", ""))
    data: dict[str, Any] = reply.get("data") or {}
    found = []
    for conn in data.get("connections") or []:
        name = conn.get("authorized_user") or ""
        cid = conn.get("cid")
        if server_id and isinstance(cid, int) and name:
            found.append(Connection(server_id, cid, str(name)))
    return found
