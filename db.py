"""Every SQL statement of Button API V3, as plain async functions.

Reads go through a read connection. Every write goes through one gate, `Database.write`:
a single writer task takes every write that is waiting, runs them in one `BEGIN IMMEDIATE`
transaction and resolves their futures only after `COMMIT` (group commit: concurrent
requests share one fsync, and success is never reported before the data is durable).
Write steps never raise for expected conflicts (they use `ON CONFLICT DO NOTHING` and
report it); if one fails unexpectedly, the batch is rolled back and each step is retried
in a transaction of its own, so one bad step cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger("buttonapi.db")

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 1
MAX_ID = 2**63 - 1  # SQLite's largest integer; larger ids are clamped to it by the caller

MESSAGE_COLUMNS = "id, kind, sender, message, channel, recipient, timestamp, source"

Row = dict[str, Any]
WriteStep = Callable[[aiosqlite.Connection], Awaitable[Any]]


def now() -> str:
    """Server time, UTC, ISO 8601 with milliseconds and Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


async def _connect(path: str, *, readonly: bool = False) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; the write gate says BEGIN and COMMIT.
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = _dict_row
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Database:
    """The write connection behind the write gate, and the read connection."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self._pending: list[tuple[WriteStep, asyncio.Future, bool]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._write_loop(), name="buttonapi-writer")

    async def stop(self) -> None:
        """Commit every write still waiting, then stop the writer."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None

    async def write(self, step: WriteStep, *, scrub: bool = False) -> Any:
        """Run `step(conn)` inside a transaction; return its result once committed.

        `scrub=True` (deletions): after the commit the WAL is checkpointed and truncated
        before the caller hears back, so no older copy of the deleted text stays on disk.
        """
        if self._task is None or self._closing:
            raise RuntimeError("database is closed")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((step, future, scrub))
        self._wake.set()
        return await future

    async def fetch_one(self, sql: str, params: tuple = ()) -> Row | None:
        async with self.reader.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetch_all(self, sql: str, params: tuple = ()) -> list[Row]:
        return list(await self.reader.execute_fetchall(sql, params))

    async def _write_loop(self) -> None:
        try:
            while self._pending or not self._closing:
                await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self._commit_batch(batch)
        finally:  # cancelled: no caller waits forever
            for _, future, _ in self._pending:
                if not future.done():
                    future.set_exception(RuntimeError("database writer stopped"))

    async def _commit_batch(self, batch: list[tuple[WriteStep, asyncio.Future, bool]]) -> None:
        try:
            results = await self._transaction([step for step, _, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("a batch of %d writes failed; retrying each alone", len(batch))
            for item in batch:
                await self._commit_batch([item])
            return
        if any(scrub for _, _, scrub in batch):
            await self._checkpoint()
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _checkpoint(self) -> None:
        try:
            async with self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cursor:
                busy, _, _ = (await cursor.fetchone()).values()
            if busy:
                log.warning("WAL checkpoint after a deletion was blocked by a reader")
        except sqlite3.Error:  # committed already: report the write, log the checkpoint
            log.exception("WAL checkpoint after a deletion failed")

    async def _transaction(self, steps: list[WriteStep]) -> list[Any]:
        conn = self.writer
        await conn.execute("BEGIN IMMEDIATE")
        try:
            results = [await step(conn) for step in steps]
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        return results


def _create_private_file(path: str) -> None:
    """Create the database file readable by its owner only (it holds tokens)."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


@contextlib.asynccontextmanager
async def open_database(path: str) -> AsyncIterator[Database]:
    """Create the file and schema if needed; yield a running Database; close it cleanly."""
    await asyncio.to_thread(_create_private_file, path)
    writer = await _connect(path)
    reader = None
    try:
        await writer.execute("PRAGMA journal_mode = WAL")
        await writer.execute("PRAGMA synchronous = FULL")
        await writer.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten
        await writer.executescript(await asyncio.to_thread(SCHEMA_PATH.read_text, "utf-8"))
        await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        reader = await _connect(path, readonly=True)
        db = Database(writer, reader)
        db.start()
        try:
            yield db
        finally:
            await db.stop()
    finally:
        if reader is not None:
            await reader.close()
        await writer.close()


# --- users and tokens -------------------------------------------------------------------


async def user_by_name(db: Database, username: str) -> Row | None:
    return await db.fetch_one(
        "SELECT id, username, password_hash, token FROM users WHERE username = ?", (username,)
    )


async def user_by_token(db: Database, token: str) -> Row | None:
    return await db.fetch_one("SELECT id, username, token FROM users WHERE token = ?", (token,))


async def create_user(db: Database, username: str, password_hash: str) -> bool:
    """Insert a user; False if the name is taken (case-insensitively)."""

    async def step(conn: aiosqlite.Connection) -> bool:
        cursor = await conn.execute(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (username, password_hash, now()),
        )
        return cursor.rowcount == 1

    return await db.write(step)


async def replace_token(db: Database, user_id: int, token: str) -> str | None:
    """Give the user a new token; return the old one (None if there was none)."""

    async def step(conn: aiosqlite.Connection) -> str | None:
        async with conn.execute("SELECT token FROM users WHERE id = ?", (user_id,)) as cursor:
            row = await cursor.fetchone()
        await conn.execute("UPDATE users SET token = ? WHERE id = ?", (token, user_id))
        return row["token"] if row else None

    return await db.write(step)


# --- channels ---------------------------------------------------------------------------


async def channel_by_name(db: Database, name: str) -> Row | None:
    return await db.fetch_one("SELECT id, name FROM channels WHERE name = ?", (name,))


async def is_member(db: Database, channel_id: int, user_id: int) -> bool:
    row = await db.fetch_one(
        "SELECT 1 AS yes FROM members WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
    )
    return row is not None


async def create_channel(db: Database, name: str, creator_id: int) -> int | None:
    """Create a channel with its creator as first member; None if the name is taken."""

    async def step(conn: aiosqlite.Connection) -> int | None:
        cursor = await conn.execute(
            "INSERT INTO channels (name, creator_id, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (name, creator_id, now()),
        )
        if cursor.rowcount != 1:
            return None
        channel_id = cursor.lastrowid
        await conn.execute(
            "INSERT INTO members (channel_id, user_id) VALUES (?, ?)", (channel_id, creator_id)
        )
        return channel_id

    return await db.write(step)


async def add_member(db: Database, channel_id: int, user_id: int) -> bool:
    """Add a member; False if already one."""

    async def step(conn: aiosqlite.Connection) -> bool:
        cursor = await conn.execute(
            "INSERT INTO members (channel_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (channel_id, user_id),
        )
        return cursor.rowcount == 1

    return await db.write(step)


async def channels_of(db: Database, user_id: int) -> list[Row]:
    return await db.fetch_all(
        "SELECT c.name AS channel_name, c.id AS channel_id FROM members AS m"
        " JOIN channels AS c ON c.id = m.channel_id WHERE m.user_id = ? ORDER BY m.channel_id",
        (user_id,),
    )


# --- messages ---------------------------------------------------------------------------


async def insert_message(
    db: Database,
    *,
    kind: str,
    sender_id: int | None,
    sender: str,
    message: str,
    channel_id: int | None = None,
    channel: str | None = None,
    recipient_id: int | None = None,
    recipient: str | None = None,
    source: str = "api",
) -> Row:
    """Store a message (and, for a DM, both sides' links); return the message object."""

    async def step(conn: aiosqlite.Connection) -> Row:
        row = {
            "kind": kind,
            "sender": sender,
            "message": message,
            "channel": channel,
            "recipient": recipient,
            "timestamp": now(),
            "source": source,
        }
        cursor = await conn.execute(
            "INSERT INTO messages (kind, sender_id, sender, message, channel_id, channel,"
            " recipient_id, recipient, timestamp, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                sender_id,
                sender,
                message,
                channel_id,
                channel,
                recipient_id,
                recipient,
                row["timestamp"],
                source,
            ),
        )
        message_id = cursor.lastrowid
        if kind == "dm":
            links = {(sender_id, recipient_id), (recipient_id, sender_id)}
            await conn.executemany(
                "INSERT INTO dm_links (user_id, peer_id, message_id) VALUES (?, ?, ?)",
                [(user, peer, message_id) for user, peer in links],
            )
        return {"id": message_id, **row}

    return await db.write(step)


async def message_by_id(db: Database, message_id: int) -> Row | None:
    """The message object plus the ids that decide who may read it."""
    return await db.fetch_one(
        f"SELECT {MESSAGE_COLUMNS}, sender_id, channel_id, recipient_id FROM messages WHERE id = ?",
        (message_id,),
    )


async def delete_message(db: Database, message_id: int) -> bool:
    """Delete the row (its text is overwritten on disk: secure_delete); False if gone."""

    async def step(conn: aiosqlite.Connection) -> bool:
        cursor = await conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        return cursor.rowcount == 1

    return await db.write(step, scrub=True)


def _newest_first_to_oldest_first(rows: list[Row]) -> list[Row]:
    rows.reverse()
    return rows


async def public_messages(db: Database, count: int, before: int) -> list[Row]:
    return _newest_first_to_oldest_first(
        await db.fetch_all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE kind = 'public' AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (before, count),
        )
    )


async def channel_messages(db: Database, channel_id: int, count: int, before: int) -> list[Row]:
    return _newest_first_to_oldest_first(
        await db.fetch_all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (channel_id, before, count),
        )
    )


