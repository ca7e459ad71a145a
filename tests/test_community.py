"""SPEC §8: running a community. Roles, bans, timeouts, moderator deletion, the audit log,
registration modes and invites; the races of a ban or a role change with what it governs.

The first admin is made the way a real server's is, from the command line's own code path
(db.set_role with the console as actor); tests/test_admin_cli.py runs the real command.
"""

import asyncio
import sqlite3
from contextlib import closing

import pytest
import socketio
from helpers import (
    BAD_CREDENTIALS,
    ID,
    INVALID_TOKEN,
    PASSWORD,
    TIMESTAMP,
    Api,
    Sock,
    invalid,
    msg,
    rows,
    users,
)

import db
from buttonapi import db_key
from permissions import Role

NOT_ALLOWED = (403, {"message": "You are not allowed to do that!"})
USER_NOT_FOUND = (404, {"message": "User not found!"})
BANNED_BODY = {"message": "You are banned!", "reason": None, "until": None}
NOT_YOURS = (403, {"message": "You can only delete your messages!"})


async def promote(client, username, role):
    """Give a role as the command line does (actor `(console)`)."""
    result = await db.set_role(client.app[db_key], None, "(console)", username, Role(role))
    assert "error" not in result, result


@pytest.fixture
async def crew(client, api):
    """root (admin), mod (moderator), alice and bob (members): their tokens."""
    names = ("root", "mod", "alice", "bob")
    tokens = dict(zip(names, await users(api, *names), strict=True))
    await promote(client, "root", "admin")
    await promote(client, "mod", "moderator")
    return tokens


def creds(username, password=PASSWORD):
    return {"username": username, "password": password}


# --- getme and setrole --------------------------------------------------------------------


async def test_getme_shows_the_role_creation_and_timeout(api, crew):
    assert await api.post("getme", {"token": crew["alice"]}) == (
        200,
        {"message": "Got user!", "username": "alice", "role": "member", "created": TIMESTAMP,
         "timed_out_until": None},
    )  # fmt: skip
    assert (await api.ok("getme", {"token": crew["root"]}))["role"] == "admin"
    assert await api.post("getme", {"token": "nope"}) == INVALID_TOKEN


async def test_an_admin_sets_roles_and_each_is_audited(api, crew):
    body = {"token": crew["root"], "username": "ALICE", "role": "moderator"}
    assert await api.post("setrole", body) == (
        200,
        {"message": "Role set!", "username": "alice", "role": "moderator"},
    )
    assert (await api.ok("getme", {"token": crew["alice"]}))["role"] == "moderator"
    log = (await api.ok("getauditlog", {"token": crew["root"]}))["entries"]
    assert log[-1] == {
        "id": ID, "actor": "root", "action": "setrole", "target": "alice", "message_id": None,
        "reason": "moderator", "until": None, "timestamp": TIMESTAMP,
    }  # fmt: skip
    assert [e["actor"] for e in log] == ["(console)", "(console)", "root"]


@pytest.mark.parametrize(
    ("who", "body", "expected"),
    [
        ("alice", {"username": "bob", "role": "admin"}, NOT_ALLOWED),
        ("mod", {"username": "bob", "role": "moderator"}, NOT_ALLOWED),
        ("root", {"username": "root", "role": "member"}, NOT_ALLOWED),  # nobody demotes themselves
        ("root", {"username": "nobody", "role": "member"}, USER_NOT_FOUND),
        ("root", {"username": "bob", "role": "owner"}, invalid("role")),
        ("root", {"username": "bob", "role": "Admin"}, invalid("role")),
        ("root", {"username": "bob"}, invalid("role")),
        ("root", {"username": 5, "role": "admin"}, invalid("username")),
    ],
)
async def test_setrole_refusals_change_nothing(api, crew, snapshot, who, body, expected):
    before = snapshot()
    assert await api.post("setrole", {"token": crew[who], **body}) == expected
    assert snapshot() == before


async def test_a_bad_role_word_is_400_before_the_token(api, crew):
    assert await api.post("setrole", {"token": "x", "username": "bob", "role": "x"}) == invalid(
        "role"
    )


