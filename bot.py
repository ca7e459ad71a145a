"""The Discord bridge of Button API V3 (SPEC section 6).

One discord.py client runs on the server's own event loop. Three classes share the work:

* `Bridge`, what the server uses: the client and its lifecycle, and the planning of every
  message bound for Discord as outbox rows (one per post of at most 2000 characters),
  committed by db.py in the same transaction as its message. It also takes in Discord
  users' messages in the bridge channel and in bridged text channels as Button API messages;
  a DM to the bot makes its author known to the bridge.
* `Outbox`, the delivery of those rows: one worker task per destination, so a destination
  that fails or hangs never delays another, with retries and 429 holds; edits and deletions
  of a message reach its copies through the same rows. The row states and outcomes are
  db.py's `OutboxState` and `Outcome`.
* `Webhooks`, display names: where the bot has the Manage Webhooks permission, mirrors are
  posted through the bot's own webhook in that channel with the sender's username as the
  display name; elsewhere (and for DMs) the bot posts `**name**: text` itself.

Delivery is at-least-once with Discord's own duplicate guard: every post carries a nonce kept in
its outbox row and is sent with `enforce_nonce` (discord.py does that whenever a nonce is given),
so a post retried after a timeout or a crash between Discord's accept and our commit returns the
message Discord already created (Discord checks nonces over the past few minutes) instead of
posting it again. The Discord id is committed before the row counts as delivered. (A webhook
post takes no nonce: a webhook post whose answer is lost can appear twice.)

bot.py never imports buttonapi.py: the server passes in the Database and a `publish` callable
that pushes a stored message to Socket.IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import aiohttp
import yarl

import db
from db import OutboxState, Outcome

log = logging.getLogger("buttonapi.bot")

MAX_POST = 2000  # Discord's limit, in code points
PUBLIC_PREFIX = "**{username}**: "
DM_PREFIX = "**{username}** via Button API: "
WEBHOOK_NAME = "Button API"  # the webhook's own name (a post shows the sender's instead)
# Display names Discord refuses for a webhook post (its username rules): those are posted by
# the bot as `**name**: text`.
WEBHOOK_FORBIDDEN = ("discord", "clyde", "@", "#", ":", "```")
WEBHOOK_RESERVED = ("everyone", "here")
CONFIRMATION = (
    "Hi {name}! You are now known to Button API: its users can message you here with"
    " senddcmsg and your username ({username})."
)

GLOBAL = "global"  # rate-limit hold keys: GLOBAL, DM_CREATE or a Discord channel id
DM_CREATE = "dm-create"
_CHANNEL_PATH = re.compile(r"/channels/(\d+)")
_WEBHOOK_PATH = re.compile(r"/webhooks/(\d+)")

# discord.py, imported when a bridge first starts (load_discord): a server without Discord
# never pays for it (about 9 MB of memory).
discord: Any = None


def load_discord() -> None:
    global discord
    import discord
    import discord.gateway
    import discord.http


def no_mentions() -> Any:
    """A post's allowed mentions: none (a message can not ping anyone on Discord)."""
    return discord.AllowedMentions.none()


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long the bridge waits on Discord. Defaults are the production values."""

    send_wait: float = 10.0  # senddcmsg waits at most this for the first attempt (SPEC 6)
    attempt_timeout: float = 60.0  # one attempt, discord.py's own retries included
    backoff: tuple[float, ...] = (1, 2, 5, 10, 30, 60, 120, 300)  # then the last, forever
    guild_ready_timeout: float = 2.0  # discord.py: wait for GUILD_CREATEs before on_ready
    webhook_retry: float = 300.0  # after Discord refused to list or create a webhook

    def retry_delay(self, attempts: int) -> float:
        """The pause after the `attempts`-th failed attempt (1-based)."""
        return self.backoff[min(max(attempts, 1), len(self.backoff)) - 1]


def split_text(text: str, limit: int = MAX_POST, first: int | None = None) -> list[str]:
    """Posts of at most `limit` characters (the first at most `first`), cut at whitespace
    where possible.

    The whitespace at a cut is dropped (Discord trims it anyway); no part is blank."""
    parts: list[str] = []
    text = text.strip()
    while len(text) > (size := limit if parts or first is None else first):
        cut = next((i for i in range(size, 0, -1) if text[i].isspace()), None)
        if cut is None:
            head, text = text[:size], text[size:]
        else:
            head, text = text[:cut], text[cut + 1 :]
        parts.append(head.rstrip())
        text = text.lstrip()
    if text:
        parts.append(text)
    return parts


def plan(dest: str, text: str, prefix: str = "", username: str | None = None) -> list[db.Row]:
    """The outbox rows that post `prefix + text` to `dest`, one per part, each with its own
    nonce. Only the first part carries the prefix, and the text is cut so that it still fits
    without it (a webhook post drops the prefix and shows `username` instead)."""
    parts = split_text(text, first=MAX_POST - len(prefix))
    return [
        {
            "dest": dest,
            "part": part,
            "content": prefix + content if part == 0 else content,
            "nonce": secrets.token_hex(12),
            "username": username,
        }
        for part, content in enumerate(parts)
    ]


def webhook_username_ok(name: str) -> bool:
    """Whether Discord takes `name` as a webhook post's display name."""
    folded = name.casefold()
    return folded not in WEBHOOK_RESERVED and not any(bad in folded for bad in WEBHOOK_FORBIDDEN)


