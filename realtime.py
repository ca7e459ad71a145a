"""Button API V3's realtime side: Socket.IO rooms, events, socket handlers and transports.

Every event a socket receives is built here (`Events`), every room is named here, and this
is the one file that touches python-socketio's and python-engineio's internals. The rule of
who may read a message (`READERS`) lives here too: it chooses an event's rooms and answers
the HTTP API's read check alike.

realtime.py never imports buttonapi.py: the server passes in how a socket's credentials are
checked (`Sockets`) and where the database is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from socketio import packet as sio_packet

import db

TOO_MANY_SOCKETS = "Too many unauthenticated connections from your address!"
SOCKETS_CLOSE_TIMEOUT = 1  # seconds a shutdown waits for sockets to finish closing
SHUTDOWN_TIMEOUT = 5  # seconds the whole closing of sockets may take, whatever clients do
MAX_REPLAY = 1000  # messages replayed to a socket that reconnects with last_message_id
MAX_QUEUED = 1024 * 1024  # bytes of events a socket may leave unread before it is dropped
MAX_TYPING_KEYS = 100_000  # (sender, conversation) pairs whose last `typing` is remembered
# Events a client may not send: the library's own (a client sending `connect` or `disconnect`
# as an event would run the server's handlers).
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "ping", "pong"})

log = logging.getLogger("buttonapi.realtime")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- rooms and readers ------------------------------------------------------------------


def user_room(user_id: int | None) -> str:
    return f"user:{user_id}"


def channel_room(channel_id: int) -> str:
    return f"channel:{channel_id}"


AUTHED_ROOM = "authed"  # every authenticated socket


@dataclasses.dataclass(frozen=True)
class Readers:
    """Who may read a message: every authenticated user, a channel's members, or the users
    named (an id is None once its account is deleted)."""

    everyone: bool = False
    channel_id: int | None = None
    user_ids: frozenset[int | None] = frozenset()

    def rooms(self) -> str | list[str]:
        """The rooms their sockets are in."""
        if self.everyone:
            return AUTHED_ROOM
        if self.channel_id is not None:
            return channel_room(self.channel_id)
        return sorted({user_room(user_id) for user_id in self.user_ids})

    async def include(self, database: db.Database, user_id: int) -> bool:
        """Whether an authenticated user is one of them."""
        if self.everyone:
            return True
        if self.channel_id is not None:
            return await db.is_member(database, self.channel_id, user_id)
        return user_id in self.user_ids


# Who may read a message, by its kind: the one rule behind both the rooms its events go to
# and the HTTP API's check (`may_read`). A message needs its `sender_id`, `channel_id` and
# `recipient_id` here, as db.message_by_id gives them.
READERS: dict[str, Callable[[db.Row], Readers]] = {
    "public": lambda message: Readers(everyone=True),
    "channel": lambda message: Readers(channel_id=message["channel_id"]),
    "dm": lambda message: Readers(
        user_ids=frozenset((message["sender_id"], message["recipient_id"]))
    ),
    "discord": lambda message: Readers(user_ids=frozenset((message["sender_id"],))),
}


def readers_room(message: db.Row) -> str | list[str]:
    """The rooms of everyone who may read a message."""
    return READERS[message["kind"]](message).rooms()


async def may_read(database: db.Database, user_id: int, message: db.Row) -> bool:
    """Whether an authenticated user may read a message."""
    return await READERS[message["kind"]](message).include(database, user_id)


MESSAGE_KEYS = tuple(db.MESSAGE_COLUMNS.split(", "))


def message_object(message: db.Row) -> db.Row:
    """The message object as the contract shows it."""
    return {key: message[key] for key in MESSAGE_KEYS}


def conversation_of(message: db.Row, user_id: int) -> tuple[str, int, str | None] | None:
    """The conversation a message the user may read belongs to, for read markers: (kind,
    target id, name): the feed (0, no name), its channel, or the DM partner (the user for a
    DM to oneself). None for a `discord` message, or a DM whose partner's account is gone."""
    kind = message["kind"]
    if kind == "public":
        return "public", 0, None
    if kind == "channel":
        return "channel", message["channel_id"], message["channel"]
    if kind == "dm":
        mine = message["sender_id"] == user_id
        peer_id = message["recipient_id"] if mine else message["sender_id"]
        peer = message["recipient"] if mine else message["sender"]
        return None if peer_id is None else ("dm", peer_id, peer)
    return None


