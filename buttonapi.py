"""Button API V3: configuration, the HTTP JSON API, the app factory and the entry point.

One aiohttp application; Socket.IO (realtime.py) and the Discord bridge (bot.py) share its
event loop. Every SQL statement lives in db.py, every socket event in realtime.py. The
contract is the user's API document plus SPEC.md: every status code and message text below
is binding, quirks included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import functools
import getpass
import hashlib
import json
import logging
import logging.handlers
import math
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
import unicodedata
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import bcrypt
import socketio
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

import bot
import db
import metrics
import permissions
import realtime
from permissions import Actor, Role

log = logging.getLogger("buttonapi")


# --- configuration ----------------------------------------------------------------------


VERSION = "1.0.0"  # this server's version (the API it serves is V3)


def _setting(default: Any, env: str, help: str, low: int = 0, high: int = 2**63 - 1) -> Any:
    """A setting; a whole number one must lie in low-high."""
    return dataclasses.field(
        default=default, metadata={"env": env, "help": help, "low": low, "high": high}
    )


class ConfigError(ValueError):
    """A setting's value that the server can not use (one line for the operator)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting: its default, its environment variable and what it is for.

    A command-line flag beats the environment variable, which beats the default."""

    host: str = _setting("0.0.0.0", "BUTTONAPI_HOST", "address to listen on")
    port: int = _setting(5000, "BUTTONAPI_PORT", "TCP port to listen on", 1, 65535)
    db: str = _setting("buttonapi.db", "BUTTONAPI_DB", "SQLite database file")
    bcrypt_rounds: int = _setting(12, "BUTTONAPI_BCRYPT_ROUNDS", "bcrypt cost of new hashes", 4, 31)
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
    register_limit_addr: str = _setting(
        "10/3600", "BUTTONAPI_REGISTER_LIMIT_ADDR", "registrations per address: N/S or 0"
    )
    trusted_proxies: str = _setting(
        "", "BUTTONAPI_TRUSTED_PROXIES", "reverse proxies whose X-Forwarded-For is believed"
    )
    unauthenticated_sockets: int = _setting(
        20, "BUTTONAPI_UNAUTHENTICATED_SOCKETS", "sockets per address not yet authenticated"
    )
    max_sockets: int = _setting(10_000, "BUTTONAPI_MAX_SOCKETS", "Engine.IO sessions at once", 1)
    registration: str = _setting(
        "open", "BUTTONAPI_REGISTRATION", "who may register: open, invite or closed"
    )
    request_timeout: int = _setting(
        15, "BUTTONAPI_REQUEST_TIMEOUT", "seconds a client may take to send headers or a body", 1
    )
    access_log: int = _setting(1, "BUTTONAPI_ACCESS_LOG", "1: log each request; 0: don't", 0, 1)
    metrics_port: int = _setting(
        0, "BUTTONAPI_METRICS_PORT", "port of Prometheus metrics on 127.0.0.1; 0: off", 0, 65535
    )
    discord_token: str = _setting("", "DISCORD_TOKEN", "bot token; the bridge is off without it")
    discord_guild_id: int = _setting(0, "DISCORD_GUILD_ID", "guild whose text channels bridge")
    discord_channel_id: int = _setting(0, "DISCORD_CHANNEL_ID", "bridge channel for the feed")
    discord_api_base: str = _setting("", "DISCORD_API_BASE", "Discord REST base (tests only)")
    discord_gateway_url: str = _setting("", "DISCORD_GATEWAY_URL", "Discord gateway (tests only)")

    @classmethod
    def from_env(cls, environ: dict[str, str], **overrides: Any) -> Config:
        """The settings from flags (`overrides`, by field name) and the environment; a value
        the server can not use raises ConfigError naming the flag or variable."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name, raw = f"--{field.name.replace('_', '-')}", overrides.get(field.name)
            if raw is None:
                name, raw = field.metadata["env"], environ.get(field.metadata["env"])
            if raw is not None:
                values[field.name] = cls._value(field, name, str(raw))
        return cls(**values)

    @staticmethod
    def _value(field: dataclasses.Field, name: str, raw: str) -> Any:
        if field.name.endswith("_limit") or "_limit_" in field.name:
            try:
                RateLimit.parse(raw)
            except ValueError:
                raise ConfigError(f"{name} must be N/S (N events per S seconds) or 0") from None
        if field.type != "int":
            return raw
        low, high = field.metadata["low"], field.metadata["high"]
        if not (raw.strip().isascii() and raw.strip().isdigit() and low <= int(raw) <= high):
            raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
        return int(raw)


config_key = web.AppKey("config_key", Config)
db_key = web.AppKey("db_key", db.Database)
sio_key = web.AppKey("sio_key", socketio.AsyncServer)
hasher_key = web.AppKey("hasher_key", "PasswordHasher")
limits_key = web.AppKey("limits_key", "Limits")
transports_key = web.AppKey("transports_key", realtime.OpenTransports)
events_key = web.AppKey("events_key", realtime.Events)
bridge_key = web.AppKey("bridge_key", bot.Bridge)
bridge_timing_key = web.AppKey("bridge_timing_key", bot.Timing)
openapi_key = web.AppKey("openapi_key", bytes)
presence_key = web.AppKey("presence_key", realtime.Presence)
pace_key = web.AppKey("pace_key", realtime.Pace)
metrics_key = web.AppKey("metrics_key", metrics.Metrics)

OPENAPI_PATH = Path(__file__).with_name("static") / "openapi.json"
REGISTRATION_MODES = ("open", "invite", "closed")


# --- the contract's texts ---------------------------------------------------------------

USERNAME_LENGTH = "Username needs to be 3-20 chars long!"
USERNAME_CHARACTERS = "Username can not contain spaces or control characters!"
USERNAME_LOOKALIKE = "Username can not mix look-alike scripts!"
PASSWORD_RULES = "Password needs to have 8-20 chars minimum one number minimum one capital letter minimum one special symbol no empty symbols!"  # noqa: E501  (the seed's text, byte for byte)
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
    408: "Request timed out!",
    413: "Request body too large!",
}
NOT_ALLOWED = "You are not allowed to do that!"
BANNED = "You are banned!"
TIMED_OUT = "You are timed out!"
NOT_YOURS = "You can only delete your messages!"
INVITE_NEEDED = "A valid invite is needed to register!"
REGISTRATION_CLOSED = "Registration is closed!"
USER_EXISTS = "User exists!"
PASSWORD_CHANGED = "Password changed!"
ALREADY_LINKED = "Channel is already linked!"
BAD_BODY = "Request body must be a JSON object!"
INTERNAL_ERROR = "Internal server error!"

MAX_BODY = 64 * 1024
SOCKET_SIGN_IN_LIMIT_SOCKET = "10/60"  # failed socket authentications per socket
SOCKET_SIGN_IN_LIMIT_ADDR = "30/60"  # failed socket authentications per client address
MAX_NONCE = 64  # characters of a send's idempotency nonce
MAX_MESSAGE = 2000
MAX_CHANNEL_NAME = 100
MAX_REASON = 200  # characters of a ban's reason
INVITE_SECONDS = 7 * 24 * 3600  # an invite's default life
INVITE_BYTES = 24  # random bytes of an invite code (192 bits)
# The ranges of the numbers of SPEC section 8, by endpoint and field (inclusive).
RANGES = {
    ("banuser", "seconds"): (1, 31_536_000),
    ("timeoutuser", "seconds"): (0, 2_419_200),  # Discord's 28 days; 0 lifts a timeout
    ("createinvite", "seconds"): (60, 2_592_000),
    ("createinvite", "uses"): (1, 1000),
}
MAX_QUERY = 200  # characters of a search query


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


