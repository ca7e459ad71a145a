"""Attacks from issue 13, each reproduced as a client would make it (SPEC §2 names, §7 limits,
bounded memory and stopping). Every test here failed on the server before its fix."""

import asyncio
import dataclasses
import os
import socket
import sqlite3
import stat
import time
from contextlib import closing

import pytest
from helpers import PASSWORD, answer, free_port, http

# --- 6: registrations per address, and fair password work -----------------------------------


async def test_registrations_per_address_are_limited_before_any_bcrypt_work(
    aiohttp_client, config, db_path
):
    from buttonapi import create_app

    limited = dataclasses.replace(config, register_limit_addr="3/3600", trusted_proxies="127.0.0.1")
    client = await aiohttp_client(await create_app(limited))

    async def register(username, forwarded_for="10.0.0.1"):
        body = {"username": username, "password": PASSWORD}
        headers = {"X-Forwarded-For": forwarded_for}
        async with client.post("/api/v3/register/", json=body, headers=headers) as resp:
            return await answer(resp), resp.headers.get("Retry-After")

    assert (await register("alice"))[0] == (201, {"message": "User registered successfully!"})
    assert (await register("alice"))[0] == (401, {"message": "User exists!"})  # counts too
    assert (await register("bob"))[0] == (201, {"message": "User registered successfully!"})
    (status, body), retry_after = await register("carol")
    assert (status, body) == (
        429,
        {"message": "Too many attempts, try again later!", "retry_after": body["retry_after"]},
    )
    assert 3500 < body["retry_after"] <= 3600 and retry_after == str(body["retry_after"])
    with closing(sqlite3.connect(db_path)) as conn:
        names = [r[0] for r in conn.execute("SELECT username FROM users ORDER BY id")]
    assert names == ["alice", "bob"]  # carol was refused before anything was hashed
    # The format rules still come first, and another address is not affected.
    assert (await register("x"))[0] == (411, {"message": "Username needs to be 3-20 chars long!"})
    assert (await register("carol", "10.0.0.2"))[0][0] == 201


async def test_a_flood_of_password_work_from_one_address_does_not_starve_another(
    aiohttp_client, config
):
    """40 registrations from one address are queued before one login from another: the login
    takes its turn among them instead of waiting for all 40 (round robin per address)."""
    from buttonapi import create_app, hasher_key

    fair = dataclasses.replace(
        config, bcrypt_rounds=8, trusted_proxies="127.0.0.1", register_limit_addr="0"
    )
    app = await create_app(fair)
    client = await aiohttp_client(app)
    body = {"username": "victim", "password": PASSWORD}
    assert (await client.post("/api/v3/register/", json=body)).status == 201
    finished = []

    async def post(name, body, address, label):
        headers = {"X-Forwarded-For": address}
        async with client.post(f"/api/v3/{name}/", json=body, headers=headers) as resp:
            assert resp.status in (200, 201), await resp.text()
        finished.append(label)

    flood = [
        asyncio.create_task(
            post("register", {"username": f"bot{i}", "password": PASSWORD}, "10.0.0.66", "flood")
        )
        for i in range(40)
    ]
    async with asyncio.timeout(10):
        while app[hasher_key].waiting < 20:  # noqa: ASYNC110 (the server's state, polled)
            await asyncio.sleep(0.005)  # until the flood is queued for the bcrypt threads
    await post("login", body, "10.0.0.7", "victim")
    await asyncio.gather(*flood)
    assert finished.index("victim") < 10, finished  # FIFO would put it after all 40


# --- 8: look-alike names --------------------------------------------------------------------

BLANK_411 = (411, {"message": "Username can not contain spaces or control characters!"})
LOOKALIKE_411 = (411, {"message": "Username can not mix look-alike scripts!"})
EXISTS_401 = (401, {"message": "User exists!"})


@pytest.mark.parametrize(
    "username, expected",
    [
        ("victim\u3164", BLANK_411),  # Hangul filler
        ("\u1160victim", BLANK_411),  # Hangul jungseong filler
        ("\u115fvictim", BLANK_411),
        ("victim\uffa0", BLANK_411),  # halfwidth Hangul filler
        ("victim\u2800", BLANK_411),  # Braille blank
        ("vic\u034ftim", BLANK_411),  # combining grapheme joiner (default ignorable)
        ("victim\U000e0041", BLANK_411),  # tag character
        ("vict\u0456m", LOOKALIKE_411),  # Cyrillic і among Latin letters
        ("p\u0430ypal", LOOKALIKE_411),  # Cyrillic а
        ("\u0391lice", LOOKALIKE_411),  # Greek capital alpha
        ("\u0410\u043b\u0438\u0441a", LOOKALIKE_411),  # Cyrillic name with a Latin a
        ("\uff56\uff49\uff43\uff54\uff49\uff4d", EXISTS_401),  # fullwidth victim
        ("VICTIM", EXISTS_401),
        ("\uff3bdeleted\uff3d", EXISTS_401),  # fullwidth brackets: the reserved [deleted]
        ("[Deleted]", EXISTS_401),
    ],
)
async def test_look_alike_and_blank_names_are_refused(api, username, expected):
    await api.register("victim")
    assert await api.post("register", {"username": username, "password": PASSWORD}) == expected


