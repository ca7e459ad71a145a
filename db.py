"""Every SQL statement of Button API V3, as plain async functions.

Reads go through a read connection (aiosqlite). Every write goes through one gate,
`Database.write`: a single writer task takes every write that is waiting and runs them, on
the writer's own thread in one trip, in one `BEGIN IMMEDIATE` transaction; it resolves their
futures only after `COMMIT` (group commit: concurrent requests share one trip and one fsync,
and success is never reported before the data is durable). A write is a plain function
`step(conn)` of a `sqlite3.Connection`. Steps never raise for expected conflicts (they use
`ON CONFLICT DO NOTHING` and report it); if one fails unexpectedly, the batch is rolled back
and each step is retried in a transaction of its own, so one bad step cannot fail its
neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import heapq
import itertools
import json
import logging
import os
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

import permissions
from permissions import Actor, Role

log = logging.getLogger("buttonapi.db")

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
SCHEMA_VERSION = 5
NONCE_SECONDS = 24 * 3600  # how long a send's nonce is remembered
MAX_ID = 2**63 - 1  # SQLite's largest integer; larger ids are clamped to it by the caller
MESSAGE_COLUMNS = (
    "id, kind, sender, message, channel, recipient, timestamp, source, edited_timestamp"
)

# Migrations of a file made by an older version: for each version, SQL run before and after
# schema.sql (which creates what is missing), all in one transaction with the version bump.
MIGRATIONS: dict[int, tuple[str, str]] = {
    # 2: editmessage (messages.edited_timestamp) and the outbox's 'edit' state (a CHECK
    # constraint: SQLite can only rebuild the table), `username` and `webhook_id`.
    2: (
        "ALTER TABLE messages ADD COLUMN edited_timestamp TEXT;"
        " DROP INDEX discord_outbox_due; DROP INDEX discord_outbox_by_message;"
        " ALTER TABLE discord_outbox RENAME TO discord_outbox_v1;",
        "INSERT INTO discord_outbox (id, message_id, part, dest, state, content, nonce,"
        " discord_channel_id, discord_message_id, attempts, not_before, last_error, created_at)"
        " SELECT id, message_id, part, dest, state, content, nonce, discord_channel_id,"
        " discord_message_id, attempts, not_before, last_error, created_at"
        " FROM discord_outbox_v1; DROP TABLE discord_outbox_v1;",
    ),
    # 3: users.name_key, so that a new name can not be a look-alike of an existing one.
    3: (
        "ALTER TABLE users ADD COLUMN name_key TEXT;",
        "UPDATE users SET name_key = name_key(username);",
    ),
    # 4: roles and timeouts on users; bans, the audit log, invites, Discord links and the
    # counter of the command line's writes are new tables (schema.sql makes them). No link:
    # channels bridged by name before are not bridged until an admin links them.
    4: (
        "ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'member'"
        " CHECK (role IN ('member', 'moderator', 'admin'));"
        " ALTER TABLE users ADD COLUMN timed_out_until TEXT;",
        "",
    ),
    # 5: conversations (SPEC section 10): read_markers comes from schema.sql; the full-text
    # index of every message is filled at start (`SearchIndex.backfill`), whatever the
    # version, so this step has nothing to run of its own.
    5: ("", ""),
}

Row = dict[str, Any]
WriteStep = Callable[[sqlite3.Connection], Any]


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only: names compare like SQLite's NOCASE (`Ω` is not `ω`)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def name_key(name: str) -> str:
    """A name as Unicode's NFKC_Casefold sees it: `ｖｉｃｔｉｍ`, `Victim` and `victim` are one.
    New names may not collide on it; lookups stay ASCII-only (`ascii_lower`)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return unicodedata.normalize("NFKC", folded)


def now(seconds: float = 0) -> str:
    """Server time (plus `seconds`), UTC, ISO 8601 with milliseconds and Z. Such times compare
    as text in time order, in SQL too."""
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


async def _connect_reader(path: str) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions (each read is its own snapshot).
    uri = f"file:{path}?mode=ro"
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.row_factory = _dict_row
    await conn.execute("PRAGMA busy_timeout = 5000")
    # An empty full-text table of this connection's own (TEMP, in memory): a search query
    # is parsed against it before any real index is read (see check_query).
    await conn.execute(f"CREATE VIRTUAL TABLE temp.{QUERY_PROBE} USING fts5(message, content='')")
    return conn


def _connect_monitor(path: str) -> sqlite3.Connection:
    """A read-only connection used on the loop, for Database.check_external only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 1000")
    return conn


def _connect_writer(path: str) -> sqlite3.Connection:
    """The write connection (run on the writer's thread, which alone uses it afterwards)."""
    # isolation_level=None: no implicit transactions; the write gate says BEGIN and COMMIT.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = _dict_row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten
    return conn


class Cache:
    """Answers read from the file, kept in memory until a write changes what they show.

    During a batch the writer's triggers (on the writer's thread) mark what changed with
    `changed(key)`, or `changed()` for every key; `flush()`, on the loop after the COMMIT and
    before any writer of the batch hears back, forgets it. A lookup that spans a flush of its
    key is not kept: take `version()` before reading, and pass it to `keep` after. At most
    `size` keys are kept (the oldest kept goes first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: dict[Hashable, Any] = {}
        self._changed: set[Hashable] = set()  # filled on the writer's thread during a batch
        self._all_changed = False
        self._flushes = 0  # the flushes that forgot something; a version is one of these
        self._forgotten: dict[Hashable, int] = {}  # key: the flush that last forgot it
        self._all_forgotten = 0  # the flush that last forgot every key

    def get(self, key: Hashable) -> Any | None:
        return self._values.get(key)

    def version(self) -> int:
        return self._flushes

    def keep(self, key: Hashable, value: Any, version: int) -> None:
        """Keep `value`, read from the file since `version()` said `version`, unless `key`
        changed in between."""
        if max(self._all_forgotten, self._forgotten.get(key, 0)) > version:
            return
        if key not in self._values and len(self._values) >= self.size:
            self._values.pop(next(iter(self._values)))  # the oldest kept
        self._values[key] = value

    def changed(self, key: Hashable | None = None) -> None:
        """A write changed what `key` (every key when None) shows: forget it at the flush."""
        if key is None:
            self._all_changed = True
        else:
            self._changed.add(key)

    def flush(self) -> None:
        """After a commit (on the loop): forget what the batch changed."""
        if self._all_changed or len(self._forgotten) + len(self._changed) > self.size:
            self._all_changed = False
            self._changed.clear()
            self.forget_all()  # (past `size` changed keys too: what is remembered is bounded)
        elif self._changed:
            self._flushes += 1
            while self._changed:
                key = self._changed.pop()
                self._values.pop(key, None)
                self._forgotten[key] = self._flushes

    def forget_all(self) -> None:
        """Forget every key now, on the loop. The marks of a batch in progress are left for
        its flush: what is read before its COMMIT must not be kept either."""
        self._flushes += 1
        self._values.clear()
        self._forgotten.clear()
        self._all_forgotten = self._flushes


class Caches:
    """The caches of reads, and the TEMP triggers that tell them what a write changed.

    - `tokens`: user_by_token's (token: user); every key goes when a user row or a ban
      changes. A banned user's token is never kept.
    - `memberships`: channel_of_member's memberships found ((lower-cased name, user id):
      channel). Only a removal can make one wrong: every key goes when a member or a user is
      deleted or a user changes.
    - `channel_lists`: channels_of's lists (user id: rows); a user's key goes when one of
      their memberships is added or removed, every key when a channel or a user changes.
    - `pages`: each channel's newest page (readmessagesfromchannel with no `before` or
      `after`, the read every client makes), encoded (channel id: {count: bytes}); a channel's
      key goes when one of its messages is inserted, edited or deleted.

    Made before the write connection, whose triggers call them directly."""

    def __init__(self) -> None:
        self.tokens = Cache(TOKEN_CACHE_SIZE)
        self.memberships = Cache(MEMBERSHIP_CACHE_SIZE)
        self.channel_lists = Cache(TOKEN_CACHE_SIZE)
        self.pages = Cache(MAX_PAGE_CHANNELS)
        self.all = (self.tokens, self.memberships, self.channel_lists, self.pages)

    def install(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread: the triggers (TEMP: this connection's own, made at each
        start) and the functions they call, which run on that thread during a batch."""
        conn.create_function("users_changed", 0, self._users_changed)
        conn.create_function("members_changed", 0, self.memberships.changed)
        conn.create_function("channel_changed", 1, self.pages.changed)
        conn.create_function("channel_list_changed", 1, self.channel_lists.changed)
        conn.execute(
            "CREATE TEMP TRIGGER members_delete AFTER DELETE ON members"
            " BEGIN SELECT members_changed(), channel_list_changed(OLD.user_id); END"
        )
        conn.execute(
            "CREATE TEMP TRIGGER members_insert AFTER INSERT ON members"
            " BEGIN SELECT channel_list_changed(NEW.user_id); END"
        )
        for event in ("UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TEMP TRIGGER channels_{event.lower()} AFTER {event} ON channels"
                " BEGIN SELECT channel_list_changed(NULL); END"
            )
        for event in ("UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TEMP TRIGGER users_{event.lower()} AFTER {event} ON users"
                " BEGIN SELECT users_changed(); END"
            )
        for event in ("INSERT", "UPDATE", "DELETE"):  # a ban ends the token at once
            conn.execute(
                f"CREATE TEMP TRIGGER bans_{event.lower()} AFTER {event} ON bans"
                " BEGIN SELECT users_changed(); END"
            )
        for event, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD")):
            conn.execute(
                f"CREATE TEMP TRIGGER messages_{event.lower()} AFTER {event} ON messages"
                f" WHEN {row}.channel_id IS NOT NULL"
                f" BEGIN SELECT channel_changed({row}.channel_id); END"
            )

    def _users_changed(self) -> None:
        self.tokens.changed()
        self.memberships.changed()
        self.channel_lists.changed()

    def flush(self) -> None:
        """After a commit, on the loop: what the batch changed is forgotten."""
        for cache in self.all:
            cache.flush()

    def flush_all(self) -> None:
        """Forget everything kept. For writes the triggers do not see: another process's
        (the command line's; see Database.check_external)."""
        for cache in self.all:
            cache.forget_all()


