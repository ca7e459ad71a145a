"""The plain helpers every test module shares: expected values, clients, the database file,
the server as a process, the Discord bridge's test world.

Test modules import them from here (`from helpers import PASSWORD, msg, ...`; tests/ is on
sys.path, as for conftest); conftest.py holds the fixtures. No test module imports another.
"""

import asyncio
import inspect
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import socketio
from contract import check_response

from bot import Timing

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0  # seconds: the bound of every wait for an event or a state

# --- expected values ----------------------------------------------------------------------

PASSWORD = "Passw0rd!"  # SPEC §2: 8-20 chars, a digit, an uppercase letter, a symbol, no spaces
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

INVALID_TOKEN = (401, {"message": "Invalid token!"})
BAD_CREDENTIALS = (401, {"message": "Invalid username or password!"})
NOT_A_JSON_OBJECT = (400, {"message": "Request body must be a JSON object!"})

# every endpoint of the seed with its fields in the seed's order (SPEC §1 names the first bad one)
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


# --- the HTTP API, as a client calls it ---------------------------------------------------


async def answer(resp) -> tuple[int, dict]:
    """(status, JSON body) of a response; every answer must be JSON (SPEC §1) and one that
    static/openapi.json documents for its path, method and status (tests/contract.py)."""
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    check_response(resp.method, resp.url.path, resp.status, resp.headers, body)
    return resp.status, body


async def request(api, method, path, **kwargs):
    """Any method on any path, redirects not followed: (status, JSON body)."""
    async with api.client.request(method, path, allow_redirects=False, **kwargs) as resp:
        return await answer(resp)


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


async def users(api, *names):
    """Register each name; their tokens, in order."""
    return [await api.user(name) for name in names]


# --- Socket.IO ----------------------------------------------------------------------------


class Sock:
    """A real Socket.IO client that records every event it receives, in order."""

    def __init__(self, url: str, transport: str = "websocket"):
        self.url = url
        self.transport = transport
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self.changed = asyncio.Condition()
        self.client.on("*", self._record)
        self.client.on("connect_error", self._connect_error)
        self.client.on("disconnect", self._disconnected)

    async def _record(self, event, data=None):
        async with self.changed:
            self.events.append((event, data))
            self.changed.notify_all()

    async def _connect_error(self, data=None):
        await self._record("connect_error", data)

    async def _disconnected(self, reason=None):
        await self._record("disconnect", None)

    async def connect(self, auth=None):
        await self.client.connect(
            self.url, transports=[self.transport], auth=auth, wait_timeout=WAIT
        )
        return self

    async def auth(self, token):
        """api_v3_connect with a token (or a whole dict); the answer: ready or api_v3_error."""
        seen = len(self.events)
        data = token if isinstance(token, dict) else {"token_api_v3": token}
        await self.client.emit("api_v3_connect", data)
        return await self.next(("ready", "api_v3_error"), after=seen)

    async def next(self, names, after=0, where=lambda data: True):
        """The first event named in `names` at index >= after whose data satisfies `where`,
        as (name, data); fails after WAIT seconds."""
        names = (names,) if isinstance(names, str) else names

        def found():
            return next((e for e in self.events[after:] if e[0] in names and where(e[1])), None)

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(found), WAIT)
            return found()

    def named(self, name):
        return [data for event, data in self.events if event == name]

    async def close(self):
        await self.client.disconnect()


async def barrier(api, token, sock, username):
    """A DM to `username` that `sock` receives: every event sent before it arrived before it.

    A test that an event does NOT arrive uses it instead of a sleep: events on one socket
    keep their order, so an unwanted event would have arrived first."""
    marker = f"barrier-{len(sock.events)}"
    await api.dm(token, username, marker)
    while True:
        _, data = await sock.next("new_dm", after=len(sock.events) - 1)
        if data["message"] == marker:
            return
        await asyncio.sleep(0)


# --- the database file --------------------------------------------------------------------


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