async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer; every failure becomes the contract's JSON error (causes go to
    the log, not the client)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, **exc.extra)
    except web.HTTPException as exc:
        response = error_response(exc.status, TRANSPORT_ERRORS.get(exc.status, exc.reason))
        if "Allow" in exc.headers:  # a 405 names the methods the path takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unexpected failure in %s %s", request.method, request.path)
        return error_response(500, INTERNAL_ERROR)


def allowed_origin(request: web.Request) -> str | None:
    """The Access-Control-Allow-Origin of the answer: "*", the caller's configured origin,
    or None (no CORS header)."""
    origins = request.app[config_key].cors_origins
    if origins.strip() == "*":
        return "*"
    origin = request.headers.get("Origin")
    if origin and origin in {o.strip() for o in origins.split(",")}:
        return origin
    return None


def preflight(request: web.Request, exception: web.HTTPMethodNotAllowed) -> web.Response:
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(exception.allowed_methods))
    response.headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "Content-Type"
    )
    response.headers["Access-Control-Max-Age"] = "86400"
    return response


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware (each layer costs every request): `answer`'s errors, and CORS for
    browser pages of the configured origins (preflight included)."""
    if request.path.startswith("/socket.io"):
        return await answer(request, handler)  # Engine.IO answers CORS itself
    allow = allowed_origin(request)
    exception = request.match_info.http_exception
    if request.method == "OPTIONS" and isinstance(exception, web.HTTPMethodNotAllowed):
        response = preflight(request, exception)
    else:
        response = await answer(request, handler)
    if allow is not None:
        response.headers["Access-Control-Allow-Origin"] = allow
        if allow != "*":
            response.headers["Vary"] = "Origin"
    return response


# --- validation -------------------------------------------------------------------------

NUMBER_FIELDS = {"count", "message_id", "before", "after", "last_message_id", "seconds", "uses"}
BOOL_FIELDS = {"purge"}
DEFAULTS = {"count": 50, "before": db.MAX_ID}
PAGING = ("count?", "before?", "after?")  # every list endpoint's optional fields


def page(count: int, before: int, after: int | None) -> db.Page:
    """The newest `count` before `before`; with `after`, the oldest `count` after it."""
    return db.Page(count, before, after or 0, oldest=after is not None)


def invalid(name: str) -> ApiError:
    return ApiError(400, f"Missing or invalid field: {name}!")


def _number(name: str, value: Any) -> int:
    """A JSON integer or a string of ASCII digits; ids past SQLite's range match nothing."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"  # leading zeros do not make a number larger
        value = int(digits) if len(digits) <= 19 else db.MAX_ID
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
    if name == "nonce" and not 1 <= len(value) <= MAX_NONCE:
        raise invalid(name)
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
        if name in BOOL_FIELDS:
            if not isinstance(value, bool):
                raise invalid(name)
            values.append(value)
            continue
        values.append(_number(name, value) if name in NUMBER_FIELDS else _text(name, value))
    return values


def in_range(endpoint: str, name: str, value: int | None) -> int | None:
    """A number of RANGES (None: absent), or the field's 400."""
    low, high = RANGES[endpoint, name]
    if value is not None and not low <= value <= high:
        raise invalid(name)
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # {"token": a, "token": b}: which one was meant is unclear
        raise ValueError("duplicate key")
    return obj


BODY_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicate_keys
)


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content.is_eof():  # the whole body came with the headers (the usual case)
        raw = request.content.read_nowait()
        if len(raw) > request.client_max_size:
            raise web.HTTPRequestEntityTooLarge(request.client_max_size, len(raw))
    else:
        try:
            async with asyncio.timeout(request.app[config_key].request_timeout):
                raw = await request.read()
        except TimeoutError:  # a client that sends its body slowly holds nothing for long
            raise web.HTTPRequestTimeout() from None
    try:
        body = BODY_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, absurd nesting or numbers
        raise ApiError(400, BAD_BODY) from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_BODY)
    return body


def client_address(request: web.Request) -> str:
    """The client's address: the peer, or behind a trusted reverse proxy the address that
    proxy appended last to X-Forwarded-For (earlier entries are whatever the client said)."""
    peer = request.remote or ""
    proxies = request.app[config_key].trusted_proxies
    if peer and peer in {p.strip() for p in proxies.split(",")}:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        return forwarded or peer
    return peer


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt; unicodedata does not
# expose it), which holds the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0 too.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
# Every character that renders blank: those, the Braille blank, and whitespace (`isspace`,
# which holds every separator of categories Zs, Zl and Zp).
BLANK = frozenset(
    [chr(cp) for low, high in DEFAULT_IGNORABLE for cp in range(low, high + 1)] + ["\u2800"]
)
LOOKALIKE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


def renders_blank(ch: str) -> bool:
    return ch in BLANK or ch.isspace()


