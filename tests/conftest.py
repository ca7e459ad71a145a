"""The fixtures: the real app factory on a real port, a real database file, real Socket.IO
clients, the fake Discord. Each test gets a fresh server and database.

The plain helpers the tests share are in tests/helpers.py.
"""

import dataclasses
import logging

import pytest
from fake_discord import FakeDiscord
from helpers import (
    BRIDGE,
    CAROL,
    DAN,
    FAST,
    GENERAL,
    GUILD_ID,
    NO_MENTIONS,
    RANDOM,
    Api,
    Server,
    Sock,
    db_snapshot,
    leaked_secrets,
    record_text,
    until_health,
)

from buttonapi import Config, create_app


def pytest_configure(config):
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # it logs every call at DEBUG


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog):
    """Every test, the whole run: no log record (DEBUG and up, see pytest.ini) holds a
    password, a user token or the bot token."""
    yield
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    assert leaked_secrets(record_text(r) for r in records) == []


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "api.db"


@pytest.fixture
async def fake():
    """The fake Discord (tests/fake_discord.py): a guild with the channels bridge, general and
    random, and the members carol and dan. A test that uses it gets a server whose bridge is
    pointed at it (see `config`)."""
    f = FakeDiscord(
        guild_id=GUILD_ID,
        channels={"bridge": BRIDGE, "general": GENERAL, "random": RANDOM},
        members=[CAROL, DAN],
    )
    await f.start()
    yield f
    await f.close()
    for channel, posts in f.messages.items():  # SPEC 6: nothing the bridge posts pings anyone
        for post in posts:  # the bot's own posts and its webhooks', and every edit of them
            assert post.allowed_mentions == NO_MENTIONS, (channel, post)
            for edit in post.edits:
                assert edit["allowed_mentions"] == NO_MENTIONS, (channel, post)


@pytest.fixture
def config(request, db_path):
    """The server's settings: the test's database file, cheap bcrypt. In a test that uses
    `fake`, the bridge is pointed at it, with no send limit (the bridge tests send in bursts);
    the fake is then set up here, before any server, so that every server stops before it."""
    plain = Config(db=str(db_path), bcrypt_rounds=4, register_limit_addr="0")
    if "fake" not in request.fixturenames:
        return plain
    fake = request.getfixturevalue("fake")
    return dataclasses.replace(
        plain,
        send_limit="0",
        discord_token=fake.token,
        discord_guild_id=GUILD_ID,
        discord_channel_id=BRIDGE,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )


@pytest.fixture
def start(config, aiohttp_client):
    """start(timing=FAST, **config changes) -> a running server (its bot may not be ready).

    `config` comes first: a test's fake Discord is set up before `aiohttp_client`, so the
    servers stop before the fake does."""

    async def start(timing=FAST, **changes):
        app = await create_app(dataclasses.replace(config, **changes), bridge_timing=timing)
        return await aiohttp_client(app)

    return start


@pytest.fixture
async def client(request, start):
    """The server under test; in a test that uses `fake`, once its bot is connected."""
    server = await start()
    if "fake" in request.fixturenames:
        await until_health(server, "connected")
    return server


@pytest.fixture
def api(client):
    return Api(client)


@pytest.fixture
async def sock(client):
    """sock(token=None, transport="websocket", auth=None) -> a real Socket.IO client
    (helpers.Sock) on the server under test, connected with `auth`; given a token, it has
    sent api_v3_connect with it and received `ready`. Every one is closed at the end."""
    socks = []
    url = str(client.make_url("/"))

    async def make(token=None, transport="websocket", auth=None):
        s = await Sock(url, transport).connect(auth)
        socks.append(s)
        if token is not None:
            assert (await s.auth(token))[0] == "ready"
        return s

    yield make
    for s in socks:
        await s.close()


@pytest.fixture
def snapshot(db_path, client):
    """snapshot() -> every row of the running server's database (see db_snapshot)."""
    return lambda: db_snapshot(db_path)


@pytest.fixture
def servers(tmp_path):
    """servers(*args, env=None) -> `python buttonapi.py *args` as a real process (a
    helpers.Server); every one is stopped at the end, its log checked for secrets."""
    started = []

    def start(*args, **kwargs):
        started.append(Server(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()
