"""Rules for every endpoint (SPEC §1) and running the server (SPEC §7)."""

import asyncio
import json
import logging
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from conftest import ID, PASSWORD, answer, free_port, http, msg

ROOT = Path(__file__).resolve().parent.parent
NOT_A_JSON_OBJECT = (400, {"message": "Request body must be a JSON object!"})
INVALID_TOKEN = (401, {"message": "Invalid token!"})

# every endpoint with its fields in the seed's order (SPEC §1 names the first bad one)
ENDPOINT_FIELDS = {
    "register": ["username", "password"],
    "login": ["username", "password"],
    "generatetoken": ["username", "password"],
    "gettoken": ["username", "password"],
    "senddcmsgwithtoken": ["token", "message"],
    "getmessagesforeveryone": ["token"],
    "getmysentmessages": ["token"],
    "readmessagesfromchannel": ["token", "name"],
    "deletemessage": ["token", "message_id"],
    "makechannel": ["token", "name"],
    "addusertochannel": ["token", "name", "username"],
    "sendmessage": ["token", "message", "channel"],
    "getchannels": ["token"],
    "getdms": ["token"],
    "senddm": ["token", "username", "message"],
    "senddcmsg": ["token", "channel", "message"],
}
ENDPOINTS = list(ENDPOINT_FIELDS)


def invalid(field):
    return (400, {"message": f"Missing or invalid field: {field}!"})


async def request(api, method, path, **kwargs):
    async with api.client.request(method, path, allow_redirects=False, **kwargs) as resp:
        return await answer(resp)


# --- paths and methods --------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["/", ""], ids=["with slash", "without slash"])
async def test_paths_work_with_and_without_the_trailing_slash(api, slash):
    body = {"username": "alice", "password": PASSWORD}
    assert await request(api, "POST", "/api/v3/register" + slash, json=body) == (
        201,
        {"message": "User registered successfully!"},
    )
    status, made = await request(api, "POST", "/api/v3/generatetoken" + slash, json=body)
    assert status == 200
    assert await request(
        api, "POST", "/api/v3/getmessagesforeveryone" + slash, json={"token": made["token"]}
    ) == (
        200,
        {"message": "Got messages!", "messages": []},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v3/nope/"),
        ("POST", "/api/v3/nope"),
        ("GET", "/api/v3/nope/"),
        ("POST", "/api/v2/register/"),
        ("POST", "/api/v3/register/extra/"),
        ("POST", "/api/v3/"),
        ("GET", "/no/such/page"),
    ],
)
async def test_unknown_path_is_json_404(api, snapshot, method, path):
    before = snapshot()
    assert await request(api, method, path, json={"username": "alice", "password": PASSWORD}) == (
        404,
        {"message": "Not found!"},
    )
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_json_405(api, snapshot, endpoint, method):
    before = snapshot()
    assert await request(api, method, f"/api/v3/{endpoint}/") == (
        405,
        {"message": "Method not allowed!"},
    )
    assert snapshot() == before


async def test_wrong_method_without_slash_is_405(api):
    assert await request(api, "GET", "/api/v3/login") == (405, {"message": "Method not allowed!"})


async def test_health(api):
    for path in ("/api/v3/health/", "/api/v3/health"):
        assert await request(api, "GET", path) == (200, {"status": "ok", "discord": "disabled"})


# --- body shape ---------------------------------------------------------------------------------

NOT_OBJECTS = {
    "empty body": b"",
    "not JSON": b"{username: alice}",
    "truncated": b'{"username": "alice"',
    "trailing garbage": b'{"username": "alice"} x',
    "array": b"[]",
    "array of an object": b'[{"username": "alice"}]',
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "invalid UTF-8": b'{"username": "\xff\xfe"}',
    "NaN": b'{"count": NaN}',
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("data", NOT_OBJECTS.values(), ids=NOT_OBJECTS.keys())
async def test_body_that_is_not_a_json_object_is_400(api, snapshot, endpoint, data):
    before = snapshot()
    assert await request(api, "POST", f"/api/v3/{endpoint}/", data=data) == NOT_A_JSON_OBJECT
    assert snapshot() == before


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


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json; charset=utf-8"},
    ],
    ids=["text/plain", "form", "json with charset"],
)
async def test_content_type_is_not_required(api, headers):
    data = json.dumps({"username": "alice", "password": PASSWORD}).encode()
    assert await request(api, "POST", "/api/v3/register/", data=data, headers=headers) == (
        201,
        {"message": "User registered successfully!"},
    )