TOKEN_CACHE_SIZE = 10_000  # users whose token lookups are kept in memory at most
MEMBERSHIP_CACHE_SIZE = 100_000  # (channel name, user) memberships kept in memory at most
MAX_PAGE_CHANNELS = 1000  # channels whose newest pages are kept at most
MAX_CACHED_COUNT = 100  # newest pages of up to this many messages are kept


# --- the full-text index (SPEC section 10) ------------------------------------------------

SEARCH_SHARD = 8192  # message ids per table of the full-text index
QUERY_PROBE = "search_probe"  # the reader's empty TEMP full-text table (check_query)


def search_table(shard: int) -> str:
    """The name of a shard's FTS5 table: ids shard * SEARCH_SHARD up to the next shard's."""
    return f"search_{shard:d}"


class SearchIndex:
    """The full-text index of every message's text: SQLite FTS5 tables, one per SEARCH_SHARD
    message ids, contentless (the index holds the words, never a copy of the text).

    Why shards: this SQLite (3.40) has no FTS5 `secure-delete`; a word stays in the index's
    pages after its message is deleted until those pages are rewritten. So the shard that
    held a deleted (or edited) text is rewritten ('optimize') in the same transaction, and
    the freed pages are zeroed (`PRAGMA secure_delete`); the cost is bounded by the shard,
    not the whole index. Searches walk the shards newest first and stop when they have
    enough (db.search_messages).

    TEMP triggers on `messages` (every write, whoever makes it) report each text that comes
    or goes during a batch; `apply` brings the index in step before the COMMIT."""

    def __init__(self) -> None:
        self._todo: list[tuple[int, str | None, str | None]] = []  # (id, old text, new text)
        self._shards = 0  # shard tables known to exist: 0 .. _shards - 1

    def install(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread, at start: the triggers, then index what is not yet."""
        conn.create_function("search_changed", 3, self._changed)
        conn.execute(
            "CREATE TEMP TRIGGER search_insert AFTER INSERT ON messages"
            " BEGIN SELECT search_changed(NEW.id, NULL, NEW.message); END"
        )
        conn.execute(
            "CREATE TEMP TRIGGER search_delete AFTER DELETE ON messages"
            " BEGIN SELECT search_changed(OLD.id, OLD.message, NULL); END"
        )
        conn.execute(
            "CREATE TEMP TRIGGER search_update AFTER UPDATE OF message ON messages"
            " WHEN OLD.message IS NOT NEW.message"
            " BEGIN SELECT search_changed(NEW.id, OLD.message, NEW.message); END"
        )
        self._shards = self._count_shards(conn)
        self.backfill(conn)

    def _changed(self, message_id: int, old: str | None, new: str | None) -> None:
        self._todo.append((message_id, old, new))

    @staticmethod
    def _count_shards(conn: sqlite3.Connection) -> int:
        shard = 0
        while conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (search_table(shard),)
        ).fetchone():
            shard += 1
        return shard

    def backfill(self, conn: sqlite3.Connection) -> None:
        """Index every message above the highest id indexed (a file of an older schema, or
        rows written by another program), in one transaction."""
        top = self._shards - 1
        indexed = 0
        while top >= 0 and not indexed:
            table = search_table(top)
            row = conn.execute(f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1").fetchone()
            indexed, top = (row["rowid"] if row else 0), top - 1
        last = conn.execute("SELECT max(id) AS id FROM messages").fetchone()["id"] or 0
        if last <= indexed:
            return
        log.info("indexing the text of messages %d to %d for search", indexed + 1, last)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for shard in range(indexed // SEARCH_SHARD, last // SEARCH_SHARD + 1):
                table = self._table(conn, shard)
                low = max(indexed + 1, shard * SEARCH_SHARD)
                conn.execute(
                    f"INSERT INTO {table} (rowid, message) SELECT id, message FROM messages"
                    " WHERE id >= ? AND id < ?",
                    (low, (shard + 1) * SEARCH_SHARD),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def begin(self) -> None:
        self._todo.clear()

    def apply(self, conn: sqlite3.Connection) -> bool:
        """Inside the batch's transaction: index what came, unindex what went, and rewrite
        each shard a text left. True when one did (the WAL is to be scrubbed too)."""
        rewrite = set()
        added: dict[str, list[tuple[int, str]]] = {}  # table: texts, in one call each
        for message_id, old, new in self._todo:
            table = self._table(conn, message_id // SEARCH_SHARD)
            if old is not None:
                self._add(conn, added)  # what came before goes in first, in order
                conn.execute(
                    f"INSERT INTO {table} ({table}, rowid, message) VALUES ('delete', ?, ?)",
                    (message_id, old),
                )
                rewrite.add(table)
            if new is not None:
                added.setdefault(table, []).append((message_id, new))
        self._add(conn, added)
        self._todo.clear()
        for table in rewrite:  # every segment merged into one: the old words are gone
            conn.execute(f"INSERT INTO {table} ({table}) VALUES ('optimize')")
        return bool(rewrite)

    @staticmethod
    def _add(conn: sqlite3.Connection, added: dict[str, list[tuple[int, str]]]) -> None:
        for table, rows in added.items():
            conn.executemany(f"INSERT INTO {table} (rowid, message) VALUES (?, ?)", rows)
        added.clear()

    def rolled_back(self, conn: sqlite3.Connection) -> None:
        """A batch failed: shards it created are gone again."""
        self._todo.clear()
        self._shards = self._count_shards(conn)

    def _table(self, conn: sqlite3.Connection, shard: int) -> str:
        """The shard's table, created (with every shard below it) if new."""
        while self._shards <= shard:
            conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {search_table(self._shards)}"
                " USING fts5(message, content='', tokenize='unicode61 remove_diacritics 2')"
            )
            self._shards += 1
        return search_table(shard)


class Observer:
    """What the database reports as it works (the metrics listen); by default, nothing."""

    def batch_committed(self, writes: int, seconds: float) -> None:
        """A batch of `writes` was committed in one transaction taking `seconds`."""

    def message_stored(self, kind: str) -> None:
        """A new message of `kind` was committed."""


