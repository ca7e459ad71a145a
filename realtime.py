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
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from socketio import packet as sio_packet

import db

TOO_MANY_SOCKETS = "Too many unauthenticated connections from your address!"
SOCKETS_CLOSE_TIMEOUT = 1  # seconds a shutdown waits for sockets to finish closing
MAX_REPLAY = 1000  # messages replayed to a socket that reconnects with last_message_id

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
    response's path."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self._tasks: set[asyncio.Task] = set()
        self._holds = 0
        self._released = asyncio.Event()
        self._released.set()

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

    def _membership(self, event: str, user_id: int, channel: db.Row, by: str) -> None:
        data = {"channel_name": channel["name"], "channel_id": channel["id"], "by": by}
        self._send(event, data, user_room(user_id))

    async def drop_user(self, user_id: int, message: str) -> None:
        """Tell every socket of a user why, then disconnect it."""
        for sid in self._sids(user_room(user_id)):
            await self.sio.emit("api_v3_error", {"message": message}, to=sid)
            await self.sio.disconnect(sid)

    # how it is sent

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, event: str, data: Any, room: str | list[str]) -> None:
        """Queue an event; the HTTP response does not wait for slow clients."""
        self._track(asyncio.create_task(self._fan_out(event, data, room)))

    async def _fan_out(self, event: str, data: Any, room: str | list[str]) -> None:
        if self._holds:  # a socket is being sent its replay: live events come after it
            await self._released.wait()
        # What AsyncServer.emit does for a room, less its task per socket (to 1000 sockets the
        # tasks cost about a sixth of the fan-out): encode the packet once, then queue it to
        # each socket in turn (an Engine.IO socket's queue never blocks).
        packet = self.sio.packet_class(sio_packet.EVENT, namespace="/", data=[event, data])
        encoded = packet.encode()
        if not isinstance(encoded, str):  # binary attachments: the library's own way
            await self.sio.emit(event, data, to=room)
            return
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        for _, eio_sid in self.sio.manager.get_participants("/", room):
            await self.sio.eio.send_packet(eio_sid, message)

    def hold(self) -> Callable[[], None]:
        """Hold live events back (they queue, in order) until the returned release is called."""
        self._holds += 1
        self._released.clear()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._holds -= 1
                if not self._holds:
                    self._released.set()

        return release

    def greet(self, sid: str, greeting: list[tuple[str, Any]], release: Callable[[], None]) -> None:
        """Send a socket its `ready` (and `replay`), then release the live events held back."""

        async def send() -> None:
            try:
                for event, data in greeting:
                    await self.sio.emit(event, data, to=sid)
            finally:
                release()

        self._track(asyncio.create_task(send()))

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
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the socket handlers ----------------------------------------------------------------


