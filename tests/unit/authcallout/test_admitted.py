"""What an instance remembers of the connections it admitted, to kick them where CONNZ
cannot see (a node in lame duck answers no system request)."""

from __future__ import annotations

from unibus.authcallout.kicks import AdmittedConnections, Connection, connection_name
from unibus.authcallout.view import Change, Stamp
from unibus.core import naming
from unibus.core.nkeys import KeyPair, Prefix

ALICE = KeyPair.generate(Prefix.USER).public_key
BOB = KeyPair.generate(Prefix.USER).public_key


def _revoked(user: str, revision: int) -> Change:
    return Change(naming.USERS_BUCKET, revision, frozenset({user}), True, None)


def test_only_the_affected_connections_admitted_before_the_change_are_returned() -> None:
    admitted = AdmittedConnections(lifetime=300.0)
    old = connection_name(ALICE, Stamp(4, 1))
    admitted.add("NSERVER1", 7, old, now=0.0)
    admitted.add("NSERVER2", 9, connection_name(ALICE, Stamp(10, 1)), now=0.0)  # after it
    admitted.add("NSERVER1", 8, connection_name(BOB, Stamp(4, 1)), now=0.0)  # someone else

    assert admitted.affected_by(_revoked(ALICE, 10), now=1.0) == [Connection("NSERVER1", 7, old)]


def test_a_connection_is_forgotten_once_its_jwt_can_no_longer_keep_it() -> None:
    admitted = AdmittedConnections(lifetime=300.0)
    admitted.add("NSERVER1", 7, connection_name(ALICE, Stamp(4, 1)), now=0.0)

    assert admitted.affected_by(_revoked(ALICE, 10), now=299.0)
    assert admitted.affected_by(_revoked(ALICE, 10), now=301.0) == []
    assert len(admitted) == 0


def test_a_flood_of_connects_keeps_at_most_the_limit_newest_first() -> None:
    admitted = AdmittedConnections(lifetime=300.0, limit=3)
    for cid in range(10):
        admitted.add("NSERVER1", cid, connection_name(ALICE, Stamp(1, 1)), now=float(cid))

    assert len(admitted) == 3
    kept = admitted.affected_by(_revoked(ALICE, 2), now=10.0)
    assert [c.cid for c in kept] == [7, 8, 9]