# The event a new message makes and the keys it carries, in this order, by kind (a message
# sent to Discord, kind `discord`, makes none).
CREATED = {
    "public": ("new_public_message", MESSAGE_KEYS),
    "channel": ("new_message", ("sender", "message", "channel", "timestamp", "id")),
    "dm": ("new_dm", ("sender", "message", "recipient", "id", "timestamp")),
}


# --- events -----------------------------------------------------------------------------


class Events:
    """Every event the server sends, built here; fanned out through rooms, off the HTTP
    response's path. A socket being greeted (its `ready` and `replay`) has its live events
    held back, in order, until the greeting is queued: no other socket waits for it."""

    def __init__(self, sio: socketio.AsyncServer, transports: OpenTransports) -> None:
        self.sio = sio
        self.transports = transports
        self._tasks: set[asyncio.Task] = set()
        self._held: dict[str, list[eio_packet.Packet]] = {}  # Engine.IO sid: held events
        self._memberships: dict[int, tuple[asyncio.Lock, int]] = {}  # user id: lock, users

    # what happened

    def message_created(self, message: db.Row) -> None:
        """A new message of kind public, channel or dm (with the ids READERS reads): to its
        readers, a DM to its recipient alone."""
        kind = message["kind"]
        event, keys = CREATED[kind]
        room = user_room(message["recipient_id"]) if kind == "dm" else readers_room(message)
        self._send(event, {key: message[key] for key in keys}, room)

    def message_edited(self, message: db.Row) -> None:
        self._send("message_edited", message_object(message), readers_room(message))

    def message_deleted(self, message: db.Row) -> None:
        deleted = {"id": message["id"], "kind": message["kind"], "channel": message["channel"]}
        self._send("message_deleted", deleted, readers_room(message))

    async def channel_created(self, channel_id: int, creator_id: int) -> None:
        """The creator's sockets join the channel's room (no event)."""
        await self._join(creator_id, channel_room(channel_id))

    async def added_to_channel(self, user_id: int, channel: db.Row, by: str) -> None:
        """After the commit: the user's sockets join the channel's room and are told."""
        await self._join(user_id, channel_room(channel["id"]))
        self._membership("added_to_channel", user_id, channel, by)

    async def removed_from_channel(self, user_id: int, channel: db.Row, by: str) -> None:
        """After the commit: the user's sockets leave the channel's room and are told."""
        await self._leave(user_id, channel_room(channel["id"]))
        self._membership("removed_from_channel", user_id, channel, by)

    @contextlib.asynccontextmanager
    async def membership(self, user_id: int) -> AsyncIterator[None]:
        """One user's membership changes and socket registrations, one at a time: a change
        committed and applied to the rooms inside, or a registration reading the channels
        inside, never interleave (a removed member can not slip back into a room)."""
        lock, users = self._memberships.get(user_id, (asyncio.Lock(), 0))
        self._memberships[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._memberships[user_id]
            if users == 1:
                del self._memberships[user_id]
            else:
                self._memberships[user_id] = (lock, users - 1)

    def _membership(self, event: str, user_id: int, channel: db.Row, by: str) -> None:
        data = {"channel_name": channel["name"], "channel_id": channel["id"], "by": by}
        self._send(event, data, user_room(user_id))

    # conversations (SPEC section 10)

    def read_marker(self, user_id: int, message_id: int, kind: str, name: str | None) -> None:
        """A marker moved: to every socket of the user (the HTTP call that moved it has
        none of its own to leave out)."""
        data: dict[str, Any] = {"message_id": message_id, "kind": kind}
        if kind != "public":
            data["channel" if kind == "channel" else "username"] = name
        self._send("read_marker", data, user_room(user_id))

    def presence(self, username: str, online: bool, user_ids: set[int]) -> None:
        """Someone came or went: to the users given (those who share a channel or DMs)."""
        if user_ids:
            rooms = [user_room(user_id) for user_id in sorted(user_ids)]
            self._send("presence", {"username": username, "online": online}, rooms)

    def typing_in_channel(self, sender: str, sender_id: int, channel: db.Row) -> None:
        """To the channel's members but the sender (none of the sender's sockets)."""
        data = {"sender": sender, "channel": channel["name"]}
        self._send("typing", data, channel_room(channel["id"]), skip=user_room(sender_id))

    def typing_to(self, sender: str, recipient: db.Row) -> None:
        data = {"sender": sender, "recipient": recipient["username"]}
        self._send("typing", data, user_room(recipient["id"]))

    async def drop_user(self, user_id: int, message: str) -> None:
        """Tell every socket of a user why, then disconnect it."""
        for sid in self._sids(user_room(user_id)):
            await self.drop_socket(sid, message)

    async def signed_in(self) -> list[tuple[str, int, str]]:
        """(sid, user id, token) of every authenticated socket."""
        found = []
        for sid, _ in list(self.sio.manager.get_participants("/", AUTHED_ROOM)):
            session = await self.sio.get_session(sid)
            found.append((sid, session["user_id"], session["token"]))
        return found

    async def drop_socket(self, sid: str, message: str) -> None:
        """Tell one socket why, then disconnect it."""
        await self.tell(sid, "api_v3_error", {"message": message})
        await self.sio.disconnect(sid)

    async def tell(self, sid: str, event: str, data: Any) -> None:
        """One event to one socket, now (an answer to what it sent)."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self._deliver(eio_sid, self._packet(event, data))

    # greeting a socket

    def hold(self, sid: str) -> None:
        """Hold the socket's live events back (they queue, in order) until `greet`."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self._held.setdefault(eio_sid, [])

    async def greet(self, sid: str, greeting: list[tuple[str, Any]]) -> None:
        """Send the socket its `ready` (and `replay`), then the live events held back."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:
            return
        try:
            for event, data in greeting:
                self._deliver(eio_sid, self._packet(event, data))
            while held := self._held.get(eio_sid):
                self._deliver(eio_sid, held.pop(0))
        finally:
            self._held.pop(eio_sid, None)

    def greet_later(self, sid: str, greeting: list[tuple[str, Any]]) -> None:
        """`greet` once the socket's CONNECT answer is queued (after the connect handler)."""
        self._track(asyncio.create_task(self.greet(sid, greeting)))

    # how it is sent

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (which sends events) off the caller's path; drained at shutdown."""
        self._track(asyncio.create_task(work))

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, event: str, data: Any, room: str | list[str], skip: str | None = None) -> None:
        """Queue an event (not to the sockets in room `skip`), from the loop's next turn: the
        HTTP response is not held up by it, nor waits for slow clients."""
        asyncio.get_running_loop().call_soon(self._fan_out, event, data, room, skip)

    def _packet(self, event: str, data: Any) -> eio_packet.Packet:
        """The Engine.IO packet of a Socket.IO event, encoded once for every socket."""
        packet = self.sio.packet_class(  # never binary: not looked for in every value
            sio_packet.EVENT, namespace="/", data=[event, data], binary=False
        )
        return eio_packet.Packet(eio_packet.MESSAGE, packet.encode())

    def _fan_out(
        self, event: str, data: Any, room: str | list[str], skip: str | None = None
    ) -> None:
        # What AsyncServer.emit does for a room, less its task per socket (to 1000 sockets the
        # tasks cost about a sixth of the fan-out) and its task for the emit: encode the
        # packet once, then put it in each socket's queue in turn, in one go.
        recipients = list(self.sio.manager.get_participants("/", room))
        if not recipients:  # nobody to tell: nothing to encode
            return
        message = self._packet(event, data)
        skipped = {sid for sid, _ in self.sio.manager.get_participants("/", skip)} if skip else ()
        for sid, eio_sid in recipients:
            if sid in skipped:
                continue
            held = self._held.get(eio_sid)
            if held is not None:
                held.append(message)
            else:
                self._deliver(eio_sid, message)

    def _deliver(self, eio_sid: str, message: eio_packet.Packet) -> None:
        """Queue a packet to a socket (what AsyncSocket.send does, without a coroutine:
        the queue has no bound, so putting never waits). A socket that left over
        MAX_QUEUED bytes unread is dropped instead, and its queue freed; one whose client
        stopped answering pings goes to the library, which closes it."""
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        if socket.queue.bytes > MAX_QUEUED:
            log.warning("a socket left %d bytes of events unread: dropped", socket.queue.bytes)
            socket.queue.clear()
            self.transports.cut(eio_sid, self.sio.environ.get(eio_sid))
            reason = self.sio.eio.reason.TRANSPORT_ERROR
            self.later(socket.close(wait=False, abort=True, reason=reason))
        elif socket.last_ping and time.time() - socket.last_ping > self.sio.eio.ping_timeout:
            self.later(socket.send(message))
        else:
            socket.queue.put_nowait(message)

    def _sids(self, room: str) -> list[str]:
        return [sid for sid, _ in self.sio.manager.get_participants("/", room)]

    async def _join(self, user_id: int, room: str) -> None:
        """Put every socket of a user into a room, from this moment on."""
        for sid in self._sids(user_room(user_id)):
            await self.sio.enter_room(sid, room)

    async def _leave(self, user_id: int, room: str) -> None:
        """Take every socket of a user out of a room, from this moment on."""
        for sid in self._sids(user_room(user_id)):
            await self.sio.leave_room(sid, room)

    async def drain(self) -> None:
        await asyncio.sleep(0)  # the fan-outs already asked for (Events._send) run first
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the socket handlers ----------------------------------------------------------------


