"""SPEC §6, the Discord bridge: display names through webhooks (Manage Webhooks).

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import re

from fake_discord import MANAGE_WEBHOOKS
from helpers import (
    BRIDGE,
    CAROL,
    GENERAL,
    Api,
    edit,
    eventually,
    grant_webhooks,
    inbound_barrier,
    link,
    outbox,
    rows,
    until_health,
    users,
)


def webhook_posts(fake, channel):
    return [(p.username, p.content) for p in fake.messages[channel] if p.webhook_id is not None]


def calls(fake, method, pattern):
    return [c for c in fake.calls if c[0] == method and re.fullmatch(pattern, c[1])]


async def test_with_manage_webhooks_posts_show_the_username_as_display_name(api, fake, db_path):
    alice, bob = await users(api, "alice", "Bob")
    await api.channel(alice, "general", "Bob")
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
