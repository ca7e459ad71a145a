"""Direct messages: seed "Dm system", SPEC §4 (senddm, getdms with its filter and paging)."""

import pytest
from helpers import ID, INVALID_TOKEN, msg

USER_NOT_FOUND = (404, {"message": "User not found!"})
NO_DMS = (404, {"message": "No dms!"})


@pytest.fixture
async def tokens(api):
    return {name: await api.user(name) for name in ("alice", "bob", "carol", "dave")}


async def dms(api, token, **extra):
    return (await api.ok("getdms", {"token": token, **extra}))["dms"]


async def test_senddm_stores_a_dm_both_sides_see(api, tokens):
    status, body = await api.post(
        "senddm", {"token": tokens["alice"], "username": "bob", "message": "psst"}
    )
    assert (status, body) == (200, {"message": "Dm message sent!", "id": ID})
    expected = {"dms": [msg(body["id"], "dm", "alice", "psst", recipient="bob")]}
    assert await api.post("getdms", {"token": tokens["alice"]}) == (200, expected)
    assert await api.post("getdms", {"token": tokens["bob"], "count": 50}) == (200, expected)


async def test_senddm_matches_the_username_case_insensitively_and_answers_the_stored_one(api):
    alice = await api.user("Alice")
    await api.register("Bob")
    message_id = await api.dm(alice, "bOB", "hi")
    assert await dms(api, alice) == [msg(message_id, "dm", "Alice", "hi", recipient="Bob")]


async def test_dm_to_oneself_is_one_message(api, tokens):
    message_id = await api.dm(tokens["alice"], "ALICE", "note to self")
    expected = [msg(message_id, "dm", "alice", "note to self", recipient="alice")]
    assert await dms(api, tokens["alice"]) == expected
    assert await dms(api, tokens["alice"], username="alice") == expected
    assert (await api.ok("getmysentmessages", {"token": tokens["alice"]}))[
        "sent_messages"
    ] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope", "username": "bob", "message": "hi"}, INVALID_TOKEN),
        ({"token": "nope", "username": "nobody", "message": ""}, INVALID_TOKEN),
        (
            {"token": "alice", "username": "nobody", "message": " "},
            (411, {"message": "Message needs to be 1-2000 chars long!"}),
        ),
        ({"token": "alice", "username": "nobody", "message": "hi"}, USER_NOT_FOUND),
        ({"token": "alice", "username": "", "message": "hi"}, USER_NOT_FOUND),
        ({"token": "nope"}, (400, {"message": "Missing or invalid field: username!"})),
        (
            {"token": "nope", "message": "hi"},
            (400, {"message": "Missing or invalid field: username!"}),
        ),
        (
            {"token": "nope", "username": "bob"},
            (400, {"message": "Missing or invalid field: message!"}),
        ),
        (
            {"token": "nope", "username": ["bob"], "message": "hi"},
            (400, {"message": "Missing or invalid field: username!"}),
        ),
    ],
)
async def test_senddm_errors(api, snapshot, tokens, body, expected):
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    before = snapshot()
    assert await api.post("senddm", body) == expected
    assert snapshot() == before


async def test_no_dms_is_404(api, snapshot, tokens):
    await api.dm(tokens["bob"], "carol", "not for alice")
    await api.public(tokens["alice"], "public is not a dm")
    before = snapshot()
    assert await api.post("getdms", {"token": tokens["alice"], "count": 10}) == NO_DMS
    assert await api.post("getdms", {"token": tokens["alice"], "username": "bob"}) == NO_DMS
    assert snapshot() == before


@pytest.fixture
async def conversations(api, tokens):
    """alice<->bob both ways, alice->carol, bob<->carol (not alice's)."""
    return [
        msg(
            await api.dm(tokens["alice"], "bob", "a to b"), "dm", "alice", "a to b", recipient="bob"
        ),
        msg(
            await api.dm(tokens["bob"], "alice", "b to a"), "dm", "bob", "b to a", recipient="alice"
        ),
        msg(
            await api.dm(tokens["alice"], "carol", "a to c"),
            "dm",
            "alice",
            "a to c",
            recipient="carol",
        ),
        msg(
            await api.dm(tokens["carol"], "bob", "c to b"), "dm", "carol", "c to b", recipient="bob"
        ),
        msg(
            await api.dm(tokens["bob"], "alice", "b to a 2"),
            "dm",
            "bob",
            "b to a 2",
            recipient="alice",
        ),
    ]


@pytest.mark.parametrize(
    ("reader", "extra", "indexes"),
    [
        ("alice", {}, [0, 1, 2, 4]),  # sent and received, oldest first
        ("bob", {}, [0, 1, 3, 4]),
        ("carol", {}, [2, 3]),
        ("alice", {"username": "bob"}, [0, 1, 4]),
        ("alice", {"username": "BOB"}, [0, 1, 4]),
        ("alice", {"username": "carol"}, [2]),
        ("alice", {"username": "dave"}, []),  # a user, but no conversation: 200 []
        ("alice", {"username": "alice"}, []),
        ("alice", {"username": None}, [0, 1, 2, 4]),  # null counts as absent
        ("bob", {"username": "carol", "count": 1}, [3]),
        ("alice", {"count": 2}, [2, 4]),
        ("alice", {"count": "3", "username": "bob"}, [0, 1, 4]),
        ("alice", {"before": "index 4"}, [0, 1, 2]),
        ("alice", {"before": "index 4", "count": 1}, [2]),
        ("alice", {"before": "index 2", "username": "bob"}, [0, 1]),
        ("alice", {"before": "index 0"}, []),  # a before that leaves nothing: 200 []
        ("alice", {"before": 10**30, "count": "1"}, [4]),
    ],
)
async def test_getdms(api, tokens, conversations, reader, extra, indexes):
    if isinstance(extra.get("before"), str):
        extra = {**extra, "before": conversations[int(extra["before"].split()[1])]["id"]}
    assert await api.post("getdms", {"token": tokens[reader], **extra}) == (
        200,
        {"dms": [conversations[i] for i in indexes]},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"token": "nope"}, INVALID_TOKEN),
        ({"token": "nope", "username": "nobody"}, INVALID_TOKEN),
        ({"token": "alice", "username": "nobody"}, USER_NOT_FOUND),
        (
            {"token": "alice", "username": 7},
            (400, {"message": "Missing or invalid field: username!"}),
        ),
        ({"token": "alice", "count": 0}, (400, {"message": "Missing or invalid field: count!"})),
        (
            {"token": "alice", "count": "x", "username": 7},
            (400, {"message": "Missing or invalid field: count!"}),
        ),
        ({"token": "alice", "before": -5}, (400, {"message": "Missing or invalid field: before!"})),
        ({}, (400, {"message": "Missing or invalid field: token!"})),
    ],
)
async def test_getdms_errors(api, snapshot, tokens, conversations, body, expected):
    body = {**body, "token": tokens.get(body["token"], body["token"])} if "token" in body else body
    before = snapshot()
    assert await api.post("getdms", body) == expected
    assert snapshot() == before


async def test_getdms_default_count_is_the_newest_50(api, tokens):
    # 54 DMs to alice from three senders (each stays under the per-user send limit)
    senders = ("bob", "carol", "dave")
    ids = [await api.dm(tokens[senders[i % 3]], "alice", f"dm {i}") for i in range(54)]
    got = await dms(api, tokens["alice"])
    assert [m["id"] for m in got] == ids[4:]
    assert [m["id"] for m in await dms(api, tokens["alice"], count=1000)] == ids
