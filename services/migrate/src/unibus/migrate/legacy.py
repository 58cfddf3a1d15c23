"""The ``Store`` on the legacy SQLite file of the Go membershipd (docs/legacy-sqlite-schema.md).

The legacy tables (``users``, ``rooms``, ``members``, ``sealed_keys``) keep their
columns and their formats: user keys stay 64-hex Ed25519 keys in the file and are
converted to the canonical ``U…`` form on every read (and back on every write). What the
new ``Store`` needs and the legacy format lacks lives in *additive* nullable extension
columns (``revision``, ``updated_at``, the epochs' key ids, signatures, ...) and one
extension table (``unibus_nonces``); they are added when the file is opened writable and
never when it is opened read-only (the migration's source is never modified). A legacy
row without them reads with documented defaults (revision 1, key id ``legacy``, ...).

Every write is one ``BEGIN IMMEDIATE`` transaction, so a compare-and-set that loses
writes nothing at all (stronger than the KV store's "inert" keys). Calls run in a worker
thread (``asyncio.to_thread``) around one ``sqlite3`` connection guarded by a lock.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import msgspec

from unibus.core import naming
from unibus.core.errors import (
    ConflictError,
    NkeyError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from unibus.core.models import (
    EpochRef,
    MemberRecord,
    Role,
    RoomRecord,
    SealedKeyRecord,
    Status,
    UserRecord,
    Versioned,
)
from unibus.core.nkeys import canonical_user_key, user_key_ed25519
from unibus.core.roomchain import LEGACY_KEY_ID, SignedState
from unibus.core.store import IndexRepair

T = TypeVar("T")

BUSY_TIMEOUT: Final = 5.0

LEGACY_SCHEMA: Final = """
CREATE TABLE users (
    sign_pub   TEXT PRIMARY KEY,
    handle     TEXT NOT NULL,
    role       TEXT NOT NULL DEFAULT 'member',
    status     TEXT NOT NULL DEFAULT 'active',
    created_at INTEGER NOT NULL
);
CREATE TABLE rooms (
    id         TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL DEFAULT 1,
    owner      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE members (
    room_id  TEXT NOT NULL,
    user     TEXT NOT NULL,
    epoch    INTEGER NOT NULL DEFAULT 1,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user)
);
CREATE TABLE sealed_keys (
    room_id    TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    member     TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, epoch, member)
);
"""
"""The legacy tables exactly as docs/legacy-sqlite-schema.md documents them."""

LEGACY_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "users": frozenset({"sign_pub", "handle", "role", "status", "created_at"}),
    "rooms": frozenset({"id", "epoch", "owner", "created_at"}),
    "members": frozenset({"room_id", "user", "epoch", "added_at"}),
    "sealed_keys": frozenset({"room_id", "epoch", "member", "sealed"}),
}
"""Columns a file must have to be read as the legacy format (anything else is refused)."""

EXTENSION_COLUMNS: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
    # table: (column, declaration, SQL default used when the column is absent)
    "users": (
        ("revision", "INTEGER", "1"),
        ("updated_at", "REAL", "NULL"),
    ),
    "rooms": (
        ("revision", "INTEGER", "1"),
        ("updated_at", "REAL", "NULL"),
        ("epochs_json", "TEXT", "NULL"),
        ("chain_json", "TEXT", "NULL"),
    ),
    "members": (
        ("added_by", "TEXT", "NULL"),
        ("signature", "BLOB", "NULL"),
        ("statement", "INTEGER", "1"),
    ),
    "sealed_keys": (
        ("key_id", "TEXT", "NULL"),
        ("signer", "TEXT", "NULL"),
        ("signature", "BLOB", "NULL"),
    ),
}
_NONCES_TABLE: Final = """
CREATE TABLE IF NOT EXISTS unibus_nonces (
    caller     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (caller, nonce)
)
"""
_chain_decoder: Final = msgspec.json.Decoder(tuple[SignedState, ...])
_epochs_decoder: Final = msgspec.json.Decoder(list[tuple[int, str]])


class LegacyFormatError(StoreError):
    """The file is unreadable, corrupt, or not the documented legacy schema."""


@functools.lru_cache(maxsize=65_536)
def to_hex(key: str) -> str:
    """The legacy 64-hex form of a user key (lower case)."""
    return user_key_ed25519(key).hex()


@functools.lru_cache(maxsize=65_536)
def from_hex(value: str) -> str:
    """The canonical ``U…`` form of a key read from the file."""
    try:
        return canonical_user_key(value)
    except NkeyError as exc:
        raise LegacyFormatError(f"a stored user key is not a valid key ({exc})") from None


def to_time(value: object) -> float:
    """A legacy timestamp (unix seconds, or ISO-8601 text as Go's driver wrote it) as float."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise LegacyFormatError(f"unreadable timestamp {text!r} in the legacy file") from None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def check_legacy_schema(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """Each legacy table's columns; ``LegacyFormatError`` if one is missing or incomplete."""
    found: dict[str, set[str]] = {}
    problems = []
    for table, required in LEGACY_COLUMNS.items():
        columns = _columns(conn, table)
        if not columns:
            problems.append(f"table {table} is missing")
        elif missing := required - columns:
            problems.append(f"table {table} lacks {', '.join(sorted(missing))}")
        found[table] = columns
    if problems:
        raise LegacyFormatError(
            "not the legacy membershipd schema (docs/legacy-sqlite-schema.md): "
            + "; ".join(problems)
        )
    return found


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    result = conn.execute("PRAGMA quick_check").fetchone()
    if result is None or result[0] != "ok":
        raise LegacyFormatError(f"{path}: the SQLite file is corrupt ({result})")


def open_connection(path: Path, *, readonly: bool, create: bool = False) -> sqlite3.Connection:
    """A checked connection: readable, not corrupt (``quick_check``), legacy schema."""
    if not path.exists() and not create:
        raise LegacyFormatError(f"{path}: no such file")
    if path.exists() and not path.is_file():
        raise LegacyFormatError(f"{path}: not a regular file")
    fresh = not path.exists() or path.stat().st_size == 0
    try:
        if readonly:
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, check_same_thread=False)
        conn.isolation_level = None
        try:
            if fresh and create and not readonly:
                conn.executescript(LEGACY_SCHEMA)
            _check_integrity(conn, path)
            check_legacy_schema(conn)
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise LegacyFormatError(f"{path}: unreadable or corrupt SQLite file ({exc})") from None
    return conn


class SQLiteStore:
    """The ``Store`` on a legacy file; create it with ``await SQLiteStore.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self._path = path
        self._readonly = readonly
        self._lock = threading.Lock()
        self._cols = {table: _columns(conn, table) for table in LEGACY_COLUMNS}

    @classmethod
    async def open(cls, path: Path, *, create: bool = False, readonly: bool = False) -> SQLiteStore:
        """Open (``create``: or make) a legacy file; ``LegacyFormatError`` if unusable.

        Writable opens add the extension columns; read-only opens change nothing.
        """
        return await asyncio.to_thread(cls._open_sync, path, create, readonly)

    @classmethod
    def _open_sync(cls, path: Path, create: bool, readonly: bool) -> SQLiteStore:
        conn = open_connection(path, readonly=readonly, create=create)
        if not readonly:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for table, extensions in EXTENSION_COLUMNS.items():
                    present = _columns(conn, table)
                    for column, declaration, _ in extensions:
                        if column not in present:
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                conn.execute(_NONCES_TABLE)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.close()
                raise LegacyFormatError(f"{path}: cannot prepare the file: {exc}") from None
        return cls(conn, path, readonly=readonly)

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)

    # -- plumbing -------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, fn)

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._conn)
            except StoreError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"{self._path}: SQLite failed: {exc}") from None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._readonly:
            raise StoreError(f"{self._path} is open read-only")

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._call(transaction)

    def _col(self, table: str, column: str) -> str:
        """``column``, or its documented default when the file does not have it."""
        if column in self._cols[table]:
            return f"{table}.{column}"
        for name, _, default in EXTENSION_COLUMNS.get(table, ()):
            if name == column:
                return default
        return "NULL"

    # -- users ----------------------------------------------------------------------------------
    def _user_select(self) -> str:
        return (
            "SELECT users.sign_pub, users.handle, users.role, users.status, users.created_at, "  # noqa: S608 - column names from constants
            f"{self._col('users', 'updated_at')}, COALESCE({self._col('users', 'revision')}, 1) "
            "FROM users"
        )

    @staticmethod
    def _user_row(row: Sequence[Any]) -> Versioned[UserRecord]:
        sign_pub, handle, role, status, created_at, updated_at, revision = row
        created = to_time(created_at)
        try:
            user = UserRecord(
                key=from_hex(str(sign_pub)),
                handle=str(handle),
                role=Role(str(role).strip().lower()),
                status=Status(str(status).strip().lower()),
                created_at=created,
                updated_at=created if updated_at is None else float(updated_at),
            )
        except ValueError as exc:
            raise LegacyFormatError(f"user {sign_pub}: unreadable row ({exc})") from None
        return Versioned(user, int(revision))

    def _get_user(self, conn: sqlite3.Connection, key: str) -> Versioned[UserRecord]:
        row = conn.execute(
            self._user_select() + " WHERE lower(users.sign_pub) = ?", (to_hex(key),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no user {key}")
        return self._user_row(row)

    async def add_user(self, user: UserRecord) -> Versioned[UserRecord]:
        hex_key = to_hex(user.key)

        def add(conn: sqlite3.Connection) -> Versioned[UserRecord]:
            if conn.execute("SELECT 1 FROM users WHERE lower(sign_pub) = ?", (hex_key,)).fetchone():
                raise ConflictError(f"user {user.key} already exists")
            conn.execute(
                "INSERT INTO users (sign_pub, handle, role, status, created_at, updated_at, "
                "revision) VALUES (?, ?, ?, ?, ?, ?, 1)",
                (
                    hex_key,
                    user.handle,
                    user.role.value,
                    user.status.value,
                    user.created_at,
                    user.updated_at,
                ),
            )
            return Versioned(user, 1)

        return await self._write(add)

    async def get_user(self, key: str) -> Versioned[UserRecord]:
        return await self._call(lambda conn: self._get_user(conn, key))

    async def authorize_user(self, key: str) -> Versioned[UserRecord]:
        # One local file: the read is current by construction.
        return await self.get_user(key)

    async def check_available(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    async def list_users(self) -> list[UserRecord]:
        def scan(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute(self._user_select() + " ORDER BY users.rowid").fetchall()
            return [self._user_row(row).value for row in rows]

        return await self._call(scan)

    async def set_user_status(self, key: str, status: Status) -> Versioned[UserRecord]:
        def flip(conn: sqlite3.Connection) -> Versioned[UserRecord]:
            current = self._get_user(conn, key)
            if current.value.status is status:
                return current
            updated = msgspec.structs.replace(current.value, status=status, updated_at=time.time())
            revision = current.revision + 1
            conn.execute(
                "UPDATE users SET status = ?, updated_at = ?, revision = ? "
                "WHERE lower(sign_pub) = ?",
                (status.value, updated.updated_at, revision, to_hex(key)),
            )
            return Versioned(updated, revision)

        return await self._write(flip)

    async def has_admin(self) -> bool:
        return any(u.role is Role.ADMIN and u.is_active for u in await self.list_users())

    # -- rooms ----------------------------------------------------------------------------------
    def _room_select(self) -> str:
        return (
            "SELECT rooms.id, rooms.epoch, rooms.owner, rooms.created_at, "  # noqa: S608 - column names from constants
            f"{self._col('rooms', 'updated_at')}, {self._col('rooms', 'epochs_json')}, "
            f"{self._col('rooms', 'chain_json')}, COALESCE({self._col('rooms', 'revision')}, 1) "
            "FROM rooms"
        )

    def _room_row(self, conn: sqlite3.Connection, row: Sequence[Any]) -> Versioned[RoomRecord]:
        room_id, epoch, owner, created_at, updated_at, epochs_json, chain_json, revision = row
        try:
            if epochs_json:
                epochs = tuple(
                    EpochRef(epoch=e, key_id=k) for e, k in _epochs_decoder.decode(epochs_json)
                )
            else:
                epochs = tuple(
                    EpochRef(epoch=e, key_id=LEGACY_KEY_ID) for e in range(1, int(epoch) + 1)
                )
            chain = _chain_decoder.decode(chain_json) if chain_json else ()
        except (ValueError, msgspec.DecodeError) as exc:
            raise LegacyFormatError(f"room {room_id}: unreadable row ({exc})") from None
        if not epochs:
            raise LegacyFormatError(f"room {room_id}: epoch {epoch} is below 1")
        members = sorted(
            from_hex(str(m))
            for (m,) in conn.execute("SELECT user FROM members WHERE room_id = ?", (room_id,))
        )
        created = to_time(created_at)
        room = RoomRecord(
            room_id=str(room_id),
            owner=from_hex(str(owner)),
            members=tuple(members),
            epochs=epochs,
            created_at=created,
            updated_at=created if updated_at is None else float(updated_at),
            chain=chain,
        )
        return Versioned(room, int(revision))

    def _get_room(self, conn: sqlite3.Connection, room_id: str) -> Versioned[RoomRecord]:
        row = conn.execute(
            self._room_select() + " WHERE rooms.id = ?", (naming.check_room_id(room_id),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no room {room_id}")
        return self._room_row(conn, row)

    @staticmethod
    def _room_values(room: RoomRecord) -> tuple[Any, ...]:
        epochs = msgspec.json.encode([(ref.epoch, ref.key_id) for ref in room.epochs]).decode()
        chain = msgspec.json.encode(room.chain).decode() if room.chain else None
        return (room.epoch, to_hex(room.owner), room.created_at, room.updated_at, epochs, chain)

    @staticmethod
    def _write_parts(
        conn: sqlite3.Connection,
        room: RoomRecord,
        members: Sequence[MemberRecord],
        sealed_keys: Sequence[SealedKeyRecord],
    ) -> None:
        now = time.time()
        conn.executemany(
            "INSERT OR REPLACE INTO sealed_keys (room_id, epoch, member, sealed, created_at, "
            "key_id, signer, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    k.room_id,
                    k.epoch,
                    to_hex(k.member),
                    k.sealed,
                    now,
                    k.key_id,
                    k.signer,
                    k.signature,
                )
                for k in sealed_keys
            ],
        )
        current = set(room.members)
        conn.executemany(
            "DELETE FROM members WHERE room_id = ? AND user = ?",
            [
                (room.room_id, m)
                for (m,) in conn.execute(
                    "SELECT user FROM members WHERE room_id = ?", (room.room_id,)
                ).fetchall()
                if from_hex(str(m)) not in current
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO members (room_id, user, epoch, added_at, added_by, "
            "signature, statement) VALUES (?, ?, ?, ?, '', NULL, 0)",
            [(room.room_id, to_hex(m), room.epoch, room.updated_at) for m in room.members],
        )
        conn.executemany(
            "UPDATE members SET epoch = ?, added_at = ?, added_by = ?, signature = ?, "
            "statement = 1 WHERE room_id = ? AND user = ?",
            [
                (m.epoch, m.added_at, m.added_by, m.signature, m.room_id, to_hex(m.member))
                for m in members
                if m.room_id == room.room_id and m.member in current
            ],
        )

    async def create_room(
        self,
        room: RoomRecord,
        *,
        members: Sequence[MemberRecord],
        sealed_keys: Sequence[SealedKeyRecord],
    ) -> Versioned[RoomRecord]:
        room_id = naming.check_room_id(room.room_id)

        def create(conn: sqlite3.Connection) -> Versioned[RoomRecord]:
            if conn.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone():
                raise ConflictError(f"room {room_id} already exists")
            conn.execute(
                "INSERT INTO rooms (id, epoch, owner, created_at, updated_at, epochs_json, "
                "chain_json, revision) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                (room_id, *self._room_values(room)),
            )
            self._write_parts(conn, room, members, sealed_keys)
            return Versioned(room, 1)

        return await self._write(create)

    async def get_room(self, room_id: str) -> Versioned[RoomRecord]:
        return await self._call(lambda conn: self._get_room(conn, room_id))

    async def commit_room(
        self,
        previous: Versioned[RoomRecord],
        updated: RoomRecord,
        *,
        members: Sequence[MemberRecord] = (),
        sealed_keys: Sequence[SealedKeyRecord] = (),
    ) -> Versioned[RoomRecord]:
        if updated.room_id != previous.value.room_id:
            raise ValueError("commit_room cannot change a room's id")
        room_id = naming.check_room_id(updated.room_id)

        def commit(conn: sqlite3.Connection) -> Versioned[RoomRecord]:
            revision = previous.revision + 1
            cursor = conn.execute(
                "UPDATE rooms SET epoch = ?, owner = ?, created_at = ?, updated_at = ?, "
                "epochs_json = ?, chain_json = ?, revision = ? "
                "WHERE id = ? AND COALESCE(revision, 1) = ?",
                (*self._room_values(updated), revision, room_id, previous.revision),
            )
            if cursor.rowcount != 1:
                if conn.execute("SELECT 1 FROM rooms WHERE id = ?", (room_id,)).fetchone():
                    raise ConflictError(
                        f"room {room_id} changed since it was read; re-read and retry"
                    )
                raise NotFoundError(f"no room {room_id}")
            self._write_parts(conn, updated, members, sealed_keys)
            return Versioned(updated, revision)

        return await self._write(commit)

    async def list_rooms(self) -> list[RoomRecord]:
        def scan(conn: sqlite3.Connection) -> list[RoomRecord]:
            rows = conn.execute(self._room_select() + " ORDER BY rooms.rowid").fetchall()
            return [self._room_row(conn, row).value for row in rows]

        return await self._call(scan)

    async def rooms_of(self, user_key: str) -> list[str]:
        hex_key = to_hex(user_key)
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT room_id FROM members WHERE lower(user) = ? ORDER BY room_id", (hex_key,)
            ).fetchall()
        )
        return [str(room_id) for (room_id,) in rows]

    def _member_records(self, conn: sqlite3.Connection, room_id: str) -> list[MemberRecord]:
        rows = conn.execute(
            "SELECT members.user, members.epoch, members.added_at, "  # noqa: S608 - column names from constants
            f"{self._col('members', 'added_by')}, {self._col('members', 'signature')} "
            f"FROM members WHERE members.room_id = ? "
            f"AND COALESCE({self._col('members', 'statement')}, 1) = 1",
            (room_id,),
        ).fetchall()
        records = [
            MemberRecord(
                room_id=room_id,
                member=from_hex(str(user)),
                added_by=str(added_by or ""),
                epoch=int(epoch),
                added_at=to_time(added_at),
                signature=bytes(signature or b""),
            )
            for user, epoch, added_at, added_by, signature in rows
        ]
        return sorted(records, key=lambda r: r.member)

    async def member_records(self, room_id: str) -> list[MemberRecord]:
        def read(conn: sqlite3.Connection) -> list[MemberRecord]:
            self._get_room(conn, room_id)
            return self._member_records(conn, room_id)

        return await self._call(read)

    def _sealed_keys(
        self, conn: sqlite3.Connection, room: RoomRecord, member: str | None
    ) -> list[SealedKeyRecord]:
        committed = {(ref.epoch, ref.key_id) for ref in room.epochs}
        query = (
            "SELECT sealed_keys.epoch, sealed_keys.member, sealed_keys.sealed, "  # noqa: S608 - column names from constants
            f"COALESCE({self._col('sealed_keys', 'key_id')}, '{LEGACY_KEY_ID}'), "
            f"{self._col('sealed_keys', 'signer')}, {self._col('sealed_keys', 'signature')} "
            "FROM sealed_keys WHERE sealed_keys.room_id = ?"
        )
        params: tuple[str, ...] = (room.room_id,)
        if member is not None:
            query += " AND lower(sealed_keys.member) = ?"
            params = (room.room_id, to_hex(member))
        found = []
        for epoch, who, sealed, key_id, signer, signature in conn.execute(query, params):
            if (int(epoch), str(key_id)) not in committed:
                continue  # a key of an epoch the room never committed: inert
            found.append(
                SealedKeyRecord(
                    room_id=room.room_id,
                    epoch=int(epoch),
                    key_id=str(key_id),
                    member=from_hex(str(who)),
                    sealed=bytes(sealed),
                    signer=str(signer or ""),
                    signature=bytes(signature or b""),
                )
            )
        return sorted(found, key=lambda r: (r.epoch, r.key_id, r.member))

    async def sealed_keys(self, room_id: str, member: str) -> list[SealedKeyRecord]:
        def read(conn: sqlite3.Connection) -> list[SealedKeyRecord]:
            return self._sealed_keys(conn, self._get_room(conn, room_id).value, member)

        return await self._call(read)

    async def repair_index(self) -> IndexRepair:
        # The reverse index is the members table itself: nothing can drift.
        return IndexRepair(added=0, removed=0)

    # -- anti-replay ----------------------------------------------------------------------------
    async def claim_nonce(self, caller: str, nonce: str) -> None:
        def claim(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO unibus_nonces (caller, nonce, created_at) VALUES (?, ?, ?)",
                    (caller, nonce, time.time()),
                )
            except sqlite3.IntegrityError:
                raise ConflictError("nonce already used: the request is a replay") from None

        await self._write(claim)

    # -- whole-file reads (the migration's source) ----------------------------------------------
    def read_all(
        self,
    ) -> tuple[list[UserRecord], list[RoomRecord], list[MemberRecord], list[SealedKeyRecord]]:
        """Every user, room, current member statement and committed sealed key (blocking)."""

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[list[UserRecord], list[RoomRecord], list[MemberRecord], list[SealedKeyRecord]]:
            conn.execute("BEGIN")  # one consistent read snapshot
            try:
                users = [self._user_row(r).value for r in conn.execute(self._user_select())]
                rooms = [
                    self._room_row(conn, r).value
                    for r in conn.execute(self._room_select()).fetchall()
                ]
                members = [m for room in rooms for m in self._member_records(conn, room.room_id)]
                keys = [k for room in rooms for k in self._sealed_keys(conn, room, None)]
            finally:
                conn.execute("ROLLBACK")
            return users, rooms, members, keys

        return self._locked(read)
