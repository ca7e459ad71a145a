"""SPEC §1, fields: the first missing or invalid one is named, the order of checks, the
rules for numbers (count, message_id, before).
"""

import pytest
from helpers import ENDPOINT_FIELDS, ENDPOINTS, ID, INVALID_TOKEN, PASSWORD, invalid, msg, request

# --- fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_empty_object_names_the_first_field(api, snapshot, endpoint):
    before = snapshot()
    assert await api.post(endpoint, {}) == invalid(ENDPOINT_FIELDS[endpoint][0])
    assert snapshot() == before


WRONG_TYPES = {
    "null": None,
    "integer": 5,
    "float": 1.5,
    "boolean": True,
    "list": ["x"],
    "object": {"x": 1},
    "lone surrogate": "\ud800",
    "lone surrogate inside text": "abc\udfffdef",
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("value", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
async def test_each_text_field_must_be_a_valid_string(api, snapshot, endpoint, value):
    """Each field in turn is wrong while the earlier ones are right (a bogus token still is
    a string): the 400 names that field, before any token or format check."""
    fields = ENDPOINT_FIELDS[endpoint]
    good = {"username": "alice", "password": PASSWORD, "token": "nope", "message": "hi"}
    good |= {"name": "general", "channel": "general", "message_id": 1}
    before = snapshot()
    for i, field in enumerate(fields):
        if field == "message_id" and type(value) in (str, int):
            continue  # message_id as a string or integer: see the number rules below
        body = (
            {f: good[f] for f in fields[:i]}
            | {field: value}
            | {f: good[f] for f in fields[i + 1 :]}
        )
        assert await api.post(endpoint, body) == invalid(field), body
    assert snapshot() == before


async def test_lone_surrogate_is_invalid_even_where_it_would_otherwise_be_fine(api, snapshot):
    token = await api.user("alice")
    before = snapshot()
    raw = b'{"token": "%s", "message": "hi \\ud800 there"}' % token.encode()
    assert await request(api, "POST", "/api/v3/senddcmsgwithtoken/", data=raw) == invalid("message")
    raw = b'{"username": "ali\\udc00ce", "password": "Passw0rd!"}'
    assert await request(api, "POST", "/api/v3/register/", data=raw) == invalid("username")
    assert snapshot() == before
    # a proper surrogate pair is just an emoji
    raw = b'{"token": "%s", "message": "\\ud83d\\ude00"}' % token.encode()
    status, body = await request(api, "POST", "/api/v3/senddcmsgwithtoken/", data=raw)
    assert (status, body) == (200, {"message": "Sent message!", "id": ID})


async def test_unknown_fields_are_ignored(api):
    body = {"username": "alice", "password": PASSWORD, "email": "a@example.com", "admin": True}
    assert await api.post("register", body) == (201, {"message": "User registered successfully!"})


async def test_optional_fields_sent_as_null_count_as_absent(api):
    token = await api.user("alice")
    message_id = await api.public(token, "hello")
    body = {"token": token, "count": None, "before": None}
    assert await api.post("getmessagesforeveryone", body) == (
        200,
        {"message": "Got messages!", "messages": [msg(message_id, "public", "alice", "hello")]},
    )


# --- the order of checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        # body shape first, even with a bad token
        ("getmessagesforeveryone", {"token": "nope", "count": "x"}, invalid("count")),
        ("getmysentmessages", {"token": "nope", "before": -1}, invalid("before")),
        ("deletemessage", {"token": "nope", "message_id": "1.0"}, invalid("message_id")),
        ("sendmessage", {"token": "nope", "message": 1, "channel": 2}, invalid("message")),
        ("makechannel", {"token": None, "name": ""}, invalid("token")),
        # then the token, before the content's format
        ("senddcmsgwithtoken", {"token": "nope", "message": ""}, INVALID_TOKEN),
        ("makechannel", {"token": "nope", "name": " bad "}, INVALID_TOKEN),
        ("readmessagesfromchannel", {"token": "nope", "message_id": 10**30}, INVALID_TOKEN),
        # then the format, before the resource
        (
            "sendmessage",
            {"token": "alice", "message": "", "channel": "nowhere"},
            (411, {"message": "Message needs to be 1-2000 chars long!"}),
        ),
        (
            "senddm",
            {"token": "alice", "username": "nobody", "message": "x" * 2001},
            (411, {"message": "Message needs to be 1-2000 chars long!"}),
        ),
        # then the resource, before the permission
        (
            "readmessagesfromchannel",
            {"token": "alice", "name": "nowhere"},
            (404, {"message": "Channel not found!"}),
        ),
        (
            "addusertochannel",
            {"token": "alice", "name": "nowhere", "username": "nobody"},
            (404, {"message": "Channel not found!"}),
        ),
        (
            "deletemessage",
            {"token": "alice", "message_id": 10**30},
            (404, {"message": "Message not found!"}),
        ),
    ],
)
async def test_order_of_checks(api, snapshot, endpoint, body, expected):
    tokens = {"alice": await api.user("alice")}
    body = {**body, "token": tokens.get(body["token"], body["token"])}
    before = snapshot()
    assert await api.post(endpoint, body) == expected
    assert snapshot() == before


