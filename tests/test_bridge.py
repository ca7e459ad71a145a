"""SPEC §6: the Discord bridge, end to end.

The real app (create_app) on a real SQLite file, the real discord.py client, and the fake
Discord of tests/fake_discord.py (a real REST + gateway server on loopback) that the bridge is
pointed at through DISCORD_API_BASE / DISCORD_GATEWAY_URL. Nothing of ours is mocked; only the
bridge's waits are shortened (bot.Timing), the logic is the production one.

Every post the bridge makes is checked to carry no allowed mentions (the `fake` fixture's
teardown). A test that something did NOT happen uses a barrier: a later event that does happen
and that the bridge can only produce after the earlier one was handled (inbound messages are
taken in one at a time, in order; each Discord destination is delivered in order).
"""

import asyncio
import dataclasses
import inspect
import itertools
import re
import socket
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
import socketio
from conftest import ID, TIMESTAMP, Api, db_file_bytes, msg
from fake_discord import MANAGE_WEBHOOKS, FakeDiscord
from test_storage import bad_plan_lines

from bot import Timing, split_text
from buttonapi import Config, create_app, db_key

GUILD_ID = 700000000000000001
BRIDGE, GENERAL, RANDOM = 111, 222, 333
CAROL = {"id": 500000000000000003, "username": "carol", "global_name": "Carol C."}
DAN = {"id": 500000000000000004, "username": "dan", "global_name": None}
WAIT = 5.0
NO_MENTIONS = {"parse": []}

# Production logic, shorter waits: discord.py's guild wait, the per-attempt timeout, backoff.
FAST = Timing(
    send_wait=5.0, attempt_timeout=2.5, backoff=(0.05, 0.1, 0.2, 0.4), guild_ready_timeout=0.1
)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def fake():
    f = FakeDiscord(
        guild_id=GUILD_ID,
        channels={"bridge": BRIDGE, "general": GENERAL, "random": RANDOM},
        members=[CAROL, DAN],
    )
    await f.start()
    yield f
    await f.close()
    for channel, posts in f.messages.items():  # SPEC 6: nothing the bridge posts pings anyone
        for post in posts:  # the bot's own posts and its webhooks', and every edit of them
            assert post.allowed_mentions == NO_MENTIONS, (channel, post)
            for edit in post.edits:
                assert edit["allowed_mentions"] == NO_MENTIONS, (channel, post)


@pytest.fixture
def config(db_path, fake):
    """The bridge pointed at the fake; no send limit (the tests send in bursts)."""
    return Config(
        db=str(db_path),
        bcrypt_rounds=4,
        send_limit="0",
        discord_token=fake.token,
        discord_guild_id=GUILD_ID,
        discord_channel_id=BRIDGE,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )


@pytest.fixture
def start(fake, aiohttp_client, config):
    """start(timing=FAST, **config changes) -> a running server (its bot may not be ready).

    Servers stop before the fake Discord does (`fake` is set up first)."""

    async def start(timing=FAST, **changes):
        app = await create_app(dataclasses.replace(config, **changes), bridge_timing=timing)
        return await aiohttp_client(app)

    return start


@pytest.fixture
async def client(start):
    c = await start()
    await until_health(c, "connected")
    return c


@pytest.fixture
async def sock(client):
    """sock(token) -> a real Socket.IO client registered as the token's user."""
    socks = []

    async def make(token):
        s = Sock()
        socks.append(s)
        await s.client.connect(
            str(client.make_url("/")), transports=["websocket"], auth={"token_api_v3": token}
        )
        await s.next("ready")
        return s

    yield make
    for s in socks:
        await s.client.disconnect()


class Sock:
    def __init__(self):
        self.client = socketio.AsyncClient(reconnection=False)
        self.events = []
        self.changed = asyncio.Condition()
        self.client.on("*", self._record)

    async def _record(self, event, data=None):
        async with self.changed:
            self.events.append((event, data))
            self.changed.notify_all()

    async def next(self, name, where=lambda data: True):
        """The first `name` event whose data satisfies `where` (waits at most WAIT)."""

        def found():
            return next((d for e, d in self.events if e == name and where(d)), None)

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: found() is not None), WAIT)
        return found()

    def named(self, name):
        return [data for event, data in self.events if event == name]


# --- helpers ----------------------------------------------------------------------------


async def eventually(check, within=WAIT):
    """Wait until `check()` (plain or async) is truthy and return it; fail after `within` s.

    For conditions nothing notifies us of (the database file, the health endpoint)."""

    async def value():
        result = check()
        return await result if inspect.isawaitable(result) else result

    async with asyncio.timeout(within):
        while not (result := await value()):  # noqa: ASYNC110 - polled: no event to wait on
            await asyncio.sleep(0.01)
    return result


async def health(client):
    async with client.get("/api/v3/health/") as resp:
        assert resp.status == 200
        return (await resp.json())["discord"]


