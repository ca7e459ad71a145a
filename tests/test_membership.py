"""Beyond the seed: channel membership, token revocation and password change.

`leavechannel`, `removeuserfromchannel`, `getchannelmembers`, `revoketoken`, `changepassword`,
with exact answers for every success and error path, and their Socket.IO effects.
"""

import asyncio

import pytest
from helpers import BAD_CREDENTIALS, INVALID_TOKEN, PASSWORD, UUID4_RE, barrier, db_file_bytes, msg

NEW_PASSWORD = "N3w!Passw0rd"


async def setup_general(api):
    alice, bob, carol = await api.user("alice"), await api.user("bob"), await api.user("carol")
    channel_id = await api.channel(alice, "general", "bob", "carol")
    return alice, bob, carol, channel_id


# --- getchannelmembers ------------------------------------------------------------------


async def test_getchannelmembers_lists_members_in_order_of_registration(api):
    alice, bob, carol, _ = await setup_general(api)
    assert await api.post("getchannelmembers", {"token": carol, "name": "GENERAL"}) == (
        200,
        {"channel_name": "general", "members": ["alice", "bob", "carol"], "creator": "alice"},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (400, {"message": "Missing or invalid field: token!"})),
        ({"token": "x"}, (400, {"message": "Missing or invalid field: name!"})),
        ({"token": "x", "name": "general"}, INVALID_TOKEN),
        ({"token": "{dave}", "name": "nope"}, (404, {"message": "Channel not found!"})),
        (
            {"token": "{dave}", "name": "general"},
            (401, {"message": "You are not in this channel!"}),
        ),
    ],
)
async def test_getchannelmembers_errors(api, snapshot, body, expected):
    await setup_general(api)
    dave = await api.user("dave")
    body = {k: v.replace("{dave}", dave) for k, v in body.items()}
    before = snapshot()
    assert await api.post("getchannelmembers", body) == expected
    assert snapshot() == before


async def test_getchannels_follows_every_membership_change_at_once(api):
    """Each user's channel list is kept in memory: every change is seen by the next call."""
    alice, bob, carol, general_id = await setup_general(api)

    async def channels(token):
        status, body = await api.post("getchannels", {"token": token})
        return [c["channel_name"] for c in body["channels"]] if status == 200 else status

    assert await channels(bob) == ["general"]  # read, and kept
    random_id = await api.channel(alice, "random", "bob")
    assert await channels(bob) == ["general", "random"]
    await api.ok("leavechannel", {"token": bob, "name": "general"})
    assert await channels(bob) == ["random"]
    await api.ok("removeuserfromchannel", {"token": alice, "name": "random", "username": "bob"})
    assert await channels(bob) == 404
    assert await channels(alice) == ["general", "random"]
    await api.ok("addusertochannel", {"token": alice, "name": "random", "username": "carol"})
    assert await channels(carol) == ["general", "random"]
    assert general_id < random_id


# --- leavechannel -----------------------------------------------------------------------


async def test_leavechannel_and_the_channel_stays_when_the_last_member_leaves(api):
    alice = await api.user("alice")
    await api.channel(alice, "solo")
    message_id = await api.send(alice, "solo", "anyone?")
    assert await api.post("leavechannel", {"token": alice, "name": "Solo"}) == (
        200,
        {"message": "Left channel!", "channel_name": "solo"},
    )
    assert await api.post("getchannels", {"token": alice}) == (
        404,
        {"message": "You are not in any channels!"},
    )
    assert await api.post("makechannel", {"token": alice, "name": "solo"}) == (
        409,
        {"message": "Channel exists!"},
    )
    # no longer a member: the channel's messages are closed to alice, but not deleted
    assert await api.post("readmessagesfromchannel", {"token": alice, "name": "solo"}) == (
        401,
        {"message": "You are not in this channel!"},
    )
    assert await api.post(
        "readmessagesfromchannel", {"token": alice, "message_id": message_id}
    ) == (403, {"message": "Your not allowed to read this message!"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "x"}, (400, {"message": "Missing or invalid field: name!"})),
        ({"token": "x", "name": "general"}, INVALID_TOKEN),
        ({"token": "{dave}", "name": "nope"}, (404, {"message": "Channel not found!"})),
        (
            {"token": "{dave}", "name": "general"},
            (401, {"message": "You are not in this channel!"}),
        ),
    ],
)
async def test_leavechannel_errors(api, snapshot, body, expected):
    await setup_general(api)
    dave = await api.user("dave")
    body = {k: v.replace("{dave}", dave) for k, v in body.items()}
    before = snapshot()
    assert await api.post("leavechannel", body) == expected
    assert snapshot() == before


async def test_leaving_stops_the_channels_events_at_once_on_every_socket(api, sock):
    alice, bob, _, channel_id = await setup_general(api)
    tabs = [await sock(bob), await sock(bob)]
    await api.ok("leavechannel", {"token": bob, "name": "general"})
    await api.send(alice, "general", "bob is gone")
    for tab in tabs:
        await barrier(api, alice, tab, "bob")
        assert tab.named("removed_from_channel") == [
            {"channel_name": "general", "channel_id": channel_id, "by": "bob"}
        ]
        assert tab.named("new_message") == []


