"""Beyond the seed: catch-up after a reconnect.

Every list endpoint takes `after` (a message id): the oldest `count` messages above it, so a
client pages forwards. A socket that authenticates with `last_message_id` gets `ready`, then a
`replay` of every message it may read with a larger id (oldest first, at most 1000, with
`replay_truncated`), before any live event.
"""

import asyncio
import sqlite3
from contextlib import closing

import pytest
import socketio
from helpers import Sock, msg


async def feed_ids(api, token, **paging):
    got = await api.ok("getmessagesforeveryone", {"token": token, **paging})
    return [m["id"] for m in got["messages"]]


async def test_after_pages_forwards_on_every_list(api):
    alice, bob = await api.user("alice"), await api.user("bob")
    await api.channel(alice, "general", "bob")
    public = [await api.public(alice, f"p{i}") for i in range(5)]
    channel = [await api.send(alice, "general", f"c{i}") for i in range(5)]
    dms = [await api.dm(alice, "bob", f"d{i}") for i in range(5)]

    assert await feed_ids(api, bob, after=public[0], count=2) == public[1:3]
    assert await feed_ids(api, bob, after=public[2]) == public[3:]
    assert await feed_ids(api, bob, after=public[0], before=public[4]) == public[1:4]
    assert await feed_ids(api, bob, after=public[4]) == []
    assert await feed_ids(api, bob, after=str(public[1]), count="1") == public[2:3]

    body = {"token": bob, "name": "general", "after": channel[1], "count": 2}
    got = await api.ok("readmessagesfromchannel", body)
    assert [m["id"] for m in got["messages"]] == channel[2:4]
    body = {"token": bob, "after": dms[2]}
    assert [m["id"] for m in (await api.ok("getdms", body))["dms"]] == dms[3:]
    body = {"token": bob, "username": "alice", "after": dms[0], "count": 1}
    assert [m["id"] for m in (await api.ok("getdms", body))["dms"]] == dms[1:2]
    body = {"token": alice, "after": public[4], "count": 3}
    sent = (await api.ok("getmysentmessages", body))["sent_messages"]
    assert [m["id"] for m in sent] == channel[:3]


@pytest.mark.parametrize("after", [-1, 1.5, True, "1a", [], ""])
async def test_a_bad_after_is_400(api, snapshot, after):
    token = await api.user("alice")
    before = snapshot()
    for name, extra in (
        ("getmessagesforeveryone", {}),
        ("getmysentmessages", {}),
        ("readmessagesfromchannel", {"name": "general"}),
        ("getdms", {}),
    ):
        body = {"token": token, **extra, "after": after}
        assert await api.post(name, body) == (400, {"message": "Missing or invalid field: after!"})
    assert snapshot() == before


# --- replay on (re)connect --------------------------------------------------------------


async def world(api):
    """alice, bob, carol; a channel of alice and bob; every kind of message, some not bob's."""
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    await api.channel(alice, "general", "bob")
    await api.channel(carol, "secret")
    return alice, bob, carol


@pytest.mark.parametrize("how", ["api_v3_connect", "auth"])
async def test_replay_holds_every_readable_message_after_the_last_one_seen(api, sock, how):
    alice, bob, carol = await world(api)
    last_seen = await api.public(alice, "seen already")
    readable = [
        msg(await api.public(carol, "feed"), "public", "carol", "feed"),
        msg(
            await api.send(alice, "general", "chan"), "channel", "alice", "chan", channel="general"
        ),
        msg(await api.dm(alice, "bob", "to bob"), "dm", "alice", "to bob", recipient="bob"),
        msg(await api.dm(bob, "carol", "from bob"), "dm", "bob", "from bob", recipient="carol"),
    ]
    await api.send(carol, "secret", "not for bob")
    await api.dm(alice, "carol", "not for bob either")
    readable.append(msg(await api.public(bob, "last"), "public", "bob", "last"))

    auth = {"token_api_v3": bob, "last_message_id": last_seen}
    if how == "auth":
        s = await sock(auth=auth)
    else:
        s = await sock()
        await s.client.emit("api_v3_connect", auth)
    await s.next("replay")
    assert [e for e in s.events if e[0] in ("ready", "replay")] == [
        ("ready", "Server has accepted the connection and registered you as : bob"),
        ("replay", {"messages": readable, "replay_truncated": False}),
    ]


async def test_without_last_message_id_there_is_no_replay(api, sock):
    _, bob, _ = await world(api)
    s = await sock(auth={"token_api_v3": bob})
    await s.next("ready")
    await api.dm(bob, "bob", "barrier")
    await s.next("new_dm")
    assert [e for e, _ in s.events] == ["ready", "new_dm"]


async def test_replay_is_capped_at_1000_and_says_so(api, sock, db_path):
    alice = await api.user("alice")
    first = await api.public(alice, "first")
    with closing(sqlite3.connect(db_path)) as conn, conn:  # 1100 more, written directly
        conn.executemany(
            "INSERT INTO messages (kind, sender_id, sender, message, timestamp)"
            " VALUES ('public', 1, 'alice', ?, '2026-11-28T00:00:00.000Z')",
            [(f"m{i}",) for i in range(1100)],
        )
    s = await sock(auth={"token_api_v3": alice, "last_message_id": first})
    (_, replay) = await s.next("replay")
    assert replay["replay_truncated"] is True
    ids = [m["id"] for m in replay["messages"]]
    assert ids == list(range(first + 1, first + 1001))  # the oldest 1000: page on with `after`


async def test_live_events_come_after_the_replay_and_nothing_is_missed(api, sock):
    alice, bob, _ = await world(api)
    last_seen = await api.public(alice, "seen")
    sent = []

    async def keep_sending():
        for i in range(15):  # under the send limit of 20 per 10 s
            sent.append(await api.public(alice, f"live {i}"))

    sending = asyncio.create_task(keep_sending())
    await asyncio.sleep(0)
    s = await sock()
    await s.client.emit("api_v3_connect", {"token_api_v3": bob, "last_message_id": last_seen})
    await sending
    await api.dm(alice, "bob", "barrier")
    await s.next("new_dm")
    names = [e for e, _ in s.events]
    assert names.index("ready") < names.index("replay")
    assert "new_public_message" not in names[: names.index("replay")]
    replayed = [m["id"] for m in s.named("replay")[0]["messages"]]
    live = [m["id"] for m in s.named("new_public_message")]
    assert replayed == sorted(replayed) and live == sorted(live)
    # every message arrives; one committed while the replay was read may come twice (same id)
    assert set(replayed) | set(live) >= set(sent)
    assert not live or not replayed or live[-1] >= replayed[-1]


@pytest.mark.parametrize("last", [-1, "x", 1.5, True])
async def test_a_bad_last_message_id_is_an_error_and_registers_nothing(api, sock, client, last):
    _, bob, _ = await world(api)
    s = await sock()
    auth = {"token_api_v3": bob, "last_message_id": last}
    assert await s.auth(auth) == (
        "api_v3_error",
        {"message": "Missing or invalid field: last_message_id!"},
    )
    refused = Sock(str(client.make_url("/")))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(auth)
    assert refused.named("connect_error") == [
        {"message": "Missing or invalid field: last_message_id!"}
    ]
    await refused.close()
