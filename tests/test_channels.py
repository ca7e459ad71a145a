"""Channels: seed "Channel system", SPEC §4 (names, membership, reading, sending, listing)."""

import pytest
from helpers import ID, INVALID_TOKEN, msg

NAME_411 = (411, {"message": "Channel name needs to be 1-100 chars long!"})
CHANNEL_NOT_FOUND = (404, {"message": "Channel not found!"})
NOT_IN_CHANNEL = (401, {"message": "You are not in this channel!"})


@pytest.fixture
async def tokens(api):
    return {name: await api.user(name) for name in ("alice", "bob", "carol")}


# --- makechannel --------------------------------------------------------------------------------

GOOD_NAMES = {
    "1 char": "a",
    "100 chars": "c" * 100,
    "100 emoji": "😀" * 100,
    "inner spaces": "general chat",
    "Greek": "Ωmega",
    "punctuation": "off-topic_#1",
}
BAD_NAMES = {
    "empty": "",
    "101 chars": "c" * 101,
    "101 emoji": "😀" * 101,
    "only a space": " ",
    "leading space": " general",
    "trailing space": "general ",
    "trailing newline": "general\n",
    "leading ideographic space": "\u3000general",
    "tab inside": "gen\teral",
    "newline inside": "gen\neral",
    "NUL": "gen\x00eral",
    "DEL": "gen\x7feral",
    "zero-width space U+200B": "gen\u200beral",
    "right-to-left override U+202E": "gen\u202eeral",
}


@pytest.mark.parametrize("name", GOOD_NAMES.values(), ids=GOOD_NAMES.keys())
async def test_makechannel_creates_a_channel_with_the_creator_as_member(api, tokens, name):
    status, body = await api.post("makechannel", {"token": tokens["alice"], "name": name})
    assert (status, body) == (
        200,
        {"message": "Channel created!", "channel_name": name, "channel_id": ID},
    )
    assert await api.post("getchannels", {"token": tokens["alice"]}) == (
        200,
        {"channels": [{"channel_name": name, "channel_id": body["channel_id"]}]},
    )


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
async def test_bad_channel_name_is_411(api, snapshot, tokens, name):
    before = snapshot()
    assert await api.post("makechannel", {"token": tokens["alice"], "name": name}) == NAME_411
    assert snapshot() == before


@pytest.mark.parametrize(
    ("first", "second", "exists"),
    [
        ("general", "general", True),
        ("general", "GENERAL", True),
        ("General", "gEnErAl", True),
        ("café", "CAFé", True),  # only ASCII letters differ
        ("École", "école", False),  # case folding is ASCII-only
        ("Ωmega", "ωmega", False),
    ],
)
async def test_channel_names_are_unique_case_insensitively(
    api, snapshot, tokens, first, second, exists
):
    await api.channel(tokens["alice"], first)
    before = snapshot()
    got = await api.post("makechannel", {"token": tokens["bob"], "name": second})
    if exists:
        assert got == (409, {"message": "Channel exists!"})
        assert snapshot() == before
    else:
        assert got == (
            200,
            {"message": "Channel created!", "channel_name": second, "channel_id": ID},
        )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope", "name": "general"}, INVALID_TOKEN),
        ({"token": "nope", "name": ""}, INVALID_TOKEN),  # token before the name's format
        ({"token": "nope", "name": "taken"}, INVALID_TOKEN),
        ({"token": "alice", "name": " taken"}, NAME_411),
        ({"token": "alice", "name": "TAKEN"}, (409, {"message": "Channel exists!"})),
        ({"token": "alice"}, (400, {"message": "Missing or invalid field: name!"})),
        ({"token": "alice", "name": 5}, (400, {"message": "Missing or invalid field: name!"})),
    ],
)
async def test_makechannel_errors(api, snapshot, tokens, body, expected):
    await api.channel(tokens["bob"], "taken")
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    before = snapshot()
    assert await api.post("makechannel", body) == expected
    assert snapshot() == before


async def test_channel_ids_are_distinct_integers(api, tokens):
    ids = [await api.channel(tokens["alice"], f"room {i}") for i in range(5)]
    assert len(set(ids)) == 5


# --- addusertochannel ---------------------------------------------------------------------------


async def test_addusertochannel_answers_with_stored_spellings(api):
    alice = await api.user("Alice")
    await api.register("Bob")
    await api.channel(alice, "General")
    assert await api.post(
        "addusertochannel", {"token": alice, "name": "gENERAL", "username": "bOB"}
    ) == (
        200,
        {"message": "User added to channel!", "channel_name": "General", "username": "Bob"},
    )