def _has_control_or_space(text: str) -> bool:
    return any(renders_blank(ch) or unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


@functools.cache
def _confusables_data() -> tuple[Any, Any]:
    """Unicode's confusables data (confusable-homoglyphs), loaded the first time a new name
    mixes scripts: about 17 MB that an idle server does without."""
    from confusable_homoglyphs import categories, confusables

    return categories, confusables


def _script(letter: str) -> str:
    """A letter's script as its Unicode name begins: LATIN, CYRILLIC, GREEK, ..."""
    return unicodedata.name(letter, "").split(" ", 1)[0]


def _lookalike_scripts(ch: str) -> set[str]:
    """The scripts (of LOOKALIKE_SCRIPTS) in which `ch` has a basic look-alike letter."""
    categories, confusables = _confusables_data()
    found = confusables.is_confusable(ch, greedy=True, preferred_aliases=[]) or []
    glyphs = [g["c"] for f in found for g in f["homoglyphs"] if len(g["c"]) == 1]
    return {categories.alias(g) for g in glyphs if ord(g) < 0x500} & LOOKALIKE_SCRIPTS


def mixes_lookalike_scripts(name: str) -> bool:
    """UTS #39's mixed-script confusable, for the scripts people mix to impersonate (Latin,
    Cyrillic, Greek): the NFKC form mixes them, and every letter outside one of its scripts has
    a look-alike in that script, so the name passes for a single-script one (`victіm` with a
    Cyrillic і). `Ωmega` or `ωx` impersonate nothing and are accepted."""
    name = unicodedata.normalize("NFKC", name)
    letters = {ch: _script(ch) for ch in name if ch.isalpha()}
    letters = {ch: script for ch, script in letters.items() if script in LOOKALIKE_SCRIPTS}
    scripts = set(letters.values())
    if len(scripts) < 2:
        return False
    return any(
        all(own == script or script in _lookalike_scripts(ch) for ch, own in letters.items())
        for script in scripts
    )


def check_username(username: str, *, new: bool = False) -> None:
    """The username rules of SPEC 2, in order; a `new` name also may not mix look-alikes."""
    if not 3 <= len(username) <= 20:
        raise ApiError(411, USERNAME_LENGTH)
    if _has_control_or_space(username):
        raise ApiError(411, USERNAME_CHARACTERS)
    if new and mixes_lookalike_scripts(username):
        raise ApiError(411, USERNAME_LOOKALIKE)


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
    if not 1 <= len(text) <= MAX_MESSAGE or all(renders_blank(ch) for ch in text):
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
        if key not in self._hits:  # asking keeps nothing: only `take` remembers a key
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
    """One credentials check under a limit; `failed()` before answering 401."""

    def __init__(self) -> None:
        self.is_failure = False

    def failed(self, message: str = INVALID_CREDENTIALS) -> ApiError:
        self.is_failure = True
        return ApiError(401, message)


class Limits:
    """The three abuse limits of SPEC section 7."""

    def __init__(self, config: Config) -> None:
        self.login_user = RateLimit(config.login_limit_user)
        self.login_addr = RateLimit(config.login_limit_addr)
        self.send = RateLimit(config.send_limit)
        self.register_addr = RateLimit(config.register_limit_addr)
        self.socket_sid = RateLimit(SOCKET_SIGN_IN_LIMIT_SOCKET)
        self.socket_addr = RateLimit(SOCKET_SIGN_IN_LIMIT_ADDR)
        self._settled = asyncio.Event()
        # requests refused with 429 since start, by limit (the metrics read it)
        self.refused = Counter(dict.fromkeys(("login_user", "login_addr", "send", "register"), 0))

    @contextlib.asynccontextmanager
    async def password_check(self, username: str, address: str) -> AsyncIterator[PasswordAttempt]:
        """Admit a password check, or 429 without any bcrypt work when over a limit.

        The check counts as failed while it runs, so concurrent guesses cannot pass the limit
        together; when the limit is full only because of checks still running, this waits
        for them (a burst of correct logins is slowed, not refused). A success gives its own
        count back and touches nobody else's.
        """
        limits = ((self.login_user, db.ascii_lower(username)), (self.login_addr, address))
        while wait := max(limit.wait(key) for limit, key in limits):
            if not any(limit.pending(key) for limit, key in limits):
                self.refused["login_user" if limits[0][0].wait(limits[0][1]) else "login_addr"] += 1
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

    @contextlib.contextmanager
    def socket_sign_in(self, sid: str, address: str) -> Iterator[PasswordAttempt]:
        """Admit a socket's token check, or 429 when the socket or its address failed too
        often; a failed check (`attempt.failed()`) counts for both."""
        limits = ((self.socket_sid, sid), (self.socket_addr, address))
        if wait := max(limit.wait(key) for limit, key in limits):
            raise too_many(TOO_MANY_ATTEMPTS, wait)
        attempt = PasswordAttempt()
        try:
            yield attempt
        finally:
            if attempt.is_failure:
                for limit, key in limits:
                    limit.take(key)

    def registration(self, address: str) -> None:
        """Count a registration attempt from `address`; 429 (before any bcrypt work) if over."""
        wait = self.register_addr.wait(address)
        if wait:
            self.refused["register"] += 1
            raise too_many(TOO_MANY_ATTEMPTS, wait)
        self.register_addr.take(address)

    def message_created(self, user_id: int) -> None:
        """Count a message about to be created; 429 if the user is over the limit."""
        key = str(user_id)
        wait = self.send.wait(key)
        if wait:
            self.refused["send"] += 1
            raise too_many(SENDING_TOO_FAST, wait)
        self.send.take(key)


# --- passwords --------------------------------------------------------------------------


class PasswordHasher:
    """bcrypt on worker threads, never on the event loop, shared fairly between addresses.

    Each client address waits in its own line and the lines take turns (round robin), so a
    flood of password work from one address delays another address's login by at most one
    job per busy address, not by the whole flood.

    The password is first reduced with SHA-256 (base64, 44 bytes) so that every password the
    rules allow works: bcrypt itself reads at most 72 bytes, and 20 four-byte characters are 80.
    """

    def __init__(self, rounds: int, executor: concurrent.futures.Executor, workers: int) -> None:
        self.rounds = rounds
        self.executor = executor
        self.free = workers  # threads not busy
        self.lines: OrderedDict[str, deque[tuple[Callable[[], Any], asyncio.Future]]] = (
            OrderedDict()
        )
        self._dummy: bytes | None = None

    @property
    def waiting(self) -> int:
        """Password jobs queued, not yet on a thread."""
        return sum(len(line) for line in self.lines.values())

    @staticmethod
    def _prehash(password: str) -> bytes:
        return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())

    async def _run(self, address: str, job: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.lines.setdefault(address, deque()).append((job, future))
        self._next()
        return await future

    def _next(self) -> None:
        """Start the next jobs, one from each address's line in turn."""
        while self.free and self.lines:
            address, line = next(iter(self.lines.items()))
            job, future = line.popleft()
            if line:
                self.lines.move_to_end(address)  # the others go first
            else:
                del self.lines[address]
            if future.cancelled():
                continue
            self.free -= 1
            running = asyncio.get_running_loop().run_in_executor(self.executor, job)
            running.add_done_callback(lambda done, future=future: self._done(done, future))

    def _done(self, done: asyncio.Future, future: asyncio.Future) -> None:
        self.free += 1
        if not future.cancelled():
            if done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._next()

    async def hash(self, password: str, address: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        prehashed = self._prehash(password)
        hashed = await self._run(address, lambda: bcrypt.hashpw(prehashed, salt))
        return hashed.decode("ascii")

    async def check(self, password: str, hashed: str | None, address: str) -> bool:
        """Check a password; with no hash (unknown user) spend the same work and say no."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = (await self.hash(secrets.token_urlsafe(16), address)).encode()
            dummy, prehashed = self._dummy, self._prehash(password)
            await self._run(address, lambda: bcrypt.checkpw(prehashed, dummy))
            return False
        stored, prehashed = hashed.encode("ascii"), self._prehash(password)
        return await self._run(address, lambda: bcrypt.checkpw(prehashed, stored))


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
    limits, address = request.app[limits_key], client_address(request)
    async with limits.password_check(username, address) as attempt:
        user = await db.user_by_name(request.app[db_key], username)
        hashed = user["password_hash"] if user else None
        if not await request.app[hasher_key].check(password, hashed, address) or user is None:
            raise attempt.failed()
    await not_banned(request.app[db_key], user["id"])  # only the right password learns of it
    return user


async def not_banned(database: db.Database, user_id: int) -> None:
    """403 with the ban's reason and end, if the user is banned."""
    ban = db.ban_of(await db.user_profile(database, user_id))
    if ban is not None:
        raise ApiError(403, BANNED, **ban)


def not_timed_out(user: db.Row) -> None:
    """The sends, editmessage, makechannel and addusertochannel of a timed-out user: 403."""
    until = db.timed_out_until(user)
    if until is not None:
        raise ApiError(403, TIMED_OUT, until=until)


def refused(result: db.Row) -> None:
    """A write that found the user banned or timed out by then (db._restriction)."""
    if result.get("refused") == "banned":
        raise ApiError(401, INVALID_TOKEN)  # the token failed meanwhile
    if result.get("refused"):
        raise ApiError(403, TIMED_OUT, until=result["until"])


def require(user: db.Row, action: str) -> None:
    """403 unless the user's role allows the action (permissions.RULES)."""
    if not permissions.allowed(action, Actor(user["id"], Role(user["role"]))):
        raise ApiError(403, NOT_ALLOWED)


# What a community action's write step found wrong (db's words), as the answer.
ACTION_ERRORS: dict[str, Callable[[], ApiError]] = {
    db.NOT_FOUND: lambda: ApiError(404, USER_NOT_FOUND),
    db.FORBIDDEN: lambda: ApiError(403, NOT_ALLOWED),
    db.LAST_ADMIN: lambda: ApiError(409, "The last admin can not be demoted!"),
    db.NOT_BANNED: lambda: ApiError(404, "User is not banned!"),
    db.LINKED: lambda: ApiError(409, ALREADY_LINKED),
}


def done(result: db.Row, **errors: Callable[[], ApiError]) -> db.Row:
    """The result of a community action, or its error (`errors` overrides by db's word,
    spaces as underscores)."""
    error = result.get("error")
    if error is None:
        return result
    raise errors.get(error.replace(" ", "_"), ACTION_ERRORS[error])()


async def member_channel(request: web.Request, user: db.Row, name: str) -> db.Row:
    """The named channel, if it exists (404) and the user is a member (401)."""
    channel = await db.channel_of_member(request.app[db_key], name, user["id"])
    if channel is None:
        raise ApiError(404, CHANNEL_NOT_FOUND)
    if not channel["member"]:
        raise ApiError(401, NOT_IN_CHANNEL)
    return channel


async def socket_sign_in(
    app: web.Application, data: dict[str, Any], sid: str, address: str
) -> tuple[db.Row, int | None]:
    """A socket's `auth` (or api_v3_connect's data), checked as an endpoint's body is: the
    token's user and `last_message_id`; realtime.Refused with the error's text. Failed
    attempts are limited per socket and per address (429's answer, without a lookup)."""
    limits = app[limits_key]
    try:
        with limits.socket_sign_in(sid, address) as attempt:
            database = app[db_key]
            token = data.get("token_api_v3")
            user = await db.user_by_token(database, token) if isinstance(token, str) else None
            if user is None and isinstance(token, str) and await db.ban_of_token(database, token):
                raise ApiError(403, BANNED)
            if user is None:
                raise attempt.failed(INVALID_TOKEN)
            (last_id,) = fields(data, "last_message_id?")
    except ApiError as exc:
        raise realtime.Refused(exc.message, **exc.extra) from None
    return user, last_id


# accounts and tokens


@endpoint
async def register(request: web.Request, body: dict[str, Any]) -> web.Response:
    username, password, invite = fields(body, "username", "password", "invite?")
    database, mode = request.app[db_key], request.app[config_key].registration
    if mode == "closed":
        raise ApiError(403, REGISTRATION_CLOSED)
    invite = invite if mode == "invite" else None  # an open server ignores invites
    if mode == "invite" and (invite is None or not await db.invite_usable(database, invite)):
        raise ApiError(403, INVITE_NEEDED)
    check_password(password)
    check_username(username, new=True)
    address = client_address(request)
    request.app[limits_key].registration(address)
    if db.name_key(username) != db.name_key(db.DELETED) and not await db.user_by_name(
        database, username
    ):
        hashed = await request.app[hasher_key].hash(password, address)
        created = await db.create_user(database, username, hashed, invite)
        if created == db.Created.NO_INVITE:  # used up meanwhile
            raise ApiError(403, INVITE_NEEDED)
        if created == db.Created.CREATED:
            return ok("User registered successfully!", 201)
    raise ApiError(401, USER_EXISTS)


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


async def store_message(
    request: web.Request, user: db.Row, nonce: str | None, **columns: Any
) -> tuple[db.Row, bool]:
    """Store a message the user sends: `(message, True)`, the message with the ids that say
    who may read it. With a nonce the user sent in the last 24 hours:
    `({"id": <that message's id>}, False)`, and nothing is created or counted."""
    database = request.app[db_key]
    not_timed_out(user)
    if nonce is not None and (earlier := await db.nonce_message(database, user["id"], nonce)):
        return {"id": earlier}, False
    request.app[limits_key].message_created(user["id"])
    message = await db.insert_message(
        database, sender_id=user["id"], sender=user["username"], nonce=nonce, **columns
    )
    refused(message)  # banned or timed out by the time of the write
    if message.get("repeat"):
        return message, False
    ids = {key: columns.get(key) for key in ("channel_id", "recipient_id")}
    return {**message, "sender_id": user["id"], **ids}, True


@endpoint
async def senddcmsgwithtoken(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, text, nonce = fields(body, "token", "message", "nonce?")
    user = await authenticate(request, token)
    check_message(text)
    bridge = request.app[bridge_key]
    outbox = bridge.plan_public(user["username"], text)  # committed with the message
    message, new = await store_message(
        request, user, nonce, kind="public", message=text, outbox=outbox
    )
    if new:
        bridge.kick(outbox)  # the mirror never holds up this response
        request.app[events_key].message_created(message)
    return ok("Sent message!", id=message["id"])


@endpoint
async def getmessagesforeveryone(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, *paging = fields(body, "token", *PAGING)
    await authenticate(request, token)
    messages = await db.public_messages(request.app[db_key], page(*paging))
    return ok("Got messages!", messages=messages)


@endpoint
async def getmysentmessages(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, *paging = fields(body, "token", *PAGING)
    user = await authenticate(request, token)
    database = request.app[db_key]
    messages = await db.sent_messages(database, user["id"], page(*paging))
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
    if not await realtime.may_read(request.app[db_key], user["id"], message):
        raise ApiError(403, "Your not allowed to read this message!")
    return web.json_response({"messages": [realtime.message_object(message)]})


async def read_channel(request: web.Request, body: dict[str, Any]) -> web.Response:
    """readmessagesfromchannel without message_id: a channel's newest messages."""
    token, name, count, before, after = fields(body, "token", "name", *PAGING)
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    database = request.app[db_key]
    if before != db.MAX_ID or after is not None:
        messages = await db.channel_messages(database, channel["id"], page(count, before, after))
        return web.json_response({"messages": messages})
    newest = await db.newest_page(database, channel["id"], count)  # the read every client makes
    return web.Response(body=newest, content_type="application/json", charset="utf-8")


@endpoint
async def deletemessage(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, message_id = fields(body, "token", "message_id")
    user = await authenticate(request, token)
    result = await db.delete_message_as(
        request.app[db_key], message_id, user["id"], user["username"]
    )  # the author, a moderator, an admin or the channel's creator (permissions.may_delete)
    message = done(
        result,
        not_found=lambda: ApiError(404, MESSAGE_NOT_FOUND),
        forbidden=lambda: ApiError(403, NOT_YOURS),
    )["message"]
    request.app[bridge_key].message_deleted(message_id)  # and its copies on Discord
    request.app[events_key].message_deleted(message)
    return ok("Message deleted!")


@endpoint
async def editmessage(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, message_id, text = fields(body, "token", "message_id", "message")
    user = await authenticate(request, token)
    check_message(text)
    database, bridge = request.app[db_key], request.app[bridge_key]
    message = await db.message_by_id(database, message_id)
    if message is None:
        raise ApiError(404, MESSAGE_NOT_FOUND)
    if message["sender_id"] != user["id"]:  # written on Discord: no sender here
        raise ApiError(403, "You can only edit your messages!")
    not_timed_out(user)
    request.app[limits_key].message_created(user["id"])  # edits count as sends
    edited = await db.edit_message(database, message_id, user["id"], text, bridge.plan_posts)
    if edited is None:
        raise ApiError(404, MESSAGE_NOT_FOUND)  # deleted by a concurrent request
    if isinstance(edited, dict):
        refused(edited)
    message, dests = edited
    bridge.message_edited(dests)  # its copies on Discord follow; never awaited here
    request.app[events_key].message_edited(message)
    return ok("Message edited!")


# channels


@endpoint
async def makechannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name = fields(body, "token", "name")
    user = await authenticate(request, token)
    check_channel_name(name)
    not_timed_out(user)
    events = request.app[events_key]
    async with events.membership(user["id"]):  # a socket registering meanwhile sees it
        channel_id = await db.create_channel(request.app[db_key], name, user["id"])
        if channel_id is None:
            raise ApiError(409, "Channel exists!")
        await events.channel_created(channel_id, user["id"])
    return ok("Channel created!", channel_name=name, channel_id=channel_id)


async def channel_and_named_user(
    request: web.Request, body: dict[str, Any]
) -> tuple[db.Row, db.Row, db.Row]:
    """{token, name, username}: the caller, a channel they are in, and the named user (404)."""
    token, name, username = fields(body, "token", "name", "username")
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    named = await db.user_by_name(request.app[db_key], username)
    if named is None:
        raise ApiError(404, USER_NOT_FOUND)
    return user, channel, named


@endpoint
async def addusertochannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    user, channel, added = await channel_and_named_user(request, body)
    not_timed_out(user)
    events = request.app[events_key]
    async with events.membership(added["id"]):
        if not await db.add_member(request.app[db_key], channel["id"], added["id"]):
            raise ApiError(409, "User is already in this channel!")
        await events.added_to_channel(added["id"], channel, user["username"])
    return ok("User added to channel!", channel_name=channel["name"], username=added["username"])


@endpoint
async def sendmessage(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, text, name, nonce = fields(body, "token", "message", "channel", "nonce?")
    user = await authenticate(request, token)
    check_message(text)
    channel = await member_channel(request, user, name)
    bridge = request.app[bridge_key]
    outbox = await bridge.plan_channel(channel["name"], user["username"], text)
    message, new = await store_message(
        request, user, nonce, kind="channel", message=text, channel_id=channel["id"],
        channel=channel["name"], outbox=outbox,
    )  # fmt: skip
    if new:
        bridge.kick(outbox)
        request.app[events_key].message_created(message)
    return ok("Message sent!", id=message["id"])


@endpoint
async def getchannels(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    channels = await db.channels_of(request.app[db_key], user["id"])
    if not channels:
        raise ApiError(404, "You are not in any channels!")
    return web.json_response({"channels": channels})


# channel membership (beyond the seed)


@endpoint
async def leavechannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name = fields(body, "token", "name")
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    events = request.app[events_key]
    async with events.membership(user["id"]):
        if not await db.remove_member(request.app[db_key], channel["id"], user["id"]):
            raise ApiError(401, NOT_IN_CHANNEL)  # left by a concurrent request
        await events.removed_from_channel(user["id"], channel, user["username"])
    return ok("Left channel!", channel_name=channel["name"])


@endpoint
async def removeuserfromchannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    user, channel, removed = await channel_and_named_user(request, body)
    database = request.app[db_key]
    if await db.channel_creator(database, channel["id"]) != user["id"]:
        raise ApiError(403, "Only the channel's creator can remove users!")
    events = request.app[events_key]
    async with events.membership(removed["id"]):  # a socket re-registering waits, or is moved
        if not await db.remove_member(database, channel["id"], removed["id"]):
            raise ApiError(404, "User is not in this channel!")
        await events.removed_from_channel(removed["id"], channel, user["username"])
    return ok(
        "User removed from channel!", channel_name=channel["name"], username=removed["username"]
    )


@endpoint
async def getchannelmembers(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name = fields(body, "token", "name")
    user = await authenticate(request, token)
    channel = await member_channel(request, user, name)
    database = request.app[db_key]
    members = await db.members_of(database, channel["id"])
    creator = await db.channel_creator_name(database, channel["id"])  # the one who may remove
    return web.json_response(
        {"channel_name": channel["name"], "members": members, "creator": creator}
    )


# token and account control (beyond the seed)


@endpoint
async def revoketoken(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user_id = await db.revoke_token(request.app[db_key], token)
    if user_id is None:
        raise ApiError(401, INVALID_TOKEN)
    await request.app[events_key].drop_user(user_id, "Token revoked!")
    return ok("Token revoked!")


@endpoint
async def changepassword(request: web.Request, body: dict[str, Any]) -> web.Response:
    (new_password,) = fields(body, "username", "password", "new_password")[2:]
    check_password(new_password)
    user = await check_credentials(request, body)
    hashed = await request.app[hasher_key].hash(new_password, client_address(request))
    token = str(uuid.uuid4())
    await db.set_password(request.app[db_key], user["id"], hashed, token)
    await request.app[events_key].drop_user(user["id"], "Token changed!")
    return ok(PASSWORD_CHANGED, token=token)


@endpoint
async def deleteaccount(request: web.Request, body: dict[str, Any]) -> web.Response:
    user = await check_credentials(request, body)
    deleted = await db.delete_account(request.app[db_key], user["id"])
    events, bridge = request.app[events_key], request.app[bridge_key]
    await events.drop_user(user["id"], "Account deleted!")
    for message in deleted:
        events.message_deleted(message)
        bridge.message_deleted(message["id"])  # and its copies on Discord
    return ok("Account deleted!")


# DMs


@endpoint
async def getdms(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, *paging, username = fields(body, "token", *PAGING, "username?")
    user = await authenticate(request, token)
    database = request.app[db_key]
    peer_id = None
    if username is not None:
        peer = await db.user_by_name(database, username)
        if peer is None:
            raise ApiError(404, USER_NOT_FOUND)
        peer_id = peer["id"]
    messages = await db.dms(database, user["id"], page(*paging), peer_id)
    if not messages and not await db.has_dms(database, user["id"]):
        raise ApiError(404, "No dms!")
    return web.json_response({"dms": messages})


@endpoint
async def senddm(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username, text, nonce = fields(body, "token", "username", "message", "nonce?")
    user = await authenticate(request, token)
    check_message(text)
    recipient = await db.user_by_name(request.app[db_key], username)
    if recipient is None:
        raise ApiError(404, USER_NOT_FOUND)
    message, new = await store_message(
        request, user, nonce, kind="dm", message=text, recipient_id=recipient["id"],
        recipient=recipient["username"],
    )  # fmt: skip
    if new:
        request.app[events_key].message_created(message)
    return ok("Dm message sent!", id=message["id"])


@endpoint
async def senddcmsg(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, target, text, nonce = fields(body, "token", "channel", "message", "nonce?")
    user = await authenticate(request, token)
    check_message(text)
    bridge, database = request.app[bridge_key], request.app[db_key]
    if not bridge.available:
        raise ApiError(503, BOT_NOT_CONNECTED)
    outbox = await bridge.plan_direct(user["id"], user["username"], target, text)
    if not outbox:
        raise ApiError(400, "Invalid input or user not in channel")
    with bridge.watch(outbox) as delivery:  # the first attempt, at most 10 s
        message, new = await store_message(
            request, user, nonce, kind="discord", message=text, channel=target, outbox=outbox
        )
        if not new:  # a repeat: how the earlier message's delivery stands now
            outcome = await db.outbox_outcome(database, message["id"])
        else:
            bridge.kick(outbox)
            outcome = await delivery.outcome()
    if outcome == db.Outcome.REFUSED and not new:
        raise ApiError(502, "Discord rejected the message!")
    if outcome == db.Outcome.REFUSED:  # refused for good: nothing is kept
        await db.delete_message(database, message["id"])
        bridge.message_deleted(message["id"])
        raise ApiError(502, "Discord rejected the message!")
    if outcome == db.Outcome.QUEUED:  # the outbox keeps trying, across restarts too
        return ok("Queued for Discord delivery!", 202, id=message["id"])
    return ok("Dm message sent!", id=message["id"])


# running a community (SPEC section 8; who may do what: permissions.RULES)


@endpoint
async def getme(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    return ok(
        "Got user!", username=user["username"], role=user["role"], created=user["created_at"],
        timed_out_until=db.timed_out_until(user),
    )  # fmt: skip


@endpoint
async def setrole(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username, role = fields(body, "token", "username", "role")
    if role not in set(Role):
        raise invalid("role")
    user = await authenticate(request, token)
    require(user, "setrole")
    result = done(
        await db.set_role(request.app[db_key], user["id"], user["username"], username, Role(role))
    )
    return ok("Role set!", username=result["user"]["username"], role=role)


@endpoint
async def banuser(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username, reason, seconds, purge = fields(
        body, "token", "username", "reason?", "seconds?", "purge?"
    )
    if reason is not None and len(reason) > MAX_REASON:
        raise invalid("reason")
    in_range("banuser", "seconds", seconds)
    user = await authenticate(request, token)
    require(user, "banuser")
    result = done(
        await db.ban_user(
            request.app[db_key], user["id"], user["username"], username, reason, seconds,
            bool(purge),
        )
    )  # fmt: skip
    events, bridge = request.app[events_key], request.app[bridge_key]
    await events.drop_user(result["user"]["id"], BANNED)
    for message in result["purged"]:
        events.message_deleted(message)
        bridge.message_deleted(message["id"])  # and its copies on Discord
    return ok("User banned!", username=result["user"]["username"], until=result["until"])


@endpoint
async def unbanuser(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username = fields(body, "token", "username")
    user = await authenticate(request, token)
    require(user, "unbanuser")
    done(await db.unban_user(request.app[db_key], user["id"], user["username"], username))
    return ok("User unbanned!")


@endpoint
async def timeoutuser(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, username, seconds = fields(body, "token", "username", "seconds")
    in_range("timeoutuser", "seconds", seconds)
    user = await authenticate(request, token)
    require(user, "timeoutuser")
    result = done(
        await db.timeout_user(request.app[db_key], user["id"], user["username"], username, seconds)
    )
    return ok("User timed out!", username=result["user"]["username"], until=result["until"])


@endpoint
async def getauditlog(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, *paging = fields(body, "token", *PAGING)
    user = await authenticate(request, token)
    require(user, "getauditlog")
    entries = await db.audit_entries(request.app[db_key], page(*paging))
    return web.json_response({"entries": entries})


@endpoint
async def getusers(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, *paging = fields(body, "token", *PAGING)
    user = await authenticate(request, token)
    require(user, "getusers")
    return web.json_response({"users": await db.users_page(request.app[db_key], page(*paging))})


@endpoint
async def createinvite(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, uses, seconds = fields(body, "token", "uses?", "seconds?")
    uses = in_range("createinvite", "uses", uses) or 1
    seconds = in_range("createinvite", "seconds", seconds) or INVITE_SECONDS
    user = await authenticate(request, token)
    require(user, "createinvite")
    code = secrets.token_urlsafe(INVITE_BYTES)
    database, name = request.app[db_key], user["username"]
    result = done(await db.create_invite(database, user["id"], name, code, uses, seconds))
    return ok("Invite created!", 201, invite=code, uses=uses, expires=result["expires"])


@endpoint
async def linkchannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name, target = fields(body, "token", "name", "discord_channel")
    user = await authenticate(request, token)
    require(user, "linkchannel")
    database, bridge = request.app[db_key], request.app[bridge_key]
    channel = await db.channel_by_name(database, name)
    if channel is None:
        raise ApiError(404, CHANNEL_NOT_FOUND)
    if not bridge.available:
        raise ApiError(503, BOT_NOT_CONNECTED)
    discord_id = bridge.guild_text_channel(target)
    if discord_id is None:
        raise ApiError(404, CHANNEL_NOT_FOUND)
    if discord_id == bridge.channel_id:  # the public feed's own channel
        raise ApiError(409, ALREADY_LINKED)
    done(await db.link_channel(database, user["id"], user["username"], channel["id"], discord_id))
    return ok("Channel linked!", name=channel["name"], discord_channel=str(discord_id))


@endpoint
async def unlinkchannel(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, name = fields(body, "token", "name")
    user = await authenticate(request, token)
    require(user, "unlinkchannel")
    database = request.app[db_key]
    channel = await db.channel_by_name(database, name)
    if channel is None:
        raise ApiError(404, CHANNEL_NOT_FOUND)
    result = await db.unlink_channel(database, user["id"], user["username"], channel["id"])
    done(result, not_found=lambda: ApiError(404, "Channel is not linked!"))
    return ok("Channel unlinked!")


@endpoint
async def getlinks(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    require(user, "getlinks")
    return web.json_response({"links": await db.links(request.app[db_key])})


# conversations (beyond the seed): search, read markers, presence


@endpoint
async def searchmessages(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, query, count, before = fields(body, "token", "query", "count?", "before?")
    database = request.app[db_key]
    if not 1 <= len(query) <= MAX_QUERY:
        raise invalid("query")
    try:
        await db.check_query(database, query)  # a field FTS5 can not parse is invalid
    except db.BadQuery:
        raise invalid("query") from None
    user = await authenticate(request, token)
    messages = await db.search_messages(database, user["id"], query, count, before)
    return web.json_response({"messages": messages})


@endpoint
async def markread(request: web.Request, body: dict[str, Any]) -> web.Response:
    token, message_id = fields(body, "token", "message_id")
    user = await authenticate(request, token)
    database = request.app[db_key]
    message = await db.message_by_id(database, message_id)
    if message is None:
        raise ApiError(404, MESSAGE_NOT_FOUND)
    if not await realtime.may_read(database, user["id"], message):
        raise ApiError(403, "Your not allowed to read this message!")
    conversation = realtime.conversation_of(message, user["id"])
    if conversation is not None:  # a `discord` message, or a DM whose partner is gone: none
        kind, target_id, name = conversation
        if await db.mark_read(database, user["id"], kind, target_id, message_id):
            request.app[events_key].read_marker(user["id"], message_id, kind, name)
    return ok("Marked read!")


@endpoint
async def getunread(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    public, channels, dms = await db.unread(request.app[db_key], user["id"])
    return web.json_response(
        {
            "public": public,
            "channels": {row["name"]: row["n"] for row in channels if row["n"]},
            "dms": {row["username"]: row["n"] for row in dms if row["n"]},
        }
    )


@endpoint
async def getonline(request: web.Request, body: dict[str, Any]) -> web.Response:
    (token,) = fields(body, "token")
    user = await authenticate(request, token)
    online = await request.app[presence_key].online_peers(user["id"])
    return web.json_response({"online": online})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "discord": request.app[bridge_key].state})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API, byte for byte as kept in the repository."""
    return web.Response(
        body=request.app[openapi_key], content_type="application/json", charset="utf-8"
    )


# The web chat (static/): its page may load nothing but its own files, and forms never submit
# natively, so even markup that slipped into the page could run nothing nor leak a password.
WEB_CHAT_DIR = Path(__file__).with_name("static")
WEB_CHAT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
WEB_CHAT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def add_web_chat(app: web.Application) -> None:
    """`GET /` is the web chat (static/index.html), `GET /static/<file>` its files.

    The files are listed once, at start: no request path ever reaches the file system."""
    files = {p.name: p for p in WEB_CHAT_DIR.iterdir() if p.is_file() and p.name[0] != "."}

    async def static_file(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info.get("name", "index.html"))
        if path is None:
            raise web.HTTPNotFound()
        # Our own table: the guess of mimetypes depends on the machine's /etc/mime.types.
        content_type = WEB_CHAT_TYPES.get(path.suffix, "application/octet-stream")
        return web.FileResponse(path, headers={**WEB_CHAT_HEADERS, "Content-Type": content_type})

    app.router.add_get("/", static_file)
    app.router.add_get("/static/{name}", static_file)


def as_handler(func: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        return await func(request, body)

    return handler


# --- the application --------------------------------------------------------------------


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    async with db.open_database(app[config_key].db) as database:
        app[db_key] = database
        yield


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers, "bcrypt") as executor:
        app[hasher_key] = PasswordHasher(app[config_key].bcrypt_rounds, executor, workers)
        yield


async def bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Discord bot and its outbox, started after the database and stopped before it."""
    config, events = app[config_key], app[events_key]

    def publish(message: db.Row, channel_id: int | None) -> None:
        """A message written on Discord reaches sockets like the API's own."""
        events.message_created({**message, "channel_id": channel_id})

    async with bot.Bridge(
        app[db_key], publish, token=config.discord_token,
        guild_id=config.discord_guild_id, channel_id=config.discord_channel_id,
        api_base=config.discord_api_base, gateway_url=config.discord_gateway_url,
        timing=app[bridge_timing_key],
    ) as bridge:  # fmt: skip
        app[bridge_key] = bridge
        yield


EXTERNAL_POLL = 1.0  # seconds between checks for the command line's writes (sockets)


async def external_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """The command line writes from another process: requests see its changes at once
    (db.Database.check_external before any cache), and this watch drops the sockets of a
    user it banned, or whose token it rotated, within EXTERNAL_POLL seconds."""

    async def watch() -> None:
        database, events = app[db_key], app[events_key]
        seen = database.external_changes
        while True:
            await asyncio.sleep(EXTERNAL_POLL)
            database.check_external()
            if database.external_changes == seen:
                continue
            seen = database.external_changes
            sockets = await events.signed_in()
            banned = set(await db.banned_among(database, sorted({s[1] for s in sockets})))
            for user_id in banned:
                await events.drop_user(user_id, BANNED)
            for sid, user_id, token in sockets:  # resetpassword rotated the token
                if user_id not in banned and await db.user_by_token(database, token) is None:
                    await events.drop_socket(sid, "Token changed!")

    task = asyncio.create_task(watch(), name="buttonapi-external-watch")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def add_sockets(app: web.Application) -> None:
    """Socket.IO on the app: its server, the events it sends and the socket handlers."""
    config = app[config_key]
    sessions = realtime.Sessions(config.max_sockets, config.unauthenticated_sockets)
    sio = realtime.socket_server(
        app, config.cors_origins, MAX_BODY, sessions, client_address, app[transports_key]
    )
    events = realtime.Events(sio, app[transports_key])
    sign_in = functools.partial(socket_sign_in, app)
    presence = realtime.Presence(events, lambda: app[db_key], app[pace_key])
    sockets = realtime.Sockets(events, lambda: app[db_key], sign_in, sessions, presence)
    sio.register_namespace(sockets)
    app[sio_key] = sio
    app[events_key] = events
    app[presence_key] = presence


async def close_sockets(app: web.Application) -> None:
    """Before the web server stops: every socket is told and closed, polling ones too."""
    app[presence_key].close()
    await realtime.shutdown(app[sio_key], app[events_key], app[transports_key])


async def add_routes(app: web.Application) -> None:
    """The API's endpoints, health, the OpenAPI document and the web chat."""
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
    add_web_chat(app)


def metric_sources(app: web.Application) -> metrics.Sources:
    """What the metrics read at scrape time: the server's own state, read only."""

    def sessions() -> realtime.Sessions:
        return app[sio_key].namespace_handlers["/"].sessions

    def sockets() -> dict[str, int]:
        waiting = len(sessions().waiting)
        return {"authenticated": len(sessions().live) - waiting, "unauthenticated": waiting}

    return metrics.Sources(
        sockets=sockets,
        engineio_sessions=lambda: len(sessions().live),
        password_checks_waiting=lambda: app[hasher_key].waiting,
        limit_refusals=lambda: dict(app[limits_key].refused),
        outbox=lambda: db.outbox_backlog(app[db_key]),
    )


def metrics_ctx(sock: socket.socket | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """/metrics on its own port while the app runs (after the database, before the bot)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        meter = app.get(metrics_key)
        if meter is None:
            yield
            return
        app[db_key].observer = meter
        async with metrics.serving(meter, app[config_key].metrics_port, sock):
            yield

    return ctx


async def create_app(
    config: Config,
    *,
    bridge_timing: bot.Timing | None = None,
    metrics_sock: socket.socket | None = None,
    pace: realtime.Pace | None = None,
) -> web.Application:
    """Build the whole server: HTTP API, Socket.IO and (when configured) the Discord bot.

    `bridge_timing`: the Discord bridge's waits and backoff (tests shorten them).
    `metrics_sock`: the metrics port, bound already (else it is bound when the app starts).
    `pace`: presence's grace time and typing's interval (tests shorten them)."""
    transports = realtime.OpenTransports()
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[middleware],
    )
    if config.metrics_port:
        app[metrics_key] = metrics.Metrics(metric_sources(app))
        app.middlewares.insert(0, app[metrics_key].middleware)  # outermost: every answer
    app[config_key] = config
    app[bridge_timing_key] = bridge_timing or bot.Timing()
    app[pace_key] = pace or realtime.Pace()
    app[transports_key] = transports
    app.cleanup_ctx.extend(
        [database_ctx, hasher_ctx, metrics_ctx(metrics_sock), bridge_ctx, external_watch_ctx]
    )
    app[limits_key] = Limits(config)
    add_sockets(app)
    app.on_shutdown.append(close_sockets)
    await add_routes(app)
    return app


class AccessLines:
    """The access log: one line per request. The loop only appends the request's fields to a
    deque (no formatting, no log record); a thread formats the waiting lines and writes them
    in one call every `PERIOD` seconds, in the layout of every other log line. At most `cap`
    lines wait: past that (a disk slower than a flood) lines are dropped and counted."""

    PERIOD = 0.1

    def __init__(self, stream: Any, cap: int = 100_000) -> None:
        self.stream = stream
        self.cap = cap
        self.waiting: deque[tuple] = deque()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buttonapi-access-log")
        self._second = (-1, "")  # the last second formatted, and its text

    def add(self, line: tuple) -> None:
        if len(self.waiting) < self.cap:
            self.waiting.append(line)
        else:
            self.dropped += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.PERIOD):
            self.write()
        self.write()

    def _stamp(self, at: float) -> str:
        """`asctime` as logging's default formatter writes it (local time, milliseconds)."""
        second = int(at)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return f"{self._second[1]},{int((at - second) * 1000):03d}"

    def write(self) -> None:
        lines = []
        while self.waiting:
            at, remote, method, path, version, status, size, seconds, agent = self.waiting.popleft()
            lines.append(
                f'{self._stamp(at)} INFO aiohttp.access: {remote} "{method} {path} HTTP/'
                f'{version.major}.{version.minor}" {status} {size} {seconds:.6f}s "{agent}"\n'
            )
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            lines.append(
                f"{self._stamp(time.time())} WARNING aiohttp.access: {dropped} lines"
                " dropped (the log could not be written fast enough)\n"
            )
        if lines:
            with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing to do
                self.stream.write("".join(lines))
                self.stream.flush()


class LeanAccessLog(AbstractAccessLogger):
    """aiohttp's hook for the access log, handing each request's fields to `AccessLines`
    (run_app passes it as the "logger"): aiohttp's own access logger interprets a format
    string and builds a log record with a dict of extra fields for every request. aiohttp
    makes one per connection, so the peer's address is looked up once per connection (it
    was a third of this method's time)."""

    def __init__(self, logger: Any, log_format: str) -> None:
        super().__init__(logger, log_format)
        self.remote: str | None = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, seconds: float) -> None:
        if self.remote is None:
            self.remote = request.remote
        self.logger.add((  # type: ignore[attr-defined]
            time.time(), self.remote, request.method, request.raw_path, request.version,
            response.status, response.body_length, seconds,
            request.headers.get("User-Agent", "-"),
        ))  # fmt: skip


class RecordQueue(logging.handlers.QueueHandler):
    """QueueHandler without its `prepare`, which formats the record in the caller's thread
    (for pickling, which a queue between threads does not need): the thread formats it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


@contextlib.contextmanager
def logging_off_the_loop(access_log: bool) -> Iterator[AccessLines | None]:
    """Every log line is handed to a thread that formats and writes it: a slow terminal or
    disk, or a flood of access lines, never holds the event loop. Yields the access log's
    lines (None when it is off)."""
    root = logging.getLogger()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.handlers.QueueListener(records, *root.handlers, respect_handler_level=True)
    root.handlers = [RecordQueue(records)]
    access = AccessLines(sys.stderr) if access_log else None
    writer.start()
    if access:
        access.start()
    try:
        yield access
    finally:
        if access:
            access.stop()  # writes what is waiting
        writer.stop()
        root.handlers = list(writer.handlers)


async def create_served_app(config: Config, metrics_sock: socket.socket | None) -> web.Application:
    """The app as `main` serves it: once stopping has begun, a second SIGINT or SIGTERM is
    noted and changes nothing (the stop is bounded already; an interrupted one would lose the
    database's orderly close)."""
    app = await create_app(config, metrics_sock=metrics_sock)

    async def ignore_further_signals(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, log.info, "already stopping")

    app.on_shutdown.insert(0, ignore_further_signals)
    return app


class OneLine(logging.Filter):
    """Failures a client or a network outage can cause over and over, logged as one warning
    line each, not an ERROR with a traceback, so that a flood or an outage can not fill the
    disk: HTTP that aiohttp cannot parse (it answers a plain-text 400 itself), and discord.py's
    reconnects while Discord can not be reached."""

    def __init__(self, *kinds: type[BaseException]) -> None:
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.kinds):
            text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            record.msg, record.args = "%s: %s", (record.getMessage(), ascii(text)[:200])
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# --- the command line: python buttonapi.py admin ... (SPEC section 8) ----------------------


def admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buttonapi.py admin",
        description="Run the community from the command line, with the server running or not."
        " Passwords are read from a prompt or standard input, never from the command line.",
    )
    parser.add_argument("--db", help="SQLite file (BUTTONAPI_DB, default buttonapi.db)")
    commands = parser.add_subparsers(dest="command", required=True)
    setrole_cmd = commands.add_parser("setrole", help="give a user a role")
    setrole_cmd.add_argument("username")
    setrole_cmd.add_argument("role", help="member, moderator or admin")
    commands.add_parser("adduser", help="make an account").add_argument("username")
    commands.add_parser("resetpassword", help="set a new password").add_argument("username")
    ban_cmd = commands.add_parser("ban", help="ban a user")
    ban_cmd.add_argument("username")
    ban_cmd.add_argument("--reason")
    ban_cmd.add_argument("--seconds", help="the ban's length (default: until unbanned)")
    commands.add_parser("unban", help="lift a ban").add_argument("username")
    return parser


def read_password() -> str:
    """From a prompt on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


async def admin_command(config: Config, args: argparse.Namespace, password: str | None) -> str:
    """One command on the database file, through db.py's write gate like the server's own
    writes (marked external, so a running server forgets its caches). The success text;
    ApiError with the HTTP answer's text otherwise."""
    async with db.open_database(config.db, external=True) as database:
        console = permissions.CONSOLE
        if args.command == "setrole":
            (role,) = fields({"role": args.role}, "role")
            if role not in set(Role):
                raise invalid("role")
            done(await db.set_role(database, None, console, args.username, Role(role)))
            return "Role set!"
        if args.command in ("adduser", "resetpassword"):
            return await admin_password(config, database, args.command, args.username, password)
        if args.command == "ban":
            seconds = _number("seconds", args.seconds) if args.seconds is not None else None
            reason = args.reason
            if reason is not None and len(reason) > MAX_REASON:
                raise invalid("reason")
            in_range("banuser", "seconds", seconds)
            result = await db.ban_user(
                database, None, console, args.username, reason, seconds, False
            )
            done(result)
            return "User banned!"
        done(await db.unban_user(database, None, console, args.username))
        return "User unbanned!"


async def admin_password(
    config: Config, database: db.Database, command: str, username: str, password: str | None
) -> str:
    """adduser and resetpassword: the same rules as register and changepassword."""
    check_password(password or "")
    user = await db.user_by_name(database, username)
    if command == "adduser":
        check_username(username, new=True)
        if user is not None:
            raise ApiError(401, USER_EXISTS)
    elif user is None:
        raise ApiError(404, USER_NOT_FOUND)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        hashed = await PasswordHasher(config.bcrypt_rounds, executor, 1).hash(password or "", "")
    if command == "adduser":
        created = await db.create_user(database, username, hashed, audit=True)
        if created != db.Created.CREATED:
            raise ApiError(401, USER_EXISTS)
        return "User registered successfully!"
    await db.set_password(database, user["id"], hashed, str(uuid.uuid4()), audit=user["username"])
    return PASSWORD_CHANGED


def run_admin(argv: list[str]) -> int:
    """`python buttonapi.py admin ...`: exit 0 with the success text, or 1 with the HTTP
    answer's text (on stderr)."""
    args = admin_parser().parse_args(argv)
    config = Config.from_env(dict(os.environ), db=args.db)
    password = read_password() if args.command in ("adduser", "resetpassword") else None
    try:
        print(asyncio.run(admin_command(config, args, password)))
    except ApiError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    return 0


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class CannotListen(Exception):
    """A port that can not be listened on (one line for the operator)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port now, so that a port in use is known before anything else
    is done (the database is not created yet); the server listens on it later."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp itself does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def start_line(config: Config) -> str:
    """The one log line at start: what runs, where, on which data, and how."""
    registration = getattr(config, "registration", "open")
    discord = (
        f"on (guild {config.discord_guild_id}, bridge channel {config.discord_channel_id})"
        if config.discord_token
        else "off"
    )
    metrics = f"http://127.0.0.1:{config.metrics_port}/metrics" if config.metrics_port else "off"
    return (
        f"buttonapi {VERSION} started: http://{config.host}:{config.port},"
        f" database {Path(config.db).absolute()},"
        f" registration {registration}, discord {discord}, metrics {metrics},"
        f" access log {'on' if config.access_log else 'off'}"
    )


def run_backup(argv: list[str]) -> int:
    """`buttonapi.py backup FILE`: an online copy of the database (db.backup); 0 when done."""
    parser = Parser(
        prog="buttonapi.py backup",
        description="Copy the database, consistently, while the server runs and writes.",
    )
    parser.add_argument("file", metavar="FILE", help="the new backup file (must not exist)")
    parser.add_argument("--db", help="the database (BUTTONAPI_DB, default buttonapi.db)")
    args = parser.parse_args(argv)
    path = args.db or os.environ.get("BUTTONAPI_DB") or Config.db
    try:
        db.backup(path, args.file)
    except (db.CannotOpen, db.BackupFailed) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, db.CannotOpen) else 1
    return 0


def server_parser() -> Parser:
    parser = Parser(
        prog="buttonapi.py",
        description="Button API V3 server. `buttonapi.py backup FILE` backs its database up.",
    )
    parser.add_argument("--version", action="version", version=f"buttonapi {VERSION}")
    parser.add_argument("--host", help="address to listen on (BUTTONAPI_HOST, default 0.0.0.0)")
    parser.add_argument("--port", help="port to listen on (BUTTONAPI_PORT, default 5000)")
    parser.add_argument("--db", help="SQLite file (BUTTONAPI_DB, default buttonapi.db)")
    parser.add_argument(
        "--metrics-port",
        help="serve Prometheus metrics on 127.0.0.1:PORT (BUTTONAPI_METRICS_PORT, default off)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "admin":
        raise SystemExit(run_admin(argv[1:]))
    if argv and argv[0] == "backup":
        raise SystemExit(run_backup(argv[1:]))
    parser = server_parser()
    args = parser.parse_args(argv)
    try:  # every check before anything is created: the settings, the ports, the database
        config = Config.from_env(
            dict(os.environ), host=args.host, port=args.port, db=args.db,
            metrics_port=args.metrics_port,
        )  # fmt: skip
        sock = listen(config.host, config.port)
        metrics_sock = listen("127.0.0.1", config.metrics_port) if config.metrics_port else None
        db.check_openable(config.db)
    except (ConfigError, CannotListen, db.CannotOpen) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.server").addFilter(OneLine(HttpProcessingError))
    logging.getLogger("discord.client").addFilter(OneLine(OSError, aiohttp.ClientError))
    started = time.monotonic()
    with logging_off_the_loop(bool(config.access_log)) as access_lines:
        try:
            web.run_app(
                create_served_app(config, metrics_sock),
                sock=sock,
                shutdown_timeout=10,
                keepalive_timeout=config.request_timeout,  # also bounds the wait for headers
                print=lambda _: log.info("%s", start_line(config)),
                access_log=access_lines,  # type: ignore[arg-type]  # LeanAccessLog's "logger"
                access_log_class=LeanAccessLog,
            )
        except db.CannotOpen as exc:  # found only on opening (refused by the OS or SQLite)
            parser.error(str(exc))
    # after every waiting log line is out, so that this is the last
    log.info("buttonapi %s stopped after %d s", VERSION, time.monotonic() - started)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
