"""SPEC §9, deploy/: the nginx site in front of the real server, and the systemd unit.

Debian's real nginx (`apt-get install nginx`; .ci/run does) runs as this test's own process on
loopback, with exactly deploy/nginx.conf as its site (only its two addresses substituted) in a
minimal main configuration. Through it: the official JavaScript client over a WebSocket and
over long-polling, the web chat in Chromium, and the per-address limits keyed by the address
nginx forwards (BUTTONAPI_TRUSTED_PROXIES). Without nginx these tests fail; they never skip.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from contract import check_response
from helpers import PASSWORD, ROOT, JsClient, free_port, http
from playwright.async_api import async_playwright, expect

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = ROOT / "deploy" / "nginx.conf"
UNIT = ROOT / "deploy" / "buttonapi.service"
CHROMIUM = Path(os.environ.get("BUTTONAPI_CHROMIUM", "/usr/bin/chromium"))

MAIN_CONF = """\
daemon off;
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


def site_for(nginx_port, server_port):
    """deploy/nginx.conf with its listening address and its upstream substituted, nothing else."""
    text = SITE.read_text()
    assert text.count("    listen 80;\n") == 1 and text.count("server 127.0.0.1:5000;") == 1
    return text.replace("    listen 80;\n", f"    listen 127.0.0.1:{nginx_port};\n").replace(
        "server 127.0.0.1:5000;", f"server 127.0.0.1:{server_port};"
    )


class Nginx:
    def __init__(self, prefix, server_port):
        assert os.access(NGINX, os.X_OK), "nginx is needed: apt-get install -y nginx (.ci/run does)"
        self.prefix, self.port = prefix, free_port()
        prefix.mkdir()
        (prefix / "site.conf").write_text(site_for(self.port, server_port))
        user = "user root root;" if os.geteuid() == 0 else ""  # workers can reach the prefix
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=prefix, user=user))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
             "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, (prefix / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def access_log(self):
        return (self.prefix / "access.log").read_text()

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        errors = (self.prefix / "error.log").read_text()
        assert "[emerg]" not in errors and "[crit]" not in errors, errors


@pytest.fixture
def behind_nginx(tmp_path, servers):
    """behind_nginx(**env) -> nginx (with deploy/nginx.conf) in front of a real server that
    listens on 127.0.0.1 and trusts 127.0.0.1's X-Forwarded-For, as the unit sets it up."""
    started = []

    def start(**env):
        port = free_port()
        server = servers(
            "--db", "chat.db",
            env={"BUTTONAPI_HOST": "127.0.0.1", "BUTTONAPI_PORT": str(port),
                 "BUTTONAPI_TRUSTED_PROXIES": "127.0.0.1", **env},
        )  # fmt: skip
        server.wait_ready(port)
        started.append(Nginx(tmp_path / "nginx", port))
        return started[-1]

    yield start
    for nginx in started:
        nginx.close()


def sign_up(port, username):
    creds = {"username": username, "password": PASSWORD}
    assert http(port, "/api/v3/register/", creds)[0] == 201
    return http(port, "/api/v3/generatetoken/", creds)[1]["token"]


# --- the official JavaScript client, both transports -----------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_javascript_client_through_nginx(behind_nginx, transport):
    nginx = behind_nginx()
    alice, bob = sign_up(nginx.port, "alice"), sign_up(nginx.port, "bob")
    client = await JsClient.start(nginx.url, alice, "auth", transport)
    try:
        ready = "Server has accepted the connection and registered you as : alice"
        assert await client.next("ready") == ready
        body = {"token": bob, "username": "alice", "message": "through nginx"}
        status, sent = http(nginx.port, "/api/v3/senddm/", body)
        assert status == 200
        got = await client.next("new_dm")
        assert got == {
            "sender": "bob", "message": "through nginx", "recipient": "alice",
            "id": sent["id"], "timestamp": got["timestamp"],
        }  # fmt: skip
    finally:
        await client.close()
    upgrades = [line for line in nginx.access_log().splitlines() if "transport=websocket" in line]
    if transport == "websocket":  # the WebSocket went through nginx (101 Switching Protocols)
        assert len(upgrades) == 1 and '" 101 ' in upgrades[0]
    else:  # every packet went through nginx as long-polling requests
        assert upgrades == []
        assert nginx.access_log().count("transport=polling") >= 3


