"""Messages: seed "Messaging system", SPEC §4 (message objects, kinds, reading, paging, delete)."""

import uuid
from datetime import UTC, datetime

import pytest
from helpers import ID, INVALID_TOKEN, db_file_bytes, msg

MESSAGE_411 = (411, {"message": "Message needs to be 1-2000 chars long!"})
NOT_FOUND = (404, {"message": "Message not found!"})
NOT_ALLOWED = (403, {"message": "Your not allowed to read this message!"})
NOT_YOURS = (403, {"message": "You can only delete your messages!"})
NO_DISCORD = (503, {"message": "Discord bot is not connected!"})


@pytest.fixture
async def tokens(api):
    """alice and bob share the channel "general"; carol is in no channel."""
    tokens = {name: await api.user(name) for name in ("alice", "bob", "carol")}
    await api.channel(tokens["alice"], "general", "bob")
    return tokens


async def feed(api, token, **extra):
    return (await api.ok("getmessagesforeveryone", {"token": token, **extra}))["messages"]


async def sent(api, token, **extra):
    return (await api.ok("getmysentmessages", {"token": token, **extra}))["sent_messages"]


# --- message text: 1-2000 characters, at least one non-whitespace ------------------------------

SEND_ENDPOINTS = {
    "senddcmsgwithtoken": ({}, (200, {"message": "Sent message!", "id": ID})),
    "sendmessage": ({"channel": "general"}, (200, {"message": "Message sent!", "id": ID})),
    "senddm": ({"username": "bob"}, (200, {"message": "Dm message sent!", "id": ID})),
    "senddcmsg": ({"channel": "general"}, NO_DISCORD),
}
BAD_MESSAGES = {
    "empty": "",
    "one space": " ",
    "only whitespace": "\n\t \r",
    "only Unicode spaces": "\u3000\u00a0\u2003",
    "2001 chars": "a" * 2001,
    "2001 emoji": "😀" * 2001,
}
GOOD_MESSAGES = {
    "1 char": "a",
    "2000 chars": "a" * 2000,
    "2000 emoji": "😀" * 2000,
    "2000 with spaces around": " " + "x" * 1998 + " ",
    "spaces kept": "  x  ",
    "lines": "line one\nline two",
    "markup stays text": "<b>@everyone</b> '; DROP TABLE users; --",
}


