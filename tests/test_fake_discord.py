"""Smoke tests: the real discord.py 2.7.1 client against tests/fake_discord.py.

Only the two documented seams are changed (``discord.http.Route.BASE`` and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``), via monkeypatch.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest
import yarl
from fake_discord import (  # tests/ is on sys.path (no __init__.py), like conftest
    MANAGE_WEBHOOKS,
    FakeDiscord,
)
from helpers import BRIDGE, GENERAL, GUILD_ID, WAIT

with warnings.catch_warnings():
    # discord/player.py imports the stdlib audioop module, deprecated in 3.11;
    # pytest.ini turns warnings into errors.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord
    import discord.gateway
    import discord.http

ALICE = {"id": 500000000000000001, "username": "alice", "global_name": "Alice A."}
BOB_ID = 500000000000000002


class Bot(discord.Client):
    def __init__(self, **kwargs):
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        super().__init__(intents=intents, guild_ready_timeout=0.1, **kwargs)
        self.ready_event = asyncio.Event()
        self.resumed_event = asyncio.Event()
        self.ready_count = 0
        self.inbox: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_ready(self):
        self.ready_count += 1
        self.ready_event.set()

    async def on_resumed(self):
        self.resumed_event.set()

    async def on_message(self, message: discord.Message):
        if message.author.id != self.user.id:  # ignore the fake's echo of our own posts
            self.inbox.put_nowait(message)

    async def next_message(self) -> discord.Message:
        return await asyncio.wait_for(self.inbox.get(), WAIT)


@pytest.fixture
async def fake():
    f = FakeDiscord(
        guild_id=GUILD_ID,
        channels={"bridge": BRIDGE, "general": GENERAL},
        members=[ALICE, {"id": BOB_ID, "username": "bob", "nick": "Bobby"}],
    )
    await f.start()
    yield f
    await f.close()


@pytest.fixture
def pointed(fake, monkeypatch):
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
    )
    return fake


@pytest.fixture
async def bot(pointed):
    client = Bot()
    task = asyncio.create_task(client.start(pointed.token))
    try:
        await asyncio.wait_for(client.ready_event.wait(), WAIT)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, WAIT)  # re-raises if connect() failed


async def test_login_ready_guild_and_channels(bot, fake):
    assert bot.user.id == fake.bot_id and bot.user.bot
    assert fake.intents == bot.intents.value
    assert fake.identifies[0]["token"] == fake.token
    assert fake.gateway_connections[0]["v"] == "10"
    assert fake.gateway_connections[0]["encoding"] == "json"
    assert fake.heartbeats >= 1  # discord.py heartbeats right after HELLO, fake ACKs
    assert ("GET", "/users/@me", None) in fake.calls
    assert ("GET", "/oauth2/applications/@me", None) in fake.calls

    guild = bot.get_guild(GUILD_ID)
    assert guild is not None and not guild.unavailable
    names = {c.name: c for c in guild.text_channels}
    assert set(names) == {"bridge", "general"}
    assert names["bridge"].id == BRIDGE
    assert isinstance(bot.get_channel(GENERAL), discord.TextChannel)
    assert guild.me is not None and guild.member_count == 3

    shards, url, _limits = await bot.http.get_bot_gateway()
    assert (shards, url) == (1, fake.gateway_url)


async def test_send_records_content_and_allowed_mentions(bot, fake):
    channel = bot.get_channel(BRIDGE)
    sent = await channel.send("hi @everyone", allowed_mentions=discord.AllowedMentions.none())
    posted = fake.messages[BRIDGE]
    assert len(posted) == 1
    assert posted[0].id == sent.id and posted[0].content == "hi @everyone"
    assert posted[0].allowed_mentions["parse"] == []
    assert sent.author.id == fake.bot_id and sent.channel.id == BRIDGE
    method, path, body = fake.calls[-1]
    assert (method, path) == ("POST", f"/channels/{BRIDGE}/messages")
    assert body["allowed_mentions"] == {"parse": []}


async def test_injected_guild_message_and_dm(bot, fake):
    await fake.inject_message(BRIDGE, "hello bridge", author=ALICE, member_nick="Ali")
    msg = await bot.next_message()
    assert msg.content == "hello bridge"
    assert isinstance(msg.channel, discord.TextChannel) and msg.channel.name == "bridge"
    assert msg.guild.id == GUILD_ID
    assert isinstance(msg.author, discord.Member)
    assert msg.author.id == ALICE["id"] and msg.author.display_name == "Ali"
    assert msg.author.global_name == "Alice A." and msg.author.name == "alice"
    assert not msg.author.bot

    await fake.inject_message(GENERAL, "beep", author={"id": 42, "username": "otherbot"}, bot=True)
    msg = await bot.next_message()
    assert msg.author.bot and msg.channel.name == "general"

    await fake.inject_dm(777, "carol", "psst", global_name="Carol")
    dm = await bot.next_message()
    assert isinstance(dm.channel, discord.DMChannel) and dm.guild is None
    assert dm.content == "psst" and dm.author.id == 777 and dm.author.global_name == "Carol"
    assert dm.channel.id == fake.dm_channel_id(777)

    # Replying by user id creates (fetches) the DM channel: same id as the DM's channel.
    user = await bot.fetch_user(777)
    dm_channel = await user.create_dm()
    assert dm_channel.id == dm.channel.id
    await dm_channel.send("hello carol")
    assert fake.contents(dm.channel.id) == ["hello carol"]


async def test_message_content_intent_is_honoured(pointed):
    fake = pointed
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.1)
    got: asyncio.Queue[discord.Message] = asyncio.Queue()
    client.event(_put_into(got))
    task = asyncio.create_task(client.start(fake.token))
    try:
        await fake.wait_for(lambda f: f.dispatched and f.connected)
        await fake.inject_message(BRIDGE, "secret", author=ALICE)
        msg = await asyncio.wait_for(got.get(), WAIT)
        assert msg.content == ""
    finally:
        await client.close()
        await asyncio.wait_for(task, WAIT)


def _put_into(queue):
    async def on_message(message):
        queue.put_nowait(message)

    return on_message


async def test_500_once_is_retried_by_discord_py(bot, fake):
    fake.fail(BRIDGE, 500, times=1)
    sent = await bot.get_channel(BRIDGE).send("after 500")
    times = fake.attempt_times(BRIDGE)
    assert [a.status for a in fake.attempts if a.target == BRIDGE] == [500, 200]
    assert times[1] - times[0] >= 0.95  # discord.py sleeps 1 + tries*2 seconds
    assert fake.messages[BRIDGE][0].id == sent.id


async def test_429_retry_after_is_honoured(bot, fake):
    fake.fail(BRIDGE, 429, retry_after=0.3, times=1)
    await bot.get_channel(BRIDGE).send("after 429")
    times = fake.attempt_times(BRIDGE)
    assert [a.status for a in fake.attempts if a.target == BRIDGE] == [429, 200]
    assert times[1] - times[0] >= 0.29
    assert fake.contents(BRIDGE) == ["after 429"]


async def test_403_50007_on_dm_raises_forbidden(bot, fake):
    fake.fail(fake.dm_channel_id(BOB_ID), 403, code=50007)
    user = await bot.fetch_user(BOB_ID)
    with pytest.raises(discord.Forbidden) as info:
        await user.send("hi bob")
    assert info.value.code == 50007 and info.value.status == 403
    assert len(fake.attempt_times(fake.dm_channel_id(BOB_ID))) == 1  # no retry

    fake.fail(FakeDiscord.DM_CREATE, 403, code=50001)
    with pytest.raises(discord.Forbidden) as info:
        await bot.create_dm(discord.Object(id=ALICE["id"]))
    assert info.value.code == 50001


async def test_404_10003_raises_not_found(bot, fake):
    fake.fail(GENERAL, 404)
    with pytest.raises(discord.NotFound) as info:
        await bot.get_channel(GENERAL).send("x")
    assert info.value.code == 10003
    with pytest.raises(discord.NotFound) as info:  # a channel the fake doesn't know
        await bot.get_partial_messageable(999).send("x")
    assert info.value.code == 10003


async def test_hang_then_clear(bot, fake):
    channel = bot.get_channel(BRIDGE)
    fake.fail(BRIDGE, hang=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel.send("lost"), 0.3)
    assert len(fake.attempt_times(BRIDGE)) == 1
    fake.clear_faults()
    (hung,) = [a for a in fake.attempts if a.target == BRIDGE]
    await fake.wait_for(lambda f: hung.done)
    assert hung.status is None  # the client had gone away: dropped, not posted
    await channel.send("after hang")  # bucket is not wedged by the cancelled request
    assert fake.contents(BRIDGE) == ["after hang"]


async def test_edit_and_delete(bot, fake):
    msg = await bot.get_channel(BRIDGE).send("v1")
    edited = await msg.edit(content="v2")
    assert edited.content == "v2"
    ((channel_id, message_id, body),) = fake.edited
    assert (channel_id, message_id, body["content"]) == (BRIDGE, msg.id, "v2")
    await msg.delete()
    assert fake.deleted == [(BRIDGE, msg.id)]
    assert fake.messages[BRIDGE][0].deleted
    assert [e["content"] for e in fake.messages[BRIDGE][0].edits] == ["v2"]
    with pytest.raises(discord.NotFound) as info:
        await msg.delete()
    assert info.value.code == 10008


async def test_drop_gateway_resumes_and_keeps_receiving(bot, fake):
    await fake.drop_gateway()
    await fake.wait_for(lambda f: f.resumes and f.connected)
    await asyncio.wait_for(bot.resumed_event.wait(), WAIT)
    assert len(fake.identifies) == 1
    await fake.inject_message(BRIDGE, "after resume", author=ALICE)
    assert (await bot.next_message()).content == "after resume"

    # Events injected while the socket is down are replayed on RESUME.
    await fake.drop_gateway()
    await fake.inject_message(BRIDGE, "while down", author=ALICE)
    assert (await bot.next_message()).content == "while down"
    assert len(fake.resumes) == 2


async def test_invalidated_session_reidentifies(bot, fake):
    bot.ready_event.clear()
    await fake.drop_gateway(invalidate=True)
    # discord.py's Client.before_identify_hook sleeps 5 s before every non-initial IDENTIFY.
    await fake.wait_for(lambda f: len(f.identifies) == 2 and f.connected, timeout=10)
    assert len(fake.resumes) == 1
    await fake.inject_message(BRIDGE, "after re-identify", author=ALICE)
    assert (await bot.next_message()).content == "after re-identify"
    await asyncio.wait_for(bot.ready_event.wait(), WAIT)  # on_ready fires again
    assert bot.ready_count == 2


async def test_wrong_token_is_401_login_failure(pointed):
    client = discord.Client(intents=discord.Intents.none())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
    finally:
        await client.close()
    assert pointed.attempts[-1].status == 401


async def test_close_is_clean(pointed):
    fake = pointed
    client = Bot()
    task = asyncio.create_task(client.start(fake.token))
    await asyncio.wait_for(client.ready_event.wait(), WAIT)
    await client.close()
    await asyncio.wait_for(task, WAIT)
    assert task.exception() is None
    await fake.wait_for(lambda f: not f.connected and f.gateway_closes)
    # Client.close() asks for 1000, but in 2.7.1 the connect task's reader sees the
    # close first and sends 4000 (aiohttp lets the pending receive() finish first).
    assert len(fake.gateway_closes) == 1 and fake.gateway_closes[0] in (1000, 4000)
    assert client.is_closed()


async def test_file_upload_and_injected_attachment(bot, fake):
    import io

    await bot.get_channel(BRIDGE).send("pic", file=discord.File(io.BytesIO(b"PNGDATA"), "a.png"))
    (posted,) = fake.messages[BRIDGE]
    assert posted.content == "pic"
    assert posted.files[0]["filename"] == "a.png" and posted.files[0]["size"] == 7

    await fake.inject_message(
        BRIDGE,
        "see file",
        author=ALICE,
        attachments=[{"filename": "b.txt", "data": b"hello", "content_type": "text/plain"}],
    )
    msg = await bot.next_message()
    (att,) = msg.attachments
    assert att.filename == "b.txt" and att.size == 5 and att.content_type == "text/plain"
    assert await att.read() == b"hello"


async def test_enforce_nonce_returns_the_earlier_message(bot, fake):
    channel = bot.get_channel(BRIDGE)
    first = await channel.send("once", nonce="n-1")  # discord.py adds enforce_nonce: true
    assert fake.calls[-1][2]["enforce_nonce"] is True
    again = await channel.send("once", nonce="n-1")
    assert again.id == first.id
    assert fake.contents(BRIDGE) == ["once"]
    other = await channel.send("twice", nonce="n-2")
    assert other.id != first.id
    assert fake.contents(BRIDGE) == ["once", "twice"]


# --- permissions and webhooks -------------------------------------------------------------


async def _gateway_barrier(bot, fake):
    """An injected message the client has received: every earlier event was applied."""
    await fake.inject_message(BRIDGE, "barrier", author=ALICE)
    while (await bot.next_message()).content != "barrier":
        pass


async def test_discord_py_computes_manage_webhooks_from_roles_and_overwrites(pointed, fake):
    fake.bot_role_permissions = MANAGE_WEBHOOKS  # the bot's role has it guild-wide...
    await fake.allow_webhooks(GENERAL, False)  # ...but one channel denies it
    client = Bot()
    task = asyncio.create_task(client.start(fake.token))
    try:
        await asyncio.wait_for(client.ready_event.wait(), WAIT)
        guild = client.get_guild(GUILD_ID)
        assert [role.name for role in guild.me.roles] == ["@everyone", "FakeBridgeBot"]
        assert client.get_channel(BRIDGE).permissions_for(guild.me).manage_webhooks
        assert not client.get_channel(GENERAL).permissions_for(guild.me).manage_webhooks
        await fake.allow_webhooks(GENERAL, None)  # the overwrite goes: the role counts again
        await _gateway_barrier(client, fake)
        assert client.get_channel(GENERAL).permissions_for(guild.me).manage_webhooks
        assert fake.bot_permissions(GENERAL) & MANAGE_WEBHOOKS
    finally:
        await client.close()
        await asyncio.wait_for(task, WAIT)


async def test_allow_webhooks_reaches_a_connected_client(bot, fake):
    channel = bot.get_channel(GENERAL)
    assert not channel.permissions_for(channel.guild.me).manage_webhooks
    with pytest.raises(discord.Forbidden) as info:
        await channel.webhooks()
    assert info.value.code == 50013
    await fake.allow_webhooks(GENERAL)
    await _gateway_barrier(bot, fake)
    assert channel.permissions_for(channel.guild.me).manage_webhooks
    assert not bot.get_channel(BRIDGE).permissions_for(channel.guild.me).manage_webhooks
    assert await channel.webhooks() == []


async def test_webhooks_list_create_execute_edit_delete(bot, fake):
    await fake.allow_webhooks(GENERAL)
    await _gateway_barrier(bot, fake)
    channel = bot.get_channel(GENERAL)
    admins = fake.add_webhook(GENERAL, "Admin's")
    with pytest.raises(discord.HTTPException) as info:
        await channel.create_webhook(name="my discord hook")
    assert (info.value.status, info.value.code) == (400, 50035)
    created = await channel.create_webhook(name="Bridge")
    listed = {w.id: w for w in await channel.webhooks()}
    assert listed[int(admins["id"])].token is None  # not the bot's: no token
    assert listed[created.id].token == created.token and created.user.id == fake.bot_id

    sent = await created.send(
        "hi <@500000000000000001>",
        username="alice",
        wait=True,
        allowed_mentions=discord.AllowedMentions.none(),
    )
    assert (sent.author.name, sent.webhook_id) == ("alice", created.id)
    assert sent.content == "hi <@500000000000000001>"
    (posted,) = fake.messages[GENERAL]
    assert (posted.webhook_id, posted.username, posted.allowed_mentions) == (
        created.id,
        "alice",
        {"parse": []},
    )
    echo = await bot.next_message()  # Discord sends webhook posts over the gateway too
    assert echo.webhook_id == created.id and echo.author.bot
    with pytest.raises(discord.HTTPException) as info:
        await created.send("x", username="Clyde", wait=True)
    assert info.value.code == 50035
    assert await created.send("no wait") is None  # 204 without ?wait

    await created.edit_message(sent.id, content="changed")
    assert fake.edited[-1][:2] == (GENERAL, sent.id)
    assert [edit["content"] for edit in posted.edits] == ["changed"]
    assert fake.shown(GENERAL) == ["changed", "no wait"]
    with pytest.raises(discord.HTTPException) as info:  # a webhook message is not the bot's
        await channel.get_partial_message(sent.id).edit(content="by the bot")
    assert info.value.code == 50005
    with pytest.raises(discord.Forbidden):  # deleting another author's: Manage Messages
        await channel.get_partial_message(sent.id).delete()
    await created.delete_message(sent.id)
    assert fake.deleted == [(GENERAL, sent.id)] and posted.deleted
    with pytest.raises(discord.NotFound) as info:
        await created.delete_message(sent.id)
    assert info.value.code == 10008

    fake.delete_webhook(created.id)
    with pytest.raises(discord.NotFound) as info:
        await created.send("gone", wait=True)
    assert info.value.code == 10015
