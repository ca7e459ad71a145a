"""SPEC section 10: read markers (`markread`, `getunread`, the `read_marker` event).

A conversation (the feed, a channel, one DM partner) is read up to a message; a marker never
moves back; counts are of messages others sent after it, zero entries left out; a channel
the user left, a deleted message and a deleted account count no more.
"""

import pytest
from helpers import INVALID_TOKEN, PASSWORD, barrier, invalid

NOTHING = {"public": 0, "channels": {}, "dms": {}}
MARKED = {"message": "Marked read!"}


async def unread(api, token):
    return await api.ok("getunread", {"token": token})


async def mark(api, token, message_id):
    return await api.ok("markread", {"token": token, "message_id": message_id})


@pytest.fixture
async def talk(api):
    """alice and bob in general; carol alone; messages of every kind, to bob and from him."""
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    await api.channel(alice, "general", "bob")
    ids = {
        "p1": await api.public(alice, "feed one"),
        "p2": await api.public(carol, "feed two"),
        "mine": await api.public(bob, "bob's own"),
        "c1": await api.send(alice, "general", "channel one"),
        "c2": await api.send(alice, "general", "channel two"),
        "cb": await api.send(bob, "general", "bob in channel"),
        "d1": await api.dm(alice, "bob", "dm one"),
        "d2": await api.dm(carol, "bob", "dm from carol"),
        "db": await api.dm(bob, "alice", "bob's dm"),
    }
    return {"alice": alice, "bob": bob, "carol": carol}, ids


async def test_counts_exclude_your_own_and_leave_zero_out(api, talk):
    tokens, _ = talk
    assert await unread(api, tokens["bob"]) == {
        "public": 2,
        "channels": {"general": 2},
        "dms": {"alice": 1, "carol": 1},
    }
    assert await unread(api, tokens["alice"]) == {
        "public": 2,
        "channels": {"general": 1},
        "dms": {"bob": 1},
    }
    assert await unread(api, tokens["carol"]) == {"public": 2, "channels": {}, "dms": {}}


async def test_marking_reads_one_conversation_up_to_the_message(api, talk):
    tokens, ids = talk
    bob = tokens["bob"]
    assert await mark(api, bob, ids["p1"]) == MARKED
    assert (await unread(api, bob))["public"] == 1
    assert await mark(api, bob, ids["c2"]) == MARKED
    assert await mark(api, bob, ids["d1"]) == MARKED
    assert await unread(api, bob) == {"public": 1, "channels": {}, "dms": {"carol": 1}}
    assert await mark(api, bob, ids["db"]) == MARKED  # his own DM to alice: alice's conversation
    assert await mark(api, bob, str(ids["d2"])) == MARKED
    assert await unread(api, bob) == {"public": 1, "channels": {}, "dms": {}}
    new = await api.dm(alice := tokens["alice"], "bob", "later")
    await api.send(alice, "general", "later too")
    assert await unread(api, bob) == {"public": 1, "channels": {"general": 1}, "dms": {"alice": 1}}
    assert await mark(api, bob, new) == MARKED
    assert (await unread(api, bob))["dms"] == {}


async def test_a_marker_never_moves_back(api, sock, talk):
    tokens, ids = talk
    bob = tokens["bob"]
    s = await sock(bob)
    await mark(api, bob, ids["c2"])
    await s.next("read_marker")
    assert await mark(api, bob, ids["c1"]) == MARKED  # older: changes nothing, tells nobody
    await api.send(tokens["alice"], "general", "new")
    assert (await unread(api, bob))["channels"] == {"general": 1}
    await barrier(api, tokens["alice"], s, "bob")
    assert s.named("read_marker") == [
        {"message_id": ids["c2"], "kind": "channel", "channel": "general"}
    ]


async def test_read_marker_goes_to_every_socket_of_the_user_only(api, sock, talk):
    tokens, ids = talk
    bob1, bob2 = await sock(tokens["bob"]), await sock(tokens["bob"])
    alice = await sock(tokens["alice"])
    await mark(api, tokens["bob"], ids["p2"])
    await mark(api, tokens["bob"], ids["cb"])
    await mark(api, tokens["bob"], ids["d2"])
    expected = [
        {"message_id": ids["p2"], "kind": "public"},
        {"message_id": ids["cb"], "kind": "channel", "channel": "general"},
        {"message_id": ids["d2"], "kind": "dm", "username": "carol"},
    ]
    for s in (bob1, bob2):
        await s.next("read_marker", where=lambda d: d["kind"] == "dm")
        assert s.named("read_marker") == expected
    await barrier(api, tokens["bob"], alice, "alice")
    assert alice.named("read_marker") == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, invalid("token")),
        ({"token": "x"}, invalid("message_id")),
        ({"token": "x", "message_id": -1}, invalid("message_id")),
        ({"token": "x", "message_id": 1}, INVALID_TOKEN),
    ],
)
async def test_markread_fields_and_token(api, body, expected):
    assert await api.post("markread", body) == expected


async def test_markread_refuses_what_the_user_may_not_read(api, talk):
    tokens, ids = talk
    carol = tokens["carol"]
    not_yours = (403, {"message": "Your not allowed to read this message!"})
    assert await api.post("markread", {"token": carol, "message_id": ids["c1"]}) == not_yours
    assert await api.post("markread", {"token": carol, "message_id": ids["d1"]}) == not_yours
    missing = (404, {"message": "Message not found!"})
    assert await api.post("markread", {"token": carol, "message_id": 10**6}) == missing
    assert await unread(api, carol) == {"public": 2, "channels": {}, "dms": {}}


async def test_getunread_fields_and_token(api):
    assert await api.post("getunread", {}) == invalid("token")
    assert await api.post("getunread", {"token": "x"}) == INVALID_TOKEN


async def test_a_left_or_removed_channel_counts_no_more(api, talk):
    tokens, _ = talk
    await api.ok("leavechannel", {"token": tokens["bob"], "name": "general"})
    assert (await unread(api, tokens["bob"]))["channels"] == {}
    body = {"token": tokens["alice"], "name": "general", "username": "bob"}
    await api.ok("addusertochannel", body)
    assert (await unread(api, tokens["bob"]))["channels"] == {"general": 2}
    await api.ok("removeuserfromchannel", body)
    assert (await unread(api, tokens["bob"]))["channels"] == {}


async def test_a_deleted_message_counts_no_more(api, talk):
    tokens, ids = talk
    for key in ("p1", "c1", "d1"):
        await api.ok("deletemessage", {"token": tokens["alice"], "message_id": ids[key]})
    assert await unread(api, tokens["bob"]) == {
        "public": 1,
        "channels": {"general": 1},
        "dms": {"carol": 1},
    }


async def test_a_deleted_account_counts_no_more(api, talk):
    tokens, ids = talk
    await mark(api, tokens["alice"], ids["db"])
    await api.ok("deleteaccount", {"username": "carol", "password": PASSWORD})
    assert await unread(api, tokens["bob"]) == {
        "public": 1,
        "channels": {"general": 2},
        "dms": {"alice": 1},
    }
    await api.ok("deleteaccount", {"username": "alice", "password": PASSWORD})
    assert await unread(api, tokens["bob"]) == NOTHING
    assert await api.post("getunread", {"token": tokens["alice"]}) == INVALID_TOKEN