class Database:
    """The write connection behind the write gate (on its own thread), and the read one."""

    def __init__(
        self,
        writer: sqlite3.Connection,
        thread: ThreadPoolExecutor,
        reader: aiosqlite.Connection,
        caches: Caches,
        monitor: sqlite3.Connection,
        search: SearchIndex,
        external: bool = False,
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.monitor = monitor  # on the loop: has another process committed? (check_external)
        self._checked = False  # check_external ran in this turn of the event loop
        self.external = external  # this is the command line: its commits say so (meta)
        self._data_version = -1
        self._external_writes = -1
        self.external_changes = 0  # how many times check_external found another's writes
        self._thread = thread  # the writer's one thread
        self._pending: list[tuple[WriteStep, asyncio.Future, bool]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.caches = caches  # flushed after each commit, before its writers hear back
        self.search = search  # the full-text index, kept in step by the writer
        self.observer = Observer()

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

    def check_external(self) -> None:
        """Before a cache serves a lookup: if another process (the command line) committed
        since the last check, forget every cache (its writes fire none of our triggers).

        Once per turn of the event loop: every lookup of the turn is of a request or packet
        whose bytes were read before the turn began, so one check made during the turn is
        at least as new as all of them (one PRAGMA per turn, not one per lookup: sqlite3 lets
        go of the GIL for it, and the loop waits to get it back).

        `PRAGMA data_version` on the monitor connection moves when any other connection
        commits, the server's own writer included; the `external_writes` counter, which only
        the command line's transactions bump, says whether a foreign write was among them.
        Both are read on the loop: the pragma only compares the WAL index in shared memory,
        and the counter's one page is read only after a commit. `external_changes` counts
        the checks that found another process's writes."""
        if self._checked:
            return
        self._checked = True
        asyncio.get_running_loop().call_soon(self._next_turn)  # runs in the next turn
        ((version,),) = self.monitor.execute("PRAGMA data_version").fetchall()
        if version == self._data_version:
            return
        self._data_version = version
        ((count,),) = self.monitor.execute(
            "SELECT value FROM meta WHERE key = 'external_writes'"
        ).fetchall()
        if count == self._external_writes:
            return
        first, self._external_writes = self._external_writes == -1, count
        self.caches.flush_all()
        if not first:
            self.external_changes += 1
            log.info("the database was changed by another process: caches forgotten")

    def _next_turn(self) -> None:
        self._checked = False

    async def fetch_one(self, sql: str, params: tuple = ()) -> Row | None:
        """The row of a query that has at most one (a unique key, or LIMIT 1)."""
        rows = await self.reader.execute_fetchall(sql, params)  # one trip to its thread, not 3
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, params: tuple = ()) -> list[Row]:
        return list(await self.reader.execute_fetchall(sql, params))

    async def trace(self, callback: Callable[[str], object] | None) -> None:
        """SQLite's trace hook on both connections: every statement run, with its values."""
        await self.reader.set_trace_callback(callback)
        await self._on_writer(self.writer.set_trace_callback, callback)

    async def _on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

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
        steps = [step for step, _, _ in batch]
        scrub = any(scrub for _, _, scrub in batch)
        started = time.perf_counter()
        try:
            results = await self._on_writer(self._transaction, steps, scrub)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("a batch of %d writes failed; retrying each alone", len(batch))
            for item in batch:
                await self._commit_batch([item])
            return
        finally:
            self.caches.flush()  # before any caller of the batch hears back
        self.observer.batch_committed(len(batch), time.perf_counter() - started)
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _transaction(self, steps: list[WriteStep], scrub: bool) -> list[Any]:
        """On the writer's thread: the steps in one transaction, then (scrub) a checkpoint."""
        conn = self.writer
        self.search.begin()
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [step(conn) for step in steps]
            if self.external:  # the server's caches must hear of it (check_external)
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'external_writes'")
            scrub = self.search.apply(conn) or scrub  # a text left the index: scrub the WAL
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.search.rolled_back(conn)
            raise
        if scrub:
            self._checkpoint()
        return results

    def _checkpoint(self) -> None:
        try:
            busy, _, _ = self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone().values()
            if busy:
                log.warning("WAL checkpoint after a deletion was blocked by a reader")
        except sqlite3.Error:  # committed already: report the write, log the checkpoint
            log.exception("WAL checkpoint after a deletion failed")


def _create_private_file(path: str) -> None:
    """Create the database file readable by its owner only (it holds tokens); an existing
    file, and its WAL and shared-memory files, are made so too."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


def _apply_schema(conn: sqlite3.Connection, schema: str) -> None:
    """Create what is missing; migrate a file of an older version (PRAGMA user_version; 0 is
    a new file). One transaction: a crash leaves the file as it was or fully migrated."""
    (version,) = conn.execute("PRAGMA user_version").fetchone().values()
    if version > SCHEMA_VERSION:
        raise CannotOpen(NEWER_SCHEMA.format(path="the database", version=version))
    steps = [MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1)] if version else []
    script = "\n".join(
        [
            "BEGIN IMMEDIATE;",
            *(before for before, _ in steps),
            schema,
            *(after for _, after in steps),
            f"PRAGMA user_version = {SCHEMA_VERSION:d};",
            "COMMIT;",
        ]
    )
    if steps:
        log.info("migrating the database from schema version %d to %d", version, SCHEMA_VERSION)
    try:
        conn.executescript(script)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _prepare_writer(path: str, caches: Caches, search: SearchIndex) -> sqlite3.Connection:
    """On the writer's thread: the file, its schema, the triggers of the caches and of the
    full-text index (which indexes any message it does not hold yet)."""
    _create_private_file(path)
    conn = _connect_writer(path)
    try:
        conn.create_function("name_key", 1, name_key, deterministic=True)
        _apply_schema(conn, SCHEMA_PATH.read_text("utf-8"))
        caches.install(conn)
        search.install(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.asynccontextmanager
async def open_database(path: str, *, external: bool = False) -> AsyncIterator[Database]:
    """Create the file and schema if needed; yield a running Database; close it cleanly.

    `external`: opened by the command line beside a server that may be running: each of its
    transactions bumps `external_writes`, so the server forgets its caches."""
    loop = asyncio.get_running_loop()
    caches, search = Caches(), SearchIndex()
    check_openable(path)
    with ThreadPoolExecutor(1, "buttonapi-writer") as thread:
        try:
            writer = await loop.run_in_executor(thread, _prepare_writer, path, caches, search)
        except (OSError, sqlite3.DatabaseError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CannotOpen(f"cannot open {path}: {reason}") from exc
        reader = monitor = None
        try:
            reader = await _connect_reader(path)
            monitor = _connect_monitor(path)
            db = Database(writer, thread, reader, caches, monitor, search, external)
            db.start()
            try:
                yield db
            finally:
                await db.stop()
        finally:
            if reader is not None:
                await reader.close()
            if monitor is not None:
                monitor.close()
            await loop.run_in_executor(thread, writer.close)


# --- opening and backing up, for the command line ----------------------------------------

SQLITE_HEADER = b"SQLite format 3\x00"
NEWER_SCHEMA = (
    "{path} is of schema version {version}, newer than this server's "
    f"{SCHEMA_VERSION}: run the newer server, or restore a backup made for this one"
)


class CannotOpen(Exception):
    """The database file can not be used or backed up (one readable line)."""


def check_openable(path: str) -> None:
    """Refuse, before anything is created, a database path the server could not use: a
    folder, a missing or unwritable folder, a file that is not SQLite, a newer schema."""
    target = Path(path)
    if not target.exists():
        folder = target.parent
        if not folder.exists():
            raise CannotOpen(f"cannot create {path}: the folder {folder} does not exist")
        if not folder.is_dir():
            raise CannotOpen(f"cannot create {path}: {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CannotOpen(f"cannot create {path}: the folder {folder} is not writable")
        return
    if not target.is_file():
        raise CannotOpen(f"cannot open {path}: not a regular file")
    try:
        with target.open("r+b") as file:
            header = file.read(100)
    except OSError as exc:
        raise CannotOpen(f"cannot open {path}: {exc.strerror}") from None
    if header and not header.startswith(SQLITE_HEADER):
        raise CannotOpen(f"cannot open {path}: not a SQLite database")
    version = int.from_bytes(header[60:64], "big") if len(header) >= 64 else 0
    if version > SCHEMA_VERSION:
        raise CannotOpen(NEWER_SCHEMA.format(path=path, version=version))


class BackupFailed(Exception):
    """The copy was made but is not sound; nothing was left behind."""


def backup(path: str, target: str) -> None:
    """Copy the live database `path` into the new file `target` (mode 0600), consistently
    while the server writes: SQLite's online backup in one step reads one snapshot (one read
    transaction, which in WAL mode never blocks the writer), so it holds every write
    committed before it started. The copy is checked, synced and then linked into place,
    so `target` never exists half-written, and an existing file is never replaced."""
    if os.path.lexists(target):
        raise CannotOpen(f"{target} exists already: choose a new file name")
    if not Path(path).is_file():
        raise CannotOpen(f"cannot open {path}: no such database file")
    folder = Path(target).absolute().parent
    try:
        fd, temp = tempfile.mkstemp(prefix=".backup-", suffix=".tmp", dir=folder)  # mode 0600
    except OSError as exc:
        raise CannotOpen(f"cannot create {target}: {exc.strerror}") from None
    os.close(fd)
    try:
        _copy_checked(path, temp)
        _fsync(temp)
        try:
            os.link(temp, target)  # atomic, and never over a file made meanwhile
        except FileExistsError:
            raise CannotOpen(f"{target} exists already: choose a new file name") from None
        _fsync(str(folder))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _copy_checked(path: str, temp: str) -> None:
    try:
        source = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise CannotOpen(f"cannot open {path}: {exc}") from None
    with contextlib.closing(source), contextlib.closing(sqlite3.connect(temp)) as copy:
        try:
            source.execute("PRAGMA busy_timeout = 10000")
            source.backup(copy)  # pages=-1: the whole file in one step, from one snapshot
        except sqlite3.Error as exc:
            raise CannotOpen(f"cannot back up {path}: {exc}") from None
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        checked = copy.execute("PRAGMA integrity_check").fetchall()
    if checked != [("ok",)]:
        raise BackupFailed(f"the copy failed its integrity check: {checked[0][0]}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- users and tokens -------------------------------------------------------------------


async def user_by_name(db: Database, username: str) -> Row | None:
    return await db.fetch_one(
        "SELECT id, username, password_hash, token, role FROM users WHERE username = ?",
        (username,),
    )


# A user and their ban, if it lasts (a ban whose `until` has passed is no ban: compared with
# the clock at each lookup, so it ends by itself, across restarts too).
_USER_AND_BAN = (
    "SELECT u.id, u.username, u.token, u.role, u.timed_out_until, u.created_at,"
    " b.user_id IS NOT NULL AND (b.until IS NULL OR b.until > ?) AS banned,"
    " b.reason AS ban_reason, b.until AS ban_until"
    " FROM users AS u LEFT JOIN bans AS b ON b.user_id = u.id"
)


async def user_by_token(db: Database, token: str) -> Row | None:
    """The token's user, unless banned: from memory after the first lookup (see
    Caches.tokens). A banned user's row is never kept, and a new ban forgets every token
    kept (its trigger), the command line's too (check_external)."""
    db.check_external()
    tokens = db.caches.tokens
    user = tokens.get(token)
    if user is None:
        version = tokens.version()
        user = await db.fetch_one(f"{_USER_AND_BAN} WHERE u.token = ?", (now(), token))
        if user is None or user["banned"]:
            return None
        tokens.keep(token, user, version)
    return dict(user)  # a copy: the cached row stays as read


async def banned_among(db: Database, user_ids: list[int]) -> list[int]:
    """Those of the users who are banned now."""
    found = []
    for user_id in user_ids:  # one indexed lookup each: the users with sockets, not all
        row = await db.fetch_one(
            "SELECT 1 AS yes FROM bans WHERE user_id = ? AND (until IS NULL OR until > ?)",
            (user_id, now()),
        )
        if row is not None:
            found.append(user_id)
    return found


async def ban_of_token(db: Database, token: str) -> Row | None:
    """The lasting ban of the token's user ({reason, until}), if any (socket auth says why)."""
    user = await db.fetch_one(f"{_USER_AND_BAN} WHERE u.token = ?", (now(), token))
    return ban_of(user)


async def user_profile(db: Database, user_id: int) -> Row | None:
    """A user with role, creation time, timeout and lasting ban (getme, the login checks)."""
    return await db.fetch_one(f"{_USER_AND_BAN} WHERE u.id = ?", (now(), user_id))


def ban_of(user: Row | None) -> Row | None:
    """{reason, until} of a user row read with its ban (user_profile), if the ban lasts."""
    if user is None or not user["banned"]:
        return None
    return {"reason": user["ban_reason"], "until": user["ban_until"]}


def timed_out_until(user: Row) -> str | None:
    """When the user's timeout ends, if it still lasts."""
    until = user.get("timed_out_until")
    return until if until is not None and until > now() else None


