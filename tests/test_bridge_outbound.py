"""SPEC §6, the Discord bridge, outbound: API messages mirrored to Discord, and deleted there.

How the test_bridge_*.py files run (the real app and discord.py against tests/fake_discord.py)
and what their barriers are: see the Discord bridge section of tests/helpers.py.
"""

import dataclasses

from helpers import (
    BRIDGE,
    DAN,
    FAST,
    GENERAL,
    ID,
    NO_MENTIONS,
    WAIT,
    Api,
    db_file_bytes,
    eventually,
    inbound_barrier,
    link,
    outbox,
    public_feed,
    statuses,
    until_health,
    users,
)

from bot import split_text

# --- outbound: mirrors ------------------------------------------------------------------


async def test_public_message_is_posted_to_the_bridge_channel(api, fake):
    (alice,) = await users(api, "alice")
    text = "hello @everyone and @here, <@500000000000000003> <@&42>"
    got = await api.ok("senddcmsgwithtoken", {"token": alice, "message": text})
    assert got == {"message": "Sent message!", "id": ID}
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    (post,) = fake.messages[BRIDGE]
    assert post.content == f"**alice**: {text}"
    assert post.allowed_mentions == NO_MENTIONS  # the mentions stay plain text


async def test_a_mirror_never_holds_up_its_response(api, fake):
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, hang=True)
    await api.public(alice, "while Discord hangs")
    await fake.wait_for(lambda f: statuses(f, BRIDGE))
    assert [a.done for a in fake.attempts if a.target == BRIDGE] == [False]  # still hanging
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: while Discord hangs"])


async def test_channel_message_is_mirrored_to_the_text_channel_of_the_same_name(api, fake, db_path):
    alice, bob = await users(api, "alice", "Bob")
    await api.channel(alice, "General", "Bob")  # Discord's channel is "general"
    await link(api, "General", GENERAL)
    await api.channel(alice, "nowhere")
    await api.send(bob, "general", "hi team")
    await api.send(alice, "nowhere", "no Discord channel has this name")
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**Bob**: hi team"])
    assert [row["dest"] for row in outbox(db_path)] == [f"channel:{GENERAL}"]


async def test_the_bridge_channel_is_never_bridged_to_an_api_channel(api, fake, db_path):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "Bridge", "bob")  # same name as the bridge channel
    await api.send(alice, "bridge", "stays in Button API")
    assert outbox(db_path) == []
    assert await api.post("senddcmsg", {"token": alice, "channel": "bridge", "message": "x"}) == (
        400,
        {"message": "Invalid input or user not in channel"},
    )
    await fake.inject_message(BRIDGE, "written in the bridge channel", author=DAN)
    await inbound_barrier(fake, api, bob)
    channel = await api.ok("readmessagesfromchannel", {"token": bob, "name": "bridge"})
    assert [m["message"] for m in channel["messages"]] == ["stays in Button API"]
    feed = await public_feed(api, bob)
    assert [m["message"] for m in feed] == ["written in the bridge channel", "barrier"]
    assert fake.messages[BRIDGE] == []


async def test_a_long_message_is_split_at_whitespace_and_deleted_whole(api, fake):
    (alice,) = await users(api, "alice")
    text = " ".join(f"w{i:03d}" for i in range(400))  # 1999 characters, 2010 with the prefix
    message_id = await api.public(alice, text)
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    parts = fake.contents(BRIDGE)
    assert all(len(part) <= 2000 for part in parts)
    assert " ".join(parts) == f"**alice**: {text}"
    assert await api.ok("deletemessage", {"token": alice, "message_id": message_id}) == {
        "message": "Message deleted!"
    }
    await fake.wait_for(lambda f: len(f.deleted) == 2)
    assert sorted(fake.deleted) == sorted((BRIDGE, post.id) for post in fake.messages[BRIDGE])


def test_split_text_cuts_at_whitespace_where_possible():
    assert split_text("a" * 2000) == ["a" * 2000]
    assert split_text("a" * 2001) == ["a" * 2000, "a"]
    assert split_text("a" * 1990 + " " + "b" * 20) == ["a" * 1990, "b" * 20]
    assert split_text("a" * 2000 + "   " + "b") == ["a" * 2000, "b"]
    assert split_text("**x**: " + " " * 3000 + "y") == ["**x**:", "y"]  # no blank post
    assert split_text("ab cd", limit=3) == ["ab", "cd"]
    # `first`: room kept in the first part (for `**name**: `, which a webhook post leaves out)
    assert split_text("ab cd ef", limit=5, first=2) == ["ab", "cd ef"]
    assert split_text("abcdef", limit=4, first=2) == ["ab", "cdef"]
    assert split_text("abc", limit=4, first=3) == ["abc"]


# --- outbound: deletions ----------------------------------------------------------------


async def test_deleting_a_message_deletes_its_discord_copy(api, fake, db_path):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await link(api, "general", GENERAL)
    public_id = await api.public(alice, "public one")
    channel_id = await api.send(bob, "general", "channel one")
    await fake.wait_for(lambda f: f.messages[BRIDGE] and f.messages[GENERAL])
    await api.ok("deletemessage", {"token": alice, "message_id": public_id})
    await api.ok("deletemessage", {"token": bob, "message_id": channel_id})
    await fake.wait_for(lambda f: len(f.deleted) == 2)
    copies = [(BRIDGE, fake.messages[BRIDGE][0].id), (GENERAL, fake.messages[GENERAL][0].id)]
    assert sorted(fake.deleted) == copies
    await eventually(lambda: outbox(db_path) == [])  # nothing left to do or to remember


async def test_a_message_deleted_before_delivery_never_reaches_discord(api, fake, db_path):
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, 503)  # discord.py does not retry a 503 itself: the outbox does
    secret = "never-on-discord-" + "x" * 20
    message_id = await api.public(alice, secret)
    await fake.wait_for(lambda f: len(statuses(f, BRIDGE)) >= 2)
    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    assert outbox(db_path) == []
    assert secret.encode() not in db_file_bytes(db_path)  # the outbox's copy of the text too
    fake.clear_faults()
    await api.public(alice, "later")
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: later"])


async def test_a_message_deleted_while_its_post_is_in_flight_is_deleted_on_discord(start, fake):
    client = await start(dataclasses.replace(FAST, attempt_timeout=WAIT))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, hang=True)
    message_id = await api.public(alice, "in flight")
    await fake.wait_for(lambda f: statuses(f, BRIDGE))
    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    fake.clear_faults()  # Discord now accepts the hung post...
    await fake.wait_for(lambda f: f.deleted)  # ...and the bridge deletes it at once
    (post,) = fake.messages[BRIDGE]
    assert fake.deleted == [(BRIDGE, post.id)] and post.deleted
