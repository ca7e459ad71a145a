"""SPEC §1, CORS: browser pages on other origins may call every endpoint."""

import pytest
from helpers import ENDPOINTS, INVALID_TOKEN, PASSWORD, answer, invalid


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
