"""SPEC section 10: `searchmessages` through SQLite FTS5.

Words, `prefix*` and `"a phrase"`; newest first; only what the user may read now; edits
found by their new text only; a deleted message gone from the index and its text from the
file's bytes; a query FTS5 can not parse is a 400. The index is filled at start for messages
it does not hold (a file of an older schema, rows written by another program).
"""

import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from helpers import INVALID_TOKEN, PASSWORD, Api, db_file_bytes, invalid, msg

import db

BAD_QUERY = invalid("query")


async def search(api, token, query, **extra):
    got = await api.ok("searchmessages", {"token": token, "query": query, **extra})
    return [m["id"] for m in got["messages"]]


@pytest.fixture
async def world(api):
    """alice, bob (both in general), carol (in neither); one message of each kind."""
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    await api.channel(alice, "general", "bob")
    ids = {
        "public": await api.public(alice, "the quick brown fox"),
        "channel": await api.send(bob, "general", "a quick look at foxes"),
        "dm": await api.dm(alice, "bob", "quick, the fox is here"),
        "self": await api.dm(carol, "carol", "note to self: quickly"),
    }
    return {"alice": alice, "bob": bob, "carol": carol}, ids


async def test_words_prefixes_and_phrases_newest_first(api, world):
    tokens, ids = world
    bob = tokens["bob"]
    assert await search(api, bob, "quick") == [ids["dm"], ids["channel"], ids["public"]]
    assert await search(api, bob, "fox") == [ids["dm"], ids["public"]]
    assert await search(api, bob, "fox*") == [ids["dm"], ids["channel"], ids["public"]]
    assert await search(api, bob, '"quick brown"') == [ids["public"]]
    assert await search(api, bob, '"brown quick"') == []
    assert await search(api, bob, "quick NOT fox") == [ids["channel"]]
    assert await search(api, bob, "QUICK") == [ids["dm"], ids["channel"], ids["public"]]
    assert await search(api, bob, "nothing") == []


async def test_the_answer_is_message_objects_paged_by_count_and_before(api, world):
    tokens, ids = world
    got = await api.ok("searchmessages", {"token": tokens["bob"], "query": "quick", "count": 1})
    assert got == {
        "messages": [msg(ids["dm"], "dm", "alice", "quick, the fox is here", recipient="bob")]
    }
    body = {"token": tokens["bob"], "query": "quick", "before": str(ids["dm"]), "count": "5"}
    got = await api.ok("searchmessages", body)
    assert got == {
        "messages": [
            msg(ids["channel"], "channel", "bob", "a quick look at foxes", channel="general"),
            msg(ids["public"], "public", "alice", "the quick brown fox"),
        ]
    }


async def test_only_what_the_user_may_read_now(api, world):
    tokens, ids = world
    assert await search(api, tokens["carol"], "quick*") == [ids["self"], ids["public"]]
    assert await search(api, tokens["alice"], "quick*") == [
        ids["dm"],
        ids["channel"],
        ids["public"],
    ]
    await api.ok("leavechannel", {"token": tokens["bob"], "name": "general"})
    assert await search(api, tokens["bob"], "quick") == [ids["dm"], ids["public"]]
    body = {"token": tokens["alice"], "name": "general", "username": "carol"}
    await api.ok("addusertochannel", body)
    assert await search(api, tokens["carol"], "quick*") == [
        ids["self"],
        ids["channel"],
        ids["public"],
    ]
    await api.ok("removeuserfromchannel", body)
    assert await search(api, tokens["carol"], "quick*") == [ids["self"], ids["public"]]


async def test_the_sql_rule_agrees_with_the_read_check_for_every_message_and_user(api, world):
    """The search's rule (db.READABLE) and the read by id (realtime.READERS) agree."""
    tokens, ids = world
    dave = await api.user("dave")
    await api.ok("senddcmsgwithtoken", {"token": dave, "message": "quick word from dave"})
    tokens["dave"] = dave
    for name, token in tokens.items():
        found = set(await search(api, token, "quick*"))
        readable = set()
        for message_id in range(1, max(ids.values()) + 2):
            status, _ = await api.post(
                "readmessagesfromchannel", {"token": token, "message_id": message_id}
            )
            if status == 200:
                readable.add(message_id)
        assert found == readable, name


