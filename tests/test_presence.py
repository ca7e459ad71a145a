"""SPEC section 10: presence (`getonline`, `presence` events) and `typing`.

Presence is among people who share a channel or DMs; a user's first socket makes them
online, their last one gone for the grace time (5 s; shortened here through `pace`) makes
them offline, a quick reconnect sends nothing; nothing survives a restart. Typing is relayed
to the channel's other members or the DM partner only, at most once per interval.
"""

import asyncio
import time

import pytest
from helpers import INVALID_TOKEN, WAIT, Api, Sock, barrier, db_snapshot, invalid

import realtime
from buttonapi import create_app

FAST_PACE = realtime.Pace(presence_grace=0.3, typing_interval=0.3)


@pytest.fixture
def serve(config, aiohttp_client):
    """serve(pace) -> (Api, a sock maker) on a server with that pace."""

    async def make(pace=FAST_PACE):
        client = await aiohttp_client(await create_app(config, pace=pace))
        return Api(client), str(client.make_url("/"))

    return make


@pytest.fixture
async def socks():
    """socks(url, token=None) -> a connected helpers.Sock (authenticated with the token)."""
    made = []

    async def make(url, token=None):
        s = await Sock(url).connect()
        made.append(s)
        if token is not None:
            assert (await s.auth(token))[0] == "ready"
        return s

    yield make
    for s in made:
        await s.close()


async def people(api):
    """alice and bob share a channel; carol and alice have DMs; dave talks with nobody."""
    tokens = {name: await api.user(name) for name in ("alice", "bob", "carol", "dave")}
    await api.channel(tokens["alice"], "general", "bob")
    await api.dm(tokens["carol"], "alice", "hi alice")
    return tokens


async def online(api, token):
    return (await api.ok("getonline", {"token": token}))["online"]


def came(name):
    return {"username": name, "online": True}


def went(name):
    return {"username": name, "online": False}


async def test_a_first_socket_is_told_to_who_shares_a_channel_or_dms(serve, socks):
    api, url = await serve()
    tokens = await people(api)
    watchers = {name: await socks(url, tokens[name]) for name in ("bob", "carol", "dave")}
    await socks(url, tokens["alice"])
    for name in ("bob", "carol"):
        await watchers[name].next("presence", where=lambda d: d == came("alice"))
    await barrier(api, tokens["dave"], watchers["dave"], "dave")  # a DM to himself
    assert watchers["dave"].named("presence") == []
    assert await online(api, tokens["bob"]) == ["alice"]
    assert await online(api, tokens["carol"]) == ["alice"]
    assert await online(api, tokens["dave"]) == []
    assert await online(api, tokens["alice"]) == ["bob", "carol"]


async def test_the_last_socket_gone_for_the_grace_time_is_offline(serve, socks):
    api, url = await serve()
    tokens = await people(api)
    bob = await socks(url, tokens["bob"])
    first, second = await socks(url, tokens["alice"]), await socks(url, tokens["alice"])
    await bob.next("presence", where=lambda d: d == came("alice"))
    await first.close()
    await barrier(api, tokens["alice"], bob, "bob")
    assert await online(api, tokens["bob"]) == ["alice"]
    gone = time.monotonic()
    await second.close()
    await bob.next("presence", where=lambda d: d == went("alice"))
    assert time.monotonic() - gone >= FAST_PACE.presence_grace * 0.9
    assert bob.named("presence") == [came("alice"), went("alice")]
    assert await online(api, tokens["bob"]) == []


async def test_a_quick_reconnect_sends_nothing(serve, socks):
    api, url = await serve(realtime.Pace())  # the real 5 s
    tokens = await people(api)
    bob = await socks(url, tokens["bob"])
    alice = await socks(url, tokens["alice"])
    await bob.next("presence", where=lambda d: d == came("alice"))
    await alice.close()
    await socks(url, tokens["alice"])
    await barrier(api, tokens["alice"], bob, "bob")
    assert bob.named("presence") == [came("alice")]
    assert await online(api, tokens["bob"]) == ["alice"]


