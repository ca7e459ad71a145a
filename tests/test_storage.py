"""Storage rules of SPEC §7: every list and lookup is served by an index; private files.

The index test records every SQL statement the server really runs (SQLite's trace hook on
both of its connections) while a client walks through every endpoint, then asks SQLite for
each statement's query plan: a full table scan or a sort outside an index fails it.
"""

import asyncio
import re
import sqlite3
import stat
from contextlib import closing

import socketio
from helpers import PASSWORD, Api, bad_plan_lines


async def walk_every_endpoint(api):
    """Each endpoint, on its success path and its main lookups' failure paths."""
    alice, bob = await api.user("alice"), await api.user("bob")
    carol = await api.user("carol")
    creds = {"username": "alice", "password": PASSWORD}
    await api.ok("login", creds)
    await api.ok("gettoken", creds)
    await api.post("login", {"username": "nobody", "password": PASSWORD})
    public_id = await api.public(alice, "hello everyone")
    await api.ok("getmessagesforeveryone", {"token": bob, "count": 10})
    await api.ok("getmessagesforeveryone", {"token": bob, "before": public_id})
    await api.ok("getmysentmessages", {"token": alice})
    await api.post("getmysentmessages", {"token": bob})
    await api.channel(alice, "general", "bob")
    await api.post("addusertochannel", {"token": alice, "name": "general", "username": "bob"})
    channel_msg = await api.send(alice, "general", "hi channel")
    await api.ok("readmessagesfromchannel", {"token": bob, "name": "general"})
    await api.ok("readmessagesfromchannel", {"token": bob, "name": "general", "before": 99})
    await api.ok("readmessagesfromchannel", {"token": bob, "message_id": channel_msg})
    await api.post("readmessagesfromchannel", {"token": carol, "message_id": channel_msg})
    await api.ok("getchannels", {"token": bob})
    dm_id = await api.dm(alice, "bob", "psst")
    await api.ok("getdms", {"token": bob})
    await api.ok("getdms", {"token": bob, "username": "alice", "count": 5, "before": 10**6})
    await api.post("getdms", {"token": carol})
    await api.ok("readmessagesfromchannel", {"token": bob, "message_id": dm_id})
    # beyond the seed: paging forwards, catch-up, membership, token and account control
    await api.ok("getmessagesforeveryone", {"token": bob, "after": 0, "count": 10})
    await api.ok("readmessagesfromchannel", {"token": bob, "name": "general", "after": 1})
    await api.ok("getdms", {"token": bob, "username": "alice", "after": 1})
    await api.ok("getmysentmessages", {"token": alice, "after": 1})
    sio = socketio.AsyncClient(reconnection=False)
    replayed = asyncio.get_running_loop().create_future()
    sio.on("replay", replayed.set_result)
    await sio.connect(
        str(api.client.make_url("/")),
        transports=["websocket"],
        auth={"token_api_v3": bob, "last_message_id": 0},
    )
    await asyncio.wait_for(replayed, 5)
    await sio.disconnect()
    await api.ok("getchannelmembers", {"token": bob, "name": "general"})
    await api.ok("removeuserfromchannel", {"token": alice, "name": "general", "username": "bob"})
    await api.ok("addusertochannel", {"token": alice, "name": "general", "username": "bob"})
    await api.ok("leavechannel", {"token": bob, "name": "general"})
    # conversations (SPEC section 10)
    await api.ok("searchmessages", {"token": alice, "query": "hello OR hi*", "count": 5})
    await api.ok("searchmessages", {"token": alice, "query": '"hi channel"', "before": 10**6})
    await api.post("searchmessages", {"token": alice, "query": "a AND"})
    await api.ok("markread", {"token": alice, "message_id": public_id})
    await api.ok("markread", {"token": bob, "message_id": dm_id})
    await api.post("markread", {"token": carol, "message_id": dm_id})
    await api.ok("getunread", {"token": bob})
    await api.ok("getonline", {"token": bob})
    for message_id in (public_id, channel_msg, dm_id):
        await api.ok("editmessage", {"token": alice, "message_id": message_id, "message": "v2"})
    await api.post("editmessage", {"token": bob, "message_id": dm_id, "message": "not mine"})
    for message_id in (public_id, channel_msg, dm_id):
        await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await api.ok("changepassword", {**creds, "new_password": "N3w!Passw0rd"})
    await api.ok("revoketoken", {"token": carol})
    await api.public(bob, "bob's last word")
    await api.dm(bob, "alice", "bye")
    await api.ok("generatetoken", {"username": "alice", "password": "N3w!Passw0rd"})
    await api.ok("deleteaccount", {"username": "bob", "password": PASSWORD})
    await walk_the_community_endpoints(api)


