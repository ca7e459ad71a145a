"""Button API V3: the HTTP JSON API, the Socket.IO events and the entry point.

One aiohttp application; python-socketio and the Discord bridge (bot.py) share its event loop.
Every SQL statement lives in db.py. The contract is the user's API document plus SPEC.md:
every status code and message text below is binding, quirks included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import sys
import time
import unicodedata
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import bcrypt
import socketio
from aiohttp import web

import db

log = logging.getLogger("buttonapi")


# --- configuration ----------------------------------------------------------------------


def _setting(default: Any, env: str, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting: its default, its environment variable and what it is for.

    A command-line flag beats the environment variable, which beats the default."""

    host: str = _setting("0.0.0.0", "BUTTONAPI_HOST", "address to listen on")
    port: int = _setting(5000, "BUTTONAPI_PORT", "TCP port to listen on")
    db: str = _setting("buttonapi.db", "BUTTONAPI_DB", "SQLite database file")
    bcrypt_rounds: int = _setting(12, "BUTTONAPI_BCRYPT_ROUNDS", "bcrypt cost for new hashes")
    cors_origins: str = _setting(
        "*", "BUTTONAPI_CORS_ORIGINS", "allowed browser origins, comma-separated, or *"
    )
    login_limit_user: str = _setting(
        "10/900", "BUTTONAPI_LOGIN_LIMIT_USER", "failed password checks per username: N/S or 0"
    )
    login_limit_addr: str = _setting(
        "30/900", "BUTTONAPI_LOGIN_LIMIT_ADDR", "failed password checks per address: N/S or 0"
    )
    send_limit: str = _setting("20/10", "BUTTONAPI_SEND_LIMIT", "messages per user: N/S or 0")
    discord_token: str = _setting("", "DISCORD_TOKEN", "bot token; the bridge is off without it")
    discord_guild_id: int = _setting(0, "DISCORD_GUILD_ID", "guild whose text channels bridge")
    discord_channel_id: int = _setting(0, "DISCORD_CHANNEL_ID", "bridge channel for the feed")
    discord_api_base: str = _setting("", "DISCORD_API_BASE", "Discord REST base (tests only)")
    discord_gateway_url: str = _setting("", "DISCORD_GATEWAY_URL", "Discord gateway (tests only)")

    @classmethod
    def from_env(cls, environ: dict[str, str], **overrides: Any) -> Config:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = overrides.get(field.name)
            if raw is None:
                raw = environ.get(field.metadata["env"])
            if raw is None:
                continue
            try:
                values[field.name] = int(raw) if field.type == "int" else str(raw)
            except ValueError:
                raise SystemExit(f"{field.metadata['env']} must be a whole number") from None
        config = cls(**values)
        for field in dataclasses.fields(cls):
            if field.name.endswith("_limit") or "_limit_" in field.name:
                try:
                    RateLimit.parse(getattr(config, field.name))
                except ValueError:
                    raise SystemExit(f"{field.metadata['env']} must be N/S or 0") from None
        return config


config_key = web.AppKey("config_key", Config)
db_key = web.AppKey("db_key", db.Database)
sio_key = web.AppKey("sio_key", socketio.AsyncServer)
hasher_key = web.AppKey("hasher_key", "PasswordHasher")
limits_key = web.AppKey("limits_key", "Limits")
events_key = web.AppKey("events_key", "Events")
openapi_key = web.AppKey("openapi_key", bytes)

OPENAPI_PATH = Path(__file__).with_name("static") / "openapi.json"


# --- the contract's texts ---------------------------------------------------------------

USERNAME_LENGTH = "Username needs to be 3-20 chars long!"
USERNAME_CHARACTERS = "Username can not contain spaces or control characters!"
PASSWORD_RULES = (
    "Password needs to have 8-20 chars minimum one number minimum one capital letter"
    " minimum one special symbol no empty symbols!"
)
INVALID_CREDENTIALS = "Invalid username or password!"
INVALID_TOKEN = "Invalid token!"
MESSAGE_LENGTH = "Message needs to be 1-2000 chars long!"
CHANNEL_NAME_LENGTH = "Channel name needs to be 1-100 chars long!"
CHANNEL_NOT_FOUND = "Channel not found!"
NOT_IN_CHANNEL = "You are not in this channel!"
USER_NOT_FOUND = "User not found!"
MESSAGE_NOT_FOUND = "Message not found!"
BOT_NOT_CONNECTED = "Discord bot is not connected!"
TOO_MANY_ATTEMPTS = "Too many attempts, try again later!"
SENDING_TOO_FAST = "You are sending messages too fast!"
TRANSPORT_ERRORS = {
    404: "Not found!",
    405: "Method not allowed!",
    413: "Request body too large!",
}
BAD_BODY = "Request body must be a JSON object!"
INTERNAL_ERROR = "Internal server error!"