async def test_the_last_admin_can_not_be_demoted(client, api, crew):
    result = await db.set_role(client.app[db_key], None, "(console)", "root", Role.MEMBER)
    assert result == {"error": "last admin"}
    await api.ok("setrole", {"token": crew["root"], "username": "alice", "role": "admin"})
    await api.ok("setrole", {"token": crew["alice"], "username": "root", "role": "member"})
    body = {"token": crew["root"], "username": "alice", "role": "member"}  # root is a member now
    assert await api.post("setrole", body) == NOT_ALLOWED


# --- bans -----------------------------------------------------------------------------------


async def test_a_ban_ends_the_token_and_the_sockets_at_once(api, crew, sock):
    s = await sock(crew["alice"])
    body = {"token": crew["mod"], "username": "Alice", "reason": "spam"}
    assert await api.post("banuser", body) == (
        200,
        {"message": "User banned!", "username": "alice", "until": None},
    )
    assert await s.next("api_v3_error") == ("api_v3_error", {"message": "You are banned!"})
    await s.next("disconnect")
    for name, extra in [("getmessagesforeveryone", {}), ("getme", {}), ("getchannels", {})]:
        assert await api.post(name, {"token": crew["alice"], **extra}) == INVALID_TOKEN
    assert await api.post("senddcmsgwithtoken", {"token": crew["alice"], "message": "x"}) == (
        INVALID_TOKEN
    )


async def test_a_banned_user_with_the_right_password_learns_the_ban(api, crew, client):
    await api.ok("banuser", {"token": crew["mod"], "username": "alice", "reason": "spam",
                             "seconds": 3600})  # fmt: skip
    banned = {"message": "You are banned!", "reason": "spam", "until": TIMESTAMP}
    for name in ("login", "generatetoken", "gettoken"):
        assert await api.post(name, creds("alice")) == (403, banned), name
        assert await api.post(name, creds("alice", "Wr0ng!Pass")) == BAD_CREDENTIALS, name
    s = Sock(str(client.make_url("/")))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await s.connect(auth={"token_api_v3": crew["alice"]})
    assert ("connect_error", {"message": "You are banned!"}) in s.events
    await s.close()
    s = await Sock(str(client.make_url("/"))).connect()
    assert await s.auth(crew["alice"]) == ("api_v3_error", {"message": "You are banned!"})
    await s.close()


async def test_unban_restores_the_account(api, crew):
    await api.ok("banuser", {"token": crew["root"], "username": "alice"})
    assert await api.post("login", creds("alice")) == (403, BANNED_BODY)
    assert await api.post("unbanuser", {"token": crew["mod"], "username": "alice"}) == (
        200,
        {"message": "User unbanned!"},
    )
    assert await api.post("login", creds("alice")) == (200, {"message": "Login successful!"})
    assert (await api.ok("getme", {"token": crew["alice"]}))["username"] == "alice"
    assert await api.post("unbanuser", {"token": crew["mod"], "username": "alice"}) == (
        404,
        {"message": "User is not banned!"},
    )
    actions = [
        e["action"] for e in (await api.ok("getauditlog", {"token": crew["mod"]}))["entries"]
    ]
    assert actions[-2:] == ["banuser", "unbanuser"]


@pytest.mark.parametrize(
    ("who", "target", "extra", "expected"),
    [
        ("alice", "bob", {}, NOT_ALLOWED),  # members moderate nobody
        ("mod", "root", {}, NOT_ALLOWED),  # moderators act on members only
        ("mod", "mod", {}, NOT_ALLOWED),  # nobody bans themselves
        ("root", "root", {}, NOT_ALLOWED),
        ("mod", "nobody", {}, USER_NOT_FOUND),
        ("mod", "bob", {"reason": "x" * 201}, invalid("reason")),
        ("mod", "bob", {"seconds": 0}, invalid("seconds")),
        ("mod", "bob", {"seconds": 31536001}, invalid("seconds")),
        ("mod", "bob", {"seconds": 1.5}, invalid("seconds")),
        ("mod", "bob", {"purge": "yes"}, invalid("purge")),
        ("mod", "bob", {"purge": 1}, invalid("purge")),
    ],
)
async def test_banuser_refusals_change_nothing(api, crew, snapshot, who, target, extra, expected):
    before = snapshot()
    body = {"token": crew[who], "username": target, **extra}
    assert await api.post("banuser", body) == expected
    assert snapshot() == before


