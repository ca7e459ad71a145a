"""Beyond the seed: editmessage, `edited_timestamp` and the `message_edited` event.

`editmessage` {token, message_id, message}: only the sender may edit a message (any kind);
checks in SPEC section 1's order (body 400, token 401, length 411, exists 404, sender 403).
The message object carries `edited_timestamp` everywhere (null until edited); everyone who can
read the message gets `message_edited` with the whole object. The Discord side of edits is in
test_bridge_edits.py; the schema migration that adds the column is at the end of this file.
"""

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from helpers import (
    ID,
    INVALID_TOKEN,
    PASSWORD,
    TIMESTAMP,
    Api,
    answer,
    bad_plan_lines,
    barrier,
    invalid,
    msg,
)

import db

EDITED = (200, {"message": "Message edited!"})
NOT_FOUND = (404, {"message": "Message not found!"})
NOT_YOURS = (403, {"message": "You can only edit your messages!"})
MESSAGE_411 = (411, {"message": "Message needs to be 1-2000 chars long!"})


@pytest.fixture
async def world(api):
    """alice and bob share "general"; carol is in no channel. One message of each kind that
    needs no Discord, all by alice: {"public": id, "channel": id, "dm": id (to bob)}."""
    tokens = {name: await api.user(name) for name in ("alice", "bob", "carol")}
    await api.channel(tokens["alice"], "general", "bob")
    ids = {
        "public": await api.public(tokens["alice"], "public v1"),
        "channel": await api.send(tokens["alice"], "general", "channel v1"),
        "dm": await api.dm(tokens["alice"], "bob", "dm v1"),
    }
    return tokens, ids


async def edit(api, token, message_id, text):
    return await api.post(
        "editmessage", {"token": token, "message_id": message_id, "message": text}
    )


async def read(api, token, message_id):
    got = await api.ok("readmessagesfromchannel", {"token": token, "message_id": message_id})
    (message,) = got["messages"]
    return message


def edited_msg(message_id, kind, text, **fields):
    return msg(message_id, kind, "alice", text, edited_timestamp=TIMESTAMP, **fields)


# --- success ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields"),
    [("public", {}), ("channel", {"channel": "general"}), ("dm", {"recipient": "bob"})],
)
async def test_the_sender_edits_a_message_of_each_kind(api, world, kind, fields):
    tokens, ids = world
    before = await read(api, tokens["alice"], ids[kind])
    assert before == msg(ids[kind], kind, "alice", f"{kind} v1", **fields)
    assert await edit(api, tokens["alice"], ids[kind], f"{kind} v2") == EDITED
    after = await read(api, tokens["alice"], ids[kind])
    assert after == edited_msg(ids[kind], kind, f"{kind} v2", **fields)
    assert after["timestamp"] == before["timestamp"]  # when it was sent does not change
    assert after["edited_timestamp"] >= after["timestamp"]  # the same format sorts by time
    if kind != "public":  # the others may read it too, edited
        assert await read(api, tokens["bob"], ids[kind]) == after


async def test_edited_timestamp_is_in_every_list(api, world):
    tokens, ids = world
    alice, bob = tokens["alice"], tokens["bob"]
    untouched = await api.public(alice, "never edited")
    for kind in ids:
        assert await edit(api, alice, ids[kind], f"{kind} v2") == EDITED
    public = edited_msg(ids["public"], "public", "public v2")
    channel = edited_msg(ids["channel"], "channel", "channel v2", channel="general")
    dm = edited_msg(ids["dm"], "dm", "dm v2", recipient="bob")
    plain = msg(untouched, "public", "alice", "never edited")
    feed = await api.ok("getmessagesforeveryone", {"token": bob})
    assert feed == {"message": "Got messages!", "messages": [public, plain]}
    assert await api.ok("readmessagesfromchannel", {"token": bob, "name": "general"}) == {
        "messages": [channel]
    }
    assert await api.ok("getdms", {"token": bob}) == {"dms": [dm]}
    assert await api.ok("getdms", {"token": alice, "username": "bob"}) == {"dms": [dm]}
    assert await api.ok("getmysentmessages", {"token": alice}) == {
        "sent_messages": [public, channel, dm, plain]
    }


async def test_a_message_can_be_edited_again_and_to_the_same_text(api, world):
    tokens, ids = world
    assert await edit(api, tokens["alice"], ids["public"], "second") == EDITED
    first = await read(api, tokens["alice"], ids["public"])
    assert await edit(api, tokens["alice"], str(ids["public"]), "second") == EDITED  # digits
    again = await read(api, tokens["alice"], ids["public"])
    assert again["message"] == "second"
    assert again["edited_timestamp"] >= first["edited_timestamp"]


