"""Shared fixtures for the HTTP contract tests: the real app factory, a real port, a real file.

Tests import the plain helpers from here (`from conftest import PASSWORD, msg, ...`); the
fixtures give each test a fresh server and database.
"""

import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from contract import check_response

PASSWORD = "Passw0rd!"  # SPEC §2: 8-20 chars, a digit, an uppercase letter, a symbol, no spaces
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class _AnyTimestamp:
    """Equal to any string shaped like SPEC §4's timestamp: 2026-11-28T12:34:56.789Z."""

    def __eq__(self, other):
        return isinstance(other, str) and TIMESTAMP_RE.fullmatch(other) is not None

    def __repr__(self):
        return "<YYYY-MM-DDTHH:MM:SS.mmmZ>"


TIMESTAMP = _AnyTimestamp()


class _AnyId:
    """Equal to any integer id (not a bool)."""

    def __eq__(self, other):
        return isinstance(other, int) and not isinstance(other, bool)

    def __repr__(self):
        return "<int id>"


ID = _AnyId()


def msg(
    id, kind, sender, message, *, channel=None, recipient=None, source="api", edited_timestamp=None
):
    """The exact message object of SPEC §4 (any well-formed timestamp); `edited_timestamp`
    is None until the message is edited (pass TIMESTAMP for an edited one)."""
    return {
        "id": id,
        "kind": kind,
        "sender": sender,
        "message": message,
        "channel": channel,
        "recipient": recipient,
        "timestamp": TIMESTAMP,
        "source": source,
        "edited_timestamp": edited_timestamp,
    }


def db_snapshot(path) -> dict[str, list[tuple]]:
    """Every row of every table of the SQLite file, read-only; tables found in sqlite_master."""
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)  # noqa: S608
            for table in sorted(tables)
        }


def db_file_bytes(path) -> bytes:
    """The raw bytes on disk of the database: the main file and its -wal/-shm/-journal files."""
    path = Path(path)
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


async def answer(resp) -> tuple[int, dict]:
    """(status, JSON body) of a response; every answer must be JSON (SPEC §1) and one that
    static/openapi.json documents for its path, method and status (tests/contract.py)."""
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    check_response(resp.method, resp.url.path, resp.status, resp.headers, body)
    return resp.status, body


class Api:
    """Calls the API the way a client does and returns (status, JSON body)."""

    def __init__(self, client):
        self.client = client

    async def post(self, name, body):
        async with self.client.post(f"/api/v3/{name}/", json=body) as resp:
            return await answer(resp)

    async def ok(self, name, body, status=200):
        got_status, got = await self.post(name, body)
        assert got_status == status, (name, body, got_status, got)
        return got

    async def register(self, username, password=PASSWORD):
        await self.ok("register", {"username": username, "password": password}, status=201)

    async def user(self, username, password=PASSWORD) -> str:
        """Register a user and return a fresh token."""
        await self.register(username, password)
        got = await self.ok("generatetoken", {"username": username, "password": password})
        return got["token"]

    async def channel(self, token, name, *members) -> int:
        """Make a channel, add the given usernames, return its id."""
        got = await self.ok("makechannel", {"token": token, "name": name})
        for username in members:
            await self.ok("addusertochannel", {"token": token, "name": name, "username": username})
        return got["channel_id"]

    async def public(self, token, text) -> int:
        return (await self.ok("senddcmsgwithtoken", {"token": token, "message": text}))["id"]

    async def send(self, token, channel, text) -> int:
        body = {"token": token, "message": text, "channel": channel}
        return (await self.ok("sendmessage", body))["id"]

    async def dm(self, token, username, text) -> int:
        body = {"token": token, "username": username, "message": text}
        return (await self.ok("senddm", body))["id"]


# --- no secret in any log line, in any test -------------------------------------------------

# Every password the suite uses often, and the fake bot token; a user token is any UUID4.
SECRETS = (PASSWORD, "Wr0ng!Pass", "S3cret!Pass", "fake-bot-token")
SECRET_RE = re.compile("|".join([UUID4_RE.pattern, *map(re.escape, SECRETS)]))
logging.getLogger("aiosqlite").setLevel(logging.INFO)  # it logs every call at DEBUG


def leaked_secrets(lines):
    return [line for line in lines if SECRET_RE.search(line)]


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog):
    """Every test, the whole run: no log record (DEBUG and up, see pytest.ini) holds a
    password, a user token or the bot token."""
    yield
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    assert leaked_secrets(_record_text(r) for r in records) == []


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "api.db"


@pytest.fixture
def config(db_path):
    from buttonapi import Config  # imported here so tests/ without the server still collect

    return Config(db=str(db_path), bcrypt_rounds=4, register_limit_addr="0")


@pytest.fixture
async def client(aiohttp_client, config):
    from buttonapi import create_app

    return await aiohttp_client(await create_app(config))


@pytest.fixture
def api(client):
    return Api(client)


@pytest.fixture
async def connect(client):
    """connect(auth=None) -> a real Socket.IO client (tests/test_realtime.py's Sock) on the
    test server, websocket transport; every one is closed at the end of the test."""
    from test_realtime import Sock

    socks = []

    async def make(auth=None):
        socks.append(await Sock(str(client.make_url("/"))).connect(auth))
        return socks[-1]

    yield make
    for s in socks:
        await s.close()


@pytest.fixture
def snapshot(db_path, client):
    """snapshot() -> every row of the running server's database (see db_snapshot)."""
    return lambda: db_snapshot(db_path)


# --- the server as a real process (`python buttonapi.py`) -----------------------------

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, body=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, got = resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            status, headers, got = err.code, err.headers, json.loads(err.read())
    check_response(req.get_method(), path, status, headers, got)  # see `answer`
    return status, got


class Server:
    """`python buttonapi.py ...` as a real process."""

    def __init__(self, tmp_path, *args, env=None):
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("BUTTONAPI_", "DISCORD_"))
        }
        environ |= {"BUTTONAPI_BCRYPT_ROUNDS": "4", "BUTTONAPI_REGISTER_LIMIT_ADDR": "0"}
        environ |= env or {}
        self.log = open(tmp_path / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "buttonapi.py"), *args],
            cwd=tmp_path,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, port, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited early"
            try:
                return http(port, "/api/v3/health/", timeout=1.0)
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()
        lines = Path(self.log.name).read_text(errors="replace").splitlines()
        assert leaked_secrets(lines) == []


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(*args, **kwargs):
        started.append(Server(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()