async def test_added_user_can_read_send_and_add(api, tokens):
    channel_id = await api.channel(tokens["alice"], "general", "bob")
    assert await api.post("getchannels", {"token": tokens["bob"]}) == (
        200,
        {"channels": [{"channel_name": "general", "channel_id": channel_id}]},
    )
    message_id = await api.send(tokens["bob"], "general", "thanks")
    assert await api.post(
        "addusertochannel", {"token": tokens["bob"], "name": "general", "username": "carol"}
    ) == (
        200,
        {"message": "User added to channel!", "channel_name": "general", "username": "carol"},
    )
    assert await api.post(
        "readmessagesfromchannel", {"token": tokens["carol"], "name": "general"}
    ) == (
        200,
        {"messages": [msg(message_id, "channel", "bob", "thanks", channel="general")]},
    )


# alice owns "general" with bob; carol is in no channel; dave does not exist
@pytest.mark.parametrize(
    ("token", "name", "username", "expected"),
    [
        ("nope", "general", "carol", INVALID_TOKEN),
        ("nope", "nowhere", "dave", INVALID_TOKEN),
        ("carol", "nowhere", "dave", CHANNEL_NOT_FOUND),  # channel first
        ("carol", "nowhere", "alice", CHANNEL_NOT_FOUND),
        ("carol", "general", "dave", NOT_IN_CHANNEL),  # then membership
        ("carol", "general", "bob", NOT_IN_CHANNEL),
        ("carol", "general", "carol", NOT_IN_CHANNEL),  # nobody adds themselves
        ("alice", "general", "dave", (404, {"message": "User not found!"})),  # then the user
        ("alice", "general", "bob", (409, {"message": "User is already in this channel!"})),
        ("alice", "general", "BOB", (409, {"message": "User is already in this channel!"})),
        ("alice", "general", "alice", (409, {"message": "User is already in this channel!"})),
        ("bob", "GENERAL", "Alice", (409, {"message": "User is already in this channel!"})),
    ],
)
async def test_addusertochannel_check_order(api, snapshot, tokens, token, name, username, expected):
    await api.channel(tokens["alice"], "general", "bob")
    before = snapshot()
    body = {"token": tokens.get(token, token), "name": name, "username": username}
    assert await api.post("addusertochannel", body) == expected
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (400, {"message": "Missing or invalid field: token!"})),
        ({"token": "nope"}, (400, {"message": "Missing or invalid field: name!"})),
        (
            {"token": "nope", "name": "general"},
            (400, {"message": "Missing or invalid field: username!"}),
        ),
        (
            {"token": "nope", "username": "bob"},
            (400, {"message": "Missing or invalid field: name!"}),
        ),
        (
            {"token": "nope", "name": "general", "username": None},
            (400, {"message": "Missing or invalid field: username!"}),
        ),
    ],
)
async def test_addusertochannel_fields(api, snapshot, tokens, body, expected):
    before = snapshot()
    assert await api.post("addusertochannel", body) == expected
    assert snapshot() == before


# --- sendmessage --------------------------------------------------------------------------------


async def test_sendmessage_stores_a_channel_message(api, tokens):
    await api.channel(tokens["alice"], "General", "bob")
    body = {"token": tokens["bob"], "message": "hello", "channel": "general"}
    status, answer = await api.post("sendmessage", body)
    assert (status, answer) == (200, {"message": "Message sent!", "id": ID})
    expected = {"messages": [msg(answer["id"], "channel", "bob", "hello", channel="General")]}
    for reader in ("alice", "bob"):
        body = {"token": tokens[reader], "name": "GENERAL"}
        assert await api.post("readmessagesfromchannel", body) == (200, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope", "message": "hi", "channel": "general"}, INVALID_TOKEN),
        ({"token": "nope", "message": "hi", "channel": "nowhere"}, INVALID_TOKEN),
        (
            {"token": "carol", "message": "", "channel": "nowhere"},
            (411, {"message": "Message needs to be 1-2000 chars long!"}),
        ),
        ({"token": "carol", "message": "hi", "channel": "nowhere"}, CHANNEL_NOT_FOUND),
        ({"token": "carol", "message": "hi", "channel": "general"}, NOT_IN_CHANNEL),
        ({"token": "nope"}, (400, {"message": "Missing or invalid field: message!"})),
        (
            {"token": "nope", "channel": "general"},
            (400, {"message": "Missing or invalid field: message!"}),
        ),
        (
            {"token": "nope", "message": "hi"},
            (400, {"message": "Missing or invalid field: channel!"}),
        ),
    ],
)
async def test_sendmessage_errors(api, snapshot, tokens, body, expected):
    await api.channel(tokens["alice"], "general", "bob")
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    before = snapshot()
    assert await api.post("sendmessage", body) == expected
    assert snapshot() == before