@pytest.mark.parametrize("endpoint", SEND_ENDPOINTS)
@pytest.mark.parametrize("text", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
async def test_bad_message_text_is_411(api, snapshot, tokens, endpoint, text):
    fields, _ = SEND_ENDPOINTS[endpoint]
    before = snapshot()
    body = {"token": tokens["alice"], "message": text, **fields}
    assert await api.post(endpoint, body) == MESSAGE_411
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", SEND_ENDPOINTS)
@pytest.mark.parametrize("text", GOOD_MESSAGES.values(), ids=GOOD_MESSAGES.keys())
async def test_good_message_text_is_accepted_and_stored_whole(api, tokens, endpoint, text):
    fields, success = SEND_ENDPOINTS[endpoint]
    status, body = await api.post(endpoint, {"token": tokens["alice"], "message": text, **fields})
    assert (status, body) == success
    if status == 200:
        read = await api.ok(
            "readmessagesfromchannel", {"token": tokens["alice"], "message_id": body["id"]}
        )
        assert read["messages"][0]["message"] == text


@pytest.mark.parametrize("endpoint", SEND_ENDPOINTS)
async def test_token_is_checked_before_message_text(api, snapshot, tokens, endpoint):
    fields, _ = SEND_ENDPOINTS[endpoint]
    before = snapshot()
    assert await api.post(endpoint, {"token": "nope", "message": "", **fields}) == INVALID_TOKEN
    assert snapshot() == before


@pytest.mark.parametrize(
    ("endpoint", "fields"),
    [
        ("sendmessage", {"channel": "nowhere"}),
        ("senddm", {"username": "nobody"}),
        ("senddcmsg", {"channel": "nowhere"}),
    ],
)
async def test_message_text_is_checked_before_the_target(api, snapshot, tokens, endpoint, fields):
    before = snapshot()
    assert (
        await api.post(endpoint, {"token": tokens["alice"], "message": " ", **fields})
        == MESSAGE_411
    )
    assert snapshot() == before


# --- senddcmsgwithtoken and getmessagesforeveryone: the public feed ----------------------------


async def test_senddcmsgwithtoken_stores_a_public_message(api, tokens):
    status, body = await api.post(
        "senddcmsgwithtoken", {"token": tokens["alice"], "message": "hi all"}
    )
    assert (status, body) == (200, {"message": "Sent message!", "id": ID})
    expected = [msg(body["id"], "public", "alice", "hi all")]
    for reader in ("alice", "bob", "carol"):
        assert await api.post("getmessagesforeveryone", {"token": tokens[reader]}) == (
            200,
            {"message": "Got messages!", "messages": expected},
        )


async def test_timestamp_is_server_time_in_utc(api, tokens):
    start = datetime.now(UTC).replace(microsecond=0)
    await api.public(tokens["alice"], "what time is it")
    [message] = await feed(api, tokens["bob"])
    stamp = datetime.strptime(message["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert start <= stamp <= datetime.now(UTC)


async def test_empty_feed_is_200_with_an_empty_list(api, tokens):
    assert await api.post("getmessagesforeveryone", {"token": tokens["alice"], "count": 5}) == (
        200,
        {"message": "Got messages!", "messages": []},
    )


async def test_feed_holds_only_public_messages(api, tokens):
    public_id = await api.public(tokens["bob"], "for everyone")
    await api.send(tokens["alice"], "general", "for the channel")
    await api.dm(tokens["alice"], "bob", "for bob")
    assert await feed(api, tokens["carol"]) == [msg(public_id, "public", "bob", "for everyone")]


async def test_ids_are_unique_and_increasing_across_kinds(api, tokens):
    ids = [
        await api.public(tokens["alice"], "one"),
        await api.send(tokens["alice"], "general", "two"),
        await api.dm(tokens["alice"], "bob", "three"),
        await api.public(tokens["bob"], "four"),
        await api.dm(tokens["bob"], "alice", "five"),
    ]
    assert ids == sorted(set(ids))


async def test_sender_uses_the_registered_spelling(api):
    await api.register("Alice")
    token = (await api.ok("generatetoken", {"username": "aLiCe", "password": "Passw0rd!"}))["token"]
    message_id = await api.public(token, "hello")
    assert await feed(api, token) == [msg(message_id, "public", "Alice", "hello")]


@pytest.fixture
async def feed_of_55(api, tokens):
    """55 public messages from three senders (each stays under the per-user send limit)."""
    ids = []
    for i in range(55):
        sender = ("alice", "bob", "carol")[i % 3]
        ids.append(await api.public(tokens[sender], f"public {i}"))
    return ids


# (extra body fields, slice of the 55 ids expected: newest `count` before `before`, oldest first)
PAGING = [
    ({}, slice(5, 55)),
    ({"count": None, "before": None}, slice(5, 55)),
    ({"count": 1}, slice(54, 55)),
    ({"count": "3"}, slice(52, 55)),
    ({"count": 55}, slice(0, 55)),
    ({"count": 1000}, slice(0, 55)),
    ({"count": "1000"}, slice(0, 55)),
    ({"before": 10}, slice(0, 10)),  # index 10 -> its id, filled in below
    ({"before": 10, "count": 4}, slice(6, 10)),
    ({"before": "10", "count": "4"}, slice(6, 10)),
    ({"before": 0}, slice(0, 0)),  # id 0: nothing is older
    ({"before": 10**30}, slice(5, 55)),  # an id too large to exist: everything is older
    ({"before": "9" * 40, "count": 2}, slice(53, 55)),
]


def _resolve_before(extra, ids):
    """`before` given as a small index into ids means that message's id; 0 and huge stay literal."""
    before = extra.get("before")
    if isinstance(before, int) and 0 < before < len(ids):
        return {**extra, "before": ids[before]}
    if isinstance(before, str) and before.isdigit() and 0 < int(before) < len(ids):
        return {**extra, "before": str(ids[int(before)])}
    return extra


@pytest.mark.parametrize(("extra", "window"), PAGING)
async def test_feed_paging(api, tokens, feed_of_55, extra, window):
    got = await feed(api, tokens["carol"], **_resolve_before(extra, feed_of_55))
    assert [m["id"] for m in got] == feed_of_55[window]


async def test_paging_backwards_with_before_walks_the_whole_feed(api, tokens):
    ids = [await api.public(tokens["alice"], f"m{i}") for i in range(10)]
    seen, before = [], None
    while True:
        page = await feed(api, tokens["bob"], count=3, before=before)
        if not page:
            break
        assert len(page) <= 3 and [m["id"] for m in page] == sorted(m["id"] for m in page)
        seen = [m["id"] for m in page] + seen
        before = page[0]["id"]
    assert seen == ids


# --- getmysentmessages --------------------------------------------------------------------------


async def test_no_sent_messages_is_404(api, snapshot, tokens):
    await api.dm(tokens["bob"], "alice", "received, not sent")
    before = snapshot()
    assert await api.post("getmysentmessages", {"token": tokens["alice"]}) == (
        404,
        {"message": "No sent messages!"},
    )
    assert snapshot() == before


async def test_sent_messages_hold_every_kind_the_user_sent(api, tokens):
    public_id = await api.public(tokens["alice"], "pub")
    await api.public(tokens["bob"], "bob's pub")
    channel_id = await api.send(tokens["alice"], "GENERAL", "chan")
    await api.dm(tokens["bob"], "alice", "to alice")
    dm_id = await api.dm(tokens["alice"], "BOB", "to bob")
    assert await api.post("getmysentmessages", {"token": tokens["alice"]}) == (
        200,
        {
            "sent_messages": [
                msg(public_id, "public", "alice", "pub"),
                msg(channel_id, "channel", "alice", "chan", channel="general"),
                msg(dm_id, "dm", "alice", "to bob", recipient="bob"),
            ]
        },
    )


async def test_sent_messages_paging(api, tokens):
    ids = [await api.public(tokens["alice"], f"m{i}") for i in range(6)]
    assert [m["id"] for m in await sent(api, tokens["alice"], count=2)] == ids[4:]
    assert [m["id"] for m in await sent(api, tokens["alice"], count="2", before=ids[3])] == ids[1:3]
    assert [m["id"] for m in await sent(api, tokens["alice"], before=str(ids[1]))] == ids[:1]
    assert await api.post("getmysentmessages", {"token": tokens["alice"], "before": ids[0]}) == (
        200,
        {"sent_messages": []},
    )


async def test_senddcmsg_without_discord_keeps_nothing(api, snapshot, tokens):
    before = snapshot()
    body = {"token": tokens["alice"], "channel": "general", "message": "to discord"}
    assert await api.post("senddcmsg", body) == NO_DISCORD
    assert snapshot() == before
    assert await api.post("getmysentmessages", {"token": tokens["alice"]}) == (
        404,
        {"message": "No sent messages!"},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope", "channel": "general", "message": "hi"}, INVALID_TOKEN),
        ({"token": "nope", "channel": "general", "message": ""}, INVALID_TOKEN),
        ({"token": "alice", "channel": "general", "message": ""}, MESSAGE_411),
        ({"token": "alice", "channel": "general", "message": "x" * 2001}, MESSAGE_411),
        ({"token": "alice", "channel": "nowhere", "message": "hi"}, NO_DISCORD),
        ({"token": "carol", "channel": "general", "message": "hi"}, NO_DISCORD),
        ({"token": "nope"}, (400, {"message": "Missing or invalid field: channel!"})),
        (
            {"token": "nope", "channel": "x"},
            (400, {"message": "Missing or invalid field: message!"}),
        ),
    ],
)
async def test_senddcmsg_without_discord(api, snapshot, tokens, body, expected):
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    before = snapshot()
    assert await api.post("senddcmsg", body) == expected
    assert snapshot() == before


# --- readmessagesfromchannel by message_id: who may read what ----------------------------------


@pytest.fixture
async def three_kinds(api, tokens):
    return {
        "public": await api.public(tokens["alice"], "public text"),
        "channel": await api.send(tokens["alice"], "general", "channel text"),
        "dm": await api.dm(tokens["alice"], "bob", "dm text"),
    }


EXPECTED_OBJECTS = {
    "public": lambda i: msg(i, "public", "alice", "public text"),
    "channel": lambda i: msg(i, "channel", "alice", "channel text", channel="general"),
    "dm": lambda i: msg(i, "dm", "alice", "dm text", recipient="bob"),
}


@pytest.mark.parametrize(
    ("kind", "reader", "allowed"),
    [
        ("public", "alice", True),
        ("public", "bob", True),
        ("public", "carol", True),
        ("channel", "alice", True),
        ("channel", "bob", True),
        ("channel", "carol", False),
        ("dm", "alice", True),
        ("dm", "bob", True),
        ("dm", "carol", False),
    ],
)
async def test_read_by_id_permissions(api, snapshot, tokens, three_kinds, kind, reader, allowed):
    message_id = three_kinds[kind]
    before = snapshot()
    got = await api.post(
        "readmessagesfromchannel", {"token": tokens[reader], "message_id": message_id}
    )
    if allowed:
        assert got == (200, {"messages": [EXPECTED_OBJECTS[kind](message_id)]})
    else:
        assert got == NOT_ALLOWED
    assert snapshot() == before


async def test_member_added_later_reads_earlier_channel_messages(api, tokens, three_kinds):
    await api.ok(
        "addusertochannel", {"token": tokens["bob"], "name": "general", "username": "carol"}
    )
    body = {"token": tokens["carol"], "message_id": str(three_kinds["channel"])}
    assert await api.post("readmessagesfromchannel", body) == (
        200,
        {"messages": [EXPECTED_OBJECTS["channel"](three_kinds["channel"])]},
    )


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        (999_999, NOT_FOUND),
        ("999999", NOT_FOUND),
        (0, NOT_FOUND),
        ("0", NOT_FOUND),
        (2**63, NOT_FOUND),
        (10**30, NOT_FOUND),  # too large for SQLite's INTEGER: still simply not found
        ("9" * 100, NOT_FOUND),
        (-1, (400, {"message": "Missing or invalid field: message_id!"})),
    ],
)
async def test_read_by_id_not_found_before_not_allowed(
    api, snapshot, tokens, three_kinds, message_id, expected
):
    before = snapshot()
    body = {"token": tokens["carol"], "message_id": message_id}
    assert await api.post("readmessagesfromchannel", body) == expected
    assert snapshot() == before