@pytest.mark.parametrize(
    "username",
    [
        "\u0410\u043b\u0438\u0441\u0430",
        "\u03c0\u03b1\u03bd",
        "e\u0301cole",
        "\u65e5\u672cx",
        "Stra\u00dfe",
    ],
)
async def test_single_script_and_composed_names_are_accepted(api, username):
    """A Cyrillic or Greek name, `e` + combining acute (NFKC: one Latin é), Han with Latin."""
    assert await api.post("register", {"username": username, "password": PASSWORD}) == (
        201,
        {"message": "User registered successfully!"},
    )


@pytest.mark.parametrize(
    "existing, new",
    [("\u03a9xy", "\u03c9xy"), ("kxy", "\u212axy"), ("Victim", "\uff56ictim")],  # Ω/ω, Kelvin sign
)
async def test_names_that_fold_together_collide(api, existing, new):
    await api.register(existing)
    assert await api.post("register", {"username": new, "password": PASSWORD}) == EXISTS_401


async def test_logins_still_match_names_by_ascii_case_only(api):
    """Folding is for refusing new names; finding an account stays as SPEC §2 says."""
    await api.register("\u03a9mega")
    got = await api.post("login", {"username": "\u03c9mega", "password": PASSWORD})
    assert got == (401, {"message": "Invalid username or password!"})


@pytest.mark.parametrize("text", ["\u3164", "\u2800\u2800", "\u200b", " \u3164 ", "\ufeff\u00ad"])
async def test_a_message_that_renders_blank_is_refused_like_an_empty_one(api, text):
    token = await api.user("alice")
    got = await api.post("senddcmsgwithtoken", {"token": token, "message": text})
    assert got == (411, {"message": "Message needs to be 1-2000 chars long!"})


async def test_blank_characters_inside_a_message_are_kept(api):
    token = await api.user("alice")
    await api.public(token, "a\u3164b\u200b")
    got = await api.ok("getmessagesforeveryone", {"token": token})
    assert got["messages"][0]["message"] == "a\u3164b\u200b"


# --- 9: an existing database file is made private -----------------------------------------------


async def test_an_existing_world_readable_database_is_made_private(aiohttp_client, config, db_path):
    from buttonapi import create_app

    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")  # leaves -wal and -shm beside it while open
        for suffix in ("", "-wal", "-shm"):
            os.chmod(f"{db_path}{suffix}", 0o644)
        client = await aiohttp_client(await create_app(config))
        assert (await client.get("/api/v3/health/")).status == 200
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db_path.parent.glob("api.db*")}
    assert modes == {"api.db": 0o600, "api.db-wal": 0o600, "api.db-shm": 0o600}


# --- 10 and 11: slow and malformed HTTP, against the real process -----------------------------


def _closed_within(sock, seconds):
    """Seconds until the server closed the connection (reads EOF), or None."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_slow_headers_and_bodies_are_cut_off(servers):
    port = free_port()
    server = servers("--port", str(port), env={"BUTTONAPI_REQUEST_TIMEOUT": "1"})
    server.wait_ready(port)
    loris = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for sock in loris:
        sock.sendall(b"POST /api/v3/login/ HTTP/1.1\r\nHost: x\r\nX-A: ")  # never ends
    for sock in loris:
        assert _closed_within(sock, 5) is not None
        sock.close()
    with closing(socket.create_connection(("127.0.0.1", port))) as sock:
        sock.sendall(
            b'POST /api/v3/login/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"user'
        )
        sock.settimeout(5)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert head.endswith(b'{"message": "Request timed out!"}'), head
    assert http(port, "/api/v3/health/")[0] == 200  # and the server serves on


def test_malformed_http_is_answered_and_logged_in_one_line(servers, tmp_path):
    port = free_port()
    server = servers("--port", str(port))
    server.wait_ready(port)
    bad = [
        b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for request in bad * 10:
        with closing(socket.create_connection(("127.0.0.1", port))) as sock:
            sock.sendall(request)
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.")  # still answered (400)
    assert http(port, "/api/v3/health/")[0] == 200
    log = (tmp_path / "server.log").read_text(errors="replace").splitlines()
    assert not [line for line in log if "Traceback" in line or line.startswith(" ")]
    assert len([line for line in log if "aiohttp.server" in line]) <= 30
