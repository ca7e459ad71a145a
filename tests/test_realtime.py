"""SPEC §5: Socket.IO events, with real python-socketio clients over a real port.

A test that an event does NOT arrive uses a barrier instead of a sleep: after the action it
causes a later event that the socket does receive; events on one socket keep their order, so
an unwanted event would have arrived first.
"""

import asyncio
import json

import pytest
import socketio
from helpers import TIMESTAMP, WAIT, Api, Sock, barrier, masked_text_frame, users

# --- connecting -------------------------------------------------------------------------


async def test_api_v3_connect_answers_ready_with_the_seed_string(api, sock):
    (token,) = await users(api, "Alice")
    s = await sock()
    assert await s.auth(token) == (
        "ready",
        "Server has accepted the connection and registered you as : Alice",
    )


@pytest.mark.parametrize(
    "data",
    [{"token_api_v3": "00000000-0000-4000-8000-000000000000"}, {}, {"token_api_v3": 5}, "x", None],
)
async def test_bad_or_missing_token_answers_error_and_socket_stays_usable(api, sock, data):
    (token,) = await users(api, "Alice")
    s = await sock()
    seen = len(s.events)
    await s.client.emit("api_v3_connect", data)
    assert await s.next(("ready", "api_v3_error"), after=seen) == (
        "api_v3_error",
        {"message": "Invalid token!"},
    )
    assert s.client.connected
    assert (await s.auth(token))[0] == "ready"


async def test_connect_time_auth_registers_at_once(api, sock):
    (token,) = await users(api, "Alice")
    s = await sock(auth={"token_api_v3": token})
    assert await s.next("ready") == (
        "ready",
        "Server has accepted the connection and registered you as : Alice",
    )


async def test_connect_time_auth_with_a_bad_token_refuses_the_connection(client):
    s = Sock(str(client.make_url("/")))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await s.connect(auth={"token_api_v3": "not-a-token"})
    assert ("connect_error", {"message": "Invalid token!"}) in s.events
    await s.close()


async def test_empty_auth_connects_unauthenticated(api, sock):
    alice, bob = await users(api, "Alice", "Bob")
    anonymous = await sock(auth={})
    listener = await sock(bob)
    await api.public(alice, "for everyone with a token")
    await listener.next("new_public_message")
    assert anonymous.client.connected
    assert anonymous.named("new_public_message") == []


# --- events -----------------------------------------------------------------------------


async def test_new_dm_goes_to_the_recipient_only(api, sock):
    alice, bob, carol = await users(api, "Alice", "Bob", "Carol")
    a, b, c = await sock(alice), await sock(bob), await sock(carol)
    message_id = await api.dm(alice, "bob", "hi bob")
    assert await b.next("new_dm") == (
        "new_dm",
        {
            "sender": "Alice",
            "message": "hi bob",
            "recipient": "Bob",
            "id": message_id,
            "timestamp": TIMESTAMP,
        },
    )
    await barrier(api, bob, c, "Carol")
    await barrier(api, bob, a, "Alice")
    assert [d["message"] for d in c.named("new_dm")] == ["barrier-1"]
    assert [d["message"] for d in a.named("new_dm")] == ["barrier-1"]


async def test_dm_to_oneself_is_one_event(api, sock):
    (alice,) = await users(api, "Alice")
    a = await sock(alice)
    await api.dm(alice, "Alice", "note to self")
    await barrier(api, alice, a, "Alice")
    assert [d["message"] for d in a.named("new_dm")] == ["note to self", "barrier-1"]


async def test_new_message_goes_to_every_member_and_nobody_else(api, sock):
    alice, bob, carol = await users(api, "Alice", "Bob", "Carol")
    await api.channel(alice, "General", "Bob")
    a, b, c = await sock(alice), await sock(bob), await sock(carol)
    message_id = await api.send(bob, "general", "hello all")
    expected = (
        "new_message",
        {
            "sender": "Bob",
            "message": "hello all",
            "channel": "General",
            "timestamp": TIMESTAMP,
            "id": message_id,
        },
    )
    assert await a.next("new_message") == expected
    assert await b.next("new_message") == expected
    await barrier(api, alice, c, "Carol")
    assert c.named("new_message") == []


async def test_every_socket_of_a_user_receives(api, sock):
    alice, bob = await users(api, "Alice", "Bob")
    tabs = [await sock(bob), await sock(bob), await sock(bob, transport="polling")]
    await api.dm(alice, "Bob", "to every tab")
    for tab in tabs:
        assert (await tab.next("new_dm"))[1]["message"] == "to every tab"


async def test_new_public_message_goes_to_every_authenticated_socket(api, sock):
    alice, bob = await users(api, "Alice", "Bob")
    a, b = await sock(alice), await sock(bob)
    message_id = await api.public(alice, "news")
    expected = {
        "id": message_id,
        "kind": "public",
        "sender": "Alice",
        "message": "news",
        "channel": None,
        "recipient": None,
        "timestamp": TIMESTAMP,
        "source": "api",
        "edited_timestamp": None,
    }
    assert await a.next("new_public_message") == ("new_public_message", expected)
    assert await b.next("new_public_message") == ("new_public_message", expected)