class Refused(Exception):
    """A socket's credentials refused; the client is told `message` (and `extra`)."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


# A socket's `auth` (or api_v3_connect's data) checked: the token's user and the socket's
# `last_message_id` (None: no replay), or Refused. Given the socket's sid and client address
# too (failed attempts are limited per socket and per address).
SignIn = Callable[[dict[str, Any], str, str], Awaitable[tuple[db.Row, int | None]]]


class Sessions:
    """Engine.IO sessions, counted from their handshake: at most `max_sockets` at once, and
    per client address at most `max_waiting` not (yet) authenticated. One more than that is
    let through the handshake, so that a Socket.IO client hears why it is refused."""

    def __init__(self, max_sockets: int, max_waiting: int) -> None:
        self.max_sockets = max_sockets
        self.max_waiting = max_waiting
        self.live: set[str] = set()
        self.waiting: dict[str, str] = {}  # Engine.IO sid: address, while not authenticated
        self.per_address: Counter[str] = Counter()

    def opened(self, eio_sid: str, address: str) -> bool:
        """A handshake: False when it must be refused."""
        if len(self.live) >= self.max_sockets or self.per_address[address] > self.max_waiting:
            return False
        self.live.add(eio_sid)
        self.waiting[eio_sid] = address
        self.per_address[address] += 1
        return True

    def crowded(self, eio_sid: str) -> bool:
        """Whether the address already has its fill of other sockets waiting."""
        address = self.waiting.get(eio_sid)
        return address is not None and self.per_address[address] - 1 >= self.max_waiting

    def address(self, eio_sid: str) -> str | None:
        return self.waiting.get(eio_sid)

    def authenticated(self, eio_sid: str) -> None:
        address = self.waiting.pop(eio_sid, None)
        if address is not None:
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]

    def closed(self, eio_sid: str) -> None:
        self.live.discard(eio_sid)
        self.authenticated(eio_sid)


@dataclasses.dataclass(frozen=True)
class Pace:
    """The conversation timings (SPEC section 10; tests shorten them)."""

    presence_grace: float = 5.0  # seconds a user's last socket may be gone and back unseen
    typing_interval: float = 2.0  # seconds between two `typing` relayed, per conversation


class Presence:
    """Who is online, in memory only (after a restart nobody is until they connect again).

    A user is online from their first authenticated socket until their last one has been
    gone `grace` seconds (a timer per user, started when the last socket goes; a socket
    back meanwhile cancels it and nothing is sent). `presence` goes to the people who share a
    channel or DMs with them, looked up when it changes: O(those people), never a broadcast."""

    def __init__(self, events: Events, database: Callable[[], db.Database], pace: Pace) -> None:
        self.events = events
        self.database = database
        self.pace = pace
        self.users: dict[str, int] = {}  # authenticated sid: its user id
        self.sockets: Counter[int] = Counter()  # user id: authenticated sockets
        self.online: dict[int, str] = {}  # user id: username (their grace time included)
        self.leaving: dict[int, asyncio.TimerHandle] = {}  # user id: the grace timer
        self.closed = False
        self._typed: dict[tuple[int, str, int], float] = {}  # (sender, kind, target): time

    def arrived(self, sid: str, user_id: int, username: str) -> None:
        """A socket authenticated as the user (again, or as another user)."""
        if self.users.get(sid) == user_id:
            return
        self.left(sid)
        self.users[sid] = user_id
        self.sockets[user_id] += 1
        if self.sockets[user_id] > 1:
            return
        timer = self.leaving.pop(user_id, None)
        if timer is not None:  # back within the grace time: nobody is told anything
            timer.cancel()
            return
        self.online[user_id] = username
        self._announce(user_id, username, True)

    def left(self, sid: str) -> None:
        """A socket disconnected, or authenticated as another user."""
        user_id = self.users.pop(sid, None)
        if user_id is None:
            return
        self.sockets[user_id] -= 1
        if self.sockets[user_id] > 0:
            return
        del self.sockets[user_id]
        if not self.closed:
            loop = asyncio.get_running_loop()
            self.leaving[user_id] = loop.call_later(self.pace.presence_grace, self._gone, user_id)

    def _gone(self, user_id: int) -> None:
        self.leaving.pop(user_id, None)
        username = self.online.pop(user_id, None)
        if username is not None and not self.closed:
            self._announce(user_id, username, False)

    def _announce(self, user_id: int, username: str, online: bool) -> None:
        async def announce() -> None:
            peers = await db.peers_of(self.database(), user_id)
            self.events.presence(username, online, peers)

        self.events.later(announce())

    async def online_peers(self, user_id: int) -> list[str]:
        """The usernames online among the people who share a channel or DMs with the user."""
        peers = await db.peers_of(self.database(), user_id)
        return sorted((self.online[p] for p in peers if p in self.online), key=str.lower)

    def may_type(self, sender_id: int, kind: str, target_id: int) -> bool:
        """At most one `typing` per sender and conversation each typing_interval."""
        now = asyncio.get_running_loop().time()
        key = (sender_id, kind, target_id)
        if now - self._typed.get(key, -self.pace.typing_interval) < self.pace.typing_interval:
            return False
        if len(self._typed) >= MAX_TYPING_KEYS:  # what is remembered stays bounded
            since = now - self.pace.typing_interval
            self._typed = {k: t for k, t in self._typed.items() if t > since}
        self._typed[key] = now
        return True

    def close(self) -> None:
        """At shutdown: no timer outlives the server."""
        self.closed = True
        for timer in self.leaving.values():
            timer.cancel()
        self.leaving.clear()


class Sockets(socketio.AsyncNamespace):
    """The handlers of namespace "/". A socket connects with `auth` {token_api_v3,
    last_message_id?}, or without and then sends `api_v3_connect` with the same; once
    registered it is in its user's rooms and is sent `ready` (and a `replay`). A socket's
    packets are handled one after another (async_handlers off): one socket can never have two
    registrations, or two replays, under way at once."""

    def __init__(
        self,
        events: Events,
        database: Callable[[], db.Database],  # opened after the handlers are made
        sign_in: SignIn,
        sessions: Sessions,
        presence: Presence,
    ) -> None:
        super().__init__("/")
        self.events = events
        self.database = database
        self.sign_in = sign_in
        self.sessions = sessions
        self.presence = presence
        self.addresses: dict[str, str] = {}  # sid: client address

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        """An event with no handler is not handled (a client asking for an ack gets none);
        a handler given the wrong number of arguments ignores the packet."""
        if not isinstance(event, str) or not hasattr(self, f"on_{event}"):
            return self.server.not_handled
        try:
            return await super().trigger_event(event, *args)
        except TypeError:
            return self.server.not_handled

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        eio_sid = self.server.manager.eio_sid_from_sid(sid, "/")
        self.addresses[sid] = self.sessions.address(eio_sid) or ""
        if not auth:  # no auth, or an empty dict: connect unauthenticated
            if self.sessions.crowded(eio_sid):
                raise socketio.exceptions.ConnectionRefusedError(TOO_MANY_SOCKETS)
            return
        self.events.hold(sid)
        try:
            greeting = await self._register(sid, auth)
        except BaseException as exc:
            await self.events.greet(sid, [])  # nothing held is sent to a refused socket
            if isinstance(exc, Refused):
                raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
            raise
        # After this handler returns the CONNECT packet is queued; the greeting follows it.
        self.events.greet_later(sid, greeting)

    async def on_api_v3_connect(self, sid: str, data: Any = None) -> None:
        self.events.hold(sid)
        greeting: list[tuple[str, Any]] = []
        try:
            greeting = await self._register(sid, data)
        except Refused as exc:
            greeting = [("api_v3_error", {"message": exc.message, **exc.extra})]
        finally:
            await self.events.greet(sid, greeting)

    async def on_disconnect(self, sid: str, reason: str) -> None:
        self.addresses.pop(sid, None)
        self.presence.left(sid)

    async def on_typing(self, sid: str, data: Any = None) -> None:
        """`typing` {"channel": name} or {"username": name} from an authenticated socket:
        relayed to the channel's other members (if the sender is one) or to that user, at
        most once per Pace.typing_interval; anything else is ignored. Nothing is stored."""
        user_id = self.presence.users.get(sid)
        if user_id is None or not isinstance(data, dict):
            return
        sender, database = (await self.get_session(sid))["username"], self.database()
        name, username = data.get("channel"), data.get("username")
        if isinstance(name, str) and len(name) <= 100:
            channel = await db.channel_of_member(database, name, user_id)
            if (
                channel
                and channel["member"]
                and self.presence.may_type(user_id, "c", channel["id"])
            ):
                self.events.typing_in_channel(sender, user_id, channel)
        elif isinstance(username, str) and len(username) <= 20:
            peer = await db.user_by_name(database, username)
            if peer and peer["id"] != user_id and self.presence.may_type(user_id, "d", peer["id"]):
                self.events.typing_to(sender, peer)

    async def _register(self, sid: str, data: Any) -> list[tuple[str, Any]]:
        """Register a socket as the token's user (its live events are held back meanwhile).

        Returns what the socket is sent: `ready`, then with `last_message_id` a `replay` of
        every message it may read with a larger id. Raises Refused."""
        data = data if isinstance(data, dict) else {}
        user, last_id = await self.sign_in(data, sid, self.addresses.get(sid, ""))
        session = await self.get_session(sid)
        if session.get("user_id") not in (None, user["id"]):
            for room in self.rooms(sid):
                if room != sid:
                    await self.leave_room(sid, room)
        await self._enter_rooms(sid, user["id"])
        try:
            await self.sign_in(data, sid, self.addresses.get(sid, ""))  # rotated meanwhile?
        except Refused:
            for room in self.rooms(sid):
                if room != sid:
                    await self.leave_room(sid, room)
            raise
        self.sessions.authenticated(self.server.manager.eio_sid_from_sid(sid, "/"))
        session = {"user_id": user["id"], "username": user["username"], "token": user["token"]}
        await self.save_session(sid, session)
        self.presence.arrived(sid, user["id"], user["username"])
        ready = f"Server has accepted the connection and registered you as : {user['username']}"
        greeting: list[tuple[str, Any]] = [("ready", ready)]
        if last_id is not None:
            since = await db.readable_since(self.database(), user["id"], last_id, MAX_REPLAY + 1)
            replay = {"messages": since[:MAX_REPLAY], "replay_truncated": len(since) > MAX_REPLAY}
            greeting.append(("replay", replay))
        return greeting

    async def _enter_rooms(self, sid: str, user_id: int) -> None:
        """Into the user's rooms and their channels', the channels read while no membership
        of the user can change (Events.membership)."""
        async with self.events.membership(user_id):
            channels = await db.channels_of(self.database(), user_id)
            for room in (user_room(user_id), AUTHED_ROOM):
                await self.enter_room(sid, room)
            for channel in channels:
                await self.enter_room(sid, channel_room(channel["channel_id"]))


# --- the server and its transports ------------------------------------------------------


class ByteQueue(asyncio.Queue):
    """An Engine.IO socket's queue of packets that knows how many bytes it holds."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.bytes = 0

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.bytes += _size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= _size(item)
        return item

    def clear(self) -> None:
        """Forget every packet still queued (the socket is being dropped)."""
        while not self.empty():
            self.get_nowait()
            self.task_done()


