"""Button API V3 under attack: the server's memory during three abuse patterns.

    python bench/attacks.py                 # full sizes, about 30 seconds
    python bench/attacks.py --quick         # small sizes, about 20 seconds (for CI)
    python bench/attacks.py --reap-wait 75  # also the memory once Engine.IO reaped the flood
    python bench/attacks.py --only 3 --cycles 5   # attack 3 only, five rounds on one server

Each attack runs against a fresh server process (`python buttonapi.py --port P --db F`, a new
database in a temporary directory, 127.0.0.1 only, send/login/registration limits off, bcrypt
cost 4). The server's VmRSS (/proc/PID/status) is read before the attack, sampled every 50 ms
from a thread during it (the peak), and read after it; then /api/v3/health/ is asked whether
the server still answers.

1. Replay amplification: the public feed holds 1,100 messages of 2,000 characters; one raw
   websocket (SO_RCVBUF 4096) sends "40" and then 200 `api_v3_connect` with last_message_id 0,
   each asking for a replay of up to 1,000 messages (~2 MB), reads nothing for 4 s, then reads
   until EOF (the server drops a socket that leaves more than 1 MiB unread). After: 2 s after
   the socket closed.
2. Engine.IO session flood: polling handshakes (each a new, abandoned session) for 6 s
   (--flood-seconds) or 20,000 handshakes, every one with its own X-Forwarded-For (the server
   trusts 127.0.0.1 as a proxy), so that the per-address cap does not stop it and the global
   cap (BUTTONAPI_MAX_SOCKETS, 10,000) does (whether 6 s reach it depends on the machine's
   speed; --flood-seconds 15 does). After: right away (abandoned sessions are reaped only
   by Engine.IO's ping timeout, 25 + 20 s), and after --reap-wait seconds if given.
3. Idle-socket flood: 2,000 authenticated websockets that only answer pings. After: 2 s after
   they all closed; per socket: (RSS with all open - before) / sockets. --cycles N opens and
   closes them N times on the same server (memory that does not come back shows as a climb).

Every loop is bounded in count and in time. Standard library and aiohttp only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import re
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench import client_frame  # bench/ is on sys.path when this script runs

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Passw0rd!"
MESSAGE_LENGTH = 2000

SIZES = {
    "full": {"messages": 1100, "handshakes": 20_000, "sockets": 2000},
    "quick": {"messages": 300, "handshakes": 2000, "sockets": 300},
}
REPLAY_PACKETS = 200  # api_v3_connect packets sent on the one websocket
REPLAY_HOLD = 4.0  # seconds the replay client reads nothing
REPLAY_READ_LIMIT = 90.0  # seconds it then reads, at most, waiting for EOF
FLOOD_CONCURRENCY = 32  # handshakes in flight at once
CONNECT_GATE = 10  # sockets being authenticated at once (the per-address cap is 20)
CONNECT_LIMIT = 180.0  # seconds the idle flood may take to open its sockets
SETTLE = 2.0  # seconds between the end of an attack and the "after" reading

SERVER_ENV = {
    "BUTTONAPI_HOST": "127.0.0.1",
    "BUTTONAPI_SEND_LIMIT": "0",
    "BUTTONAPI_LOGIN_LIMIT_USER": "0",
    "BUTTONAPI_LOGIN_LIMIT_ADDR": "0",
    "BUTTONAPI_REGISTER_LIMIT_ADDR": "0",
    "BUTTONAPI_BCRYPT_ROUNDS": "4",
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(kb: int) -> float:
    return kb / 1024


class RssSampler:
    """Samples a process's VmRSS every 50 ms in a thread (the client's event loop may be
    busy) and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_kb(pid)
        self.samples = 0
        self.cpu = 0.0  # server CPU seconds while sampling
        self.wall = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            kb = rss_kb(self.pid)
            self.samples += 1
            self.peak = max(self.peak, kb)

    def __enter__(self) -> RssSampler:
        self._cpu0 = cpu_seconds(self.pid)
        self._wall0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb(self.pid))
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.wall = time.monotonic() - self._wall0

    def usage(self) -> str:
        return f"server CPU {self.cpu:.1f} s in {self.wall:.1f} s of attack"


# --- the server -------------------------------------------------------------------------


def open_log(path: Path) -> Any:
    return path.open("ab")


