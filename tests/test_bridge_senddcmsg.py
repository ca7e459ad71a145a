"""SPEC §6, the Discord bridge: DMs to the bot, and senddcmsg to a Discord user or channel.

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import dataclasses
import itertools

import pytest
from helpers import (
    CAROL,
    FAST,
    GENERAL,
    ID,
    Api,
    inbound_barrier,
    link,
    msg,
    outbox,
    rows,
    statuses,
    until_health,
    users,
)


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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
    fake.fail(GENERAL, 500)  # discord.py itself retries a 500 after 1 s, 3 s, ...
    body = {"token": alice, "channel": "general", "message": "slow"}
    assert (await api.post("senddcmsg", body))[0] == 202
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**alice**: slow"])
    assert statuses(fake, GENERAL) == [500, 200]