async def test_an_admin_bans_a_moderator(api, crew):
    body = {"token": crew["root"], "username": "mod", "seconds": "60"}
    assert await api.post("banuser", body) == (
        200,
        {"message": "User banned!", "username": "mod", "until": TIMESTAMP},
    )
    assert await api.post("getauditlog", {"token": crew["mod"]}) == INVALID_TOKEN


async def test_a_timed_ban_ends_by_itself(api, crew):
    await api.ok("banuser", {"token": crew["mod"], "username": "alice", "seconds": 1})
    assert await api.post("getme", {"token": crew["alice"]}) == INVALID_TOKEN
    await asyncio.sleep(1.1)
    assert (await api.ok("getme", {"token": crew["alice"]}))["username"] == "alice"
    assert await api.post("login", creds("alice")) == (200, {"message": "Login successful!"})
    assert await api.post("unbanuser", {"token": crew["mod"], "username": "alice"}) == (
        404,
        {"message": "User is not banned!"},
    )


async def test_a_timed_ban_survives_a_restart_and_ends_after_it(start, db_path):
    client = await start()
    api = Api(client)
    root, alice = await users(api, "root", "alice")
    await promote(client, "root", "admin")
    await api.ok("banuser", {"token": root, "username": "alice", "reason": "cool off",
                             "seconds": 2})  # fmt: skip
    await client.close()
    api = Api(await start())
    assert await api.post("login", creds("alice")) == (
        403,
        {"message": "You are banned!", "reason": "cool off", "until": TIMESTAMP},
    )
    assert await api.post("getme", {"token": alice}) == INVALID_TOKEN
    await asyncio.sleep(2.1)
    assert await api.post("login", creds("alice")) == (200, {"message": "Login successful!"})
    assert (await api.ok("getme", {"token": alice}))["username"] == "alice"


async def test_purge_deletes_a_weeks_public_and_channel_messages_not_dms(api, crew, sock, db_path):
    await api.channel(crew["alice"], "general", "bob")
    public = await api.public(crew["alice"], "spam 1")
    channel = await api.send(crew["alice"], "general", "spam 2")
    dm = await api.dm(crew["alice"], "bob", "private")
    old = await api.public(crew["alice"], "long ago")
    with closing(sqlite3.connect(db_path)) as conn:  # written 8 days ago
        conn.execute("UPDATE messages SET timestamp = '2000-01-01T00:00:00.000Z' WHERE id = ?",
                     (old,))  # fmt: skip
        conn.commit()
    kept = await api.public(crew["bob"], "bob's")
    watcher = await sock(crew["bob"])
    body = {"token": crew["mod"], "username": "alice", "purge": True}
    assert await api.post("banuser", body) == (
        200,
        {"message": "User banned!", "username": "alice", "until": None},
    )
    deleted = [await watcher.next("message_deleted", where=lambda d, i=i: d["id"] == i)
               for i in (public, channel)]  # fmt: skip
    assert [data for _, data in deleted] == [
        {"id": public, "kind": "public", "channel": None},
        {"id": channel, "kind": "channel", "channel": "general"},
    ]
    left = rows(db_path, "SELECT id FROM messages ORDER BY id")
    assert [r["id"] for r in left] == [dm, old, kept]
    feed = (await api.ok("getmessagesforeveryone", {"token": crew["bob"]}))["messages"]
    assert [m["id"] for m in feed] == [old, kept]


# --- timeouts -------------------------------------------------------------------------------