@pytest.mark.parametrize("text", ["a", "x" * 2000, "😀" * 2000, "  spaced  ", "two\nlines"])
async def test_edited_text_is_stored_whole(api, world, text):
    tokens, ids = world
    assert await edit(api, tokens["alice"], ids["channel"], text) == EDITED
    assert (await read(api, tokens["bob"], ids["channel"]))["message"] == text


async def test_the_old_text_is_gone_from_the_database_file(api, world, db_path):
    tokens, ids = world
    secret = "old-secret-" + "q" * 30
    message_id = await api.public(tokens["alice"], secret)
    assert await edit(api, tokens["alice"], message_id, "nothing to see") == EDITED
    files = b"".join(p.read_bytes() for p in sorted(db_path.parent.glob(db_path.name + "*")))
    assert secret.encode() not in files  # nor in the WAL


# --- errors: exact answers, nothing changed -------------------------------------------------

BODIES = {
    # name: (body with "<alice>", "<bob>", "<id>" placeholders, expected answer)
    "not an object": ([1, 2], (400, {"message": "Request body must be a JSON object!"})),
    "empty": ({}, invalid("token")),
    "token only": ({"token": "<alice>"}, invalid("message_id")),
    "no message": ({"token": "<alice>", "message_id": "<id>"}, invalid("message")),
    "null message": (
        {"token": "<alice>", "message_id": "<id>", "message": None},
        invalid("message"),
    ),
    "token not a string": ({"token": 5, "message_id": "<id>", "message": "x"}, invalid("token")),
    "id a float": ({"token": "<alice>", "message_id": 1.5, "message": "x"}, invalid("message_id")),
    "id negative": ({"token": "<alice>", "message_id": -1, "message": "x"}, invalid("message_id")),
    "id a bool": ({"token": "<alice>", "message_id": True, "message": "x"}, invalid("message_id")),
    "id not digits": (
        {"token": "<alice>", "message_id": "1a", "message": "x"},
        invalid("message_id"),
    ),
    "message a number": (
        {"token": "<alice>", "message_id": "<id>", "message": 7},
        invalid("message"),
    ),
    "lone surrogate": (
        {"token": "<alice>", "message_id": "<id>", "message": "\ud800"},
        invalid("message"),
    ),
    "fields in the seed's order": ({"message": 7, "message_id": "x"}, invalid("token")),
    "bad token": ({"token": "nope", "message_id": "<id>", "message": "x"}, INVALID_TOKEN),
    "bad token before length": (
        {"token": "nope", "message_id": "<id>", "message": ""},
        INVALID_TOKEN,
    ),
    "empty text": ({"token": "<alice>", "message_id": "<id>", "message": ""}, MESSAGE_411),
    "blank text": ({"token": "<alice>", "message_id": "<id>", "message": " \n\t"}, MESSAGE_411),
    "2001 chars": ({"token": "<alice>", "message_id": "<id>", "message": "x" * 2001}, MESSAGE_411),
    "length before existence": (
        {"token": "<alice>", "message_id": 10**9, "message": "x" * 2001},
        MESSAGE_411,
    ),
    "no such message": ({"token": "<alice>", "message_id": 10**9, "message": "x"}, NOT_FOUND),
    "id past SQLite's range": (
        {"token": "<alice>", "message_id": "9" * 40, "message": "x"},
        NOT_FOUND,
    ),
    "someone else's": ({"token": "<bob>", "message_id": "<id>", "message": "x"}, NOT_YOURS),
    "someone else's, bad length": (
        {"token": "<bob>", "message_id": "<id>", "message": ""},
        MESSAGE_411,
    ),
}


def fill(body, tokens, message_id):
    if not isinstance(body, dict):
        return body
    values = {"<alice>": tokens["alice"], "<bob>": tokens["bob"], "<id>": message_id}
    return {
        key: values.get(value, value) if isinstance(value, str) else value
        for key, value in body.items()
    }


@pytest.mark.parametrize(("body", "expected"), BODIES.values(), ids=BODIES.keys())
async def test_errors_are_exact_and_change_nothing(api, snapshot, world, body, expected):
    tokens, ids = world
    before = snapshot()
    assert await api.post("editmessage", fill(body, tokens, ids["channel"])) == expected
    assert snapshot() == before


@pytest.mark.parametrize("kind", ["public", "channel", "dm"])
async def test_readers_who_are_not_the_sender_get_403(api, snapshot, world, kind):
    tokens, ids = world
    before = snapshot()
    for reader in ("bob", "carol"):
        assert await edit(api, tokens[reader], ids[kind], "mine now") == NOT_YOURS
    assert snapshot() == before