async def test_a_server_with_no_message_yet_finds_nothing(api):
    """No message has ever been stored: the index has no table yet."""
    token = await api.user("alice")
    assert await api.post("searchmessages", {"token": token, "query": "anything"}) == (
        200,
        {"messages": []},
    )
    assert await api.post("searchmessages", {"token": token, "query": "a AND"}) == BAD_QUERY


@pytest.mark.parametrize(
    "query",
    ['"unterminated', "a AND", "*", "nope:word", "e-mail", "NEAR(", " ", "a" * 201, ""],
)
async def test_a_query_fts5_can_not_parse_is_a_400(api, world, query):
    tokens, _ = world
    body = {"token": tokens["bob"], "query": query}
    assert await api.post("searchmessages", body) == BAD_QUERY


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, invalid("token")),
        ({"token": "x"}, invalid("query")),
        ({"token": "x", "query": 5}, invalid("query")),
        ({"token": "x", "query": "fox", "count": 0}, invalid("count")),
        ({"token": "x", "query": "fox", "before": -1}, invalid("before")),
        ({"token": "x", "query": "fox"}, INVALID_TOKEN),
    ],
)
async def test_fields_and_token(api, body, expected):
    assert await api.post("searchmessages", body) == expected


async def test_an_edit_is_found_by_its_new_text_only(api, db_path, world):
    tokens, ids = world
    old, new = f"old{uuid.uuid4().hex}", f"new{uuid.uuid4().hex}"
    body = {"token": tokens["alice"], "message_id": ids["public"], "message": f"was {old}"}
    await api.ok("editmessage", body)
    assert await search(api, tokens["bob"], old) == [ids["public"]]
    await api.ok("editmessage", {**body, "message": f"now {new}"})
    assert await search(api, tokens["bob"], old) == []
    assert await search(api, tokens["bob"], new) == [ids["public"]]
    assert await search(api, tokens["bob"], "brown") == []
    assert old.encode() not in db_file_bytes(db_path)  # nor in the index's pages


@pytest.mark.parametrize("kind", ["public", "channel", "dm"])
async def test_a_deleted_message_leaves_the_index_and_the_file(api, db_path, world, kind):
    tokens, ids = world
    marker = f"marker{uuid.uuid4().hex}"
    send = {
        "public": lambda: api.public(tokens["alice"], f"say {marker} now"),
        "channel": lambda: api.send(tokens["alice"], "general", f"say {marker} now"),
        "dm": lambda: api.dm(tokens["alice"], "bob", f"say {marker} now"),
    }
    doomed = await send[kind]()
    assert await search(api, tokens["bob"], marker) == [doomed]
    assert await search(api, tokens["bob"], marker[:12] + "*") == [doomed]
    assert marker.encode() in db_file_bytes(db_path)  # the check below can see the text

    await api.ok("deletemessage", {"token": tokens["alice"], "message_id": doomed})

    assert marker.encode() not in db_file_bytes(db_path)
    assert await search(api, tokens["bob"], marker) == []
    assert await search(api, tokens["bob"], "quick") == [ids["dm"], ids["channel"], ids["public"]]


async def test_a_deleted_account_leaves_no_text_in_the_index(api, db_path, world):
    tokens, ids = world
    marker = f"marker{uuid.uuid4().hex}"
    await api.public(tokens["alice"], f"public {marker}")
    await api.dm(tokens["alice"], "bob", f"dm {marker}")
    assert len(await search(api, tokens["bob"], marker)) == 2
    await api.ok("deleteaccount", {"username": "alice", "password": PASSWORD})
    assert await search(api, tokens["bob"], marker) == []
    assert marker.encode() not in db_file_bytes(db_path)
    assert await search(api, tokens["bob"], "quick") == [ids["channel"]]


# --- the index is filled at start: older files, rows written by another program -------------


V1_SCHEMA = Path(__file__).with_name("schema_v1.sql")  # schema.sql as of schema version 1
TOKEN = "11111111-1111-4111-8111-111111111111"


async def test_a_file_of_schema_version_1_is_migrated_and_indexed(start, db_path):
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(V1_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO users (id, username, password_hash, token, created_at)"
            " VALUES (1, 'alice', 'x', ?, 't')",
            (TOKEN,),
        )
        conn.executemany(
            "INSERT INTO messages (id, kind, sender_id, sender, message, timestamp)"
            " VALUES (?, 'public', 1, 'alice', ?, '2026-01-01T00:00:00.000Z')",
            [(1, "old one"), (2, "old two")],
        )
        conn.commit()
    api = Api(await start())
    assert await search(api, TOKEN, "old") == [2, 1]
    assert await search(api, TOKEN, "two") == [2]
    assert await api.ok("getunread", {"token": TOKEN}) == {"public": 0, "channels": {}, "dms": {}}
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)