async def test_a_timeout_refuses_sends_and_changes_but_not_reads(api, crew, snapshot):
    await api.channel(crew["alice"], "general")
    public = await api.public(crew["alice"], "before")
    got = await api.ok("timeoutuser", {"token": crew["mod"], "username": "alice", "seconds": 600})
    assert got == {"message": "User timed out!", "username": "alice", "until": TIMESTAMP}
    timed_out = (403, {"message": "You are timed out!", "until": got["until"]})
    token = crew["alice"]
    before = snapshot()
    for name, body in [
        ("senddcmsgwithtoken", {"message": "x"}),
        ("sendmessage", {"message": "x", "channel": "general"}),
        ("senddm", {"message": "x", "username": "bob"}),
        ("editmessage", {"message_id": public, "message": "y"}),
        ("makechannel", {"name": "new"}),
        ("addusertochannel", {"name": "general", "username": "bob"}),
    ]:
        assert await api.post(name, {"token": token, **body}) == timed_out, name
    assert snapshot() == before
    assert (await api.ok("getme", {"token": token}))["timed_out_until"] == got["until"]
    await api.ok("getmessagesforeveryone", {"token": token})
    await api.ok("readmessagesfromchannel", {"token": token, "name": "general"})
    body = {"token": crew["mod"], "username": "alice", "seconds": 0}
    assert await api.post("timeoutuser", body) == (
        200,
        {"message": "User timed out!", "username": "alice", "until": None},
    )
    await api.public(token, "after")
    entries = (await api.ok("getauditlog", {"token": crew["mod"]}))["entries"]
    assert [(e["action"], e["target"], e["until"]) for e in entries[-2:]] == [
        ("timeoutuser", "alice", got["until"]),
        ("timeoutuser", "alice", None),
    ]


async def test_senddcmsg_of_a_timed_out_user_is_refused(client, api, crew):
    await api.ok("timeoutuser", {"token": crew["mod"], "username": "alice", "seconds": 60})
    # No bot here: the 503 of senddcmsg comes first (permissions are checked last, SPEC §1).
    body = {"token": crew["alice"], "channel": "x", "message": "x"}
    assert (await api.post("senddcmsg", body))[0] == 503


@pytest.mark.parametrize(
    ("who", "target", "seconds", "expected"),
    [
        ("alice", "bob", 60, NOT_ALLOWED),
        ("mod", "root", 60, NOT_ALLOWED),
        ("mod", "mod", 60, NOT_ALLOWED),
        ("mod", "nobody", 60, USER_NOT_FOUND),
        ("mod", "bob", 2419201, invalid("seconds")),
        ("mod", "bob", -1, invalid("seconds")),
        ("mod", "bob", None, invalid("seconds")),
    ],
)
async def test_timeoutuser_refusals_change_nothing(
    api, crew, snapshot, who, target, seconds, expected
):
    before = snapshot()
    body = {"token": crew[who], "username": target, "seconds": seconds}
    assert await api.post("timeoutuser", body) == expected
    assert snapshot() == before


# --- moderator deletion -------------------------------------------------------------------


async def test_moderators_delete_public_and_channel_messages_of_members(api, crew, sock):
    await api.channel(crew["alice"], "general", "bob")  # mod is not a member
    public = await api.public(crew["alice"], "bad")
    channel = await api.send(crew["bob"], "general", "worse")
    watcher = await sock(crew["alice"])
    for message_id in (public, channel):
        body = {"token": crew["mod"], "message_id": message_id}
        assert await api.post("deletemessage", body) == (200, {"message": "Message deleted!"})
    _, data = await watcher.next("message_deleted", where=lambda d: d["id"] == channel)
    assert data == {"id": channel, "kind": "channel", "channel": "general"}
    entries = (await api.ok("getauditlog", {"token": crew["root"]}))["entries"]
    assert [(e["actor"], e["action"], e["target"], e["message_id"]) for e in entries[-2:]] == [
        ("mod", "deletemessage", "alice", public),
        ("mod", "deletemessage", "bob", channel),
    ]


async def test_dms_stay_private_and_moderators_do_not_delete_admins(api, crew, snapshot):
    dm = await api.dm(crew["alice"], "bob", "psst")
    admins = await api.public(crew["root"], "admin speaking")
    before = snapshot()
    for who, message_id in [("mod", dm), ("root", dm), ("mod", admins), ("bob", admins)]:
        body = {"token": crew[who], "message_id": message_id}
        assert await api.post("deletemessage", body) == NOT_YOURS, who
    assert snapshot() == before
    assert await api.post("deletemessage", {"token": crew["mod"], "message_id": 10**6}) == (
        404,
        {"message": "Message not found!"},
    )


async def test_an_admin_deletes_a_moderators_message(api, crew):
    mine = await api.public(crew["mod"], "mod speaking")
    body = {"token": crew["root"], "message_id": mine}
    assert await api.post("deletemessage", body) == (200, {"message": "Message deleted!"})


