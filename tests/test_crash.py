"""Crash and shutdown safety (SPEC §7): `python buttonapi.py` as a real process.

A success answer means committed: after SIGKILL in the middle of a burst of concurrent
writes, every acknowledged account, token, channel, membership and message is there on
restart. SIGTERM lets requests in flight finish, then exits 0 with a clean database.
"""

import asyncio
import signal
import sqlite3
from contextlib import closing

import aiohttp
from helpers import PASSWORD, free_port

USERS = ["alice", "bob", "carol", "dave", "erin"]


async def post(session, port, name, body):
    async with session.post(f"http://127.0.0.1:{port}/api/v3/{name}/", json=body) as resp:
        return resp.status, await resp.json()


async def start(servers, port, db, **env):
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", str(db), env=env)
    await asyncio.to_thread(server.wait_ready, port)
    return server


async def test_sigkill_during_concurrent_writes_loses_nothing_acknowledged(tmp_path, servers):
    port, db = free_port(), tmp_path / "crash.db"
    server = await start(servers, port, db, BUTTONAPI_SEND_LIMIT="0")
    acked = {"public": {}, "channel": {}, "dm": {}, "users": {}}
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            *(post(session, port, "register", {"username": u, "password": PASSWORD}) for u in USERS)
        )
        assert [status for status, _ in answers] == [201] * len(USERS)
        tokens = {}
        for user in USERS:
            body = {"username": user, "password": PASSWORD}
            tokens[user] = (await post(session, port, "generatetoken", body))[1]["token"]
        await post(session, port, "makechannel", {"token": tokens["alice"], "name": "room"})
        for user in USERS[1:]:
            body = {"token": tokens["alice"], "name": "room", "username": user}
            assert (await post(session, port, "addusertochannel", body))[0] == 200

        stop, enough = asyncio.Event(), asyncio.Event()

        async def writer(user, peer):
            n = 0
            while not stop.is_set():
                n += 1
                text = f"{user}-{n}"
                calls = [
                    ("public", "senddcmsgwithtoken", {"message": text}),
                    ("channel", "sendmessage", {"message": text, "channel": "room"}),
                    ("dm", "senddm", {"message": text, "username": peer}),
                ]
                for kind, name, fields in calls:
                    try:
                        status, got = await post(
                            session, port, name, {"token": tokens[user], **fields}
                        )
                    except (aiohttp.ClientError, ConnectionError):
                        return  # the server died under us: this one was never acknowledged
                    if status == 200:
                        acked[kind][got["id"]] = (user, text)
                        if sum(len(acked[k]) for k in ("public", "channel", "dm")) >= 300:
                            enough.set()

        async def registrar():
            n = 0
            while not stop.is_set():
                n += 1
                name = f"late{n}"
                try:
                    body = {"username": name, "password": PASSWORD}
                    if (await post(session, port, "register", body))[0] == 201:
                        acked["users"][name] = True
                except (aiohttp.ClientError, ConnectionError):
                    return

        tasks = [
            asyncio.create_task(writer(user, USERS[(i + 1) % len(USERS)]))
            for i, user in enumerate(USERS)
        ] + [asyncio.create_task(registrar())]

        await asyncio.wait_for(enough.wait(), timeout=30)
        server.proc.kill()  # requests are in flight right now
        await asyncio.to_thread(server.proc.wait)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    server = await start(servers, port, db)
    async with aiohttp.ClientSession() as session:
        alice = tokens["alice"]
        status, got = await post(
            session, port, "getmessagesforeveryone", {"token": alice, "count": 1000}
        )
        public = {m["id"]: (m["sender"], m["message"]) for m in got["messages"]}
        status, got = await post(
            session,
            port,
            "readmessagesfromchannel",
            {"token": alice, "name": "room", "count": 1000},
        )
        channel = {m["id"]: (m["sender"], m["message"]) for m in got["messages"]}
        dms = {}
        for user in USERS:
            status, got = await post(
                session, port, "getdms", {"token": tokens[user], "count": 1000}
            )
            dms |= {m["id"]: (m["sender"], m["message"]) for m in got["dms"]}
        for user in USERS:  # tokens and memberships too
            assert await post(session, port, "getchannels", {"token": tokens[user]}) == (
                200,
                {"channels": [{"channel_name": "room", "channel_id": 1}]},
            )
        for name in acked["users"]:
            body = {"username": name, "password": PASSWORD}
            assert (await post(session, port, "login", body))[0] == 200
    assert len(acked["public"]) > 50
    assert acked["public"].items() <= public.items()
    assert acked["channel"].items() <= channel.items()
    assert acked["dm"].items() <= dms.items()
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 15) == 0


async def test_sigterm_finishes_requests_in_flight_and_exits_0(tmp_path, servers):
    port, db = free_port(), tmp_path / "term.db"
    server = await start(servers, port, db, BUTTONAPI_BCRYPT_ROUNDS="10")
    creds = {"username": "alice", "password": PASSWORD}
    async with aiohttp.ClientSession() as session:
        assert (await post(session, port, "register", creds))[0] == 201
        # 12 logins queue on the two bcrypt threads: most are still being checked when the
        # first answer arrives, and that is when SIGTERM is sent
        logins = [asyncio.create_task(post(session, port, "login", creds)) for _ in range(12)]
        done, _ = await asyncio.wait(logins, return_when=asyncio.FIRST_COMPLETED)
        server.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(*logins), timeout=15)
    assert answers == [(200, {"message": "Login successful!"})] * 12
    assert await asyncio.to_thread(server.proc.wait, 15) == 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]
