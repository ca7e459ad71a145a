# ruff: noqa: E501  (the tables of expected errors read best one case a line)
"""SPEC §9, operating it: `python buttonapi.py backup FILE` while the server writes, the
command line (`--version`, one-line errors with exit 2 and nothing created), the start and
stop log lines and the access log switch. Every test runs the real process.
"""

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import pytest
from helpers import BRIDGE, GUILD_ID, PASSWORD, ROOT, eventually, free_port, http, msg

import db
from buttonapi import VERSION

PYTHON = [sys.executable, str(ROOT / "buttonapi.py")]


def run(tmp_path, *args, env=None, timeout=30):
    """`python buttonapi.py ARGS` to its end: (exit status, stdout, stderr)."""
    environ = {"PATH": "/usr/bin:/bin", **(env or {})}
    done = subprocess.run(
        [*PYTHON, *args], cwd=tmp_path, env=environ, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def files(folder):
    return sorted(p.name for p in folder.iterdir())


# --- backup ---------------------------------------------------------------------------


def sign_up(port, username):
    creds = {"username": username, "password": PASSWORD}
    assert http(port, "/api/v3/register/", creds)[0] == 201
    return http(port, "/api/v3/generatetoken/", creds)[1]["token"]


class Writers:
    """Threads that post public messages to a real server as fast as it answers, keeping
    the id of every message acknowledged (200), in the order the answers came."""

    def __init__(self, port, token, count=4):
        self.port, self.token = port, token
        self.acknowledged: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.write, args=(n,)) for n in range(count)]
        for thread in self.threads:
            thread.start()

    def write(self, n):
        i = 0
        while not self.stop.is_set():
            body = {"token": self.token, "message": f"writer {n} message {i}"}
            status, got = http(self.port, "/api/v3/senddcmsgwithtoken/", body)
            assert status == 200, got
            self.acknowledged.append(got["id"])
            i += 1

    def until(self, count):
        deadline = time.monotonic() + 30
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, "the writers are stuck"
            time.sleep(0.01)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def ids_in(path):
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}


def test_backup_while_writers_run_holds_every_acknowledged_write(tmp_path, servers):
    port = free_port()
    live, copy = tmp_path / "live.db", tmp_path / "backups" / "copy.db"
    copy.parent.mkdir()
    server = servers(
        "--host", "127.0.0.1", "--port", str(port), "--db", str(live),
        env={"BUTTONAPI_SEND_LIMIT": "0"},
    )  # fmt: skip
    server.wait_ready(port)
    token = sign_up(port, "alice")
    writers = Writers(port, token)
    try:
        writers.until(200)
        before = set(writers.acknowledged)  # every write acknowledged before the command
        status, out, err = run(tmp_path, "backup", "--db", str(live), str(copy))
        during = len(writers.acknowledged)
        writers.until(during + 50)  # the server went on writing, and still does
    finally:
        writers.close()
    assert (status, out, err) == (0, "", "")
    assert copy.stat().st_mode & 0o777 == 0o600
    assert files(copy.parent) == ["copy.db"]  # one self-contained file, no temporary left
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    held = ids_in(copy)
    assert before <= held
    assert held <= set(writers.acknowledged)  # nothing that was not (or not yet) answered
    # one snapshot: ids are given in commit order, so the copy holds all of them up to its last
    assert {i for i in writers.acknowledged if i <= max(held)} == held

    # Restoring is (README): stop; replace the file, dropping any -wal and -shm beside it;
    # start. The copy serves, and its tokens work.
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    for stale in (tmp_path / "live.db-wal", tmp_path / "live.db-shm"):
        stale.unlink(missing_ok=True)
    copy.replace(live)
    restored = servers("--host", "127.0.0.1", "--port", str(port), "--db", str(live))
    restored.wait_ready(port)
    newest = max(held)
    body = {"token": token, "count": 1, "before": newest + 1}
    status, got = http(port, "/api/v3/getmessagesforeveryone/", body)
    assert status == 200
    assert got["messages"] == [msg(newest, "public", "alice", got["messages"][0]["message"])]
    status, _ = http(port, "/api/v3/senddcmsgwithtoken/", {"token": token, "message": "back"})
    assert status == 200