async def test_a_channels_creator_deletes_any_message_in_it(api, crew):
    await api.channel(crew["alice"], "mine", "bob", "root")
    bobs = await api.send(crew["bob"], "mine", "hi")
    roots = await api.send(crew["root"], "mine", "admin here")
    elsewhere = await api.public(crew["bob"], "public")
    for message_id in (bobs, roots):
        body = {"token": crew["alice"], "message_id": message_id}
        assert await api.post("deletemessage", body) == (200, {"message": "Message deleted!"})
    body = {"token": crew["alice"], "message_id": elsewhere}
    assert await api.post("deletemessage", body) == NOT_YOURS
    entries = (await api.ok("getauditlog", {"token": crew["root"]}))["entries"]
    assert [(e["actor"], e["target"]) for e in entries[-2:]] == [
        ("alice", "bob"),
        ("alice", "root"),
    ]


# --- the audit log ----------------------------------------------------------------------------


async def test_the_audit_log_pages_like_every_list(api, crew):
    for seconds in (10, 20, 30, 40):
        await api.ok("timeoutuser", {"token": crew["mod"], "username": "bob", "seconds": seconds})
    entries = (await api.ok("getauditlog", {"token": crew["mod"]}))["entries"]
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and len(ids) == 6
    got = await api.ok("getauditlog", {"token": crew["mod"], "count": 2})
    assert [e["id"] for e in got["entries"]] == ids[-2:]
    got = await api.ok("getauditlog", {"token": crew["mod"], "count": "2", "before": ids[-2]})
    assert [e["id"] for e in got["entries"]] == ids[-4:-2]
    got = await api.ok("getauditlog", {"token": crew["mod"], "count": 2, "after": ids[0]})
    assert [e["id"] for e in got["entries"]] == ids[1:3]
    assert await api.post("getauditlog", {"token": crew["alice"]}) == NOT_ALLOWED
    assert await api.post("getauditlog", {"token": crew["mod"], "count": 0}) == invalid("count")


async def test_getusers_shows_roles_and_status(api, crew):
    await api.ok("banuser", {"token": crew["mod"], "username": "bob", "reason": "r"})
    await api.ok("timeoutuser", {"token": crew["mod"], "username": "alice", "seconds": 60})
    got = await api.ok("getusers", {"token": crew["mod"]})
    assert [(u["username"], u["role"], u["banned"], u["timed_out_until"] is not None)
            for u in got["users"]] == [
        ("root", "admin", None, False),
        ("mod", "moderator", None, False),
        ("alice", "member", None, True),
        ("bob", "member", {"reason": "r", "until": None}, False),
    ]  # fmt: skip
    assert await api.post("getusers", {"token": crew["alice"]}) == NOT_ALLOWED


# --- registration modes and invites ---------------------------------------------------------


async def test_closed_registration(start):
    api = Api(await start(registration="closed"))
    assert await api.post("register", creds("alice")) == (
        403,
        {"message": "Registration is closed!"},
    )
    assert await api.post("register", creds("a", "short")) == (
        403,
        {"message": "Registration is closed!"},
    )  # before the 411 rules
    assert await api.post("register", {"username": "alice"}) == invalid("password")


INVITE_NEEDED = (403, {"message": "A valid invite is needed to register!"})


async def test_invite_registration_needs_a_valid_invite(start):
    api = Api(await start(registration="invite"))
    assert await api.post("register", creds("alice")) == INVITE_NEEDED
    assert await api.post("register", {**creds("alice"), "invite": "made-up"}) == INVITE_NEEDED
    assert await api.post("register", {**creds("alice"), "invite": 5}) == invalid("invite")
    assert await api.post("register", {"username": "al", "password": "x", "invite": "no"}) == (
        INVITE_NEEDED
    )  # before the 411 rules


