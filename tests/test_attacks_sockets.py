"""Attacks on the realtime side from issue 13 (SPEC §7: stopping, bounded memory, one socket
never delays another), each made as a raw client would make it."""

import asyncio
import dataclasses
import json
import logging
import signal
import socket
import time
import urllib.request

import aiohttp
import pytest
from helpers import (
    PASSWORD,
    WAIT,
    Api,
    Sock,
    free_port,
    http,
    masked_text_frame,
)

UPGRADE = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: test\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def raw_websocket(port, *packets, rcvbuf=None):
    """A blocking Engine.IO websocket that sends `packets` and then reads nothing."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(UPGRADE)
    sock.settimeout(WAIT)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(b"".join(masked_text_frame(p) for p in packets))
    return sock


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def signal_and_wait(server, *signals, gap=0.5, bound=15.0):
    """Send the signals (`gap` seconds apart); the exit code and the seconds it took."""
    start = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        server.proc.send_signal(sig)
    code = server.proc.wait(timeout=bound + 5)
    return code, time.monotonic() - start


def leave_clients_hanging(port):
    """Abandoned long-polling sessions, a websocket whose client never answers again, and a
    connection that never finishes its headers: what a closed laptop leaves behind."""
    left = []
    for _ in range(3):  # a handshake, then never another poll (a closed tab)
        url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
        with urllib.request.urlopen(url, timeout=WAIT) as resp:
            assert resp.read().startswith(b"0{")
    left.append(raw_websocket(port, "40", rcvbuf=4096))  # reads nothing, answers no close
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /api/v3/health/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    left.append(slow)
    return left


# --- 1: stopping never hangs ---------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_with_abandoned_and_half_open_clients_exits_0_in_time(servers, tmp_path, sig):
    port = free_port()
    server = servers("--port", str(port))
    server.wait_ready(port)
    left = leave_clients_hanging(port)
    code, took = signal_and_wait(server, sig)
    for sock in left:
        sock.close()
    assert (code, took < 15) == (0, True), took
    assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")


def test_a_second_signal_during_shutdown_turns_into_no_traceback(servers, tmp_path):
    port = free_port()
    server = servers("--port", str(port))
    server.wait_ready(port)
    left = leave_clients_hanging(port)
    code, took = signal_and_wait(server, signal.SIGTERM, signal.SIGINT, gap=0.3)
    for sock in left:
        sock.close()
    assert (code, took < 15) == (0, True), took
    assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")


# --- 2: replays cannot amplify memory --------------------------------------------------------


def test_repeated_replays_to_a_socket_that_never_reads_are_bounded(servers):
    """200 `api_v3_connect` with `last_message_id: 0` over a feed of 1,100 messages of 2,000
    characters, never read: the socket is dropped past 1 MiB queued and the memory comes back."""
    port = free_port()
    server = servers("--port", str(port), env={"BUTTONAPI_SEND_LIMIT": "0"})
    server.wait_ready(port)
    assert http(port, "/api/v3/register/", {"username": "mallory", "password": PASSWORD})[0] == 201
    token = http(port, "/api/v3/generatetoken/", {"username": "mallory", "password": PASSWORD})[1][
        "token"
    ]
    for i in range(1100):
        body = {"token": token, "message": f"{i:04d}" + "x" * 1996}
        assert http(port, "/api/v3/senddcmsgwithtoken/", body)[0] == 200
    before = rss_kb(server.proc.pid)
    connect = "42" + json.dumps(["api_v3_connect", {"token_api_v3": token, "last_message_id": 0}])
    sock = raw_websocket(port, "40", *[connect] * 200, rcvbuf=4096)
    peak, deadline = before, time.monotonic() + 4
    while time.monotonic() < deadline:  # the attacker reads nothing for 4 s
        peak = max(peak, rss_kb(server.proc.pid))
        time.sleep(0.05)
    # Now read: a dropped socket ends (EOF) after what its buffers held; one that was kept
    # would pour out hundreds of megabytes of replays.
    received, sock_closed = 0, False
    sock.settimeout(WAIT)
    while received < 20_000_000 and not sock_closed:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        received += len(chunk)
        sock_closed = not chunk
    sock.close()
    assert sock_closed, received
    after = rss_kb(server.proc.pid)
    assert (peak - before) < 120_000, (before, peak, after)  # it was 930 MB
    assert (after - before) < 60_000, (before, peak, after)
    assert http(port, "/api/v3/health/")[0] == 200


# --- 3: one socket's flood of authentications delays nobody --------------------------------


async def test_a_flood_of_junk_authentications_delays_no_other_users_events(aiohttp_client, config):
    """A raw websocket (on a thread of its own, like another machine) pours junk
    `api_v3_connect` packets in as fast as the server reads them, while alice's public
    messages must reach her watching socket as fast as ever."""
    import threading

    from buttonapi import create_app

    client = await aiohttp_client(await create_app(dataclasses.replace(config, send_limit="0")))
    api = Api(client)
    alice = await api.user("alice")
    watcher = await Sock(str(client.make_url("/"))).connect({"token_api_v3": alice})
    await watcher.next("ready")
    junk = "42" + json.dumps(["api_v3_connect", {"token_api_v3": "junk"}])
    burst = b"".join(masked_text_frame(junk) for _ in range(1000))
    stop = threading.Event()

    def flood(sock):
        with sock:
            while not stop.is_set():
                try:
                    sock.sendall(burst)
                except OSError:  # dropped by the server
                    return

    sock = await asyncio.to_thread(raw_websocket, client.port, "40")
    flooding = threading.Thread(target=flood, args=(sock,))
    flooding.start()
    try:
        worst = 0.0
        for i in range(20):
            start = time.monotonic()
            await api.public(alice, f"live {i}")
            await watcher.next("new_public_message", after=len(watcher.events))
            worst = max(worst, time.monotonic() - start)
        assert worst < 0.5, worst  # it was 4 s and more
    finally:
        stop.set()
        sock.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(flooding.join)
        await watcher.close()


async def test_failed_socket_authentications_are_limited_per_socket_and_address(
    aiohttp_client, config
):
    from buttonapi import create_app

    client = await aiohttp_client(await create_app(config))
    api = Api(client)
    alice = await api.user("alice")
    url = str(client.make_url("/"))
    sock = await Sock(url).connect()
    answers = [(await sock.auth("junk"))[1] for _ in range(10)]
    assert answers == [{"message": "Invalid token!"}] * 10
    event, data = await sock.auth("junk")
    assert (event, data) == (
        "api_v3_error",
        {"message": "Too many attempts, try again later!", "retry_after": data["retry_after"]},
    )
    # even the right token waits now, on this socket
    assert (await sock.auth(alice))[1]["message"] == "Too many attempts, try again later!"
    await sock.close()
    # other sockets from the same address: 30 failures in all, then refused too
    for _ in range(2):
        other = await Sock(url).connect()
        for _ in range(10):
            assert (await other.auth("junk"))[1] == {"message": "Invalid token!"}
        await other.close()
    last = await Sock(url).connect()
    assert (await last.auth("junk"))[1]["message"] == "Too many attempts, try again later!"
    await last.close()


# --- 4: no packet reaches the connect and disconnect handlers ------------------------------


async def test_connect_and_disconnect_sent_as_events_are_ignored(aiohttp_client, config, caplog):
    from buttonapi import create_app

    capped = dataclasses.replace(config, unauthenticated_sockets=5)
    client = await aiohttp_client(await create_app(capped))
    session = aiohttp.ClientSession()
    accepted = 0
    sockets = []
    try:
        for _ in range(12):
            try:
                ws = await session.ws_connect(
                    client.make_url("/socket.io/?EIO=4&transport=websocket")
                )
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401  # refused at the handshake: the cap plus one is full
                continue
            sockets.append(ws)
            opened = await ws.receive_str()
            assert opened.startswith("0{")
            await ws.send_str("40")
            answer = await asyncio.wait_for(ws.receive_str(), WAIT)
            if answer.startswith("40"):
                accepted += 1
                await ws.send_str('42["disconnect","x"]')
                await ws.send_str('42["connect",{}]')
                await ws.send_str('42["api_v3_connect",1,2,3,4]')
                await ws.send_str('42["no_such_event"]')
        assert accepted == 5  # the cap holds whatever the packets say
    finally:
        for ws in sockets:
            await ws.close()
        await session.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []


# --- 5: a removal racing a re-authentication --------------------------------------------------


async def test_a_removed_member_re_authenticating_meanwhile_gets_no_more_events(
    aiohttp_client, config
):
    from buttonapi import create_app

    client = await aiohttp_client(await create_app(dataclasses.replace(config, send_limit="0")))
    api = Api(client)
    alice, bob = await api.user("alice"), await api.user("bob")
    url = str(client.make_url("/"))
    bob_sock = await Sock(url).connect({"token_api_v3": bob})
    await bob_sock.next("ready")
    alice_sock = await Sock(url).connect({"token_api_v3": alice})
    await alice_sock.next("ready")
    try:
        for i in range(150):
            name = f"race{i}"
            await api.channel(alice, name, "bob")
            seen = len(bob_sock.events)
            remove = {"token": alice, "name": name, "username": "bob"}
            await asyncio.gather(
                bob_sock.client.emit("api_v3_connect", {"token_api_v3": bob}),
                api.ok("removeuserfromchannel", remove),
            )
            await bob_sock.next("ready", after=seen)
            await api.send(alice, name, f"after removal {i}")
            await alice_sock.next("new_message", after=len(alice_sock.events) - 1)
            await api.dm(alice, "bob", f"barrier {i}")
            await bob_sock.next("new_dm", after=seen)
            leaked = [d for e, d in bob_sock.events[seen:] if e == "new_message"]
            assert leaked == [], i
    finally:
        await bob_sock.close()
        await alice_sock.close()


# --- 7: Engine.IO sessions are capped --------------------------------------------------------


async def test_bare_engineio_sessions_per_address_are_capped(aiohttp_client, config):
    from buttonapi import create_app

    client = await aiohttp_client(
        await create_app(dataclasses.replace(config, unauthenticated_sockets=3))
    )

    async def handshake():
        async with client.get("/socket.io/?EIO=4&transport=polling") as resp:
            return resp.status

    # bare Engine.IO sessions from one address: the cap (plus one, on which a Socket.IO
    # client hears why it was refused), then 401 at the handshake
    assert [await handshake() for _ in range(6)] == [200, 200, 200, 200, 401, 401]


async def test_engineio_sessions_in_all_are_capped(aiohttp_client, config):
    from buttonapi import create_app

    app = await create_app(dataclasses.replace(config, max_sockets=5, trusted_proxies="127.0.0.1"))
    client = await aiohttp_client(app)
    statuses = []
    for i in range(7):
        headers = {"X-Forwarded-For": f"10.0.0.{i}"}
        async with client.get("/socket.io/?EIO=4&transport=polling", headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200] * 5 + [401] * 2


# --- Socket.IO's CORS follows BUTTONAPI_CORS_ORIGINS, without credentials ------------------


@pytest.mark.parametrize(
    "origins, origin, allowed",
    [
        ("*", "https://evil.example", "*"),
        ("https://good.example", "https://good.example", "https://good.example"),
        ("https://good.example", "https://evil.example", None),
    ],
)
async def test_socketio_cors_follows_the_setting_without_credentials(
    aiohttp_client, config, origins, origin, allowed
):
    from buttonapi import create_app

    client = await aiohttp_client(
        await create_app(dataclasses.replace(config, cors_origins=origins))
    )
    async with client.get(
        "/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}
    ) as resp:
        assert resp.headers.get("Access-Control-Allow-Credentials") is None
        got = resp.headers.get("Access-Control-Allow-Origin")
    if allowed is None:
        assert got is None
    else:
        assert got in (allowed, origin)  # "*" or the origin itself: the same without credentials


async def test_successful_socket_sign_ins_leave_nothing_in_the_limits(aiohttp_client, config):
    """Only failures are remembered: a socket id is new for every socket, so remembering
    every sign-in would grow memory with every socket ever opened."""
    from buttonapi import create_app, limits_key

    app = await create_app(config)
    client = await aiohttp_client(app)
    token = await Api(client).user("alice")
    for _ in range(20):
        sock = await Sock(str(client.make_url("/"))).connect()
        assert (await sock.auth(token))[0] == "ready"
        await sock.close()
    limits = app[limits_key]
    assert (len(limits.socket_sid._hits), len(limits.socket_addr._hits)) == (0, 0)