async def test_a_deleted_message_is_404(api, world):
    tokens, ids = world
    await api.ok("deletemessage", {"token": tokens["alice"], "message_id": ids["public"]})
    assert await edit(api, tokens["alice"], ids["public"], "too late") == NOT_FOUND


async def test_a_message_without_an_api_sender_is_403(api, world, snapshot):
    """A DM from an account that was deleted has no sender any more (like a message written
    on Discord, see test_bridge_edits.py): nobody may edit it."""
    tokens, _ = world
    dm = await api.dm(tokens["bob"], "alice", "from bob")
    await api.ok("deleteaccount", {"username": "bob", "password": PASSWORD})
    assert (await read(api, tokens["alice"], dm))["sender"] == "[deleted]"
    before = snapshot()
    assert await edit(api, tokens["alice"], dm, "rewritten") == NOT_YOURS
    assert snapshot() == before


async def test_the_path_without_a_slash_works_the_same(api, world):
    tokens, ids = world
    body = {"token": tokens["alice"], "message_id": ids["dm"], "message": "no slash"}
    async with api.client.post("/api/v3/editmessage", json=body) as resp:
        assert await answer(resp) == EDITED


# --- the send limit counts edits -----------------------------------------------------------


@pytest.fixture
async def limited(start):
    return Api(await start(send_limit="3/60"))


async def test_edits_count_under_the_send_limit(limited, db_path):
    api = limited
    alice, bob = await api.user("alice"), await api.user("bob")
    message_id = await api.public(alice, "v1")
    assert await edit(api, alice, message_id, "v2") == EDITED
    assert await edit(api, alice, message_id, "v3") == EDITED  # 1 send + 2 edits: the limit
    before = _rows(db_path)
    body = {"token": alice, "message_id": message_id, "message": "v4"}
    async with api.client.post("/api/v3/editmessage/", json=body) as resp:
        status, got = await answer(resp)
        retry_after = resp.headers["Retry-After"]
    assert (status, got) == (
        429,
        {"message": "You are sending messages too fast!", "retry_after": ID},
    )
    assert int(retry_after) == got["retry_after"] > 0
    assert _rows(db_path) == before  # not edited
    assert (await api.post("senddcmsgwithtoken", {"token": alice, "message": "x"}))[0] == 429
    assert await edit(api, bob, message_id, "v4") == NOT_YOURS  # checked before the limit
    assert await api.public(bob, "bob's own limit") == ID


def _rows(db_path):
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT * FROM messages ORDER BY id").fetchall()


# --- message_edited: to exactly the readers -------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "readers", "others", "fields"),
    [
        ("public", ["alice", "bob", "carol"], [], {}),
        ("channel", ["alice", "bob"], ["carol"], {"channel": "general"}),
        ("dm", ["alice", "bob"], ["carol"], {"recipient": "bob"}),
    ],
)
async def test_message_edited_reaches_exactly_the_readers(
    api, world, sock, kind, readers, others, fields
):
    tokens, ids = world
    socks = {name: await sock(tokens[name]) for name in ("alice", "bob", "carol")}
    assert await edit(api, tokens["alice"], ids[kind], "changed") == EDITED
    expected = edited_msg(ids[kind], kind, "changed", **fields)
    for name in readers:
        assert await socks[name].next("message_edited") == ("message_edited", expected)
    assert await read(api, tokens["alice"], ids[kind]) == expected  # the whole object
    for name in others:  # a later event they do get: message_edited would have come first
        await barrier(api, tokens["alice"], socks[name], name)
        assert socks[name].named("message_edited") == []
    for name in readers:  # an edit is not a new message
        await barrier(api, tokens["carol"], socks[name], name)
        news = ("new_message", "new_public_message", "new_dm")
        got = [(e, d["message"]) for e, d in socks[name].events if e in news]
        assert [(e, text) for e, text in got if not text.startswith("barrier")] == []


async def test_the_replay_after_a_reconnect_shows_the_edit(api, world, sock):
    tokens, ids = world
    assert await edit(api, tokens["alice"], ids["dm"], "dm v2") == EDITED
    s = await sock(auth={"token_api_v3": tokens["bob"], "last_message_id": ids["public"]})
    _, replay = await s.next("replay")
    assert replay == {
        "messages": [
            msg(ids["channel"], "channel", "alice", "channel v1", channel="general"),
            edited_msg(ids["dm"], "dm", "dm v2", recipient="bob"),
        ],
        "replay_truncated": False,
    }