class Created(enum.StrEnum):
    """What create_user did."""

    CREATED = "created"
    EXISTS = "exists"  # the name is taken (case-insensitively, or a look-alike)
    NO_INVITE = "no invite"  # the invite is unknown, used up or expired


def invite_hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


async def create_user(
    db: Database, username: str, password_hash: str, invite: str | None = None, audit: bool = False
) -> Created:
    """Insert a user. With `invite`, one use of it is taken in the same transaction (two
    registrations racing for a one-use invite: exactly one gets it); a taken name uses none.
    `audit`: made on the command line (in the audit log)."""

    key = name_key(username)

    def step(conn: sqlite3.Connection) -> Created:
        if conn.execute("SELECT 1 FROM users WHERE name_key = ?", (key,)).fetchone():
            return Created.EXISTS
        if invite is not None and not _use_invite(conn, invite):
            return Created.NO_INVITE
        cursor = conn.execute(
            "INSERT INTO users (username, password_hash, created_at, name_key) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (username, password_hash, now(), key),
        )
        if cursor.rowcount != 1:
            return Created.EXISTS
        if audit:
            _audit(conn, permissions.CONSOLE, "adduser", target=username)
        return Created.CREATED

    return await db.write(step)


def _use_invite(conn: sqlite3.Connection, code: str) -> bool:
    cursor = conn.execute(
        "UPDATE invites SET uses_left = uses_left - 1"
        " WHERE code_hash = ? AND uses_left > 0 AND expires > ?",
        (invite_hash(code), now()),
    )
    return cursor.rowcount == 1


async def replace_token(db: Database, user_id: int, token: str) -> str | None:
    """Give the user a new token; return the old one (None if there was none)."""

    def step(conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT token FROM users WHERE id = ?", (user_id,)).fetchone()
        conn.execute("UPDATE users SET token = ? WHERE id = ?", (token, user_id))
        return row["token"] if row else None

    return await db.write(step)


async def set_password(
    db: Database, user_id: int, password_hash: str, token: str, audit: str | None = None
) -> None:
    """A new password hash and a new token, together (changepassword; the command line's
    resetpassword, `audit` naming the user for the audit log)."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE users SET password_hash = ?, token = ? WHERE id = ?",
            (password_hash, token, user_id),
        )
        if audit is not None:
            _audit(conn, permissions.CONSOLE, "resetpassword", target=audit)

    await db.write(step)


async def revoke_token(db: Database, token: str) -> int | None:
    """Remove a token; the id of the user who had it, or None if no one had it."""

    def step(conn: sqlite3.Connection) -> int | None:
        with contextlib.closing(
            conn.execute("UPDATE users SET token = NULL WHERE token = ? RETURNING id", (token,))
        ) as cursor:
            row = cursor.fetchone()
        return row["id"] if row else None

    return await db.write(step)


DELETED = "[deleted]"  # shown for the sender of DMs, and the text, of a deleted account


async def delete_account(db: Database, user_id: int) -> list[Row]:
    """Remove an account, its token and memberships, and its messages' text.

    Its feed, channel and `discord` messages are deleted; the DMs it sent stay in the other
    side's history as sender and text `[deleted]`, those it received show recipient
    `[deleted]`. Returns the deleted messages (with the ids that say who could read them)."""

    def step(conn: sqlite3.Connection) -> list[Row]:
        deleted = list(
            conn.execute(
                "SELECT id, kind, channel, sender_id, channel_id, recipient_id FROM messages"
                " WHERE sender_id = ? AND kind != 'dm'",
                (user_id,),
            ).fetchall()
        )
        conn.execute("DELETE FROM messages WHERE sender_id = ? AND kind != 'dm'", (user_id,))
        for message in deleted:
            _outbox_message_deleted(conn, message["id"])  # their Discord copies go too
        conn.execute(
            "UPDATE messages SET sender = ?, message = ?, sender_id = NULL WHERE sender_id = ?",
            (DELETED, DELETED, user_id),
        )
        conn.execute(
            "UPDATE messages SET recipient = ?, recipient_id = NULL WHERE recipient_id = ?",
            (DELETED, user_id),
        )
        conn.execute("DELETE FROM users WHERE id = ?", (user_id,))  # links, memberships
        return deleted

    return await db.write(step, scrub=True)


# --- channels ---------------------------------------------------------------------------


async def channel_by_name(db: Database, name: str) -> Row | None:
    return await db.fetch_one("SELECT id, name FROM channels WHERE name = ?", (name,))


async def channel_of_member(db: Database, name: str, user_id: int) -> Row | None:
    """The named channel, with `member` (1 or 0): whether the user is in it; one lookup, and
    none when the membership is in memory (see Caches.memberships)."""
    db.check_external()
    memberships, key = db.caches.memberships, (ascii_lower(name), user_id)
    channel = memberships.get(key)
    if channel is None:
        version = memberships.version()
        channel = await db.fetch_one(
            "SELECT id, name, EXISTS (SELECT 1 FROM members WHERE channel_id = channels.id"
            " AND user_id = ?) AS member FROM channels WHERE name = ?",
            (user_id, name),
        )
        if channel is not None and channel["member"]:
            memberships.keep(key, channel, version)
    return None if channel is None else dict(channel)  # a copy: the cached row stays as read


async def is_member(db: Database, channel_id: int, user_id: int) -> bool:
    row = await db.fetch_one(
        "SELECT 1 AS yes FROM members WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
    )
    return row is not None


async def create_channel(db: Database, name: str, creator_id: int) -> int | None:
    """Create a channel with its creator as first member; None if the name is taken."""

    def step(conn: sqlite3.Connection) -> int | None:
        cursor = conn.execute(
            "INSERT INTO channels (name, creator_id, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (name, creator_id, now()),
        )
        if cursor.rowcount != 1:
            return None
        channel_id = cursor.lastrowid
        conn.execute(
            "INSERT INTO members (channel_id, user_id) VALUES (?, ?)", (channel_id, creator_id)
        )
        return channel_id

    return await db.write(step)


async def add_member(db: Database, channel_id: int, user_id: int) -> bool:
    """Add a member; False if already one."""

    def step(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            "INSERT INTO members (channel_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (channel_id, user_id),
        )
        return cursor.rowcount == 1

    return await db.write(step)


async def channels_of(db: Database, user_id: int) -> list[Row]:
    """The user's channels by id, from memory until one of them changes (Caches); the rows
    are shared: read them, do not change them."""
    db.check_external()
    channel_lists = db.caches.channel_lists
    channels = channel_lists.get(user_id)
    if channels is None:
        version = channel_lists.version()
        channels = await db.fetch_all(
            "SELECT c.name AS channel_name, c.id AS channel_id FROM members AS m JOIN"
            " channels AS c ON c.id = m.channel_id WHERE m.user_id = ? ORDER BY m.channel_id",
            (user_id,),
        )
        channel_lists.keep(user_id, channels, version)
    return list(channels)


async def channel_creator(db: Database, channel_id: int) -> int | None:
    row = await db.fetch_one("SELECT creator_id FROM channels WHERE id = ?", (channel_id,))
    return row["creator_id"] if row else None


async def channel_creator_name(db: Database, channel_id: int) -> str | None:
    """The creator's username; None once that account is deleted."""
    row = await db.fetch_one(
        "SELECT u.username FROM channels AS c JOIN users AS u ON u.id = c.creator_id"
        " WHERE c.id = ?",
        (channel_id,),
    )
    return row["username"] if row else None


async def remove_member(db: Database, channel_id: int, user_id: int) -> bool:
    """Remove a member; False if not one. The channel stays, even with no member left."""

    def step(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            "DELETE FROM members WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
        )
        return cursor.rowcount == 1

    return await db.write(step)


async def members_of(db: Database, channel_id: int) -> list[str]:
    rows = await db.fetch_all(
        "SELECT u.username FROM members AS m JOIN users AS u ON u.id = m.user_id"
        " WHERE m.channel_id = ? ORDER BY m.user_id",
        (channel_id,),
    )
    return [row["username"] for row in rows]


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
    outbox: list[Row] | None = None,
    nonce: str | None = None,
) -> Row:
    """Store a message (and, for a DM, both sides' links); return the message object.

    `outbox`: its Discord posts (bot.py plans them), committed in the same transaction. A
    `nonce` the sender used in the last 24 hours: nothing stored, `{"id": <that message's
    id>, "repeat": True}` (checked in the write, so two requests with one nonce cannot both
    create a message). A sender banned or timed out by then: `{"refused": ...}`, nothing
    stored (`_restriction`)."""

    def step(conn: sqlite3.Connection) -> Row:
        if (early := _refused_or_repeat(conn, sender_id, nonce)) is not None:
            return early
        row = {
            "kind": kind,
            "sender": sender,
            "message": message,
            "channel": channel,
            "recipient": recipient,
            "timestamp": now(),
            "source": source,
            "edited_timestamp": None,
        }
        cursor = conn.execute(
            "INSERT INTO messages (kind, sender_id, sender, message, channel_id, channel,"
            " recipient_id, recipient, timestamp, source) VALUES (:kind, :sender_id, :sender,"
            " :message, :channel_id, :channel, :recipient_id, :recipient, :timestamp, :source)",
            {**row, "sender_id": sender_id, "channel_id": channel_id, "recipient_id": recipient_id},
        )
        message_id = cursor.lastrowid
        if kind == "dm":
            links = {(sender_id, recipient_id), (recipient_id, sender_id)}
            conn.executemany(
                "INSERT INTO dm_links (user_id, peer_id, message_id) VALUES (?, ?, ?)",
                [(user, peer, message_id) for user, peer in links],
            )
        if outbox:
            _outbox_insert(conn, message_id, outbox)
        if nonce is not None:
            conn.execute(
                "INSERT INTO nonces (user_id, nonce, message_id, created_at) VALUES (?, ?, ?, ?)",
                (sender_id, nonce, message_id, time.time()),
            )
        return {"id": message_id, **row}

    return _stored(db, kind, await db.write(step))