# --- numbers: count, message_id, before ---------------------------------------------------------

BAD_NUMBERS = {
    "negative": -1,
    "negative string": "-1",
    "plus sign": "+1",
    "float": 1.0,
    "float string": "1.0",
    "exponent": "1e3",
    "boolean true": True,
    "boolean false": False,
    "empty string": "",
    "spaces": " 5 ",
    "word": "five",
    "hex": "0x10",
    "fullwidth digit": "５",
    "Arabic-Indic digit": "٥",
    "superscript digit": "²",
    "list": [5],
    "object": {"n": 5},
}


@pytest.mark.parametrize("value", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
@pytest.mark.parametrize(
    ("endpoint", "field", "extra"),
    [
        ("getmessagesforeveryone", "count", {}),
        ("getmessagesforeveryone", "before", {}),
        ("getmysentmessages", "count", {}),
        ("getmysentmessages", "before", {}),
        ("readmessagesfromchannel", "count", {"name": "general"}),
        ("readmessagesfromchannel", "before", {"name": "general"}),
        ("readmessagesfromchannel", "message_id", {}),
        ("getdms", "count", {}),
        ("getdms", "before", {}),
        ("deletemessage", "message_id", {}),
    ],
)
async def test_bad_numbers_are_400(api, snapshot, endpoint, field, extra, value):
    token = await api.user("alice")
    await api.channel(token, "general")
    await api.public(token, "hi")
    before = snapshot()
    assert await api.post(endpoint, {"token": token, **extra, field: value}) == invalid(field)
    assert snapshot() == before


@pytest.mark.parametrize("count", [0, "0", 1001, "1001", 10**30, "9" * 40])
@pytest.mark.parametrize(
    "endpoint", ["getmessagesforeveryone", "getmysentmessages", "readmessagesfromchannel", "getdms"]
)
async def test_count_outside_1_to_1000_is_400(api, snapshot, endpoint, count):
    token = await api.user("alice")
    await api.channel(token, "general")
    await api.public(token, "hi")
    before = snapshot()
    body = {"token": token, "name": "general", "count": count}
    assert await api.post(endpoint, body) == invalid("count")
    assert snapshot() == before


@pytest.mark.parametrize("count", [1, "1", 1000, "1000", "0001"])
@pytest.mark.parametrize(
    "endpoint", ["getmessagesforeveryone", "getmysentmessages", "readmessagesfromchannel", "getdms"]
)
async def test_count_inside_1_to_1000_is_accepted(api, endpoint, count):
    token = await api.user("alice")
    await api.channel(token, "general")
    await api.public(token, "hi")
    await api.send(token, "general", "hi")
    await api.dm(token, "alice", "hi")
    status, _ = await api.post(endpoint, {"token": token, "name": "general", "count": count})
    assert status == 200


@pytest.mark.parametrize("message_id", [2**63 - 1, 2**63, 2**64, 10**30, "9" * 19, "9" * 1000])
@pytest.mark.parametrize("endpoint", ["readmessagesfromchannel", "deletemessage"])
async def test_huge_message_ids_match_nothing(api, snapshot, endpoint, message_id):
    token = await api.user("alice")
    await api.public(token, "hi")
    before = snapshot()
    body = {"token": token, "message_id": message_id}
    assert await api.post(endpoint, body) == (404, {"message": "Message not found!"})
    assert snapshot() == before


@pytest.mark.parametrize("before_id", [2**63, 10**30, "9" * 1000])
async def test_huge_before_keeps_everything(api, before_id):
    token = await api.user("alice")
    message_id = await api.public(token, "hi")
    assert await api.post("getmessagesforeveryone", {"token": token, "before": before_id}) == (
        200,
        {"message": "Got messages!", "messages": [msg(message_id, "public", "alice", "hi")]},
    )