async def until_health(client, state, within=WAIT):
    async def reached():
        return await health(client) == state

    await eventually(reached, within)


def rows(db_path, sql, params=()):
    """Rows of the server's database file (read-only), as dicts."""
    with closing(sqlite3.connect(f"{Path(db_path).as_uri()}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def outbox(db_path):
    return rows(db_path, "SELECT * FROM discord_outbox ORDER BY id")


def statuses(fake, target):
    return [a.status for a in fake.attempts if a.target == target and a.method == "POST"]


async def public_feed(api, token):
    return (await api.ok("getmessagesforeveryone", {"token": token}))["messages"]


async def inbound_barrier(fake, api, token, marker="barrier"):
    """A Discord message in the bridge channel that the API has stored: every Discord message
    injected before it has been handled."""
    await fake.inject_message(BRIDGE, marker, author=DAN)

    async def stored():
        return any(m["message"] == marker for m in await public_feed(api, token))

    await eventually(stored)


async def users(api, *names):
    return [await api.user(name) for name in names]


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


# --- inbound ----------------------------------------------------------------------------


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
    event = await listener.next("new_public_message")
    message = msg(ID, "public", expected, "hi from Discord", source="discord")
    assert event == message
    assert await public_feed(api, bob) == [message]


async def test_a_discord_message_in_a_bridged_channel_becomes_a_channel_message(api, fake, sock):
    alice, bob, eve = await users(api, "alice", "bob", "eve")
    await api.channel(alice, "General", "bob")
    b, e = await sock(bob), await sock(eve)
    await fake.inject_message(GENERAL, "hello channel", author=CAROL)
    event = await b.next("new_message")
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
    await e.next("new_public_message", lambda data: data["message"] == "barrier")
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


# --- DMs to the bot and senddcmsg -------------------------------------------------------


async def test_a_dm_to_the_bot_registers_the_user_once_and_senddcmsg_reaches_them(
    api, fake, db_path
):
    (alice,) = await users(api, "alice")
    dm = fake.dm_channel_id(CAROL["id"])
    await fake.inject_dm(CAROL["id"], "carol", "hello bot", global_name="Carol C.")
    await fake.wait_for(lambda f: f.messages[dm])
    (confirmation,) = fake.contents(dm)
    assert "carol" in confirmation and len(confirmation) < 200
    assert rows(db_path, "SELECT id, username FROM discord_users") == [
        {"id": CAROL["id"], "username": "carol"}
    ]
    await fake.inject_dm(CAROL["id"], "carol", "hello again")
    await inbound_barrier(fake, api, alice)
    body = {"token": alice, "channel": "CAROL", "message": "hi @everyone"}
    assert await api.post("senddcmsg", body) == (200, {"message": "Dm message sent!", "id": ID})
    assert fake.contents(dm) == [confirmation, "**alice** via Button API: hi @everyone"]
    (sent,) = (await api.ok("getmysentmessages", {"token": alice}))["sent_messages"]
    assert sent == msg(ID, "discord", "alice", "hi @everyone", channel="CAROL")
    await api.ok("deletemessage", {"token": alice, "message_id": sent["id"]})
    await fake.wait_for(lambda f: f.deleted == [(dm, f.messages[dm][1].id)])  # not the reply


async def test_senddcmsg_to_a_bridged_channel_the_sender_is_in(api, fake):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general")
    body = {"token": alice, "channel": "GENERAL", "message": "to <@&1> the channel"}
    assert await api.post("senddcmsg", body) == (200, {"message": "Dm message sent!", "id": ID})
    assert fake.contents(GENERAL) == ["**alice**: to <@&1> the channel"]
    (sent,) = (await api.ok("getmysentmessages", {"token": alice}))["sent_messages"]
    assert sent == msg(ID, "discord", "alice", "to <@&1> the channel", channel="GENERAL")
    assert await api.ok("readmessagesfromchannel", {"token": alice, "name": "general"}) == {
        "messages": []
    }  # sent to Discord only


@pytest.mark.parametrize(
    "target",
    ["general", "lonely", "nobody", "bridge"],
)
async def test_senddcmsg_without_a_target_is_400_and_keeps_nothing(api, fake, db_path, target):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general")  # bob is not a member
    await api.channel(bob, "lonely")  # bob is a member, but no Discord channel is "lonely"
    before = rows(db_path, "SELECT * FROM messages")
    body = {"token": bob, "channel": target, "message": "hi"}
    assert await api.post("senddcmsg", body) == (
        400,
        {"message": "Invalid input or user not in channel"},
    )
    assert rows(db_path, "SELECT * FROM messages") == before
    assert outbox(db_path) == []


async def test_senddcmsg_prefers_a_bridged_channel_to_a_discord_user_of_that_name(api, fake):
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await fake.inject_dm(777, "general", "I am a person called general")
    await fake.wait_for(lambda f: f.messages[f.dm_channel_id(777)])
    await api.ok("senddcmsg", {"token": alice, "channel": "general", "message": "which?"})
    assert fake.contents(GENERAL) == ["**alice**: which?"]
    assert len(fake.messages[fake.dm_channel_id(777)]) == 1  # the confirmation only


@pytest.mark.parametrize(
    ("fault", "target"),
    [
        ({"status": 403, "code": 50013}, "general"),  # missing permissions
        ({"status": 403, "code": 50001}, "general"),  # missing access
        ({"status": 404, "code": 10003}, "general"),  # unknown channel
        ({"status": 403, "code": 50007}, "carol"),  # the user does not accept DMs
    ],
)
async def test_senddcmsg_refused_for_good_is_502_and_keeps_nothing(
    api, fake, db_path, fault, target
):
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await fake.inject_dm(CAROL["id"], "carol", "hi")
    dm = fake.dm_channel_id(CAROL["id"])
    await fake.wait_for(lambda f: f.messages[dm])  # the confirmation
    channel = GENERAL if target == "general" else dm
    fake.fail(channel, **fault)
    earlier = len(statuses(fake, channel))
    text = "x " * 999 + "x"  # two posts: the second is never tried once the first is refused
    body = {"token": alice, "channel": target, "message": text.strip()}
    assert await api.post("senddcmsg", body) == (502, {"message": "Discord rejected the message!"})
    assert rows(db_path, "SELECT * FROM messages") == []
    assert [row for row in outbox(db_path) if row["message_id"] is not None] == []
    assert statuses(fake, channel)[earlier:] == [fault["status"]]  # never retried
    assert await api.post("getmysentmessages", {"token": alice}) == (
        404,
        {"message": "No sent messages!"},
    )


async def test_senddcmsg_transient_failure_is_202_then_delivered_once(api, fake, db_path):
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(GENERAL, 503)
    body = {"token": alice, "channel": "general", "message": "eventually"}
    status, got = await api.post("senddcmsg", body)
    assert (status, got) == (202, {"message": "Queued for Discord delivery!", "id": ID})
    await fake.wait_for(lambda f: len(statuses(f, GENERAL)) >= 4)
    times = fake.attempt_times(GENERAL)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= backoff for gap, backoff in zip(gaps, FAST.backoff, strict=False))
    (sent,) = (await api.ok("getmysentmessages", {"token": alice}))["sent_messages"]
    assert sent["id"] == got["id"]  # kept: it is on its way
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(GENERAL))
    body["message"] = "second"  # the same destination, in order: a barrier
    assert (await api.post("senddcmsg", body))[0] == 200
    assert fake.contents(GENERAL) == ["**alice**: eventually", "**alice**: second"]
    first, _second = outbox(db_path)
    assert (first["state"], first["content"], first["discord_message_id"]) == (
        "posted",
        None,
        fake.messages[GENERAL][0].id,
    )


