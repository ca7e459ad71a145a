"""Hostile input (issue: hold up under abuse): each gets the contract's JSON error, nothing is
stored, and the server keeps serving everyone else."""

import asyncio
import io

import aiohttp
import pytest
import socketio
from helpers import NOT_A_JSON_OBJECT, PASSWORD, answer

TOO_LARGE = (413, {"message": "Request body too large!"})


async def raw(api, path, data, headers=None):
    async with api.client.post(path, data=data, headers=headers) as resp:
        return await answer(resp)


HOSTILE_BODIES = {
    "deeply nested arrays": b'{"username": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "duplicate keys": b'{"username": "alice", "username": "bob", "password": "Passw0rd!"}',
    "a number of 100000 digits": b'{"count": ' + b"9" * 60_000 + b"}",
    "invalid UTF-8 in a key": b'{"user\xc3\x28name": "alice"}',
    "UTF-16": '{"username": "alice", "password": "Passw0rd!"}'.encode("utf-16"),
    "a byte-order mark": b'\xef\xbb\xbf{"username": "alice", "password": "Passw0rd!"}',
    "a raw NUL byte": b'{"username": "ali\x00ce", "password": "Passw0rd!"}',
    "NaN": b'{"username": "alice", "password": "Passw0rd!", "x": NaN}',
    "-Infinity": b'{"username": "alice", "password": "Passw0rd!", "x": -Infinity}',
}