async def test_read_by_id_accepts_the_id_as_a_digit_string(api, tokens, three_kinds):
    message_id = three_kinds["public"]
    expected = (200, {"messages": [EXPECTED_OBJECTS["public"](message_id)]})
    for given in (message_id, str(message_id), "00" + str(message_id)):
        body = {"token": tokens["carol"], "message_id": given}
        assert await api.post("readmessagesfromchannel", body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope", "message_id": 999_999}, INVALID_TOKEN),  # token before 404
        ({"token": "nope", "message_id": "channel"}, INVALID_TOKEN),  # token before 403
        ({"token": "nope", "name": "nowhere"}, INVALID_TOKEN),
        # message_id picks the by-id mode; name is then ignored
        ({"token": "carol", "message_id": "public", "name": "nowhere"}, "public object"),
        ({"token": "carol", "message_id": "channel", "name": "general"}, NOT_ALLOWED),
        # an optional field sent as null counts as absent: channel mode
        (
            {"token": "carol", "message_id": None, "name": "nowhere"},
            (404, {"message": "Channel not found!"}),
        ),
        # neither mode's field: name is required
        ({"token": "carol"}, (400, {"message": "Missing or invalid field: name!"})),
        ({"token": "nope"}, (400, {"message": "Missing or invalid field: name!"})),
    ],
)
async def test_read_mode_and_check_order(api, snapshot, tokens, three_kinds, body, expected):
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    if body.get("message_id") in three_kinds:
        body["message_id"] = three_kinds[body["message_id"]]
    if expected == "public object":
        expected = (200, {"messages": [EXPECTED_OBJECTS["public"](three_kinds["public"])]})
    before = snapshot()
    assert await api.post("readmessagesfromchannel", body) == expected
    assert snapshot() == before