async def test_signing_in_as_another_user_leaves_the_first(serve, socks):
    api, url = await serve()
    tokens = await people(api)
    bob = await socks(url, tokens["bob"])
    s = await socks(url, tokens["alice"])
    await bob.next("presence", where=lambda d: d == came("alice"))
    assert (await s.auth(tokens["dave"]))[0] == "ready"
    await bob.next("presence", where=lambda d: d == went("alice"))
    assert await online(api, tokens["bob"]) == []


async def test_nobody_stays_online_across_a_restart(config, aiohttp_client, socks):
    first = await aiohttp_client(await create_app(config))
    api = Api(first)
    tokens = await people(api)
    await socks(str(first.make_url("/")), tokens["alice"])
    assert await online(api, tokens["bob"]) == ["alice"]
    await first.close()  # the server stops with alice's socket open
    again = Api(await aiohttp_client(await create_app(config)))
    assert await online(again, tokens["bob"]) == []


async def test_getonline_fields_and_token(serve):
    api, _ = await serve()
    assert await api.post("getonline", {}) == invalid("token")
    assert await api.post("getonline", {"token": "x"}) == INVALID_TOKEN


# --- typing -------------------------------------------------------------------------------


async def typing(sock, data):
    """Emit `typing` and wait for the server's acknowledgement: it has been handled."""
    await sock.client.call("typing", data, timeout=WAIT)


async def test_typing_in_a_channel_reaches_its_other_members_only(serve, socks, db_path):
    api, url = await serve()
    tokens = await people(api)
    alice, alice2 = await socks(url, tokens["alice"]), await socks(url, tokens["alice"])
    bob, carol = await socks(url, tokens["bob"]), await socks(url, tokens["carol"])
    before = db_snapshot(db_path)
    await typing(alice, {"channel": "GENERAL"})
    _, data = await bob.next("typing")
    assert data == {"sender": "alice", "channel": "general"}
    assert db_snapshot(db_path) == before  # nothing stored
    for s, name in ((alice2, "alice"), (carol, "carol"), (alice, "alice")):
        await barrier(api, tokens["bob"], s, name)
        assert s.named("typing") == []


async def test_typing_to_a_user_reaches_that_user_only(serve, socks):
    api, url = await serve()
    tokens = await people(api)
    alice = await socks(url, tokens["alice"])
    bob, carol = await socks(url, tokens["bob"]), await socks(url, tokens["carol"])
    await typing(alice, {"username": "Bob"})
    _, data = await bob.next("typing")
    assert data == {"sender": "alice", "recipient": "bob"}
    await barrier(api, tokens["bob"], carol, "carol")
    assert carol.named("typing") == []


async def test_at_most_one_typing_per_sender_and_conversation_each_interval(serve, socks):
    api, url = await serve()
    tokens = await people(api)
    alice, bob = await socks(url, tokens["alice"]), await socks(url, tokens["bob"])
    first = time.monotonic()
    for _ in range(5):
        await typing(alice, {"channel": "general"})
    await typing(alice, {"username": "bob"})  # another conversation: its own interval
    await barrier(api, tokens["carol"], bob, "bob")
    assert bob.named("typing") == [
        {"sender": "alice", "channel": "general"},
        {"sender": "alice", "recipient": "bob"},
    ]
    while len(bob.named("typing")) < 3:  # keeps typing: the next one once the interval is over
        await typing(alice, {"channel": "general"})
        await asyncio.sleep(0.02)
        assert time.monotonic() - first < WAIT
    assert time.monotonic() - first >= FAST_PACE.typing_interval * 0.9


@pytest.mark.parametrize(
    "data",
    [{"channel": "general"}, {"channel": "nowhere"}, {"username": "nobody"}, {}, "general", None],
)
async def test_typing_that_is_not_allowed_is_ignored(serve, socks, data):
    api, url = await serve()
    tokens = await people(api)
    bob = await socks(url, tokens["bob"])
    dave = await socks(url, tokens["dave"])  # not in general
    anonymous = await socks(url)
    await typing(dave, data)
    await typing(anonymous, {"channel": "general"})
    await typing(anonymous, {"username": "bob"})
    await barrier(api, tokens["dave"], bob, "bob")
    assert bob.named("typing") == []