def _stored(db: Database, kind: str, message: Row) -> Row:
    if "repeat" not in message:  # a new message, not the answer to a repeated nonce
        db.observer.message_stored(kind)
    return message


def _refused_or_repeat(
    conn: sqlite3.Connection, sender_id: int | None, nonce: str | None
) -> Row | None:
    """insert_message's answers without a new message: the sender may not send now, or the
    nonce was used already."""
    if sender_id is not None and (refused := _restriction(conn, sender_id)):
        return refused
    if nonce is not None and (seen := _nonce_seen(conn, sender_id, nonce)) is not None:
        return {"id": seen, "repeat": True}
    return None


def _restriction(conn: sqlite3.Connection, user_id: int) -> Row | None:
    """Inside a write: why the user may not send now, or None. `{"refused": "banned"}` (or
    the account is gone), `{"refused": "timed out", "until": ...}`."""
    stamp = now()
    row = conn.execute(
        "SELECT u.timed_out_until AS until, EXISTS (SELECT 1 FROM bans AS b WHERE"
        " b.user_id = u.id AND (b.until IS NULL OR b.until > ?)) AS banned"
        " FROM users AS u WHERE u.id = ?",
        (stamp, user_id),
    ).fetchone()
    if row is None or row["banned"]:
        return {"refused": "banned"}
    if row["until"] is not None and row["until"] > stamp:
        return {"refused": "timed out", "until": row["until"]}
    return None


def _nonce_seen(conn: sqlite3.Connection, user_id: int | None, nonce: str) -> int | None:
    """Inside the write gate: the message the user created with this nonce in the last 24
    hours (an older use is forgotten first)."""
    conn.execute(
        "DELETE FROM nonces WHERE user_id = ? AND nonce = ? AND created_at < ?",
        (user_id, nonce, time.time() - NONCE_SECONDS),
    )
    seen = conn.execute(
        "SELECT message_id FROM nonces WHERE user_id = ? AND nonce = ?", (user_id, nonce)
    ).fetchone()
    return None if seen is None else seen["message_id"]


async def nonce_message(db: Database, user_id: int, nonce: str) -> int | None:
    """The id of the message the user created with this nonce in the last 24 hours."""
    row = await db.fetch_one(
        "SELECT message_id FROM nonces WHERE user_id = ? AND nonce = ? AND created_at >= ?",
        (user_id, nonce, time.time() - NONCE_SECONDS),
    )
    return row["message_id"] if row else None


async def message_by_id(db: Database, message_id: int) -> Row | None:
    """The message object plus the ids that decide who may read it."""
    return await db.fetch_one(
        f"SELECT {MESSAGE_COLUMNS}, sender_id, channel_id, recipient_id FROM messages WHERE id = ?",
        (message_id,),
    )


async def delete_message(db: Database, message_id: int) -> bool:
    """Delete the row (its text is overwritten on disk: secure_delete); False if gone."""

    def step(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        _outbox_message_deleted(conn, message_id)  # its Discord copies go too
        return cursor.rowcount == 1

    return await db.write(step, scrub=True)


OutboxPlan = Callable[[str, str, str], list[Row]]  # (dest, username, text) -> rows; bot.py


async def edit_message(
    db: Database, message_id: int, sender_id: int, text: str, replan: OutboxPlan
) -> tuple[Row, list[str]] | Row | None:
    """Replace the text of the sender's message and stamp `edited_timestamp`; None if it is
    gone; `{"refused": ...}` if the sender is banned or timed out (`_restriction`). Returns
    the message (with the ids that say who may read it) and the Discord destinations that
    have work now.

    Its Discord copies follow in the same transaction, per destination, part by part against
    `replan(dest, sender, text)`: a post still waiting just gets the new text; a delivered
    copy is to be edited ('edit'); parts the new text no longer needs are dropped or deleted
    on Discord; extra parts are queued as posts (after the edits, as ids keep the order).
    A destination that refused the message for good is left alone."""

    def step(conn: sqlite3.Connection) -> tuple[Row, list[str]] | Row | None:
        if (refused := _restriction(conn, sender_id)) is not None:
            return refused
        with contextlib.closing(
            conn.execute(
                "UPDATE messages SET message = ?, edited_timestamp = ?"
                " WHERE id = ? AND sender_id = ?"
                f" RETURNING {MESSAGE_COLUMNS}, sender_id, channel_id, recipient_id",
                (text, now(), message_id, sender_id),
            )
        ) as cursor:
            message = cursor.fetchone()
        if message is None:
            return None
        rows = list(
            conn.execute(
                "SELECT id, part, dest, state FROM discord_outbox WHERE message_id = ? ORDER BY id",
                (message_id,),
            ).fetchall()
        )
        dests = []
        for dest in dict.fromkeys(row["dest"] for row in rows):
            mine = [r for r in rows if r["dest"] == dest]
            if any(r["state"] == OutboxState.FAILED for r in mine):
                continue
            live = {r["part"]: r for r in mine if r["state"] in _OUTBOX_LIVE}
            planned = replan(dest, message["sender"], text)
            _outbox_replan(conn, message_id, dest, live, planned)
            dests.append(dest)
        return message, dests

    return await db.write(step, scrub=True)  # the old text does not stay in the WAL either


def _outbox_replan(
    conn: sqlite3.Connection, message_id: int, dest: str, live: dict[int, Row], planned: list[Row]
) -> None:
    for new in planned:
        row = live.pop(new["part"], None)
        if row is None:
            _outbox_insert(conn, message_id, [new])
        elif row["state"] == OutboxState.POST:
            conn.execute(
                "UPDATE discord_outbox SET content = ?, username = ? WHERE id = ?",
                (new["content"], new["username"], row["id"]),
            )
        else:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, content = ?, username = ?,"
                " attempts = 0, not_before = 0, last_error = NULL WHERE id = ?",
                (OutboxState.EDIT, new["content"], new["username"], row["id"]),
            )
    for row in live.values():  # parts the new text does not need
        if row["state"] == OutboxState.POST:
            conn.execute("DELETE FROM discord_outbox WHERE id = ?", (row["id"],))
        else:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, content = NULL, attempts = 0,"
                " not_before = 0, last_error = NULL WHERE id = ?",
                (OutboxState.DELETE, row["id"]),
            )


class Page(NamedTuple):
    """Which messages of a list: ids between `after` and `before` (both excluded); the newest
    `count` of them, or with `oldest` the oldest `count` (paging forwards from `after`).
    Either way the list is ordered oldest first."""

    count: int = 50
    before: int = MAX_ID
    after: int = 0
    oldest: bool = False


async def _page(
    db: Database, select: str, where: str, params: tuple, id_column: str, page: Page
) -> list[Row]:
    """`select WHERE where`, within the page's id range and count, oldest first."""
    order = "ASC" if page.oldest else "DESC"  # one of two constants, never user input
    rows = await db.fetch_all(
        f"{select} WHERE {where} AND {id_column} < ? AND {id_column} > ?"
        f" ORDER BY {id_column} {order} LIMIT ?",
        (*params, page.before, page.after, page.count),
    )
    if not page.oldest:
        rows.reverse()
    return rows


MESSAGES_SELECT = f"SELECT {MESSAGE_COLUMNS} FROM messages"


async def public_messages(db: Database, page: Page) -> list[Row]:
    return await _page(db, MESSAGES_SELECT, "kind = 'public'", (), "id", page)


async def channel_messages(db: Database, channel_id: int, page: Page) -> list[Row]:
    return await _page(db, MESSAGES_SELECT, "channel_id = ?", (channel_id,), "id", page)


async def newest_page(db: Database, channel_id: int, count: int) -> bytes:
    """The channel's newest `count` messages as the encoded answer `{"messages": [...]}`:
    from memory until the channel changes (see Caches.pages)."""
    db.check_external()
    pages = db.caches.pages
    body = (pages.get(channel_id) or {}).get(count)
    if body is None:
        version = pages.version()
        messages = await channel_messages(db, channel_id, Page(count))
        body = json.dumps({"messages": messages}).encode()
        if count <= MAX_CACHED_COUNT:
            pages.keep(channel_id, {**(pages.get(channel_id) or {}), count: body}, version)
    return body


async def sent_messages(db: Database, user_id: int, page: Page) -> list[Row]:
    return await _page(db, MESSAGES_SELECT, "sender_id = ?", (user_id,), "id", page)


async def has_sent(db: Database, user_id: int) -> bool:
    row = await db.fetch_one(
        "SELECT 1 AS yes FROM messages WHERE sender_id = ? LIMIT 1", (user_id,)
    )
    return row is not None


DM_SELECT = (
    "SELECT m.id, m.kind, m.sender, m.message, m.channel, m.recipient, m.timestamp, m.source,"
    " m.edited_timestamp FROM dm_links AS d JOIN messages AS m ON m.id = d.message_id"
)


async def dms(db: Database, user_id: int, page: Page, peer_id: int | None = None) -> list[Row]:
    """DMs the user sent or received, optionally with one peer only."""
    if peer_id is None:
        return await _page(db, DM_SELECT, "d.user_id = ?", (user_id,), "d.message_id", page)
    where, params = "d.user_id = ? AND d.peer_id = ?", (user_id, peer_id)
    return await _page(db, DM_SELECT, where, params, "d.message_id", page)


async def readable_since(db: Database, user_id: int, after: int, limit: int) -> list[Row]:
    """Every message the user may read with an id above `after`, oldest first, at most
    `limit`: the feed, the user's channels, DMs and `discord` messages the user sent."""
    page = Page(limit, MAX_ID, after, oldest=True)
    lists = [await public_messages(db, page), await dms(db, user_id, page)]
    for channel in await channels_of(db, user_id):
        lists.append(await channel_messages(db, channel["channel_id"], page))
    where = "sender_id = ? AND kind = 'discord'"
    lists.append(await _page(db, MESSAGES_SELECT, where, (user_id,), "id", page))
    return list(itertools.islice(heapq.merge(*lists, key=lambda m: m["id"]), limit))