class Server:
    """A fresh server process on 127.0.0.1 with its own database and log."""

    def __init__(self, name: str, tmp: Path, extra_env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db = tmp / f"{name}.db"
        self.log = tmp / f"{name}.log"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("BUTTONAPI_", "DISCORD_"))
        }
        self.env.update(SERVER_ENV)
        self.env.update(extra_env)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_kb(self.pid)

    async def start(self) -> None:
        out = open_log(self.log)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "buttonapi.py",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            out.close()
        deadline = time.monotonic() + 60
        while not await self.healthy(1):
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name}: exited with {self.proc.returncode}; {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no answer on /api/v3/health/ after 60 s")
            await asyncio.sleep(0.1)

    async def healthy(self, seconds: float = 5) -> bool:
        """Whether GET /api/v3/health/ answers 200 within `seconds`."""
        timeout = aiohttp.ClientTimeout(total=seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.get(f"{self.base}/api/v3/health/") as response:
                    await response.read()
                    return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_lines(self, text: str) -> list[str]:
        """The lines of the server's log that hold `text`."""
        with contextlib.suppress(FileNotFoundError):
            lines = self.log.read_text(errors="replace").split("\n")
            return [line for line in lines if text in line]
        return []

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def post(http: aiohttp.ClientSession, server: Server, path: str, **body: Any) -> Any:
    async with http.post(f"{server.base}/api/v3/{path}/", json=body) as response:
        data = await response.json(content_type=None)
        if response.status not in (200, 201):
            raise RuntimeError(f"{path}: {response.status} {data}")
        return data


async def new_token(http: aiohttp.ClientSession, server: Server, username: str) -> str:
    await post(http, server, "register", username=username, password=PASSWORD)
    data = await post(http, server, "generatetoken", username=username, password=PASSWORD)
    return data["token"]


# --- raw WebSocket (Engine.IO v4 / Socket.IO v5 by hand) --------------------------------


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Frames:
    """Splits the server's (unmasked, unfragmented) frames out of a byte stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= 2:
            opcode, length, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    break
                length, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                if len(self.buffer) < 10:
                    break
                length, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + length:
                break
            frames.append((opcode, bytes(self.buffer[start : start + length])))
            del self.buffer[: start + length]
        return frames


# --- 1. replay amplification ------------------------------------------------------------


def replay_client(port: int, token: str) -> dict[str, Any]:
    """The attacking socket (blocking, run in a thread): upgrade, "40", 200 api_v3_connect,
    nothing read for REPLAY_HOLD seconds, then read until EOF (at most REPLAY_READ_LIMIT s).
    Frames are counted as they arrive, not kept."""
    result: dict[str, Any] = {"received": 0, "frames": 0, "replays": 0, "readies": 0}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    result["rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(upgrade_request(port))
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed during the upgrade")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {head[:200]!r}")
        frames = Frames()
        result["received"] = len(rest)
        count_frames(result, frames.feed(rest))
        connect = '42["api_v3_connect",' + json.dumps(
            {"token_api_v3": token, "last_message_id": 0}, separators=(",", ":")
        )
        sock.sendall(client_frame(b"40"))
        packet = client_frame((connect + "]").encode())
        for _ in range(REPLAY_PACKETS):
            sock.sendall(packet)
        result["sent"] = len(client_frame(b"40")) + len(packet) * REPLAY_PACKETS
        result["sent_at"] = time.time()
        time.sleep(REPLAY_HOLD)
        began = time.monotonic()
        sock.settimeout(1)
        result["end"] = f"no EOF within {REPLAY_READ_LIMIT:.0f} s"
        while time.monotonic() - began < REPLAY_READ_LIMIT:
            try:
                data = sock.recv(262144)
            except TimeoutError:
                continue
            except ConnectionResetError:
                result["end"] = "a reset"
                break
            if not data:
                result["end"] = "EOF"
                break
            result["received"] += len(data)
            count_frames(result, frames.feed(data))
        result["read_seconds"] = time.monotonic() - began
    finally:
        sock.close()
    return result


def count_frames(result: dict[str, Any], frames: list[tuple[int, bytes]]) -> None:
    for opcode, payload in frames:
        result["frames"] += 1
        if opcode == 1 and payload.startswith(b'42["replay"'):
            result["replays"] += 1
        elif opcode == 1 and payload.startswith(b'42["ready"'):
            result["readies"] += 1


async def fill_feed(http: aiohttp.ClientSession, server: Server, token: str, n: int) -> int:
    """n public messages of MESSAGE_LENGTH characters, 8 requests at a time; how many stored."""
    filler = ("The quick brown fox jumps over the lazy dog. " * 50)[:MESSAGE_LENGTH]
    next_index = 0
    stored = 0

    async def worker() -> None:
        nonlocal next_index, stored
        while next_index < n:
            i = next_index
            next_index += 1
            text = (f"attack {i:05d} " + filler)[:MESSAGE_LENGTH]
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await post(http, server, "senddcmsgwithtoken", token=token, message=text)
                stored += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 600)
    return stored


@dataclasses.dataclass
class Row:
    name: str
    before: int = 0
    peak: int = 0
    after: int = 0
    healthy: bool = False
    alive: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)


async def attack_replay(tmp: Path, size: dict[str, int]) -> Row:
    row = Row("1 replay amplification")
    server = Server("replay", tmp, {})
    await server.start()
    try:
        fresh = server.rss()
        async with aiohttp.ClientSession() as http:
            token = await new_token(http, server, "replayer")
            log(f"replay: storing {size['messages']} messages of {MESSAGE_LENGTH} characters")
            stored = await fill_feed(http, server, token, size["messages"])
        await asyncio.sleep(0.5)
        row.before = server.rss()
        log("replay: one websocket, 200 api_v3_connect with last_message_id 0, unread for 4 s")
        with RssSampler(server.pid) as sampler:
            result = await asyncio.to_thread(replay_client, server.port, token)
            await asyncio.sleep(SETTLE)
            row.after = server.rss()
        row.peak = sampler.peak
        row.alive = server.alive()
        row.healthy = await server.healthy()
        dropped = server.log_lines("unread: dropped")
        when = ""
        if dropped:
            stamp = datetime.datetime.strptime(dropped[0][:23], "%Y-%m-%d %H:%M:%S,%f")
            after_send = stamp.timestamp() - result["sent_at"]
            left = re.search(r"left (\d+) bytes", dropped[0])
            when = f", {after_send:.2f} s after the last packet was sent" + (
                f", with {int(left[1]):,} bytes queued" if left else ""
            )
        row.notes += [
            f"fresh server {mb(fresh):.1f} MB; {stored} of {size['messages']} messages "
            f"stored ({MESSAGE_LENGTH} characters each); RSS then {mb(row.before):.1f} MB",
            f"client: SO_RCVBUF {result['rcvbuf']} (as the kernel set it), sent "
            f"{result['sent']:,} bytes; after {REPLAY_HOLD:.0f} s unread it received "
            f"{result['received']:,} bytes ({result['frames']} frames: {result['readies']} "
            f"ready, {result['replays']} replay) and then {result['end']} after "
            f"{result['read_seconds']:.1f} s of reading",
            f"server log: {len(dropped)} socket(s) dropped for leaving > 1 MiB unread{when}",
            sampler.usage(),
        ]
    finally:
        await server.stop()
    return row


# --- 2. Engine.IO session flood ---------------------------------------------------------


async def handshake(
    http: aiohttp.ClientSession, server: Server, forwarded: str | None = None
) -> int | str:
    """One Engine.IO polling handshake (a new session, then abandoned): its status."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    try:
        async with http.get(
            f"{server.base}/socket.io/?EIO=4&transport=polling", headers=headers
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return type(exc).__name__


async def attack_sessions(tmp: Path, size: dict[str, int], seconds: float, reap_wait: float) -> Row:
    row = Row("2 Engine.IO session flood")
    server = Server("sessions", tmp, {"BUTTONAPI_TRUSTED_PROXIES": "127.0.0.1"})
    await server.start()
    try:
        await asyncio.sleep(0.5)
        row.before = server.rss()
        total = size["handshakes"]
        log(f"sessions: up to {total} polling handshakes in {seconds:.0f} s")
        statuses: Counter[int | str] = Counter()
        next_index = 0
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=FLOOD_CONCURRENCY)
        with RssSampler(server.pid) as sampler:
            began = time.monotonic()
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

                async def worker() -> None:
                    nonlocal next_index
                    while next_index < total and time.monotonic() - began < seconds:
                        n = next_index
                        next_index += 1
                        forwarded = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
                        statuses[await handshake(http, server, forwarded)] += 1

                await asyncio.gather(*(worker() for _ in range(FLOOD_CONCURRENCY)))
            elapsed = time.monotonic() - began
            row.after = server.rss()
        row.peak = sampler.peak
        row.alive = server.alive()
        row.healthy = await server.healthy()
        async with aiohttp.ClientSession(timeout=timeout) as http:
            legit = await handshake(http, server)
        others = ", ".join(f"{k}: {v}" for k, v in statuses.items() if k not in (200, 401))
        row.notes += [
            f"{next_index:,} handshakes in {elapsed:.1f} s ({next_index / elapsed:,.0f}/s): "
            f"200 (a session): {statuses[200]:,}, 401 (refused): {statuses[401]:,}"
            + (f", other: {others}" if others else ""),
            f"right after, a handshake from 127.0.0.1 itself (no X-Forwarded-For): {legit}",
            sampler.usage(),
        ]
        if reap_wait > 0:
            log(f"sessions: waiting {reap_wait:.0f} s for Engine.IO to reap the sessions")
            ended = time.monotonic()
            freed = ""
            async with aiohttp.ClientSession(timeout=timeout) as http:
                # while the cap is full, one handshake a second finds when it frees
                while (waited := time.monotonic() - ended) < reap_wait:
                    if legit != 200:
                        legit = await handshake(http, server)
                        if legit == 200:
                            freed = f"; the cap freed {waited:.0f} s after the flood"
                    await asyncio.sleep(min(1.0, max(0.0, reap_wait - waited)))
                legit = await handshake(http, server)
            row.notes.append(
                f"after --reap-wait {reap_wait:.0f} s: RSS {mb(server.rss()):.1f} MB, "
                f"a new handshake: {legit}, healthy: {'yes' if await server.healthy() else 'NO'}"
                + freed
            )
        else:
            row.notes.append(
                "abandoned sessions stay until Engine.IO's ping timeout reaps them (pingInterval "
                "25 s + pingTimeout 20 s); --reap-wait S reads RSS again after S seconds"
            )
    finally:
        await server.stop()
    return row


# --- 3. idle-socket flood ---------------------------------------------------------------


class IdleSocket(asyncio.Protocol):
    """An authenticated websocket that does nothing but answer pings."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.frames = Frames()
        self.upgraded = False
        self.head = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(upgrade_request(self.port))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(head.split(b"\r\n")[0].decode(errors="replace"))
                return
            self.upgraded = True
        for opcode, payload in self.frames.feed(data):
            if opcode == 9:  # WebSocket ping
                self.send(payload, 0xA)
            elif opcode == 8:
                self.fail("closed by the server")
            elif opcode == 1:
                self.on_text(payload)

    def on_text(self, text: bytes) -> None:
        if text == b"2":  # Engine.IO ping
            self.send(b"3")
        elif text.startswith(b"0"):  # Engine.IO open: connect to "/" with the token
            self.send(b"40" + json.dumps({"token_api_v3": self.token}).encode())
        elif text.startswith(b"40"):  # Socket.IO CONNECT accepted (registered)
            if not self.connected.done():
                self.connected.set_result(None)
        elif text.startswith(b"44"):  # CONNECT_ERROR
            self.fail(text.decode(errors="replace"))

    def send(self, payload: bytes, opcode: int = 1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload, opcode))

    def fail(self, why: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.fail("connection lost")


def registered(client: IdleSocket) -> bool:
    done = client.connected.done() and not client.connected.cancelled()
    return done and client.connected.exception() is None and not client.lost


async def idle_round(
    server: Server, token: str, n: int, clients: list[IdleSocket]
) -> dict[str, Any]:
    """Open n authenticated sockets (CONNECT_GATE at a time), hold them SETTLE seconds, close
    them all and wait SETTLE seconds: what it took and the RSS with them open and after."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_GATE)
    failures: Counter[str] = Counter()

    async def connect() -> None:
        async with gate:
            try:
                _, client = await loop.create_connection(
                    lambda: IdleSocket(server.port, token), "127.0.0.1", server.port
                )
                clients.append(client)
                await asyncio.wait_for(client.connected, 30)
            except (OSError, RuntimeError, TimeoutError) as exc:
                failures[str(exc)[:80] or type(exc).__name__] += 1

    began = time.monotonic()
    tasks = [asyncio.create_task(connect()) for _ in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=CONNECT_LIMIT)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    opened = time.monotonic() - began
    await asyncio.sleep(SETTLE)
    open_now = sum(1 for c in clients if registered(c))
    held = server.rss()
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    clients.clear()
    await asyncio.sleep(SETTLE)
    return {
        "open": open_now,
        "seconds": opened,
        "pending": len(pending),
        "failures": failures,
        "held": held,
        "after": server.rss(),
    }


async def attack_idle(tmp: Path, size: dict[str, int], cycles: int) -> Row:
    row = Row("3 idle-socket flood")
    server = Server("idle", tmp, {})
    await server.start()
    clients: list[IdleSocket] = []
    try:
        async with aiohttp.ClientSession() as http:
            token = await new_token(http, server, "idler")
        await asyncio.sleep(0.5)
        row.before = server.rss()
        n = size["sockets"]
        rounds = []
        with RssSampler(server.pid) as sampler:
            for cycle in range(cycles):
                log(
                    f"idle: {n} authenticated websockets, {CONNECT_GATE} being opened at once"
                    + (f" (round {cycle + 1} of {cycles})" if cycles > 1 else "")
                )
                rounds.append(await idle_round(server, token, n, clients))
                if not server.alive():
                    break
            row.after = server.rss()
        row.peak = sampler.peak
        row.alive = server.alive()
        row.healthy = await server.healthy()
        first = rounds[0]
        per_socket = (first["held"] - row.before) / first["open"] if first["open"] else 0.0
        row.notes += [
            f"{first['open']:,} of {n:,} sockets authenticated and open after "
            f"{first['seconds']:.1f} s"
            + (
                f" ({first['pending']} not opened within {CONNECT_LIMIT:.0f} s)"
                if first["pending"]
                else ""
            )
            + (f"; failures: {dict(first['failures'])}" if first["failures"] else ""),
            f"RSS with all open {mb(first['held']):.1f} MB: {per_socket:.1f} KB per socket "
            f"(above the {mb(row.before):.1f} MB before); {mb(first['after']):.1f} MB "
            f"{SETTLE:.0f} s after they closed",
        ]
        if cycles > 1:
            row.notes.append(
                f"--cycles {cycles}, the same {n:,} sockets opened and closed again on the same "
                "server, RSS open / after close (MB): "
                + ", ".join(f"{mb(r['held']):.1f} / {mb(r['after']):.1f}" for r in rounds)
                + (
                    "; not every round opened every socket"
                    if any(r["open"] != n for r in rounds)
                    else ""
                )
            )
        row.notes.append(sampler.usage())
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        await server.stop()
    return row


# --- the run ----------------------------------------------------------------------------


def print_table(mode: str, rows: list[Row]) -> None:
    print(f"Button API V3 attacks ({mode} mode): server VmRSS in MB, peak sampled every 50 ms")
    print()
    print(f"{'attack':<28}{'before':>9}{'peak':>9}{'after':>9}  answers /health/ after")
    for row in rows:
        state = "yes" if row.healthy else "NO"
        if not row.alive:
            state += " (server process exited)"
        print(
            f"{row.name:<28}{mb(row.before):>9.1f}{mb(row.peak):>9.1f}{mb(row.after):>9.1f}"
            f"  {state}"
        )
    for row in rows:
        print()
        print(row.name)
        for note in row.notes:
            print(f"  - {note}")


def print_logs(tmp: Path) -> None:
    for path in sorted(tmp.glob("*.log")):
        print(f"\n--- {path.name} (last 20 lines)")
        print("\n".join(path.read_text(errors="replace").splitlines()[-20:]))


async def run(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="buttonapi-attacks-") as name:
        tmp = Path(name)
        if "1" in args.only:
            rows.append(await attack_replay(tmp, size))
        if "2" in args.only:
            rows.append(await attack_sessions(tmp, size, args.flood_seconds, args.reap_wait))
        if "3" in args.only:
            rows.append(await attack_idle(tmp, size, args.cycles))
        print_table(mode, rows)
        if args.logs:
            print_logs(tmp)
    return 0 if all(row.healthy and row.alive for row in rows) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument(
        "--reap-wait",
        type=float,
        default=0,
        help="seconds to wait after the session flood before reading RSS again (default 0)",
    )
    parser.add_argument(
        "--flood-seconds",
        type=float,
        default=6,
        help="how long the session flood may run, at most (default 6)",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="rounds of opening and closing the idle sockets on one server (default 1)",
    )
    parser.add_argument("--only", default="123", help="which attacks, e.g. 13 (default 123)")
    parser.add_argument("--logs", action="store_true", help="print the servers' log tails")
    args = parser.parse_args()
    # 2,000 sockets need more than the common limit of 1024 open files; the servers inherit it
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