@pytest.mark.parametrize("data", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_json_is_400_and_changes_nothing(api, snapshot, data):
    before = snapshot()
    got = await raw(api, "/api/v3/register/", data)
    assert got == (TOO_LARGE if len(data) > 64 * 1024 else NOT_A_JSON_OBJECT)
    assert snapshot() == before
    assert (await api.post("register", {"username": "bob", "password": PASSWORD}))[0] == 201


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_10_mb_body_is_413(api, snapshot, chunked):
    body = b'{"username": "alice", "password": "Passw0rd!", "pad": "' + b"x" * 10_000_000 + b'"}'

    async def stream():
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    before = snapshot()
    data = stream() if chunked else io.BytesIO(body)
    assert await raw(api, "/api/v3/register/", data) == TOO_LARGE
    assert snapshot() == before


async def test_huge_integers_in_number_fields(api, snapshot):
    token = await api.user("alice")
    before = snapshot()
    for value in (10**400, -(10**400), "9" * 4000):
        got = await api.post("deletemessage", {"token": token, "message_id": value})
        if value == -(10**400):
            assert got == (400, {"message": "Missing or invalid field: message_id!"})
        else:
            assert got == (404, {"message": "Message not found!"})
    body = b'{"token": "%s", "count": 1e400}' % token.encode()  # a float: infinity
    got = await raw(api, "/api/v3/getmessagesforeveryone/", body)
    assert got == (400, {"message": "Missing or invalid field: count!"})
    assert snapshot() == before


CONTROL_TEXT = "a\x00b\x07c\x1bd\u200be\u202ef"


async def test_control_characters_in_names_are_411_and_in_messages_kept_exactly(api, snapshot):
    token = await api.user("alice")
    before = snapshot()
    assert await api.post("register", {"username": "x\x00y\x00z", "password": PASSWORD}) == (
        411,
        {"message": "Username can not contain spaces or control characters!"},
    )
    assert await api.post("makechannel", {"token": token, "name": "gen\x00eral"}) == (
        411,
        {"message": "Channel name needs to be 1-100 chars long!"},
    )
    assert await api.post("senddm", {"token": token, "username": "al\x00ice", "message": "x"}) == (
        404,
        {"message": "User not found!"},
    )
    assert snapshot() == before
    # message text is the user's own: stored and returned byte for byte, never interpreted
    got = await api.ok("senddcmsgwithtoken", {"token": token, "message": CONTROL_TEXT})
    feed = await api.ok("getmessagesforeveryone", {"token": token})
    assert [(m["id"], m["message"]) for m in feed["messages"]] == [(got["id"], CONTROL_TEXT)]


async def test_a_token_with_a_nul_byte_is_just_invalid(api, snapshot):
    token = await api.user("alice")
    before = snapshot()
    got = await api.post("getchannels", {"token": token + "\x00"})
    assert got == (401, {"message": "Invalid token!"})
    assert snapshot() == before


# --- Socket.IO ----------------------------------------------------------------------------


async def engineio_websocket(client):
    """A raw Engine.IO v4 websocket, past the open packet (no Socket.IO client in the way)."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(client.make_url("/socket.io/?EIO=4&transport=websocket"))
    opened = await ws.receive_str()
    assert opened.startswith("0{")
    return session, ws


@pytest.mark.parametrize(
    "garbage",
    [
        "40garbage",
        "42[not json",
        '42["api_v3_connect", {"token_api_v3": 5}',
        "9" * 1000,
        '42["no_such_event", 1, 2, 3]',
        "4" + "[" * 50_000,
        b"\x00\xff\xfe binary garbage",
    ],
)
async def test_socketio_garbage_leaves_the_server_serving(api, client, garbage):
    token = await api.user("alice")
    session, ws = await engineio_websocket(client)
    try:
        await ws.send_str("40")  # join the default namespace
        if isinstance(garbage, bytes):
            await ws.send_bytes(garbage)
        else:
            await ws.send_str(garbage)
    finally:
        await ws.close()
        await session.close()
    # the server still answers HTTP and real clients
    sio = socketio.AsyncClient(reconnection=False)
    ready = asyncio.get_running_loop().create_future()
    sio.on("ready", lambda text: ready.set_result(text))
    await sio.connect(str(client.make_url("/")), transports=["websocket"])
    await sio.emit("api_v3_connect", {"token_api_v3": token})
    assert await asyncio.wait_for(ready, 5) == (
        "Server has accepted the connection and registered you as : alice"
    )
    await sio.disconnect()


async def test_a_socketio_packet_over_64_kib_closes_that_connection(client):
    session, ws = await engineio_websocket(client)
    try:
        await ws.send_str('42["api_v3_connect", "' + "x" * 200_000 + '"]')
        closed = await asyncio.wait_for(ws.receive(), 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await ws.close()
        await session.close()


async def test_unauthenticated_sockets_per_address_are_capped(api, client):
    """The default cap is 20: the 21st waiting socket is refused, an authenticated one is not,
    and closing a waiting socket frees its place."""
    token = await api.user("alice")
    url = str(client.make_url("/"))
    socks = []
    try:
        for _ in range(20):
            s = socketio.AsyncClient(reconnection=False)
            await s.connect(url, transports=["websocket"], wait_timeout=5)
            socks.append(s)
        extra, reasons = socketio.AsyncClient(reconnection=False), []
        extra.on("connect_error", reasons.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await extra.connect(url, transports=["websocket"], wait_timeout=5)
        assert reasons == [{"message": "Too many unauthenticated connections from your address!"}]
        authed = socketio.AsyncClient(reconnection=False)
        await authed.connect(url, transports=["websocket"], auth={"token_api_v3": token})
        socks.append(authed)
        # one waiting socket authenticates: it no longer counts
        ready = asyncio.get_running_loop().create_future()
        socks[0].on("ready", lambda text: ready.set_result(text))
        await socks[0].emit("api_v3_connect", {"token_api_v3": token})
        await asyncio.wait_for(ready, 5)
        again = socketio.AsyncClient(reconnection=False)
        await again.connect(url, transports=["websocket"], wait_timeout=5)
        socks.append(again)
        # one waiting socket leaves: its place is free again (the server hears it first)
        await socks[1].disconnect()
        for _ in range(50):
            late = socketio.AsyncClient(reconnection=False)
            try:
                await late.connect(url, transports=["websocket"], wait_timeout=5)
            except socketio.exceptions.ConnectionError:
                await asyncio.sleep(0.02)  # the server has not processed the close yet
                continue
            socks.append(late)
            break
        else:
            pytest.fail("a closed socket's place was never freed")
    finally:
        for s in socks:
            if s.connected:
                await s.disconnect()


# --- probing usernames by timing ------------------------------------------------------------


async def test_unknown_username_costs_the_same_bcrypt_work_as_a_wrong_password(start):
    """At cost 10 one check is tens of milliseconds, far above the rest of the request. Noise
    on a busy machine only adds time, so the fastest of interleaved attempts is compared."""
    import time

    client = await start(bcrypt_rounds=10)
    assert (
        await client.post("/api/v3/register/", json={"username": "alice", "password": PASSWORD})
    ).status == 201
    times = {"known": [], "unknown": []}
    for _ in range(9):
        for kind, name in (("known", "alice"), ("unknown", "nobody")):
            began = time.perf_counter()
            async with client.post(
                "/api/v3/login/", json={"username": name, "password": "Wr0ng!Pass"}
            ) as resp:
                assert await answer(resp) == (401, {"message": "Invalid username or password!"})
            times[kind].append(time.perf_counter() - began)
    known, unknown = min(times["known"]), min(times["unknown"])
    assert known > 0.01  # the bcrypt work really happened
    assert 1 / 1.5 < unknown / known < 1.5, times


async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(start):
    client = await start(trusted_proxies="127.0.0.1", login_limit_addr="3/900")

    async def login(forwarded_for):
        body = {"username": "nobody", "password": "Wr0ng!Pass"}
        headers = {"X-Forwarded-For": forwarded_for}
        async with client.post("/api/v3/login/", json=body, headers=headers) as resp:
            return (await answer(resp))[0]

    assert [await login("10.0.0.1") for _ in range(4)] == [401, 401, 401, 429]
    assert await login("10.0.0.2") == 401  # another client behind the same proxy
    assert await login("10.0.0.2, 10.0.0.1") == 429  # the proxy's own entry is the last one
    assert await login("10.0.0.1, 10.0.0.2") == 401  # a forged first entry changes nothing


async def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(start):
    client = await start(login_limit_addr="2/900")
    statuses = []
    for i in range(3):
        body = {"username": "nobody", "password": "Wr0ng!Pass"}
        headers = {"X-Forwarded-For": f"10.0.0.{i}"}
        async with client.post("/api/v3/login/", json=body, headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [401, 401, 429]