async def test_senddcmsg_answers_202_when_the_first_attempt_outlasts_the_wait(start, fake):
    client = await start(dataclasses.replace(FAST, send_wait=0.5))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(GENERAL, 500)  # discord.py itself retries a 500 after 1 s, 3 s, ...
    body = {"token": alice, "channel": "general", "message": "slow"}
    assert (await api.post("senddcmsg", body))[0] == 202
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: slow"])
    assert statuses(fake, GENERAL) == [500, 200]


async def test_a_hanging_destination_does_not_delay_another(start, fake):
    client = await start(dataclasses.replace(FAST, attempt_timeout=2.0))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(GENERAL, hang=True)
    body = {"token": alice, "channel": "general", "message": "stuck"}
    sending = asyncio.create_task(api.post("senddcmsg", body))
    await fake.wait_for(lambda f: statuses(f, GENERAL))
    await api.public(alice, "not stuck")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    assert not sending.done()  # the other destination did not wait for this one
    assert (await sending)[0] == 202  # the attempt timed out: transient
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: stuck"])
    assert len(fake.messages[GENERAL]) == 1


async def test_429_retry_after_is_honoured_by_the_outbox(start, fake):
    # The attempt timeout cuts discord.py's own wait short: the outbox must still wait.
    client = await start(dataclasses.replace(FAST, attempt_timeout=0.5))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(GENERAL, 429, retry_after=1.5, times=1)
    body = {"token": alice, "channel": "general", "message": "patience"}
    assert (await api.post("senddcmsg", body))[0] == 202
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: patience"])
    first, second = fake.attempt_times(GENERAL)
    assert second - first >= 1.5
    assert statuses(fake, GENERAL) == [429, 200]


async def test_a_short_429_is_waited_out_within_the_first_attempt(api, fake):
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(GENERAL, 429, retry_after=0.3, times=1)
    body = {"token": alice, "channel": "general", "message": "soon"}
    assert (await api.post("senddcmsg", body))[0] == 200
    first, second = fake.attempt_times(GENERAL)
    assert second - first >= 0.3