# --- deletemessage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "deleter", "expected"),
    [
        ("public", "bob", NOT_YOURS),
        ("public", "carol", NOT_YOURS),
        ("channel", "bob", NOT_YOURS),
        ("channel", "carol", NOT_YOURS),  # exists, so 403 even for someone who cannot read it
        ("dm", "bob", NOT_YOURS),  # the recipient cannot delete it
        ("dm", "carol", NOT_YOURS),
    ],
)
async def test_deleting_someone_elses_message_is_403(
    api, snapshot, tokens, three_kinds, kind, deleter, expected
):
    before = snapshot()
    body = {"token": tokens[deleter], "message_id": three_kinds[kind]}
    assert await api.post("deletemessage", body) == expected
    assert snapshot() == before


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        (999_999, NOT_FOUND),
        ("999999", NOT_FOUND),
        (0, NOT_FOUND),
        (10**30, NOT_FOUND),
        ("9" * 100, NOT_FOUND),
        ("abc", (400, {"message": "Missing or invalid field: message_id!"})),
        (None, (400, {"message": "Missing or invalid field: message_id!"})),
    ],
)
async def test_deleting_a_missing_message(api, snapshot, tokens, three_kinds, message_id, expected):
    before = snapshot()
    assert (
        await api.post("deletemessage", {"token": tokens["bob"], "message_id": message_id})
        == expected
    )
    assert snapshot() == before