async def has_dms(db: Database, user_id: int) -> bool:
    row = await db.fetch_one("SELECT 1 AS yes FROM dm_links WHERE user_id = ? LIMIT 1", (user_id,))
    return row is not None


# --- conversations: search, read markers, presence (SPEC section 10) ----------------------

# Who may read a message, as SQL over `messages AS m` and the user `:user`: the same rule as
# realtime.READERS, kind by kind (public: everyone; channel: its members now; dm: its two
# parties; discord: its sender). tests/test_conversations.py checks the two agree.
READABLE = (
    "(m.kind = 'public'"
    " OR (m.kind = 'channel' AND EXISTS (SELECT 1 FROM members AS mb"
    " WHERE mb.channel_id = m.channel_id AND mb.user_id = :user))"
    " OR (m.kind = 'dm' AND :user IN (m.sender_id, m.recipient_id))"
    " OR (m.kind = 'discord' AND m.sender_id = :user))"
)


class BadQuery(Exception):
    """A search query FTS5 can not parse."""


async def check_query(db: Database, query: str) -> None:
    """Parse a search query against the reader's empty probe table; BadQuery if FTS5 can
    not (a syntax error, an unknown column, a lone `*`, ...)."""
    try:
        await db.fetch_all(
            f"SELECT 1 FROM temp.{QUERY_PROBE} WHERE {QUERY_PROBE} MATCH ?", (query,)
        )
    except sqlite3.OperationalError as exc:
        raise BadQuery(str(exc)) from None


async def search_messages(
    db: Database, user_id: int, query: str, count: int, before: int
) -> list[Row]:
    """The newest `count` messages the user may read now whose text matches the query (ids
    below `before`), newest first: shard by shard, from the newest, until there are enough."""
    newest = await db.fetch_one("SELECT max(id) AS id FROM messages")
    if newest is None or newest["id"] is None:
        return []  # no message yet: no table of the index either
    top = min(before - 1, newest["id"])
    found: list[Row] = []
    for shard in range(top // SEARCH_SHARD, -1, -1):
        table = search_table(shard)
        found += await db.fetch_all(
            f"SELECT {', '.join('m.' + c for c in MESSAGE_COLUMNS.split(', '))}"
            f" FROM {table} JOIN messages AS m ON m.id = {table}.rowid"
            f" WHERE {table} MATCH :query AND {table}.rowid < :before AND {READABLE}"
            f" ORDER BY {table}.rowid DESC LIMIT :count",
            {"query": query, "before": before, "user": user_id, "count": count - len(found)},
        )
        if len(found) >= count:
            break
    return found


async def mark_read(db: Database, user_id: int, kind: str, target_id: int, message_id: int) -> bool:
    """Move the user's marker of a conversation (kind public: target 0; channel: its id;
    dm: the partner's user id) up to `message_id`; never back. True if it moved."""

    def step(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            "INSERT INTO read_markers (user_id, kind, target_id, message_id) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, kind, target_id) DO UPDATE SET message_id = excluded.message_id"
            " WHERE excluded.message_id > read_markers.message_id",
            (user_id, kind, target_id, message_id),
        )
        return cursor.rowcount == 1

    return await db.write(step)


async def unread(db: Database, user_id: int) -> tuple[int, list[Row], list[Row]]:
    """Messages others sent after the user's markers: in the feed; in each channel the user
    is in now ({name, n}); in each DM conversation with a partner who still exists
    ({username, n})."""
    public = await db.fetch_one(
        "SELECT count(*) AS n FROM messages WHERE kind = 'public' AND id > coalesce((SELECT"
        " message_id FROM read_markers WHERE user_id = :user AND kind = 'public'"
        " AND target_id = 0), 0) AND sender_id IS NOT :user",
        {"user": user_id},
    )
    channels = await db.fetch_all(
        "SELECT c.name, (SELECT count(*) FROM messages AS m WHERE m.channel_id = mb.channel_id"
        " AND m.id > coalesce(r.message_id, 0) AND m.sender_id IS NOT :user) AS n"
        " FROM members AS mb JOIN channels AS c ON c.id = mb.channel_id"
        " LEFT JOIN read_markers AS r ON r.user_id = mb.user_id AND r.kind = 'channel'"
        " AND r.target_id = mb.channel_id WHERE mb.user_id = :user ORDER BY mb.channel_id",
        {"user": user_id},
    )
    dms = await db.fetch_all(
        "SELECT u.username, count(*) AS n FROM dm_links AS d"
        " JOIN messages AS m ON m.id = d.message_id JOIN users AS u ON u.id = d.peer_id"
        " LEFT JOIN read_markers AS r ON r.user_id = d.user_id AND r.kind = 'dm'"
        " AND r.target_id = d.peer_id"
        " WHERE d.user_id = :user AND d.message_id > coalesce(r.message_id, 0)"
        " AND m.sender_id IS NOT :user GROUP BY d.peer_id",
        {"user": user_id},
    )
    return public["n"] if public else 0, channels, dms


async def peers_of(db: Database, user_id: int) -> set[int]:
    """The users who share a channel or DMs with the user (not the user)."""
    rows = await db.fetch_all(
        "SELECT o.user_id AS id FROM members AS mb"
        " JOIN members AS o ON o.channel_id = mb.channel_id WHERE mb.user_id = ?",
        (user_id,),
    )
    rows += await db.fetch_all(
        "SELECT DISTINCT peer_id AS id FROM dm_links WHERE user_id = ?", (user_id,)
    )
    return {row["id"] for row in rows if row["id"] is not None} - {user_id}


# --- Discord bridge ---------------------------------------------------------------------
# The outbox (discord_outbox) and the Discord users who have sent the bot a DM
# (discord_users); bot.py is the only caller, apart from the two hooks in insert_message and
# delete_message that keep a message and its Discord copies in one transaction.


class OutboxState(enum.StrEnum):
    """The state of an outbox row (schema.sql's CHECK lists the same words)."""

    POST = "post"  # to be posted
    POSTED = "posted"  # delivered: its Discord ids are kept, its text is not
    EDIT = "edit"  # a delivered copy to be given the row's text
    DELETE = "delete"  # a delivered copy to be deleted on Discord
    FAILED = "failed"  # Discord refused it for good


class Outcome(enum.StrEnum):
    """How the delivery of a message stands (senddcmsg answers with it)."""

    SENT = "sent"  # every post accepted
    REFUSED = "refused"  # one refused for good
    QUEUED = "queued"  # still trying


OUTBOX_COLUMNS = (
    "id, message_id, part, dest, state, content, nonce, discord_channel_id,"
    " discord_message_id, attempts, not_before, username, webhook_id"
)
# A copy that is on Discord or is to be (not one that is being deleted, nor a refused post).
_OUTBOX_LIVE = frozenset((OutboxState.POST, OutboxState.POSTED, OutboxState.EDIT))
# The states with work left, spelt out in the SQL text rather than bound: SQLite uses the
# partial index discord_outbox_due only for a query that repeats its WHERE term word for word.
_WORK_LEFT = "state IN ({})".format(
    ", ".join(f"'{state}'" for state in (OutboxState.POST, OutboxState.EDIT, OutboxState.DELETE))
)


def _outbox_insert(conn: sqlite3.Connection, message_id: int | None, rows: Any) -> None:
    """Queue posts ({dest, part, content, nonce, username}) for a message, in its transaction."""
    created = now()
    conn.executemany(
        "INSERT INTO discord_outbox (message_id, part, dest, state, content, nonce, username,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (message_id, r["part"], r["dest"], OutboxState.POST, r["content"], r["nonce"],
             r["username"], created)
            for r in rows
        ],
    )  # fmt: skip


def _outbox_message_deleted(conn: sqlite3.Connection, message_id: int) -> None:
    """The message is deleted: its delivered copies are to be deleted on Discord, the rest
    is dropped (waiting posts are never sent), and no copy of its text stays here."""
    conn.execute(
        "UPDATE discord_outbox SET state = ?, content = NULL, attempts = 0, not_before = 0,"
        " last_error = NULL WHERE message_id = ? AND state IN (?, ?)",
        (OutboxState.DELETE, message_id, OutboxState.POSTED, OutboxState.EDIT),
    )
    conn.execute(
        "DELETE FROM discord_outbox WHERE message_id = ? AND state IN (?, ?)",
        (message_id, OutboxState.POST, OutboxState.FAILED),
    )


async def outbox_next(db: Database, dest: str) -> Row | None:
    """The oldest row of a destination that still has work (a post, an edit or a delete)."""
    return await db.fetch_one(
        f"SELECT {OUTBOX_COLUMNS} FROM discord_outbox"
        f" WHERE dest = ? AND {_WORK_LEFT} ORDER BY id LIMIT 1",
        (dest,),
    )


async def outbox_dests(db: Database) -> list[str]:
    """Every destination with work left (at start: resume after a restart)."""
    rows = await db.fetch_all(f"SELECT DISTINCT dest FROM discord_outbox WHERE {_WORK_LEFT}")
    return [row["dest"] for row in rows]


async def outbox_backlog(db: Database) -> dict[str, int]:
    """The rows with work left, by state (the metrics; read through the partial index)."""
    row = await db.fetch_one(
        "SELECT sum(state = 'post') AS post, sum(state = 'edit') AS edit,"
        f" sum(state = 'delete') AS \"delete\" FROM discord_outbox WHERE {_WORK_LEFT}"
    )
    return {state: (row or {}).get(state) or 0 for state in ("post", "edit", "delete")}


async def outbox_dests_of_message(db: Database, message_id: int) -> list[str]:
    """The destinations with a copy of the message to delete."""
    rows = await db.fetch_all(
        "SELECT dest FROM discord_outbox WHERE message_id = ? AND state = ?",
        (message_id, OutboxState.DELETE),
    )
    return list(dict.fromkeys(row["dest"] for row in rows))


