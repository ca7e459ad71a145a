"""SPEC §7, running it: `python buttonapi.py` as a real process (flags, environment, signals,
kill -9), the database in WAL mode, and logs without secrets.
"""

import logging
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing

from helpers import PASSWORD, ROOT, free_port, http, msg

# --- `python buttonapi.py` as a real process --------------------------------------------------


def test_flags_beat_environment_and_sigterm_exits_0(tmp_path, servers):
    port = free_port()
    env = {
        "BUTTONAPI_HOST": "127.0.0.1",
        "BUTTONAPI_PORT": "1",
        "BUTTONAPI_DB": str(tmp_path / "env.db"),
    }
    server = servers("--port", str(port), "--db", str(tmp_path / "flag.db"), env=env)
    assert server.wait_ready(port) == (200, {"status": "ok", "discord": "disabled"})
    assert http(port, "/api/v3/register/", {"username": "alice", "password": PASSWORD}) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert (tmp_path / "flag.db").exists() and not (tmp_path / "env.db").exists()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


def test_default_database_is_buttonapi_db_in_the_working_folder(tmp_path, servers):
    port = free_port()
    server = servers("--host", "127.0.0.1", "--port", str(port))
    assert server.wait_ready(port) == (200, {"status": "ok", "discord": "disabled"})
    assert (tmp_path / "buttonapi.db").exists()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=15) == 0


def test_success_survives_kill_9(tmp_path, servers):
    port = free_port()
    args = ("--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "d.db"))
    first = servers(*args)
    first.wait_ready(port)
    creds = {"username": "alice", "password": PASSWORD}
    assert http(port, "/api/v3/register/", creds)[0] == 201
    status, made = http(port, "/api/v3/generatetoken/", creds)
    status, sent = http(
        port, "/api/v3/senddcmsgwithtoken/", {"token": made["token"], "message": "durable"}
    )
    assert status == 200
    first.proc.kill()
    first.proc.wait()

    second = servers(*args)
    second.wait_ready(port)
    assert http(port, "/api/v3/getmessagesforeveryone/", {"token": made["token"]}) == (
        200,
        {"message": "Got messages!", "messages": [msg(sent["id"], "public", "alice", "durable")]},
    )
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=15) == 0


# --- the database and the logs ---------------------------------------------------------


async def test_database_is_in_wal_mode(api, db_path):
    await api.register("alice")
    with closing(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_logs_hold_no_password_or_token(api, caplog):
    # everything the server itself logs, and INFO and up from the libraries (aiohttp access log)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="buttonapi")
    password = "S3cret!Pass"
    creds = {"username": "alice", "password": password}
    await api.ok("register", creds, status=201)
    await api.ok("login", creds)
    await api.post("login", {"username": "alice", "password": "Wr0ng!Pass"})
    token = (await api.ok("generatetoken", creds))["token"]
    await api.ok("gettoken", creds)
    await api.public(token, "hello")
    await api.post("getchannels", {"token": token})
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for secret in (password, "Wr0ng!Pass", token):
        assert secret not in logged


def test_a_server_without_discord_never_loads_discord_py():
    """discord.py is loaded when a bridge starts (about 9 MB a server without Discord
    would hold for nothing)."""
    code = "import sys, buttonapi; print('discord' in sys.modules, 'bot' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "True"], done.stderr