def _size(item: Any) -> int:
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, str | bytes) else 0


class SocketServer(socketio.AsyncServer):
    """python-socketio's server, less what a client must not be able to do: send the
    library's own events (`42["disconnect"]` would run the server's disconnect handler) or
    binary packets (this API has none; their attachments would pile up in memory)."""

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if not isinstance(data, str) or data[:1] in ("5", "6"):  # binary event or ack
            return
        await super()._handle_eio_message(eio_sid, data)

    async def _handle_event(self, eio_sid: str, namespace: Any, id: Any, data: Any) -> None:
        if not isinstance(data, list) or not data or data[0] in RESERVED_EVENTS:
            return
        await super()._handle_event(eio_sid, namespace, id, data)


def socket_server(
    app: web.Application,
    cors_origins: str,
    max_body: int,
    sessions: Sessions,
    address: Callable[[web.Request], str],
    transports: OpenTransports,
) -> socketio.AsyncServer:
    """A Socket.IO server attached to the app (its handlers are registered apart); every
    Engine.IO request is counted in `transports` while it runs."""
    origins = cors_origins.strip()
    sio = SocketServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if origins == "*" else [o.strip() for o in origins.split(",")],
        cors_credentials=False,  # the API's CORS gives none either: tokens are not cookies
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=max_body,  # a bigger packet closes the connection
        async_handlers=False,  # one socket's packets one at a time (see Sockets)
    )

    async def engineio(request: web.Request) -> web.StreamResponse:
        with transports.open(request):
            return await sio.handle_request(request)

    for method in ("GET", "POST", "OPTIONS"):  # what sio.attach(app) would add, counted
        app.router.add_route(method, "/socket.io/", engineio)
    sio.eio.create_queue = ByteQueue
    sio_connect = sio.eio.handlers["connect"]
    sio_disconnect = sio.eio.handlers["disconnect"]

    async def eio_connect(eio_sid: str, environ: dict) -> bool | None:
        if not sessions.opened(eio_sid, address(environ["aiohttp.request"])):
            return False  # 401 at the handshake: too many sessions, in all or unauthenticated
        return await sio_connect(eio_sid, environ)

    async def eio_disconnect(eio_sid: str, reason: str) -> None:
        # python-engineio leaves a long-poll GET pending on a socket that its client closed
        # (a CLOSE packet in a POST) until the ping timeout, ~45 s; wake it so it ends now
        # and a shutdown does not wait for it. A close by the server sends its own packet.
        sessions.closed(eio_sid)
        socket = sio.eio.sockets.get(eio_sid)
        if reason == sio.eio.reason.CLIENT_DISCONNECT and socket and not socket.upgraded:
            socket.queue.put_nowait(None)
        await sio_disconnect(eio_sid, reason)

    sio.eio.on("connect", eio_connect)
    sio.eio.on("disconnect", eio_disconnect)
    return sio