async def sent_messages(db: Database, user_id: int, count: int, before: int) -> list[Row]:
    return _newest_first_to_oldest_first(
        await db.fetch_all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = ? AND id < ?"
            " ORDER BY id DESC LIMIT ?",
            (user_id, before, count),
        )
    )


async def has_sent(db: Database, user_id: int) -> bool:
    row = await db.fetch_one(
        "SELECT 1 AS yes FROM messages WHERE sender_id = ? LIMIT 1", (user_id,)
    )
    return row is not None


async def dms(
    db: Database, user_id: int, count: int, before: int, peer_id: int | None = None
) -> list[Row]:
    """DMs the user sent or received, optionally with one peer only."""
    columns = "m.id, m.kind, m.sender, m.message, m.channel, m.recipient, m.timestamp, m.source"
    if peer_id is None:
        sql = (
            f"SELECT {columns} FROM dm_links AS d JOIN messages AS m ON m.id = d.message_id"
            " WHERE d.user_id = ? AND d.message_id < ? ORDER BY d.message_id DESC LIMIT ?"
        )
        params: tuple = (user_id, before, count)
    else:
        sql = (
            f"SELECT {columns} FROM dm_links AS d JOIN messages AS m ON m.id = d.message_id"
            " WHERE d.user_id = ? AND d.peer_id = ? AND d.message_id < ?"
            " ORDER BY d.message_id DESC LIMIT ?"
        )
        params = (user_id, peer_id, before, count)
    return _newest_first_to_oldest_first(await db.fetch_all(sql, params))


async def has_dms(db: Database, user_id: int) -> bool:
    row = await db.fetch_one("SELECT 1 AS yes FROM dm_links WHERE user_id = ? LIMIT 1", (user_id,))
    return row is not None
