"""SPEC §6 and §8: a Button API channel is bridged to a Discord channel only when an admin
links the two (`linkchannel`); names alone never bridge anything.

Against the fake Discord of tests/fake_discord.py, whose guild has the text channels bridge,
general and random. "random" plays a private Discord channel that nobody linked.
"""

import pytest
from helpers import (
    BRIDGE,
    CAROL,
    GENERAL,
    ID,
    RANDOM,
    TIMESTAMP,
    Api,
    inbound_barrier,
    link,
    rows,
    users,
)

import db
from buttonapi import db_key
from permissions import Role

NOT_ALLOWED = (403, {"message": "You are not allowed to do that!"})
CHANNEL_NOT_FOUND = (404, {"message": "Channel not found!"})
ALREADY_LINKED = (409, {"message": "Channel is already linked!"})
NO_TARGET = (400, {"message": "Invalid input or user not in channel"})


async def admin(api, name="root"):
    token = await api.user(name)
    await db.set_role(api.client.app[db_key], None, "(console)", name, Role.ADMIN)
    return token


async def test_an_api_channel_named_like_a_private_discord_channel_reads_and_posts_nothing(
    api, fake, db_path
):
    (eve,) = await users(api, "eve")
    await api.channel(eve, "Random")  # Discord's private channel is "random"
    await api.send(eve, "random", "let me in")
    await fake.inject_message(RANDOM, "private talk", author=CAROL)
    body = {"token": eve, "channel": "random", "message": "to the private channel"}
    assert await api.post("senddcmsg", body) == NO_TARGET
    await api.public(eve, "after")  # a later post: an earlier one would be there first
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**eve**: after"])
    await inbound_barrier(fake, api, eve)  # every earlier Discord message was handled
    assert fake.contents(RANDOM) == []  # no post of ours
    got = await api.ok("readmessagesfromchannel", {"token": eve, "name": "random"})
    assert [m["message"] for m in got["messages"]] == ["let me in"]
    assert rows(db_path, "SELECT dest FROM discord_outbox") == [{"dest": f"channel:{BRIDGE}"}]


async def test_a_link_bridges_both_ways_and_an_unlink_ends_it(api, fake, db_path):
    root = await admin(api)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "team")
    body = {"token": root, "name": "TEAM", "discord_channel": "General"}
    assert await api.post("linkchannel", body) == (
        200,
        {"message": "Channel linked!", "name": "team", "discord_channel": str(GENERAL)},
    )
    assert await api.ok("getlinks", {"token": root}) == {
        "links": [{"name": "team", "discord_channel": str(GENERAL)}]
    }
    await api.send(alice, "team", "out")
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: out"])
    await fake.inject_message(GENERAL, "in", author=CAROL)
    await inbound_barrier(fake, api, alice)
    got = await api.ok("readmessagesfromchannel", {"token": alice, "name": "team"})
    assert [(m["sender"], m["message"], m["source"]) for m in got["messages"]] == [
        ("alice", "out", "api"),
        ("Carol C.", "in", "discord"),
    ]
    body = {"token": alice, "channel": "team", "message": "direct"}
    assert await api.post("senddcmsg", body) == (200, {"message": "Dm message sent!", "id": ID})
    assert await api.post("unlinkchannel", {"token": root, "name": "team"}) == (
        200,
        {"message": "Channel unlinked!"},
    )
    assert await api.post("unlinkchannel", {"token": root, "name": "team"}) == (
        404,
        {"message": "Channel is not linked!"},
    )
    assert await api.post("senddcmsg", body) == NO_TARGET
    await api.send(alice, "team", "not mirrored")
    await fake.inject_message(GENERAL, "not taken in", author=CAROL)
    await api.public(alice, "later")
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: later"])
    await inbound_barrier(fake, api, alice)
    assert fake.contents(GENERAL) == ["**alice**: out", "**alice**: direct"]
    got = await api.ok("readmessagesfromchannel", {"token": alice, "name": "team"})
    assert [m["message"] for m in got["messages"]][-1] == "not mirrored"
    entries = (await api.ok("getauditlog", {"token": root}))["entries"]
    assert [(e["actor"], e["action"], e["target"], e["reason"]) for e in entries[-2:]] == [
        ("root", "linkchannel", "team", f"discord channel {GENERAL}"),
        ("root", "unlinkchannel", "team", f"discord channel {GENERAL}"),
    ]
    assert entries[-1]["timestamp"] == TIMESTAMP