# --- durability -------------------------------------------------------------------------


async def test_the_outbox_resumes_after_a_restart_and_delivers_once(start, fake, db_path):
    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    fake.fail(BRIDGE, 503)
    fake.fail(GENERAL, 503)
    await api.public(alice, "survives a restart")
    body = {"token": alice, "channel": "general", "message": "me too"}
    assert (await api.post("senddcmsg", body))[0] == 202
    await fake.wait_for(lambda f: statuses(f, BRIDGE) and statuses(f, GENERAL))
    await client.close()  # the server stops; the outbox keeps its rows
    assert [r["state"] for r in outbox(db_path)] == ["post", "post"]
    fake.clear_faults()

    client = await start()
    await fake.wait_for(lambda f: f.messages[BRIDGE] and f.messages[GENERAL])
    api = Api(client)
    await api.public(alice, "after the restart")
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    assert fake.contents(BRIDGE) == [
        "**alice**: survives a restart",
        "**alice**: after the restart",
    ]
    assert fake.contents(GENERAL) == ["**alice**: me too"]


async def test_a_post_discord_accepted_before_a_crash_is_not_posted_again(start, fake, db_path):
    """A crash between Discord's accept and our commit: the retry carries the same nonce, and
    Discord (enforce_nonce) answers with the message it already has."""
    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, 503)
    message_id = await api.public(alice, "exactly once")
    await fake.wait_for(lambda f: statuses(f, BRIDGE))
    await client.close()
    (row,) = outbox(db_path)
    fake.clear_faults()
    # What the lost attempt did: Discord created the message, the answer never arrived.
    headers = {"Authorization": f"Bot {fake.token}"}
    payload = {
        "content": row["content"],
        "nonce": row["nonce"],
        "enforce_nonce": True,
        "allowed_mentions": NO_MENTIONS,
    }
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{fake.api_base}/channels/{BRIDGE}/messages", json=payload) as resp:
            assert resp.status == 200
            accepted = int((await resp.json())["id"])

    client = await start()
    api = Api(client)
    await eventually(lambda: outbox(db_path)[0]["state"] == "posted")
    assert fake.contents(BRIDGE) == ["**alice**: exactly once"]  # one post, not two
    assert outbox(db_path)[0]["discord_message_id"] == accepted
    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await fake.wait_for(lambda f: f.deleted == [(BRIDGE, accepted)])


async def test_mirrors_planned_before_the_guild_is_known_wait_for_it(start, fake, db_path):
    # A gateway that never answers: the bot logs in over REST but never becomes ready.
    dead_gateway = fake.gateway_url.replace("/gateway", "/no-gateway")
    client = await start(discord_gateway_url=dead_gateway)
    api = Api(client)
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await api.channel(alice, "elsewhere", "bob")
    assert await health(client) == "disconnected"
    body = {"token": alice, "channel": "general", "message": "x"}
    assert await api.post("senddcmsg", body) == (503, {"message": "Discord bot is not connected!"})
    await api.public(alice, "REST still works")  # the HTTP API never waits on the gateway
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: REST still works"])
    await api.send(bob, "general", "waits for the guild")
    await api.send(bob, "elsewhere", "is not bridged")
    assert sorted(r["dest"] for r in outbox(db_path) if r["state"] == "post") == [
        "name:elsewhere",
        "name:general",
    ]
    await client.close()

    await start()  # now with the gateway: the guild is seen, the names resolve
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**bob**: waits for the guild"])
    assert fake.contents(RANDOM) == []
    await eventually(lambda: len(outbox(db_path)) == 2)  # "elsewhere" was dropped


# --- availability and health ------------------------------------------------------------


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


async def test_every_bridge_statement_is_served_by_an_index(client, api, fake, db_path):
    """As test_storage's walk, for the statements of the bridge (SPEC §7)."""
    database = client.app[db_key]
    statements = []
    await database.trace(statements.append)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await fake.inject_dm(CAROL["id"], "carol", "hi bot")
    await fake.inject_message(GENERAL, "from Discord", author=CAROL)
    await inbound_barrier(fake, api, alice)
    ids = [await api.public(alice, "out"), await api.send(alice, "general", "mirrored")]
    body = {"token": alice, "channel": "carol", "message": "a DM"}
    ids.append((await api.ok("senddcmsg", body))["id"])
    fake.fail(GENERAL, 503, times=1)
    body = {"token": alice, "channel": "general", "message": "queued"}
    ids.append((await api.ok("senddcmsg", body, status=202))["id"])
    await fake.wait_for(lambda f: len(f.messages[GENERAL]) == 2)
    fake.fail(GENERAL, 403)
    body["message"] = "refused"
    assert (await api.post("senddcmsg", body))[0] == 502
    fake.clear_faults()
    await grant_webhooks(fake, api, alice, BRIDGE)  # editmessage, webhooks: grow, shrink
    ids.append(await api.public(alice, "through a webhook"))
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    for message_id in (ids[0], ids[-1]):
        await edit(api, alice, message_id, " ".join(["long"] * 399))  # two posts
    await fake.wait_for(lambda f: len(f.shown(BRIDGE)) == 4)
    for message_id in (ids[0], ids[-1]):
        await edit(api, alice, message_id, "short again")
    await fake.wait_for(lambda f: len(f.shown(BRIDGE)) == 2 and len(f.deleted) == 2)
    for message_id in ids:
        await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await fake.wait_for(lambda f: len(f.deleted) == 7)
    await eventually(lambda: [r["message_id"] for r in outbox(db_path)] == [None])  # the reply
    await database.trace(None)

    queries = {
        " ".join(s.split())
        for s in statements
        if s.lstrip().split(" ", 1)[0].upper() in ("SELECT", "UPDATE", "DELETE", "INSERT")
    }
    assert sum("discord_" in q for q in queries) >= 10, queries  # the bridge's own ran
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        bad = {q: lines for q in sorted(queries) if (lines := bad_plan_lines(conn, q))}
    assert bad == {}