async def test_no_content_type_at_all(api):
    data = json.dumps({"username": "alice", "password": PASSWORD}).encode()
    kwargs = {"data": data, "skip_auto_headers": ["Content-Type"]}
    assert await request(api, "POST", "/api/v3/register/", **kwargs) == (
        201,
        {"message": "User registered successfully!"},
    )


def _padded(size):
    """A register body of exactly `size` bytes."""
    body = {"username": "alice", "password": PASSWORD, "pad": ""}
    data = json.dumps(body).encode()
    body["pad"] = "x" * (size - len(data))
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


async def test_body_of_64_kib_is_accepted(api):
    assert await request(api, "POST", "/api/v3/register/", data=_padded(64 * 1024)) == (
        201,
        {"message": "User registered successfully!"},
    )


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024])
async def test_body_over_64_kib_is_413(api, snapshot, size):
    before = snapshot()
    assert await request(api, "POST", "/api/v3/register/", data=_padded(size)) == (
        413,
        {"message": "Request body too large!"},
    )
    assert snapshot() == before


# --- CORS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_cors_preflight(api, endpoint):
    headers = {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with api.client.options(f"/api/v3/{endpoint}/", headers=headers) as resp:
        assert resp.status in (200, 204)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"].upper()
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert allowed == "*" or "content-type" in allowed


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (
            "register",
            {"username": "alice", "password": PASSWORD},
            (201, {"message": "User registered successfully!"}),
        ),
        ("getchannels", {"token": "nope"}, INVALID_TOKEN),
        ("getchannels", {}, invalid("token")),
    ],
)
async def test_cors_header_on_answers(api, endpoint, body, expected):
    headers = {"Origin": "https://elsewhere.example"}
    async with api.client.post(f"/api/v3/{endpoint}/", json=body, headers=headers) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert await answer(resp) == expected


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


# --- SPEC §7: storage, logs, abuse limits -------------------------------------------------------


async def test_database_is_in_wal_mode(api, db_path):
    await api.register("alice")
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_logs_hold_no_password_or_token(api, caplog):
    # everything the server itself logs, and INFO and up from the libraries (aiohttp access log)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="buttonapi")
    password = "S3cret!Pass"
    creds = {"username": "alice", "password": password}
    await api.ok("register", creds, status=201)
    await api.ok("login", creds)
    await api.post("login", {"username": "alice", "password": "Wr0ng!Pass"})
    token = (await api.ok("generatetoken", creds))["token"]
    await api.ok("gettoken", creds)
    await api.public(token, "hello")
    await api.post("getchannels", {"token": token})
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for secret in (password, "Wr0ng!Pass", token):
        assert secret not in logged


async def test_password_hashing_does_not_block_other_requests(aiohttp_client, tmp_path):
    from buttonapi import Config, create_app

    client = await aiohttp_client(
        await create_app(Config(db=str(tmp_path / "slow.db"), bcrypt_rounds=13))
    )
    body = {"username": "alice", "password": PASSWORD}

    async def register_alice():
        async with client.post("/api/v3/register/", json=body) as resp:
            return resp.status

    register = asyncio.create_task(register_alice())
    answered_meanwhile = 0
    while not register.done():
        async with client.get("/api/v3/health/") as resp:
            assert resp.status == 200
        if not register.done():
            answered_meanwhile += 1
    assert await register == 201
    assert answered_meanwhile >= 3


class _PositiveNumber:
    def __eq__(self, other):
        return isinstance(other, (int, float)) and not isinstance(other, bool) and other > 0

    def __repr__(self):
        return "<seconds > 0>"


def too_many(message):
    """429 with the limit's message and how long to wait (SPEC §7)."""
    return (429, {"message": message, "retry_after": _PositiveNumber()})


async def _post_with_headers(api, name, body):
    async with api.client.post(f"/api/v3/{name}/", json=body) as resp:
        return resp.headers, await answer(resp)


