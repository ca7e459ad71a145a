"""SPEC §5 end to end with the official JavaScript client, socket.io-client 4.x under Node.js.

`npm ci --prefix tests` installs the pinned client (tests/package.json); tests/js_client.mjs
prints every event it receives as a JSON line.
"""

import asyncio

import pytest
from helpers import PASSWORD, JsClient, free_port, http


@pytest.fixture
async def js(client):
    clients = []
    url = str(client.make_url("/"))

    async def start(token, mode):
        clients.append(await JsClient.start(url, token, mode))
        return clients[-1]

    yield start
    for c in clients:
        await c.close()


async def test_two_users_chat_live_and_a_third_sees_nothing(api, js):
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    await api.channel(alice, "general", "bob")
    a = await js(alice, "auth")  # connect-time auth
    b = await js(bob, "emit")  # the seed's api_v3_connect
    c = await js(carol, "emit")
    for client, name in ((a, "alice"), (b, "bob"), (c, "carol")):
        ready = f"Server has accepted the connection and registered you as : {name}"
        assert await client.next("ready") == ready

    channel_id = await api.send(alice, "general", "hi bob")
    for client in (a, b):
        got = await client.next("new_message")
        assert got == {
            "sender": "alice",
            "message": "hi bob",
            "channel": "general",
            "timestamp": got["timestamp"],
            "id": channel_id,
        }
    dm_id = await api.dm(bob, "alice", "hi alice")
    got = await a.next("new_dm")
    assert got == {
        "sender": "bob",
        "message": "hi alice",
        "recipient": "alice",
        "id": dm_id,
        "timestamp": got["timestamp"],
    }
    # barrier: carol's own DM arrives; anything of alice's and bob's would have come first
    await api.dm(alice, "carol", "barrier")
    assert (await c.next("new_dm"))["message"] == "barrier"
    assert [event for event, _ in c.events] == ["connect", "ready", "new_dm"]


async def test_bad_token_is_refused_with_a_reason(api, js):
    refused = await js("not-a-token", "auth")
    assert await refused.next("connect_error") == "Invalid token!"
    emitted = await js("not-a-token", "emit")
    assert await emitted.next("api_v3_error") == {"message": "Invalid token!"}


async def test_sigterm_with_a_connected_client_exits_0_within_15_seconds(tmp_path, servers):
    """SPEC §7: every socket is closed and the process exits 0 within 15 s; a browser-like
    client does not hold the shutdown up."""
    import signal

    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "j.db"))
    await asyncio.to_thread(server.wait_ready, port)
    creds = {"username": "alice", "password": PASSWORD}
    assert (await asyncio.to_thread(http, port, "/api/v3/register/", creds))[0] == 201
    _, made = await asyncio.to_thread(http, port, "/api/v3/generatetoken/", creds)
    client = await JsClient.start(f"http://127.0.0.1:{port}", made["token"], "auth")
    try:
        await client.next("ready")
        server.proc.send_signal(signal.SIGTERM)
        assert await client.next("disconnect") == "io server disconnect"
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
    finally:
        await client.close()