# --- removeuserfromchannel --------------------------------------------------------------


async def test_the_creator_removes_a_member_who_is_told_and_hears_nothing_more(api, sock):
    alice, bob, carol, channel_id = await setup_general(api)
    bob_sock, carol_sock = await sock(bob), await sock(carol)
    body = {"token": alice, "name": "general", "username": "BOB"}
    assert await api.post("removeuserfromchannel", body) == (
        200,
        {"message": "User removed from channel!", "channel_name": "general", "username": "bob"},
    )
    await api.send(alice, "general", "after bob")
    assert (await carol_sock.next("new_message"))[1]["message"] == "after bob"
    await barrier(api, alice, bob_sock, "bob")
    assert bob_sock.named("removed_from_channel") == [
        {"channel_name": "general", "channel_id": channel_id, "by": "alice"}
    ]
    assert bob_sock.named("new_message") == []
    assert carol_sock.named("removed_from_channel") == []
    assert await api.post("getchannelmembers", {"token": alice, "name": "general"}) == (
        200,
        {"channel_name": "general", "members": ["alice", "carol"], "creator": "alice"},
    )
    # bob can be added back
    body = {"token": carol, "name": "general", "username": "bob"}
    assert (await api.post("addusertochannel", body))[0] == 200


@pytest.mark.parametrize(
    ("who", "username", "expected"),
    [
        ("bob", "carol", (403, {"message": "Only the channel's creator can remove users!"})),
        ("dave", "carol", (401, {"message": "You are not in this channel!"})),
        ("alice", "nobody", (404, {"message": "User not found!"})),
        ("alice", "dave", (404, {"message": "User is not in this channel!"})),
        ("bob", "nobody", (404, {"message": "User not found!"})),  # existence before permission
    ],
)
async def test_removeuserfromchannel_errors(api, snapshot, who, username, expected):
    tokens = dict(zip(("alice", "bob", "carol"), (await setup_general(api))[:3], strict=True))
    tokens["dave"] = await api.user("dave")
    before = snapshot()
    body = {"token": tokens[who], "name": "general", "username": username}
    assert await api.post("removeuserfromchannel", body) == expected
    assert snapshot() == before


async def test_removeuserfromchannel_field_and_token_errors(api, snapshot):
    await setup_general(api)
    before = snapshot()
    assert await api.post("removeuserfromchannel", {"token": "x", "name": "general"}) == (
        400,
        {"message": "Missing or invalid field: username!"},
    )
    body = {"token": "x", "name": "nope", "username": "bob"}
    assert await api.post("removeuserfromchannel", body) == INVALID_TOKEN
    assert snapshot() == before


# --- revoketoken ------------------------------------------------------------------------


async def test_revoketoken_logs_out_everywhere_at_once(api, sock):
    alice = await api.user("alice")
    tabs = [await sock(alice), await sock(alice)]
    assert await api.post("revoketoken", {"token": alice}) == (
        200,
        {"message": "Token revoked!"},
    )
    for tab in tabs:
        await tab.next("disconnect")
        assert tab.named("api_v3_error") == [{"message": "Token revoked!"}]
    assert await api.post("getchannels", {"token": alice}) == INVALID_TOKEN
    assert await api.post("revoketoken", {"token": alice}) == INVALID_TOKEN
    creds = {"username": "alice", "password": PASSWORD}
    assert await api.post("gettoken", creds) == (401, {"message": "No token!"})
    assert (await api.ok("generatetoken", creds))["message"] == "Made token!"


async def test_revoketoken_errors(api, snapshot):
    await api.user("alice")
    before = snapshot()
    assert await api.post("revoketoken", {}) == (
        400,
        {"message": "Missing or invalid field: token!"},
    )
    assert await api.post("revoketoken", {"token": "nope"}) == INVALID_TOKEN
    assert snapshot() == before


# --- changepassword ---------------------------------------------------------------------


async def test_changepassword_replaces_password_and_token(api, sock):
    alice = await api.user("alice")
    tab = await sock(alice)
    body = {"username": "ALICE", "password": PASSWORD, "new_password": NEW_PASSWORD}
    status, got = await api.post("changepassword", body)
    assert (status, got) == (200, {"message": "Password changed!", "token": got["token"]})
    assert UUID4_RE.fullmatch(got["token"]) and got["token"] != alice
    await tab.next("disconnect")
    assert tab.named("api_v3_error") == [{"message": "Token changed!"}]
    assert await api.post("getchannels", {"token": alice}) == INVALID_TOKEN
    assert await api.post("login", {"username": "alice", "password": PASSWORD}) == (
        401,
        {"message": "Invalid username or password!"},
    )
    assert await api.post("login", {"username": "alice", "password": NEW_PASSWORD}) == (
        200,
        {"message": "Login successful!"},
    )
    assert await api.post("gettoken", {"username": "alice", "password": NEW_PASSWORD}) == (
        200,
        {"message": "Returning token!", "token": got["token"]},
    )