MAX_BODY = 64 * 1024
MAX_MESSAGE = 2000
MAX_CHANNEL_NAME = 100


# --- errors -----------------------------------------------------------------------------


class ApiError(Exception):
    """An answer of the contract: `{"message": message, **extra}` with `status`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.extra = extra


def too_many(message: str, retry_after: int) -> ApiError:
    """429 with how long to wait, in the body and in a Retry-After header."""
    return ApiError(429, message, retry_after=retry_after)


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    response = web.json_response({"message": message, **extra}, status=status)
    if "retry_after" in extra:
        response.headers["Retry-After"] = str(extra["retry_after"])
    return response


def ok(message: str, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"message": message, **extra}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the contract's JSON error; causes go to the log, not the client."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:
        return error_response(exc.status, TRANSPORT_ERRORS.get(exc.status, exc.reason))
    except Exception:
        log.exception("unexpected failure in %s %s", request.method, request.path)
        return error_response(500, INTERNAL_ERROR)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let browser pages of the configured origins call the API (preflight included)."""
    if request.path.startswith("/socket.io"):
        return await handler(request)  # Engine.IO answers CORS itself
    origins = request.app[config_key].cors_origins
    origin = request.headers.get("Origin")
    if origins.strip() == "*":
        allow = "*"
    elif origin and origin in {o.strip() for o in origins.split(",")}:
        allow = origin
    else:
        allow = None
    exception = request.match_info.http_exception
    if request.method == "OPTIONS" and isinstance(exception, web.HTTPMethodNotAllowed):
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(
            sorted(exception.allowed_methods)
        )
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Content-Type"
        )
        response.headers["Access-Control-Max-Age"] = "86400"
    else:
        response = await handler(request)
    if allow is not None:
        response.headers["Access-Control-Allow-Origin"] = allow
        if allow != "*":
            response.headers["Vary"] = "Origin"
    return response


# --- validation -------------------------------------------------------------------------

NUMBER_FIELDS = {"count", "message_id", "before"}
DEFAULTS = {"count": 50, "before": db.MAX_ID}


def invalid(name: str) -> ApiError:
    return ApiError(400, f"Missing or invalid field: {name}!")