def test_backup_of_a_stopped_server_s_database(tmp_path, servers):
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", "live.db")
    server.wait_ready(port)
    sign_up(port, "alice")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    # BUTTONAPI_DB names the database, as for the server
    assert run(tmp_path, "backup", "copy.db", env={"BUTTONAPI_DB": "live.db"}) == (0, "", "")
    with closing(sqlite3.connect(tmp_path / "copy.db")) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]


def test_backup_refuses_an_existing_file_and_leaves_it_alone(tmp_path, servers):
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", "live.db")
    server.wait_ready(port)
    (tmp_path / "copy.db").write_bytes(b"yesterday's backup")
    before = files(tmp_path)
    assert run(tmp_path, "backup", "--db", "live.db", "copy.db") == (
        2,
        "",
        "buttonapi.py backup: error: copy.db exists already: choose a new file name\n",
    )
    assert (tmp_path / "copy.db").read_bytes() == b"yesterday's backup"
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["backup", "--db", "gone.db", "c.db"], "cannot open gone.db: no such database file"),
        (["backup", "--db", "live.db", "no/c.db"], "cannot create no/c.db: No such file or directory"),
        (["backup"], "the following arguments are required: FILE"),
    ],
)  # fmt: skip
def test_backup_errors_are_one_line_and_create_nothing(tmp_path, args, error):
    with closing(sqlite3.connect(tmp_path / "live.db")) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = files(tmp_path)
    assert run(tmp_path, *args) == (2, "", f"buttonapi.py backup: error: {error}\n")
    assert files(tmp_path) == before


# --- the command line -------------------------------------------------------------------