async def test_without_the_message_content_intent_the_log_says_what_to_do(start, fake, caplog):
    fake.disallowed_intents = 1 << 15  # not enabled in the developer portal: close 4014
    client = await start()
    await eventually(lambda: "enable the Message Content intent" in caplog.text)
    assert await health(client) == "disconnected"
    assert len(fake.identifies) == 1  # not retried: only the bot's owner can fix this


# --- editmessage: the Discord copies follow ---------------------------------------------


def edits(fake, channel):
    """The texts the bridge edited copies in a channel to, in order."""
    return [body["content"] for cid, _, body in fake.edited if cid == channel]


async def edit(api, token, message_id, text):
    body = {"token": token, "message_id": message_id, "message": text}
    assert await api.post("editmessage", body) == (200, {"message": "Message edited!"})


async def test_editing_a_message_edits_its_discord_copies(api, fake, db_path, sock):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    a, b = await sock(alice), await sock(bob)
    public_id = await api.public(alice, "public v1 @everyone")
    channel_id = await api.send(bob, "general", "channel v1")
    await fake.inject_dm(CAROL["id"], "carol", "hi bot")
    dm = fake.dm_channel_id(CAROL["id"])
    await fake.wait_for(lambda f: f.messages[dm])  # the bot's confirmation
    body = {"token": alice, "channel": "carol", "message": "dm v1"}
    dm_id = (await api.ok("senddcmsg", body))["id"]
    await fake.wait_for(lambda f: f.messages[BRIDGE] and f.messages[GENERAL])
    await edit(api, alice, public_id, "public v2 @here")
    await edit(api, bob, channel_id, "channel v2")
    await edit(api, alice, dm_id, "dm v2")
    await fake.wait_for(lambda f: len(f.edited) == 3)
    assert fake.shown(BRIDGE) == ["**alice**: public v2 @here"]
    assert fake.shown(GENERAL) == ["**bob**: channel v2"]
    assert fake.shown(dm)[1:] == ["**alice** via Button API: dm v2"]
    assert sorted((cid, mid) for cid, mid, _ in fake.edited) == sorted(
        [(BRIDGE, fake.messages[BRIDGE][0].id), (GENERAL, fake.messages[GENERAL][0].id),
         (dm, fake.messages[dm][1].id)]
    )  # fmt: skip
    await eventually(lambda: {r["state"] for r in outbox(db_path)} == {"posted"})
    assert all(row["content"] is None for row in outbox(db_path))  # no copy of the text kept
    # message_edited: a `discord` message is read by its sender only
    event = await a.next("message_edited", lambda data: data["id"] == dm_id)
    assert event == msg(
        dm_id, "discord", "alice", "dm v2", channel="carol", edited_timestamp=TIMESTAMP
    )
    await api.public(alice, "later")  # bob gets it after any message_edited sent before it
    await b.next("new_public_message", lambda data: data["message"] == "later")
    assert [data["id"] for data in b.named("message_edited")] == [public_id, channel_id]


async def test_an_edit_never_waits_for_discord(api, fake):
    (alice,) = await users(api, "alice")
    message_id = await api.public(alice, "v1")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    fake.fail(BRIDGE, hang=True, method="PATCH")
    await edit(api, alice, message_id, "v2")  # answered while Discord hangs
    await fake.wait_for(lambda f: f.attempt_times(BRIDGE, "PATCH"))
    assert fake.edited == []
    fake.clear_faults()
    await fake.wait_for(lambda f: f.shown(BRIDGE) == ["**alice**: v2"])