def _number(name: str, value: Any) -> int:
    """A JSON integer or a string of ASCII digits; ids past SQLite's range match nothing."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value) if len(value) <= 19 else db.MAX_ID
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(name)
    if name == "count" and not 1 <= value <= 1000:
        raise invalid(name)
    return min(value, db.MAX_ID)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate is not text
        raise invalid(name) from None
    return value


def fields(body: dict[str, Any], *names: str) -> list[Any]:
    """The named fields in order, typed; `name?` is optional (null counts as absent).

    Raises the 400 for the first field that is missing or of the wrong type."""
    values = []
    for spec in names:
        name = spec.rstrip("?")
        value = body.get(name)
        if value is None:
            if spec.endswith("?"):
                values.append(DEFAULTS.get(name))
                continue
            raise invalid(name)
        values.append(_number(name, value) if name in NUMBER_FIELDS else _text(name, value))
    return values


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


async def read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # over client_max_size: 413
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurd nesting or numbers
        raise ApiError(400, BAD_BODY) from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_BODY)
    return body


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, as usernames and channel names compare (SQLite NOCASE)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _has_control_or_space(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def check_username(username: str) -> None:
    if not 3 <= len(username) <= 20:
        raise ApiError(411, USERNAME_LENGTH)
    if _has_control_or_space(username):
        raise ApiError(411, USERNAME_CHARACTERS)


def check_password(password: str) -> None:
    if not (
        8 <= len(password) <= 20
        and any(ch.isdigit() for ch in password)
        and any(ch.isupper() for ch in password)
        and any(not (ch.isalpha() or ch.isdigit() or ch.isspace()) for ch in password)
        and not any(ch.isspace() for ch in password)
    ):
        raise ApiError(411, PASSWORD_RULES)


def check_message(text: str) -> None:
    if not 1 <= len(text) <= MAX_MESSAGE or text.isspace():
        raise ApiError(411, MESSAGE_LENGTH)


def check_channel_name(name: str) -> None:
    if (
        not 1 <= len(name) <= MAX_CHANNEL_NAME
        or name != name.strip()
        or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name)
    ):
        raise ApiError(411, CHANNEL_NAME_LENGTH)


# --- abuse limits -----------------------------------------------------------------------


class RateLimit:
    """At most `n` events per `seconds` for each key (a sliding window), in memory.

    `take` counts an event at once, with no await between the check and the count, so
    concurrent requests cannot slip past the limit together; an event taken as `pending`
    (a password check still running) counts until it is settled as a failure or given back.
    Keys are kept for at most `max_keys` (the oldest are forgotten first), so a flood of
    fresh keys cannot grow memory without bound.
    """

    def __init__(self, spec: str, max_keys: int = 100_000) -> None:
        self.n, self.seconds = self.parse(spec)
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._pending: dict[str, int] = {}

    @staticmethod
    def parse(spec: str) -> tuple[int, float]:
        """`N/S` (N events per S seconds, both positive) or `0` (no limit: n = 0)."""
        if spec.strip() == "0":
            return 0, 0.0
        n, _, seconds = spec.partition("/")
        if not (n.strip().isdigit() and seconds.strip().isdigit()):
            raise ValueError(spec)
        if int(n) < 1 or int(seconds) < 1:
            raise ValueError(spec)
        return int(n), float(seconds)

    def _window(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            if len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        return hits

    def wait(self, key: str) -> int:
        """Whole seconds until `key` may act again; 0 when it may act now."""
        if not self.n:
            return 0
        now = time.monotonic()
        hits = self._window(key, now)
        if len(hits) < self.n:
            return 0
        return max(1, math.ceil(hits[0] + self.seconds - now))

    def pending(self, key: str) -> bool:
        return self._pending.get(key, 0) > 0

    def take(self, key: str, *, pending: bool = False) -> float | None:
        """Count one event for `key`; its stamp (for `settle`), or None when off."""
        if not self.n:
            return None
        now = time.monotonic()
        self._window(key, now).append(now)
        if pending:
            self._pending[key] = self._pending.get(key, 0) + 1
        return now

    def settle(self, key: str, stamp: float | None, *, counts: bool) -> None:
        """End a pending event: it stays counted (`counts`) or is given back."""
        if stamp is None:
            return
        if self._pending.get(key, 0) <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] -= 1
        hits = self._hits.get(key)
        if not counts and hits is not None and stamp in hits:
            hits.remove(stamp)


class PasswordAttempt:
    """One password check under the login limits; `failed()` before answering 401."""

    def __init__(self) -> None:
        self.is_failure = False

    def failed(self) -> ApiError:
        self.is_failure = True
        return ApiError(401, INVALID_CREDENTIALS)


class Limits:
    """The three abuse limits of SPEC section 7."""

    def __init__(self, config: Config) -> None:
        self.login_user = RateLimit(config.login_limit_user)
        self.login_addr = RateLimit(config.login_limit_addr)
        self.send = RateLimit(config.send_limit)
        self._settled = asyncio.Event()

    @contextlib.asynccontextmanager
    async def password_check(self, username: str, address: str) -> AsyncIterator[PasswordAttempt]:
        """Admit a password check, or 429 without any bcrypt work when over a limit.

        The check counts as failed while it runs, so concurrent guesses cannot pass the limit
        together; when the limit is full only because of checks still running, this waits
        for them (a burst of correct logins is slowed, not refused). A success gives its own
        count back and touches nobody else's.
        """
        limits = ((self.login_user, ascii_lower(username)), (self.login_addr, address))
        while wait := max(limit.wait(key) for limit, key in limits):
            if not any(limit.pending(key) for limit, key in limits):
                raise too_many(TOO_MANY_ATTEMPTS, wait)
            settled = self._settled
            await settled.wait()
        stamps = [limit.take(key, pending=True) for limit, key in limits]
        attempt = PasswordAttempt()
        try:
            yield attempt
        finally:
            for (limit, key), stamp in zip(limits, stamps, strict=True):
                limit.settle(key, stamp, counts=attempt.is_failure)
            self._settled.set()
            self._settled = asyncio.Event()

    def message_created(self, user_id: int) -> None:
        """Count a message about to be created; 429 if the user is over the limit."""
        key = str(user_id)
        wait = self.send.wait(key)
        if wait:
            raise too_many(SENDING_TOO_FAST, wait)
        self.send.take(key)


# --- passwords --------------------------------------------------------------------------


class PasswordHasher:
    """bcrypt on worker threads, never on the event loop.

    The password is first reduced with SHA-256 (base64, 44 bytes) so that every password the
    rules allow works: bcrypt itself reads at most 72 bytes, and 20 four-byte characters are 80.
    """

    def __init__(self, rounds: int, executor: concurrent.futures.Executor) -> None:
        self.rounds = rounds
        self.executor = executor
        self._dummy: bytes | None = None

    @staticmethod
    def _prehash(password: str) -> bytes:
        return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        hashed = await self._run(bcrypt.hashpw, self._prehash(password), salt)
        return hashed.decode("ascii")

    async def check(self, password: str, hashed: str | None) -> bool:
        """Check a password; with no hash (unknown user) spend the same work and say no."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = (await self.hash(secrets.token_urlsafe(16))).encode("ascii")
            await self._run(bcrypt.checkpw, self._prehash(password), self._dummy)
            return False
        return await self._run(bcrypt.checkpw, self._prehash(password), hashed.encode("ascii"))


