"""A fake Discord (REST v10 + gateway) server for tests.

``FakeDiscord`` is a real aiohttp web server on ``127.0.0.1`` (port 0, so the OS
picks a free port) that speaks enough of the Discord REST API v10 and of the
gateway websocket for the *real* discord.py 2.7.1 ``discord.Client`` to log in,
become ready, see one guild, receive messages and send/edit/delete messages.
It only depends on aiohttp (it does not import discord.py).

Quick use::

    fake = FakeDiscord(guild_id=1000, channels={"bridge": 111, "general": 222})
    await fake.start()
    ...  # point discord.py at it (see below) and run the bot
    await fake.inject_message(111, "hello", author={"id": 5, "username": "alice"})
    await fake.wait_for(lambda f: f.messages[111])
    await fake.close()

How to point discord.py at this fake
------------------------------------
discord.py 2.7.1 has two class-level URLs and a bot module must override BOTH
before ``client.start()`` / ``client.login()`` is called:

1. REST:    ``discord.http.Route.BASE = fake.api_base``
   (a ``str`` class attribute, e.g. ``"http://127.0.0.1:PORT/api/v10"``;
   every ``Route`` reads it when it is constructed, i.e. per request).
2. Gateway: ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)``
   (a ``yarl.URL`` class attribute, e.g. ``ws://127.0.0.1:PORT/gateway``).

Why (2) is needed: a plain ``discord.Client`` in 2.7.1 never calls
``GET /gateway/bot``. ``Client.connect()`` calls ``DiscordWebSocket.from_client()``
with no gateway, which falls back to ``DiscordWebSocket.DEFAULT_GATEWAY``
(``wss://gateway.discord.gg/``). Only after READY does it use
``resume_gateway_url`` (for RESUME); a non-resumable INVALID_SESSION resets it
to ``DEFAULT_GATEWAY`` again. (Only ``AutoShardedClient`` with
``shard_count=None`` takes the URL from ``GET /gateway/bot``.) So setting only
``Route.BASE`` is NOT enough for ``discord.Client``.

Suggested bot-module code (config value names are up to the bot)::

    import discord, discord.gateway, discord.http, yarl

    def point_discord_at(api_base: str | None, gateway_url: str | None) -> None:
        if api_base:
            discord.http.Route.BASE = api_base.rstrip("/")
        if gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

If the bot wants a single setting (the REST base), it can derive the gateway
URL from ``/gateway/bot`` itself in ``setup_hook`` (runs after login, before the
gateway connect); this works against real Discord too::

    async def setup_hook(self):
        if custom_api_base_configured:
            _shards, url, _limits = await self.http.get_bot_gateway()
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)

Both attributes are process-global; tests should set them with
``monkeypatch.setattr`` so they are restored afterwards. discord.py appends
``?v=10&encoding=json&compress=zlib-stream`` (or ``zstd-stream`` if zstandard
is importable) to the gateway URL; the fake accepts any query and always
answers with uncompressed TEXT frames, which discord.py handles without
touching its decompressor (only BINARY frames are decompressed).

Other discord.py facts the fake is built around:

* ``json_or_text`` only parses a body as JSON when ``Content-Type`` is exactly
  ``application/json`` (aiohttp's ``json_response`` adds ``; charset=utf-8``,
  which would make discord.py see a ``str``), so the fake sets it exactly.
* A 429 is only treated as a rate limit if the response has a ``Via`` header
  and a JSON body (otherwise discord.py assumes a Cloudflare ban and raises
  ``HTTPException`` at once); the fake sends ``Via: 1.1 google``.
* ``on_ready`` fires ``guild_ready_timeout`` (default 2.0 s) after the last
  GUILD_CREATE; pass ``guild_ready_timeout=0.1`` to ``discord.Client`` in tests.
* ``Client.before_identify_hook`` sleeps 5 s before every non-initial IDENTIFY,
  so a re-IDENTIFY after INVALID_SESSION takes > 5 s (a RESUME is immediate).
* ``client.close()`` requests close code 1000, but the connect task's pending
  ``receive()`` sees the close first and sends 4000, which is what the fake
  observed (``fake.gateway_closes == [4000]``).

Public API
----------
``FakeDiscord(*, guild_id=..., guild_name=..., channels={name: id}, members=[user dicts],
token=..., bot_id=..., bot_name=..., heartbeat_interval_ms=41250, echo_own_messages=True,
disallowed_intents=0, port=0, bot_role_permissions=0)`` (``port``: a fixed loopback port, e.g.
to come up where a client is already trying to connect; 0 lets the OS pick;
``bot_role_permissions``: extra guild-wide permission bits of the bot's own role, e.g.
``MANAGE_WEBHOOKS``)

* Permissions: GUILD_CREATE carries the roles (@everyone, and the bot's managed role given to
  the bot's member) and each channel's ``permission_overwrites``, so discord.py computes
  ``channel.permissions_for(guild.me)`` as with Discord. ``await fake.allow_webhooks(channel,
  allowed=True)`` gives (``False``: denies, ``None``: clears) the bot Manage Webhooks in one
  channel with a member overwrite and dispatches CHANNEL_UPDATE to a connected client.
  ``fake.bot_permissions(channel)`` is the fake's own computation, which the REST routes
  enforce (webhook routes: Manage Webhooks; deleting another author's message: Manage
  Messages).
* Webhooks: ``fake.webhooks`` ({id: webhook object with its token}); ``fake.add_webhook(
  channel, name, by_bot=False)`` makes one that already exists (by a guild admin: Discord
  lists it to the bot without its token; ``by_bot=True``: as if the bot made it earlier);
  ``fake.delete_webhook(id)`` removes one as an admin would (its messages stay).

* ``await fake.start()`` / ``await fake.close()``
* ``fake.api_base``, ``fake.gateway_url``, ``fake.token``, ``fake.bot_user`` (dict),
  ``fake.bot_id``, ``fake.guild_id``, ``fake.channels`` ({name: id}),
  ``fake.channel_id(name_or_id)``.
* REST auth: every route except ``GET /gateway`` and the fake CDN requires
  ``Authorization: Bot <token>``; otherwise 401 ``{"message": "401: Unauthorized", "code": 0}``.
* Records:
    - ``fake.calls``: list of ``(method, path, json_body)`` for EVERY REST request
      (including failed/faulted ones); ``path`` is relative to ``api_base``
      (e.g. ``"/channels/111/messages"``), ``json_body`` is the JSON body (for
      multipart uploads: the parsed ``payload_json``) or ``None``.
    - ``fake.attempts``: list of :class:`Attempt` (method, path, json, target,
      time=``loop.time()`` at arrival, status, fault, done) for every REST request
      (``done`` becomes True when answered, or dropped: ``done and status is None``);
      ``fake.attempt_times(target, method="POST")`` gives the arrival times.
    - ``fake.messages``: ``{channel_id: [PostedMessage, ...]}`` for successful
      bot posts and webhook executions (``id``, ``channel_id``, ``content``,
      ``allowed_mentions``, ``body``, ``files``, ``deleted``, ``edits``,
      ``webhook_id`` and ``username`` for a webhook post); ``fake.contents(channel)``
      returns the posted contents, ``fake.shown(channel)`` what the channel shows now
      (the current text of every post not deleted). A post with ``nonce`` and
      ``enforce_nonce: true`` whose nonce was used before returns that earlier message and
      posts nothing
      (Discord checks "the past few minutes"; the fake remembers every nonce).
    - ``fake.edited``: list of ``(channel_id, message_id, json_body)``;
      ``fake.deleted``: list of ``(channel_id, message_id)`` (through the channel's
      routes or a webhook's).
    - Gateway: ``fake.identifies`` (IDENTIFY ``d`` payloads), ``fake.intents``
      (intents of the last IDENTIFY), ``fake.resumes`` (RESUME ``d`` payloads),
      ``fake.heartbeats`` (count of op 1 received), ``fake.gateway_connections``
      (query dict of every websocket connect), ``fake.gateway_closes`` (close
      codes of client-side closes), ``fake.dispatched`` (``(event, data)`` that
      were actually sent or queued for the client), ``fake.connected`` (a
      websocket is open and identified/resumed).
* ``await fake.inject_message(channel, content, *, author=None, bot=False,
  attachments=None, member_nick=None, embeds=None, webhook_id=None)`` ->
  message dict. Dispatches MESSAGE_CREATE for a guild text channel (``channel``
  is an id or a name) with ``guild_id``, ``member`` (``nick=member_nick``) and
  ``author`` (``id``, ``username``, ``global_name``, ``bot``; missing fields are
  filled). ``attachments`` is a list of dicts (``filename``, optional ``url``,
  ``size``, ``content_type``; a ``data: bytes`` entry is served by the fake at
  its own ``/cdn/...`` URL). Intents are honoured like Discord: no
  GUILD_MESSAGES intent -> not dispatched; no MESSAGE_CONTENT intent ->
  ``content``/``embeds``/``attachments`` are emptied unless the bot is mentioned.
* ``await fake.inject_dm(user_id, username, content, *, global_name=None,
  attachments=None)`` -> message dict. MESSAGE_CREATE without ``guild_id`` in
  the user's DM channel (``fake.dm_channel_id(user_id)``, stable; the same id is
  returned by ``POST /users/@me/channels``), so discord.py makes it a
  ``DMChannel`` message. Needs the DIRECT_MESSAGES intent.
* Injected events need a gateway session (the client has identified at least
  once; else ``RuntimeError``). While the websocket is down they are queued
  and replayed on RESUME (like Discord); a re-IDENTIFY loses them.
* Faults (per destination): ``fake.fail(target, status=500, *, code=None,
  message=None, retry_after=1.5, is_global=False, hang=False, times=None,
  method=None, path=None)`` -> :class:`Fault`. ``target`` is a channel id (guild or DM
  channel; every REST route under ``/channels/{id}`` and of that channel's webhooks is
  affected, optionally only ``method`` and paths matching the regular expression
  ``path``), a channel name, or ``FakeDiscord.DM_CREATE`` for
  ``POST /users/@me/channels``. Bodies: 429 ->
  ``{"message": "You are being rate limited.", "retry_after": x, "global": false}``
  with ``Retry-After``, ``X-RateLimit-*`` and ``Via`` headers; 403 -> code 50013
  by default (pass ``code=50001`` / ``50007``); 404 -> code 10003 by default;
  5xx -> ``{"message": "500: Internal Server Error", "code": 0}``.
  ``times=N`` fails N requests then the fault disappears. ``hang=True`` never
  answers until ``clear_faults()`` (or ``close()``); a released request whose
  client has gone away is dropped (not processed), otherwise it is processed
  normally. ``fake.clear_faults(target=None)`` removes faults (all if None).
* ``await fake.drop_gateway(code=4000, *, invalidate=False)``: closes the
  client websocket from the server side. discord.py reconnects at once and
  sends RESUME, answered with the replay of missed events + RESUMED. With
  ``invalidate=True`` the session is forgotten, RESUME gets INVALID_SESSION
  (``d: false``) and the client re-IDENTIFYs (new READY + GUILD_CREATE).
* ``await fake.wait_for(predicate, timeout=5.0)``: waits until
  ``predicate(fake)`` is truthy (re-checked after every recorded REST call,
  status change and gateway event; no polling) and returns its value, else
  raises ``TimeoutError``.

REST routes (under ``/api/v10``): ``GET /gateway``, ``GET /gateway/bot``,
``GET /users/@me``, ``GET /users/{id}``, ``GET /oauth2/applications/@me``
(discord.py's ``login()`` calls it), ``POST /users/@me/channels``,
``GET /channels/{id}``, ``POST /channels/{id}/messages`` (JSON or multipart),
``GET|PATCH|DELETE /channels/{id}/messages/{mid}``, ``POST /channels/{id}/typing``,
``GET|POST /channels/{id}/webhooks`` (list: tokens only of the bot's own; create: name rules,
at most 15 per channel), ``POST /webhooks/{id}/{token}`` (execute; ``?wait=true`` or ``1``
returns the message, else 204; ``username`` follows Discord's name rules, else 400 50035),
``PATCH|DELETE /webhooks/{id}/{token}/messages/{mid}`` (only that webhook's messages),
``GET /guilds/{id}``, ``GET /guilds/{id}/members/{uid}``. Anything else gets a
recorded 404 ``{"message": "404: Not Found", "code": 0}``. Successful responses
carry no ``X-RateLimit-*`` headers, so discord.py never pre-emptively sleeps.
With ``echo_own_messages=True`` (default) the fake, like Discord, also
dispatches MESSAGE_CREATE / MESSAGE_UPDATE / MESSAGE_DELETE over the gateway
for the bot's own posts, edits and deletes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import math
import re
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["Attempt", "FakeDiscord", "Fault", "PostedMessage"]

DISCORD_EPOCH_MS = 1420070400000

# Gateway intents (bits) the fake cares about.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

ERROR_MESSAGES = {
    10003: "Unknown Channel",
    10008: "Unknown Message",
    10013: "Unknown User",
    10015: "Unknown Webhook",
    30007: "Maximum number of webhooks reached (15)",
    50001: "Missing Access",
    50005: "Cannot edit a message authored by another user",
    50007: "Cannot send messages to this user",
    50013: "Missing Permissions",
    50027: "Invalid Webhook Token",
}

# Permission bits the fake computes (Discord's values).
ADMINISTRATOR = 1 << 3
MANAGE_MESSAGES = 1 << 13
MANAGE_WEBHOOKS = 1 << 29
ALL_PERMISSIONS = (1 << 53) - 1
# VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY | ADD_REACTIONS
_EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6)
MAX_WEBHOOKS_PER_CHANNEL = 15
# Discord's username rules for a webhook's name and a post's display name.
_WEBHOOK_NAME_FORBIDDEN = ("@", "#", ":", "```", "discord", "clyde")
_WEBHOOK_NAME_RESERVED = ("everyone", "here")

_MENTION_RE = re.compile(r"<@!?(\d+)>")


@dataclass
class Fault:
    """A fault switch installed by :meth:`FakeDiscord.fail`."""

    target: int | str
    status: int = 500
    code: int | None = None
    message: str | None = None
    retry_after: float = 1.5
    is_global: bool = False
    hang: bool = False
    times: int | None = None
    method: str | None = None
    path: str | None = None  # a regular expression the request path must match (re.search)
    hits: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def matches(self, target: int | str | None, method: str, path: str = "") -> bool:
        if target != self.target:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        return self.times is None or self.hits < self.times


@dataclass
class Attempt:
    """One REST request as seen by the fake (recorded on arrival)."""

    method: str
    path: str
    json: Any
    target: int | str | None
    time: float
    status: int | None = None  # None while pending/hung or if the client went away
    fault: Fault | None = None
    done: bool = False  # the fake has answered it (or dropped it: done and status None)


@dataclass
class PostedMessage:
    """A message successfully created by the bot through REST."""

    id: int
    channel_id: int
    content: str | None
    allowed_mentions: dict | None
    body: dict
    files: list[dict]
    time: float
    deleted: bool = False
    edits: list[dict] = field(default_factory=list)
    webhook_id: int | None = None  # posted by executing this webhook (else by the bot)
    username: str | None = None  # the webhook post's display name


@dataclass
class _Session:
    id: str
    intents: int
    seq: int = 0
    events: list[dict] = field(default_factory=list)


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    query: dict
    session: _Session | None = None


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # Content-Type must be exactly "application/json" for discord.py's json_or_text.
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _error(status: int, code: int, message: str | None = None) -> web.Response:
    return _json_response(
        {"message": message or ERROR_MESSAGES.get(code, f"{status}: error"), "code": code}, status
    )


def _name_problem(name: Any) -> tuple[str, str] | None:
    """Why Discord refuses a webhook name or a webhook post's username: (code, message)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 80:
        return "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 80 in length."
    folded = name.casefold()
    if folded in _WEBHOOK_NAME_RESERVED:
        return "USERNAME_INVALID", f'Username cannot be "{folded}"'
    for bad in _WEBHOOK_NAME_FORBIDDEN:
        if bad in folded:
            return "USERNAME_INVALID_CONTAINS", f'Username cannot contain "{bad}"'
    return None