def webhook_text(row: db.Row) -> str:
    """A row's text as a webhook posts it: without the `**name**: ` of its first part."""
    if row["part"] != 0:
        return row["content"]
    return row["content"].removeprefix(PUBLIC_PREFIX.format(username=row["username"]))


class Gone(Exception):
    """What a row needs on Discord is no longer there (a deleted webhook): refused for good."""


def permanent(exc: Exception) -> bool:
    """Discord refused for good: a 4xx other than a rate limit (or Gone)."""
    if isinstance(exc, Gone):
        return True
    return isinstance(exc, discord.HTTPException) and 400 <= exc.status < 500 and exc.status != 429


def inbound_text(message: discord.Message) -> str:
    """The text as stored: the content, then each attachment's URL on its own line."""
    lines = [message.content] if message.content else []
    lines += [attachment.url for attachment in message.attachments]
    return "\n".join(lines)


def point_discord_py(api_base: str, gateway_url: str) -> tuple[str, yarl.URL]:
    """Point discord.py at DISCORD_API_BASE / DISCORD_GATEWAY_URL; returns the old values.

    discord.py keeps its REST base and gateway URL in two class attributes; pointing them
    there is how the bot reaches a Discord-compatible server (the tests' fake). They are
    process-global, so the bridge restores the old values when it stops."""
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return saved


def restore_discord_py(saved: tuple[str, yarl.URL]) -> None:
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def _user_id(client: discord.Client | None) -> int | None:
    """The bot's own Discord user id, once logged in."""
    user = client.user if client else None
    return user.id if user else None