# --- realtime events --------------------------------------------------------------------


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def channel_room(channel_id: int) -> str:
    return f"channel:{channel_id}"


AUTHED_ROOM = "authed"  # every authenticated socket


class Events:
    """Socket.IO fan-out through rooms, off the HTTP response's path."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self._tasks: set[asyncio.Task] = set()

    def emit(self, event: str, data: Any, room: str | list[str]) -> None:
        """Queue an event; the HTTP response does not wait for slow clients."""
        task = asyncio.create_task(self.sio.emit(event, data, to=room))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sids(self, room: str) -> list[str]:
        return [sid for sid, _ in self.sio.manager.get_participants("/", room)]

    async def join(self, user_id: int, room: str) -> None:
        """Put every socket of a user into a room, from this moment on."""
        for sid in self.sids(user_room(user_id)):
            await self.sio.enter_room(sid, room)

    async def drop_user(self, user_id: int, message: str) -> None:
        """Tell every socket of a user why, then disconnect it."""
        room = user_room(user_id)
        for sid in self.sids(room):
            await self.sio.emit("api_v3_error", {"message": message}, to=sid)
            await self.sio.disconnect(sid)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def readers_room(message: db.Row) -> str | list[str]:
    """The rooms of everyone who may read a message."""
    kind = message["kind"]
    if kind == "public":
        return AUTHED_ROOM
    if kind == "channel":
        return channel_room(message["channel_id"])
    if kind == "dm":
        return sorted({user_room(message["sender_id"]), user_room(message["recipient_id"])})
    return user_room(message["sender_id"])


def attach_socketio(app: web.Application, config: Config) -> socketio.AsyncServer:
    origins = config.cors_origins.strip()
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if origins == "*" else [o.strip() for o in origins.split(",")],
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)

    async def register(sid: str, token: Any) -> str | None:
        """Register a socket as the token's user; the `ready` text, or None if refused."""
        if not isinstance(token, str):
            return None
        database = app[db_key]
        user = await db.user_by_token(database, token)
        if user is None:
            return None
        session = await sio.get_session(sid)
        if session.get("user_id") not in (None, user["id"]):
            for room in sio.rooms(sid):
                if room != sid:
                    await sio.leave_room(sid, room)
        rooms = [user_room(user["id"]), AUTHED_ROOM]
        rooms += [channel_room(c["channel_id"]) for c in await db.channels_of(database, user["id"])]
        for room in rooms:
            await sio.enter_room(sid, room)
        if await db.user_by_token(database, token) is None:  # rotated meanwhile
            for room in rooms:
                await sio.leave_room(sid, room)
            return None
        await sio.save_session(sid, {"user_id": user["id"], "username": user["username"]})
        return f"Server has accepted the connection and registered you as : {user['username']}"

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> None:
        if not auth:  # no auth, or an empty dict: connect unauthenticated
            return
        ready = await register(sid, auth.get("token_api_v3") if isinstance(auth, dict) else None)
        if ready is None:
            raise socketio.exceptions.ConnectionRefusedError(INVALID_TOKEN)
        # After this handler returns the CONNECT packet is queued; `ready` must follow it.
        app[events_key].emit("ready", ready, sid)

    @sio.event
    async def api_v3_connect(sid: str, data: Any = None) -> None:
        ready = await register(sid, data.get("token_api_v3") if isinstance(data, dict) else None)
        if ready is None:
            await sio.emit("api_v3_error", {"message": INVALID_TOKEN}, to=sid)
        else:
            await sio.emit("ready", ready, to=sid)

    return sio