# --- readmessagesfromchannel by name ------------------------------------------------------------


async def test_empty_channel_is_200_with_an_empty_list(api, tokens):
    await api.channel(tokens["alice"], "quiet")
    assert await api.post(
        "readmessagesfromchannel", {"token": tokens["alice"], "name": "quiet", "count": 10}
    ) == (
        200,
        {"messages": []},
    )


async def test_channel_read_holds_only_that_channels_messages(api, tokens):
    await api.channel(tokens["alice"], "one", "bob")
    await api.channel(tokens["alice"], "two", "bob")
    first = await api.send(tokens["alice"], "one", "in one")
    await api.send(tokens["bob"], "two", "in two")
    await api.public(tokens["alice"], "public")
    await api.dm(tokens["alice"], "bob", "dm")
    last = await api.send(tokens["bob"], "ONE", "also in one")
    assert await api.post("readmessagesfromchannel", {"token": tokens["bob"], "name": "one"}) == (
        200,
        {
            "messages": [
                msg(first, "channel", "alice", "in one", channel="one"),
                msg(last, "channel", "bob", "also in one", channel="one"),
            ]
        },
    )


@pytest.mark.parametrize(
    ("token", "name", "expected"),
    [
        ("nope", "general", INVALID_TOKEN),
        ("nope", "nowhere", INVALID_TOKEN),
        ("carol", "nowhere", CHANNEL_NOT_FOUND),  # 404 before 401
        ("carol", "general", NOT_IN_CHANNEL),
        ("carol", "GENERAL", NOT_IN_CHANNEL),
    ],
)
async def test_channel_read_errors(api, snapshot, tokens, token, name, expected):
    await api.channel(tokens["alice"], "general", "bob")
    await api.send(tokens["alice"], "general", "secret")
    before = snapshot()
    body = {"token": tokens.get(token, token), "name": name}
    assert await api.post("readmessagesfromchannel", body) == expected
    assert snapshot() == before


@pytest.fixture
async def channel_of_55(api, tokens):
    """55 messages in "general" from three members, each under the per-user send limit."""
    await api.channel(tokens["alice"], "general", "bob", "carol")
    return [
        await api.send(tokens[("alice", "bob", "carol")[i % 3]], "general", f"m{i}")
        for i in range(55)
    ]


@pytest.mark.parametrize(
    ("extra", "window"),
    [
        ({}, slice(5, 55)),
        ({"count": None}, slice(5, 55)),
        ({"count": 1}, slice(54, 55)),
        ({"count": "7"}, slice(48, 55)),
        ({"count": 1000}, slice(0, 55)),
        ({"before": "index 20"}, slice(0, 20)),
        ({"before": "index 20", "count": 5}, slice(15, 20)),
        ({"before": 0}, slice(0, 0)),
        ({"before": 10**30, "count": 3}, slice(52, 55)),
    ],
)
async def test_channel_read_paging(api, tokens, channel_of_55, extra, window):
    if extra.get("before") == "index 20":
        extra = {**extra, "before": channel_of_55[20]}
    got = await api.ok(
        "readmessagesfromchannel", {"token": tokens["carol"], "name": "general", **extra}
    )
    assert [m["id"] for m in got["messages"]] == channel_of_55[window]


# --- getchannels --------------------------------------------------------------------------------


async def test_no_channels_is_404(api, snapshot, tokens):
    await api.channel(tokens["bob"], "not alice's")
    before = snapshot()
    assert await api.post("getchannels", {"token": tokens["alice"]}) == (
        404,
        {"message": "You are not in any channels!"},
    )
    assert snapshot() == before


async def test_getchannels_lists_memberships_by_channel_id(api, tokens):
    zulu = await api.channel(tokens["alice"], "Zulu")
    others = await api.channel(tokens["bob"], "bob only")
    alpha = await api.channel(tokens["bob"], "Alpha", "ALICE")
    mid = await api.channel(tokens["alice"], "mid")
    assert others not in (zulu, alpha, mid)
    assert await api.post("getchannels", {"token": tokens["alice"]}) == (
        200,
        {
            "channels": sorted(
                [
                    {"channel_name": "Zulu", "channel_id": zulu},
                    {"channel_name": "Alpha", "channel_id": alpha},
                    {"channel_name": "mid", "channel_id": mid},
                ],
                key=lambda c: c["channel_id"],
            )
        },
    )


async def test_getchannels_bad_token(api, snapshot, tokens):
    await api.channel(tokens["alice"], "general")
    before = snapshot()
    assert await api.post("getchannels", {"token": "nope"}) == INVALID_TOKEN
    assert await api.post("getchannels", {}) == (
        400,
        {"message": "Missing or invalid field: token!"},
    )
    assert snapshot() == before
