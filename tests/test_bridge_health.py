"""SPEC §6, the Discord bridge's availability: no token, a wrong token, a dropped gateway,
Discord unreachable, the intents; and the health endpoint that tells.

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import socket

from fake_discord import FakeDiscord
from helpers import (
    BRIDGE,
    CAROL,
    GUILD_ID,
    NO_MENTIONS,
    Api,
    eventually,
    health,
    inbound_barrier,
    outbox,
    public_feed,
    until_health,
    users,
)


async def test_without_a_token_the_bridge_is_disabled(start, fake, db_path):
    client = await start(discord_token="")
    api = Api(client)
    (alice,) = await users(api, "alice")
    assert await health(client) == "disabled"
    await api.public(alice, "API only")
    await api.channel(alice, "general")
    await api.send(alice, "general", "API only too")
    body = {"token": alice, "channel": "general", "message": "x" * 2001}
    assert await api.post("senddcmsg", body) == (
        411,
        {"message": "Message needs to be 1-2000 chars long!"},
    )
    body["message"] = "x"
    assert await api.post("senddcmsg", body) == (503, {"message": "Discord bot is not connected!"})
    assert outbox(db_path) == []
    assert fake.calls == []  # the bot never even logged in


async def test_health_follows_the_gateway_and_the_bridge_survives_a_drop(client, api, fake):
    (alice,) = await users(api, "alice")
    assert await health(client) == "connected"
    await fake.drop_gateway()  # discord.py resumes at once
    await fake.wait_for(lambda f: f.resumes and f.connected)
    await until_health(client, "connected")
    await fake.inject_message(BRIDGE, "after a resume", author=CAROL)
    await inbound_barrier(fake, api, alice)
    assert [m["message"] for m in await public_feed(api, alice)] == ["after a resume", "barrier"]

    # An invalidated session: discord.py waits 5 s before it identifies again.
    await fake.drop_gateway(invalidate=True)
    await until_health(client, "disconnected")
    body = {"token": alice, "channel": "carol", "message": "x"}
    assert (await api.post("senddcmsg", body))[0] == 400  # ready once: no 503 now
    await api.public(alice, "while the gateway is down")  # REST does not need the gateway
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: while the gateway is down"])
    await until_health(client, "connected", within=10)
    await fake.inject_message(BRIDGE, "after identify", author=CAROL)
    await inbound_barrier(fake, api, alice, "barrier 2")


async def test_the_bot_identifies_with_the_four_intents(client, fake):
    guilds, guild_messages, direct_messages, message_content = 1 << 0, 1 << 9, 1 << 12, 1 << 15
    assert fake.intents == guilds | guild_messages | direct_messages | message_content


async def test_the_gateway_url_can_come_from_the_rest_base(start, fake):
    client = await start(discord_gateway_url="")  # GET /gateway/bot names it
    await until_health(client, "connected")
    assert ("GET", "/gateway/bot", None) in fake.calls


async def test_a_wrong_token_keeps_the_bridge_off_and_loses_nothing(start, fake, db_path):
    client = await start(discord_token="not-the-token")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await fake.wait_for(lambda f: any(a.status == 401 for a in f.attempts))
    assert await health(client) == "disconnected"
    body = {"token": alice, "channel": "carol", "message": "x"}
    assert await api.post("senddcmsg", body) == (503, {"message": "Discord bot is not connected!"})
    await api.public(alice, "kept for later")
    assert [(r["state"], r["content"]) for r in outbox(db_path)] == [
        ("post", "**alice**: kept for later")
    ]
    await client.close()

    await start()  # the token fixed: the outbox delivers what it kept
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: kept for later"])


async def test_discord_unreachable_at_start_is_retried(start, fake):
    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    later = FakeDiscord(guild_id=GUILD_ID, channels=fake.channels, members=[CAROL], port=port)
    client = await start(
        discord_api_base=f"http://127.0.0.1:{port}/api/v10",
        discord_gateway_url=f"ws://127.0.0.1:{port}/gateway",
    )
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.public(alice, "while Discord is away")
    assert await health(client) == "disconnected"
    await later.start()
    try:
        await until_health(client, "connected")
        await later.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: while Discord is away"])
        assert later.messages[BRIDGE][0].allowed_mentions == NO_MENTIONS
    finally:
        await client.close()
        await later.close()


async def test_without_the_message_content_intent_the_log_says_what_to_do(start, fake, caplog):
    fake.disallowed_intents = 1 << 15  # not enabled in the developer portal: close 4014
    client = await start()
    await eventually(lambda: "enable the Message Content intent" in caplog.text)
    assert await health(client) == "disconnected"
    assert len(fake.identifies) == 1  # not retried: only the bot's owner can fix this