def _invalid_form(name: str, code: str, message: str) -> web.Response:
    errors = {name: {"_errors": [{"code": code, "message": message}]}}
    return _json_response({"message": "Invalid Form Body", "code": 50035, "errors": errors}, 400)


class FakeDiscord:
    """Fake Discord REST v10 + gateway server. See the module docstring."""

    DM_CREATE = "dm-create"  # fault target for POST /users/@me/channels

    def __init__(
        self,
        *,
        guild_id: int = 1000000000000000001,
        guild_name: str = "Fake Guild",
        channels: dict[str, int] | None = None,
        members: list[dict] | None = None,
        token: str = "fake-bot-token",
        bot_id: int = 4242424242424242,
        bot_name: str = "FakeBridgeBot",
        heartbeat_interval_ms: int = 41250,
        echo_own_messages: bool = True,
        disallowed_intents: int = 0,
        port: int = 0,
        bot_role_permissions: int = 0,
    ) -> None:
        self.guild_id = int(guild_id)
        self.guild_name = guild_name
        self.channels: dict[str, int] = dict(channels or {"bridge": 111, "general": 222})
        self.token = token
        self.bot_id = int(bot_id)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.echo_own_messages = echo_own_messages
        self.disallowed_intents = disallowed_intents
        self._requested_port = port  # 0: the OS picks a free port
        # The bot's own (managed) role, on top of @everyone; channel overwrites per channel.
        self.bot_role_id = self.guild_id + 1
        self.bot_role_permissions = bot_role_permissions
        self.overwrites: dict[int, list[dict]] = defaultdict(list)
        self.webhooks: dict[int, dict] = {}  # webhook id -> webhook object (token included)
        self.bot_user: dict = {
            "id": str(self.bot_id),
            "username": bot_name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "public_flags": 0,
        }
        self.users: dict[int, dict] = {self.bot_id: self.bot_user}
        self._member_nicks: dict[int, str | None] = {self.bot_id: None}
        for m in members or [
            {"id": 500000000000000001, "username": "alice", "global_name": "Alice"}
        ]:
            user = self._register_user(m)
            self._member_nicks[int(user["id"])] = m.get("nick")

        # records
        self.calls: list[tuple[str, str, Any]] = []
        self.attempts: list[Attempt] = []
        self.messages: defaultdict[int, list[PostedMessage]] = defaultdict(list)
        self.edited: list[tuple[int, int, Any]] = []
        self.deleted: list[tuple[int, int]] = []
        self.identifies: list[dict] = []
        self.resumes: list[dict] = []
        self.heartbeats = 0
        self.gateway_connections: list[dict] = []
        self.gateway_closes: list[int | None] = []
        self.dispatched: list[tuple[str, dict]] = []

        self.faults: list[Fault] = []
        self._dm_channels: dict[int, int] = {}  # user id -> dm channel id
        self._all_messages: dict[int, dict] = {}  # message id -> message object
        self._cdn: dict[str, tuple[bytes, str]] = {}
        self._nonces: dict[str, dict] = {}  # nonce -> message created with it (enforce_nonce)
        self._session: _Session | None = None
        self._live: _Conn | None = None
        self._conns: set[_Conn] = set()
        self._cond: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._last_snowflake = 0
        self._counter = itertools.count()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._cond = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._ws_handler)
        app.router.add_get("/cdn/{key:.*}", self._cdn_handler)
        app.router.add_route("*", "/{tail:.*}", self._rest_handler)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        for fault in self.faults:
            fault.release.set()
        for conn in list(self._conns):
            await conn.ws.close(code=1001, message=b"fake discord shutting down")
        self._live = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def intents(self) -> int | None:
        return self.identifies[-1].get("intents") if self.identifies else None

    @property
    def connected(self) -> bool:
        return self._live is not None and not self._live.ws.closed

    def channel_id(self, channel: int | str) -> int:
        if isinstance(channel, str):
            return self.channels[channel]
        return int(channel)

    def contents(self, channel: int | str) -> list[str | None]:
        return [m.content for m in self.messages[self.channel_id(channel)]]

    def shown(self, channel: int | str) -> list[str]:
        """What a channel shows now: the current text of each post that is not deleted."""
        posts = self.messages[self.channel_id(channel)]
        return [self._all_messages[p.id]["content"] for p in posts if not p.deleted]

    def attempt_times(self, target: int | str, method: str | None = "POST") -> list[float]:
        if isinstance(target, str) and target != self.DM_CREATE:
            target = self.channel_id(target)
        return [
            a.time
            for a in self.attempts
            if a.target == target and (method is None or a.method == method.upper())
        ]

    def dm_channel_id(self, user_id: int) -> int:
        user_id = int(user_id)
        if user_id not in self._dm_channels:
            self._dm_channels[user_id] = self._snowflake()
        return self._dm_channels[user_id]

    # ------------------------------------------------------------------ permissions, webhooks

    def bot_permissions(self, channel: int | str) -> int:
        """The bot's permissions in a guild channel, computed like Discord: @everyone and the
        bot's role, then the channel's overwrites (@everyone, role, member)."""
        cid = self.channel_id(channel)
        base = _EVERYONE_PERMISSIONS | self.bot_role_permissions
        if base & ADMINISTRATOR:
            return ALL_PERMISSIONS
        overwrites = {int(o["id"]): o for o in self.overwrites[cid]}
        for target in (self.guild_id, self.bot_role_id, self.bot_id):
            overwrite = overwrites.get(target)
            if overwrite is not None:
                base = (base & ~int(overwrite["deny"])) | int(overwrite["allow"])
        return base

    async def allow_webhooks(self, channel: int | str, allowed: bool | None = True) -> None:
        """Give (True) or deny (False) the bot Manage Webhooks in one channel through a
        member overwrite, or remove that overwrite (None). A connected client is sent
        CHANNEL_UPDATE, as Discord does."""
        cid = self.channel_id(channel)
        rest = [o for o in self.overwrites[cid] if int(o["id"]) != self.bot_id]
        if allowed is not None:
            bit = str(MANAGE_WEBHOOKS)
            allow, deny = (bit, "0") if allowed else ("0", bit)
            rest.append({"id": str(self.bot_id), "type": 1, "allow": allow, "deny": deny})
        self.overwrites[cid] = rest
        if self._session is not None and self._wants(INTENT_GUILDS):
            await self._dispatch("CHANNEL_UPDATE", self._channel_obj(cid))

    def add_webhook(self, channel: int | str, name: str = "Other hook", *, by_bot=False) -> dict:
        """A webhook that already exists in a channel: made by the bot, or by a guild admin
        (then Discord does not give the bot its token)."""
        if by_bot:
            creator = self.bot_user
        else:
            creator = self._register_user({"id": 500000000000000999, "username": "admin"})
        return self._new_webhook(self.channel_id(channel), name, creator, by_bot=by_bot)

    def _new_webhook(self, cid: int, name: str, creator: dict, *, by_bot: bool) -> dict:
        wid = self._snowflake()
        webhook = {
            "id": str(wid),
            "type": 1,
            "guild_id": str(self.guild_id),
            "channel_id": str(cid),
            "user": creator,
            "name": name,
            "avatar": None,
            "token": uuid.uuid4().hex + uuid.uuid4().hex,
            "application_id": str(self.bot_id) if by_bot else None,
        }
        self.webhooks[wid] = webhook
        return webhook

    def delete_webhook(self, webhook_id: int | str) -> None:
        """A guild admin deletes a webhook (its messages stay)."""
        del self.webhooks[int(webhook_id)]

    def _webhook_view(self, webhook: dict) -> dict:
        """A webhook as GET /channels/{id}/webhooks shows it to the bot: the token only of
        the webhooks the bot made."""
        if webhook["application_id"] == str(self.bot_id):
            return dict(webhook)
        return {k: v for k, v in webhook.items() if k != "token"}

    # ------------------------------------------------------------------ waiting

    async def _notify(self) -> None:
        if self._cond is None:
            return
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[FakeDiscord], Any],
        timeout: float = 5.0,  # noqa: ASYNC109 - the requested API
    ) -> Any:
        if self._cond is None:
            raise RuntimeError("FakeDiscord not started")
        cond = self._cond
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    return await cond.wait_for(lambda: predicate(self))
        except TimeoutError:
            raise TimeoutError(f"FakeDiscord.wait_for timed out after {timeout}s") from None

    # ------------------------------------------------------------------ faults

    def fail(
        self,
        target: int | str,
        status: int = 500,
        *,
        code: int | None = None,
        message: str | None = None,
        retry_after: float = 1.5,
        is_global: bool = False,
        hang: bool = False,
        times: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        if isinstance(target, str) and target != self.DM_CREATE:
            target = self.channel_id(target)
        fault = Fault(
            target=target,
            status=status,
            code=code,
            message=message,
            retry_after=retry_after,
            is_global=is_global,
            hang=hang,
            times=times,
            method=method,
            path=path,
        )
        self.faults.append(fault)
        return fault

    def clear_faults(self, target: int | str | None = None) -> None:
        if isinstance(target, str) and target != self.DM_CREATE:
            target = self.channel_id(target)
        keep = []
        for fault in self.faults:
            if target is None or fault.target == target:
                fault.release.set()
            else:
                keep.append(fault)
        self.faults = keep

    def _fault_response(self, fault: Fault) -> web.Response:
        status = fault.status
        if status == 429:
            retry_after = fault.retry_after
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(math.ceil(retry_after)),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": "fakebucket",
                "X-RateLimit-Scope": "user",
            }
            if fault.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": fault.message or "You are being rate limited.",
                "retry_after": retry_after,
                "global": fault.is_global,
            }
            return _json_response(body, 429, headers)
        if status == 403:
            return _error(403, fault.code or 50013, fault.message)
        if status == 404:
            return _error(404, fault.code or 10003, fault.message)
        if status >= 500:
            return _error(
                status, fault.code or 0, fault.message or f"{status}: Internal Server Error"
            )
        return _error(status, fault.code or 0, fault.message or f"{status}: Bad Request")

    # ------------------------------------------------------------------ helpers

    def _snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (next(self._counter) & 0xFFF)
        value = max(value, self._last_snowflake + 1)
        self._last_snowflake = value
        return value

    def _register_user(self, data: dict, *, bot: bool | None = None) -> dict:
        uid = int(data["id"])
        user = {
            "id": str(uid),
            "username": data.get("username") or f"user{uid}",
            "discriminator": data.get("discriminator", "0"),
            "global_name": data.get("global_name"),
            "avatar": data.get("avatar"),
            "bot": bool(data.get("bot", False) if bot is None else bot),
            "public_flags": data.get("public_flags", 0),
        }
        if uid != self.bot_id:
            self.users[uid] = user
        return user

    def _member_obj(self, uid: int, *, nick: str | None = None, with_user: bool = True) -> dict:
        member = {
            "nick": nick,
            "roles": [str(self.bot_role_id)] if uid == self.bot_id else [],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "avatar": None,
        }
        if with_user:
            member["user"] = self.users[uid]
        return member

    def _channel_obj(self, channel_id: int) -> dict | None:
        for position, (name, cid) in enumerate(self.channels.items()):
            if cid == channel_id:
                return {
                    "id": str(cid),
                    "type": 0,
                    "guild_id": str(self.guild_id),
                    "name": name,
                    "position": position,
                    "permission_overwrites": [dict(o) for o in self.overwrites[cid]],
                    "parent_id": None,
                    "nsfw": False,
                    "topic": None,
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                    "flags": 0,
                }
        for uid, dm_id in self._dm_channels.items():
            if dm_id == channel_id:
                return {
                    "id": str(dm_id),
                    "type": 1,
                    "last_message_id": None,
                    "flags": 0,
                    "recipients": [self.users.get(uid) or self._register_user({"id": uid})],
                }
        return None

    def _is_guild_channel(self, channel_id: int) -> bool:
        return channel_id in self.channels.values()

    def _guild_obj(self) -> dict:
        return {
            "id": str(self.guild_id),
            "name": self.guild_name,
            "icon": None,
            "splash": None,
            "owner_id": str(next(iter(u for u in self.users if u != self.bot_id), self.bot_id)),
            "unavailable": False,
            "large": False,
            "member_count": len(self._member_nicks),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "features": [],
            "description": None,
            "vanity_url_code": None,
            "premium_progress_bar_enabled": False,
            "roles": [
                {
                    "id": str(self.guild_id),
                    "name": "@everyone",
                    "permissions": str(_EVERYONE_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                {
                    "id": str(self.bot_role_id),
                    "name": self.bot_user["username"],
                    "permissions": str(self.bot_role_permissions),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": True,
                    "mentionable": False,
                    "flags": 0,
                    "tags": {"bot_id": str(self.bot_id)},
                },
            ],
            "emojis": [],
            "stickers": [],
            "channels": [self._channel_obj(cid) for cid in self.channels.values()],
            "threads": [],
            # Like Discord: without GUILD_MEMBERS only the bot's own member is sent.
            "members": [
                self._member_obj(uid, nick=nick)
                for uid, nick in self._member_nicks.items()
                if uid == self.bot_id or self._wants(INTENT_GUILD_MEMBERS)
            ],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _message_obj(
        self,
        *,
        channel_id: int,
        author: dict,
        content: str,
        attachments: list[dict] | None = None,
        embeds: list[dict] | None = None,
        nonce: Any = None,
        webhook_id: int | None = None,
    ) -> dict:
        mid = self._snowflake()
        mentions = []
        for match in _MENTION_RE.findall(content or ""):
            user = self.users.get(int(match))
            if user is not None and user not in mentions:
                mentions.append(user)
        msg = {
            "id": str(mid),
            "type": 0,
            "channel_id": str(channel_id),
            "author": author,
            "content": content or "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": list(attachments or []),
            "embeds": list(embeds or []),
            "pinned": False,
            "flags": 0,
            "components": [],
        }
        if nonce is not None:
            msg["nonce"] = nonce
        if webhook_id is not None:
            msg["webhook_id"] = str(webhook_id)
        self._all_messages[mid] = msg
        return msg

    def _attachment_obj(self, att: dict) -> dict:
        aid = int(att.get("id") or self._snowflake())
        filename = att.get("filename", "file.bin")
        content_type = att.get("content_type", "application/octet-stream")
        url = att.get("url")
        size = att.get("size", 0)
        if "data" in att:
            data = bytes(att["data"])
            key = f"attachments/{aid}/{filename}"
            self._cdn[key] = (data, content_type)
            url = url or f"{self.base_url}/cdn/{key}"
            size = len(data)
        url = url or f"{self.base_url}/cdn/attachments/{aid}/{filename}"
        obj = {
            "id": str(aid),
            "filename": filename,
            "size": size,
            "url": url,
            "proxy_url": att.get("proxy_url", url),
            "content_type": content_type,
        }
        for key in ("width", "height", "description"):
            if key in att:
                obj[key] = att[key]
        return obj

    # ------------------------------------------------------------------ gateway

    async def _send(self, conn: _Conn, payload: dict) -> bool:
        if conn.ws.closed:
            return False
        try:
            await conn.ws.send_str(json.dumps(payload))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _dispatch(self, event: str, data: dict) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("no gateway session: the client has not identified yet")
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        self.dispatched.append((event, data))
        live = self._live
        if live is not None and live.session is session:
            await self._send(live, payload)
        await self._notify()

    def _wants(self, intent: int) -> bool:
        return self._session is not None and bool(self._session.intents & intent)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Conn(ws=ws, query=dict(request.query))
        self._conns.add(conn)
        self.gateway_connections.append(conn.query)
        await self._notify()
        try:
            hello = {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["fake"]}
            await self._send(conn, {"op": 10, "d": hello, "s": None, "t": None})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_gateway_payload(conn, json.loads(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    await ws.close(code=4002, message=b"Decode error (fake speaks JSON text)")
        finally:
            self._conns.discard(conn)
            if self._live is conn:
                self._live = None
            self.gateway_closes.append(ws.close_code)
            await self._notify()
        return ws

    async def _on_gateway_payload(self, conn: _Conn, payload: dict) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == 1:  # HEARTBEAT
            self.heartbeats += 1
            await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
            await self._notify()
        elif op == 2:  # IDENTIFY
            await self._identify(conn, data or {})
        elif op == 6:  # RESUME
            await self._resume(conn, data or {})
        # op 3 (presence), 4 (voice), 8 (request members): accepted and ignored.

    async def _identify(self, conn: _Conn, data: dict) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = data.get("intents")
        if intents is None:
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return
        if intents & self.disallowed_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self._session = _Session(id=uuid.uuid4().hex, intents=int(intents))
        conn.session = self._session
        self._live = conn
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": self._session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.bot_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "_trace": ["fake"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._dispatch("READY", ready)
        if self._wants(INTENT_GUILDS):
            await self._dispatch("GUILD_CREATE", self._guild_obj())

    async def _resume(self, conn: _Conn, data: dict) -> None:
        self.resumes.append(data)
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self._session
        if session is None or data.get("session_id") != session.id:
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
            await self._notify()
            return
        conn.session = session
        self._live = conn
        last = data.get("seq") or 0
        for payload in session.events:
            if payload["s"] > last:
                await self._send(conn, payload)
        await self._dispatch("RESUMED", {"_trace": ["fake"]})

    async def drop_gateway(self, code: int = 4000, *, invalidate: bool = False) -> None:
        if invalidate:
            self._session = None
        self._live = None
        for conn in list(self._conns):
            await conn.ws.close(code=code, message=b"fake drop")
        await self._notify()

    async def inject_message(
        self,
        channel: int | str,
        content: str,
        *,
        author: dict | None = None,
        bot: bool = False,
        attachments: list[dict] | None = None,
        member_nick: str | None = None,
        embeds: list[dict] | None = None,
        webhook_id: int | None = None,
    ) -> dict:
        channel_id = self.channel_id(channel)
        if not self._is_guild_channel(channel_id):
            raise ValueError(f"{channel!r} is not a guild text channel of the fake")
        if self._session is None:
            raise RuntimeError("no gateway session: the client has not identified yet")
        user = self._register_user(
            author or {"id": 500000000000000001, "username": "alice"}, bot=bot
        )
        msg = self._message_obj(
            channel_id=channel_id,
            author=user,
            content=content,
            attachments=[self._attachment_obj(a) for a in attachments or []],
            embeds=embeds,
            webhook_id=webhook_id,
        )
        msg["guild_id"] = str(self.guild_id)
        if webhook_id is None:
            msg["member"] = self._member_obj(int(user["id"]), nick=member_nick, with_user=False)
        if not self._wants(INTENT_GUILD_MESSAGES):
            return msg
        sent = dict(msg)
        bot_mentioned = any(u["id"] == str(self.bot_id) for u in msg["mentions"])
        if not self._wants(INTENT_MESSAGE_CONTENT) and not bot_mentioned:
            sent.update(content="", embeds=[], attachments=[], components=[])
        await self._dispatch("MESSAGE_CREATE", sent)
        return msg

    async def inject_dm(
        self,
        user_id: int,
        username: str,
        content: str,
        *,
        global_name: str | None = None,
        attachments: list[dict] | None = None,
    ) -> dict:
        if self._session is None:
            raise RuntimeError("no gateway session: the client has not identified yet")
        user = self._register_user(
            {"id": user_id, "username": username, "global_name": global_name}
        )
        msg = self._message_obj(
            channel_id=self.dm_channel_id(user_id),
            author=user,
            content=content,
            attachments=[self._attachment_obj(a) for a in attachments or []],
        )
        if self._wants(INTENT_DIRECT_MESSAGES):
            await self._dispatch("MESSAGE_CREATE", msg)
        return msg

    async def _echo(self, event: str, data: dict, channel_id: int) -> None:
        if not self.echo_own_messages or self._session is None:
            return
        intent = (
            INTENT_GUILD_MESSAGES if self._is_guild_channel(channel_id) else INTENT_DIRECT_MESSAGES
        )
        if self._wants(intent):
            await self._dispatch(event, data)

    # ------------------------------------------------------------------ REST

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        item = self._cdn.get(request.match_info["key"])
        if item is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=item[0], headers={"Content-Type": item[1]})

    async def _read_body(self, request: web.Request) -> tuple[Any, list[dict]]:
        files: list[dict] = []
        if not request.body_exists:
            return None, files
        ctype = request.content_type
        if ctype == "application/json":
            return await request.json(), files
        if ctype.startswith("multipart/"):
            body = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    data = await part.read()
                    files.append(
                        {
                            "field": part.name,
                            "filename": part.filename,
                            "content_type": part.headers.get("Content-Type"),
                            "size": len(data),
                            "data": bytes(data),
                        }
                    )
            return body, files
        return await request.text(), files

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"/gateway"), "_r_gateway"),
        ("GET", re.compile(r"/gateway/bot"), "_r_gateway_bot"),
        ("GET", re.compile(r"/users/@me"), "_r_me"),
        ("POST", re.compile(r"/users/@me/channels"), "_r_create_dm"),
        ("GET", re.compile(r"/users/(?P<user_id>\d+)"), "_r_get_user"),
        ("GET", re.compile(r"/oauth2/applications/@me"), "_r_app_info"),
        ("GET", re.compile(r"/channels/(?P<channel_id>\d+)"), "_r_get_channel"),
        ("POST", re.compile(r"/channels/(?P<channel_id>\d+)/messages"), "_r_post_message"),
        (
            "GET",
            re.compile(r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)"),
            "_r_get_message",
        ),
        (
            "PATCH",
            re.compile(r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)"),
            "_r_edit_message",
        ),
        (
            "DELETE",
            re.compile(r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)"),
            "_r_delete_message",
        ),
        ("POST", re.compile(r"/channels/(?P<channel_id>\d+)/typing"), "_r_typing"),
        ("GET", re.compile(r"/channels/(?P<channel_id>\d+)/webhooks"), "_r_channel_webhooks"),
        ("POST", re.compile(r"/channels/(?P<channel_id>\d+)/webhooks"), "_r_create_webhook"),
        ("POST", re.compile(r"/webhooks/(?P<webhook_id>\d+)/(?P<token>[^/]+)"), "_r_execute"),
        (
            "PATCH",
            re.compile(
                r"/webhooks/(?P<webhook_id>\d+)/(?P<token>[^/]+)/messages/(?P<message_id>\d+)"
            ),
            "_r_webhook_edit",
        ),
        (
            "DELETE",
            re.compile(
                r"/webhooks/(?P<webhook_id>\d+)/(?P<token>[^/]+)/messages/(?P<message_id>\d+)"
            ),
            "_r_webhook_delete",
        ),
        ("GET", re.compile(r"/guilds/(?P<guild_id>\d+)"), "_r_get_guild"),
        ("GET", re.compile(r"/guilds/(?P<guild_id>\d+)/members/(?P<user_id>\d+)"), "_r_get_member"),
    ]

    async def _rest_handler(self, request: web.Request) -> web.StreamResponse:
        prefix = "/api/v10"
        method = request.method
        if not request.path.startswith(prefix + "/"):
            return _json_response({"message": "404: Not Found", "code": 0}, 404)
        path = request.path[len(prefix) :]
        body, files = await self._read_body(request)

        handler_name, params = None, {}
        for route_method, pattern, name in self._ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                handler_name, params = name, match.groupdict()
                break
        target: int | str | None = None
        if "channel_id" in params:
            target = int(params["channel_id"])
        elif "webhook_id" in params:  # a webhook's requests count as its channel's
            webhook = self.webhooks.get(int(params["webhook_id"]))
            target = int(webhook["channel_id"]) if webhook else None
        elif handler_name == "_r_create_dm":
            target = self.DM_CREATE

        loop = asyncio.get_running_loop()
        attempt = Attempt(method=method, path=path, json=body, target=target, time=loop.time())
        self.attempts.append(attempt)
        self.calls.append((method, path, body))
        await self._notify()

        response = await self._process(request, attempt, handler_name, params, body, files)
        attempt.status = None if response is None else response.status
        attempt.done = True
        await self._notify()
        if response is None:  # the client went away while the request was hung
            return web.Response(status=499)
        return response

    async def _process(
        self,
        request: web.Request,
        attempt: Attempt,
        handler_name: str | None,
        params: dict,
        body: Any,
        files: list[dict],
    ) -> web.Response | None:
        if (
            handler_name != "_r_gateway"
            and "token" not in params  # a webhook's token is its authorization
            and request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            return _json_response({"message": "401: Unauthorized", "code": 0}, 401)
        for fault in list(self.faults):
            if fault.matches(attempt.target, attempt.method, attempt.path):
                fault.hits += 1
                attempt.fault = fault
                if fault.times is not None and fault.hits >= fault.times and fault in self.faults:
                    self.faults.remove(fault)
                if fault.hang:
                    await fault.release.wait()
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        return None
                    break
                return self._fault_response(fault)
        if handler_name is None:
            return _json_response({"message": "404: Not Found", "code": 0}, 404)
        handler = getattr(self, handler_name)
        return await handler(body=body, files=files, query=request.query, **params)

    async def _r_gateway(self, **_: Any) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _r_gateway_bot(self, **_: Any) -> web.Response:
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 86400000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _r_me(self, **_: Any) -> web.Response:
        return _json_response(self.bot_user)

    async def _r_get_user(self, *, user_id: str, **_: Any) -> web.Response:
        user = self.users.get(int(user_id))
        if user is None:
            return _error(404, 10013)
        return _json_response(user)

    async def _r_app_info(self, **_: Any) -> web.Response:
        return _json_response(
            {
                "id": str(self.bot_id),
                "name": self.bot_user["username"],
                "icon": None,
                "description": "",
                "summary": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self.bot_user,
                "team": None,
                "flags": 0,
                "bot": self.bot_user,
            }
        )

    async def _r_create_dm(self, *, body: Any, **_: Any) -> web.Response:
        try:
            user_id = int((body or {})["recipient_id"])
        except (KeyError, TypeError, ValueError):
            return _json_response({"message": "Invalid Form Body", "code": 50035}, 400)
        if user_id not in self.users:
            self._register_user({"id": user_id})
        self.dm_channel_id(user_id)
        return _json_response(self._channel_obj(self._dm_channels[user_id]))

    async def _r_get_channel(self, *, channel_id: str, **_: Any) -> web.Response:
        obj = self._channel_obj(int(channel_id))
        if obj is None:
            return _error(404, 10003)
        return _json_response(obj)

    async def _r_get_guild(self, *, guild_id: str, **_: Any) -> web.Response:
        if int(guild_id) != self.guild_id:
            return _error(404, 10004, "Unknown Guild")
        guild = self._guild_obj()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            guild.pop(key)
        return _json_response(guild)

    async def _r_get_member(self, *, guild_id: str, user_id: str, **_: Any) -> web.Response:
        uid = int(user_id)
        if int(guild_id) != self.guild_id:
            return _error(404, 10004, "Unknown Guild")
        if uid not in self._member_nicks:
            return _error(404, 10007, "Unknown Member")
        return _json_response(self._member_obj(uid, nick=self._member_nicks[uid]))

    async def _r_typing(self, *, channel_id: str, **_: Any) -> web.Response:
        if self._channel_obj(int(channel_id)) is None:
            return _error(404, 10003)
        return web.Response(status=204)

    def _record_post(
        self, msg: dict, cid: int, content: Any, body: dict, files: list, **extra: Any
    ) -> None:
        """Keep what the bot posted (files without their bytes) for the tests to look at."""
        posted = PostedMessage(
            id=int(msg["id"]),
            channel_id=cid,
            content=content,
            allowed_mentions=body.get("allowed_mentions"),
            body=body,
            files=[{k: v for k, v in f.items() if k != "data"} for f in files],
            time=asyncio.get_running_loop().time(),
            **extra,
        )
        self.messages[cid].append(posted)

    async def _r_post_message(
        self, *, channel_id: str, body: Any, files: list[dict], **_: Any
    ) -> web.Response:
        cid = int(channel_id)
        if self._channel_obj(cid) is None:
            return _error(404, 10003)
        body = body if isinstance(body, dict) else {}
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self._nonces.get(str(nonce))
            if earlier is not None:  # like Discord: the earlier message, nothing new is posted
                return _json_response(self._public(earlier))
        content = body.get("content")
        if not content and not files and not body.get("embeds"):
            return _json_response({"message": "Cannot send an empty message", "code": 50006}, 400)
        attachments = [
            self._attachment_obj(
                {
                    "filename": f["filename"],
                    "data": f["data"],
                    "content_type": f["content_type"] or "application/octet-stream",
                }
            )
            for f in files
        ]
        msg = self._message_obj(
            channel_id=cid,
            author=self.bot_user,
            content=content or "",
            attachments=attachments,
            embeds=body.get("embeds"),
            nonce=body.get("nonce"),
        )
        self._record_post(msg, cid, content, body, files)
        if nonce is not None:
            self._nonces[str(nonce)] = msg
        await self._notify()
        if self._is_guild_channel(cid):
            echo = dict(
                msg,
                guild_id=str(self.guild_id),
                member=self._member_obj(self.bot_id, with_user=False),
            )
        else:
            echo = msg
        await self._echo("MESSAGE_CREATE", echo, cid)
        return _json_response(msg)

    def _find_message(self, cid: int, mid: int) -> dict | None:
        msg = self._all_messages.get(mid)
        if msg is None or int(msg["channel_id"]) != cid or msg.get("_deleted"):
            return None
        return msg

    def _posted(self, cid: int, mid: int) -> PostedMessage | None:
        return next((p for p in self.messages[cid] if p.id == mid), None)

    @staticmethod
    def _public(msg: dict) -> dict:
        return {k: v for k, v in msg.items() if not k.startswith("_")}

    # webhooks

    async def _r_channel_webhooks(self, *, channel_id: str, **_: Any) -> web.Response:
        cid = int(channel_id)
        if not self._is_guild_channel(cid):
            return _error(404, 10003)
        if not self.bot_permissions(cid) & MANAGE_WEBHOOKS:
            return _error(403, 50013)
        hooks = [w for w in self.webhooks.values() if w["channel_id"] == str(cid)]
        return _json_response([self._webhook_view(w) for w in hooks])

    async def _r_create_webhook(self, *, channel_id: str, body: Any, **_: Any) -> web.Response:
        cid = int(channel_id)
        if not self._is_guild_channel(cid):
            return _error(404, 10003)
        if not self.bot_permissions(cid) & MANAGE_WEBHOOKS:
            return _error(403, 50013)
        name = body.get("name") if isinstance(body, dict) else None
        problem = _name_problem(name)
        if problem is not None:
            return _invalid_form("name", *problem)
        if sum(w["channel_id"] == str(cid) for w in self.webhooks.values()) >= (
            MAX_WEBHOOKS_PER_CHANNEL
        ):
            return _error(400, 30007)
        webhook = self._new_webhook(cid, name, self.bot_user, by_bot=True)
        await self._notify()
        return _json_response(webhook)

    def _webhook_auth(self, webhook_id: str, token: str) -> tuple[dict | None, web.Response | None]:
        webhook = self.webhooks.get(int(webhook_id))
        if webhook is None:
            return None, _error(404, 10015)
        if token != webhook["token"]:
            return None, _error(401, 50027)
        return webhook, None

    async def _r_execute(
        self, *, webhook_id: str, token: str, body: Any, files: list[dict], query: Any, **_: Any
    ) -> web.Response:
        webhook, refusal = self._webhook_auth(webhook_id, token)
        if refusal is not None:
            return refusal
        body = body if isinstance(body, dict) else {}
        username = body.get("username")
        if username is not None and (problem := _name_problem(username)) is not None:
            return _invalid_form("username", *problem)
        content = body.get("content")
        if not content and not files and not body.get("embeds"):
            return _json_response({"message": "Cannot send an empty message", "code": 50006}, 400)
        cid, wid = int(webhook["channel_id"]), int(webhook["id"])
        author = {
            "id": str(wid),
            "username": username or webhook["name"],
            "discriminator": "0000",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "public_flags": 0,
        }
        msg = self._message_obj(
            channel_id=cid,
            author=author,
            content=content or "",
            embeds=body.get("embeds"),
            webhook_id=wid,
        )
        self._record_post(
            msg, cid, content, body, files, webhook_id=wid, username=author["username"]
        )
        await self._notify()
        await self._echo("MESSAGE_CREATE", dict(msg, guild_id=str(self.guild_id)), cid)
        if query.get("wait", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        return _json_response(self._public(msg))

    def _webhook_message(self, webhook: dict, message_id: str) -> dict | None:
        msg = self._find_message(int(webhook["channel_id"]), int(message_id))
        if msg is None or msg.get("webhook_id") != webhook["id"]:
            return None  # Discord: Unknown Message, also for another author's message
        return msg

    async def _r_webhook_edit(
        self, *, webhook_id: str, token: str, message_id: str, body: Any, **_: Any
    ) -> web.Response:
        webhook, refusal = self._webhook_auth(webhook_id, token)
        if refusal is not None:
            return refusal
        msg = self._webhook_message(webhook, message_id)
        if msg is None:
            return _error(404, 10008)
        return await self._apply_edit(msg, body)

    async def _r_webhook_delete(
        self, *, webhook_id: str, token: str, message_id: str, **_: Any
    ) -> web.Response:
        webhook, refusal = self._webhook_auth(webhook_id, token)
        if refusal is not None:
            return refusal
        msg = self._webhook_message(webhook, message_id)
        if msg is None:
            return _error(404, 10008)
        return await self._apply_delete(msg)

    # messages

    async def _r_get_message(self, *, channel_id: str, message_id: str, **_: Any) -> web.Response:
        msg = self._find_message(int(channel_id), int(message_id))
        if msg is None:
            return _error(404, 10008)
        return _json_response(self._public(msg))

    async def _r_edit_message(
        self, *, channel_id: str, message_id: str, body: Any, **_: Any
    ) -> web.Response:
        cid, mid = int(channel_id), int(message_id)
        msg = self._find_message(cid, mid)
        if msg is None:
            return _error(404, 10008)
        if msg["author"]["id"] != str(self.bot_id):
            return _error(403, 50005)
        return await self._apply_edit(msg, body)

    async def _apply_edit(self, msg: dict, body: Any) -> web.Response:
        cid, mid = int(msg["channel_id"]), int(msg["id"])
        body = body if isinstance(body, dict) else {}
        for key in ("content", "embeds", "flags", "components"):
            if key in body and body[key] is not None:
                msg[key] = body[key]
        msg["edited_timestamp"] = _now_iso()
        self.edited.append((cid, mid, body))
        posted = self._posted(cid, mid)
        if posted is not None:
            posted.edits.append(body)
        await self._notify()
        update = dict(self._public(msg))
        if self._is_guild_channel(cid):
            update["guild_id"] = str(self.guild_id)
        await self._echo("MESSAGE_UPDATE", update, cid)
        return _json_response(self._public(msg))

    async def _r_delete_message(
        self, *, channel_id: str, message_id: str, **_: Any
    ) -> web.Response:
        cid, mid = int(channel_id), int(message_id)
        msg = self._find_message(cid, mid)
        if msg is None:
            return _error(404, 10008)
        if (
            self._is_guild_channel(cid)
            and msg["author"]["id"] != str(self.bot_id)
            and not self.bot_permissions(cid) & MANAGE_MESSAGES
        ):
            return _error(403, 50013)  # another author's message: Manage Messages
        return await self._apply_delete(msg)

    async def _apply_delete(self, msg: dict) -> web.Response:
        cid, mid = int(msg["channel_id"]), int(msg["id"])
        msg["_deleted"] = True
        self.deleted.append((cid, mid))
        posted = self._posted(cid, mid)
        if posted is not None:
            posted.deleted = True
        await self._notify()
        event = {"id": str(mid), "channel_id": str(cid)}
        if self._is_guild_channel(cid):
            event["guild_id"] = str(self.guild_id)
        await self._echo("MESSAGE_DELETE", event, cid)
        return web.Response(status=204)