async def test_failed_password_checks_are_limited_per_username(api, snapshot):
    await api.register("alice")
    await api.register("bob")
    wrong = {"username": "alice", "password": "Wr0ng!Pass"}
    for _ in range(10):
        assert await api.post("login", wrong) == (401, {"message": "Invalid username or password!"})
    before = snapshot()
    for body in (wrong, {"username": "ALICE", "password": PASSWORD}):  # even the right password
        headers, got = await _post_with_headers(api, "login", body)
        assert got == too_many("Too many attempts, try again later!")
        assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) > 0
    assert snapshot() == before
    assert await api.post("login", {"username": "bob", "password": PASSWORD}) == (
        200,
        {"message": "Login successful!"},
    )


async def test_concurrent_guesses_cannot_pass_the_limit_together(api):
    await api.register("alice")
    wrong = {"username": "alice", "password": "Wr0ng!Pass"}
    answers = await asyncio.gather(*(api.post("login", wrong) for _ in range(25)))
    assert sorted(status for status, _ in answers) == [401] * 10 + [429] * 15


async def test_concurrent_correct_logins_over_the_limit_all_succeed(api):
    await api.register("alice")
    right = {"username": "alice", "password": PASSWORD}
    answers = await asyncio.gather(*(api.post("login", right) for _ in range(25)))
    assert answers == [(200, {"message": "Login successful!"})] * 25


async def test_failed_password_checks_are_limited_per_address(api):
    for i in range(30):
        await api.register(f"user{i}")
    for i in range(30):
        body = {"username": f"user{i}", "password": "Wr0ng!Pass"}
        assert await api.post("login", body) == (401, {"message": "Invalid username or password!"})
    headers, got = await _post_with_headers(
        api, "generatetoken", {"username": "user0", "password": PASSWORD}
    )
    assert got == too_many("Too many attempts, try again later!")
    assert int(headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("endpoint", "fields"),
    [
        ("senddcmsgwithtoken", {}),
        ("sendmessage", {"channel": "general"}),
        ("senddm", {"username": "bob"}),
    ],
)
async def test_sending_is_limited_per_user(api, snapshot, endpoint, fields):
    alice, bob = await api.user("alice"), await api.user("bob")
    await api.channel(alice, "general", "bob")
    for i in range(20):
        await api.ok(endpoint, {"token": alice, "message": f"m{i}", **fields})
    before = snapshot()
    headers, got = await _post_with_headers(
        api, endpoint, {"token": alice, "message": "one too many", **fields}
    )
    assert got == too_many("You are sending messages too fast!")
    assert int(headers["Retry-After"]) > 0
    assert snapshot() == before
    assert (await api.post("senddcmsgwithtoken", {"token": bob, "message": "bob is fine"}))[
        0
    ] == 200


# --- SPEC §7: running `python buttonapi.py` -----------------------------------------------------


def test_flags_beat_environment_and_sigterm_exits_0(tmp_path, servers):
    port = free_port()
    env = {
        "BUTTONAPI_HOST": "127.0.0.1",
        "BUTTONAPI_PORT": "1",
        "BUTTONAPI_DB": str(tmp_path / "env.db"),
    }
    server = servers("--port", str(port), "--db", str(tmp_path / "flag.db"), env=env)
    assert server.wait_ready(port) == (200, {"status": "ok", "discord": "disabled"})
    assert http(port, "/api/v3/register/", {"username": "alice", "password": PASSWORD}) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert (tmp_path / "flag.db").exists() and not (tmp_path / "env.db").exists()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


def test_default_database_is_buttonapi_db_in_the_working_folder(tmp_path, servers):
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port))
    assert server.wait_ready(port) == (200, {"status": "ok", "discord": "disabled"})
    assert (tmp_path / "buttonapi.db").exists()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=15) == 0


def test_success_survives_kill_9(tmp_path, servers):
    port = free_port()
    args = ("--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "d.db"))
    first = servers(*args)
    first.wait_ready(port)
    creds = {"username": "alice", "password": PASSWORD}
    assert http(port, "/api/v3/register/", creds)[0] == 201
    status, made = http(port, "/api/v3/generatetoken/", creds)
    status, sent = http(
        port, "/api/v3/senddcmsgwithtoken/", {"token": made["token"], "message": "durable"}
    )
    assert status == 200
    first.proc.kill()
    first.proc.wait()

    second = servers(*args)
    second.wait_ready(port)
    assert http(port, "/api/v3/getmessagesforeveryone/", {"token": made["token"]}) == (
        200,
        {"message": "Got messages!", "messages": [msg(sent["id"], "public", "alice", "durable")]},
    )
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=15) == 0