async def test_a_failed_edit_is_retried_with_backoff_in_order(api, fake):
    (alice,) = await users(api, "alice")
    first = await api.public(alice, "first")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    fake.fail(BRIDGE, 503, method="PATCH", times=2)
    await edit(api, alice, first, "first, edited")
    await api.public(alice, "second")  # queued behind the edit: same destination, in order
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    assert fake.shown(BRIDGE) == ["**alice**: first, edited", "**alice**: second"]
    times = fake.attempt_times(BRIDGE, "PATCH")
    assert [a.status for a in fake.attempts if a.method == "PATCH"] == [503, 503, 200]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= backoff for gap, backoff in zip(gaps, FAST.backoff, strict=False))


async def test_split_copies_are_edited_part_by_part_grown_and_shrunk(api, fake, db_path):
    (alice,) = await users(api, "alice")
    message_id = await api.public(alice, "short")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    (first,) = (post.id for post in fake.messages[BRIDGE])

    grown = " ".join(f"w{i:03d}" for i in range(400))  # 1999 characters: two posts
    await edit(api, alice, message_id, grown)
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2 and f.edited)
    shown = fake.shown(BRIDGE)
    assert " ".join(shown) == f"**alice**: {grown}" and all(len(p) <= 2000 for p in shown)
    assert [(cid, mid) for cid, mid, _ in fake.edited] == [(BRIDGE, first)]  # then a new post
    second = fake.messages[BRIDGE][1].id

    await edit(api, alice, message_id, "short now")
    await fake.wait_for(lambda f: len(f.deleted) == 1 and len(f.edited) == 2)
    assert fake.shown(BRIDGE) == ["**alice**: short now"]
    assert fake.deleted == [(BRIDGE, second)]
    await eventually(lambda: [r["state"] for r in outbox(db_path)] == ["posted"])

    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await fake.wait_for(lambda f: len(f.deleted) == 2)
    assert fake.shown(BRIDGE) == []


async def test_an_edit_of_a_queued_post_changes_what_is_posted(api, fake, db_path):
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, 503)
    message_id = await api.public(alice, "typo v1")
    await fake.wait_for(lambda f: len(statuses(f, BRIDGE)) >= 2)
    await edit(api, alice, message_id, "fixed v2")
    (row,) = outbox(db_path)
    assert (row["state"], row["content"]) == ("post", "**alice**: fixed v2")
    fake.clear_faults()
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    assert fake.contents(BRIDGE) == ["**alice**: fixed v2"]
    assert fake.edited == []  # posted once, with the new text


async def test_an_edit_while_the_post_is_in_flight_edits_the_new_copy(start, fake, db_path):
    client = await start(dataclasses.replace(FAST, attempt_timeout=WAIT))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, hang=True, method="POST")
    message_id = await api.public(alice, "in flight v1")
    await fake.wait_for(lambda f: statuses(f, BRIDGE))
    await edit(api, alice, message_id, "in flight v2")
    fake.clear_faults()  # Discord accepts the hung post with the old text...
    await fake.wait_for(lambda f: f.edited)  # ...and the bridge edits it at once
    assert fake.contents(BRIDGE) == ["**alice**: in flight v1"]
    assert fake.shown(BRIDGE) == ["**alice**: in flight v2"]
    await eventually(lambda: [r["state"] for r in outbox(db_path)] == ["posted"])


async def test_an_edit_discord_refuses_leaves_the_copy_deletable(api, fake, db_path):
    (alice,) = await users(api, "alice")
    message_id = await api.public(alice, "v1")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    fake.fail(BRIDGE, 403, code=50001, method="PATCH")  # missing access: for good
    await edit(api, alice, message_id, "v2")
    await fake.wait_for(lambda f: f.attempt_times(BRIDGE, "PATCH"))
    await eventually(lambda: outbox(db_path)[0]["state"] == "posted")
    assert len(fake.attempt_times(BRIDGE, "PATCH")) == 1  # never retried
    assert "Missing Access" in outbox(db_path)[0]["last_error"]
    fake.clear_faults()
    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await fake.wait_for(lambda f: f.deleted == [(BRIDGE, f.messages[BRIDGE][0].id)])


async def test_a_message_written_on_discord_cannot_be_edited(api, fake, db_path):
    (alice,) = await users(api, "alice")
    await fake.inject_message(BRIDGE, "mine, on Discord", author=CAROL)
    await inbound_barrier(fake, api, alice)
    written = (await public_feed(api, alice))[0]
    before = rows(db_path, "SELECT * FROM messages")
    body = {"token": alice, "message_id": written["id"], "message": "hijacked"}
    assert await api.post("editmessage", body) == (
        403,
        {"message": "You can only edit your messages!"},
    )
    assert rows(db_path, "SELECT * FROM messages") == before


# --- display names through webhooks (Manage Webhooks) ----------------------------------


async def grant_webhooks(fake, api, token, *channels):
    """Give the bot Manage Webhooks in channels; once a later Discord message is stored, the
    bot's guild cache has the change (gateway events are applied in order)."""
    for channel in channels:
        await fake.allow_webhooks(channel)
    await inbound_barrier(fake, api, token, f"barrier {len(fake.dispatched)}")


