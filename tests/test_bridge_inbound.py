"""SPEC §6, the Discord bridge, inbound: Discord messages taken into the API.

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import pytest
from helpers import (
    BRIDGE,
    CAROL,
    GENERAL,
    ID,
    RANDOM,
    TIMESTAMP,
    inbound_barrier,
    link,
    msg,
    public_feed,
    rows,
    users,
)


@pytest.mark.parametrize(
    ("nick", "global_name", "expected"),
    [("Cee", "Carol C.", "Cee"), (None, "Carol C.", "Carol C."), (None, None, "carol")],
)
async def test_a_discord_message_in_the_bridge_channel_becomes_public(
    api, fake, sock, nick, global_name, expected
):
    (bob,) = await users(api, "bob")
    listener = await sock(bob)
    author = dict(CAROL, global_name=global_name)
    await fake.inject_message(BRIDGE, "hi from Discord", author=author, member_nick=nick)
    _, event = await listener.next("new_public_message")
    message = msg(ID, "public", expected, "hi from Discord", source="discord")
    assert event == message
    assert await public_feed(api, bob) == [message]


async def test_a_discord_message_in_a_bridged_channel_becomes_a_channel_message(api, fake, sock):
    alice, bob, eve = await users(api, "alice", "bob", "eve")
    await api.channel(alice, "General", "bob")
    await link(api, "General", GENERAL)
    b, e = await sock(bob), await sock(eve)
    await fake.inject_message(GENERAL, "hello channel", author=CAROL)
    _, event = await b.next("new_message")
    assert event == {
        "sender": "Carol C.",
        "message": "hello channel",
        "channel": "General",
        "timestamp": TIMESTAMP,
        "id": ID,
    }
    got = await api.ok("readmessagesfromchannel", {"token": alice, "name": "general"})
    assert got["messages"] == [
        msg(
            event["id"], "channel", "Carol C.", "hello channel", channel="General", source="discord"
        )
    ]
    await inbound_barrier(fake, api, eve)
    await e.next("new_public_message", where=lambda data: data["message"] == "barrier")
    assert e.named("new_message") == []


async def test_a_discord_channel_without_an_api_channel_is_not_taken_in(api, fake, db_path):
    (alice,) = await users(api, "alice")
    await fake.inject_message(RANDOM, "nobody bridges me", author=CAROL)
    await inbound_barrier(fake, api, alice)
    stored = rows(db_path, "SELECT message FROM messages")
    assert stored == [{"message": "barrier"}]


async def test_no_echo_and_no_other_bots(api, fake, db_path):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await link(api, "general", GENERAL)
    await api.public(alice, "from the API")
    await api.send(alice, "general", "to the channel")

    def echoed(f):  # the fake, like Discord, sends the bot's own posts back over the gateway
        own = [d for e, d in f.dispatched if e == "MESSAGE_CREATE" and d["author"]["bot"]]
        return len(own) == 2

    await fake.wait_for(echoed)
    robot = {"id": 900, "username": "otherbot"}
    await fake.inject_message(BRIDGE, "beep", author=robot, bot=True)
    await fake.inject_message(GENERAL, "boop", author=robot, bot=True)
    await fake.inject_message(
        BRIDGE, "hooked", author={"id": 901, "username": "hook"}, webhook_id=77
    )
    await inbound_barrier(fake, api, alice)
    stored = rows(db_path, "SELECT message, source FROM messages ORDER BY id")
    assert stored == [
        {"message": "from the API", "source": "api"},
        {"message": "to the channel", "source": "api"},
        {"message": "barrier", "source": "discord"},
    ]
    assert fake.contents(BRIDGE) == ["**alice**: from the API"]  # nothing went round again


async def test_attachments_empty_and_long_discord_messages(api, fake):
    (alice,) = await users(api, "alice")
    png = {"filename": "a.png", "url": "https://cdn.example/a.png"}
    txt = {"filename": "b.txt", "url": "https://cdn.example/b.txt"}
    await fake.inject_message(BRIDGE, "look", author=CAROL, attachments=[png, txt])
    await fake.inject_message(BRIDGE, "", author=CAROL, attachments=[png])
    await fake.inject_message(BRIDGE, "", author=CAROL, embeds=[{"title": "only an embed"}])
    long_text = "z" * 2500
    await fake.inject_message(BRIDGE, long_text, author=CAROL)
    await inbound_barrier(fake, api, alice)
    assert [m["message"] for m in await public_feed(api, alice)] == [
        "look\nhttps://cdn.example/a.png\nhttps://cdn.example/b.txt",
        "https://cdn.example/a.png",
        long_text,  # stored whole, past 2000 characters
        "barrier",
    ]