class OpenTransports:
    """Engine.IO requests in flight (websockets and long-polls). A shutdown tells every
    socket and waits a moment for them to end; once aiohttp's own shutdown starts, a
    client's close reply is no longer read, so what is left is cut off (else each websocket
    would wait out the whole shutdown timeout)."""

    def __init__(self) -> None:
        self.requests: dict[int, web.Request] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def open(self, request: web.Request) -> Iterator[None]:
        self.requests[id(request)] = request
        self.idle.clear()
        try:
            yield
        finally:
            del self.requests[id(request)]
            if not self.requests:
                self.idle.set()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SOCKETS_CLOSE_TIMEOUT):
                await self.idle.wait()
        for request in list(self.requests.values()):
            if request.transport is not None:
                request.transport.abort()  # close() would wait for a reader that is gone

    def cut(self, eio_sid: str, environ: dict | None) -> None:
        """Close the connections of one Engine.IO session: its websocket (opened by its
        handshake, or upgraded with its sid) and its long-polls in flight."""
        first = environ.get("aiohttp.request") if environ else None
        for request in list(self.requests.values()):
            if request is first or request.query.get("sid") == eio_sid:
                if request.transport is not None:
                    request.transport.abort()


async def shutdown(sio: socketio.AsyncServer, events: Events, transports: OpenTransports) -> None:
    """Before the web server stops: every socket is told and closed, polling ones too, in at
    most SHUTDOWN_TIMEOUT seconds whatever the clients do (an abandoned long-polling session
    never polls again; a vanished client never answers a close)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            await events.drain()
            for sid, _ in list(sio.manager.get_participants("/", None)):
                await sio.disconnect(sid)
            for socket in list(sio.eio.sockets.values()):
                # not eio.disconnect(): it waits until each queue is read, which an
                # abandoned long-polling session never does
                await socket.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT)
                if not socket.upgraded:
                    socket.queue.put_nowait(None)  # a long-poll in flight returns now
            await transports.close()
    await sio.shutdown()