PASSWORD_RULES = (
    411,
    {
        "message": "Password needs to have 8-20 chars minimum one number minimum one capital"
        " letter minimum one special symbol no empty symbols!"
    },
)

NEW = {"new_password": NEW_PASSWORD}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"username": "alice", "password": PASSWORD},
            (400, {"message": "Missing or invalid field: new_password!"}),
        ),
        ({"username": "alice", "password": PASSWORD, "new_password": "short"}, PASSWORD_RULES),
        ({"username": "alice", "password": "short", **NEW}, PASSWORD_RULES),
        (
            {"username": "al", "password": PASSWORD, **NEW},
            (411, {"message": "Username needs to be 3-20 chars long!"}),
        ),
        ({"username": "alice", "password": "Wr0ng!Pass", **NEW}, BAD_CREDENTIALS),
        ({"username": "nobody", "password": PASSWORD, **NEW}, BAD_CREDENTIALS),
    ],
)
async def test_changepassword_errors(api, snapshot, body, expected):
    await api.user("alice")
    before = snapshot()
    assert await api.post("changepassword", body) == expected
    assert snapshot() == before


async def test_changepassword_is_under_the_login_limit(api):
    await api.register("alice")
    body = {"username": "alice", "password": "Wr0ng!Pass", "new_password": NEW_PASSWORD}
    answers = await asyncio.gather(*(api.post("changepassword", body) for _ in range(11)))
    assert sorted(status for status, _ in answers) == [401] * 10 + [429]


# --- deleteaccount ----------------------------------------------------------------------


async def test_deleteaccount_removes_the_account_and_its_messages_text(api, sock, db_path):
    alice, bob, carol, _ = await setup_general(api)
    bob_sock, alice_sock = await sock(bob), await sock(alice)
    public_id = await api.public(alice, "alice-public-text")
    channel_id = await api.send(alice, "general", "alice-channel-text")
    to_bob = await api.dm(alice, "bob", "alice-dm-text")
    from_bob = await api.dm(bob, "alice", "bob to alice")
    kept = await api.send(bob, "general", "bob stays")

    creds = {"username": "Alice", "password": PASSWORD}
    assert await api.post("deleteaccount", creds) == (200, {"message": "Account deleted!"})

    await alice_sock.next("disconnect")
    assert alice_sock.named("api_v3_error") == [{"message": "Account deleted!"}]
    await barrier(api, carol, bob_sock, "bob")
    assert bob_sock.named("message_deleted") == [
        {"id": public_id, "kind": "public", "channel": None},
        {"id": channel_id, "kind": "channel", "channel": "general"},
    ]
    assert await api.post("login", creds) == (401, {"message": "Invalid username or password!"})
    assert await api.post("getchannels", {"token": alice}) == INVALID_TOKEN
    assert await api.post("getchannelmembers", {"token": bob, "name": "general"}) == (
        200,
        {"channel_name": "general", "members": ["bob", "carol"], "creator": None},
    )
    assert (await api.ok("getmessagesforeveryone", {"token": bob}))["messages"] == []
    got = await api.ok("readmessagesfromchannel", {"token": bob, "name": "general"})
    assert [m["id"] for m in got["messages"]] == [kept]
    assert (await api.ok("getdms", {"token": bob}))["dms"][:2] == [  # then carol's barrier
        msg(to_bob, "dm", "[deleted]", "[deleted]", recipient="bob"),
        msg(from_bob, "dm", "bob", "bob to alice", recipient="[deleted]"),
    ]
    assert await api.post("senddm", {"token": bob, "username": "alice", "message": "hi"}) == (
        404,
        {"message": "User not found!"},
    )
    raw = db_file_bytes(db_path)
    for text in (b"alice-public-text", b"alice-channel-text", b"alice-dm-text"):
        assert text not in raw
    # the name is free again, for a new account
    assert (await api.post("register", creds))[0] == 201


async def test_deleted_is_not_a_username_anyone_can_take(api, snapshot):
    before = snapshot()
    body = {"username": "[DELETED]", "password": PASSWORD}
    assert await api.post("register", body) == (401, {"message": "User exists!"})
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"username": "alice"}, (400, {"message": "Missing or invalid field: password!"})),
        ({"username": "alice", "password": "Wr0ng!Pass"}, BAD_CREDENTIALS),
        ({"username": "nobody", "password": PASSWORD}, BAD_CREDENTIALS),
        ({"username": "alice", "password": "short"}, PASSWORD_RULES),
    ],
)
async def test_deleteaccount_errors(api, snapshot, body, expected):
    await api.user("alice")
    before = snapshot()
    assert await api.post("deleteaccount", body) == expected
    assert snapshot() == before