def test_version():
    done = subprocess.run([*PYTHON, "--version"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"buttonapi {VERSION}\n", "")


def newer_database(path):
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 99")
        conn.commit()


WHOLE = "must be a whole number from"
N_S = "must be N/S (N events per S seconds) or 0"
NEWER = (
    f"newer than this server's {db.SCHEMA_VERSION}: run the newer server,"
    " or restore a backup made for this one"
)
BAD_STARTS = {
    "port too large": (["--port", "99999"], {}, f"--port {WHOLE} 1 to 65535, not '99999'"),
    "port not a number": (["--port", "abc"], {}, f"--port {WHOLE} 1 to 65535, not 'abc'"),
    "port from the environment": ([], {"BUTTONAPI_PORT": "x"}, f"BUTTONAPI_PORT {WHOLE} 1 to 65535, not 'x'"),
    "a limit": ([], {"BUTTONAPI_SEND_LIMIT": "lots"}, f"BUTTONAPI_SEND_LIMIT {N_S}"),
    "a zero limit window": ([], {"BUTTONAPI_LOGIN_LIMIT_ADDR": "5/0"}, f"BUTTONAPI_LOGIN_LIMIT_ADDR {N_S}"),
    "access log": ([], {"BUTTONAPI_ACCESS_LOG": "yes"}, f"BUTTONAPI_ACCESS_LOG {WHOLE} 0 to 1, not 'yes'"),
    "metrics port": (["--metrics-port", "70000"], {}, f"--metrics-port {WHOLE} 0 to 65535, not '70000'"),
    "bcrypt cost": ([], {"BUTTONAPI_BCRYPT_ROUNDS": "3"}, f"BUTTONAPI_BCRYPT_ROUNDS {WHOLE} 4 to 31, not '3'"),
    "unknown flag": (["--prot", "5000"], {}, "unrecognized arguments: --prot 5000"),
    "database is a folder": (["--db", "folder"], {}, "cannot open folder: not a regular file"),
    "database folder missing": (["--db", "no/x.db"], {}, "cannot create no/x.db: the folder no does not exist"),
    "database folder is a file": (["--db", "notes/x.db"], {}, "cannot create notes/x.db: notes is not a folder"),
    "not a database": (["--db", "notes"], {}, "cannot open notes: not a SQLite database"),
    "newer schema": (["--db", "newer.db"], {}, f"newer.db is of schema version 99, {NEWER}"),
}  # fmt: skip


@pytest.mark.parametrize(("args", "env", "error"), BAD_STARTS.values(), ids=BAD_STARTS.keys())
def test_a_bad_start_is_one_line_exit_2_and_creates_nothing(tmp_path, args, env, error):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes").write_text("not a database\n")
    newer_database(tmp_path / "newer.db")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    env = {"BUTTONAPI_HOST": "127.0.0.1", "BUTTONAPI_PORT": str(free_port()), **env}
    assert run(tmp_path, *args, env=env) == (2, "", f"buttonapi.py: error: {error}\n")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_unwritable_folder_is_one_line_exit_2(tmp_path):
    # /sys refuses new files even to root (whom os.access would let through)
    error = (
        "cannot open /sys/buttonapi.db: Permission denied"
        if os.geteuid() == 0
        else "cannot create /sys/buttonapi.db: the folder /sys is not writable"
    )
    args = ["--host", "127.0.0.1", "--port", str(free_port()), "--db", "/sys/buttonapi.db"]
    assert run(tmp_path, *args) == (2, "", f"buttonapi.py: error: {error}\n")
    assert files(tmp_path) == []


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_in_use_is_one_line_exit_2_and_creates_nothing(tmp_path, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--host", "127.0.0.1", "--port", str(free_port()), flag, str(port)]
        assert run(tmp_path, *args) == (
            2,
            "",
            f"buttonapi.py: error: cannot listen on 127.0.0.1:{port}: Address already in use\n",
        )
    assert files(tmp_path) == []


# --- logs -------------------------------------------------------------------------------


def log_lines(tmp_path):
    return (tmp_path / "server.log").read_text().splitlines()


def stop(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


def test_start_and_stop_lines_and_the_access_log(tmp_path, servers):
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", "chat.db")
    server.wait_ready(port)
    sign_up(port, "alice")
    stop(server)
    lines = log_lines(tmp_path)
    started = [line.split(" ", 2)[2] for line in lines if " started: " in line]
    assert started == [
        f"INFO buttonapi: buttonapi {VERSION} started: http://127.0.0.1:{port},"
        f" database {tmp_path / 'chat.db'}, registration open, discord off, metrics off,"
        " access log on"
    ]
    stopped = [line.split(" ", 2)[2] for line in lines if " stopped " in line]
    assert len(stopped) == 1
    assert stopped[0].startswith(f"INFO buttonapi: buttonapi {VERSION} stopped after ")
    assert lines[-1].endswith(stopped[0])  # the last line
    access = [line for line in lines if "aiohttp.access" in line]
    assert any('"POST /api/v3/register/ HTTP/1.1" 201' in line for line in access)


def test_access_lines_wait_in_a_bounded_line_and_drops_are_told():
    """The access log's lines wait for their thread in a line of at most `cap`: a flood
    faster than the disk drops lines, counted in a warning, and memory stays bounded."""
    import io

    from aiohttp import HttpVersion11

    from buttonapi import AccessLines

    stream = io.StringIO()
    lines = AccessLines(stream, cap=2)
    at = time.mktime((2026, 11, 29, 12, 30, 5, 0, 0, -1)) + 0.25
    for n in range(5):
        lines.add(
            (at, "10.0.0.1", "POST", f"/api/v3/login/?n={n}", HttpVersion11, 200, 42, 0.0015, "ua")
        )
    assert len(lines.waiting) == 2
    lines.write()
    assert stream.getvalue().splitlines()[:2] == [
        f'2026-11-29 12:30:05,250 INFO aiohttp.access: 10.0.0.1 "POST /api/v3/login/?n={n} HTTP/1.1" 200 42 0.001500s "ua"'
        for n in (0, 1)
    ]
    assert (
        stream.getvalue()
        .splitlines()[2]
        .endswith(
            " WARNING aiohttp.access: 3 lines dropped (the log could not be written fast enough)"
        )
    )
    assert len(stream.getvalue().splitlines()) == 3 and not lines.waiting


def test_access_log_off(tmp_path, servers):
    port, metrics_port = free_port(), free_port()
    server = servers(
        "--host", "127.0.0.1", "--port", str(port), "--db", "chat.db",
        "--metrics-port", str(metrics_port), env={"BUTTONAPI_ACCESS_LOG": "0"},
    )  # fmt: skip
    server.wait_ready(port)
    sign_up(port, "alice")
    stop(server)
    lines = log_lines(tmp_path)
    assert [line for line in lines if "aiohttp.access" in line] == []
    (started,) = [line for line in lines if " started: " in line]
    assert started.endswith(f", metrics http://127.0.0.1:{metrics_port}/metrics, access log off")


def test_readme_s_nightly_cron_line_backs_up_and_prunes(tmp_path, servers):
    """README's cron line, run as cron would (its `\\%` unescaped), with its paths moved into
    the test's folder: a dated backup appears and backups older than 14 days go."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith("17 3 * * * buttonapi ")]
    command = line.removeprefix("17 3 * * * buttonapi ").replace("\\%", "%")
    data, backups = tmp_path / "var-lib", tmp_path / "var-backups"
    for old, new in (
        ("/opt/buttonapi/.venv/bin/python", sys.executable),
        ("/opt/buttonapi/buttonapi.py", str(ROOT / "buttonapi.py")),
        ("/var/lib/buttonapi", str(data)),
        ("/var/backups/buttonapi", str(backups)),
    ):
        assert old in command
        command = command.replace(old, new)
    data.mkdir()
    backups.mkdir()
    old_backup = backups / "buttonapi-2000-01-01.db"
    old_backup.write_bytes(b"")
    os.utime(old_backup, (time.time() - 20 * 86400,) * 2)
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", str(data / "buttonapi.db"))
    server.wait_ready(port)
    sign_up(port, "alice")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    today = time.strftime("%Y-%m-%d")
    assert files(backups) == [f"buttonapi-{today}.db"]
    with closing(sqlite3.connect(backups / f"buttonapi-{today}.db")) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]


# --- stopping during a Discord outage -----------------------------------------------------


async def test_stopping_during_a_discord_outage_exits_0_in_time(tmp_path, servers, fake):
    """SPEC §9: a post hangs at Discord, then Discord goes away altogether; SIGTERM still
    ends the process with 0 within 15 s. The start line names the bridge."""
    port = free_port()
    env = {
        "DISCORD_TOKEN": fake.token, "DISCORD_GUILD_ID": str(GUILD_ID),
        "DISCORD_CHANNEL_ID": str(BRIDGE), "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
    }  # fmt: skip
    server = servers("--host", "127.0.0.1", "--port", str(port), "--db", "d.db", env=env)
    await asyncio.to_thread(server.wait_ready, port)
    await eventually(lambda: fake.connected)
    await asyncio.sleep(0.5)  # the bot sees the guild (its channels) after connecting
    fake.fail(BRIDGE, hang=True)
    token = await asyncio.to_thread(sign_up, port, "alice")
    body = {"token": token, "message": "stuck at Discord"}
    assert (await asyncio.to_thread(http, port, "/api/v3/senddcmsgwithtoken/", body))[0] == 200
    await fake.wait_for(lambda f: f.attempt_times(BRIDGE), timeout=10)  # hanging there
    await fake.close()  # and now Discord is gone: the bot tries to reconnect, and fails
    log = tmp_path / "server.log"
    await eventually(lambda: "Attempting a reconnect" in log.read_text(), within=30)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 15) == 0
    assert time.monotonic() - started < 15
    lines = log.read_text().splitlines()
    assert any(f"discord on (guild {GUILD_ID}, bridge channel {BRIDGE})" in x for x in lines)
    # each failed reconnect to Discord is one line with its cause, not a traceback
    reconnects = [n for n, line in enumerate(lines) if "Attempting a reconnect" in line]
    assert reconnects
    for n in reconnects:
        assert re.search(r"WARNING discord.client: Attempting a reconnect in [\d.]+s: ", lines[n])
        assert not lines[n + 1].startswith("Traceback")
