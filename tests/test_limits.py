"""SPEC §7, abuse limits: failed password checks per username and per address, messages
sent per user; each over its limit is a 429 with Retry-After.
"""

import asyncio

import pytest
from helpers import PASSWORD, answer


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
