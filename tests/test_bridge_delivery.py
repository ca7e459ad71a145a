"""SPEC §6, the Discord bridge's outbox: destinations that hang or rate-limit, restarts and
crashes, and the statements it runs.

How the test_bridge_*.py files run: see the Discord bridge section of tests/helpers.py.
"""

import asyncio
import dataclasses
import sqlite3
from contextlib import closing

import aiohttp
from helpers import (
    BRIDGE,
    CAROL,
    FAST,
    GENERAL,
    NO_MENTIONS,
    RANDOM,
    Api,
    bad_plan_lines,
    edit,
    eventually,
    grant_webhooks,
    health,
    inbound_barrier,
    link,
    outbox,
    statuses,
    until_health,
    users,
)

from buttonapi import db_key

# --- destinations that hang or rate-limit ------------------------------------------


async def test_a_hanging_destination_does_not_delay_another(start, fake):
    client = await start(dataclasses.replace(FAST, attempt_timeout=2.0))
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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
    await link(api, "general", GENERAL)
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


async def test_a_linked_channels_mirror_goes_by_rest_while_the_gateway_is_down(
    start, fake, db_path
):
    """A link names the Discord channel by id: its mirror needs no guild from the gateway
    (before links, mirrors waited under the channel's name until the guild was seen)."""
    client = await start()
    api = Api(client)
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await api.channel(alice, "elsewhere", "bob")
    await link(api, "general", GENERAL)
    await client.close()
    # A gateway that never answers: the bot logs in over REST but never becomes ready.
    dead_gateway = fake.gateway_url.replace("/gateway", "/no-gateway")
    client = await start(discord_gateway_url=dead_gateway)
    api = Api(client)
    assert await health(client) == "disconnected"
    body = {"token": alice, "channel": "general", "message": "x"}
    assert await api.post("senddcmsg", body) == (503, {"message": "Discord bot is not connected!"})
    await api.public(alice, "REST still works")  # the HTTP API never waits on the gateway
    await fake.wait_for(lambda f: f.contents(BRIDGE) == ["**alice**: REST still works"])
    await api.send(bob, "general", "needs no guild")
    await api.send(bob, "elsewhere", "is not bridged")
    await fake.wait_for(lambda f: f.contents(GENERAL) == ["**bob**: needs no guild"])
    assert fake.contents(RANDOM) == []
    assert sorted(r["dest"] for r in outbox(db_path)) == [f"channel:{BRIDGE}", f"channel:{GENERAL}"]


# --- storage -------------------------------------------------------------------------


async def test_every_bridge_statement_is_served_by_an_index(client, api, fake, db_path):
    """As test_storage's walk, for the statements of the bridge (SPEC §7)."""
    database = client.app[db_key]
    statements = []
    await database.trace(statements.append)
    (alice,) = await users(api, "alice")
    await api.channel(alice, "general")
    await link(api, "general", GENERAL)
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