async def test_delete_checks_the_token_first(api, snapshot, tokens, three_kinds):
    before = snapshot()
    for message_id in (three_kinds["public"], 999_999):
        assert (
            await api.post("deletemessage", {"token": "nope", "message_id": message_id})
            == INVALID_TOKEN
        )
    assert snapshot() == before


async def _lists(api, tokens):
    """Every list any of the three users can see."""
    return {
        "feed": await feed(api, tokens["carol"]),
        "channel": (
            await api.ok("readmessagesfromchannel", {"token": tokens["bob"], "name": "general"})
        )["messages"],
        "dms alice": (await api.ok("getdms", {"token": tokens["alice"]}))["dms"],
        "dms bob": (await api.ok("getdms", {"token": tokens["bob"]}))["dms"],
        "sent alice": await sent(api, tokens["alice"]),
    }


@pytest.mark.parametrize("kind", ["public", "channel", "dm"])
async def test_delete_removes_the_text_everywhere(api, db_path, tokens, kind):
    # one message of each kind stays, so every list is still there after the delete
    keep = {
        "public": await api.public(tokens["alice"], "kept public"),
        "channel": await api.send(tokens["alice"], "general", "kept channel"),
        "dm": await api.dm(tokens["alice"], "bob", "kept dm"),
    }
    marker = f"MARKER-{uuid.uuid4().hex}"
    send = {
        "public": lambda: api.public(tokens["alice"], marker),
        "channel": lambda: api.send(tokens["alice"], "general", marker),
        "dm": lambda: api.dm(tokens["alice"], "bob", marker),
    }
    lists_before = await _lists(api, tokens)
    doomed = await send[kind]()
    assert marker.encode() in db_file_bytes(db_path)  # the check below can see the text

    assert await api.post("deletemessage", {"token": tokens["alice"], "message_id": doomed}) == (
        200,
        {"message": "Message deleted!"},
    )

    assert marker.encode() not in db_file_bytes(db_path)
    assert await _lists(api, tokens) == lists_before
    for reader in ("alice", "bob", "carol"):
        body = {"token": tokens[reader], "message_id": doomed}
        assert await api.post("readmessagesfromchannel", body) == NOT_FOUND
    assert (
        await api.post("deletemessage", {"token": tokens["alice"], "message_id": doomed})
        == NOT_FOUND
    )
    for kept in keep.values():
        body = {"token": tokens["alice"], "message_id": kept}
        assert (await api.post("readmessagesfromchannel", body))[0] == 200