class Delivery:
    """The first attempt of each part of one senddcmsg message, as futures."""

    def __init__(self, futures: list[asyncio.Future[Outcome]], wait: float) -> None:
        self.futures = futures
        self.wait_limit = wait

    async def outcome(self) -> Outcome:
        """SENT when every part was accepted, REFUSED as soon as one is refused for good,
        QUEUED on a transient failure or when `wait_limit` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_limit
        pending = set(self.futures)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return Outcome.QUEUED
            results = {future.result() for future in done}
            if Outcome.REFUSED in results:
                return Outcome.REFUSED
            if Outcome.QUEUED in results:
                return Outcome.QUEUED
        return Outcome.SENT


class Webhooks:
    """The bot's own webhooks, one per channel where it may use one, so that a post shows the
    sender's username as its display name. Discord gives a webhook's token only to the bot
    that made it: the bot finds its webhooks again after a restart, or makes new ones."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.client: discord.Client | None = None  # the bridge's current client
        self._webhooks: dict[int, discord.Webhook] = {}  # webhook id -> the bot's webhook
        self._webhook_of: dict[int, int] = {}  # Discord channel id -> the webhook it posts with
        self._channels: dict[int, int] = {}  # webhook id -> its Discord channel id
        self._refused_until: dict[int, float] = {}  # channel id -> loop time (refused)

    def logged_in(self) -> None:
        """A client logged in: webhooks bound to an earlier client's HTTP session are found
        again when needed."""
        self._webhooks.clear()
        self._webhook_of.clear()

    def channel_of(self, webhook_id: int, default: Any = None) -> Any:
        """The Discord channel a webhook of the bot posts in (`default` if not known)."""
        return self._channels.get(webhook_id, default)

    def may_use(self, channel_id: int) -> bool:
        """The bot has Manage Webhooks in the channel (roles and the channel's overwrites,
        as the guild cache has them; False while the guild is not known)."""
        channel = self.client.get_channel(channel_id) if self.client else None
        if not isinstance(channel, discord.TextChannel):
            return False
        me = channel.guild.me
        return me is not None and channel.permissions_for(me).manage_webhooks

    async def post(self, channel_id: int, row: db.Row) -> tuple[int, int, int, bool] | None:
        """Post a row with the sender's display name: (channel id, message id, webhook id,
        True). None when the row has no name Discord takes as one, the bot may not use a
        webhook there, or the webhook refused this post (then the bot posts it). A webhook
        deleted on Discord is forgotten and replaced once."""
        if row["username"] is None or not webhook_username_ok(row["username"]):
            return None
        for _ in range(2):
            webhook = await self._for_channel(channel_id)
            if webhook is None:
                return None
            try:
                sent = await webhook.send(
                    webhook_text(row),
                    username=row["username"],
                    allowed_mentions=no_mentions(),
                    wait=True,
                )
            except discord.HTTPException as exc:
                if not permanent(exc):
                    raise
                if exc.status in (401, 404):  # the webhook was deleted: find or make another
                    self._forget(webhook.id)
                    continue
                log.warning("webhook post refused in %s (%s): the bot posts it", channel_id, exc)
                return None
            return channel_id, sent.id, webhook.id, True
        return None

    async def edit(self, row: db.Row) -> None:
        """Give a copy the webhook `row["webhook_id"]` posted the row's text."""
        channel_id, webhook_id = row["discord_channel_id"], row["webhook_id"]
        webhook = await self._by_id(channel_id, webhook_id)
        if webhook is None:
            raise Gone(f"webhook {webhook_id} of channel {channel_id} is gone")
        try:
            await webhook.edit_message(
                row["discord_message_id"],
                content=webhook_text(row),
                allowed_mentions=no_mentions(),
            )
        except discord.NotFound as exc:
            if exc.code == 10015:  # Unknown Webhook
                self._forget(webhook.id)
            raise

    async def delete(self, row: db.Row) -> bool:
        """Delete a copy the webhook `row["webhook_id"]` posted (True also when it is already
        gone); False when that webhook is gone: then the bot deletes it (Manage Messages)."""
        webhook = await self._by_id(row["discord_channel_id"], row["webhook_id"])
        if webhook is None:
            return False
        try:
            await webhook.delete_message(row["discord_message_id"])
        except discord.NotFound as exc:
            if exc.code != 10015:  # Unknown Message: already gone
                return True
            self._forget(webhook.id)
            return False
        return True

    async def _for_channel(self, channel_id: int) -> discord.Webhook | None:
        """The bot's webhook for posts in the channel: an existing one it owns, else one it
        creates, remembered; None without the permission, or while Discord refuses."""
        if not self.may_use(channel_id):
            return None
        webhook_id = self._webhook_of.get(channel_id)
        if webhook_id is not None and webhook_id in self._webhooks:
            return self._webhooks[webhook_id]
        loop = asyncio.get_running_loop()
        if self._refused_until.get(channel_id, 0.0) > loop.time():
            return None
        assert self.client is not None
        try:
            webhook = await self._find(channel_id)
            if webhook is None:
                data = await self.client.http.create_webhook(
                    channel_id, name=WEBHOOK_NAME, reason="Button API: display names"
                )
                webhook = self._remember(channel_id, data)
        except discord.HTTPException as exc:
            if not permanent(exc):
                raise
            log.warning("no webhook in channel %s (%s): the bot posts itself", channel_id, exc)
            self._refused_until[channel_id] = loop.time() + self.timing.webhook_retry
            return None
        self._webhook_of[channel_id] = webhook.id
        return webhook

    async def _by_id(self, channel_id: int, webhook_id: int) -> discord.Webhook | None:
        """The bot's webhook that posted a copy; None if it is gone (or cannot be listed)."""
        if webhook_id in self._webhooks:
            return self._webhooks[webhook_id]
        try:
            return await self._find(channel_id, webhook_id)
        except discord.HTTPException as exc:
            if not permanent(exc):
                raise
            return None

    async def _find(self, channel_id: int, webhook_id: int | None = None) -> discord.Webhook | None:
        """A webhook of the channel that the bot made (Discord gives its token only to the
        bot that made it), the one with `webhook_id` if given."""
        assert self.client is not None
        me = str(_user_id(self.client))
        for data in await self.client.http.channel_webhooks(channel_id):
            owner = (data.get("user") or {}).get("id")
            if data.get("token") and str(owner) == me:
                if webhook_id is None or int(data["id"]) == webhook_id:
                    return self._remember(channel_id, data)
        return None

    def _remember(self, channel_id: int, data: Any) -> discord.Webhook:
        webhook = discord.Webhook.partial(int(data["id"]), data["token"], client=self.client)
        self._webhooks[webhook.id] = webhook
        self._channels[webhook.id] = channel_id
        return webhook

    def _forget(self, webhook_id: int) -> None:
        self._webhooks.pop(webhook_id, None)
        channel_id = self._channels.get(webhook_id)
        if channel_id is not None and self._webhook_of.get(channel_id) == webhook_id:
            del self._webhook_of[channel_id]