# --- endpoints --------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Endpoint = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(func: Endpoint) -> Endpoint:
    """Register `POST /api/v3/<function name>/`; the handler gets the parsed JSON object."""
    ENDPOINTS[func.__name__] = func
    return func


async def authenticate(request: web.Request, token: str) -> db.Row:
    user = await db.user_by_token(request.app[db_key], token)
    if user is None:
        raise ApiError(401, INVALID_TOKEN)
    return user


async def check_credentials(request: web.Request, body: dict[str, Any]) -> db.Row:
    """The account endpoints' checks, in the contract's order; the user if they pass."""
    username, password = fields(body, "username", "password")
    check_password(password)
    check_username(username)
    limits = request.app[limits_key]
    async with limits.password_check(username, request.remote or "") as attempt:
        user = await db.user_by_name(request.app[db_key], username)
        hashed = user["password_hash"] if user else None
        if not await request.app[hasher_key].check(password, hashed) or user is None:
            raise attempt.failed()
    return user


async def member_channel(request: web.Request, user: db.Row, name: str) -> db.Row:
    """The named channel, if it exists (404) and the user is a member (401)."""
    database = request.app[db_key]
    channel = await db.channel_by_name(database, name)
    if channel is None:
        raise ApiError(404, CHANNEL_NOT_FOUND)
    if not await db.is_member(database, channel["id"], user["id"]):
        raise ApiError(401, NOT_IN_CHANNEL)
    return channel


async def may_read(request: web.Request, user: db.Row, message: db.Row) -> bool:
    kind = message["kind"]
    if kind == "public":
        return True
    if kind == "channel":
        return await db.is_member(request.app[db_key], message["channel_id"], user["id"])
    if kind == "dm":
        return user["id"] in (message["sender_id"], message["recipient_id"])
    return user["id"] == message["sender_id"]


def public(message: db.Row) -> db.Row:
    """The message object as the contract shows it."""
    return {key: message[key] for key in db.MESSAGE_COLUMNS.split(", ")}


# accounts and tokens


@endpoint
async def register(request: web.Request, body: dict[str, Any]) -> web.Response:
    username, password = fields(body, "username", "password")
    check_password(password)
    check_username(username)
    database = request.app[db_key]
    if await db.user_by_name(database, username) is None:
        hashed = await request.app[hasher_key].hash(password)
        if await db.create_user(database, username, hashed):
            return ok("User registered successfully!", 201)
    raise ApiError(401, "User exists!")


@endpoint
async def login(request: web.Request, body: dict[str, Any]) -> web.Response:
    await check_credentials(request, body)
    return ok("Login successful!")


@endpoint
async def generatetoken(request: web.Request, body: dict[str, Any]) -> web.Response:
    user = await check_credentials(request, body)
    token = str(uuid.uuid4())
    old = await db.replace_token(request.app[db_key], user["id"], token)
    if old is None:
        return ok("Made token!", token=token)
    await request.app[events_key].drop_user(user["id"], "Token changed!")
    return ok("Changed token!", token=token)


@endpoint
async def gettoken(request: web.Request, body: dict[str, Any]) -> web.Response:
    user = await check_credentials(request, body)
    if user["token"] is None:
        raise ApiError(401, "No token!")
    return ok("Returning token!", token=user["token"])


# messages