async def test_message_deleted_goes_to_those_who_could_read_it(api, sock):
    alice, bob, carol = await users(api, "Alice", "Bob", "Carol")
    await api.channel(alice, "General", "Bob")
    a, b, c = await sock(alice), await sock(bob), await sock(carol)
    channel_message = await api.send(alice, "General", "oops")
    dm = await api.dm(alice, "Bob", "secret")
    public = await api.public(alice, "loud")
    for message_id in (channel_message, dm, public):
        await api.ok("deletemessage", {"token": alice, "message_id": message_id})
    deleted = [
        {"id": channel_message, "kind": "channel", "channel": "General"},
        {"id": dm, "kind": "dm", "channel": None},
        {"id": public, "kind": "public", "channel": None},
    ]
    for s in (a, b):
        await s.next("message_deleted", after=0)
        await barrier(api, carol, s, "Alice" if s is a else "Bob")
        assert s.named("message_deleted") == deleted
    await barrier(api, alice, c, "Carol")
    assert c.named("message_deleted") == [deleted[2]]


async def test_added_user_gets_the_event_and_the_channel_on_open_sockets(api, sock):
    alice, bob = await users(api, "Alice", "Bob")
    channel_id = await api.channel(alice, "General")
    b = await sock(bob)
    await api.ok("addusertochannel", {"token": alice, "name": "general", "username": "bob"})
    assert await b.next("added_to_channel") == (
        "added_to_channel",
        {"channel_name": "General", "channel_id": channel_id, "by": "Alice"},
    )
    await api.send(alice, "General", "welcome")
    assert (await b.next("new_message"))[1]["message"] == "welcome"


async def test_creator_sockets_get_their_new_channel_events(api, sock):
    (alice,) = await users(api, "Alice")
    a = await sock(alice)
    await api.channel(alice, "Fresh")
    await api.send(alice, "Fresh", "first")
    assert (await a.next("new_message"))[1]["message"] == "first"


# --- switching users and tokens ---------------------------------------------------------


async def test_authenticating_as_another_user_drops_the_first(api, sock):
    alice, bob, carol = await users(api, "Alice", "Bob", "Carol")
    await api.channel(alice, "AliceOnly")
    s = await sock(alice)
    assert await s.auth(bob) == (
        "ready",
        "Server has accepted the connection and registered you as : Bob",
    )
    await api.send(alice, "AliceOnly", "not for bob")
    await api.dm(carol, "Alice", "not for bob either")
    await barrier(api, carol, s, "Bob")
    assert s.named("new_message") == []
    assert [d["recipient"] for d in s.named("new_dm")] == ["Bob"]


async def test_failed_reauth_keeps_the_earlier_registration(api, sock):
    alice, bob = await users(api, "Alice", "Bob")
    s = await sock(alice)
    assert await s.auth("wrong") == ("api_v3_error", {"message": "Invalid token!"})
    await api.dm(bob, "Alice", "still yours")
    assert (await s.next("new_dm"))[1]["message"] == "still yours"


async def test_generatetoken_tells_and_disconnects_old_sockets(api, sock):
    (alice,) = await users(api, "Alice")
    first, second = await sock(alice), await sock(alice, transport="polling")
    got = await api.ok("generatetoken", {"username": "Alice", "password": "Passw0rd!"})
    for s in (first, second):
        await s.next("disconnect")
        names = [event for event, _ in s.events]
        assert names[-2:] == ["api_v3_error", "disconnect"]
        assert s.named("api_v3_error") == [{"message": "Token changed!"}]
    fresh = await sock(got["token"])
    assert fresh.client.connected


async def test_old_token_is_refused_on_sockets_after_rotation(api, sock):
    (alice,) = await users(api, "Alice")
    await api.ok("generatetoken", {"username": "Alice", "password": "Passw0rd!"})
    s = await sock()
    assert await s.auth(alice) == ("api_v3_error", {"message": "Invalid token!"})


# --- shutdown ---------------------------------------------------------------------------


async def test_shutdown_closes_every_socket_polling_ones_too(config):
    from aiohttp.test_utils import TestClient, TestServer

    from buttonapi import create_app

    server = TestServer(await create_app(config))
    async with TestClient(server) as client:
        (alice,) = await users(Api(client), "Alice")
        url = str(client.make_url("/"))
        socks = [
            await Sock(url, "websocket").connect(),
            await Sock(url, "polling").connect(),
            await Sock(url, "websocket").connect({"token_api_v3": alice}),
            await Sock(url, "polling").connect({"token_api_v3": alice}),
        ]
        left = await Sock(url, "polling").connect({"token_api_v3": alice})
        await left.close()  # its last long-poll GET must not hold the shutdown up
        await asyncio.wait_for(server.close(), 10)  # on_shutdown, requests in flight, cleanups
        for s in socks:
            await s.next("disconnect")
            assert not s.client.connected


# --- slow clients -------------------------------------------------------------------------


async def test_a_socket_that_stops_reading_holds_up_no_answer_and_no_other_socket(start):
    """A client that authenticates and then never reads again: its packets pile up while the
    HTTP answers and every other socket go on as if it were not there."""
    import socket as socket_module

    client = await start(send_limit="0")
    api = Api(client)
    alice, bob = await users(api, "alice", "bob")
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.get_extra_info("socket").setsockopt(
        socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096
    )
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: test\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).startswith(b"HTTP/1.1 101")
    writer.write(masked_text_frame("40" + json.dumps({"token_api_v3": bob})))
    await writer.drain()
    # from here on the stalled client reads nothing
    healthy = await Sock(str(client.make_url("/"))).connect({"token_api_v3": alice})
    await healthy.next("ready")
    text = "x" * 1990
    for i in range(600):  # 1.2 MB for the stalled socket, more than its buffers hold
        status, _ = await asyncio.wait_for(
            api.post("senddcmsgwithtoken", {"token": alice, "message": f"{i} {text}"}), WAIT
        )
        assert status == 200
    await api.dm(bob, "alice", "last")
    await healthy.next("new_dm")
    assert len(healthy.named("new_public_message")) == 600
    writer.transport.abort()
    await healthy.close()