def rows(db_path, sql, params=()):
    """Rows of the server's database file (read-only), as dicts."""
    with closing(sqlite3.connect(f"{Path(db_path).as_uri()}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def bad_plan_lines(conn, statement):
    """The lines of the statement's query plan that are a full scan or a sort outside an index."""
    plan = conn.execute("EXPLAIN QUERY PLAN " + statement).fetchall()
    details = [row[-1] for row in plan]
    return [
        line
        for line in details
        if (
            line.startswith("SCAN")
            and "USING" not in line
            and "CONSTANT ROW" not in line
            and not FULL_TEXT_MATCH.search(line)
        )
        or "TEMP B-TREE" in line
    ]


# An FTS5 table read through its index: a MATCH ('M' in FTS5's index string) is a lookup of
# the query's words, not a scan of the table.
FULL_TEXT_MATCH = re.compile(r"VIRTUAL TABLE INDEX \d+:[^ ]*M")


# --- no secret in any log line ------------------------------------------------------------

# Every password the suite uses often, and the fake bot token; a user token is any UUID4.
SECRETS = (PASSWORD, "Wr0ng!Pass", "S3cret!Pass", "fake-bot-token")
SECRET_RE = re.compile("|".join([UUID4_RE.pattern, *map(re.escape, SECRETS)]))


def leaked_secrets(lines):
    return [line for line in lines if SECRET_RE.search(line)]


def record_text(record: logging.LogRecord) -> str:
    """A log record as its lines would read: the message, then any traceback."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


# --- the server as a real process (`python buttonapi.py`) ---------------------------------


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


# --- the official JavaScript client (socket.io-client under Node.js) -----------------------

HERE = Path(__file__).resolve().parent
JS_WAIT = 10  # seconds: the bound of every wait for an event of a JavaScript client


class JsClient:
    def __init__(self, proc):
        self.proc = proc
        self.events = []

    @classmethod
    async def start(cls, url, token, mode, transport=""):
        """`mode`: "auth" (connect-time auth) or "emit" (api_v3_connect); `transport`:
        "websocket" or "polling" alone, or "" (the client's default)."""
        node = shutil.which("node")
        assert node, "Node.js is needed for this test (see README)"
        assert (HERE / "node_modules" / "socket.io-client").is_dir(), "run: npm ci --prefix tests"
        proc = await asyncio.create_subprocess_exec(
            node, str(HERE / "js_client.mjs"), url, token, mode, transport,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def next(self, name):
        """The next event called `name`; every event before it is kept in self.events."""

        async def read():
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"the client ended before {name!r}: {self.events}"
                event = json.loads(line)
                self.events.append((event["event"], event["data"]))
                if event["event"] == name:
                    return event["data"]

        return await asyncio.wait_for(read(), JS_WAIT)

    def named(self, name):
        return [data for event, data in self.events if event == name]

    async def close(self):
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), JS_WAIT)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


# --- the Discord bridge against tests/fake_discord.py -------------------------------------
#
# The test_bridge_*.py files: the real app (create_app) on a real SQLite file, the real
# discord.py client, and the fake Discord of tests/fake_discord.py (a real REST + gateway server
# on loopback) that the bridge is pointed at through DISCORD_API_BASE / DISCORD_GATEWAY_URL
# (conftest's `fake` and `config`). Nothing of ours is mocked; only the bridge's waits are
# shortened (FAST), the logic is the production one.
#
# Every post the bridge makes is checked to carry no allowed mentions (the `fake` fixture's
# teardown). A test that something did NOT happen uses a barrier: a later event that does happen
# and that the bridge can only produce after the earlier one was handled (inbound messages are
# taken in one at a time, in order; each Discord destination is delivered in order).

GUILD_ID = 700000000000000001
BRIDGE, GENERAL, RANDOM = 111, 222, 333
CAROL = {"id": 500000000000000003, "username": "carol", "global_name": "Carol C."}
DAN = {"id": 500000000000000004, "username": "dan", "global_name": None}
NO_MENTIONS = {"parse": []}

# Production logic, shorter waits: discord.py's guild wait, the per-attempt timeout, backoff.
FAST = Timing(
    send_wait=5.0, attempt_timeout=2.5, backoff=(0.05, 0.1, 0.2, 0.4), guild_ready_timeout=0.1
)


async def eventually(check, within=WAIT):
    """Wait until `check()` (plain or async) is truthy and return it; fail after `within` s.

    For conditions nothing notifies us of (the database file, the health endpoint)."""

    async def value():
        result = check()
        return await result if inspect.isawaitable(result) else result

    async with asyncio.timeout(within):
        while not (result := await value()):  # noqa: ASYNC110 - polled: no event to wait on
            await asyncio.sleep(0.01)
    return result


async def health(client):
    async with client.get("/api/v3/health/") as resp:
        assert resp.status == 200
        return (await resp.json())["discord"]


async def until_health(client, state, within=WAIT):
    async def reached():
        return await health(client) == state

    await eventually(reached, within)


def outbox(db_path):
    return rows(db_path, "SELECT * FROM discord_outbox ORDER BY id")


def statuses(fake, target):
    return [a.status for a in fake.attempts if a.target == target and a.method == "POST"]


async def public_feed(api, token):
    return (await api.ok("getmessagesforeveryone", {"token": token}))["messages"]


async def inbound_barrier(fake, api, token, marker="barrier"):
    """A Discord message in the bridge channel that the API has stored: every Discord message
    injected before it has been handled."""
    await fake.inject_message(BRIDGE, marker, author=DAN)

    async def stored():
        return any(m["message"] == marker for m in await public_feed(api, token))

    await eventually(stored)


async def edit(api, token, message_id, text):
    """editmessage, which must succeed."""
    body = {"token": token, "message_id": message_id, "message": text}
    assert await api.post("editmessage", body) == (200, {"message": "Message edited!"})


async def grant_webhooks(fake, api, token, *channels):
    """Give the bot Manage Webhooks in channels; once a later Discord message is stored, the
    bot's guild cache has the change (gateway events are applied in order)."""
    for channel in channels:
        await fake.allow_webhooks(channel)
    await inbound_barrier(fake, api, token, f"barrier {len(fake.dispatched)}")


def masked_text_frame(text: str) -> bytes:
    """A client's WebSocket text frame (RFC 6455: clients mask what they send)."""
    import os

    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def link(api, name, discord_channel):
    """An admin links the API channel `name` to a Discord channel (SPEC 6: names alone bridge
    nothing). The admin, `linker`, is made as the command line makes one."""
    import db
    from buttonapi import db_key
    from permissions import Role

    await until_health(api.client, "connected")  # linkchannel needs the bot (else 503)
    database = api.client.app[db_key]
    if await db.user_by_name(database, "linker") is None:
        await api.register("linker")
        await db.set_role(database, None, "(console)", "linker", Role.ADMIN)
    got = await api.ok("generatetoken", {"username": "linker", "password": PASSWORD})
    body = {"token": got["token"], "name": name, "discord_channel": str(discord_channel)}
    return await api.ok("linkchannel", body)