@endpoint
async def senddcmsgwithtoken(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, text = fields(body, "token", "message")
    user = await authenticate(request, token)
    check_message(text)
    request.app[limits_key].message_created(user["id"])
    message = await db.insert_message(
        request.app[db_key], kind="public", sender_id=user["id"], sender=user["username"],
        message=text,
    )  # fmt: skip
    request.app[events_key].emit("new_public_message", public(message), AUTHED_ROOM)
    return ok("Sent message!", id=message["id"])


@endpoint
async def getmessagesforeveryone(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, count, before = fields(body, "token", "count?", "before?")
    await authenticate(request, token)
    messages = await db.public_messages(request.app[db_key], count, before)
    return ok("Got messages!", messages=messages)


@endpoint
async def getmysentmessages(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, count, before = fields(body, "token", "count?", "before?")
    user = await authenticate(request, token)
    database = request.app[db_key]
    messages = await db.sent_messages(database, user["id"], count, before)
    if not messages and not await db.has_sent(database, user["id"]):
        raise ApiError(404, "No sent messages!")
    return web.json_response({"sent_messages": messages})


@endpoint
async def readmessagesfromchannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    if body.get("message_id") is None:
        return await read_channel(request, body)
    token, message_id = fields(body, "token", "message_id")
    user = await authenticate(request, token)
    message = await db.message_by_id(request.app[db_key], message_id)
    if message is None:
        raise ApiError(404, MESSAGE_NOT_FOUND)
    if not await may_read(request, user, message):
        raise ApiError(403, "Your not allowed to read this message!")
    return web.json_response({"messages": [public(message)]})


async def read_channel(request: web.Request, body: dict[str, Any]) -> web.Response:
    """readmessagesfromchannel without message_id: a channel's newest messages."""
    token, name, count, before = fields(body, "token", "name", "count?", "before?")
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    messages = await db.channel_messages(request.app[db_key], channel["id"], count, before)
    return web.json_response({"messages": messages})


@endpoint
async def deletemessage(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, message_id = fields(body, "token", "message_id")
    user = await authenticate(request, token)
    database = request.app[db_key]
    message = await db.message_by_id(database, message_id)
    if message is None:
        raise ApiError(404, MESSAGE_NOT_FOUND)
    if message["sender_id"] != user["id"]:
        raise ApiError(403, "You can only delete your messages!")
    if not await db.delete_message(database, message_id):
        raise ApiError(404, MESSAGE_NOT_FOUND)  # deleted by a concurrent request
    deleted = {"id": message["id"], "kind": message["kind"], "channel": message["channel"]}
    request.app[events_key].emit("message_deleted", deleted, readers_room(message))
    return ok("Message deleted!")


# channels


@endpoint
async def makechannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name = fields(body, "token", "name")
    user = await authenticate(request, token)
    check_channel_name(name)
    channel_id = await db.create_channel(request.app[db_key], name, user["id"])
    if channel_id is None:
        raise ApiError(409, "Channel exists!")
    await request.app[events_key].join(user["id"], channel_room(channel_id))
    return ok("Channel created!", channel_name=name, channel_id=channel_id)


@endpoint
async def addusertochannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name, username = fields(body, "token", "name", "username")
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    database = request.app[db_key]
    added = await db.user_by_name(database, username)
    if added is None:
        raise ApiError(404, USER_NOT_FOUND)
    if not await db.add_member(database, channel["id"], added["id"]):
        raise ApiError(409, "User is already in this channel!")
    events = request.app[events_key]
    await events.join(added["id"], channel_room(channel["id"]))
    event = {"channel_name": channel["name"], "channel_id": channel["id"], "by": user["username"]}
    events.emit("added_to_channel", event, user_room(added["id"]))
    return ok("User added to channel!", channel_name=channel["name"], username=added["username"])


@endpoint
async def sendmessage(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, text, name = fields(body, "token", "message", "channel")
    user = await authenticate(request, token)
    check_message(text)
    channel = await member_channel(request, user, name)
    request.app[limits_key].message_created(user["id"])
    message = await db.insert_message(
        request.app[db_key], kind="channel", sender_id=user["id"], sender=user["username"],
        message=text, channel_id=channel["id"], channel=channel["name"],
    )  # fmt: skip
    event = {key: message[key] for key in ("sender", "message", "channel", "timestamp", "id")}
    request.app[events_key].emit("new_message", event, channel_room(channel["id"]))
    return ok("Message sent!", id=message["id"])


@endpoint
async def getchannels(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    channels = await db.channels_of(request.app[db_key], user["id"])
    if not channels:
        raise ApiError(404, "You are not in any channels!")
    return web.json_response({"channels": channels})


# DMs


@endpoint
async def getdms(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, count, before, username = fields(body, "token", "count?", "before?", "username?")
    user = await authenticate(request, token)
    database = request.app[db_key]
    peer_id = None
    if username is not None:
        peer = await db.user_by_name(database, username)
        if peer is None:
            raise ApiError(404, USER_NOT_FOUND)
        peer_id = peer["id"]
    messages = await db.dms(database, user["id"], count, before, peer_id)
    if not messages and not await db.has_dms(database, user["id"]):
        raise ApiError(404, "No dms!")
    return web.json_response({"dms": messages})


@endpoint
async def senddm(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username, text = fields(body, "token", "username", "message")
    user = await authenticate(request, token)
    check_message(text)
    database = request.app[db_key]
    recipient = await db.user_by_name(database, username)
    if recipient is None:
        raise ApiError(404, USER_NOT_FOUND)
    request.app[limits_key].message_created(user["id"])
    message = await db.insert_message(
        database, kind="dm", sender_id=user["id"], sender=user["username"], message=text,
        recipient_id=recipient["id"], recipient=recipient["username"],
    )  # fmt: skip
    event = {key: message[key] for key in ("sender", "message", "recipient", "id", "timestamp")}
    request.app[events_key].emit("new_dm", event, user_room(recipient["id"]))
    return ok("Dm message sent!", id=message["id"])


@endpoint
async def senddcmsg(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, _channel, text = fields(body, "token", "channel", "message")
    await authenticate(request, token)
    check_message(text)
    raise ApiError(503, BOT_NOT_CONNECTED)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "discord": "disabled"})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API, byte for byte as kept in the repository."""
    return web.Response(
        body=request.app[openapi_key], content_type="application/json", charset="utf-8"
    )


def as_handler(func: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await func(request, await read_body(request))

    return handler


# --- the application --------------------------------------------------------------------


async def create_app(config: Config) -> web.Application:
    """Build the whole server: HTTP API, Socket.IO and (when configured) the Discord bot."""
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[cors_middleware, errors_middleware]
    )
    app[config_key] = config

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        async with db.open_database(config.db) as database:
            app[db_key] = database
            yield

    async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
        workers = os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(workers, "bcrypt") as executor:
            app[hasher_key] = PasswordHasher(config.bcrypt_rounds, executor)
            yield

    app.cleanup_ctx.extend([database_ctx, hasher_ctx])
    app[limits_key] = Limits(config)

    sio = attach_socketio(app, config)
    app[sio_key] = sio
    app[events_key] = Events(sio)

    async def close_sockets(app: web.Application) -> None:
        """Before the web server stops: every socket is told and closed, polling ones too."""
        await app[events_key].drain()
        for sid, _ in list(sio.manager.get_participants("/", None)):
            await sio.disconnect(sid)
        if sio.eio.sockets:
            await sio.eio.disconnect()
        await sio.shutdown()

    app.on_shutdown.append(close_sockets)

    for name, func in ENDPOINTS.items():
        handler = as_handler(func)
        app.router.add_post(f"/api/v3/{name}/", handler)
        app.router.add_post(f"/api/v3/{name}", handler)
    app.router.add_get("/api/v3/health/", health)
    app.router.add_get("/api/v3/health", health)
    document = await asyncio.to_thread(OPENAPI_PATH.read_bytes)  # once, off the loop
    json.loads(document)  # a broken document stops the server at start, not a client later
    app[openapi_key] = document
    app.router.add_get("/api/v3/openapi.json", openapi)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Button API V3 server")
    parser.add_argument("--host", help="address to listen on (BUTTONAPI_HOST, default 0.0.0.0)")
    parser.add_argument("--port", help="port to listen on (BUTTONAPI_PORT, default 5000)")
    parser.add_argument("--db", help="SQLite file (BUTTONAPI_DB, default buttonapi.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = Config.from_env(dict(os.environ), host=args.host, port=args.port, db=args.db)
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        shutdown_timeout=10,
        print=lambda text: log.info("%s", text.strip()),
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