async def outbox_outcome(db: Database, message_id: int) -> Outcome:
    """How a message's delivery stands, from its rows."""
    rows = await db.fetch_all(
        "SELECT state FROM discord_outbox WHERE message_id = ?", (message_id,)
    )
    states = {row["state"] for row in rows}
    if OutboxState.FAILED in states:
        return Outcome.REFUSED
    return Outcome.SENT if states <= {OutboxState.POSTED, OutboxState.EDIT} else Outcome.QUEUED


async def outbox_posted(
    db: Database,
    row: Row,
    discord_channel_id: int,
    discord_message_id: int,
    webhook_id: int | None,
    current: bool,
) -> bool:
    """Discord accepted a post: keep its ids, drop its text. `current`: Discord's copy has the
    text that was sent (False when a nonce matched an older post of the row).

    If the text changed meanwhile (an edit while the post was in flight), or the copy is
    not current, the copy is to be edited to the row's text. If the message or this part was
    deleted meanwhile, queue the deletion of the new copy instead; False then."""

    def step(conn: sqlite3.Connection) -> bool:
        waiting = conn.execute(
            "SELECT content FROM discord_outbox WHERE id = ? AND state = ?",
            (row["id"], OutboxState.POST),
        ).fetchone()
        ids = (discord_channel_id, discord_message_id, webhook_id)
        if waiting is not None and current and waiting["content"] == row["content"]:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, content = NULL, last_error = NULL,"
                " discord_channel_id = ?, discord_message_id = ?, webhook_id = ? WHERE id = ?",
                (OutboxState.POSTED, *ids, row["id"]),
            )
            return True
        if waiting is not None:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, attempts = 0, not_before = 0,"
                " last_error = NULL, discord_channel_id = ?, discord_message_id = ?,"
                " webhook_id = ? WHERE id = ?",
                (OutboxState.EDIT, *ids, row["id"]),
            )
            return True
        conn.execute(
            "INSERT INTO discord_outbox (message_id, part, dest, state, nonce,"
            " discord_channel_id, discord_message_id, webhook_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row["message_id"], row["part"], row["dest"], OutboxState.DELETE, row["nonce"],
             *ids, now()),
        )  # fmt: skip
        return False

    return await db.write(step)


async def outbox_edited(db: Database, row: Row) -> None:
    """Discord's copy now has the row's text; unless the text changed again meanwhile (then
    the edit goes round once more), nothing is left to do but to remember the copy."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE discord_outbox SET state = ?, content = NULL, last_error = NULL"
            " WHERE id = ? AND state = ? AND content = ?",
            (OutboxState.POSTED, row["id"], OutboxState.EDIT, row["content"]),
        )

    await db.write(step)


async def outbox_done(db: Database, row_id: int) -> None:
    """A Discord copy is deleted: nothing is left to do or to remember for it."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM discord_outbox WHERE id = ?", (row_id,))

    await db.write(step)


async def outbox_retry(db: Database, row_id: int, not_before: float, error: str) -> None:
    """A transient failure: try again at `not_before` (Unix time)."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE discord_outbox SET attempts = attempts + 1, not_before = ?, last_error = ?"
            " WHERE id = ?",
            (not_before, error, row_id),
        )

    await db.write(step)


async def outbox_refused(db: Database, row: Row, error: str) -> list[str]:
    """Discord refused a row for good: it and the waiting parts of the same message fail
    (never retried, text dropped). Returns the nonces of the failed posts. A refused edit
    leaves the copy as it was (still known, so a deletion can reach it)."""

    def step(conn: sqlite3.Connection) -> list[str]:
        if row["state"] == OutboxState.EDIT:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, content = NULL, last_error = ?"
                " WHERE id = ? AND state = ?",
                (OutboxState.POSTED, error, row["id"], OutboxState.EDIT),
            )
            return []
        if row["state"] != OutboxState.POST or row["message_id"] is None:
            conn.execute(
                "UPDATE discord_outbox SET state = ?, content = NULL, last_error = ? WHERE id = ?",
                (OutboxState.FAILED, error, row["id"]),
            )
            return [row["nonce"]] if row["state"] == OutboxState.POST else []
        nonces = [
            r["nonce"]
            for r in conn.execute(
                "SELECT nonce FROM discord_outbox WHERE message_id = ? AND state = ?",
                (row["message_id"], OutboxState.POST),
            ).fetchall()
        ]
        conn.execute(
            "UPDATE discord_outbox SET state = ?, content = NULL, last_error = ?"
            " WHERE message_id = ? AND state = ?",
            (OutboxState.FAILED, error, row["message_id"], OutboxState.POST),
        )
        return nonces

    return await db.write(step)


async def outbox_redirect(db: Database, old_dest: str, new_dest: str) -> None:
    """Posts planned under a channel name now know their Discord channel."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute(
            f"UPDATE discord_outbox SET dest = ? WHERE dest = ? AND {_WORK_LEFT} AND state = ?",
            (new_dest, old_dest, OutboxState.POST),
        )

    await db.write(step)


async def outbox_drop(db: Database, dest: str) -> None:
    """Posts planned under a channel name that turned out not to be bridged."""

    def step(conn: sqlite3.Connection) -> None:
        conn.execute(
            f"DELETE FROM discord_outbox WHERE dest = ? AND {_WORK_LEFT} AND state = ?",
            (dest, OutboxState.POST),
        )

    await db.write(step, scrub=True)


async def remember_discord_user(
    db: Database, user_id: int, username: str, confirmation: Any
) -> bool:
    """A Discord user DMed the bot: remember (or refresh) them. The first time, queue the
    confirmation posts in the same transaction and return True."""

    def step(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute("SELECT 1 AS yes FROM discord_users WHERE id = ?", (user_id,))
        known = cursor.fetchone() is not None
        conn.execute(
            "INSERT INTO discord_users (id, username, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET username = excluded.username,"
            " seen_at = excluded.seen_at",
            (user_id, username, now()),
        )
        if not known:
            _outbox_insert(conn, None, confirmation)
        return not known

    return await db.write(step)


async def discord_user_by_name(db: Database, username: str) -> Row | None:
    return await db.fetch_one(
        "SELECT id, username FROM discord_users WHERE username = ? ORDER BY seen_at DESC LIMIT 1",
        (username,),
    )


# --- running a community (SPEC section 8) -----------------------------------------------
# Each action decides its permission inside its own write step, from the roles as they are
# in that transaction (permissions.allowed): a role change racing an action is decided by
# the order of the two commits, never by a stale read. The results are small dicts: `error`
# (one of the words below) or what was done.

NOT_FOUND, FORBIDDEN, LAST_ADMIN, NOT_BANNED, LINKED = (
    "not found", "forbidden", "last admin", "not banned", "linked"
)  # fmt: skip
PURGE_SECONDS = 7 * 24 * 3600  # banuser's purge: the public and channel messages of 7 days


def _actor(conn: sqlite3.Connection, actor_id: int | None) -> Actor | None:
    """Who acts, as of this transaction: the command line (None), or a user with their role
    now (None if the account is gone or banned meanwhile)."""
    if actor_id is None:
        return Actor.console()
    row = conn.execute(
        "SELECT u.role, EXISTS (SELECT 1 FROM bans AS b WHERE b.user_id = u.id AND"
        " (b.until IS NULL OR b.until > ?)) AS banned FROM users AS u WHERE u.id = ?",
        (now(), actor_id),
    ).fetchone()
    return None if row is None or row["banned"] else Actor(actor_id, Role(row["role"]))


def _target(
    conn: sqlite3.Connection, action: str, actor_id: int | None, username: str
) -> tuple[Row | None, str | None]:
    """The named user and whether the actor may `action` them: (user, None) or (…, error)."""
    user = conn.execute(
        "SELECT id, username, role FROM users WHERE username = ?", (username,)
    ).fetchone()
    if user is None:
        return None, NOT_FOUND
    actor = _actor(conn, actor_id)
    if actor is None or not permissions.allowed(action, actor, user["id"], user["role"]):
        return user, FORBIDDEN
    return user, None


def _audit(conn: sqlite3.Connection, actor: str, action: str, **entry: Any) -> None:
    conn.execute(
        "INSERT INTO audit_log (actor, action, target, message_id, reason, until, timestamp)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (actor, action, entry.get("target"), entry.get("message_id"), entry.get("reason"),
         entry.get("until"), now()),
    )  # fmt: skip


async def may(db: Database, action: str, actor_id: int) -> bool:
    """Whether the user's role allows an action with no target user (a read before acting;
    the actions that write check again in their step)."""
    row = await db.fetch_one("SELECT role FROM users WHERE id = ?", (actor_id,))
    return row is not None and permissions.allowed(action, Actor(actor_id, Role(row["role"])))


async def set_role(
    db: Database, actor_id: int | None, actor_name: str, username: str, role: Role
) -> Row:
    """setrole: {"user": {id, username, role}} or {"error": ...}; never demotes the last admin."""

    def step(conn: sqlite3.Connection) -> Row:
        user, error = _target(conn, "setrole", actor_id, username)
        if error:
            return {"error": error}
        if user["role"] == Role.ADMIN and role != Role.ADMIN:
            admins = conn.execute("SELECT count(*) AS n FROM users WHERE role = ?", (Role.ADMIN,))
            if admins.fetchone()["n"] <= 1:
                return {"error": LAST_ADMIN}
        conn.execute("UPDATE users SET role = ? WHERE id = ?", (role, user["id"]))
        _audit(conn, actor_name, "setrole", target=user["username"], reason=role)
        return {"user": {**user, "role": role}}

    return await db.write(step)


