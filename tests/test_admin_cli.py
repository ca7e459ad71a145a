"""SPEC §8's command line: `python buttonapi.py admin ...` as a real process, on the file of
a real running server (`python buttonapi.py` too), and with no server at all.

A running server must honour each change at its very next request: the token, role and
ban it may hold in memory are forgotten when another process commits.
"""

import asyncio
import os
import subprocess
import sys

from helpers import PASSWORD, ROOT, Sock, free_port, http, rows

NEW_PASSWORD = "N3w!Passw0rd"


def admin(db_path, *args, password=None):
    """Run `python buttonapi.py admin --db FILE ...`; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUTTONAPI_", "DISCORD_"))}
    env["BUTTONAPI_BCRYPT_ROUNDS"] = "4"
    done = subprocess.run(
        [sys.executable, str(ROOT / "buttonapi.py"), "admin", "--db", str(db_path), *args],
        input="" if password is None else password + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def api(port, name, body):
    return http(port, f"/api/v3/{name}/", body)


def creds(username, password=PASSWORD):
    return {"username": username, "password": password}


def token_of(port, username, password=PASSWORD):
    status, got = api(port, "generatetoken", creds(username, password))
    assert status == 200, got
    return got["token"]


def running(servers, tmp_path):
    port = free_port()
    server = servers("--port", str(port), "--host", "127.0.0.1", "--db", "api.db")
    server.wait_ready(port)
    return port, tmp_path / "api.db"


def test_the_first_admin_is_made_on_the_command_line_of_a_running_server(servers, tmp_path):
    port, db_path = running(servers, tmp_path)
    assert admin(db_path, "adduser", "root", password=PASSWORD) == (
        0,
        "User registered successfully!",
        "",
    )
    root = token_of(port, "root")
    assert api(port, "getme", {"token": root})[1]["role"] == "member"  # now in memory
    assert admin(db_path, "setrole", "ROOT", "admin") == (0, "Role set!", "")
    assert api(port, "getme", {"token": root})[1]["role"] == "admin"  # the very next request
    status, got = api(port, "getauditlog", {"token": root})
    assert status == 200
    assert [(e["actor"], e["action"], e["target"]) for e in got["entries"]] == [
        ("(console)", "adduser", "root"),
        ("(console)", "setrole", "root"),
    ]
    assert PASSWORD not in str(rows(db_path, "SELECT * FROM audit_log"))


def test_a_ban_and_unban_on_the_command_line_reach_a_running_server_at_once(servers, tmp_path):
    port, db_path = running(servers, tmp_path)
    assert api(port, "register", creds("alice"))[0] == 201
    alice = token_of(port, "alice")
    assert api(port, "getme", {"token": alice})[0] == 200  # the token is in memory now
    assert admin(db_path, "ban", "alice", "--reason", "spam", "--seconds", "3600") == (
        0,
        "User banned!",
        "",
    )
    assert api(port, "getme", {"token": alice}) == (401, {"message": "Invalid token!"})
    status, got = api(port, "login", creds("alice"))
    assert (status, got["message"], got["reason"]) == (403, "You are banned!", "spam")
    assert admin(db_path, "unban", "alice") == (0, "User unbanned!", "")
    assert api(port, "getme", {"token": alice})[0] == 200
    assert admin(db_path, "unban", "alice") == (1, "", "User is not banned!")


def test_resetpassword_rotates_the_token_of_a_running_server(servers, tmp_path):
    port, db_path = running(servers, tmp_path)
    assert api(port, "register", creds("alice"))[0] == 201
    alice = token_of(port, "alice")
    assert api(port, "getme", {"token": alice})[0] == 200
    assert admin(db_path, "resetpassword", "alice", password=NEW_PASSWORD) == (
        0,
        "Password changed!",
        "",
    )
    assert api(port, "getme", {"token": alice}) == (401, {"message": "Invalid token!"})
    assert api(port, "login", creds("alice")) == (
        401,
        {"message": "Invalid username or password!"},
    )
    assert api(port, "login", creds("alice", NEW_PASSWORD)) == (
        200,
        {"message": "Login successful!"},
    )


def test_refusals_exit_1_with_the_http_answers_text(servers, tmp_path):
    port, db_path = running(servers, tmp_path)
    assert admin(db_path, "adduser", "root", password=PASSWORD)[0] == 0
    assert admin(db_path, "setrole", "root", "admin")[0] == 0
    before = rows(db_path, "SELECT * FROM users") + rows(db_path, "SELECT * FROM audit_log")
    cases = [
        (("setrole", "nobody", "admin"), None, "User not found!"),
        (("setrole", "root", "member"), None, "The last admin can not be demoted!"),
        (("setrole", "root", "owner"), None, "Missing or invalid field: role!"),
        (("adduser", "root"), PASSWORD, "User exists!"),
        (("adduser", "ROOT"), PASSWORD, "User exists!"),
        (("adduser", "x"), PASSWORD, "Username needs to be 3-20 chars long!"),
        (
            ("adduser", "bob"),
            "weak",
            "Password needs to have 8-20 chars minimum one number minimum one capital letter"
            " minimum one special symbol no empty symbols!",
        ),
        (("resetpassword", "nobody"), PASSWORD, "User not found!"),
        (("ban", "nobody"), None, "User not found!"),
        (("ban", "root", "--seconds", "0"), None, "Missing or invalid field: seconds!"),
        (("ban", "root", "--seconds", "soon"), None, "Missing or invalid field: seconds!"),
        (("ban", "root", "--reason", "x" * 201), None, "Missing or invalid field: reason!"),
        (("unban", "root"), None, "User is not banned!"),
    ]
    for args, password, text in cases:
        assert admin(db_path, *args, password=password) == (1, "", text), args
    after = rows(db_path, "SELECT * FROM users") + rows(db_path, "SELECT * FROM audit_log")
    assert after == before
    assert http(port, "/api/v3/health/")[0] == 200


def test_the_command_line_works_with_no_server(servers, tmp_path):
    db_path = tmp_path / "api.db"
    assert admin(db_path, "adduser", "root", password=PASSWORD)[0] == 0  # a new file
    assert admin(db_path, "setrole", "root", "admin")[0] == 0
    assert oct(db_path.stat().st_mode & 0o777) == "0o600"
    port, _ = running(servers, tmp_path)
    root = token_of(port, "root")
    assert api(port, "getme", {"token": root})[1]["role"] == "admin"


def test_the_password_is_never_taken_from_the_command_line(tmp_path):
    code, out, err = admin(tmp_path / "api.db", "adduser", "root", PASSWORD)
    assert code == 2 and "unrecognized arguments" in err


async def test_a_ban_on_the_command_line_drops_the_users_sockets(servers, tmp_path):
    port, db_path = running(servers, tmp_path)
    assert api(port, "register", creds("alice"))[0] == 201
    s = await Sock(f"http://127.0.0.1:{port}/").connect()
    assert (await s.auth(token_of(port, "alice")))[0] == "ready"
    code, out, err = await asyncio.to_thread(admin, db_path, "ban", "alice")
    assert (code, out) == (0, "User banned!")
    assert await s.next("api_v3_error") == ("api_v3_error", {"message": "You are banned!"})
    await s.next("disconnect")
    await s.close()


async def test_resetpassword_on_the_command_line_drops_the_old_tokens_sockets(servers, tmp_path):
    """As generatetoken does (SPEC 3): the old token's sockets are told and disconnected."""
    port, db_path = running(servers, tmp_path)
    assert api(port, "register", creds("alice"))[0] == 201
    assert api(port, "register", creds("bob"))[0] == 201
    s = await Sock(f"http://127.0.0.1:{port}/").connect()
    assert (await s.auth(token_of(port, "alice")))[0] == "ready"
    bob = await Sock(f"http://127.0.0.1:{port}/").connect()
    assert (await bob.auth(token_of(port, "bob")))[0] == "ready"
    reset = ("resetpassword", "alice")
    result = await asyncio.to_thread(admin, db_path, *reset, password=NEW_PASSWORD)
    assert result == (0, "Password changed!", "")
    assert await s.next("api_v3_error") == ("api_v3_error", {"message": "Token changed!"})
    await s.next("disconnect")
    await s.close()
    assert bob.client.connected  # nobody else is touched
    await bob.close()