# --- the web chat, in Chromium ---------------------------------------------------------------


@pytest.fixture
def chromium():
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    return CHROMIUM


async def test_the_web_chat_through_nginx(behind_nginx, chromium):
    nginx = behind_nginx(BUTTONAPI_SEND_LIMIT="0")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(nginx.url + "/")
            form = page.locator("#register-form")
            await form.get_by_label("Username").fill("alice")
            await form.get_by_label("Password").fill(PASSWORD)
            await form.get_by_role("button", name="Create account").click()
            await expect(page.locator("#connection")).to_have_text("Live", timeout=15_000)
            # a message sent by someone else arrives live, through nginx's WebSocket
            bob = sign_up(nginx.port, "bob")
            body = {"token": bob, "message": "hello from behind nginx"}
            assert http(nginx.port, "/api/v3/senddcmsgwithtoken/", body)[0] == 200
            texts = page.locator("#message-list .text")
            await expect(texts.last).to_have_text("hello from behind nginx", timeout=15_000)
        finally:
            await browser.close()
    assert '"GET /socket.io/?EIO=4&transport=websocket' in nginx.access_log()


# --- per-address limits keyed by the forwarded address ---------------------------------------


def login_from(source, port, password, forwarded=None):
    """A wrong or right login sent from the loopback address `source` (127.0.0.x), maybe
    with an X-Forwarded-For of the client's own making; the answer's status."""
    conn = HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    try:
        body = {"username": "alice", "password": password}
        conn.request("POST", "/api/v3/login/", json.dumps(body), headers)
        resp = conn.getresponse()
        got = json.loads(resp.read())
    finally:
        conn.close()
    check_response("POST", "/api/v3/login/", resp.status, resp.headers, got)
    return resp.status


def test_limits_count_the_address_nginx_forwards(behind_nginx):
    nginx = behind_nginx(BUTTONAPI_LOGIN_LIMIT_ADDR="2/900", BUTTONAPI_LOGIN_LIMIT_USER="0")
    sign_up(nginx.port, "alice")
    wrong = "Wr0ng!Pass"
    assert [login_from("127.0.0.2", nginx.port, wrong) for _ in range(2)] == [401, 401]
    assert login_from("127.0.0.2", nginx.port, wrong) == 429
    # a header of the client's own is not believed: nginx's last entry is what counts
    assert login_from("127.0.0.2", nginx.port, wrong, forwarded="203.0.113.9") == 429
    # another client's address has its own count, even naming the limited one
    assert login_from("127.0.0.3", nginx.port, wrong, forwarded="127.0.0.2") == 401
    assert login_from("127.0.0.3", nginx.port, PASSWORD) == 200


# --- the systemd unit ---------------------------------------------------------------------


def test_the_unit_runs_as_its_own_user_sandboxed():
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for directive in (
        "User=buttonapi", "Group=buttonapi", "Restart=on-failure", "TimeoutStopSec=20",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/buttonapi",
        "PrivateTmp=yes", "WorkingDirectory=/var/lib/buttonapi",
        "ExecStart=/opt/buttonapi/.venv/bin/python /opt/buttonapi/buttonapi.py",
    ):  # fmt: skip
        assert directive in lines


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # The unit's own ExecStart must exist for `verify`: point it at this checkout.
    text = UNIT.read_text().replace("/opt/buttonapi/.venv/bin/python", sys.executable)
    unit = tmp_path / "buttonapi.service"
    unit.write_text(text.replace("/opt/buttonapi/buttonapi.py", str(ROOT / "buttonapi.py")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