def webhook_posts(fake, channel):
    return [(p.username, p.content) for p in fake.messages[channel] if p.webhook_id is not None]


def calls(fake, method, pattern):
    return [c for c in fake.calls if c[0] == method and re.fullmatch(pattern, c[1])]


async def test_with_manage_webhooks_posts_show_the_username_as_display_name(api, fake, db_path):
    alice, bob = await users(api, "alice", "Bob")
    await api.channel(alice, "general", "Bob")
    await grant_webhooks(fake, api, alice, BRIDGE, GENERAL)
    await api.public(alice, "hello @everyone <@500000000000000003>")
    await api.send(bob, "general", "hi team")
    await api.send(alice, "general", "second one")
    body = {"token": bob, "channel": "general", "message": "via senddcmsg"}
    assert (await api.post("senddcmsg", body))[0] == 200
    await fake.wait_for(lambda f: len(f.messages[GENERAL]) == 3 and f.messages[BRIDGE])
    assert webhook_posts(fake, BRIDGE) == [("alice", "hello @everyone <@500000000000000003>")]
    assert webhook_posts(fake, GENERAL) == [
        ("Bob", "hi team"),
        ("alice", "second one"),
        ("Bob", "via senddcmsg"),
    ]
    # One webhook per channel, made by the bot once and remembered.
    assert sorted((w["channel_id"], w["name"]) for w in fake.webhooks.values()) == [
        (str(BRIDGE), "Button API"),
        (str(GENERAL), "Button API"),
    ]
    assert len(calls(fake, "POST", r"/channels/\d+/webhooks")) == 2
    assert len(calls(fake, "GET", r"/channels/\d+/webhooks")) == 2
    ids = {r["webhook_id"] for r in outbox(db_path)}
    assert ids == {int(w) for w in fake.webhooks}
    # Discord sends webhook posts back over the gateway: never taken in.
    await fake.wait_for(
        lambda f: sum(e == "MESSAGE_CREATE" and "webhook_id" in d for e, d in f.dispatched) == 4
    )
    await inbound_barrier(fake, api, alice, "after the echoes")
    texts = [r["message"] for r in rows(db_path, "SELECT message FROM messages ORDER BY id")]
    assert [text for text in texts if not text.startswith("barrier")] == [
        "hello @everyone <@500000000000000003>",
        "hi team",
        "second one",
        "via senddcmsg",
        "after the echoes",
    ]


async def test_without_manage_webhooks_the_bot_posts_name_and_text(api, fake):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await grant_webhooks(fake, api, alice, BRIDGE)  # the bridge channel only
    await api.send(bob, "general", "plain")
    await api.public(alice, "named")
    await fake.wait_for(lambda f: f.messages[GENERAL] and f.messages[BRIDGE])
    assert fake.contents(GENERAL) == ["**bob**: plain"]
    assert webhook_posts(fake, GENERAL) == []
    assert webhook_posts(fake, BRIDGE) == [("alice", "named")]
    assert calls(fake, "GET", rf"/channels/{GENERAL}/webhooks") == []  # never even asked

    await fake.allow_webhooks(BRIDGE, False)  # taken away: the cached webhook is not used
    await inbound_barrier(fake, api, alice, "barrier 2")
    await api.public(alice, "named again")
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    assert fake.contents(BRIDGE)[1] == "**alice**: named again"


async def test_a_role_grant_and_a_channel_deny_are_both_honoured(start, fake):
    fake.bot_role_permissions = MANAGE_WEBHOOKS  # the bot's role, guild-wide
    await fake.allow_webhooks(GENERAL, False)  # denied in one channel
    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await api.public(alice, "through the webhook")
    await api.send(alice, "general", "through the bot")
    await fake.wait_for(lambda f: f.messages[BRIDGE] and f.messages[GENERAL])
    assert webhook_posts(fake, BRIDGE) == [("alice", "through the webhook")]
    assert fake.contents(GENERAL) == ["**alice**: through the bot"]


async def test_the_bot_reuses_a_webhook_it_owns_and_ignores_others(api, fake):
    (alice,) = await users(api, "alice")
    fake.add_webhook(BRIDGE, "Admin's hook")  # listed without its token: not usable
    mine = fake.add_webhook(BRIDGE, "Button API", by_bot=True)  # made by an earlier run
    await grant_webhooks(fake, api, alice, BRIDGE)
    await api.public(alice, "hi")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    (post,) = fake.messages[BRIDGE]
    assert (post.webhook_id, post.username) == (int(mine["id"]), "alice")
    assert calls(fake, "POST", r"/channels/\d+/webhooks") == []
    assert len(fake.webhooks) == 2


