"""SPEC §9, metrics: Prometheus text at http://127.0.0.1:PORT/metrics (`--metrics-port`),
scraped while real requests, sockets and the Discord bridge move the figures."""

import asyncio
import signal
import sqlite3
import urllib.request
from contextlib import closing

import aiohttp
from helpers import (
    BRIDGE,
    PASSWORD,
    Api,
    Sock,
    bad_plan_lines,
    eventually,
    free_port,
    http,
    until_health,
    users,
)
from prometheus_client.parser import text_string_to_metric_families


async def scrape(port):
    """Every sample of /metrics as {(name, ((label, value), ...)): value}."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "text/plain"  # Prometheus's text format
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples, endpoint, status):
    return sample(samples, "buttonapi_http_requests_total", endpoint=endpoint, status=status)


async def test_counters_move_with_real_requests(start):
    port = free_port()
    client = await start(metrics_port=port, send_limit="2/60", login_limit_user="1/900")
    api = Api(client)
    before = await scrape(port)
    assert requests(before, "/api/v3/register", "201") == 0
    alice, bob = await users(api, "alice", "bob")
    await api.channel(alice, "general", "bob")
    await api.public(alice, "hello")
    await api.send(alice, "general", "in the channel")
    assert (await api.post("senddm", {"token": alice, "username": "bob", "message": "dm"}))[
        0
    ] == 429
    await api.post("getchannels", {"token": "not a token"})
    await api.post("nothing-here", {})
    wrong = {"username": "bob", "password": "Wr0ng!Pass"}
    assert [(await api.post("login", wrong))[0] for _ in range(2)] == [401, 429]
    url = str(client.make_url("/"))
    authenticated, waiting = await Sock(url).connect(), await Sock(url).connect()
    try:
        assert (await authenticated.auth(bob))[0] == "ready"
        after = await scrape(port)
    finally:
        await authenticated.close()
        await waiting.close()

    async def websockets_counted():  # a WebSocket is counted once it has ended
        return requests(await scrape(port), "/socket.io", "101") == 2

    await eventually(websockets_counted)

    assert requests(after, "/api/v3/register", "201") == 2
    assert requests(after, "/api/v3/generatetoken", "200") == 2
    assert requests(after, "/api/v3/senddm", "429") == 1
    assert requests(after, "/api/v3/getchannels", "401") == 1
    assert requests(after, "unmatched", "404") == 1
    assert requests(after, "/api/v3/login", "401") == 1
    assert requests(after, "/api/v3/login", "429") == 1
    count = sample(after, "buttonapi_http_request_duration_seconds_count", endpoint="/api/v3/login")
    assert count == 2
    assert sample(after, "buttonapi_messages_stored_total", kind="public") == 1
    assert sample(after, "buttonapi_messages_stored_total", kind="channel") == 1
    assert sample(after, "buttonapi_messages_stored_total", kind="dm") == 0
    assert sample(after, "buttonapi_limit_refusals_total", limit="send") == 1
    assert sample(after, "buttonapi_limit_refusals_total", limit="login_user") == 1
    assert sample(after, "buttonapi_limit_refusals_total", limit="login_addr") == 0
    assert sample(after, "buttonapi_sockets", state="authenticated") == 1
    assert sample(after, "buttonapi_sockets", state="unauthenticated") == 1
    assert sample(after, "buttonapi_engineio_sessions") == 2
    # register x2, generatetoken x2, makechannel, addusertochannel, two messages: 8 writes
    writes = sample(after, "buttonapi_db_writes_total") - sample(
        before, "buttonapi_db_writes_total"
    )
    assert writes == 8
    batches = sample(after, "buttonapi_db_write_batches_total")
    assert 1 <= batches <= sample(after, "buttonapi_db_writes_total")
    assert sample(after, "buttonapi_db_commit_seconds_count") == batches
    assert sample(after, "buttonapi_db_commit_seconds_sum") > 0


async def test_password_checks_waiting(start):
    port = free_port()
    client = await start(metrics_port=port, bcrypt_rounds=12, login_limit_user="0")
    api = Api(client)
    await api.register("alice")
    creds = {"username": "alice", "password": PASSWORD}
    logins = [asyncio.create_task(api.post("login", creds)) for _ in range(8)]
    try:

        async def waiting():
            return sample(await scrape(port), "buttonapi_password_checks_waiting")

        seen = await waiting()
        while seen == 0 and not all(t.done() for t in logins):
            seen = await waiting()
        assert seen > 0  # 8 checks of cost 12, on at most a few threads: some wait
    finally:
        answers = await asyncio.gather(*logins)
    assert {status for status, _ in answers} == {200}
    assert sample(await scrape(port), "buttonapi_password_checks_waiting") == 0


async def test_discord_outbox_rows_by_state(start, fake):
    port = free_port()
    client = await start(metrics_port=port)
    await until_health(client, "connected")
    api = Api(client)
    (alice,) = await users(api, "alice")
    fake.fail(BRIDGE, 503)
    await api.public(alice, "waits for Discord")
    samples = await scrape(port)
    assert sample(samples, "buttonapi_discord_outbox_rows", state="post") == 1
    assert sample(samples, "buttonapi_messages_stored_total", kind="public") == 1
    fake.clear_faults()
    await fake.wait_for(lambda f: f.contents(BRIDGE))

    async def delivered():
        return sample(await scrape(port), "buttonapi_discord_outbox_rows", state="post") == 0

    await eventually(delivered, within=10)


def test_the_real_process_serves_metrics_on_loopback(tmp_path, servers):
    port, metrics_port = free_port(), free_port()
    server = servers(
        "--host", "127.0.0.1", "--port", str(port), "--db", "m.db",
        env={"BUTTONAPI_METRICS_PORT": str(metrics_port)},
    )  # fmt: skip
    server.wait_ready(port)
    http(port, "/api/v3/health/")
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    assert 'buttonapi_http_requests_total{endpoint="/api/v3/health",status="200"}' in text
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


async def test_a_scrape_reads_the_database_through_an_index(start, db_path):
    from buttonapi import db_key

    port = free_port()
    client = await start(metrics_port=port)
    database = client.app[db_key]
    statements = []
    await database.trace(statements.append)
    await scrape(port)
    await database.trace(None)
    (query,) = [s for s in statements if "discord_outbox" in s]
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        assert "USING INDEX discord_outbox_due" in str(
            conn.execute("EXPLAIN QUERY PLAN " + query).fetchall()
        )
        assert bad_plan_lines(conn, query) == []