async def test_link_by_id_and_one_link_per_channel_on_each_side(api, fake, snapshot):
    root = await admin(api)
    await api.channel(root, "one")
    await api.channel(root, "two")
    body = {"token": root, "name": "one", "discord_channel": str(RANDOM)}
    assert (await api.post("linkchannel", body))[0] == 200
    before = snapshot()
    for name, target in [("one", "general"), ("two", "random"), ("two", str(RANDOM))]:
        body = {"token": root, "name": name, "discord_channel": target}
        assert await api.post("linkchannel", body) == ALREADY_LINKED, (name, target)
    for target in ("bridge", "BRIDGE", str(BRIDGE)):  # the public feed's channel
        body = {"token": root, "name": "two", "discord_channel": target}
        assert await api.post("linkchannel", body) == ALREADY_LINKED, target
    assert snapshot() == before


@pytest.mark.parametrize(
    ("who", "name", "target", "expected"),
    [
        ("alice", "team", "general", NOT_ALLOWED),
        ("mod", "team", "general", NOT_ALLOWED),
        ("root", "nothing", "general", CHANNEL_NOT_FOUND),
        ("root", "team", "nothing", CHANNEL_NOT_FOUND),
        ("root", "team", "999", CHANNEL_NOT_FOUND),
        ("root", "team", None, (400, {"message": "Missing or invalid field: discord_channel!"})),
        ("root", "team", 222, (400, {"message": "Missing or invalid field: discord_channel!"})),
    ],
)
async def test_linkchannel_refusals_change_nothing(
    api, fake, snapshot, who, name, target, expected
):
    tokens = {
        "root": await admin(api),
        "alice": await api.user("alice"),
        "mod": await api.user("mod"),
    }
    await db.set_role(api.client.app[db_key], None, "(console)", "mod", Role.MODERATOR)
    await api.channel(tokens["alice"], "team")
    before = snapshot()
    body = {"token": tokens[who], "name": name, "discord_channel": target}
    assert await api.post("linkchannel", body) == expected
    assert (
        await api.post("unlinkchannel", {"token": tokens["alice"], "name": "team"}) == NOT_ALLOWED
    )
    assert snapshot() == before


async def test_linkchannel_without_a_bot_is_503(api):
    root = await admin(api)
    await api.channel(root, "team")
    body = {"token": root, "name": "team", "discord_channel": "general"}
    assert await api.post("linkchannel", body) == (
        503,
        {"message": "Discord bot is not connected!"},
    )


async def test_links_survive_a_restart(start, fake, db_path):
    client = await start()
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await link(api, "general", GENERAL)
    await client.close()
    api = Api(await start())
    await api.send(alice, "general", "after the restart")
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: after the restart"])


async def test_moderation_meets_the_bridge(api, fake):
    """A timed-out user's senddcmsg is refused; a moderator deletes a message written on
    Discord (no account: a member's) but not someone's `discord`-kind message."""
    root = await admin(api)
    alice, mod = await users(api, "alice", "mod")
    await db.set_role(api.client.app[db_key], None, "(console)", "mod", Role.MODERATOR)
    await api.channel(alice, "team", "mod")
    await link(api, "team", GENERAL)
    body = {"token": alice, "channel": "team", "message": "to Discord"}
    sent = (await api.ok("senddcmsg", body))["id"]
    await fake.inject_message(GENERAL, "written on Discord", author=CAROL)
    await inbound_barrier(fake, api, alice)
    got = await api.ok("readmessagesfromchannel", {"token": mod, "name": "team"})
    inbound = next(m["id"] for m in got["messages"] if m["source"] == "discord")
    assert await api.post("deletemessage", {"token": mod, "message_id": inbound}) == (
        200,
        {"message": "Message deleted!"},
    )
    assert await api.post("deletemessage", {"token": root, "message_id": sent}) == (
        403,
        {"message": "You can only delete your messages!"},
    )
    timed = await api.ok("timeoutuser", {"token": mod, "username": "alice", "seconds": 60})
    assert await api.post("senddcmsg", body) == (
        403,
        {"message": "You are timed out!", "until": timed["until"]},
    )
    entries = (await api.ok("getauditlog", {"token": root}))["entries"]
    assert [(e["actor"], e["action"], e["target"], e["message_id"]) for e in entries[-2:]] == [
        ("mod", "deletemessage", "Carol C.", inbound),
        ("mod", "timeoutuser", "alice", None),
    ]
