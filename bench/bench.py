"""Button API V3 benchmark (issue 6): how fast the server is, beside what its framework allows.

    python bench/bench.py                  # the full run: a few minutes
    python bench/bench.py --quick          # every measurement at small sizes, under a minute
    python bench/bench.py --json out.json  # the same figures as JSON too

Every piece runs in its own process, started by this one (the orchestrator):
- the real server, `python buttonapi.py --port P --db F`, on a fresh database written directly
  with sqlite3 from schema.sql, with the send and login limits off (the load would hit them);
- the floor: a bare aiohttp app with one POST handler that parses a small JSON body and
  returns a small JSON object (`bench.py floor`). HTTP figures are ratios to it;
- a bare python-socketio server that emits the same event to a room of the same sockets
  when it gets a POST (`bench.py bare-sio`). Fan-out figures are ratios to it;
- the load: wrk with a Lua script if it is installed, else a Python HTTP/1.1 keep-alive load
  generator (`bench.py load`); 64 connections, a warm-up, three runs, median and spread;
- Socket.IO clients: raw WebSocket clients that speak Engine.IO v4 / Socket.IO v5 by hand and
  only timestamp what they receive, in two processes (`bench.py sockets`).
Every server runs on CPU 0 and every load process on the other CPUs (when there are two or
more): a server never shares its core with its own load.

The measurements (issues 6 and 19; TARGETS below holds their targets):
(a) getchannels (a token read) and readmessagesfromchannel, count 50, channel of 100k
messages, each also on a copy of the server with its access log off; (b) sendmessage to a channel
of 10 members, 3 with live sockets; (c) senddm: req/s, ratio to the floor, per round;
(d) fan-out: time from sendmessage to the last of 1000 sockets' new_message, p50/p99 of 50
sends, beside the bare server (sends alternate); (e) p99 of back-to-back reads while 16
connections log in over and over (bcrypt cost 12); (f) p50 of back-to-back reads, database of
10k vs 1M messages, and searchmessages there (a common word: the newest 50 of every message;
a rare one: one match, every shard of the index walked); (g) the server's VmRSS idle, and per
socket with 1000 idle sockets; (h) presence: from a user's first socket connecting to the last
of the 1000 members of its channel receiving `presence`; (i) a public message
(senddcmsgwithtoken) to 10,000 sockets of users in no channel: time to the last delivery, and
the server's VmRSS with them, beside the bare server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import math
import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Servers run on CPU 0 and the load on the others, when there are others: a server never
# competes with its own load for a core (on a 2-core machine: a 1-core server's figures).
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = set(_CPUS[:1]) if len(_CPUS) > 1 else None
LOAD_CPUS = set(_CPUS[1:]) if len(_CPUS) > 1 else None
SELF = str(Path(__file__).resolve())  # this file: its worker processes run it too
ROOT = Path(SELF).parent.parent
CONCURRENCY = 64  # HTTP connections of every throughput run
LOGINS = 16  # concurrent logins in (e)
BCRYPT_COST = 12  # of every seeded password hash, so each login check costs what it does live
PASSWORD = "Bench-Pass1"
RUNS = 3

SIZES = {
    "full": {
        "read_messages": 100_000,  # (a): messages in the channel that is read
        "small": 10_000,  # (f): messages stored, small database
        "large": 1_000_000,  # (f): messages stored, large database
        "sockets": 1000,  # (d), (g)
        "many_sockets": 10_000,  # (i)
        "many_sends": 10,  # (i): sendmessage calls timed
        "sends": 50,  # (d): sendmessage calls timed
        "presence": 5,  # (h): presence changes timed (each waits out the 5 s grace time)
        "warmup": 3,  # seconds (wrk rounds up to whole seconds)
        "run": 10,  # seconds of each throughput run
        "probe": 5,  # seconds of each latency run
        "settle": 0.5,  # seconds each Python load run runs before it counts
        "rss_wait": 3,  # seconds between connecting the sockets and reading the memory
    },
    "quick": {
        "read_messages": 10_000,
        "small": 1_000,
        "large": 10_000,
        "sockets": 200,
        "many_sockets": 1000,
        "many_sends": 3,
        "sends": 10,
        "presence": 2,
        "warmup": 0.5,
        "run": 0.5,
        "probe": 0.5,
        "settle": 0.2,
        "rss_wait": 1,
    },
}

# The real server's settings for the load (anything else is its default).
SERVER_ENV = {
    "BUTTONAPI_SEND_LIMIT": "0",
    "BUTTONAPI_LOGIN_LIMIT_USER": "0",
    "BUTTONAPI_LOGIN_LIMIT_ADDR": "0",
    "BUTTONAPI_REGISTER_LIMIT_ADDR": "0",
    "BUTTONAPI_HOST": "127.0.0.1",
    # every benchmark socket comes from 127.0.0.1, up to 32 at once being opened
    "BUTTONAPI_UNAUTHENTICATED_SOCKETS": "64",
    "BUTTONAPI_MAX_SOCKETS": "20000",  # (i) opens 10,000 (the default cap)
}

# id: (target as text, test on the figure). The figure is a ratio unless said otherwise.
TARGETS = {
    "channels": ("≥ 0.8 × floor", lambda r: r >= 0.8),
    "read": ("≥ 0.8 × floor", lambda r: r >= 0.8),
    "write": ("≥ 0.6 × floor", lambda r: r >= 0.6),
    "dm": ("≥ 0.6 × floor", lambda r: r >= 0.6),
    "fanout_p50": ("≤ 1.0 × bare", lambda r: r <= 1.0),
    "fanout_p99": ("≤ 1.0 × bare", lambda r: r <= 1.0),
    "login_p99": ("≤ 20 ms", lambda ms: ms <= 20.0),
    "size_newest": ("≤ 1.2 × small", lambda r: r <= 1.2),
    "rss_idle": ("≤ 60 MB", lambda mb: mb <= 60.0),
    "rss_socket": ("≤ 40 KB", lambda kb: kb <= 40.0),
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def count(n: int) -> str:
    """1000 -> 1k, 1000000 -> 1M."""
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame: FIN, masked (RFC 6455 wants a client's frames masked)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status (VmRSS, in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# --- the database -----------------------------------------------------------------------

_hash_cache: dict[str, str] = {}


def password_hash() -> str:
    """The server's own password scheme (SHA-256 pre-hash, then bcrypt), at cost 12."""
    if not _hash_cache:
        sys.path.insert(0, str(ROOT))
        import bcrypt

        import buttonapi

        prehashed = buttonapi.PasswordHasher._prehash(PASSWORD)
        hashed = bcrypt.hashpw(prehashed, bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
        _hash_cache["hash"] = hashed
    return _hash_cache["hash"]


def seed(path: Path, messages: int, fanout_users: int, loners: int = 0) -> dict[str, str]:
    """A fresh database, written with sqlite3 (much faster than through the API) from the
    server's schema.sql, holding what the server itself would have written:

    - user1 .. user10, every one a member of the channels `reads` and `writes`;
    - `reads` holds `messages` messages, sent by user1 .. user10 in turn;
    - `fanout` has user1 and `fanout_users` more users (user11, ...), one socket each in (d);
    - `loners` more users after them, in no channel (one socket each in (i): no presence
      between them).

    Every user has the password PASSWORD (a bcrypt cost-12 hash) and a token; returns the
    tokens by username."""
    sys.path.insert(0, str(ROOT))
    import db

    users = [f"user{i}" for i in range(1, 11 + fanout_users + loners)]
    tokens = {name: str(uuid.uuid4()) for name in users}
    hashed = password_hash()
    stamp = db.now()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(db.SCHEMA_PATH.read_text("utf-8"))
        conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION:d}")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (id, username, password_hash, token, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(i, name, hashed, tokens[name], stamp) for i, name in enumerate(users, 1)],
        )
        conn.executemany(
            "INSERT INTO channels (id, name, creator_id, created_at) VALUES (?, ?, 1, ?)",
            [(1, "reads", stamp), (2, "writes", stamp), (3, "fanout", stamp)],
        )
        members = [(channel, user) for channel in (1, 2) for user in range(1, 11)]
        members += [(3, 1)] + [(3, user) for user in range(11, 11 + fanout_users)]
        conn.executemany("INSERT INTO members (channel_id, user_id) VALUES (?, ?)", members)
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO messages (kind, sender_id, sender, message, channel_id, channel,"
            " timestamp, source)"
            " SELECT 'channel', 1 + i % 10, 'user' || (1 + i % 10),"
            " 'Seeded message ' || i || ', an ordinary line of chat about the weather.',"
            " 1, 'reads', ?, 'api' FROM n",
            (messages, stamp),
        )
        conn.execute("COMMIT")
        # The full-text index, as the server would build it at its first start (not timed).
        conn.row_factory = db._dict_row
        db.SearchIndex().install(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.chmod(path, 0o600)  # as the server creates it: it holds tokens
    return tokens


def body(**fields: Any) -> str:
    return json.dumps(fields)


# --- worker: the floor server -----------------------------------------------------------


def floor_main(port: int) -> None:
    """The floor: one POST handler that parses a small JSON body, returns a small object."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"message": "ok", "fields": len(data)})

    app = web.Application()
    app.router.add_post("/", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --- worker: the bare python-socketio server --------------------------------------------


def bare_sio_main(port: int) -> None:
    """A minimal AsyncServer on aiohttp: every socket joins one room, and `POST /emit`
    emits `new_message` (the server's payload shape) to that room, off the response."""
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp")
    app = web.Application()
    sio.attach(app)
    tasks: set[asyncio.Task] = set()

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> None:
        await sio.enter_room(sid, "fanout")

    async def emit(request: web.Request) -> web.Response:
        data = await request.json()
        event = {
            "sender": "user1",
            "message": data["message"],
            "channel": "fanout",
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "id": 1,
        }
        task = asyncio.create_task(sio.emit("new_message", event, to="fanout"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.json_response({"message": "Message sent!"})

    app.router.add_post("/emit", emit)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --- worker: the Python HTTP load generator ---------------------------------------------


class LoadRun:
    """The shared state of one load run: whether it still sends and whether it counts."""

    def __init__(self) -> None:
        self.sending = True
        self.counting = False


class LoadJob:
    """Requests of one kind on `connections` connections; what was counted of them."""

    def __init__(self, spec: dict[str, Any], host: str) -> None:
        self.name = spec["name"]
        self.connections = spec["connections"]
        self.requests = [
            (
                f"POST {spec['path']} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(b.encode())}\r\n\r\n{b}"
            ).encode()
            for b in spec["bodies"]
        ]
        self.latencies: list[float] = []
        self.errors = 0
        self.lost = 0


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class HttpClient(asyncio.Protocol):
    """One keep-alive connection: sends the next request as soon as an answer is whole."""

    def __init__(self, run: LoadRun, job: LoadJob) -> None:
        self.run = run
        self.job = job
        self.buffer = bytearray()
        self.end = 0  # where the answer being read ends in the buffer; 0: head not read yet
        self.status = 0
        self.next = random.randrange(len(job.requests))
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.write(self.job.requests[self.next % len(self.job.requests)])
        self.next += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.end:
                head_end = self.buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                head = bytes(self.buffer[:head_end]).lower()
                length = CONTENT_LENGTH.search(head)
                if length is None:  # every answer of these servers has a Content-Length
                    self.job.errors += 1
                    self.transport.close()
                    return
                self.status = int(head[9:12])
                self.end = head_end + 4 + int(length[1])
            if len(self.buffer) < self.end:
                return
            del self.buffer[: self.end]
            self.end = 0
            if self.run.counting:
                self.job.latencies.append(time.perf_counter() - self.sent_at)
                if not 200 <= self.status < 300:
                    self.job.errors += 1
            if not self.run.sending:
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.sending:
            self.job.lost += 1


async def load_main(spec: dict[str, Any]) -> None:
    """Run the load described by a JSON spec; print what each job got, as JSON."""
    loop = asyncio.get_running_loop()
    host, port = spec["host"], spec["port"]
    run = LoadRun()
    jobs = [LoadJob(job, f"{host}:{port}") for job in spec["jobs"]]
    transports = []
    for job in jobs:
        for _ in range(job.connections):
            client = lambda j=job: HttpClient(run, j)  # noqa: E731
            transport, _ = await loop.create_connection(client, host, port)
            transports.append(transport)
    await asyncio.sleep(spec["warmup"])
    run.counting = True
    started = time.perf_counter()
    await asyncio.sleep(spec["duration"])
    run.counting = False
    elapsed = time.perf_counter() - started
    run.sending = False
    await asyncio.sleep(0.05)
    for transport in transports:
        transport.close()
    result = {}
    for job in jobs:
        ms = [latency * 1000 for latency in job.latencies]
        result[job.name] = {
            "requests": len(ms),
            "rps": len(ms) / elapsed,
            "errors": job.errors + job.lost,
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=float("nan")),
        }
    print(json.dumps(result))


# --- worker: raw Socket.IO clients ------------------------------------------------------


class SocketClient(asyncio.Protocol):
    """A WebSocket client speaking Engine.IO v4 and Socket.IO v5 by hand, as lightly as can
    be: it authenticates, answers pings and hands each event with its arrival time to the
    worker. Server frames are small and whole (no fragments, no compression asked for)."""

    def __init__(self, worker: SocketWorker, target: str, address: str, token: str) -> None:
        self.worker = worker
        self.target = target
        self.address = address
        self.token = token
        self.buffer = bytearray()
        self.upgraded = False
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {self.address}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        self.buffer += data
        if not self.upgraded:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.fail(bytes(self.buffer[:head_end]).decode(errors="replace"))
                return
            del self.buffer[: head_end + 4]
            self.upgraded = True
        while len(self.buffer) >= 2:
            opcode, length, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + length:
                return
            payload = bytes(self.buffer[start : start + length])
            del self.buffer[: start + length]
            if opcode == 1:  # text
                self.on_text(payload.decode(), now)
            elif opcode == 9:  # WebSocket ping
                self.send_frame(0xA, payload)
            elif opcode == 8:  # close
                self.transport.close()

    def on_text(self, text: str, now: float) -> None:
        if text == "2":  # Engine.IO ping
            self.send_frame(1, b"3")
        elif text.startswith("0"):  # Engine.IO open: connect to namespace "/" with auth
            self.send_frame(1, b"40" + json.dumps({"token_api_v3": self.token}).encode())
        elif text.startswith("40"):  # Socket.IO CONNECT accepted
            if not self.connected.done():
                self.connected.set_result(None)
        elif text.startswith("44"):  # Socket.IO CONNECT_ERROR
            self.fail(text)
        elif text.startswith("42"):  # Socket.IO EVENT: ["name", data...]
            name, *args = json.loads(text[2:])
            self.worker.event(self.target, name, args, now)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        self.transport.write(client_frame(payload, opcode))

    def fail(self, why: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(RuntimeError(f"{self.target}: {why}"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("connection lost")
        if self.worker.ready:
            self.worker.lost[self.target] += 1


class SocketWorker:
    """Holds the sockets of one process. For every `fanout N` message it prints
    `done TARGET N TIME` once all of its sockets of that target have it (TIME: the last)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ready = False
        self.expected = {t["name"]: len(t["tokens"]) for t in spec["targets"]}
        self.events = dict.fromkeys(self.expected, 0)
        self.lost = dict.fromkeys(self.expected, 0)
        self.fanout: dict[tuple[str, str], list[float]] = {}  # (target, text): [count, last]
        self.presence_cycles: dict[tuple[str, str], int] = {}
        for t in spec["targets"]:
            self.presence_cycles[(t["name"], "p1")] = self.presence_cycles[(t["name"], "p0")] = 0

    def event(self, target: str, name: str, args: list[Any], now: float) -> None:
        self.events[target] += 1
        if name == "presence":  # (h): `done TARGET p<1|0>-<cycle> TIME` once all have it
            if args[0]["username"] != "user1":  # the other sockets' own arrivals
                return
            key = (target, f"p{int(args[0]['online'])}")
            seen = self.fanout.setdefault(key, [0, 0.0])
            seen[0] += 1
            if seen[0] == self.expected[target]:
                cycle = self.presence_cycles[key]
                self.presence_cycles[key] += 1
                del self.fanout[key]
                print(f"done {target} {key[1]}-{cycle} {now!r}", flush=True)
            return
        if name not in ("new_message", "new_public_message"):
            return
        text = args[0]["message"]
        if not text.startswith("fanout "):
            return
        seen = self.fanout.setdefault((target, text), [0, 0.0])
        seen[0] += 1
        seen[1] = now
        if seen[0] == self.expected[target]:
            print(f"done {target} {text.split()[1]} {now!r}", flush=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(32)  # connections being opened at once
        clients = []

        async def connect(target: dict[str, Any], token: str) -> None:
            async with gate:
                host, port = target["address"].split(":")
                _, client = await loop.create_connection(
                    lambda: SocketClient(self, target["name"], target["address"], token),
                    host,
                    int(port),
                )
                clients.append(client)
                await asyncio.wait_for(client.connected, 60)

        targets = self.spec["targets"]
        await asyncio.gather(*(connect(t, token) for t in targets for token in t["tokens"]))
        self.ready = True
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the orchestrator says when to stop
        print("stats " + json.dumps({"events": self.events, "lost": self.lost}), flush=True)
        for client in clients:
            client.transport.close()


async def sockets_main(spec: dict[str, Any]) -> None:
    await SocketWorker(spec).run()


# --- the orchestrator: processes --------------------------------------------------------


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A child's preexec_fn that keeps it on `cpus`."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


class Processes:
    """Every process this run started, so that every one is stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[asyncio.subprocess.Process] = []

    async def start(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        pipes: bool = False,
        cpus: set[int] | None = None,
    ) -> asyncio.subprocess.Process:
        """`python ARGS` from the repository root, on `cpus` (None: any); output to a log
        file unless `pipes`."""  # fmt: skip
        if pipes:
            out: Any = asyncio.subprocess.PIPE
        else:
            out = (self.tmp / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=None if pipes else asyncio.subprocess.STDOUT,
            preexec_fn=pinned(cpus),
        )
        self.running.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, *, asked: bool = False) -> None:
        """SIGTERM, then SIGKILL after 15 s. `asked`: it was told to exit; give it 30 s first
        (a signal to a process that has just exited would reap it behind asyncio's back)."""
        if asked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc in self.running:
            self.running.remove(proc)

    async def stop_all(self) -> None:
        for proc in list(self.running):
            await self.stop(proc)

    async def output(self, *args: str, program: str | None = None) -> str:
        """Run to the end (python ARGS, or PROGRAM ARGS) on the load's CPUs; its output."""
        proc = await asyncio.create_subprocess_exec(
            program or sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            preexec_fn=pinned(LOAD_CPUS),
        )  # fmt: skip
        self.running.append(proc)
        out, _ = await proc.communicate()
        self.running.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{program or 'python'} {' '.join(args)}: exit {proc.returncode}")
        return out.decode()


class Server:
    """A server process listening on 127.0.0.1:port."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, port: int) -> None:
        self.name = name
        self.proc = proc
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    async def wait_listening(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see its log")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} is not listening after {seconds} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


METRICS = False  # --metrics: also (a) on a second real server with Prometheus metrics on


async def start_real_server(
    procs: Processes, name: str, db_path: Path, *, metered: bool = False,
    settings: dict[str, str] | None = None,
) -> Server:  # fmt: skip
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUTTONAPI_", "DISCORD_"))}
    env.update(SERVER_ENV)
    env.update(settings or {})
    metrics = ["--metrics-port", str(free_port())] if metered else []
    proc = await procs.start(
        name, "buttonapi.py", "--port", str(port), "--db", str(db_path), *metrics, env=env,
        cpus=SERVER_CPUS,
    )  # fmt: skip
    return Server(name, proc, port)


async def start_worker_server(procs: Processes, kind: str) -> Server:
    port = free_port()
    proc = await procs.start(kind, SELF, kind, str(port), cpus=SERVER_CPUS)
    return Server(kind, proc, port)


# --- the orchestrator: load -------------------------------------------------------------


class Load:
    """Runs one load run with wrk (when installed and asked for) or `bench.py load`."""

    def __init__(self, procs: Processes, tmp: Path, use_wrk: bool, settle: float) -> None:
        self.procs = procs
        self.tmp = tmp
        self.use_wrk = use_wrk
        self.settle = settle
        self.count = 0

    def spec_file(self, spec: dict[str, Any]) -> str:
        self.count += 1
        path = self.tmp / f"load-{self.count}.json"
        path.write_text(json.dumps(spec))
        return str(path)

    async def python(
        self, server: Server, jobs: list[dict[str, Any]], duration: float, warmup: float
    ) -> dict[str, Any]:
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "duration": duration,
            "warmup": warmup,
            "jobs": jobs,
        }
        return json.loads(await self.procs.output(SELF, "load", self.spec_file(spec)))

    async def throughput(
        self, server: Server, path: str, body_text: str, duration: float
    ) -> dict[str, Any]:
        """CONCURRENCY connections sending the same POST for `duration` seconds."""
        if not self.use_wrk:
            job = {"name": "load", "path": path, "bodies": [body_text], "connections": CONCURRENCY}
            return (await self.python(server, [job], duration, self.settle))["load"]
        script = self.tmp / f"wrk-{self.count}.lua"
        self.count += 1
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body_text}]==]\n"
        )
        out = await self.procs.output(
            f"-t{len(LOAD_CPUS or _CPUS)}", f"-c{CONCURRENCY}", f"-d{math.ceil(duration)}s",
            "--latency", "-s", str(script),
            f"http://{server.address}{path}", program="wrk",
        )  # fmt: skip
        return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = {q: ms(v, u) for q, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
        "rps": float(rps[1]),
        "errors": (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
    }


class SocketWorkers:
    """The two processes of raw Socket.IO clients, seen from here."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        self.procs = procs
        self.tmp = tmp
        self.workers: list[asyncio.subprocess.Process] = []
        self.waiting: dict[tuple[str, str], list[asyncio.Future]] = {}
        self.stats: list[dict[str, Any]] = []
        self.readers: list[asyncio.Task] = []

    async def start(self, specs: list[dict[str, Any]], seconds: float = 180) -> None:
        """Start one process per spec; return when every socket is connected."""
        ready = []
        for n, spec in enumerate(specs):
            path = self.tmp / f"sockets-{id(self)}-{n}.json"
            path.write_text(json.dumps(spec))
            proc = await self.procs.start(
                "sockets", SELF, "sockets", str(path), pipes=True, cpus=LOAD_CPUS
            )
            self.workers.append(proc)
            ready.append(asyncio.get_running_loop().create_future())
            self.readers.append(asyncio.create_task(self.read(proc, ready[-1])))
        await asyncio.wait_for(asyncio.gather(*ready), seconds)

    async def read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future) -> None:
        while line := (await proc.stdout.readline()).decode().strip():
            word, _, rest = line.partition(" ")
            if word == "ready":
                ready.set_result(None)
            elif word == "done":
                target, n, at = rest.split()
                for future in self.waiting.get((target, n), []):
                    if not future.done():
                        future.set_result(float(at))
                        break
            elif word == "stats":
                self.stats.append(json.loads(rest))
        if not ready.done():
            ready.set_exception(RuntimeError("a socket worker failed; see its stderr above"))

    def expect(self, target: str, n: int, workers: int) -> list[asyncio.Future]:
        """Futures for `done TARGET N` from `workers` processes."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(workers)]
        self.waiting[(target, str(n))] = futures
        return futures

    async def stop(self) -> list[dict[str, Any]]:
        for proc in self.workers:
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
        await asyncio.wait_for(asyncio.gather(*self.readers), 30)
        for proc in self.workers:
            await self.procs.stop(proc, asked=True)
        return self.stats


# --- the orchestrator: the measurements -------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def measure_fanout(
    procs: Processes, tmp: Path, size: dict, real: Server, bare: Server, tokens: dict[str, str],
    *, public: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """(d) and (g): sockets to both servers from two processes; time each `sendmessage` (or
    POST /emit) to the moment the last socket has the event; the server's memory meanwhile.
    `public` (i): many more sockets, of users in no channel, and `senddcmsgwithtoken` (the
    public feed, to every signed-in socket) instead."""

    n, first = (size["many_sockets"], 11 + size["sockets"]) if public else (size["sockets"], 11)
    sends = size["many_sends"] if public else size["sends"]
    fanout_tokens = [tokens[f"user{i}"] for i in range(first, first + n)]
    send_path, send_fields = (
        ("senddcmsgwithtoken", {}) if public else ("sendmessage", {"channel": "fanout"})
    )
    specs = []
    for half in (0, 1):
        mine = fanout_tokens[half::2]
        specs.append(
            {
                "targets": [
                    {"name": "real", "address": real.address, "tokens": mine},
                    {"name": "bare", "address": bare.address, "tokens": ["-"] * len(mine)},
                ]
            }
        )
    rss_before = {"real": real.rss_kb(), "bare": bare.rss_kb()}
    workers = SocketWorkers(procs, tmp)
    step = "(i)" if public else "(d)"
    log(f"{step} connecting {n} sockets to the server and {n} to the bare socket.io server")
    await workers.start(specs)
    await asyncio.sleep(size["rss_wait"])  # connection handling settles first
    rss_with = {"real": real.rss_kb(), "bare": bare.rss_kb()}
    log(f"{step} {sends} sends to each, alternating")
    targets = {
        "real": (f"http://{real.address}/api/v3/{send_path}/",
                 {"token": tokens["user1"], **send_fields}),
        "bare": (f"http://{bare.address}/emit", {}),
    }  # fmt: skip
    latencies, missing = await time_sends(workers, targets, sends, len(specs))
    if not public:
        presence = await measure_presence(workers, size, real, tokens["user1"], len(specs))
    stats = await workers.stop()
    lost = {t: sum(s["lost"][t] for s in stats) for t in ("real", "bare")}
    result = {"sockets": n, "sends": sends, "missing": missing, "lost_sockets": lost}
    if not public:
        result["presence"] = presence
    for target in ("real", "bare"):
        ms = latencies[target]
        result[target] = {
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=float("nan")),
            "latencies_ms": [round(x, 2) for x in ms],
            "rss_before_kb": rss_before[target],
            "rss_with_sockets_kb": rss_with[target],
            "kb_per_socket": (rss_with[target] - rss_before[target]) / n,
        }
    return result


async def time_sends(
    workers: SocketWorkers, targets: dict[str, tuple[str, dict]], sends: int, processes: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """`sends` POSTs to each target in turn (URL, fields; the text is `fanout N`), each timed
    to the moment the last socket has it: ({target: ms}, {target: sends some socket missed})."""
    import aiohttp

    latencies: dict[str, list[float]] = {target: [] for target in targets}
    missing = dict.fromkeys(targets, 0)
    async with aiohttp.ClientSession() as http:
        for i in range(sends):
            for target, (url, fields) in targets.items():
                futures = workers.expect(target, i, processes)
                started = time.monotonic()
                async with http.post(url, json={**fields, "message": f"fanout {i}"}) as answer:
                    if answer.status != 200:
                        raise RuntimeError(f"{target} answered {answer.status}")
                done, _ = await asyncio.wait(futures, timeout=20)
                if len(done) < len(futures):
                    missing[target] += 1
                else:
                    latencies[target].append((max(f.result() for f in futures) - started) * 1000)
                await asyncio.sleep(0.1)
    return latencies, missing


async def measure_presence(
    workers: SocketWorkers, size: dict, real: Server, token: str, processes: int
) -> dict[str, Any]:
    """(h): user1 (in the channel of the fan-out's members) connects: the time until the last
    of them has `presence` online; then leaves, and the time past the 5 s grace time until the
    last has `presence` offline."""
    import socketio

    online: list[float] = []
    offline: list[float] = []
    grace = 5.0
    log(f"(h) {size['presence']} presence changes of a user in a channel of the sockets")
    for cycle in range(size["presence"]):
        futures = workers.expect("real", f"p1-{cycle}", processes)
        client = socketio.AsyncClient(reconnection=False)
        started = time.monotonic()
        await client.connect(
            f"http://{real.address}", auth={"token_api_v3": token}, transports=["websocket"]
        )
        done, _ = await asyncio.wait(futures, timeout=20)
        if len(done) == len(futures):
            online.append((max(f.result() for f in futures) - started) * 1000)
        futures = workers.expect("real", f"p0-{cycle}", processes)
        await client.disconnect()
        left = time.monotonic()
        done, _ = await asyncio.wait(futures, timeout=grace + 20)
        if len(done) == len(futures):
            offline.append((max(f.result() for f in futures) - left - grace) * 1000)
    return {
        "changes": size["presence"],
        "online_p50_ms": percentile(online, 50),
        "offline_p50_ms": percentile(offline, 50),
        "online_ms": [round(x, 2) for x in online],
        "offline_ms_past_grace": [round(x, 2) for x in offline],
        "missing": 2 * size["presence"] - len(online) - len(offline),
    }


async def measure_http(
    procs: Processes, tmp: Path, size: dict, load: Load, real: Server, floor: Server,
    tokens: dict[str, str], others: dict[str, Server],
) -> dict[str, Any]:  # fmt: skip
    """(a), (b), (c) beside the floor: a warm-up each, then three rounds of every target in
    turn (so that a drift of the machine hits them all alike). `others`: "quiet", a server
    with its access log off, and (--metrics) "metered", one with metrics on, each on a copy
    of the database."""
    token = tokens["user1"]
    read = body(token=token, name="reads", count=50)
    targets = {
        "floor": (floor, "/", read),
        "channels": (real, "/api/v3/getchannels/", body(token=token)),
        "read": (real, "/api/v3/readmessagesfromchannel/", read),
        "write": (real, "/api/v3/sendmessage/", body(
            token=token, channel="writes", message="A benchmark message of an ordinary length.")),
        "dm": (real, "/api/v3/senddm/", body(
            token=token, username="user2", message="A benchmark DM of an ordinary length.")),
    }  # fmt: skip
    quiet = others["quiet"]  # (a) again with the access log off: what the log costs
    targets["channels_quiet"] = (quiet, "/api/v3/getchannels/", body(token=token))
    targets["read_quiet"] = (quiet, "/api/v3/readmessagesfromchannel/", read)
    if "metered" in others:  # (a) again, on a copy of the database served with metrics on
        targets["read_metrics"] = (others["metered"], "/api/v3/readmessagesfromchannel/", read)
    # (b): 3 of the 10 members of `writes` have a live socket (they receive every message).
    live = [tokens[f"user{i}"] for i in (2, 3, 4)]
    sockets = SocketWorkers(procs, tmp)
    await sockets.start([{"targets": [{"name": "live", "address": real.address, "tokens": live}]}])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for name, (server, path, text) in targets.items():
        log(f"warm-up: {name}")
        await load.throughput(server, path, text, size["warmup"])
    for round_ in range(RUNS):
        for name, (server, path, text) in targets.items():
            result = await load.throughput(server, path, text, size["run"])
            runs[name].append(result)
            log(f"round {round_ + 1}: {name} {result['rps']:.0f} req/s, errors {result['errors']}")
    stats = await sockets.stop()
    result: dict[str, Any] = {"live_socket_events": stats[0]["events"]["live"]}
    for name, per_run in runs.items():
        result[name] = {
            "rps": summary([r["rps"] for r in per_run]),
            "p50_ms": statistics.median(r["p50_ms"] for r in per_run),
            "p99_ms": statistics.median(r["p99_ms"] for r in per_run),
            "errors": sum(r["errors"] for r in per_run),
            "runs": per_run,
        }
        if name != "floor":
            base = runs["read" if name == "read_metrics" else "floor"]
            ratios = [r["rps"] / f["rps"] for r, f in zip(per_run, base, strict=True)]
            result[name]["ratio"] = summary(ratios)
    return result


async def logins_drained(real: Server) -> None:
    """Return once the logins a load run left behind are hashed: the server hashes one
    address's passwords in turn, so one more login is answered after all of them."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        url = f"http://{real.address}/api/v3/login/"
        async with http.post(url, json={"username": "user1", "password": PASSWORD}) as answer:
            if answer.status != 200:
                raise RuntimeError(f"login answered {answer.status}")


async def measure_logins(
    size: dict, load: Load, real: Server, tokens: dict[str, str]
) -> dict[str, Any]:
    """(e): one connection reading (as in (a)) request after request, alone and while 16
    connections log in over and over (a bcrypt cost-12 check each)."""
    probe = {
        "name": "probe",
        "path": "/api/v3/readmessagesfromchannel/",
        "bodies": [body(token=tokens["user1"], name="reads", count=50)],
        "connections": 1,
    }
    logins = {
        "name": "login",
        "path": "/api/v3/login/",
        "bodies": [body(username="user1", password=PASSWORD)],
        "connections": LOGINS,
    }
    alone, during = [], []
    for round_ in range(RUNS):
        alone.append((await load.python(real, [probe], size["probe"], load.settle))["probe"])
        during.append(await load.python(real, [probe, logins], size["probe"], 2 * load.settle))
        await logins_drained(real)  # else the next round's logins wait behind this one's
        log(
            f"(e) round {round_ + 1}: p99 alone {alone[-1]['p99_ms']:.1f} ms, during logins "
            f"{during[-1]['probe']['p99_ms']:.1f} ms ({during[-1]['login']['rps']:.1f} logins/s)"
        )
    return {
        "alone_p50_ms": statistics.median(r["p50_ms"] for r in alone),
        "alone_p99_ms": statistics.median(r["p99_ms"] for r in alone),
        "p50_ms": statistics.median(r["probe"]["p50_ms"] for r in during),
        "p99_ms": summary([r["probe"]["p99_ms"] for r in during]),
        "logins_per_s": statistics.median(r["login"]["rps"] for r in during),
        "errors": sum(r["errors"] for r in alone)
        + sum(r["probe"]["errors"] + r["login"]["errors"] for r in during),
    }


async def measure_sizes(
    procs: Processes, size: dict, load: Load, dbs: dict[str, tuple[Path, dict[str, str]]]
) -> dict[str, Any]:
    """(f): one connection reading request after request, from a server whose database
    holds few messages and from one holding many: the newest 50 of the channel, and 50
    before a random id (older pages, spread over the whole file)."""
    servers = {}
    for name, (path, _) in dbs.items():
        servers[name] = await start_real_server(procs, f"server-{name}", path)
    for server in servers.values():
        await server.wait_listening()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(RUNS):
        for name, server in servers.items():
            token = dbs[name][1]["user1"]
            messages = size[name]
            bodies = {
                "newest": [body(token=token, name="reads", count=50)],
                "random": [
                    body(token=token, name="reads", count=50, before=random.randint(51, messages))
                    for _ in range(1000)
                ],
                # every seeded text ends "... about the weather.": the newest 50 of them
                "search_common": [body(token=token, query="weath*", count=50)],
                # each number is in one text only: one match, every shard walked
                "search_rare": [
                    body(token=token, query=str(random.randint(1, messages)), count=50)
                    for _ in range(1000)
                ],
            }
            for variant, texts in bodies.items():
                job = {
                    "name": "probe",
                    "path": "/api/v3/searchmessages/"
                    if variant.startswith("search")
                    else "/api/v3/readmessagesfromchannel/",
                    "bodies": texts,
                    "connections": 1,
                }
                result = (await load.python(server, [job], size["probe"], load.settle))["probe"]
                runs.setdefault((name, variant), []).append(result)
        log(f"(f) round {round_ + 1} done")
    await asyncio.gather(*(procs.stop(server.proc) for server in servers.values()))
    result: dict[str, Any] = {"small_messages": size["small"], "large_messages": size["large"]}
    for (name, variant), per_run in runs.items():
        result[f"{name}_{variant}"] = {
            "p50_ms": summary([r["p50_ms"] for r in per_run]),
            "p99_ms": statistics.median(r["p99_ms"] for r in per_run),
            "errors": sum(r["errors"] for r in per_run),
        }
    for variant in ("newest", "random", "search_common", "search_rare"):
        large = result[f"large_{variant}"]["p50_ms"]["median"]
        result[f"ratio_{variant}"] = large / result[f"small_{variant}"]["p50_ms"]["median"]
    return result


# --- the report -------------------------------------------------------------------------


def figure(key: str | None, what: str, value: float, unit: str, spread: str = "",
           ratio: float | None = None, reference: str = "") -> dict[str, Any]:  # fmt: skip
    """One row: what, value, spread, ratio and reference, target and pass (TARGETS[key])."""
    target, test = TARGETS.get(key, ("", None)) if key else ("", None)
    judged = ratio if ratio is not None and "×" in target else value
    return {
        "id": key, "what": what, "value": value, "unit": unit, "spread": spread,
        "ratio": ratio, "reference": reference, "target": target,
        "pass": None if test is None else bool(test(judged)),
    }  # fmt: skip


def spread(s: dict[str, float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(s['min'])}–{fmt.format(s['max'])}"


def http_figures(http: dict[str, Any], size: dict) -> list[dict[str, Any]]:
    """(a), (b), (c): each beside the floor (the metrics run beside (a))."""
    floor = http["floor"]["rps"]
    rows = [figure(None, "floor: bare aiohttp POST, JSON in and out", floor["median"], "req/s",
                   spread(floor))]  # fmt: skip
    k = count(size["read_messages"])
    for key, judged, what in (
        ("channels", True, "(a) getchannels (a token read)"),
        ("read", True, f"(a) readmessagesfromchannel, 50 of {k}"),
        ("write", True, "(b) sendmessage, 10 members, 3 sockets"),
        ("dm", True, "(c) senddm"),
        ("channels_quiet", False, "(a) getchannels, access log off"),
        ("read_quiet", False, "(a) readmessagesfromchannel, access log off"),
        ("read_metrics", False, "(a) with metrics on (--metrics-port)"),
    ):
        if key in http:
            r = http[key]
            rows.append(figure(key if judged else None, what, r["rps"]["median"], "req/s",
                               spread(r["rps"]), r["ratio"]["median"],
                               "(a)" if key == "read_metrics" else "floor"))  # fmt: skip
    return rows


def storage_figures(results: dict[str, Any], size: dict) -> list[dict[str, Any]]:
    """(e) and (f)."""
    rows = []
    if logins := results.get("logins"):
        p99 = logins["p99_ms"]
        rows.append(figure("login_p99", f"(e) read p99 during {LOGINS} logins", p99["median"],
                           "ms", spread(p99, "{:.1f}"), p99["median"] / logins["alone_p99_ms"],
                           "alone"))  # fmt: skip
    if sizes := results.get("sizes"):
        small, large = count(size["small"]), count(size["large"])
        for variant, key, what in (
            ("newest", "size_newest", "read p50, newest page"),
            ("random", None, "read p50, random page"),
            ("search_common", None, "search p50, a common word"),
            ("search_rare", None, "search p50, a rare word"),
        ):
            s = sizes[f"small_{variant}"]["p50_ms"]
            g = sizes[f"large_{variant}"]["p50_ms"]
            rows.append(figure(key, f"(f) {what}, {large} vs {small}", g["median"], "ms",
                               f"{small}: {s['median']:.2f} ms", sizes[f"ratio_{variant}"],
                               "small"))  # fmt: skip
    return rows


def socket_figures(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """(d), (h), (i) and (g), by letter."""
    rows: dict[str, list[dict[str, Any]]] = {"d": [], "h": [], "i": [], "g": []}
    if fan := results.get("fanout"):
        n, real, bare = fan["sockets"], fan["real"], fan["bare"]
        for q in ("p50", "p99"):
            mine, theirs = real[f"{q}_ms"], bare[f"{q}_ms"]
            what = f"(d) fan-out to {n} sockets, {q}"
            rows["d"].append(figure(f"fanout_{q}", what, mine, "ms", f"bare {theirs:.0f} ms",
                                    mine / theirs, "bare"))  # fmt: skip
        if (p := fan.get("presence", {})).get("online_ms"):
            rows["h"].append(figure(None, f"(h) presence fan-out to {n} channel members, p50",
                                    p["online_p50_ms"], "ms",
                                    f"offline past 5 s: {p['offline_p50_ms']:.1f} ms"))  # fmt: skip
        rows["g"] = [
            figure("rss_idle", "(g) server RSS idle", results["rss_idle_kb"] / 1024, "MB",
                   f"bare {results['bare_rss_idle_kb'] / 1024:.1f} MB"),
            figure("rss_socket", f"(g) RSS per idle socket ({n})", real["kb_per_socket"], "KB",
                   f"bare {bare['kb_per_socket']:.1f} KB"),
        ]  # fmt: skip
    if many := results.get("many"):
        m, real, bare = count(many["sockets"]), many["real"], many["bare"]
        for q in ("p50", "max"):
            mine, theirs = real[f"{q}_ms"], bare[f"{q}_ms"]
            rows["i"].append(figure(None, f"(i) public message to {m} sockets, {q}", mine, "ms",
                                    f"bare {theirs:.0f} ms", mine / theirs, "bare"))  # fmt: skip
        mine, theirs = real["rss_with_sockets_kb"], bare["rss_with_sockets_kb"]
        rows["i"].append(figure(None, f"(i) RSS with {m} sockets", mine / 1024, "MB",
                                f"bare {theirs / 1024:.0f} MB", mine / theirs, "bare"))  # fmt: skip
    return rows


def figures(results: dict[str, Any], size: dict) -> list[dict[str, Any]]:
    """One row per figure, in the report's order."""
    sockets = socket_figures(results)
    http = http_figures(results["http"], size) if "http" in results else []
    return [*http, *sockets["d"], *storage_figures(results, size), *sockets["h"],
            *sockets["i"], *sockets["g"]]  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    def number(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"

    lines = [("figure", "value", "spread / beside", "ratio", "target", "")]
    for r in rows:
        ratio = f"{r['ratio']:.2f} × {r['reference']}" if r["ratio"] is not None else ""
        verdict = {None: "", True: "pass", False: "FAIL"}[r["pass"]]
        value = f"{number(r['value'])} {r['unit']}"
        lines.append((r["what"], value, r["spread"], ratio, r["target"], verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --- the orchestrator -------------------------------------------------------------------

PHASES = ("fanout", "many", "http", "logins", "sizes")


async def orchestrate(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    phases = args.only.split(",") if args.only else list(PHASES)
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    began = time.monotonic()
    # 1000 sockets need more than the common limit of 1024 open files; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "sizes": size,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "loader": f"wrk -t{len(LOAD_CPUS or _CPUS)} (Lua script for the POST body)"
        if use_wrk
        else "bench.py load",
        "server_cpus": sorted(SERVER_CPUS or _CPUS),
        "load_cpus": sorted(LOAD_CPUS or _CPUS),
        "python": sys.version.split()[0],
        "concurrency": CONCURRENCY,
        "server_env": SERVER_ENV,
    }
    print(
        f"Button API V3 benchmark, {mode} mode, {meta['cpus']} CPUs, "
        f"load average {meta['load_average_before'][0]:.2f}; servers on CPU "
        f"{meta['server_cpus']}, load on CPU {meta['load_cpus']}; load: {meta['loader']}, "
        f"{CONCURRENCY} connections; the server runs with "
        + " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
        + " (send and login limits off for the load)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="buttonapi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            results = await run_phases(procs, tmp, size, phases, use_wrk)
        except BaseException:
            print_logs(tmp)
            raise
        finally:
            await procs.stop_all()
    meta["load_average_after"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - began, 1)
    rows = figures(results, size)
    print()
    print_table(rows)
    problems = sanity(results)
    for problem in problems:
        print(f"WARNING: {problem}")
    print(f"\n{meta['seconds']:.0f} s; load average after: {meta['load_average_after'][0]:.2f}")
    if args.json:
        document = {"meta": meta, "figures": rows, "results": results, "problems": problems}
        write_json(args.json, document)
    return 1 if problems else 0


def print_logs(tmp: Path) -> None:
    """After a failure: the end of every server's log."""
    for log_file in sorted(tmp.glob("*.log")):
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log_file.name} (last lines)\n" + "\n".join(tail), file=sys.stderr)


def write_json(path: str, document: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def sanity(results: dict[str, Any]) -> list[str]:
    """What makes figures untrustworthy: failed requests, lost events or sockets."""
    problems = []
    for name, r in results.get("http", {}).items():
        if isinstance(r, dict) and r.get("errors"):
            problems.append(f"{name}: {r['errors']} requests failed")
    if results.get("logins", {}).get("errors"):
        problems.append(f"logins: {results['logins']['errors']} requests failed")
    for name, r in results.get("sizes", {}).items():
        if isinstance(r, dict) and r.get("errors"):
            problems.append(f"sizes {name}: {r['errors']} requests failed")
    for phase in ("fanout", "many"):
        fan = results.get(phase)
        if not fan:
            continue
        if fan.get("presence", {}).get("missing"):
            problems.append(f"presence: {fan['presence']['missing']} changes not seen by all")
        for target in ("real", "bare"):
            if fan["missing"][target] or fan["lost_sockets"][target]:
                problems.append(
                    f"{phase} {target}: {fan['missing'][target]} sends not seen by every "
                    f"socket, {fan['lost_sockets'][target]} sockets lost"
                )
    return problems


async def run_phases(
    procs: Processes, tmp: Path, size: dict, phases: list[str], use_wrk: bool
) -> dict[str, Any]:
    log("seeding the databases (sqlite3, schema.sql)")
    main_db = tmp / "main.db"
    loners = size["many_sockets"] if "many" in phases else 0
    tokens = await asyncio.to_thread(seed, main_db, size["read_messages"], size["sockets"], loners)
    size_dbs = {}
    if "sizes" in phases:
        for name in ("small", "large"):
            path = tmp / f"{name}.db"
            size_dbs[name] = (path, await asyncio.to_thread(seed, path, size[name], 0))
    log("starting the server, the floor and the bare socket.io server")
    others = {}  # servers of copies, made before any server opens the database
    if "http" in phases:
        await asyncio.to_thread(shutil.copyfile, main_db, tmp / "quiet.db")
        others["quiet"] = await start_real_server(
            procs, "quiet", tmp / "quiet.db", settings={"BUTTONAPI_ACCESS_LOG": "0"}
        )
    if METRICS and "http" in phases:
        await asyncio.to_thread(shutil.copyfile, main_db, tmp / "metered.db")
        others["metered"] = await start_real_server(
            procs, "metered", tmp / "metered.db", metered=True
        )
    for server in others.values():
        await server.wait_listening()
    real = await start_real_server(procs, "server", main_db)
    floor = await start_worker_server(procs, "floor")
    bare = await start_worker_server(procs, "bare-sio")
    for server in (real, floor, bare):
        await server.wait_listening()
    await asyncio.sleep(1)
    results: dict[str, Any] = {"rss_idle_kb": real.rss_kb(), "bare_rss_idle_kb": bare.rss_kb()}
    load = Load(procs, tmp, use_wrk, size["settle"])
    if "fanout" in phases:
        results["fanout"] = await measure_fanout(procs, tmp, size, real, bare, tokens)
    if "many" in phases:
        results["many"] = await measure_fanout(procs, tmp, size, real, bare, tokens, public=True)
    if "http" in phases:
        results["http"] = await measure_http(procs, tmp, size, load, real, floor, tokens, others)
    if "logins" in phases:
        log("(e) reads alone and during logins")
        results["logins"] = await measure_logins(size, load, real, tokens)
    stopping = [real, floor, bare, *others.values()]
    await asyncio.gather(*(procs.stop(server.proc) for server in stopping))
    if "sizes" in phases:
        log(f"(f) reads from {size['small']} and {size['large']} stored messages")
        results["sizes"] = await measure_sizes(procs, size, load, size_dbs)
    return results


def main() -> None:
    workers = {
        "floor": lambda arg: floor_main(int(arg)),
        "bare-sio": lambda arg: bare_sio_main(int(arg)),
        "load": lambda arg: asyncio.run(load_main(json.loads(Path(arg).read_text()))),
        "sockets": lambda arg: asyncio.run(sockets_main(json.loads(Path(arg).read_text()))),
    }
    if len(sys.argv) == 3 and sys.argv[1] in workers:  # a process started by the orchestrator
        workers[sys.argv[1]](sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON too")
    parser.add_argument(
        "--loader", choices=("auto", "wrk", "python"), default="auto",
        help="HTTP load: wrk if installed (auto), or the Python load generator",
    )  # fmt: skip
    parser.add_argument("--only", help=f"some of {','.join(PHASES)} (default: all)")
    parser.add_argument(
        "--metrics", action="store_true",
        help="also measure (a) on a second server with Prometheus metrics on (their cost)",
    )  # fmt: skip
    args = parser.parse_args()
    global METRICS
    METRICS = args.metrics
    sys.exit(asyncio.run(orchestrate(args)))


if __name__ == "__main__":
    main()