async def ban_user(
    db: Database,
    actor_id: int | None,
    actor_name: str,
    username: str,
    reason: str | None,
    seconds: int | None,
    purge: bool,
) -> Row:
    """banuser: {"user", "until", "purged": [deleted messages]} or {"error": ...}. A second
    ban replaces the first. `purge`: the user's public and channel messages of the last 7
    days go too (their Discord copies with them); DMs never."""

    def step(conn: sqlite3.Connection) -> Row:
        user, error = _target(conn, "banuser", actor_id, username)
        if error:
            return {"error": error}
        until = None if seconds is None else now(seconds)
        conn.execute(
            "INSERT INTO bans (user_id, reason, until, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason,"
            " until = excluded.until, created_at = excluded.created_at",
            (user["id"], reason, until, now()),
        )
        purged = _purge(conn, user["id"]) if purge else []
        _audit(conn, actor_name, "banuser", target=user["username"], reason=reason, until=until)
        return {"user": user, "until": until, "purged": purged}

    return await db.write(step, scrub=purge)


def _purge(conn: sqlite3.Connection, user_id: int) -> list[Row]:
    rows = conn.execute(
        "SELECT id, kind, channel, sender_id, channel_id, recipient_id FROM messages"
        " WHERE sender_id = ? AND timestamp >= ? AND kind IN ('public', 'channel')",
        (user_id, now(-PURGE_SECONDS)),
    ).fetchall()
    purged = list(rows)
    conn.executemany("DELETE FROM messages WHERE id = ?", [(m["id"],) for m in purged])
    for message in purged:
        _outbox_message_deleted(conn, message["id"])
    return purged


async def unban_user(db: Database, actor_id: int | None, actor_name: str, username: str) -> Row:
    """unbanuser: {"user"} or {"error": ...} (NOT_BANNED: no ban, or one that has ended)."""

    def step(conn: sqlite3.Connection) -> Row:
        user, error = _target(conn, "unbanuser", actor_id, username)
        if error:
            return {"error": error}
        with contextlib.closing(
            conn.execute("DELETE FROM bans WHERE user_id = ? RETURNING until", (user["id"],))
        ) as cursor:
            ban = cursor.fetchone()
        if ban is None or (ban["until"] is not None and ban["until"] <= now()):
            return {"error": NOT_BANNED}  # an ended ban's row is gone now too
        _audit(conn, actor_name, "unbanuser", target=user["username"])
        return {"user": user}

    return await db.write(step)


async def timeout_user(
    db: Database, actor_id: int | None, actor_name: str, username: str, seconds: int
) -> Row:
    """timeoutuser: {"user", "until"} or {"error": ...}; 0 seconds lifts a timeout."""

    def step(conn: sqlite3.Connection) -> Row:
        user, error = _target(conn, "timeoutuser", actor_id, username)
        if error:
            return {"error": error}
        until = now(seconds) if seconds else None
        conn.execute("UPDATE users SET timed_out_until = ? WHERE id = ?", (until, user["id"]))
        _audit(conn, actor_name, "timeoutuser", target=user["username"], until=until)
        return {"user": user, "until": until}

    return await db.write(step)


async def delete_message_as(db: Database, message_id: int, actor_id: int, actor_name: str) -> Row:
    """deletemessage: {"message": the deleted message} or {"error": NOT_FOUND | FORBIDDEN}.
    The author, a moderator or admin, or the channel's creator (permissions.may_delete); a
    delete of someone else's message is in the audit log."""

    def step(conn: sqlite3.Connection) -> Row:
        message = conn.execute(
            "SELECT m.id, m.kind, m.channel, m.sender, m.sender_id, m.channel_id,"
            " m.recipient_id, c.creator_id, u.role AS sender_role FROM messages AS m"
            " LEFT JOIN channels AS c ON c.id = m.channel_id"
            " LEFT JOIN users AS u ON u.id = m.sender_id WHERE m.id = ?",
            (message_id,),
        ).fetchone()
        if message is None:
            return {"error": NOT_FOUND}
        actor = _actor(conn, actor_id)
        role, creator = message["sender_role"] or "", message["creator_id"]
        if actor is None or not permissions.may_delete(actor, message, role, creator):
            return {"error": FORBIDDEN}
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        _outbox_message_deleted(conn, message_id)
        if message["sender_id"] != actor_id:
            _audit(conn, actor_name, "deletemessage", target=message["sender"],
                   message_id=message_id)  # fmt: skip
        return {"message": message}

    return await db.write(step, scrub=True)


AUDIT_SELECT = (
    "SELECT id, actor, action, target, message_id, reason, until, timestamp FROM audit_log"
)


async def audit_entries(db: Database, page: Page) -> list[Row]:
    return await _page(db, AUDIT_SELECT, "1", (), "id", page)


async def create_invite(
    db: Database, actor_id: int, actor_name: str, code: str, uses: int, seconds: int
) -> Row:
    """createinvite: {"expires"} or {"error": FORBIDDEN}. Only the code's hash is kept."""

    def step(conn: sqlite3.Connection) -> Row:
        actor = _actor(conn, actor_id)
        if actor is None or not permissions.allowed("createinvite", actor):
            return {"error": FORBIDDEN}
        expires = now(seconds)
        conn.execute(
            "INSERT INTO invites (code_hash, uses_left, expires, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (invite_hash(code), uses, expires, actor_id, now()),
        )
        _audit(
            conn,
            actor_name,
            "createinvite",
            reason=f"{uses} use{'' if uses == 1 else 's'}",
            until=expires,
        )
        return {"expires": expires}

    return await db.write(step)


async def invite_usable(db: Database, code: str) -> bool:
    row = await db.fetch_one(
        "SELECT 1 AS yes FROM invites WHERE code_hash = ? AND uses_left > 0 AND expires > ?",
        (invite_hash(code), now()),
    )
    return row is not None


async def users_page(db: Database, page: Page) -> list[Row]:
    """The users with role, creation time, timeout and lasting ban, by id (the admin page)."""
    rows = await _page(db, _USER_AND_BAN, "1", (now(),), "u.id", page)
    return [
        {"id": r["id"], "username": r["username"], "role": r["role"], "created": r["created_at"],
         "timed_out_until": timed_out_until(r), "banned": ban_of(r)}
        for r in rows
    ]  # fmt: skip


# --- Discord links ------------------------------------------------------------------------


async def link_channel(
    db: Database, actor_id: int, actor_name: str, channel_id: int, discord_channel_id: int
) -> Row:
    """linkchannel: {"linked": True} or {"error": FORBIDDEN | NOT_FOUND | LINKED} (one link
    per channel on each side)."""

    def step(conn: sqlite3.Connection) -> Row:
        actor = _actor(conn, actor_id)
        if actor is None or not permissions.allowed("linkchannel", actor):
            return {"error": FORBIDDEN}
        channel = conn.execute("SELECT name FROM channels WHERE id = ?", (channel_id,)).fetchone()
        if channel is None:
            return {"error": NOT_FOUND}
        cursor = conn.execute(
            "INSERT INTO channel_links (channel_id, discord_channel_id, created_at)"
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (channel_id, discord_channel_id, now()),
        )
        if cursor.rowcount != 1:
            return {"error": LINKED}
        _audit(conn, actor_name, "linkchannel", target=channel["name"],
               reason=f"discord channel {discord_channel_id}")  # fmt: skip
        return {"linked": True}

    return await db.write(step)


async def unlink_channel(db: Database, actor_id: int, actor_name: str, channel_id: int) -> Row:
    """unlinkchannel: {"unlinked": discord channel id} or {"error": FORBIDDEN | NOT_FOUND}."""

    def step(conn: sqlite3.Connection) -> Row:
        actor = _actor(conn, actor_id)
        if actor is None or not permissions.allowed("unlinkchannel", actor):
            return {"error": FORBIDDEN}
        with contextlib.closing(
            conn.execute(
                "DELETE FROM channel_links WHERE channel_id = ?"
                " RETURNING discord_channel_id, (SELECT name FROM channels WHERE id = ?) AS name",
                (channel_id, channel_id),
            )
        ) as cursor:
            link = cursor.fetchone()
        if link is None:
            return {"error": NOT_FOUND}
        _audit(conn, actor_name, "unlinkchannel", target=link["name"],
               reason=f"discord channel {link['discord_channel_id']}")  # fmt: skip
        return {"unlinked": link["discord_channel_id"]}

    return await db.write(step)


async def link_of_channel(db: Database, channel_id: int) -> int | None:
    """The Discord channel linked to a Button API channel."""
    row = await db.fetch_one(
        "SELECT discord_channel_id FROM channel_links WHERE channel_id = ?", (channel_id,)
    )
    return row["discord_channel_id"] if row else None


async def link_by_name(db: Database, name: str) -> int | None:
    """The Discord channel linked to the Button API channel of that name."""
    row = await db.fetch_one(
        "SELECT l.discord_channel_id FROM channels AS c"
        " JOIN channel_links AS l ON l.channel_id = c.id WHERE c.name = ?",
        (name,),
    )
    return row["discord_channel_id"] if row else None


async def channel_of_link(db: Database, discord_channel_id: int) -> Row | None:
    """The Button API channel ({id, name}) linked to a Discord channel."""
    return await db.fetch_one(
        "SELECT c.id, c.name FROM channel_links AS l JOIN channels AS c ON c.id = l.channel_id"
        " WHERE l.discord_channel_id = ?",
        (discord_channel_id,),
    )


MAX_LINKS = 1000  # links listed at most (getlinks)


async def links(db: Database) -> list[Row]:
    """The links, by Button API channel id (the admin page)."""
    return await db.fetch_all(
        "SELECT c.name, CAST(l.discord_channel_id AS TEXT) AS discord_channel"
        " FROM channel_links AS l JOIN channels AS c ON c.id = l.channel_id"
        " WHERE l.channel_id > 0 ORDER BY l.channel_id LIMIT ?",
        (MAX_LINKS,),
    )