class Outbox:
    """Delivery of the committed outbox rows: one worker task per destination works through
    its rows in order, so a destination that fails or hangs never delays another. Every
    attempt's outcome is committed (db.outbox_*) before anyone hears of it; a transient
    failure is retried with backoff, and no attempt comes before a 429's hold is over.

    `bridged_channel(name)` resolves rows planned under a channel name (`name:<name>`, left
    by an older version) through the channel's link."""

    def __init__(
        self,
        database: db.Database,
        timing: Timing,
        bridged_channel: Callable[[str], Awaitable[int | None]],
    ) -> None:
        self.database = database
        self.timing = timing
        self.bridged_channel = bridged_channel
        self.webhooks = Webhooks(timing)
        self.client: discord.Client | None = None  # the bridge's current client
        self._online = asyncio.Event()  # logged in: REST works (the gateway need not)
        self._guild_seen = asyncio.Event()  # channel names can be resolved
        self._closing = False
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._holds: dict[Any, float] = {}  # key -> loop time before which nothing is sent
        self._dm_channels: dict[int, int] = {}  # Discord user id -> DM channel id
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- driven by the Bridge -----------------------------------------------------------------

    def use(self, client: discord.Client) -> None:
        """The bridge made a new client: every attempt from now on goes through it."""
        self.client = self.webhooks.client = client

    async def resume(self) -> None:
        """The client logged in: deliver again, starting every destination with work left."""
        self.webhooks.logged_in()
        self._online.set()
        for dest in await db.outbox_dests(self.database):
            self.kick(dest)

    def pause(self) -> None:
        """The client stopped: no attempt until the next one has logged in."""
        self._online.clear()

    def guild_seen(self) -> None:
        """The guild's channels are known: rows planned under a channel name can go."""
        self._guild_seen.set()

    def kick(self, dest: str) -> None:
        """`dest` has committed work: wake its worker (or start one)."""
        if self._closing:
            return
        self._wakes.setdefault(dest, asyncio.Event()).set()
        if dest not in self._workers:
            self._workers[dest] = asyncio.create_task(self._work(dest), name=f"outbox {dest}")

    @contextlib.contextmanager
    def watch(self, rows: list[db.Row]) -> Iterator[Delivery]:
        """Follow the first attempt of each row (register before the rows are committed)."""
        loop = asyncio.get_running_loop()
        futures = {row["nonce"]: loop.create_future() for row in rows}
        self._waiters.update(futures)
        try:
            yield Delivery(list(futures.values()), self.timing.send_wait)
        finally:
            for nonce in futures:
                self._waiters.pop(nonce, None)

    def message_deleted(self, message_id: int) -> None:
        """Wake the destinations that have a copy of the message to delete."""
        if self._closing:
            return  # a kick would do nothing now
        task = asyncio.create_task(self._kick_deletions(message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every worker; an attempt in flight stays in the outbox (retried with the same
        nonce after a restart). Whoever watches a first attempt hears QUEUED."""
        self._closing = True
        tasks = [*self._workers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._waiters.values():
            if not future.done():
                future.set_result(Outcome.QUEUED)

    async def _kick_deletions(self, message_id: int) -> None:
        for dest in await db.outbox_dests_of_message(self.database, message_id):
            self.kick(dest)

    def _resolve(self, nonces: Iterable[str], outcome: Outcome) -> None:
        for nonce in nonces:
            future = self._waiters.get(nonce)
            if future is not None and not future.done():
                future.set_result(outcome)

    # --- one worker per destination -----------------------------------------------------------

    async def _work(self, dest: str) -> None:
        """Deliver `dest`'s rows in order; exit when none is left (a kick starts it again)."""
        wake = self._wakes[dest]
        try:
            while True:
                await self._online.wait()
                wake.clear()
                row = await db.outbox_next(self.database, dest)
                if row is None:
                    if wake.is_set():
                        continue
                    return  # no await between this check and leaving _workers
                if dest.startswith("name:"):
                    await self._guild_seen.wait()
                    await self._resolve_name(dest)
                    continue
                delay = self._delay(row)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                    continue  # re-read: the row may have been deleted meanwhile
                await self._attempt(row)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database is closing, or a bug: logged, the rows stay
            log.exception("the outbox worker for %s stopped", dest)
        finally:
            self._workers.pop(dest, None)

    async def _resolve_name(self, dest: str) -> None:
        channel_id = await self.bridged_channel(dest.removeprefix("name:"))
        if channel_id is None:
            await db.outbox_drop(self.database, dest)  # not bridged: nothing to mirror
            return
        await db.outbox_redirect(self.database, dest, f"channel:{channel_id}")
        self.kick(f"channel:{channel_id}")

    # --- rate limits ----------------------------------------------------------------------------

    def _hold_key(self, row: db.Row) -> Any:
        """The rate-limit key of the route `row` uses next."""
        if row["discord_channel_id"] is not None:
            return row["discord_channel_id"]
        if row["dest"].startswith("channel:"):
            return int(row["dest"].removeprefix("channel:"))
        return self._dm_channels.get(int(row["dest"].removeprefix("user:")), DM_CREATE)

    def _delay(self, row: db.Row) -> float:
        """Seconds until `row` may be tried: its backoff and every rate limit it is under."""
        now = asyncio.get_running_loop().time()
        holds = [
            self._holds.get(GLOBAL, 0.0) - now,
            self._holds.get(self._hold_key(row), 0.0) - now,
        ]
        return max(row["not_before"] - time.time(), *holds)

    async def request_ended(
        self, _session: aiohttp.ClientSession, _ctx: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        """Every 429 discord.py receives holds its route for the time Discord asked, so no
        attempt comes sooner, even when our timeout cut discord.py's own wait short."""
        response = params.response
        if response.status != 429:
            return
        headers = response.headers
        seconds = 1.0
        for name in ("Retry-After", "X-RateLimit-Reset-After"):
            with contextlib.suppress(TypeError, ValueError):
                seconds = max(seconds, float(headers.get(name)))
        if headers.get("X-RateLimit-Global", "").lower() == "true":
            key: Any = GLOBAL
        elif match := _CHANNEL_PATH.search(params.url.path):
            key = int(match[1])
        elif match := _WEBHOOK_PATH.search(params.url.path):  # a webhook holds its channel
            key = self.webhooks.channel_of(int(match[1]), f"webhook:{match[1]}")
        elif params.url.path.endswith("/users/@me/channels"):
            key = DM_CREATE
        else:
            key = params.url.path  # a route the outbox does not use
        self._hold(key, seconds)

    def _hold(self, key: Any, seconds: float) -> None:
        until = asyncio.get_running_loop().time() + seconds
        self._holds[key] = max(self._holds.get(key, 0.0), until)

    # --- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, row: db.Row) -> None:
        """One attempt at one row; the outcome is committed before anyone hears of it."""
        try:
            async with asyncio.timeout(self.timing.attempt_timeout):
                if row["state"] == OutboxState.POST:
                    posted = await self._post(row)
                elif row["state"] == OutboxState.EDIT:
                    await self._edit(row)
                else:
                    await self._delete(row)
        except Exception as exc:
            await self._failed(row, exc)
            return
        if row["state"] == OutboxState.POST:
            await db.outbox_posted(self.database, row, *posted)
            self._resolve([row["nonce"]], Outcome.SENT)
        elif row["state"] == OutboxState.EDIT:
            await db.outbox_edited(self.database, row)
        else:
            await db.outbox_done(self.database, row["id"])

    async def _post(self, row: db.Row) -> tuple[int, int, int | None, bool]:
        """Post a row: (Discord channel id, message id, webhook id or None, whether Discord's
        copy has the row's text: a nonce seen before returns the copy made then)."""
        assert self.client is not None
        dest = row["dest"]
        if dest.startswith("user:"):
            user_id = int(dest.removeprefix("user:"))
            channel: Any = await self.client.create_dm(discord.Object(id=user_id))
            self._dm_channels[user_id] = channel.id
        else:
            channel_id = int(dest.removeprefix("channel:"))
            posted = await self.webhooks.post(channel_id, row)
            if posted is not None:
                return posted
            channel = self.client.get_partial_messageable(channel_id)
        sent = await channel.send(
            row["content"], nonce=row["nonce"], allowed_mentions=no_mentions()
        )
        return channel.id, sent.id, None, sent.content == row["content"]

    async def _edit(self, row: db.Row) -> None:
        """Give a copy on Discord the row's text, through whoever posted it."""
        assert self.client is not None
        if row["webhook_id"] is not None:
            await self.webhooks.edit(row)
            return
        channel = self.client.get_partial_messageable(row["discord_channel_id"])
        message = channel.get_partial_message(row["discord_message_id"])
        await message.edit(content=row["content"], allowed_mentions=no_mentions())

    async def _delete(self, row: db.Row) -> None:
        """Delete a copy on Discord (through the webhook that posted it, if one did)."""
        assert self.client is not None
        with contextlib.suppress(discord.NotFound):  # already gone on Discord
            if row["webhook_id"] is not None and await self.webhooks.delete(row):
                return
            # The bot's own post (or a webhook's, without its webhook: Manage Messages).
            await self.client.http.delete_message(
                row["discord_channel_id"], row["discord_message_id"]
            )

    async def _failed(self, row: db.Row, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        if permanent(exc):
            log.warning("Discord refused outbox row %s for good: %s", row["id"], error)
            nonces = await db.outbox_refused(self.database, row, error)
            self._resolve(nonces, Outcome.REFUSED)
            return
        if isinstance(exc, discord.RateLimited):
            self._hold(self._hold_key(row), exc.retry_after)
        elif not isinstance(
            exc, discord.HTTPException | TimeoutError | OSError | aiohttp.ClientError
        ):
            log.error("outbox row %s failed unexpectedly", row["id"], exc_info=exc)
        attempts = row["attempts"] + 1
        delay = self.timing.retry_delay(attempts)
        if isinstance(exc, discord.RateLimited):
            delay = max(delay, exc.retry_after)
        log.info("outbox row %s: %s; retry %d in %.1fs", row["id"], error, attempts, delay)
        await db.outbox_retry(self.database, row["id"], time.time() + delay, error)
        self._resolve([row["nonce"]], Outcome.QUEUED)


@functools.cache
def client_class() -> type:
    """The discord.py client's class (made once discord.py is loaded)."""

    class Client(discord.Client):
        """The discord.py client; every event is handed to the Bridge."""

        def __init__(self, bridge: Bridge) -> None:
            intents = discord.Intents.none()
            intents.guilds = True
            intents.guild_messages = True
            intents.dm_messages = True
            intents.message_content = True  # privileged: enabled in the developer portal
            trace = aiohttp.TraceConfig()
            trace.on_request_end.append(bridge.outbox.request_ended)
            super().__init__(
                intents=intents,
                allowed_mentions=no_mentions(),
                guild_ready_timeout=bridge.timing.guild_ready_timeout,
                max_ratelimit_timeout=30.0,  # longer 429s raise RateLimited: the outbox waits
                max_messages=None,
                http_trace=trace,
            )
            self.bridge = bridge

        async def setup_hook(self) -> None:
            await self.bridge.logged_in(self)

        async def on_ready(self) -> None:
            self.bridge.connection_changed(self, True)

        async def on_resumed(self) -> None:
            self.bridge.connection_changed(self, True)

        async def on_disconnect(self) -> None:
            self.bridge.connection_changed(self, False)

        async def on_message(self, message: discord.Message) -> None:
            self.bridge.received(message)

    return Client


class Bridge:
    """The Discord bridge: the client, its lifecycle and inbound messages; planning for the
    Outbox, which delivers.

    Use as `async with Bridge(...)`; without a token it is disabled and plans nothing."""

    def __init__(
        self,
        database: db.Database,
        publish: Callable[[db.Row, int | None], None],
        *,
        token: str,
        guild_id: int,
        channel_id: int,
        api_base: str = "",
        gateway_url: str = "",
        timing: Timing | None = None,
    ) -> None:
        self.database = database
        self.publish = publish
        self.token = token
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.api_base = api_base
        self.gateway_url = gateway_url
        self.timing = timing or Timing()
        self.outbox = Outbox(database, self.timing, self.bridged_channel)
        self.client: Any = None  # the discord.py client (client_class)
        self.ever_ready = False
        self._connected = False
        self._closing = False
        self._channels: list[tuple[int, str]] | None = None  # last known (id, name), in order
        self._inbound: asyncio.Queue[discord.Message] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._saved_urls: tuple[str, yarl.URL] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @property
    def state(self) -> str:
        """For GET /api/v3/health/: disabled, connected or disconnected."""
        if not self.enabled:
            return "disabled"
        return "connected" if self._connected else "disconnected"

    @property
    def available(self) -> bool:
        """senddcmsg is possible: the bot has become ready once since the server started."""
        return self.enabled and self.ever_ready

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Bridge:
        if self.enabled:
            load_discord()
            self._saved_urls = point_discord_py(self.api_base, self.gateway_url)
            self._consumer = asyncio.create_task(self._consume(), name="discord-inbound")
            self._runner = asyncio.create_task(self._run(), name="discord-client")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.enabled:
            return
        self._closing = True
        await self.outbox.close()
        if self.client is not None:
            await self.client.close()  # closes the gateway cleanly
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._runner), 5)
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # store what Discord had already sent us
            await asyncio.wait_for(self._inbound.join(), 5)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        if self._saved_urls is not None:
            restore_discord_py(self._saved_urls)

    async def _run(self) -> None:
        """Run the client; discord.py reconnects the gateway itself. If it stops anyway
        (Discord unreachable at login, a fatal close), start a fresh client after a pause."""
        failures = 0
        while not self._closing:
            client = self.client = client_class()(self)
            self.outbox.use(client)
            try:
                await client.start(self.token)
                return  # closed by __aexit__
            except discord.LoginFailure:
                log.error("Discord refused the bot token; the bridge is off until a restart")
                return
            except discord.PrivilegedIntentsRequired:
                log.error("enable the Message Content intent of the bot (see README)")
                return
            except (OSError, aiohttp.ClientError) as exc:  # Discord unreachable: one line
                failures += 1
                log.warning("Discord can not be reached (%s); trying again", exc)
            except Exception:
                if self._closing:  # closed while it reconnected: discord.py may trip on it
                    return
                failures += 1
                log.exception("the Discord client stopped; starting again")
            finally:
                self.outbox.pause()
                self._connected = False
                await client.close()
            await asyncio.sleep(self.timing.retry_delay(failures))

    # --- the client's events -----------------------------------------------------------------

    async def logged_in(self, client: Any) -> None:
        """setup_hook: REST works from here; the outbox resumes every destination."""
        if self.api_base and not self.gateway_url:  # a custom REST base names its gateway
            _shards, url, _limits = await client.http.get_bot_gateway()
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await self.outbox.resume()

    def connection_changed(self, client: Any, connected: bool) -> None:
        """The gateway is ready (or resumed), or it disconnected."""
        if client is not self.client:
            return
        self._connected = connected
        if connected:
            self.ever_ready = True
            if self._text_channels() is not None:
                self.outbox.guild_seen()

    def received(self, message: discord.Message) -> None:
        """A message from Discord; one queue keeps Discord's order."""
        self._inbound.put_nowait(message)

    # --- which Discord channel is bridged --------------------------------------------------

    def _text_channels(self) -> list[tuple[int, str]] | None:
        """The guild's text channels (id, name) in Discord's order: live when the guild is
        cached, else the last ones seen; None before the guild was ever seen."""
        guild = self.client.get_guild(self.guild_id) if self.client else None
        if guild is not None and not guild.unavailable:
            self._channels = [(channel.id, channel.name) for channel in guild.text_channels]
        return self._channels

    async def bridged_channel(self, name: str) -> int | None:
        """The Discord channel linked to the Button API channel `name` (linkchannel), if any;
        never the bridge channel. Names alone bridge nothing (SPEC 6)."""
        channel_id = await db.link_by_name(self.database, name)
        return None if channel_id == self.channel_id else channel_id

    def guild_text_channel(self, target: str) -> int | None:
        """linkchannel: the guild's text channel of that id, else the first of that name
        (ASCII letters case-insensitive), as last seen; None if there is none."""
        channels = self._text_channels() or []
        for channel_id, _ in channels:
            if target.isascii() and target.isdigit() and int(target) == channel_id:
                return channel_id
        key = db.ascii_lower(target)
        return next((cid for cid, name in channels if db.ascii_lower(name) == key), None)

    # --- outbound: planning (before the commit) --------------------------------------------

    def plan_public(self, username: str, text: str) -> list[db.Row]:
        """The mirror of a senddcmsgwithtoken message in the bridge channel."""
        if not (self.enabled and self.channel_id):
            return []
        return self.plan_posts(f"channel:{self.channel_id}", username, text)

    async def plan_channel(self, name: str, username: str, text: str) -> list[db.Row]:
        """The mirror of a sendmessage message, if its channel is linked."""
        if not self.enabled:
            return []
        channel_id = await self.bridged_channel(name)
        if channel_id is None:
            return []
        return self.plan_posts(f"channel:{channel_id}", username, text)

    async def plan_direct(
        self, user_id: int, username: str, target: str, text: str
    ) -> list[db.Row]:
        """senddcmsg: a bridged channel the sender is a member of, else a Discord user known
        to the bot; [] when neither (400)."""
        channel = await db.channel_by_name(self.database, target)
        if channel is not None and await db.is_member(self.database, channel["id"], user_id):
            channel_id = await self.bridged_channel(channel["name"])
            if channel_id is not None:
                return self.plan_posts(f"channel:{channel_id}", username, text)
        known = await db.discord_user_by_name(self.database, target)
        if known is not None:
            return self.plan_posts(f"user:{known['id']}", username, text)
        return []

    @staticmethod
    def plan_posts(dest: str, username: str, text: str) -> list[db.Row]:
        """The posts of a user's text at `dest` (db.edit_message holds them against the rows
        a message already has there). A DM says `via Button API`; a channel post may go
        through a webhook with the username as its display name."""
        if dest.startswith("user:"):
            return plan(dest, text, DM_PREFIX.format(username=username))
        return plan(dest, text, PUBLIC_PREFIX.format(username=username), username)

    # --- outbound: after the commit ----------------------------------------------------------

    def kick(self, rows: Iterable[db.Row]) -> None:
        """Committed rows are waiting: wake their destinations' workers."""
        for dest in {row["dest"] for row in rows}:
            self.outbox.kick(dest)

    def watch(self, rows: list[db.Row]) -> contextlib.AbstractContextManager[Delivery]:
        """Follow the first attempt of each row (register before the rows are committed)."""
        return self.outbox.watch(rows)

    def message_edited(self, dests: Iterable[str]) -> None:
        """db.edit_message replanned the message's copies: wake their destinations."""
        if self.enabled:
            for dest in dests:
                self.outbox.kick(dest)

    def message_deleted(self, message_id: int) -> None:
        """The message is gone (db.delete_message queued its Discord copies' deletion)."""
        if self.enabled:
            self.outbox.message_deleted(message_id)

    # --- inbound ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Store Discord's messages one at a time, in the order they arrived."""
        while True:
            message = await self._inbound.get()
            try:
                await self._take_in(message)
            except Exception:
                log.exception("could not take in Discord message %s", message.id)
            finally:
                self._inbound.task_done()

    async def _take_in(self, message: discord.Message) -> None:
        author = message.author
        if author.bot or message.webhook_id is not None or author.id == _user_id(self.client):
            return  # the bot itself, other bots, webhooks: never taken in (no echo loop)
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # joins, pins and other system messages
        if message.guild is None:
            await self._dm_received(message)
            return
        text = inbound_text(message)
        if not text:
            return
        sender = author.display_name  # guild nickname, else global name, else username
        if message.channel.id == self.channel_id:
            stored = await db.insert_message(
                self.database, kind="public", sender_id=None, sender=sender, message=text,
                source="discord",
            )  # fmt: skip
            self.publish(stored, None)
            return
        channel = message.channel
        if message.guild.id != self.guild_id or not isinstance(channel, discord.TextChannel):
            return
        ours = await db.channel_of_link(self.database, channel.id)  # linked channels only
        if ours is None:
            return
        stored = await db.insert_message(
            self.database, kind="channel", sender_id=None, sender=sender, message=text,
            channel_id=ours["id"], channel=ours["name"], source="discord",
        )  # fmt: skip
        self.publish(stored, ours["id"])

    async def _dm_received(self, message: discord.Message) -> None:
        """Remember the author; the first DM of each user gets one confirmation."""
        author = message.author
        text = CONFIRMATION.format(name=author.display_name, username=author.name)
        confirmation = plan(f"user:{author.id}", text)
        if await db.remember_discord_user(self.database, author.id, author.name, confirmation):
            self.kick(confirmation)