async def test_the_new_public_message_event_carries_edited_timestamp_null(api, world, sock):
    tokens, _ = world
    s = await sock(tokens["bob"])
    message_id = await api.public(tokens["alice"], "fresh")
    _, event = await s.next("new_public_message")
    assert event == msg(message_id, "public", "alice", "fresh")
    assert "edited_timestamp" in event and event["edited_timestamp"] is None


async def test_edit_statements_are_served_by_an_index(client, api, world, db_path):
    from buttonapi import db_key

    tokens, ids = world
    database = client.app[db_key]
    statements = []
    await database.trace(statements.append)
    for kind in ids:
        assert await edit(api, tokens["alice"], ids[kind], "again") == EDITED
    assert await edit(api, tokens["bob"], ids["dm"], "no") == NOT_YOURS
    await database.trace(None)
    queries = {
        re.sub(r"\s+", " ", s).strip()
        for s in statements
        if re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT)\b", s, re.IGNORECASE)
    }
    assert any(q.startswith("UPDATE messages") for q in queries), queries
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        bad = {q: lines for q in sorted(queries) if (lines := bad_plan_lines(conn, q))}
    assert bad == {}


# --- the migration of a file made by the previous schema ------------------------------------

V1_SCHEMA = Path(__file__).with_name("schema_v1.sql")  # schema.sql as of schema version 1


def make_v1_file(path):
    """A database as the server of schema version 1 left it: a user, two messages, outbox
    rows in each state of that version."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(V1_SCHEMA.read_text(encoding="utf-8"))
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO users (id, username, password_hash, token, created_at)"
            " VALUES (1, 'alice', 'x', '11111111-1111-4111-8111-111111111111', 't')"
        )
        conn.executemany(
            "INSERT INTO messages (id, kind, sender_id, sender, message, timestamp)"
            " VALUES (?, 'public', 1, 'alice', ?, '2026-01-01T00:00:00.000Z')",
            [(1, "old one"), (2, "old two")],
        )
        conn.executemany(
            "INSERT INTO discord_outbox (message_id, part, dest, state, content, nonce,"
            " discord_channel_id, discord_message_id, created_at) VALUES (?, 0, 'channel:9',"
            " ?, ?, ?, ?, ?, 't')",
            [
                (1, "posted", None, "n1", 9, 99),
                (2, "post", "**alice**: old two", "n2", None, None),
                (None, "failed", None, "n3", None, None),
            ],
        )
        conn.commit()


async def test_a_version_1_file_is_migrated(start, db_path):
    make_v1_file(db_path)
    api = Api(await start())
    token = "11111111-1111-4111-8111-111111111111"
    feed = await api.ok("getmessagesforeveryone", {"token": token})
    assert feed["messages"] == [
        dict(msg(1, "public", "alice", "old one"), timestamp="2026-01-01T00:00:00.000Z"),
        dict(msg(2, "public", "alice", "old two"), timestamp="2026-01-01T00:00:00.000Z"),
    ]
    assert await edit(api, token, 1, "new one") == EDITED
    assert (await read(api, token, 1))["edited_timestamp"] == TIMESTAMP
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)
        outbox = conn.execute(
            "SELECT message_id, state, content, nonce, discord_message_id, username, webhook_id"
            " FROM discord_outbox ORDER BY id"
        ).fetchall()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        migrated = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name IN ('discord_outbox', 'discord_outbox_due')"
            " ORDER BY name"
        ).fetchall()
    assert outbox == [
        (1, "edit", "**alice**: new one", "n1", 99, "alice", None),  # its copy is to be edited
        (2, "post", "**alice**: old two", "n2", None, None, None),
        (None, "failed", None, "n3", None, None, None),
    ]
    assert "discord_outbox_v1" not in tables
    assert all("'edit'" in sql for (sql,) in migrated)  # the new CHECK and partial index


async def test_a_fresh_file_gets_the_current_version(tmp_path):
    async with db.open_database(str(tmp_path / "new.db")):
        pass
    with closing(sqlite3.connect(tmp_path / "new.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    assert "edited_timestamp" in columns


async def test_a_file_of_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "newer.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(db.CannotOpen, match="of schema version 99, newer than this server"):
        async with db.open_database(str(path)):
            pass
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (99,)
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_the_v1_schema_copy_is_the_committed_version_1():
    """schema_v1.sql is schema.sql as it was at version 1 (the migration's starting point)."""
    text = V1_SCHEMA.read_text(encoding="utf-8")
    assert "CHECK (state IN ('post', 'posted', 'delete', 'failed'))" in text
    assert "edited_timestamp" not in text