async def walk_the_community_endpoints(api):
    """SPEC §8's endpoints (linkchannel: test_bridge_delivery's index test, with the bot)."""
    import db
    from buttonapi import db_key
    from permissions import Role

    await db.set_role(api.client.app[db_key], None, "(console)", "carol", Role.ADMIN)
    carol = (await api.ok("generatetoken", {"username": "carol", "password": PASSWORD}))["token"]
    dave, erin = await api.user("dave"), await api.user("erin")
    await api.ok("getme", {"token": dave})
    await api.ok("setrole", {"token": carol, "username": "dave", "role": "moderator"})
    await api.ok("createinvite", {"token": dave, "uses": 2}, status=201)
    await api.channel(erin, "erins", "dave")
    public_id, channel_id = await api.public(erin, "spam"), await api.send(erin, "erins", "x")
    await api.send(dave, "erins", "by dave")
    await api.ok("deletemessage", {"token": dave, "message_id": public_id})  # a moderator's
    await api.ok("deletemessage", {"token": erin, "message_id": channel_id + 1})  # the creator's
    await api.ok("timeoutuser", {"token": dave, "username": "erin", "seconds": 60})
    await api.post("sendmessage", {"token": erin, "message": "x", "channel": "erins"})
    await api.ok("timeoutuser", {"token": dave, "username": "erin", "seconds": 0})
    await api.ok("banuser", {"token": dave, "username": "erin", "purge": True, "seconds": 60})
    await api.post("login", {"username": "erin", "password": PASSWORD})
    await api.post("getme", {"token": erin})
    await api.ok("unbanuser", {"token": dave, "username": "erin"})
    await api.ok("getauditlog", {"token": dave, "count": 2, "before": 10**6})
    await api.ok("getauditlog", {"token": dave, "after": 1})
    await api.ok("getusers", {"token": carol, "after": 1})
    await api.ok("getlinks", {"token": carol})
    await api.post("unlinkchannel", {"token": carol, "name": "erins"})


# FTS5's own statements on the shadow tables of a full-text table (it quotes their names):
# SQLite's engine, reading its small config and segment tables by key.
FTS5_OWN = re.compile(r"'(main|temp)'\.'search_")


async def test_every_statement_is_served_by_an_index(client, api, db_path):
    from buttonapi import db_key

    database = client.app[db_key]
    statements = []
    await database.trace(statements.append)
    await walk_every_endpoint(api)
    await database.trace(None)

    queries = {
        re.sub(r"\s+", " ", s).strip()
        for s in statements
        if re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", s, re.IGNORECASE)
        and " temp." not in s  # a connection's own TEMP tables: in memory, empty (check_query)
        and not FTS5_OWN.search(s)
    }
    assert len(queries) >= 15, queries  # the walk really ran the server's statements
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        bad = {q: lines for q in sorted(queries) if (lines := bad_plan_lines(conn, q))}
    assert bad == {}


async def test_database_and_wal_are_readable_by_the_owner_only(api, db_path):
    await api.user("alice")
    files = [db_path, db_path.with_name(db_path.name + "-wal")]
    assert all(path.exists() for path in files)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: 0o600 for path in files
    }


# --- the newest page of a channel is kept encoded until the channel changes --------------


async def newest(api, token, **extra):
    got = await api.ok("readmessagesfromchannel", {"token": token, "name": "general", **extra})
    return [(m["id"], m["message"], m["edited_timestamp"] is not None) for m in got["messages"]]


async def test_every_change_to_a_channel_shows_in_its_newest_page_at_once(api):
    alice, bob = await api.user("alice"), await api.user("bob")
    await api.channel(alice, "general", "bob")
    await api.channel(alice, "other", "bob")
    assert await newest(api, bob) == []
    first = await api.send(alice, "general", "one")
    assert await newest(api, bob) == [(first, "one", False)]
    assert await newest(api, bob) == [(first, "one", False)]  # served from memory
    second = await api.send(bob, "general", "two")
    await api.send(alice, "other", "elsewhere")
    assert await newest(api, bob) == [(first, "one", False), (second, "two", False)]
    assert await newest(api, bob, count=1) == [(second, "two", False)]
    await api.ok("editmessage", {"token": alice, "message_id": first, "message": "uno"})
    assert await newest(api, bob) == [(first, "uno", True), (second, "two", False)]
    assert await newest(api, bob, count=1) == [(second, "two", False)]
    await api.ok("deletemessage", {"token": bob, "message_id": second})
    assert await newest(api, bob) == [(first, "uno", True)]
    assert await newest(api, bob, count=1) == [(first, "uno", True)]
    await api.ok("deleteaccount", {"username": "alice", "password": PASSWORD})
    assert await newest(api, bob) == []


async def test_reads_racing_writes_never_keep_a_stale_page(start):
    api = Api(await start(send_limit="0"))
    alice = await api.user("alice")
    await api.channel(alice, "general")

    async def reader():
        for _ in range(60):
            await newest(api, alice)

    sent = []

    async def writer():
        for i in range(60):
            sent.append(await api.send(alice, "general", f"m{i}"))

    await asyncio.gather(reader(), reader(), writer())
    assert [m[0] for m in await newest(api, alice)] == sent[-50:]
    assert [m[0] for m in await newest(api, alice, count=100)] == sent


async def test_a_removed_member_is_refused_at_once_after_reading(api):
    """Memberships found are kept in memory; a removal must end one before its answer."""
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    await api.channel(alice, "general", "bob", "carol")
    not_in = (401, {"message": "You are not in this channel!"})
    for token in (bob, carol):
        assert await newest(api, token) == []
    body = {"token": alice, "name": "general", "username": "bob"}
    await api.ok("removeuserfromchannel", body)
    assert await api.post("readmessagesfromchannel", {"token": bob, "name": "general"}) == not_in
    await api.ok("leavechannel", {"token": carol, "name": "general"})
    assert await api.post(
        "sendmessage", {"token": carol, "channel": "general", "message": "x"}
    ) == (not_in)
    await api.ok("addusertochannel", {"token": alice, "name": "general", "username": "bob"})
    assert await newest(api, bob) == []
