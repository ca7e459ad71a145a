"""SPEC §1, transport: paths and methods (404, 405), the health check, and bodies that
are not a JSON object, have any Content-Type, or are too large (413).
"""

import json

import pytest
from helpers import ENDPOINTS, NOT_A_JSON_OBJECT, PASSWORD, request

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
