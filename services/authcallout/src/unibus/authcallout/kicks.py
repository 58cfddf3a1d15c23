"""Disconnecting every live connection a change affects, on every node.

Connections are found through the system account (CONNZ is answered by every server)
and closed with ``$SYS.REQ.SERVER.<server_id>.KICK``. Each connection's name carries
the stamp it was authorized at (``<U key>@<users rev>.<rooms rev>``), so a change at
revision r kicks exactly the connections stamped below r: a client that already
reconnected with fresh permissions is left alone, whichever callout instance acts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from unibus.authcallout.view import Change, Stamp
from unibus.core import naming
from unibus.core.log import get_logger
from unibus.core.sysreq import server_ping

_log = get_logger("unibus.authcallout.kicks")
_CONNZ_LIMIT = 10_000
_KICKS_IN_FLIGHT = 32


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
class Connection:
    server_id: str
    cid: int
    name: str


class Kicker:
    """Finds and kicks affected connections through a system-account connection."""

    def __init__(self, sys_nc: NATS, *, expected_servers: int, timeout: float = 2.0) -> None:
        self._nc = sys_nc
        self._expected = expected_servers
        self._timeout = timeout

    async def connections(self) -> list[Connection]:
        body = msgspec.json.encode(
            {"acc": naming.MEMBER_ACCOUNT, "auth": True, "limit": _CONNZ_LIMIT}
        )
        replies = await server_ping(
            self._nc, "CONNZ", expected=self._expected, timeout=self._timeout, body=body
        )
        found = []
        for reply in replies:
            server_id = str((reply.get("server") or {}).get("id", ""))
            data: dict[str, Any] = reply.get("data") or {}
            for conn in data.get("connections") or []:
                name = conn.get("authorized_user") or ""
                cid = conn.get("cid")
                if server_id and isinstance(cid, int) and name:
                    found.append(Connection(server_id, cid, str(name)))
        return found

    async def kick(self, change: Change) -> int:
        """Kick every connection authorized before ``change``; returns how many."""
        return await self._kick_where(lambda conn: is_affected(conn.name, change))

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

        return await self._kick_where(forbidden)

    async def _kick_where(self, condition: Callable[[Connection], bool]) -> int:
        # In parallel (bounded): one after the other, the last of a user's 100 sessions
        # waited for 99 round trips to the servers before it was closed.
        slots = asyncio.Semaphore(_KICKS_IN_FLIGHT)

        async def kick(conn: Connection) -> bool:
            subject = f"$SYS.REQ.SERVER.{conn.server_id}.KICK"
            async with slots:
                try:
                    await self._nc.request(
                        subject, msgspec.json.encode({"cid": conn.cid}), timeout=self._timeout
                    )
                except nats.errors.Error as exc:
                    _log.warning("kick failed", server=conn.server_id, error=type(exc).__name__)
                    return False
            return True

        affected = [conn for conn in await self.connections() if condition(conn)]
        return sum(await asyncio.gather(*(kick(conn) for conn in affected)))