class Refused(Exception):
    """A socket's credentials refused; the client is told `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# A socket's `auth` (or api_v3_connect's data) checked: the token's user and the socket's
# `last_message_id` (None: no replay), or Refused.
SignIn = Callable[[db.Database, dict[str, Any]], Awaitable[tuple[db.Row, int | None]]]


class Sockets(socketio.AsyncNamespace):
    """The handlers of namespace "/". A socket connects with `auth` {token_api_v3,
    last_message_id?}, or without and then sends `api_v3_connect` with the same; once
    registered it is in its user's rooms and is sent `ready` (and a `replay`)."""

    def __init__(
        self,
        events: Events,
        database: Callable[[], db.Database],  # opened after the handlers are made
        sign_in: SignIn,
        address: Callable[[web.Request], str],
        max_unauthenticated: int,
    ) -> None:
        super().__init__("/")
        self.events = events
        self.database = database
        self.sign_in = sign_in
        self.address = address
        self.max_unauthenticated = max_unauthenticated
        # Sockets connected but not (yet) authenticated, per client address: they cost memory
        # and receive nothing, so each address may hold only a few.
        self.unauthenticated: dict[str, int] = {}

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        """An event with no handler is not handled (a client asking for an ack gets none)."""
        if not isinstance(event, str) or not hasattr(self, f"on_{event}"):
            return self.server.not_handled
        return await super().trigger_event(event, *args)

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        if not auth:  # no auth, or an empty dict: connect unauthenticated
            address = self.address(environ["aiohttp.request"])
            if self.unauthenticated.get(address, 0) >= self.max_unauthenticated:
                raise socketio.exceptions.ConnectionRefusedError(TOO_MANY_SOCKETS)
            self.unauthenticated[address] = self.unauthenticated.get(address, 0) + 1
            await self.save_session(sid, {"unauthenticated_from": address})
            return
        release = self.events.hold()
        try:
            greeting = await self._register(sid, auth)
        except Refused as exc:
            release()
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        except BaseException:
            release()
            raise
        # After this handler returns the CONNECT packet is queued; the greeting follows it.
        self.events.greet(sid, greeting, release)

    async def on_api_v3_connect(self, sid: str, data: Any = None) -> None:
        release = self.events.hold()
        try:
            for event, payload in await self._register(sid, data):
                await self.emit(event, payload, to=sid)
        except Refused as exc:
            await self.emit("api_v3_error", {"message": exc.message}, to=sid)
        finally:
            release()

    async def on_disconnect(self, sid: str, reason: str) -> None:
        await self._authenticated(sid)

    async def _authenticated(self, sid: str) -> None:
        """The socket is no longer counted as unauthenticated."""
        session = await self.get_session(sid)
        address = session.pop("unauthenticated_from", None)
        if address is not None:
            self.unauthenticated[address] -= 1
            if not self.unauthenticated[address]:
                del self.unauthenticated[address]
            await self.save_session(sid, session)

    async def _register(self, sid: str, data: Any) -> list[tuple[str, Any]]:
        """Register a socket as the token's user (live events must be held back meanwhile).

        Returns what the socket is sent: `ready`, then with `last_message_id` a `replay` of
        every message it may read with a larger id. Raises Refused."""
        data = data if isinstance(data, dict) else {}
        database = self.database()
        user, last_id = await self.sign_in(database, data)
        session = await self.get_session(sid)
        if session.get("user_id") not in (None, user["id"]):
            for room in self.rooms(sid):
                if room != sid:
                    await self.leave_room(sid, room)
        rooms = [user_room(user["id"]), AUTHED_ROOM]
        rooms += [channel_room(c["channel_id"]) for c in await db.channels_of(database, user["id"])]
        for room in rooms:
            await self.enter_room(sid, room)
        try:
            await self.sign_in(database, data)  # the token may have been rotated meanwhile
        except Refused:
            for room in rooms:
                await self.leave_room(sid, room)
            raise
        await self._authenticated(sid)
        await self.save_session(sid, {"user_id": user["id"], "username": user["username"]})
        ready = f"Server has accepted the connection and registered you as : {user['username']}"
        greeting: list[tuple[str, Any]] = [("ready", ready)]
        if last_id is not None:
            since = await db.readable_since(database, user["id"], last_id, MAX_REPLAY + 1)
            replay = {"messages": since[:MAX_REPLAY], "replay_truncated": len(since) > MAX_REPLAY}
            greeting.append(("replay", replay))
        return greeting


# --- the server and its transports ------------------------------------------------------


def socket_server(app: web.Application, cors_origins: str, max_body: int) -> socketio.AsyncServer:
    """A Socket.IO server attached to the app (its handlers are registered apart)."""
    origins = cors_origins.strip()
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*" if origins == "*" else [o.strip() for o in origins.split(",")],
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=max_body,  # a bigger packet closes the connection
    )
    sio.attach(app)
    sio_disconnect = sio.eio.handlers["disconnect"]

    async def eio_disconnect(eio_sid: str, reason: str) -> None:
        # python-engineio leaves a long-poll GET pending on a socket that its client closed
        # (a CLOSE packet in a POST) until the ping timeout, ~45 s; wake it so it ends now
        # and a shutdown does not wait for it. A close by the server sends its own packet.
        socket = sio.eio.sockets.get(eio_sid)
        if reason == sio.eio.reason.CLIENT_DISCONNECT and socket and not socket.upgraded:
            socket.queue.put_nowait(None)
        await sio_disconnect(eio_sid, reason)

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

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every Engine.IO request while it runs."""
        if not request.path.startswith("/socket.io"):
            return await handler(request)
        with self.open(request):
            return await handler(request)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SOCKETS_CLOSE_TIMEOUT):
                await self.idle.wait()
        for request in list(self.requests.values()):
            if request.transport is not None:
                request.transport.close()


async def shutdown(sio: socketio.AsyncServer, events: Events, transports: OpenTransports) -> None:
    """Before the web server stops: every socket is told and closed, polling ones too."""
    await events.drain()
    for sid, _ in list(sio.manager.get_participants("/", None)):
        await sio.disconnect(sid)
    if sio.eio.sockets:
        await sio.eio.disconnect()
    await transports.close()
    await sio.shutdown()