async def test_webhook_posts_are_edited_and_deleted_through_the_webhook(api, fake, db_path):
    (alice,) = await users(api, "alice")
    await grant_webhooks(fake, api, alice, BRIDGE)
    words = [f"w{i:03d}" for i in range(400)]
    # 1994 characters: two posts (cut where `**alice**: text` would be cut, so that the
    # bot can post the same parts if it has to)
    message_id = await api.public(alice, " ".join(words[:399]))
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    assert " ".join(fake.shown(BRIDGE)) == " ".join(words[:399])  # no `**alice**: ` anywhere
    (hook,) = fake.webhooks
    prefix = rf"/webhooks/{hook}/[^/]+/messages/\d+"

    await edit(api, alice, message_id, " ".join(words))  # 1999 characters: still two
    await fake.wait_for(lambda f: len(f.edited) == 2)
    assert " ".join(fake.shown(BRIDGE)) == " ".join(words)
    assert len(calls(fake, "PATCH", prefix)) == 2
    assert calls(fake, "PATCH", r"/channels/.*") == []

    await edit(api, alice, message_id, "short")
    await fake.wait_for(lambda f: len(f.deleted) == 1 and len(f.edited) == 3)
    assert fake.shown(BRIDGE) == ["short"]
    await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    await fake.wait_for(lambda f: len(f.deleted) == 2)
    assert fake.shown(BRIDGE) == []
    assert len(calls(fake, "DELETE", prefix)) == 2
    assert calls(fake, "DELETE", r"/channels/.*") == []
    await eventually(lambda: outbox(db_path) == [])


async def test_names_discord_refuses_for_webhooks_are_posted_by_the_bot(api, fake):
    alice, bob = await users(api, "DiscordFan", "bob")
    await grant_webhooks(fake, api, alice, BRIDGE)
    await api.public(alice, "my name has discord in it")  # Discord's rules: not as a webhook
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    fake.fail(BRIDGE, 400, code=50035, path=r"^/webhooks/", times=1)  # a rule we do not know
    await api.public(bob, "refused once")
    await api.public(bob, "fine again")
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 3)
    assert [(p.username, p.content) for p in fake.messages[BRIDGE]] == [
        (None, "**DiscordFan**: my name has discord in it"),
        (None, "**bob**: refused once"),
        ("bob", "fine again"),
    ]
    assert len(calls(fake, "POST", r"/webhooks/.*")) == 2  # DiscordFan's was never tried


async def test_a_deleted_webhook_is_replaced_and_its_copies_stay_known(api, fake, db_path):
    (alice,) = await users(api, "alice")
    await grant_webhooks(fake, api, alice, BRIDGE)
    first = await api.public(alice, "one")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    (old,) = fake.webhooks
    fake.delete_webhook(old)  # an admin deletes it (its messages stay)
    await api.public(alice, "two")
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2)
    (new,) = fake.webhooks
    assert new != old
    assert [(p.webhook_id, p.username, p.content) for p in fake.messages[BRIDGE]] == [
        (old, "alice", "one"),
        (new, "alice", "two"),
    ]
    await edit(api, alice, first, "one, edited")  # only the deleted webhook could edit it
    await eventually(lambda: outbox(db_path)[0]["last_error"])
    assert outbox(db_path)[0]["state"] == "posted" and fake.edited == []


async def test_after_a_restart_the_webhook_is_found_again(start, fake, db_path):
    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await grant_webhooks(fake, api, alice, BRIDGE)
    message_id = await api.public(alice, "before the restart")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    await client.close()

    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    await edit(api, alice, message_id, "edited after the restart")
    await api.public(alice, "posted after the restart")
    await fake.wait_for(lambda f: len(f.messages[BRIDGE]) == 2 and f.edited)
    assert fake.shown(BRIDGE) == ["edited after the restart", "posted after the restart"]
    assert len(fake.webhooks) == 1  # found by listing, not made again
    assert len(calls(fake, "POST", r"/channels/\d+/webhooks")) == 1


async def test_dms_never_use_webhooks(start, fake):
    fake.bot_role_permissions = MANAGE_WEBHOOKS
    client = await start()
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await fake.inject_dm(CAROL["id"], "carol", "hi bot")
    dm = fake.dm_channel_id(CAROL["id"])
    await fake.wait_for(lambda f: f.messages[dm])
    body = {"token": alice, "channel": "carol", "message": "a DM"}
    assert (await api.post("senddcmsg", body))[0] == 200
    assert fake.contents(dm)[1] == "**alice** via Button API: a DM"
    assert fake.webhooks == {} and calls(fake, "POST", r"/webhooks/.*") == []


async def test_a_webhook_429_is_waited_out(api, fake):
    (alice,) = await users(api, "alice")
    await grant_webhooks(fake, api, alice, BRIDGE)
    fake.fail(BRIDGE, 429, retry_after=0.3, times=1, path=r"^/webhooks/")
    await api.public(alice, "patience")
    await fake.wait_for(lambda f: f.messages[BRIDGE])
    first, second = fake.attempt_times(BRIDGE)[-2:]
    assert second - first >= 0.3
    assert webhook_posts(fake, BRIDGE) == [("alice", "patience")]
