"""Shared fixtures for the HTTP contract tests: the real app factory, a real port, a real file.

Tests import the plain helpers from here (`from conftest import PASSWORD, msg, ...`); the
fixtures give each test a fresh server and database.
"""

import json
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


def msg(id, kind, sender, message, *, channel=None, recipient=None, source="api"):
    """The exact message object of SPEC §4 (any well-formed timestamp)."""
    return {
        "id": id,
        "kind": kind,
        "sender": sender,
        "message": message,
        "channel": channel,
        "recipient": recipient,
        "timestamp": TIMESTAMP,
        "source": source,
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
    """(status, JSON body) of a response; every answer must be JSON (SPEC §1)."""
    assert resp.content_type == "application/json", await resp.text()
    return resp.status, await resp.json()


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


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "api.db"


@pytest.fixture
def config(db_path):
    from buttonapi import Config  # imported here so tests/ without the server still collect

    return Config(db=str(db_path), bcrypt_rounds=4)


@pytest.fixture
async def client(aiohttp_client, config):
    from buttonapi import create_app

    return await aiohttp_client(await create_app(config))


@pytest.fixture
def api(client):
    return Api(client)


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
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


class Server:
    """`python buttonapi.py ...` as a real process."""

    def __init__(self, tmp_path, *args, env=None):
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("BUTTONAPI_", "DISCORD_"))
        }
        environ |= {"BUTTONAPI_BCRYPT_ROUNDS": "4"} | (env or {})
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


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(*args, **kwargs):
        started.append(Server(tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()