async def test_messages_in_several_shards_newest_first_and_deleted_from_theirs(
    start, config, aiohttp_client, db_path
):
    """Rows another program wrote while the server was stopped are indexed at the next
    start, each in its shard; a search walks the shards newest first."""
    from buttonapi import create_app

    first = Api(await start())
    alice = await first.user("alice")
    low = await first.public(alice, "needle low")
    await first.client.close()
    high_ids = [3 * db.SEARCH_SHARD + 5, 3 * db.SEARCH_SHARD + 6]
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executemany(
            "INSERT INTO messages (id, kind, sender_id, sender, message, timestamp)"
            " VALUES (?, 'public', 1, 'alice', ?, '2026-01-01T00:00:00.000Z')",
            [(high_ids[0], "needle high"), (high_ids[1], "needle higher, secretword")],
        )
        conn.commit()
    api = Api(await aiohttp_client(await create_app(config)))
    assert await search(api, alice, "needle") == [high_ids[1], high_ids[0], low]
    assert await search(api, alice, "needle", count=2) == [high_ids[1], high_ids[0]]
    assert await search(api, alice, "needle", before=high_ids[0]) == [low]
    newer = await api.public(alice, "needle newest")
    assert newer == high_ids[1] + 1
    assert await search(api, alice, "needle", count=1) == [newer]
    await api.ok("deletemessage", {"token": alice, "message_id": high_ids[1]})
    assert await search(api, alice, "needle") == [newer, high_ids[0], low]
    assert b"secretword" not in db_file_bytes(db_path)


async def test_a_file_of_schema_version_4_is_migrated_and_indexed(start, db_path):
    """A file as the server of version 4 left it: no read markers, no full-text index."""
    async with db.open_database(str(db_path)):
        pass
    with closing(sqlite3.connect(db_path)) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND (name = 'read_markers' OR name GLOB 'search_[0-9]')"
            )
        ]
        for name in tables:
            conn.execute(f"DROP TABLE {name}")
        conn.execute(
            "INSERT INTO users (id, username, password_hash, token, created_at)"
            " VALUES (1, 'alice', 'x', ?, 't')",
            (TOKEN,),
        )
        conn.execute(
            "INSERT INTO messages (id, kind, sender_id, sender, message, timestamp)"
            " VALUES (7, 'public', 1, 'alice', 'from version four', '2026-01-01T00:00:00.000Z')"
        )
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    assert tables == ["read_markers"]  # (a full-text table comes with the first message)
    api = Api(await start())
    assert await search(api, TOKEN, "four") == [7]
    await api.ok("markread", {"token": TOKEN, "message_id": 7})
    assert await api.ok("getunread", {"token": TOKEN}) == {"public": 0, "channels": {}, "dms": {}}
    assert rows_of(db_path, "SELECT user_id, kind, target_id, message_id FROM read_markers") == [
        (1, "public", 0, 7)
    ]
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)


def rows_of(db_path, sql):
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


async def test_moderation_deletes_leave_the_index_and_the_file_too(client, api, db_path):
    """A ban's purge and a moderator's delete (SPEC section 8) go through the same index."""
    from buttonapi import db_key
    from permissions import Role

    mod, alice, bob = await api.user("mod"), await api.user("alice"), await api.user("bob")
    await db.set_role(client.app[db_key], None, "(console)", "mod", Role("moderator"))
    spam, removed = f"spam{uuid.uuid4().hex}", f"removed{uuid.uuid4().hex}"
    await api.public(alice, f"buy {spam}")
    by_mod = await api.public(bob, f"rude {removed}")
    assert len(await search(api, mod, f"{spam} OR {removed}")) == 2
    await api.ok("deletemessage", {"token": mod, "message_id": by_mod})
    await api.ok("banuser", {"token": mod, "username": "alice", "purge": True})
    assert await search(api, mod, f"{spam} OR {removed}") == []
    data = db_file_bytes(db_path)
    assert spam.encode() not in data
    assert removed.encode() not in data