async def test_an_invite_lets_as_many_register_as_it_has_uses(start, db_path):
    client = await start(registration="invite")
    api = Api(client)
    await db.create_user(client.app[db_key], "root", (await _hash(client)), audit=True)
    await promote(client, "root", "admin")
    root = (await api.ok("generatetoken", creds("root")))["token"]
    got = await api.post("createinvite", {"token": root, "uses": 2, "seconds": 3600})
    assert got == (
        201,
        {"message": "Invite created!", "invite": got[1]["invite"], "uses": 2,
         "expires": TIMESTAMP},
    )  # fmt: skip
    code = got[1]["invite"]
    assert len(code) >= 32
    assert code not in str(rows(db_path, "SELECT * FROM invites"))  # only its hash is kept
    assert await api.post("register", {**creds("alice"), "invite": code}) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert await api.post("register", {**creds("alice"), "invite": code}) == (
        401,
        {"message": "User exists!"},
    )  # a taken name uses nothing
    await api.ok("register", {**creds("bob"), "invite": code}, status=201)
    assert await api.post("register", {**creds("carol"), "invite": code}) == INVITE_NEEDED
    log = (await api.ok("getauditlog", {"token": root}))["entries"]
    assert [(e["actor"], e["action"]) for e in log] == [
        ("(console)", "adduser"), ("(console)", "setrole"), ("root", "createinvite"),
    ]  # fmt: skip


async def _hash(client):
    from buttonapi import hasher_key

    return await client.app[hasher_key].hash(PASSWORD, "test")


async def test_an_expired_invite_is_refused(start, db_path):
    client = await start(registration="invite")
    api = Api(client)
    await db.create_user(client.app[db_key], "root", await _hash(client))
    await promote(client, "root", "admin")
    root = (await api.ok("generatetoken", creds("root")))["token"]
    code = (await api.ok("createinvite", {"token": root}, status=201))["invite"]
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("UPDATE invites SET expires = '2000-01-01T00:00:00.000Z'")
        conn.commit()
    assert await api.post("register", {**creds("alice"), "invite": code}) == INVITE_NEEDED


@pytest.mark.parametrize(
    ("who", "body", "expected"),
    [
        ("alice", {}, NOT_ALLOWED),
        ("mod", {"uses": 0}, invalid("uses")),
        ("mod", {"uses": 1001}, invalid("uses")),
        ("mod", {"seconds": 59}, invalid("seconds")),
        ("mod", {"seconds": 2592001}, invalid("seconds")),
    ],
)
async def test_createinvite_refusals(api, crew, snapshot, who, body, expected):
    before = snapshot()
    assert await api.post("createinvite", {"token": crew[who], **body}) == expected
    assert snapshot() == before


