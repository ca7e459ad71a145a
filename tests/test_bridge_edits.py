"""SPEC §6, the Discord bridge and editmessage: the Discord copies follow the edits.

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import dataclasses
import itertools

from helpers import (
    BRIDGE,
    CAROL,
    FAST,
    GENERAL,
    TIMESTAMP,
    WAIT,
    Api,
    edit,
    eventually,
    inbound_barrier,
    link,
    msg,
    outbox,
    public_feed,
    rows,
    statuses,
    until_health,
    users,
)


async def test_editing_a_message_edits_its_discord_copies(api, fake, db_path, sock):
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await link(api, "general", GENERAL)
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
    _, event = await a.next("message_edited", where=lambda data: data["id"] == dm_id)
    assert event == msg(
        dm_id, "discord", "alice", "dm v2", channel="carol", edited_timestamp=TIMESTAMP
    )
    await api.public(alice, "later")  # bob gets it after any message_edited sent before it
    await b.next("new_public_message", where=lambda data: data["message"] == "later")
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
