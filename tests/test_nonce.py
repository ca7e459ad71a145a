"""Beyond the seed: idempotent sends.

Every endpoint that creates a message takes an optional `nonce` (a string of 1-64
characters). A repeat of the same nonce by the same user within 24 hours answers with the
original message's id and creates nothing: a client that retries after a timeout never
doubles a message.
"""

import asyncio
import sqlite3
import time
from contextlib import closing

import pytest
from helpers import barrier

SENDS = {
    "senddcmsgwithtoken": ({}, "Sent message!"),
    "sendmessage": ({"channel": "general"}, "Message sent!"),
    "senddm": ({"username": "bob"}, "Dm message sent!"),
}


@pytest.fixture
async def world(api):
    alice, bob = await api.user("alice"), await api.user("bob")
    await api.channel(alice, "general", "bob")
    return alice, bob


@pytest.mark.parametrize("endpoint", SENDS)
async def test_a_repeated_nonce_returns_the_original_and_creates_nothing(
    api, snapshot, world, endpoint, sock
):
    alice, bob = world
    extra, answer = SENDS[endpoint]
    bob_sock = await sock(auth={"token_api_v3": bob})
    body = {"token": alice, "message": "once", "nonce": "client-42", **extra}
    status, first = await api.post(endpoint, body)
    assert (status, first) == (200, {"message": answer, "id": first["id"]})
    before = snapshot()
    assert await api.post(endpoint, body) == (200, {"message": answer, "id": first["id"]})
    # even with other text: the nonce names the message
    assert await api.post(endpoint, {**body, "message": "twice?"}) == (
        200,
        {"message": answer, "id": first["id"]},
    )
    assert snapshot() == before
    # one event only, for the one message
    await barrier(api, alice, bob_sock, "bob")
    events = [e for e, d in bob_sock.events if e in ("new_public_message", "new_message")]
    events += [e for e, d in bob_sock.events if e == "new_dm" and d["message"] == "once"]
    assert len(events) == 1


async def test_nonces_are_per_user_and_distinct_nonces_make_distinct_messages(api, world):
    alice, bob = world
    ids = [
        (await api.ok("senddcmsgwithtoken", {"token": t, "message": "m", "nonce": n}))["id"]
        for t, n in ((alice, "a"), (alice, "b"), (bob, "a"))
    ]
    assert len(set(ids)) == 3
    assert (await api.ok("senddcmsgwithtoken", {"token": bob, "message": "m", "nonce": "a"}))[
        "id"
    ] == ids[2]


async def test_concurrent_repeats_create_one_message(api, world, snapshot):
    alice, _ = world
    body = {"token": alice, "message": "retry storm", "nonce": "n-1"}
    answers = await asyncio.gather(*(api.post("senddcmsgwithtoken", body) for _ in range(15)))
    assert len({got["id"] for _, got in answers}) == 1
    assert {status for status, _ in answers} == {200}
    feed = (await api.ok("getmessagesforeveryone", {"token": alice}))["messages"]
    assert [m["message"] for m in feed] == ["retry storm"]


async def test_repeats_do_not_count_against_the_send_limit(api, world):
    alice, _ = world
    body = {"token": alice, "message": "same", "nonce": "n"}
    for _ in range(30):  # the limit is 20 messages per 10 s
        assert (await api.post("senddcmsgwithtoken", body))[0] == 200


async def test_a_nonce_is_forgotten_after_24_hours(api, world, db_path):
    alice, _ = world
    body = {"token": alice, "message": "old", "nonce": "n"}
    first = (await api.ok("senddcmsgwithtoken", body))["id"]
    with closing(sqlite3.connect(db_path)) as conn, conn:  # the nonce was used a day ago
        conn.execute("UPDATE nonces SET created_at = ?", (time.time() - 24 * 3600 - 1,))
    second = (await api.ok("senddcmsgwithtoken", body))["id"]
    assert second != first
    assert (await api.ok("senddcmsgwithtoken", body))["id"] == second


async def test_after_the_message_is_deleted_its_nonce_may_be_used_again(api, world):
    alice, _ = world
    body = {"token": alice, "message": "gone", "nonce": "n"}
    first = (await api.ok("senddcmsgwithtoken", body))["id"]
    await api.ok("deletemessage", {"token": alice, "message_id": first})
    assert (await api.ok("senddcmsgwithtoken", body))["id"] != first


@pytest.mark.parametrize("endpoint", [*SENDS, "senddcmsg"])
@pytest.mark.parametrize("nonce", ["", "x" * 65, 5, True, ["a"], "\ud800"])
async def test_a_bad_nonce_is_400_and_changes_nothing(api, snapshot, world, endpoint, nonce):
    alice, _ = world
    extra = SENDS.get(endpoint, ({"channel": "general"}, None))[0]
    before = snapshot()
    body = {"token": alice, "message": "hi", **extra, "nonce": nonce}
    assert await api.post(endpoint, body) == (400, {"message": "Missing or invalid field: nonce!"})
    assert snapshot() == before


async def test_a_64_character_nonce_is_fine(api, world):
    alice, _ = world
    body = {"token": alice, "message": "hi", "nonce": "n" * 64}
    first = await api.ok("senddcmsgwithtoken", body)
    assert await api.ok("senddcmsgwithtoken", body) == first


async def test_a_null_nonce_counts_as_absent(api, world):
    alice, _ = world
    body = {"token": alice, "message": "no nonce", "nonce": None}
    first = (await api.ok("senddcmsgwithtoken", body))["id"]
    assert (await api.ok("senddcmsgwithtoken", body))["id"] != first