async def test_a_one_use_invite_raced_by_many_registers_exactly_one(start):
    client = await start(registration="invite")
    api = Api(client)
    await db.create_user(client.app[db_key], "root", await _hash(client))
    await promote(client, "root", "admin")
    root = (await api.ok("generatetoken", creds("root")))["token"]
    code = (await api.ok("createinvite", {"token": root}, status=201))["invite"]
    answers = await asyncio.gather(
        *[api.post("register", {**creds(f"user{i}"), "invite": code}) for i in range(12)]
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [403] * 11
    assert all(body == INVITE_NEEDED[1] for status, body in answers if status == 403)


# --- races -------------------------------------------------------------------------------------


async def test_no_message_of_a_banned_user_is_stored_after_the_bans_answer(api, crew, db_path):
    stop = asyncio.Event()

    async def sender(n):
        answers = []
        while not stop.is_set():
            status, _ = await api.post(
                "senddcmsgwithtoken", {"token": crew["alice"], "message": f"{n}"}
            )
            answers.append(status)
            if status == 401:
                return answers
        return answers

    tasks = [asyncio.create_task(sender(n)) for n in range(6)]
    await asyncio.sleep(0.2)
    await api.ok("banuser", {"token": crew["mod"], "username": "alice"})
    at_answer = rows(db_path, "SELECT count(*) AS n FROM messages")[0]["n"]
    done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    stop.set()
    assert rows(db_path, "SELECT count(*) AS n FROM messages")[0]["n"] == at_answer
    oks = sum(a.count(200) for a in done)
    assert oks == at_answer > 0  # every 200 was stored before the ban's answer, nothing after
    assert all(a[-1] == 401 for a in done)


async def test_a_role_change_racing_a_ban_is_decided_by_one_order(client, api, crew):
    for round in range(6):
        target = f"target{round}"
        await api.register(target)
        await promote(client, "mod", "moderator")
        demote = api.post("setrole", {"token": crew["root"], "username": "mod", "role": "member"})
        ban = api.post("banuser", {"token": crew["mod"], "username": target})
        (demoted, _), (banned, _) = await asyncio.gather(demote, ban)
        assert demoted == 200
        entries = (await api.ok("getauditlog", {"token": crew["root"], "count": 2}))["entries"]
        actions = [e["action"] for e in entries]
        if banned == 200:  # the ban was committed first: the moderator was one then
            assert actions == ["banuser", "setrole"]
        else:
            assert (banned, actions[-1]) == (403, "setrole")
            assert await api.post("login", creds(target)) == (
                200,
                {"message": "Login successful!"},
            )


# --- the schema migration from version 3 ----------------------------------------------------


async def test_a_version_3_file_is_migrated_with_no_links(start, db_path):
    from pathlib import Path

    v3 = (Path(__file__).with_name("schema_v3.sql")).read_text(encoding="utf-8")
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(v3)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(
            "INSERT INTO users (id, username, password_hash, token, created_at, name_key)"
            " VALUES (1, 'alice', 'x', '11111111-1111-4111-8111-111111111111',"
            " '2026-01-01T00:00:00.000Z', 'alice')"
        )
        conn.execute("INSERT INTO channels (id, name, creator_id, created_at)"
                     " VALUES (1, 'general', 1, 't')")  # fmt: skip
        conn.execute("INSERT INTO members VALUES (1, 1)")
        conn.commit()
    client = await start()
    api = Api(client)
    token = "11111111-1111-4111-8111-111111111111"
    assert await api.post("getme", {"token": token}) == (
        200,
        {"message": "Got user!", "username": "alice", "role": "member",
         "created": "2026-01-01T00:00:00.000Z", "timed_out_until": None},
    )  # fmt: skip
    await api.send(token, "general", "still here")
    assert rows(db_path, "SELECT * FROM channel_links") == []
    assert rows(db_path, "SELECT * FROM bans") == []
    assert rows(db_path, "PRAGMA user_version") == [{"user_version": db.SCHEMA_VERSION}]
    assert db.SCHEMA_VERSION >= 4  # (5 and later migrate through 4)
    assert rows(db_path, "SELECT value FROM meta WHERE key = 'external_writes'") == [{"value": 0}]
    msgs = await api.ok("readmessagesfromchannel", {"token": token, "name": "general"})
    assert msgs["messages"] == [msg(ID, "channel", "alice", "still here", channel="general")]


@pytest.mark.parametrize(
    ("who", "body", "expected"),
    [
        ("alice", {"username": "bob"}, NOT_ALLOWED),
        ("mod", {"username": "root"}, NOT_ALLOWED),
        ("mod", {"username": "nobody"}, USER_NOT_FOUND),
        ("mod", {"username": None}, invalid("username")),
        ("mod", {"username": "bob"}, (404, {"message": "User is not banned!"})),
    ],
)
async def test_unbanuser_refusals_change_nothing(api, crew, snapshot, who, body, expected):
    await api.ok("banuser", {"token": crew["root"], "username": "bob"})
    await api.ok("unbanuser", {"token": crew["root"], "username": "bob"})
    if who == "alice":
        await api.ok("banuser", {"token": crew["root"], "username": "bob"})
    before = snapshot()
    assert await api.post("unbanuser", {"token": crew[who], **body}) == expected
    assert snapshot() == before


@pytest.mark.parametrize(
    "name",
    ["getme", "setrole", "banuser", "unbanuser", "timeoutuser", "getauditlog", "getusers",
     "createinvite", "linkchannel", "unlinkchannel", "getlinks"],
)  # fmt: skip
async def test_the_community_endpoints_check_the_body_and_the_token_first(api, crew, name):
    assert await api.post(name, []) == (400, {"message": "Request body must be a JSON object!"})
    assert await api.post(name, {}) == invalid("token")
    body = {"token": "nope", "username": "bob", "role": "member", "seconds": 60, "name": "x",
            "discord_channel": "x"}  # fmt: skip
    assert await api.post(name, body) == INVALID_TOKEN
